//! Device backends: the [`Device`] trait the model runs on, and its CPU implementation.
//!
//! A device owns fp32 buffers whose bytes are accounted against a fixed *device memory budget*
//! (the role HBM plays on a GPU), moves data to and from host slices, and runs the layer
//! operations of a GPT-2 block (forward and backward). Work is asynchronous in shape: copies
//! return an event the caller waits on. The CPU backend runs work synchronously and returns
//! completed events; the CUDA backend (`cuda/`, behind the `cuda` feature) will enqueue it.
//!
//! This module is not the model: it knows layer shapes, not layers, parameters or checkpoints.
//! Backward operations accumulate (`+=`) into gradient buffers; zeroing is its own call.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

pub use cpu::{CpuBuffer, CpuDevice};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Errors of the device layer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An allocation would exceed the device memory budget.
    #[error(
        "device memory budget exceeded: {what} asked for {requested_bytes} bytes, \
         {used_bytes} of the {budget_bytes}-byte budget already in use \
         (raise zinf.device_memory_budget or shrink the model / micro-batch)"
    )]
    OutOfBudget {
        what: String,
        requested_bytes: u64,
        used_bytes: u64,
        budget_bytes: u64,
    },
    /// A copy or operation addressed elements outside a buffer.
    #[error("{op}: range {offset}..{end} is outside a buffer of {len} elements")]
    OutOfRange {
        op: &'static str,
        offset: usize,
        end: usize,
        len: usize,
    },
    /// A token id or target is not below the vocabulary size.
    #[error("{op}: token id {token} is not below the vocabulary size {vocab_size}")]
    BadToken {
        op: &'static str,
        token: u32,
        vocab_size: usize,
    },
    /// The backend itself failed (driver error, launch failure).
    #[error("device backend error: {0}")]
    Backend(String),
}

pub use crate::host::HostSlice;

/// The target id that takes no part in the loss: transformers' `ignore_index = -100` (labels of
/// a masked prompt, padding, the last position of a sequence), as a `u32`.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// The byte budget every device allocation is charged against. Cloning shares the account.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    budget_bytes: u64,
    used_bytes: Arc<AtomicU64>,
    peak_bytes: Arc<AtomicU64>,
}

impl MemoryBudget {
    /// A budget of `budget_bytes`, nothing charged yet.
    pub fn new(budget_bytes: u64) -> Self {
        MemoryBudget {
            budget_bytes,
            used_bytes: Arc::new(AtomicU64::new(0)),
            peak_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The fixed limit.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Bytes currently allocated.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::SeqCst)
    }

    /// Highest `used_bytes` so far.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes.load(Ordering::SeqCst)
    }

    /// Charges `bytes` for `what`, or says who asked for too much.
    pub fn charge(&self, what: &str, bytes: u64) -> Result<(), DeviceError> {
        let mut used = self.used_bytes.load(Ordering::SeqCst);
        loop {
            let next = used.saturating_add(bytes);
            if next > self.budget_bytes {
                return Err(DeviceError::OutOfBudget {
                    what: what.to_string(),
                    requested_bytes: bytes,
                    used_bytes: used,
                    budget_bytes: self.budget_bytes,
                });
            }
            match self
                .used_bytes
                .compare_exchange(used, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.peak_bytes.fetch_max(next, Ordering::SeqCst);
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }

    /// Returns `bytes` to the budget (called when a buffer is dropped).
    pub fn release(&self, bytes: u64) {
        self.used_bytes.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// A linear layer's placement inside a parameter buffer: `out (N,OC) = inp (N,C) @ W + b`.
///
/// `w_off` is where W starts; it is laid out `[C, OC]` (Hugging Face's Conv1D) unless
/// `w_out_in` is set, in which case it is `[OC, C]` (the tied LM head reads `wte` this way).
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub w_off: usize,
    pub b_off: Option<usize>,
    pub c: usize,
    pub oc: usize,
    pub w_out_in: bool,
}

/// A LayerNorm's weight and bias offsets inside a parameter buffer, over `c` channels.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    pub w_off: usize,
    pub b_off: usize,
    pub c: usize,
}

/// Shape of one attention call: batch, sequence, query heads, key/value heads, head width.
///
/// Rows of the packed `qkv (B,T,W)` buffer hold the query heads, then the key heads, then the
/// value heads, each `head_dim` wide: `W = (nh + 2 n_kv_head) head_dim`. Query head `h` reads
/// key/value head `h / (nh / n_kv_head)` (grouped-query attention, transformers'
/// `repeat_kv`); GPT-2 is the case `n_kv_head = nh`, `head_dim = C / nh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Multi-head attention over `c` channels in `nh` heads (GPT-2).
    pub fn mha(b: usize, t: usize, c: usize, nh: usize) -> Self {
        AttnShape {
            b,
            t,
            nh,
            n_kv_head: nh,
            head_dim: c / nh,
        }
    }

    /// Width of the attention output row, `nh * head_dim`.
    pub fn q_width(&self) -> usize {
        self.nh * self.head_dim
    }

    /// Width of a packed `qkv` row, `(nh + 2 n_kv_head) * head_dim`.
    pub fn qkv_width(&self) -> usize {
        (self.nh + 2 * self.n_kv_head) * self.head_dim
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.nh / self.n_kv_head
    }
}

/// An RMSNorm's weight offset inside a parameter buffer, over rows of `c` channels
/// (`y = x / sqrt(mean(x^2) + eps) * w`, transformers' `LlamaRMSNorm`, computed in fp32).
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub w_off: usize,
    pub c: usize,
    pub eps: f32,
}

/// Qwen3's per-head RMSNorm of queries and keys (`q_norm`, `k_norm`, each `[head_dim]`),
/// applied to the query and key heads of a packed `qkv` buffer before RoPE.
#[derive(Clone, Copy, Debug)]
pub struct QkNorm {
    pub q_w_off: usize,
    pub k_w_off: usize,
    pub eps: f32,
}

/// `offset..offset + n` inside a buffer of `len` elements, or [`DeviceError::OutOfRange`].
pub(crate) fn check_range(
    op: &'static str,
    offset: usize,
    n: usize,
    len: usize,
) -> Result<(), DeviceError> {
    let end = offset.saturating_add(n);
    if end > len {
        return Err(DeviceError::OutOfRange {
            op,
            offset,
            end,
            len,
        });
    }
    Ok(())
}

/// Every token id below `vocab_size` (or [`IGNORE_INDEX`] when `ignore` allows targets to
/// skip the loss), or [`DeviceError::BadToken`] naming the first that is not.
pub(crate) fn check_tokens(
    op: &'static str,
    tokens: &[u32],
    vocab_size: usize,
    ignore: bool,
) -> Result<(), DeviceError> {
    let bad = tokens
        .iter()
        .find(|&&t| !(ignore && t == IGNORE_INDEX) && t as usize >= vocab_size);
    match bad {
        Some(&token) => Err(DeviceError::BadToken {
            op,
            token,
            vocab_size,
        }),
        None => Ok(()),
    }
}

/// A shape the kernels can run: heads split evenly into key/value groups. A violation is a
/// programmer error (the model validates its config first).
pub(crate) fn check_attn_shape(s: AttnShape) {
    assert!(
        s.nh > 0 && s.n_kv_head > 0 && s.nh.is_multiple_of(s.n_kv_head) && s.head_dim > 0,
        "attention shape {s:?}: heads must split evenly into key/value heads"
    );
}

/// Checks a RoPE call: qkv (B,T,W) of `qkv_len` elements, an even head width, and a table of
/// `table_len` elements covering at least T positions; returns the table's positions.
/// Violations are programmer errors.
pub(crate) fn check_rope(qkv_len: usize, table_len: usize, s: AttnShape) -> usize {
    assert_eq!(
        qkv_len,
        s.b * s.t * s.qkv_width(),
        "rope: qkv is not (B,T,W)"
    );
    assert!(
        s.head_dim.is_multiple_of(2),
        "rope: head_dim {} is odd",
        s.head_dim
    );
    let half = s.head_dim / 2;
    assert!(
        table_len.is_multiple_of(2 * half) && table_len / (2 * half) >= s.t,
        "rope: the table covers fewer than {} positions",
        s.t
    );
    table_len / (2 * half)
}

/// A device-to-host copy in flight ([`Device::start_download`]): the device buffer it reads
/// and the host buffer it fills belong to the transfer until [`Device::finish_download`]
/// hands them back, so neither can be reused, written or read before the copy is done — the
/// type system holds the rule the aio engine holds for the kernel's buffers.
pub struct Download<D: Device> {
    // Declared first, dropped first: a GPU host buffer's drop waits for its copy stream, so
    // an abandoned transfer never frees the device memory it is still reading.
    dst: D::HostBuffer,
    src: D::Buffer,
    event: D::Event,
}

impl<D: Device> Download<D> {
    /// Elements being copied (the device buffer's length).
    pub fn len(&self) -> usize {
        self.src.len()
    }

    /// True when nothing is being copied.
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }
}

/// A buffer of fp32 elements in device memory.
pub trait DeviceBuffer: Send {
    /// Number of fp32 elements.
    fn len(&self) -> usize;
    /// True when the buffer holds no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A compute device: budgeted buffers, host copies with completion events, and layer ops.
///
/// Shapes follow llm.c: `B` batch, `T` time, `C` channels, `V` vocabulary, `NH` heads, and
/// `N = B*T` rows. Every `*_backward` adds into its gradient outputs.
pub trait Device: Send + Sync + Sized {
    type Buffer: DeviceBuffer;
    type Event;
    /// Host memory the device copies into asynchronously: page-locked on a GPU (so the copy is
    /// DMA on its own stream), a plain vector on the CPU.
    type HostBuffer: Send + std::ops::Deref<Target = [f32]> + std::ops::DerefMut;
    /// Host memory registered for DMA by [`Device::register_host`], until dropped.
    type HostRegistration: Send;

    /// Human-readable name (`cpu (2 threads)`, `cuda:0 (H100)`).
    fn name(&self) -> String;
    /// The memory account of this device.
    fn budget(&self) -> &MemoryBudget;
    /// The host compute pool this device's kernels run on, for the CPU optimizer to share
    /// (one pool of threads per run on the CPU backend); `None` when the device computes
    /// elsewhere (a GPU), and the optimizer then keeps its own.
    fn host_pool(&self) -> Option<std::sync::Arc<crate::threads::ThreadPool>> {
        None
    }
    /// A zero-filled buffer of `len` fp32 elements charged to the budget as `what`.
    fn alloc(&self, what: &str, len: usize) -> Result<Self::Buffer, DeviceError>;
    /// Copies `src` into `dst[offset..]`, widening half precision to fp32, ordered after every
    /// op enqueued before it and before every op enqueued after. `src` must stay unchanged
    /// until the returned event has been waited ([`Device::wait`]): a GPU reads page-locked
    /// memory by DMA after this returns.
    fn upload(
        &self,
        dst: &mut Self::Buffer,
        offset: usize,
        src: HostSlice<'_>,
    ) -> Result<Self::Event, DeviceError>;
    /// Copies `src[offset..offset + dst.len()]` to the host.
    fn download(
        &self,
        src: &Self::Buffer,
        offset: usize,
        dst: &mut [f32],
    ) -> Result<Self::Event, DeviceError>;
    /// Blocks until the work behind `event` is done.
    fn wait(&self, event: Self::Event) -> Result<(), DeviceError>;
    /// A host buffer of `len` fp32 elements for [`Device::start_download`] (host memory, not
    /// charged to the device budget).
    fn alloc_host(&self, what: &str, len: usize) -> Result<Self::HostBuffer, DeviceError>;
    /// Starts copying all of `src` into `dst[..src.len()]` after every op enqueued so far
    /// (the one that wrote `src` included), and returns at once: later ops run while the copy
    /// does. Both buffers are the transfer's until [`Device::finish_download`]. The CPU
    /// backend copies before returning.
    ///
    /// # Errors
    /// `dst` shorter than `src` ([`DeviceError::OutOfRange`]), or the backend's.
    fn start_download(
        &self,
        src: Self::Buffer,
        dst: Self::HostBuffer,
    ) -> Result<Download<Self>, DeviceError>;
    /// Waits for a transfer and hands back its device buffer and the filled host buffer.
    fn finish_download(
        &self,
        d: Download<Self>,
    ) -> Result<(Self::Buffer, Self::HostBuffer), DeviceError>;
    /// Registers existing host memory (the swap store's pool, a pinned host tier) so copies
    /// from and into it are DMA with no staging copy: `cuMemHostRegister` on a GPU (when the
    /// driver refuses, e.g. under a memlock limit, it is logged and copies stay staged); the
    /// CPU does nothing.
    ///
    /// # Safety
    /// `ptr..ptr + len` stays mapped until the returned registration is dropped.
    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Self::HostRegistration;
    /// Whether a download runs while later ops compute (a GPU's copy stream): then the engine
    /// keeps one group's gradients in flight while the next stage computes, at the price of
    /// a second host buffer; otherwise it finishes each at once.
    fn copies_overlap(&self) -> bool {
        false
    }
    /// Sets every element of `buf` to zero.
    fn zero(&self, buf: &mut Self::Buffer) -> Result<(), DeviceError>;
    /// `dst += src`, element-wise (residual backward, gradient accumulation).
    fn add_assign(&self, dst: &mut Self::Buffer, src: &Self::Buffer) -> Result<(), DeviceError>;
    /// `dst[dst_off..][..n] = src[src_off..][..n]`, in the device's order (a gathered group
    /// taken out of its padded collective buffer, gradients put into one).
    ///
    /// # Errors
    /// A range outside its buffer ([`DeviceError::OutOfRange`]), or the backend's.
    fn copy(
        &self,
        dst: &mut Self::Buffer,
        dst_off: usize,
        src: &Self::Buffer,
        src_off: usize,
        n: usize,
    ) -> Result<(), DeviceError>;
    /// `out = a + b`, element-wise (residual forward).
    fn residual_forward(
        &self,
        out: &mut Self::Buffer,
        a: &Self::Buffer,
        b: &Self::Buffer,
    ) -> Result<(), DeviceError>;

    /// tokens (B,T) -> out (B,T,C) = wte[token] (+ wpe[t] when `wpe_off` is given: GPT-2's
    /// learned positions); `wte` is `[V, C]`, `wpe` `[maxT, C]`.
    #[allow(clippy::too_many_arguments)]
    fn encoder_forward(
        &self,
        out: &mut Self::Buffer,
        tokens: &[u32],
        params: &Self::Buffer,
        wte_off: usize,
        wpe_off: Option<usize>,
        t: usize,
        c: usize,
        vocab_size: usize,
    ) -> Result<(), DeviceError>;
    /// dout (B,T,C) -> dwte, dwpe (+=; dwpe only when `dwpe_off` is given).
    #[allow(clippy::too_many_arguments)]
    fn encoder_backward(
        &self,
        dparams: &mut Self::Buffer,
        dwte_off: usize,
        dwpe_off: Option<usize>,
        dout: &Self::Buffer,
        tokens: &[u32],
        t: usize,
        c: usize,
    ) -> Result<(), DeviceError>;
    /// inp (N,C) -> out (N,C), mean (N), rstd (N); eps 1e-5.
    fn layernorm_forward(
        &self,
        out: &mut Self::Buffer,
        mean: &mut Self::Buffer,
        rstd: &mut Self::Buffer,
        inp: &Self::Buffer,
        params: &Self::Buffer,
        norm: Norm,
    ) -> Result<(), DeviceError>;
    /// dout (N,C) -> dinp (N,C), dweight, dbias (+=).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dinp: &mut Self::Buffer,
        dparams: &mut Self::Buffer,
        dout: &Self::Buffer,
        inp: &Self::Buffer,
        params: &Self::Buffer,
        mean: &Self::Buffer,
        rstd: &Self::Buffer,
        norm: Norm,
    ) -> Result<(), DeviceError>;
    /// inp (N,C) -> out (N,OC) = inp @ W + b.
    fn matmul_forward(
        &self,
        out: &mut Self::Buffer,
        inp: &Self::Buffer,
        params: &Self::Buffer,
        lin: Linear,
    ) -> Result<(), DeviceError>;
    /// dout (N,OC) -> dinp (N,C), dW, db (+=).
    fn matmul_backward(
        &self,
        dinp: &mut Self::Buffer,
        dparams: &mut Self::Buffer,
        dout: &Self::Buffer,
        inp: &Self::Buffer,
        params: &Self::Buffer,
        lin: Linear,
    ) -> Result<(), DeviceError>;
    /// qkv (B,T,W) -> out (B,T,NH*HD), att (B,NH,T,T) causal softmax probabilities of
    /// `q k^T / sqrt(HD)`; packing and grouped-query heads as in [`AttnShape`].
    fn attention_forward(
        &self,
        out: &mut Self::Buffer,
        att: &mut Self::Buffer,
        qkv: &Self::Buffer,
        shape: AttnShape,
    ) -> Result<(), DeviceError>;
    /// dout (B,T,NH*HD) -> dqkv (B,T,W) (+=); `scratch` holds (B,NH,T,T) elements.
    fn attention_backward(
        &self,
        dqkv: &mut Self::Buffer,
        scratch: &mut Self::Buffer,
        dout: &Self::Buffer,
        qkv: &Self::Buffer,
        att: &Self::Buffer,
        shape: AttnShape,
    ) -> Result<(), DeviceError>;
    /// inp (N,C) -> out (N,C) = inp * rstd * w, rstd (N) = 1/sqrt(mean(inp^2) + eps).
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Buffer,
        rstd: &mut Self::Buffer,
        inp: &Self::Buffer,
        params: &Self::Buffer,
        norm: RmsNorm,
    ) -> Result<(), DeviceError>;
    /// dout (N,C) -> dinp (N,C), dweight (+=).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dinp: &mut Self::Buffer,
        dparams: &mut Self::Buffer,
        dout: &Self::Buffer,
        inp: &Self::Buffer,
        params: &Self::Buffer,
        rstd: &Self::Buffer,
        norm: RmsNorm,
    ) -> Result<(), DeviceError>;
    /// Qwen3: qkv (B,T,W) -> out (B,T,W) with every query head RMS-normed by `q_norm` and
    /// every key head by `k_norm` (rows of HD), values copied; rstd (B*T*(NH+KV)).
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_forward(
        &self,
        out: &mut Self::Buffer,
        rstd: &mut Self::Buffer,
        qkv: &Self::Buffer,
        params: &Self::Buffer,
        norm: QkNorm,
        shape: AttnShape,
    ) -> Result<(), DeviceError>;
    /// dout (B,T,W) -> dqkv (B,T,W), dq_norm, dk_norm (+=); values' gradient passes through.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_backward(
        &self,
        dqkv: &mut Self::Buffer,
        dparams: &mut Self::Buffer,
        dout: &Self::Buffer,
        qkv: &Self::Buffer,
        params: &Self::Buffer,
        rstd: &Self::Buffer,
        norm: QkNorm,
        shape: AttnShape,
    ) -> Result<(), DeviceError>;
    /// Rotates the query and key heads of qkv (B,T,W) in place by RoPE at positions `0..T`
    /// (transformers' `apply_rotary_pos_emb` with `rotate_half`: the head's two halves form the
    /// pairs). `table` holds `cos (P, HD/2)` then `sin (P, HD/2)` for `P >= T` positions.
    fn rope_forward(
        &self,
        qkv: &mut Self::Buffer,
        table: &Self::Buffer,
        shape: AttnShape,
    ) -> Result<(), DeviceError>;
    /// The transpose of [`Device::rope_forward`], in place on dqkv (B,T,W): turns the
    /// gradient of the rotated heads into that of the unrotated ones.
    fn rope_backward(
        &self,
        dqkv: &mut Self::Buffer,
        table: &Self::Buffer,
        shape: AttnShape,
    ) -> Result<(), DeviceError>;
    /// SwiGLU: inp (N,2I) rows `[gate | up]` -> out (N,I) = silu(gate) * up (transformers'
    /// `LlamaMLP` before `down_proj`, `hidden_act = "silu"`).
    fn swiglu_forward(
        &self,
        out: &mut Self::Buffer,
        inp: &Self::Buffer,
        intermediate_size: usize,
    ) -> Result<(), DeviceError>;
    /// dout (N,I) -> dinp (N,2I) (+=).
    fn swiglu_backward(
        &self,
        dinp: &mut Self::Buffer,
        inp: &Self::Buffer,
        dout: &Self::Buffer,
        intermediate_size: usize,
    ) -> Result<(), DeviceError>;
    /// out = gelu_tanh(inp), element-wise.
    fn gelu_forward(&self, out: &mut Self::Buffer, inp: &Self::Buffer) -> Result<(), DeviceError>;
    /// dinp += gelu_tanh'(inp) * dout.
    fn gelu_backward(
        &self,
        dinp: &mut Self::Buffer,
        inp: &Self::Buffer,
        dout: &Self::Buffer,
    ) -> Result<(), DeviceError>;
    /// logits (N,V) -> probs in place (softmax), losses (N) = -log probs[target]; a target of
    /// [`IGNORE_INDEX`] (transformers' label -100) has loss 0.
    fn softmax_crossentropy_forward(
        &self,
        probs: &mut Self::Buffer,
        losses: &mut Self::Buffer,
        targets: &[u32],
        vocab_size: usize,
    ) -> Result<(), DeviceError>;
    /// dlogits (N,V) += (probs - onehot(target)) * dloss, the gradient of `dloss * sum(losses)`;
    /// rows whose target is [`IGNORE_INDEX`] get nothing.
    fn softmax_crossentropy_backward(
        &self,
        dlogits: &mut Self::Buffer,
        probs: &Self::Buffer,
        targets: &[u32],
        vocab_size: usize,
        dloss: f32,
    ) -> Result<(), DeviceError>;
}
