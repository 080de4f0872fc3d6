//! The CPU device backend: fp32 buffers in host RAM charged to a device memory budget,
//! multi-threaded layer kernels (`gemm` for products, the run's compute pool for the rest),
//! synchronous work with completed events.
//!
//! It is a real backend, not a test double: the trainer and the engine run on it. Shape
//! mismatches between buffers are programmer errors and assert; bad token ids and
//! out-of-budget allocations are the world's errors and return [`DeviceError`].

pub mod attention;
pub mod kernels;

use std::sync::Arc;

use super::{
    check_attn_shape, check_range, check_rope, check_tokens, AttnShape, Device, DeviceBuffer,
    DeviceError, Download, HostSlice, Linear, MemoryBudget, Norm, QkNorm, RmsNorm,
};
use crate::threads::ThreadPool;

/// An fp32 buffer in host memory; its bytes go back to the budget when it is dropped.
#[derive(Debug)]
pub struct CpuBuffer {
    data: Vec<f32>,
    budget: MemoryBudget,
}

impl CpuBuffer {
    /// The elements, for kernels and tests.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The elements, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        self.budget.release(bytes_of(self.data.len()));
    }
}

impl DeviceBuffer for CpuBuffer {
    fn len(&self) -> usize {
        self.data.len()
    }
}

/// A completed unit of CPU work (the CPU runs everything synchronously). On a device
/// [`CpuDevice::with_late_copies`] made, an upload's event also carries a copy of its source,
/// and waiting it checks the source is unchanged: the rule a GPU's asynchronous DMA needs.
#[derive(Debug, Default)]
pub struct CpuEvent {
    source: Option<SourceCheck>,
}

/// An upload's source as it was when the upload was made, and where it lives.
#[derive(Debug)]
struct SourceCheck {
    ptr: *const u8,
    bytes: Vec<u8>,
}

// SAFETY: the pointer is only read in `CpuDevice::wait`, under the upload contract (the
// source stays, unchanged, until the event is waited), from whichever thread waits it.
unsafe impl Send for SourceCheck {}

/// The CPU device: a compute pool (shared with the optimizer in a training run) and a memory
/// budget.
#[derive(Debug)]
pub struct CpuDevice {
    pool: Arc<ThreadPool>,
    budget: MemoryBudget,
    /// Downloads copy when they are finished rather than when they start (see
    /// [`CpuDevice::with_late_copies`]).
    late_copies: bool,
}

impl CpuDevice {
    /// A CPU device running kernels on a compute pool of its own with `threads` threads (at
    /// least one) under `budget_bytes`. A training run creates one pool and passes it to both
    /// the device and the optimizer instead: see [`CpuDevice::with_pool`].
    ///
    /// # Panics
    /// When the OS cannot start the pool's threads (as `std::thread::spawn` does).
    pub fn new(threads: usize, budget_bytes: u64) -> Self {
        match ThreadPool::new(threads) {
            Ok(pool) => Self::with_pool(Arc::new(pool), budget_bytes),
            Err(e) => panic!("CpuDevice::new: {e}"),
        }
    }

    /// A CPU device running its kernels on `pool` (the run's one compute pool, also given to
    /// `Adam::with_pool`) under `budget_bytes`; products use as many threads as the pool has.
    pub fn with_pool(pool: Arc<ThreadPool>, budget_bytes: u64) -> Self {
        CpuDevice {
            pool,
            budget: MemoryBudget::new(budget_bytes),
            late_copies: false,
        }
    }

    /// The same device with copies that hold a GPU's rules: each download copies only when
    /// it is finished, and the device says its copies overlap compute, so the engine keeps one
    /// in flight while the next stage computes; each upload's event remembers its source, and
    /// waiting the event asserts the source did not change meanwhile (a GPU reads it by DMA
    /// until then). Results must not change (the engine tests run it): an engine that read a
    /// transfer's host buffer early, wrote its device buffer before finishing it, or reused an
    /// upload's source (a pool buffer, the staging buffer) before its event fired would see
    /// other numbers or this assertion.
    ///
    /// # Safety
    /// For tests of the stream rules. Every upload's source must stay allocated, and be
    /// written by nothing, until its event is waited: `wait` reads it again through the
    /// pointer the upload saw (a source changed in between is caught on a best-effort basis
    /// and is undefined behaviour in Rust's memory model, which is why this is `unsafe`).
    pub unsafe fn with_late_copies(mut self) -> Self {
        self.late_copies = true;
        self
    }

    /// Threads the kernels run on (those of the pool).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The compute pool the kernels run on.
    pub fn pool(&self) -> &Arc<ThreadPool> {
        &self.pool
    }
}

fn bytes_of(len: usize) -> u64 {
    len as u64 * 4
}

/// Width of a packed qkv row.
fn width(s: AttnShape) -> usize {
    s.qkv_width()
}

impl Device for CpuDevice {
    type Buffer = CpuBuffer;
    type Event = CpuEvent;
    type HostBuffer = Vec<f32>;
    type HostRegistration = ();

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }

    fn host_pool(&self) -> Option<Arc<ThreadPool>> {
        Some(self.pool.clone())
    }

    fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    fn alloc(&self, what: &str, len: usize) -> Result<CpuBuffer, DeviceError> {
        self.budget.charge(what, bytes_of(len))?;
        Ok(CpuBuffer {
            data: vec![0.0; len],
            budget: self.budget.clone(),
        })
    }

    fn upload(
        &self,
        dst: &mut CpuBuffer,
        offset: usize,
        src: HostSlice<'_>,
    ) -> Result<CpuEvent, DeviceError> {
        check_range("upload", offset, src.len(), dst.len())?;
        let d = &mut dst.data[offset..offset + src.len()];
        match src {
            HostSlice::F32(s) => d.copy_from_slice(s),
            HostSlice::F16(s) => d.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32()),
            HostSlice::Bf16(s) => d.iter_mut().zip(s).for_each(|(d, s)| *d = s.to_f32()),
        }
        let source = self.late_copies.then(|| {
            let bytes = src.as_bytes();
            SourceCheck {
                ptr: bytes.as_ptr(),
                bytes: bytes.to_vec(),
            }
        });
        Ok(CpuEvent { source })
    }

    fn download(
        &self,
        src: &CpuBuffer,
        offset: usize,
        dst: &mut [f32],
    ) -> Result<CpuEvent, DeviceError> {
        check_range("download", offset, dst.len(), src.len())?;
        dst.copy_from_slice(&src.data[offset..offset + dst.len()]);
        Ok(CpuEvent::default())
    }

    fn wait(&self, event: CpuEvent) -> Result<(), DeviceError> {
        if let Some(c) = event.source {
            // SAFETY: whoever made this device with `with_late_copies` keeps every upload's
            // source allocated and unwritten until its event is waited.
            let now = unsafe { std::slice::from_raw_parts(c.ptr, c.bytes.len()) };
            assert!(
                now == c.bytes.as_slice(),
                "an upload's source changed before its event was waited (a GPU would have \
                 copied the new bytes)"
            );
        }
        Ok(())
    }

    fn alloc_host(&self, _what: &str, len: usize) -> Result<Vec<f32>, DeviceError> {
        Ok(vec![0.0; len])
    }

    fn start_download(
        &self,
        src: CpuBuffer,
        mut dst: Vec<f32>,
    ) -> Result<Download<Self>, DeviceError> {
        check_range("start_download", 0, src.len(), dst.len())?;
        if !self.late_copies {
            dst[..src.len()].copy_from_slice(&src.data);
        }
        Ok(Download {
            dst,
            src,
            event: CpuEvent::default(),
        })
    }

    fn finish_download(&self, d: Download<Self>) -> Result<(CpuBuffer, Vec<f32>), DeviceError> {
        self.wait(d.event)?;
        let Download { mut dst, src, .. } = d;
        if self.late_copies {
            dst[..src.len()].copy_from_slice(&src.data);
        }
        Ok((src, dst))
    }

    fn copies_overlap(&self) -> bool {
        self.late_copies
    }

    unsafe fn register_host(&self, _ptr: *const u8, _len: usize) {}

    fn zero(&self, buf: &mut CpuBuffer) -> Result<(), DeviceError> {
        buf.data.fill(0.0);
        Ok(())
    }

    fn add_assign(&self, dst: &mut CpuBuffer, src: &CpuBuffer) -> Result<(), DeviceError> {
        assert_eq!(dst.len(), src.len(), "add_assign: length mismatch");
        dst.data
            .iter_mut()
            .zip(&src.data)
            .for_each(|(d, s)| *d += s);
        Ok(())
    }

    fn copy(
        &self,
        dst: &mut CpuBuffer,
        dst_off: usize,
        src: &CpuBuffer,
        src_off: usize,
        n: usize,
    ) -> Result<(), DeviceError> {
        check_range("copy", src_off, n, src.len())?;
        check_range("copy", dst_off, n, dst.len())?;
        dst.data[dst_off..dst_off + n].copy_from_slice(&src.data[src_off..src_off + n]);
        Ok(())
    }

    fn residual_forward(
        &self,
        out: &mut CpuBuffer,
        a: &CpuBuffer,
        b: &CpuBuffer,
    ) -> Result<(), DeviceError> {
        assert!(
            out.len() == a.len() && a.len() == b.len(),
            "residual: length mismatch"
        );
        for ((o, x), y) in out.data.iter_mut().zip(&a.data).zip(&b.data) {
            *o = x + y;
        }
        Ok(())
    }

    fn encoder_forward(
        &self,
        out: &mut CpuBuffer,
        tokens: &[u32],
        params: &CpuBuffer,
        wte_off: usize,
        wpe_off: Option<usize>,
        t: usize,
        c: usize,
        vocab_size: usize,
    ) -> Result<(), DeviceError> {
        check_tokens("encoder_forward", tokens, vocab_size, false)?;
        assert_eq!(
            out.len(),
            tokens.len() * c,
            "encoder_forward: out is not (B,T,C)"
        );
        assert_eq!(tokens.len() % t, 0, "encoder_forward: tokens are not (B,T)");
        let wte = &params.data[wte_off..wte_off + vocab_size * c];
        let wpe = wpe_off.map(|o| &params.data[o..o + t * c]);
        kernels::encoder_forward(&mut out.data, tokens, wte, wpe, t, c);
        Ok(())
    }

    fn encoder_backward(
        &self,
        dparams: &mut CpuBuffer,
        dwte_off: usize,
        dwpe_off: Option<usize>,
        dout: &CpuBuffer,
        tokens: &[u32],
        t: usize,
        c: usize,
    ) -> Result<(), DeviceError> {
        assert_eq!(
            dout.len(),
            tokens.len() * c,
            "encoder_backward: dout is not (B,T,C)"
        );
        let max_tok = tokens.iter().copied().max().unwrap_or(0) as usize;
        let wte_len = (max_tok + 1) * c;
        check_range("encoder_backward", dwte_off, wte_len, dparams.len())?;
        let Some(dwpe_off) = dwpe_off else {
            let dwte = &mut dparams.data[dwte_off..dwte_off + wte_len];
            kernels::encoder_backward(dwte, None, &dout.data, tokens, t, c);
            return Ok(());
        };
        check_range("encoder_backward", dwpe_off, t * c, dparams.len())?;
        // wte precedes wpe in every layout this backend serves; split there to borrow both.
        assert!(
            dwte_off + wte_len <= dwpe_off,
            "encoder_backward: wte must precede wpe"
        );
        let (a, b) = dparams.data.split_at_mut(dwpe_off);
        kernels::encoder_backward(
            &mut a[dwte_off..],
            Some(&mut b[..t * c]),
            &dout.data,
            tokens,
            t,
            c,
        );
        Ok(())
    }

    fn layernorm_forward(
        &self,
        out: &mut CpuBuffer,
        mean: &mut CpuBuffer,
        rstd: &mut CpuBuffer,
        inp: &CpuBuffer,
        params: &CpuBuffer,
        norm: Norm,
    ) -> Result<(), DeviceError> {
        let c = norm.c;
        assert!(out.len() == inp.len() && mean.len() * c == inp.len() && rstd.len() == mean.len());
        let w = &params.data[norm.w_off..norm.w_off + c];
        let b = &params.data[norm.b_off..norm.b_off + c];
        kernels::layernorm_forward(
            &mut out.data,
            &mut mean.data,
            &mut rstd.data,
            &inp.data,
            w,
            b,
            c,
            &self.pool,
        );
        Ok(())
    }

    fn layernorm_backward(
        &self,
        dinp: &mut CpuBuffer,
        dparams: &mut CpuBuffer,
        dout: &CpuBuffer,
        inp: &CpuBuffer,
        params: &CpuBuffer,
        mean: &CpuBuffer,
        rstd: &CpuBuffer,
        norm: Norm,
    ) -> Result<(), DeviceError> {
        let c = norm.c;
        assert!(dinp.len() == inp.len() && dout.len() == inp.len() && mean.len() * c == inp.len());
        assert_eq!(
            norm.w_off + c,
            norm.b_off,
            "layernorm: bias must follow weight"
        );
        let w = &params.data[norm.w_off..norm.w_off + c];
        let (dw, db) = dparams.data[norm.w_off..norm.b_off + c].split_at_mut(c);
        kernels::layernorm_backward(
            &mut dinp.data,
            dw,
            db,
            &dout.data,
            &inp.data,
            w,
            &mean.data,
            &rstd.data,
            c,
            &self.pool,
        );
        Ok(())
    }

    fn matmul_forward(
        &self,
        out: &mut CpuBuffer,
        inp: &CpuBuffer,
        params: &CpuBuffer,
        lin: Linear,
    ) -> Result<(), DeviceError> {
        assert_eq!(inp.len() % lin.c, 0, "matmul_forward: inp is not (N,C)");
        assert_eq!(
            out.len(),
            inp.len() / lin.c * lin.oc,
            "matmul_forward: out is not (N,OC)"
        );
        kernels::matmul_forward(&mut out.data, &inp.data, &params.data, lin, self.threads());
        Ok(())
    }

    fn matmul_backward(
        &self,
        dinp: &mut CpuBuffer,
        dparams: &mut CpuBuffer,
        dout: &CpuBuffer,
        inp: &CpuBuffer,
        params: &CpuBuffer,
        lin: Linear,
    ) -> Result<(), DeviceError> {
        assert_eq!(dinp.len(), inp.len(), "matmul_backward: dinp is not (N,C)");
        assert_eq!(
            dout.len(),
            inp.len() / lin.c * lin.oc,
            "matmul_backward: dout is not (N,OC)"
        );
        kernels::matmul_backward(
            &mut dinp.data,
            &mut dparams.data,
            &dout.data,
            &inp.data,
            &params.data,
            lin,
            self.threads(),
        );
        Ok(())
    }

    fn attention_forward(
        &self,
        out: &mut CpuBuffer,
        att: &mut CpuBuffer,
        qkv: &CpuBuffer,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let n = s.b * s.t;
        assert_eq!(
            qkv.len(),
            n * s.qkv_width(),
            "attention_forward: qkv is not (B,T,W)"
        );
        assert_eq!(
            out.len(),
            n * s.q_width(),
            "attention_forward: out is not (B,T,NH*HD)"
        );
        assert_eq!(
            att.len(),
            s.b * s.nh * s.t * s.t,
            "attention_forward: att is not (B,NH,T,T)"
        );
        attention::attention_forward(&mut out.data, &mut att.data, &qkv.data, s, &self.pool);
        Ok(())
    }

    fn attention_backward(
        &self,
        dqkv: &mut CpuBuffer,
        scratch: &mut CpuBuffer,
        dout: &CpuBuffer,
        qkv: &CpuBuffer,
        att: &CpuBuffer,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let n = s.b * s.t;
        assert!(
            dqkv.len() == qkv.len()
                && qkv.len() == n * s.qkv_width()
                && scratch.len() == att.len()
                && att.len() == s.b * s.nh * s.t * s.t
                && dout.len() == n * s.q_width(),
            "attention_backward: buffers do not match {s:?}"
        );
        attention::attention_backward(
            &mut dqkv.data,
            &mut scratch.data,
            &dout.data,
            &qkv.data,
            &att.data,
            s,
            &self.pool,
        );
        Ok(())
    }

    fn rmsnorm_forward(
        &self,
        out: &mut CpuBuffer,
        rstd: &mut CpuBuffer,
        inp: &CpuBuffer,
        params: &CpuBuffer,
        norm: RmsNorm,
    ) -> Result<(), DeviceError> {
        let c = norm.c;
        assert!(
            out.len() == inp.len() && rstd.len() * c == inp.len(),
            "rmsnorm_forward: buffers are not (N,C), (N)"
        );
        let w = &params.data[norm.w_off..norm.w_off + c];
        let (out, rstd) = (&mut out.data, &mut rstd.data);
        kernels::rmsnorm_forward(out, rstd, &inp.data, w, c, norm.eps, &self.pool);
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dinp: &mut CpuBuffer,
        dparams: &mut CpuBuffer,
        dout: &CpuBuffer,
        inp: &CpuBuffer,
        params: &CpuBuffer,
        rstd: &CpuBuffer,
        norm: RmsNorm,
    ) -> Result<(), DeviceError> {
        let c = norm.c;
        assert!(
            dinp.len() == inp.len() && dout.len() == inp.len() && rstd.len() * c == inp.len(),
            "rmsnorm_backward: buffers are not (N,C), (N)"
        );
        let w = &params.data[norm.w_off..norm.w_off + c];
        let dw = &mut dparams.data[norm.w_off..norm.w_off + c];
        let (di, go, x, r) = (&mut dinp.data, &dout.data, &inp.data, &rstd.data);
        kernels::rmsnorm_backward(di, dw, go, x, w, r, c, &self.pool);
        Ok(())
    }

    fn qk_norm_forward(
        &self,
        out: &mut CpuBuffer,
        rstd: &mut CpuBuffer,
        qkv: &CpuBuffer,
        params: &CpuBuffer,
        norm: QkNorm,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let (n, hd, heads) = (s.b * s.t, s.head_dim, s.nh + s.n_kv_head);
        assert!(
            out.len() == qkv.len() && qkv.len() == n * s.qkv_width() && rstd.len() == n * heads,
            "qk_norm_forward: buffers do not match {s:?}"
        );
        let qw = &params.data[norm.q_w_off..norm.q_w_off + hd];
        let kw = &params.data[norm.k_w_off..norm.k_w_off + hd];
        let w = width(s);
        for ((orow, xrow), rrow) in out
            .data
            .chunks_exact_mut(w)
            .zip(qkv.data.chunks_exact(w))
            .zip(rstd.data.chunks_exact_mut(heads))
        {
            let (oq, ov) = orow.split_at_mut(heads * hd);
            let (xq, xv) = xrow.split_at(heads * hd);
            let (o_q, o_k) = oq.split_at_mut(s.nh * hd);
            let (x_q, x_k) = xq.split_at(s.nh * hd);
            let (r_q, r_k) = rrow.split_at_mut(s.nh);
            kernels::rmsnorm_rows(o_q, r_q, x_q, qw, hd, norm.eps);
            kernels::rmsnorm_rows(o_k, r_k, x_k, kw, hd, norm.eps);
            ov.copy_from_slice(xv);
        }
        Ok(())
    }

    fn qk_norm_backward(
        &self,
        dqkv: &mut CpuBuffer,
        dparams: &mut CpuBuffer,
        dout: &CpuBuffer,
        qkv: &CpuBuffer,
        params: &CpuBuffer,
        rstd: &CpuBuffer,
        norm: QkNorm,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let (n, hd, heads) = (s.b * s.t, s.head_dim, s.nh + s.n_kv_head);
        assert!(
            dqkv.len() == qkv.len()
                && dout.len() == qkv.len()
                && qkv.len() == n * s.qkv_width()
                && rstd.len() == n * heads,
            "qk_norm_backward: buffers do not match {s:?}"
        );
        assert!(
            norm.q_w_off + hd <= norm.k_w_off,
            "qk_norm_backward: q_norm must precede k_norm"
        );
        let qw = &params.data[norm.q_w_off..norm.q_w_off + hd];
        let kw = &params.data[norm.k_w_off..norm.k_w_off + hd];
        let (a, b) = dparams.data.split_at_mut(norm.k_w_off);
        let (dqw, dkw) = (&mut a[norm.q_w_off..norm.q_w_off + hd], &mut b[..hd]);
        let w = width(s);
        for (((drow, grow), xrow), rrow) in dqkv
            .data
            .chunks_exact_mut(w)
            .zip(dout.data.chunks_exact(w))
            .zip(qkv.data.chunks_exact(w))
            .zip(rstd.data.chunks_exact(heads))
        {
            let (dq, dv) = drow.split_at_mut(heads * hd);
            let (gq, gv) = grow.split_at(heads * hd);
            let (d_q, d_k) = dq.split_at_mut(s.nh * hd);
            let (g_q, g_k) = gq.split_at(s.nh * hd);
            let (x_q, x_k) = xrow[..heads * hd].split_at(s.nh * hd);
            let (r_q, r_k) = rrow.split_at(s.nh);
            kernels::rmsnorm_backward_rows(d_q, g_q, x_q, qw, r_q, hd);
            kernels::rmsnorm_weight_grad(dqw, g_q, x_q, r_q, hd);
            kernels::rmsnorm_backward_rows(d_k, g_k, x_k, kw, r_k, hd);
            kernels::rmsnorm_weight_grad(dkw, g_k, x_k, r_k, hd);
            dv.iter_mut().zip(gv).for_each(|(d, g)| *d += g);
        }
        Ok(())
    }

    fn rope_forward(
        &self,
        qkv: &mut CpuBuffer,
        table: &CpuBuffer,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        check_rope(qkv.len(), table.len(), s);
        kernels::rope(&mut qkv.data, &table.data, s, false, &self.pool);
        Ok(())
    }

    fn rope_backward(
        &self,
        dqkv: &mut CpuBuffer,
        table: &CpuBuffer,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        check_rope(dqkv.len(), table.len(), s);
        kernels::rope(&mut dqkv.data, &table.data, s, true, &self.pool);
        Ok(())
    }

    fn swiglu_forward(
        &self,
        out: &mut CpuBuffer,
        inp: &CpuBuffer,
        i: usize,
    ) -> Result<(), DeviceError> {
        assert!(
            out.len().is_multiple_of(i) && inp.len() == 2 * out.len(),
            "swiglu_forward: buffers are not (N,I), (N,2I)"
        );
        kernels::swiglu_forward(&mut out.data, &inp.data, i, &self.pool);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dinp: &mut CpuBuffer,
        inp: &CpuBuffer,
        dout: &CpuBuffer,
        i: usize,
    ) -> Result<(), DeviceError> {
        assert!(
            dout.len().is_multiple_of(i) && dinp.len() == inp.len() && inp.len() == 2 * dout.len(),
            "swiglu_backward: buffers are not (N,2I), (N,2I), (N,I)"
        );
        kernels::swiglu_backward(&mut dinp.data, &inp.data, &dout.data, i, &self.pool);
        Ok(())
    }

    fn gelu_forward(&self, out: &mut CpuBuffer, inp: &CpuBuffer) -> Result<(), DeviceError> {
        assert_eq!(out.len(), inp.len(), "gelu_forward: length mismatch");
        kernels::gelu_forward(&mut out.data, &inp.data, &self.pool);
        Ok(())
    }

    fn gelu_backward(
        &self,
        dinp: &mut CpuBuffer,
        inp: &CpuBuffer,
        dout: &CpuBuffer,
    ) -> Result<(), DeviceError> {
        assert!(
            dinp.len() == inp.len() && dout.len() == inp.len(),
            "gelu_backward: length mismatch"
        );
        kernels::gelu_backward(&mut dinp.data, &inp.data, &dout.data, &self.pool);
        Ok(())
    }

    fn softmax_crossentropy_forward(
        &self,
        probs: &mut CpuBuffer,
        losses: &mut CpuBuffer,
        targets: &[u32],
        vocab_size: usize,
    ) -> Result<(), DeviceError> {
        check_tokens("crossentropy", targets, vocab_size, true)?;
        assert!(probs.len() == targets.len() * vocab_size && losses.len() == targets.len());
        kernels::softmax_crossentropy_forward(
            &mut probs.data,
            &mut losses.data,
            targets,
            vocab_size,
            &self.pool,
        );
        Ok(())
    }

    fn softmax_crossentropy_backward(
        &self,
        dlogits: &mut CpuBuffer,
        probs: &CpuBuffer,
        targets: &[u32],
        vocab_size: usize,
        dloss: f32,
    ) -> Result<(), DeviceError> {
        check_tokens("crossentropy", targets, vocab_size, true)?;
        assert!(dlogits.len() == probs.len() && probs.len() == targets.len() * vocab_size);
        kernels::softmax_crossentropy_backward(
            &mut dlogits.data,
            &probs.data,
            targets,
            vocab_size,
            dloss,
            &self.pool,
        );
        Ok(())
    }
}
