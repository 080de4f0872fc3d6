//! CUDA device backend (feature `cuda`): every [`Device`] op on an NVIDIA GPU.
//!
//! - **Memory**: fp32 buffers in device memory, each charged to the same [`MemoryBudget`] as
//!   the CPU backend's (and the small scratch an op needs, for as long as it needs it).
//! - **Kernels**: header-free CUDA C under `kernels/`, compiled by NVRTC for this GPU's own
//!   architecture when the device opens ([`kernels`]); the matmuls, attention's included, go
//!   through cuBLAS ([`blas`]).
//! - **Three streams, ordered by events**: kernels and products run on the compute stream in
//!   the order the model calls them. An upload copies the host bytes into fresh staging memory
//!   on the host-to-device stream, which runs while the compute stream works on what came
//!   before; the compute stream waits for it only at the upload's place in its order, then
//!   moves or widens the bytes into the buffer — so a buffer is only ever written in compute
//!   order, and nothing needs per-buffer bookkeeping. The returned event fires when the host
//!   bytes may be reused (the engine waits for it; page-locked sources — the registered swap
//!   pool — are read by DMA, pageable ones staged by the driver). Gradients leave on the
//!   device-to-host stream ([`Device::start_download`]) into page-locked host buffers while
//!   the next stage computes. `download` (losses, logits) waits for everything before it.
//!   Host-to-device DMA thus overlaps compute when the engine fetches a group while the
//!   previous stage's kernels are still running; fetching further ahead along the trace is
//!   the next step of the GPU data path (issue #16).
//! - **Deterministic**: no float atomics; every reduction (rows, columns, the embedding
//!   gradient of repeated tokens) runs in a fixed order, and cuBLAS is bit-reproducible on one
//!   GPU when its products run on one stream (they do: the compute stream), so one GPU gives the same losses bit for bit in every placement —
//!   the promise the CPU backend keeps. The two backends agree to rounding, not bit for bit.
//! - **Precision** ([`MatmulPrecision`]): fp32 products (TF32 off) for parity with the CPU,
//!   or, when the config enables bf16/fp16, 16-bit operands with fp32 accumulation (cuBLAS'
//!   `CUBLAS_COMPUTE_32F_FAST_16BF`/`_16F`: what PyTorch autocast does to a matmul).
//!
//! A missing driver or library is a clear [`DeviceError`] before anything is launched, never a
//! cudarc panic.

pub mod blas;
pub mod kernels;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    result as drv, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};

use crate::device::{
    check_attn_shape, check_range, check_rope, check_tokens, AttnShape, Device, DeviceBuffer,
    DeviceError, Download, HostSlice, Linear, MemoryBudget, Norm, QkNorm, RmsNorm,
};
pub use blas::MatmulPrecision;
use blas::{Blas, Mat};

/// Threads of a row kernel's block (`ROW_THREADS` in `common.cu`).
const ROW_THREADS: u32 = 256;
/// Threads of the cross-entropy row kernel (rows are a vocabulary wide).
const VOCAB_THREADS: u32 = 1024;
/// Threads of an element-wise or column kernel's block.
const ELEM_THREADS: u32 = 256;
/// Rows per partial sum of a column reduction (`CHUNK_ROWS` in `common.cu`).
const CHUNK_ROWS: usize = 64;
/// LayerNorm epsilon, as the CPU backend's (Hugging Face's GPT-2 `layer_norm_epsilon`).
const LN_EPS: f32 = crate::device::cpu::kernels::LN_EPS;

/// Device memory of `len` elements of `T`, charged to a budget until dropped.
#[derive(Debug)]
struct DeviceMem<T> {
    /// Owns the allocation (freed stream-ordered when dropped). A buffer shorter than one
    /// element still holds one (the driver refuses empty allocations): views use `len`.
    _mem: CudaSlice<T>,
    ptr: u64,
    len: usize,
    bytes: u64,
    budget: MemoryBudget,
}

impl<T> DeviceMem<T> {
    /// Address of element `i`.
    fn at(&self, i: usize) -> u64 {
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }

    /// Frees the memory in `stream`'s order (not its allocating stream's), after the ops
    /// already enqueued there; its bytes go back to the budget now.
    fn free_on(self, stream: &CudaStream) -> Result<(), DeviceError> {
        let this = std::mem::ManuallyDrop::new(self);
        this.budget.release(this.bytes);
        // SAFETY: `this` is never dropped, so each field is moved out exactly once.
        let (mem, budget) = unsafe { (std::ptr::read(&this._mem), std::ptr::read(&this.budget)) };
        drop(budget);
        let ptr = mem.leak();
        // SAFETY: `ptr` came from cuMemAllocAsync (the caller checked the context allocates
        // that way) and is freed once, stream-ordered after every op enqueued on `stream`.
        unsafe { drv::free_async(ptr, stream.cu_stream()) }
            .map_err(|e| backend("cuMemFreeAsync", e))
    }
}

impl<T> Drop for DeviceMem<T> {
    fn drop(&mut self) {
        // The memory itself is freed by `CudaSlice`'s drop (right after this), stream-ordered
        // after every op already enqueued that reads it; that free needs the context current
        // on this thread, which may never have touched the device.
        let _ = self._mem.context().bind_to_thread();
        self.budget.release(self.bytes);
    }
}

/// An fp32 buffer in device memory; its bytes go back to the budget when it is dropped.
#[derive(Debug)]
pub struct CudaBuffer(DeviceMem<f32>);

impl CudaBuffer {
    fn at(&self, i: usize) -> u64 {
        self.0.at(i)
    }

    /// The device memory, for libraries that take cudarc slices (NCCL).
    pub(crate) fn mem(&self) -> &CudaSlice<f32> {
        &self.0._mem
    }

    /// The device memory, mutable.
    pub(crate) fn mem_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.0._mem
    }
}

impl DeviceBuffer for CudaBuffer {
    fn len(&self) -> usize {
        self.0.len
    }
}

/// Page-locked host memory (`cuMemHostAlloc`) a device-to-host copy fills by DMA, on the
/// device's copy stream. Dropping it first waits for that stream, so memory a copy still
/// writes is never freed.
pub struct PinnedHost {
    ptr: *mut f32,
    len: usize,
    d2h: Arc<CudaStream>,
}

// SAFETY: the allocation is owned by this value alone (no alias leaves it but the borrows its
// Deref hands out), and page-locked memory may be used and freed from any thread.
unsafe impl Send for PinnedHost {}

impl std::ops::Deref for PinnedHost {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `ptr` points to `len` initialised f32 (zeroed at allocation) owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for PinnedHost {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as for Deref, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        let _ = self.d2h.context().bind_to_thread();
        let _ = self.d2h.synchronize();
        // SAFETY: allocated by cuMemHostAlloc in `alloc_host`, freed once, after every copy
        // into it (all on `d2h`) has finished.
        let _ = unsafe { drv::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}

/// Host memory page-locked for the GPU by [`Device::register_host`]; unregistered when
/// dropped (nothing when registration was refused).
pub struct Registered {
    ptr: *mut std::ffi::c_void,
    ctx: Arc<CudaContext>,
}

// SAFETY: only the address is kept, to unregister it; the driver accepts that from any thread.
unsafe impl Send for Registered {}

impl Drop for Registered {
    fn drop(&mut self) {
        if !self.ptr.is_null() && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` was registered by `register_host` and is unregistered once, before
            // the caller unmaps it.
            let _ = unsafe { cudarc::driver::sys::cuMemHostUnregister(self.ptr) };
        }
    }
}

/// A CUDA device: one GPU, its compute stream and its device-to-host copy stream, its kernels,
/// a cuBLAS handle and the memory budget.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Host-to-device copies (every `upload`), into staging memory while compute runs.
    h2d: Arc<CudaStream>,
    /// Device-to-host copies ([`Device::start_download`]), ordered after the compute stream
    /// by events, so compute goes on while gradients leave.
    d2h: Arc<CudaStream>,
    blas: Blas,
    kernels: HashMap<&'static str, CudaFunction>,
    budget: MemoryBudget,
    name: String,
    arch: String,
    stats: Vec<kernels::KernelStats>,
}

/// Device memory a budget of `"auto"` leaves free on the GPU: the larger of 1 GiB and 5 % of
/// it (the CUDA context, cuBLAS' workspace and the allocator's slack).
pub fn auto_budget_margin_bytes(total_bytes: u64) -> u64 {
    (1u64 << 30).max(total_bytes / 20)
}

fn backend(what: &str, e: impl std::fmt::Debug) -> DeviceError {
    DeviceError::Backend(format!("{what}: {e:?}"))
}

/// `v` as a kernel's `int`, or an error naming the op.
fn int(op: &str, v: usize) -> Result<i32, DeviceError> {
    i32::try_from(v)
        .map_err(|_| DeviceError::Backend(format!("{op}: {v} does not fit a 32-bit int")))
}

/// One block per row.
fn rows_cfg(rows: usize, threads: u32) -> Result<LaunchConfig, DeviceError> {
    Ok(LaunchConfig {
        grid_dim: (
            u32::try_from(rows.max(1)).map_err(|_| backend("rows", rows))?,
            1,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// One thread per element.
fn elems_cfg(n: usize) -> Result<LaunchConfig, DeviceError> {
    let blocks = n.div_ceil(ELEM_THREADS as usize).max(1);
    Ok(LaunchConfig {
        grid_dim: (
            u32::try_from(blocks).map_err(|_| backend("elements", n))?,
            1,
            1,
        ),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The partial-sum kernels: one block per CHUNK_ROWS rows in x (up to 2^31 - 1), one thread
/// per column in y blocks (gridDim.y stops at 65535: 16.7 M columns).
fn columns_cfg(rows: usize, cols: usize) -> Result<(LaunchConfig, usize), DeviceError> {
    let chunks = rows.div_ceil(CHUNK_ROWS).max(1);
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(chunks).map_err(|_| backend("rows", rows))?,
            u32::try_from(cols.div_ceil(ELEM_THREADS as usize).max(1))
                .ok()
                .filter(|&y| y <= 65535)
                .ok_or_else(|| backend("columns", cols))?,
            1,
        ),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((cfg, chunks))
}

/// Launches kernel `$name` on the device's stream with the listed arguments (device addresses
/// as `u64`, sizes as `i32`/`i64`, scalars as `f32`).
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let cfg = $cfg;
        let func = $dev.kernel($name)?;
        let mut builder = $dev.stream.launch_builder(func);
        $( let arg = $arg; builder.arg(&arg); )*
        // SAFETY: the kernel's parameter list in kernels/*.cu matches these arguments in
        // number, order and type (the call sites below mirror the CUDA signatures); every
        // address points into a live buffer whose range the caller checked, and buffers are
        // freed stream-ordered after this launch.
        unsafe { builder.launch(cfg) }
            .map(|_| ())
            .map_err(|e| backend($name, e))
    }};
}

impl CudaDevice {
    /// Opens GPU `ordinal` under `budget_bytes` of device memory ([`auto_budget_bytes`] for
    /// `"auto"`), compiles the kernels for its architecture and creates the cuBLAS handle;
    /// products run at `precision`.
    ///
    /// # Errors
    /// No driver, no such GPU, NVRTC or cuBLAS missing (what to install), a kernel that does not
    /// compile (NVRTC's log) — each before anything is launched.
    pub fn new(
        ordinal: usize,
        budget_bytes: u64,
        precision: MatmulPrecision,
    ) -> Result<Self, DeviceError> {
        let ctx = open_context(ordinal)?;
        // SAFETY: the device orders its three streams itself with explicit events (compute in
        // call order; uploads and downloads waited where they meet compute), so no buffer needs
        // cudarc's per-slice events.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| backend("cuStreamCreate", e))?;
        let h2d = ctx.new_stream().map_err(|e| backend("cuStreamCreate", e))?;
        let d2h = ctx.new_stream().map_err(|e| backend("cuStreamCreate", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| backend("compute capability", e))?;
        let arch = format!("sm_{major}{minor}");
        let compiled = kernels::compile("zinf_kernels.cu", &kernels::program_source(), &arch)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin))
            .map_err(|e| backend("loading the kernels", e))?;
        let mut table = HashMap::new();
        for &name in kernels::KERNELS {
            let f = module
                .load_function(name)
                .map_err(|e| backend(&format!("kernel {name}"), e))?;
            table.insert(name, f);
        }
        let blas = Blas::new(stream.clone(), precision)?;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(CudaDevice {
            ctx,
            stream,
            h2d,
            d2h,
            blas,
            kernels: table,
            budget: MemoryBudget::new(budget_bytes),
            name: format!("cuda:{ordinal} ({gpu}, {arch}, {})", precision.name()),
            arch,
            stats: compiled.stats,
        })
    }

    /// The GPU's architecture the kernels were compiled for (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// What ptxas reported for each kernel (registers, spills) when the device opened.
    pub fn kernel_stats(&self) -> &[kernels::KernelStats] {
        &self.stats
    }

    /// The stream every op of this device runs on (collectives join it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The driver context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Blocks until every op enqueued so far has finished (benchmarks and tests).
    pub fn synchronize(&self) -> Result<(), DeviceError> {
        self.stream
            .synchronize()
            .map_err(|e| backend("synchronize", e))
    }

    fn kernel(&self, name: &'static str) -> Result<&CudaFunction, DeviceError> {
        self.kernels
            .get(name)
            .ok_or_else(|| DeviceError::Backend(format!("kernel {name} was not loaded")))
    }

    /// Device memory for `len` elements of `T`, charged as `what`; unset when `zeroed` is
    /// false.
    fn mem<T: DeviceRepr>(
        &self,
        what: &str,
        len: usize,
        zeroed: bool,
    ) -> Result<DeviceMem<T>, DeviceError> {
        self.mem_on(&self.stream, what, len, zeroed)
    }

    /// [`CudaDevice::mem`] allocated (and freed, when dropped) in the order of `stream`.
    fn mem_on<T: DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        what: &str,
        len: usize,
        zeroed: bool,
    ) -> Result<DeviceMem<T>, DeviceError> {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        self.budget.charge(what, bytes)?;
        // A zero-length allocation is refused by the driver; one element stands in.
        // SAFETY: the memory is zeroed below before any read when `zeroed`; otherwise the caller
        // writes every element before reading it.
        let alloc = unsafe { stream.alloc::<T>(len.max(1)) };
        let mem = match alloc {
            Ok(m) => m,
            Err(e) => {
                self.budget.release(bytes);
                return Err(out_of_memory(what, bytes, e));
            }
        };
        let ptr = mem.device_ptr(stream).0;
        let out = DeviceMem {
            ptr,
            _mem: mem,
            len,
            bytes,
            budget: self.budget.clone(),
        };
        if zeroed {
            assert!(
                Arc::ptr_eq(stream, &self.stream),
                "zeroed memory is the compute stream's"
            );
            self.memset_zero(out.ptr, bytes as usize)?;
        }
        Ok(out)
    }

    /// Makes the device's context current on the calling thread (the raw driver calls below
    /// need it; cudarc's own calls bind for themselves).
    fn bind(&self) -> Result<(), DeviceError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| backend("cuCtxSetCurrent", e))
    }

    fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<(), DeviceError> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `ptr..ptr + bytes` is inside a live allocation (the caller's buffer).
        unsafe { drv::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| backend("cuMemsetD8Async", e))
    }

    /// Copies a host slice into fresh device memory (token ids, targets, index lists). The
    /// host bytes are staged before this returns (pageable memory), so the slice may go.
    fn upload_vec<T: DeviceRepr>(
        &self,
        what: &str,
        data: &[T],
    ) -> Result<DeviceMem<T>, DeviceError> {
        let mem = self.mem::<T>(what, data.len(), false)?;
        self.htod(mem.ptr, data)?;
        Ok(mem)
    }

    fn htod<T>(&self, dst: u64, src: &[T]) -> Result<(), DeviceError> {
        self.htod_on(&self.stream, dst, src)
    }

    /// Copies `src` to `dst` in `stream`'s order. The host bytes must stay until the copy is
    /// done: pageable memory is staged by the driver before this returns; page-locked memory
    /// (registered, or `alloc_host`) is read later, so the caller waits for an event first.
    fn htod_on<T>(&self, stream: &CudaStream, dst: u64, src: &[T]) -> Result<(), DeviceError> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller checked `dst` has room for `src` and keeps `src` until the copy's
        // event fires (pageable memory is staged by CUDA before the call returns).
        unsafe { drv::memcpy_htod_async(dst, src, stream.cu_stream()) }
            .map_err(|e| backend("cuMemcpyHtoDAsync", e))
    }

    fn record(&self) -> Result<CudaEvent, DeviceError> {
        self.stream
            .record_event(None)
            .map_err(|e| backend("cuEventRecord", e))
    }

    /// Adds the partial column sums (chunks, C) into `dst` (C), chunks in order.
    fn colsum_finish(
        &self,
        dst: u64,
        partial: &DeviceMem<f32>,
        chunks: usize,
        c: usize,
    ) -> Result<(), DeviceError> {
        launch!(
            self,
            "colsum_finish",
            elems_cfg(c)?,
            [dst, partial.ptr, int("colsum", chunks)?, int("colsum", c)?]
        )
    }

    /// The RMSNorm kernels over rows addressed as in `llama.cu` (`hpt` heads per token of
    /// width `c`, tokens `stride` apart from column `col0`; rstd at `token * rstd_stride +
    /// rstd_off + head`).
    #[allow(clippy::too_many_arguments)]
    fn rms_forward(
        &self,
        out: u64,
        rstd: u64,
        inp: u64,
        w: u64,
        rows: usize,
        c: usize,
        eps: f32,
        a: RowAddr,
    ) -> Result<(), DeviceError> {
        let op = "rmsnorm_forward";
        launch!(
            self,
            op,
            rows_cfg(rows, ROW_THREADS)?,
            [
                out,
                rstd,
                inp,
                w,
                int(op, rows)?,
                int(op, c)?,
                eps,
                a.hpt,
                a.stride,
                a.col0,
                a.rstd_stride,
                a.rstd_off
            ]
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn rms_backward(
        &self,
        dinp: u64,
        dw: u64,
        dout: u64,
        inp: u64,
        w: u64,
        rstd: u64,
        rows: usize,
        c: usize,
        a: RowAddr,
    ) -> Result<(), DeviceError> {
        let op = "rmsnorm_backward";
        // Scratch first: an op that cannot get its scratch changes nothing.
        let (cfg, chunks) = columns_cfg(rows, c)?;
        let partial = self.mem::<f32>("rmsnorm weight gradient scratch", chunks * c, false)?;
        launch!(
            self,
            "rmsnorm_backward_input",
            rows_cfg(rows, ROW_THREADS)?,
            [
                dinp,
                dout,
                inp,
                w,
                rstd,
                int(op, rows)?,
                int(op, c)?,
                a.hpt,
                a.stride,
                a.col0,
                a.rstd_stride,
                a.rstd_off
            ]
        )?;
        launch!(
            self,
            "rmsnorm_weight_partial",
            cfg,
            [
                partial.ptr,
                dout,
                inp,
                rstd,
                int(op, rows)?,
                int(op, c)?,
                a.hpt,
                a.stride,
                a.col0,
                a.rstd_stride,
                a.rstd_off
            ]
        )?;
        self.colsum_finish(dw, &partial, chunks, c)
    }
}

/// Row addressing of the RMSNorm kernels (see `llama.cu`).
#[derive(Clone, Copy)]
struct RowAddr {
    hpt: i32,
    stride: i32,
    col0: i32,
    rstd_stride: i32,
    rstd_off: i32,
}

impl RowAddr {
    /// Plain rows of `c` elements, one rstd each.
    fn plain(c: usize) -> Result<Self, DeviceError> {
        Ok(RowAddr {
            hpt: 1,
            stride: int("rmsnorm", c)?,
            col0: 0,
            rstd_stride: 1,
            rstd_off: 0,
        })
    }
}

fn out_of_memory(what: &str, bytes: u64, e: DriverError) -> DeviceError {
    DeviceError::Backend(format!(
        "{what}: the GPU could not allocate {bytes} bytes ({e:?}); lower \
         zinf.device_memory_budget so the engine offloads more, or shrink the micro-batch"
    ))
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // The cuBLAS handle's destruction and the module's unload below need the context
        // current on the dropping thread.
        let _ = self.ctx.bind_to_thread();
    }
}

/// A context on GPU `ordinal`, after checking the driver loads and the GPU exists.
fn open_context(ordinal: usize) -> Result<Arc<CudaContext>, DeviceError> {
    require_driver()?;
    let count = device_count();
    if ordinal >= count {
        return Err(DeviceError::Backend(format!(
            "cuda:{ordinal}: this machine has {count} CUDA GPU(s); pick one of cuda:0..{} or \
             run with zinf.device: \"cpu\"",
            count.saturating_sub(1)
        )));
    }
    CudaContext::new(ordinal).map_err(|e| backend(&format!("cuda:{ordinal}"), e))
}

/// `zinf.device_memory_budget: "auto"` on GPU `ordinal`: its free memory now less
/// [`auto_budget_margin_bytes`] of its total.
///
/// # Errors
/// No driver or no such GPU.
pub fn auto_budget_bytes(ordinal: usize) -> Result<u64, DeviceError> {
    let ctx = open_context(ordinal)?;
    let (free, total) = ctx.mem_get_info().map_err(|e| backend("cuMemGetInfo", e))?;
    Ok((free as u64).saturating_sub(auto_budget_margin_bytes(total as u64)))
}

/// Checks the driver library loads (cudarc panics on first use when it does not).
pub fn require_driver() -> Result<(), DeviceError> {
    // SAFETY: only probes whether the driver library loads; no driver function is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DeviceError::Backend(
            "no CUDA driver found (libcuda.so.1): install the NVIDIA driver, or run with \
             zinf.device: \"cpu\" (--device cpu)"
                .into(),
        ));
    }
    Ok(())
}

/// Number of CUDA GPUs this process can see; 0 when there is no driver.
pub fn device_count() -> usize {
    if require_driver().is_err() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

impl Device for CudaDevice {
    type Buffer = CudaBuffer;
    type Event = CudaEvent;
    type HostBuffer = PinnedHost;
    type HostRegistration = Registered;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    fn alloc(&self, what: &str, len: usize) -> Result<CudaBuffer, DeviceError> {
        Ok(CudaBuffer(self.mem(what, len, true)?))
    }

    fn upload(
        &self,
        dst: &mut CudaBuffer,
        offset: usize,
        src: HostSlice<'_>,
    ) -> Result<CudaEvent, DeviceError> {
        check_range("upload", offset, src.len(), dst.len())?;
        let n = src.len();
        if n == 0 {
            return self.record();
        }
        // The bytes go to fresh staging memory on the copy stream, which runs while the
        // compute stream works on what came before; the compute stream waits for them only
        // where this upload sits in its order, then moves (fp32) or widens (fp16, bf16) them
        // into `dst`. `dst` is thus written in compute order, after every op enqueued before
        // that reads it, with no per-buffer bookkeeping.
        let bytes = src.as_bytes();
        let staged = self.mem_on::<u8>(&self.h2d, "upload staging", bytes.len(), false)?;
        self.htod_on(&self.h2d, staged.ptr, bytes)?;
        let copied = self
            .h2d
            .record_event(None)
            .map_err(|e| backend("cuEventRecord", e))?;
        self.stream
            .wait(&copied)
            .map_err(|e| backend("cuStreamWaitEvent", e))?;
        match src {
            HostSlice::F32(_) => {
                self.bind()?;
                // SAFETY: both ranges were allocated or checked above; the compute stream
                // orders this copy after the staging copy (the wait above).
                unsafe {
                    drv::memcpy_dtod_async(
                        dst.at(offset),
                        staged.ptr,
                        n * 4,
                        self.stream.cu_stream(),
                    )
                }
                .map_err(|e| backend("cuMemcpyDtoDAsync", e))?;
            }
            HostSlice::F16(_) => launch!(
                self,
                "widen_f16",
                elems_cfg(n)?,
                [dst.at(offset), staged.ptr, n as i64]
            )?,
            HostSlice::Bf16(_) => launch!(
                self,
                "widen_bf16",
                elems_cfg(n)?,
                [dst.at(offset), staged.ptr, n as i64]
            )?,
        }
        // The staging memory is freed in the compute stream's order, after the op above read
        // it, so the copy stream never waits for compute and the next upload's copy runs
        // while compute catches up. (Without stream-ordered allocation the drop syncs.)
        if self.ctx.has_async_alloc() {
            staged.free_on(&self.stream)?;
        } else {
            let read = self.record()?;
            self.h2d
                .wait(&read)
                .map_err(|e| backend("cuStreamWaitEvent", e))?;
            drop(staged);
        }
        // The host's source may be reused once the staging copy is done.
        Ok(copied)
    }

    fn download(
        &self,
        src: &CudaBuffer,
        offset: usize,
        dst: &mut [f32],
    ) -> Result<CudaEvent, DeviceError> {
        check_range("download", offset, dst.len(), src.len())?;
        if !dst.is_empty() {
            self.bind()?;
            // SAFETY: the range was checked above; the stream is synchronized before `dst`'s
            // borrow ends, so the copy never outlives it.
            unsafe { drv::memcpy_dtoh_async(dst, src.at(offset), self.stream.cu_stream()) }
                .map_err(|e| backend("cuMemcpyDtoHAsync", e))?;
        }
        self.synchronize()?;
        self.record()
    }

    fn wait(&self, event: CudaEvent) -> Result<(), DeviceError> {
        event
            .synchronize()
            .map_err(|e| backend("cuEventSynchronize", e))
    }

    fn alloc_host(&self, what: &str, len: usize) -> Result<PinnedHost, DeviceError> {
        self.bind()?;
        let bytes = len.max(1) * 4;
        // SAFETY: a fresh allocation of `bytes`; zeroed below before any read.
        let ptr = unsafe { drv::malloc_host(bytes, 0) }
            .map_err(|e| backend(&format!("{what}: cuMemHostAlloc of {bytes} bytes"), e))?
            as *mut f32;
        // SAFETY: `ptr` points to `bytes` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0, len.max(1)) };
        Ok(PinnedHost {
            ptr,
            len,
            d2h: self.d2h.clone(),
        })
    }

    fn start_download(
        &self,
        src: CudaBuffer,
        mut dst: PinnedHost,
    ) -> Result<Download<Self>, DeviceError> {
        check_range("start_download", 0, src.len(), dst.len())?;
        let n = src.len();
        // The copy starts after every op enqueued so far on the compute stream.
        let computed = self.record()?;
        self.d2h
            .wait(&computed)
            .map_err(|e| backend("cuStreamWaitEvent", e))?;
        if n > 0 {
            self.bind()?;
            // SAFETY: `dst` is page-locked and owned by the returned transfer until
            // `finish_download` waits for the copy; `src` too, so neither is reused meanwhile.
            unsafe { drv::memcpy_dtoh_async(&mut dst[..n], src.at(0), self.d2h.cu_stream()) }
                .map_err(|e| backend("cuMemcpyDtoHAsync", e))?;
        }
        let event = self
            .d2h
            .record_event(None)
            .map_err(|e| backend("cuEventRecord", e))?;
        Ok(Download { dst, src, event })
    }

    fn copies_overlap(&self) -> bool {
        true
    }

    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Registered {
        let none = Registered {
            ptr: std::ptr::null_mut(),
            ctx: self.ctx.clone(),
        };
        if len == 0 || self.bind().is_err() {
            return none;
        }
        let flags = cudarc::driver::sys::CU_MEMHOSTREGISTER_PORTABLE;
        // SAFETY: the caller keeps `ptr..ptr + len` mapped until the registration is dropped;
        // registering only page-locks it for the driver, no byte changes.
        let r = unsafe { cudarc::driver::sys::cuMemHostRegister_v2(ptr as *mut _, len, flags) };
        match r.result() {
            Ok(()) => Registered {
                ptr: ptr as *mut _,
                ctx: self.ctx.clone(),
            },
            Err(e) => {
                tracing::warn!(
                    "{len} bytes of host memory not registered with the GPU ({e:?}): copies \
                     from it go through the driver's staging buffers"
                );
                none
            }
        }
    }

    fn finish_download(&self, d: Download<Self>) -> Result<(CudaBuffer, PinnedHost), DeviceError> {
        // `src` bound first, dropped last: on an error `dst`'s drop syncs the copy stream
        // before `src` is freed.
        let Download { src, dst, event } = d;
        self.wait(event)?;
        Ok((src, dst))
    }

    fn zero(&self, buf: &mut CudaBuffer) -> Result<(), DeviceError> {
        self.memset_zero(buf.0.ptr, buf.len() * 4)
    }

    fn add_assign(&self, dst: &mut CudaBuffer, src: &CudaBuffer) -> Result<(), DeviceError> {
        assert_eq!(dst.len(), src.len(), "add_assign: length mismatch");
        let n = dst.len();
        launch!(
            self,
            "add_assign",
            elems_cfg(n)?,
            [dst.at(0), src.at(0), n as i64]
        )
    }

    fn copy(
        &self,
        dst: &mut CudaBuffer,
        dst_off: usize,
        src: &CudaBuffer,
        src_off: usize,
        n: usize,
    ) -> Result<(), DeviceError> {
        check_range("copy", src_off, n, src.len())?;
        check_range("copy", dst_off, n, dst.len())?;
        if n == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges were checked above; the copy is ordered in the compute stream
        // with every op that reads or writes either buffer.
        unsafe {
            drv::memcpy_dtod_async(
                dst.at(dst_off),
                src.at(src_off),
                n * 4,
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| backend("cuMemcpyDtoDAsync", e))
    }

    fn residual_forward(
        &self,
        out: &mut CudaBuffer,
        a: &CudaBuffer,
        b: &CudaBuffer,
    ) -> Result<(), DeviceError> {
        assert!(
            out.len() == a.len() && a.len() == b.len(),
            "residual: length mismatch"
        );
        let n = out.len();
        launch!(
            self,
            "residual_forward",
            elems_cfg(n)?,
            [out.at(0), a.at(0), b.at(0), n as i64]
        )
    }

    fn encoder_forward(
        &self,
        out: &mut CudaBuffer,
        tokens: &[u32],
        params: &CudaBuffer,
        wte_off: usize,
        wpe_off: Option<usize>,
        t: usize,
        c: usize,
        vocab_size: usize,
    ) -> Result<(), DeviceError> {
        let op = "encoder_forward";
        check_tokens(op, tokens, vocab_size, false)?;
        assert_eq!(
            out.len(),
            tokens.len() * c,
            "encoder_forward: out is not (B,T,C)"
        );
        assert_eq!(tokens.len() % t, 0, "encoder_forward: tokens are not (B,T)");
        check_range(op, wte_off, vocab_size * c, params.len())?;
        if let Some(o) = wpe_off {
            check_range(op, o, t * c, params.len())?;
        }
        let dev_tokens = self.upload_vec("token ids", tokens)?;
        let n = tokens.len();
        launch!(
            self,
            op,
            elems_cfg(n * c)?,
            [
                out.at(0),
                dev_tokens.ptr,
                params.at(wte_off),
                params.at(wpe_off.unwrap_or(0)),
                i32::from(wpe_off.is_some()),
                int(op, n)?,
                int(op, t)?,
                int(op, c)?
            ]
        )
    }

    fn encoder_backward(
        &self,
        dparams: &mut CudaBuffer,
        dwte_off: usize,
        dwpe_off: Option<usize>,
        dout: &CudaBuffer,
        tokens: &[u32],
        t: usize,
        c: usize,
    ) -> Result<(), DeviceError> {
        let op = "encoder_backward";
        assert_eq!(
            dout.len(),
            tokens.len() * c,
            "encoder_backward: dout is not (B,T,C)"
        );
        if tokens.is_empty() {
            return Ok(());
        }
        let max_tok = tokens.iter().copied().max().unwrap_or(0) as usize;
        check_range(op, dwte_off, (max_tok + 1) * c, dparams.len())?;
        // Rows grouped by token, each group in row order: one block per distinct token adds
        // its rows in the order the CPU backend does, with no atomics.
        let mut order: Vec<i32> = (0..int(op, tokens.len())?).collect();
        order.sort_by_key(|&r| tokens[r as usize]);
        let mut uniq: Vec<u32> = Vec::new();
        let mut starts: Vec<i32> = Vec::new();
        for (k, &r) in order.iter().enumerate() {
            let tok = tokens[r as usize];
            if uniq.last() != Some(&tok) {
                uniq.push(tok);
                starts.push(k as i32);
            }
        }
        starts.push(order.len() as i32);
        let (d_uniq, d_starts, d_rows) = (
            self.upload_vec("embedding gradient index", &uniq)?,
            self.upload_vec("embedding gradient index", &starts)?,
            self.upload_vec("embedding gradient index", &order)?,
        );
        launch!(
            self,
            "encoder_backward_wte",
            rows_cfg(uniq.len(), ROW_THREADS)?,
            [
                dparams.at(dwte_off),
                dout.at(0),
                d_uniq.ptr,
                d_starts.ptr,
                d_rows.ptr,
                int(op, c)?
            ]
        )?;
        if let Some(o) = dwpe_off {
            check_range(op, o, t * c, dparams.len())?;
            let b = tokens.len() / t;
            launch!(
                self,
                "encoder_backward_wpe",
                elems_cfg(t * c)?,
                [
                    dparams.at(o),
                    dout.at(0),
                    int(op, b)?,
                    int(op, t)?,
                    int(op, c)?
                ]
            )?;
        }
        Ok(())
    }

    fn layernorm_forward(
        &self,
        out: &mut CudaBuffer,
        mean: &mut CudaBuffer,
        rstd: &mut CudaBuffer,
        inp: &CudaBuffer,
        params: &CudaBuffer,
        norm: Norm,
    ) -> Result<(), DeviceError> {
        let (op, c) = ("layernorm_forward", norm.c);
        assert!(out.len() == inp.len() && mean.len() * c == inp.len() && rstd.len() == mean.len());
        check_range(op, norm.w_off, c, params.len())?;
        check_range(op, norm.b_off, c, params.len())?;
        let n = mean.len();
        launch!(
            self,
            op,
            rows_cfg(n, ROW_THREADS)?,
            [
                out.at(0),
                mean.at(0),
                rstd.at(0),
                inp.at(0),
                params.at(norm.w_off),
                params.at(norm.b_off),
                int(op, n)?,
                int(op, c)?,
                LN_EPS
            ]
        )
    }

    fn layernorm_backward(
        &self,
        dinp: &mut CudaBuffer,
        dparams: &mut CudaBuffer,
        dout: &CudaBuffer,
        inp: &CudaBuffer,
        params: &CudaBuffer,
        mean: &CudaBuffer,
        rstd: &CudaBuffer,
        norm: Norm,
    ) -> Result<(), DeviceError> {
        let (op, c) = ("layernorm_backward", norm.c);
        assert!(dinp.len() == inp.len() && dout.len() == inp.len() && mean.len() * c == inp.len());
        check_range(op, norm.w_off, c, params.len())?;
        check_range(op, norm.w_off, c, dparams.len())?;
        check_range(op, norm.b_off, c, dparams.len())?;
        let n = mean.len();
        // Scratch first: an op that cannot get its scratch changes nothing.
        let (cfg, chunks) = columns_cfg(n, c)?;
        let pdw = self.mem::<f32>("layernorm gradient scratch", chunks * c, false)?;
        let pdb = self.mem::<f32>("layernorm gradient scratch", chunks * c, false)?;
        launch!(
            self,
            "layernorm_backward_input",
            rows_cfg(n, ROW_THREADS)?,
            [
                dinp.at(0),
                dout.at(0),
                inp.at(0),
                params.at(norm.w_off),
                mean.at(0),
                rstd.at(0),
                int(op, n)?,
                int(op, c)?
            ]
        )?;
        launch!(
            self,
            "layernorm_param_partial",
            cfg,
            [
                pdw.ptr,
                pdb.ptr,
                dout.at(0),
                inp.at(0),
                mean.at(0),
                rstd.at(0),
                int(op, n)?,
                int(op, c)?
            ]
        )?;
        self.colsum_finish(dparams.at(norm.w_off), &pdw, chunks, c)?;
        self.colsum_finish(dparams.at(norm.b_off), &pdb, chunks, c)
    }

    fn matmul_forward(
        &self,
        out: &mut CudaBuffer,
        inp: &CudaBuffer,
        params: &CudaBuffer,
        lin: Linear,
    ) -> Result<(), DeviceError> {
        let op = "matmul_forward";
        let (c, oc) = (lin.c, lin.oc);
        assert_eq!(inp.len() % c, 0, "matmul_forward: inp is not (N,C)");
        let n = inp.len() / c;
        assert_eq!(out.len(), n * oc, "matmul_forward: out is not (N,OC)");
        check_range(op, lin.w_off, c * oc, params.len())?;
        let x = Mat::rows(inp.at(0), c);
        // out (N,OC) = inp (N,C) @ W, W stored (C,OC), or (OC,C) and read transposed.
        let w = if lin.w_out_in {
            Mat::rows(params.at(lin.w_off), c).t()
        } else {
            Mat::rows(params.at(lin.w_off), oc)
        };
        self.blas
            .gemm(n, oc, c, x, w, Mat::rows(out.at(0), oc), 0.0, 1)?;
        if let Some(b_off) = lin.b_off {
            check_range(op, b_off, oc, params.len())?;
            launch!(
                self,
                "bias_forward",
                elems_cfg(n * oc)?,
                [out.at(0), params.at(b_off), int(op, n)?, int(op, oc)?]
            )?;
        }
        Ok(())
    }

    fn matmul_backward(
        &self,
        dinp: &mut CudaBuffer,
        dparams: &mut CudaBuffer,
        dout: &CudaBuffer,
        inp: &CudaBuffer,
        params: &CudaBuffer,
        lin: Linear,
    ) -> Result<(), DeviceError> {
        let op = "matmul_backward";
        let (c, oc) = (lin.c, lin.oc);
        assert_eq!(dinp.len(), inp.len(), "matmul_backward: dinp is not (N,C)");
        let n = inp.len() / c;
        assert_eq!(dout.len(), n * oc, "matmul_backward: dout is not (N,OC)");
        check_range(op, lin.w_off, c * oc, params.len())?;
        check_range(op, lin.w_off, c * oc, dparams.len())?;
        // Scratch first: an op that cannot get its scratch changes nothing.
        let bias = match lin.b_off {
            Some(b_off) => {
                check_range(op, b_off, oc, dparams.len())?;
                let (cfg, chunks) = columns_cfg(n, oc)?;
                let pdb = self.mem::<f32>("bias gradient scratch", chunks * oc, false)?;
                Some((b_off, cfg, chunks, pdb))
            }
            None => None,
        };
        let g = Mat::rows(dout.at(0), oc);
        let x = Mat::rows(inp.at(0), c);
        if lin.w_out_in {
            // W (OC,C): dinp (N,C) += dout @ W; dW (OC,C) += dout^T @ inp.
            let w = Mat::rows(params.at(lin.w_off), c);
            self.blas
                .gemm(n, c, oc, g, w, Mat::rows(dinp.at(0), c), 1.0, 1)?;
            self.blas.gemm(
                oc,
                c,
                n,
                g.t(),
                x,
                Mat::rows(dparams.at(lin.w_off), c),
                1.0,
                1,
            )?;
        } else {
            // W (C,OC): dinp (N,C) += dout @ W^T; dW (C,OC) += inp^T @ dout.
            let w = Mat::rows(params.at(lin.w_off), oc);
            self.blas
                .gemm(n, c, oc, g, w.t(), Mat::rows(dinp.at(0), c), 1.0, 1)?;
            self.blas.gemm(
                c,
                oc,
                n,
                x.t(),
                g,
                Mat::rows(dparams.at(lin.w_off), oc),
                1.0,
                1,
            )?;
        }
        if let Some((b_off, cfg, chunks, pdb)) = bias {
            launch!(
                self,
                "bias_partial",
                cfg,
                [pdb.ptr, dout.at(0), int(op, n)?, int(op, oc)?]
            )?;
            self.colsum_finish(dparams.at(b_off), &pdb, chunks, oc)?;
        }
        Ok(())
    }

    fn attention_forward(
        &self,
        out: &mut CudaBuffer,
        att: &mut CudaBuffer,
        qkv: &CudaBuffer,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let op = "attention_forward";
        let (t, hd, w, c) = (s.t, s.head_dim, s.qkv_width(), s.q_width());
        let g = s.group_size();
        assert_eq!(
            qkv.len(),
            s.b * t * w,
            "attention_forward: qkv is not (B,T,W)"
        );
        assert_eq!(
            out.len(),
            s.b * t * c,
            "attention_forward: out is not (B,T,NH*HD)"
        );
        assert_eq!(
            att.len(),
            s.b * s.nh * t * t,
            "attention_forward: att is not (B,NH,T,T)"
        );
        // Per batch item b and position r inside a key/value group, one batched product over
        // the key/value heads j: query head h = j g + r reads key/value head j.
        for b in 0..s.b {
            for r in 0..g {
                let heads = AttnHeads::new(s, b, r);
                // preatt (T,T) = q_h (T,HD) @ k_j^T
                let q = Mat::rows(qkv.at(heads.q), w).batch(g * hd);
                let k = Mat::rows(qkv.at(heads.k), w).batch(hd).t();
                let a = Mat::rows(att.at(heads.att), t).batch(g * t * t);
                self.blas.gemm(t, t, hd, q, k, a, 0.0, s.n_kv_head)?;
            }
        }
        let rows = s.b * s.nh * t;
        let scale = 1.0 / (hd as f32).sqrt();
        launch!(
            self,
            "softmax_causal_forward",
            rows_cfg(rows, ROW_THREADS)?,
            [att.at(0), int(op, rows)?, int(op, t)?, scale]
        )?;
        for b in 0..s.b {
            for r in 0..g {
                let heads = AttnHeads::new(s, b, r);
                // out_h (T,HD) = att_h (T,T) @ v_j (T,HD)
                let a = Mat::rows(att.at(heads.att), t).batch(g * t * t);
                let v = Mat::rows(qkv.at(heads.v), w).batch(hd);
                let o = Mat::rows(out.at(heads.out), c).batch(g * hd);
                self.blas.gemm(t, hd, t, a, v, o, 0.0, s.n_kv_head)?;
            }
        }
        Ok(())
    }

    fn attention_backward(
        &self,
        dqkv: &mut CudaBuffer,
        scratch: &mut CudaBuffer,
        dout: &CudaBuffer,
        qkv: &CudaBuffer,
        att: &CudaBuffer,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let op = "attention_backward";
        let (t, hd, w, c) = (s.t, s.head_dim, s.qkv_width(), s.q_width());
        let g = s.group_size();
        assert!(
            dqkv.len() == qkv.len()
                && qkv.len() == s.b * t * w
                && scratch.len() == att.len()
                && att.len() == s.b * s.nh * t * t
                && dout.len() == s.b * t * c,
            "attention_backward: buffers do not match {s:?}"
        );
        for b in 0..s.b {
            for r in 0..g {
                let h = AttnHeads::new(s, b, r);
                let dout_h = Mat::rows(dout.at(h.out), c).batch(g * hd);
                // datt (T,T) = dout_h (T,HD) @ v_j^T
                let v = Mat::rows(qkv.at(h.v), w).batch(hd);
                let datt = Mat::rows(scratch.at(h.att), t).batch(g * t * t);
                self.blas
                    .gemm(t, t, hd, dout_h, v.t(), datt, 0.0, s.n_kv_head)?;
                // dv_j (T,HD) += att_h^T (T,T) @ dout_h; a group's query heads add in order r.
                let a = Mat::rows(att.at(h.att), t).batch(g * t * t);
                let dv = Mat::rows(dqkv.at(h.v), w).batch(hd);
                self.blas
                    .gemm(t, hd, t, a.t(), dout_h, dv, 1.0, s.n_kv_head)?;
            }
        }
        let rows = s.b * s.nh * t;
        let scale = 1.0 / (hd as f32).sqrt();
        launch!(
            self,
            "softmax_causal_backward",
            rows_cfg(rows, ROW_THREADS)?,
            [scratch.at(0), att.at(0), int(op, rows)?, int(op, t)?, scale]
        )?;
        for b in 0..s.b {
            for r in 0..g {
                let h = AttnHeads::new(s, b, r);
                let dpre = Mat::rows(scratch.at(h.att), t).batch(g * t * t);
                // dq_h (T,HD) += dpre (T,T) @ k_j; dk_j += dpre^T @ q_h
                let k = Mat::rows(qkv.at(h.k), w).batch(hd);
                let dq = Mat::rows(dqkv.at(h.q), w).batch(g * hd);
                self.blas.gemm(t, hd, t, dpre, k, dq, 1.0, s.n_kv_head)?;
                let q = Mat::rows(qkv.at(h.q), w).batch(g * hd);
                let dk = Mat::rows(dqkv.at(h.k), w).batch(hd);
                self.blas
                    .gemm(t, hd, t, dpre.t(), q, dk, 1.0, s.n_kv_head)?;
            }
        }
        Ok(())
    }

    fn rmsnorm_forward(
        &self,
        out: &mut CudaBuffer,
        rstd: &mut CudaBuffer,
        inp: &CudaBuffer,
        params: &CudaBuffer,
        norm: RmsNorm,
    ) -> Result<(), DeviceError> {
        let c = norm.c;
        assert!(
            out.len() == inp.len() && rstd.len() * c == inp.len(),
            "rmsnorm_forward: buffers are not (N,C), (N)"
        );
        check_range("rmsnorm_forward", norm.w_off, c, params.len())?;
        let rows = rstd.len();
        self.rms_forward(
            out.at(0),
            rstd.at(0),
            inp.at(0),
            params.at(norm.w_off),
            rows,
            c,
            norm.eps,
            RowAddr::plain(c)?,
        )
    }

    fn rmsnorm_backward(
        &self,
        dinp: &mut CudaBuffer,
        dparams: &mut CudaBuffer,
        dout: &CudaBuffer,
        inp: &CudaBuffer,
        params: &CudaBuffer,
        rstd: &CudaBuffer,
        norm: RmsNorm,
    ) -> Result<(), DeviceError> {
        let c = norm.c;
        assert!(
            dinp.len() == inp.len() && dout.len() == inp.len() && rstd.len() * c == inp.len(),
            "rmsnorm_backward: buffers are not (N,C), (N)"
        );
        check_range("rmsnorm_backward", norm.w_off, c, params.len())?;
        check_range("rmsnorm_backward", norm.w_off, c, dparams.len())?;
        let rows = rstd.len();
        self.rms_backward(
            dinp.at(0),
            dparams.at(norm.w_off),
            dout.at(0),
            inp.at(0),
            params.at(norm.w_off),
            rstd.at(0),
            rows,
            c,
            RowAddr::plain(c)?,
        )
    }

    fn qk_norm_forward(
        &self,
        out: &mut CudaBuffer,
        rstd: &mut CudaBuffer,
        qkv: &CudaBuffer,
        params: &CudaBuffer,
        norm: QkNorm,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let op = "qk_norm_forward";
        let (n, hd, heads, w) = (s.b * s.t, s.head_dim, s.nh + s.n_kv_head, s.qkv_width());
        assert!(
            out.len() == qkv.len() && qkv.len() == n * w && rstd.len() == n * heads,
            "qk_norm_forward: buffers do not match {s:?}"
        );
        check_range(op, norm.q_w_off, hd, params.len())?;
        check_range(op, norm.k_w_off, hd, params.len())?;
        for (w_off, a, count) in qk_parts(s)? {
            self.rms_forward(
                out.at(0),
                rstd.at(0),
                qkv.at(0),
                params.at(pick(norm, w_off)),
                n * count,
                hd,
                norm.eps,
                a,
            )?;
        }
        // The values pass through.
        self.copy_values(out.at(0), qkv.at(0), s, false)
    }

    fn qk_norm_backward(
        &self,
        dqkv: &mut CudaBuffer,
        dparams: &mut CudaBuffer,
        dout: &CudaBuffer,
        qkv: &CudaBuffer,
        params: &CudaBuffer,
        rstd: &CudaBuffer,
        norm: QkNorm,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let op = "qk_norm_backward";
        let (n, hd, heads, w) = (s.b * s.t, s.head_dim, s.nh + s.n_kv_head, s.qkv_width());
        assert!(
            dqkv.len() == qkv.len()
                && dout.len() == qkv.len()
                && qkv.len() == n * w
                && rstd.len() == n * heads,
            "qk_norm_backward: buffers do not match {s:?}"
        );
        for off in [norm.q_w_off, norm.k_w_off] {
            check_range(op, off, hd, params.len())?;
            check_range(op, off, hd, dparams.len())?;
        }
        for (w_off, a, count) in qk_parts(s)? {
            let off = pick(norm, w_off);
            self.rms_backward(
                dqkv.at(0),
                dparams.at(off),
                dout.at(0),
                qkv.at(0),
                params.at(off),
                rstd.at(0),
                n * count,
                hd,
                a,
            )?;
        }
        self.copy_values(dqkv.at(0), dout.at(0), s, true)
    }

    fn rope_forward(
        &self,
        qkv: &mut CudaBuffer,
        table: &CudaBuffer,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        self.rope(qkv, table, s, false)
    }

    fn rope_backward(
        &self,
        dqkv: &mut CudaBuffer,
        table: &CudaBuffer,
        s: AttnShape,
    ) -> Result<(), DeviceError> {
        self.rope(dqkv, table, s, true)
    }

    fn swiglu_forward(
        &self,
        out: &mut CudaBuffer,
        inp: &CudaBuffer,
        i: usize,
    ) -> Result<(), DeviceError> {
        assert!(
            out.len().is_multiple_of(i) && inp.len() == 2 * out.len(),
            "swiglu_forward: buffers are not (N,I), (N,2I)"
        );
        let op = "swiglu_forward";
        let n = out.len() / i;
        launch!(
            self,
            op,
            elems_cfg(n * i)?,
            [out.at(0), inp.at(0), int(op, n)?, int(op, i)?]
        )
    }

    fn swiglu_backward(
        &self,
        dinp: &mut CudaBuffer,
        inp: &CudaBuffer,
        dout: &CudaBuffer,
        i: usize,
    ) -> Result<(), DeviceError> {
        assert!(
            dout.len().is_multiple_of(i) && dinp.len() == inp.len() && inp.len() == 2 * dout.len(),
            "swiglu_backward: buffers are not (N,2I), (N,2I), (N,I)"
        );
        let op = "swiglu_backward";
        let n = dout.len() / i;
        launch!(
            self,
            op,
            elems_cfg(n * i)?,
            [dinp.at(0), inp.at(0), dout.at(0), int(op, n)?, int(op, i)?]
        )
    }

    fn gelu_forward(&self, out: &mut CudaBuffer, inp: &CudaBuffer) -> Result<(), DeviceError> {
        assert_eq!(out.len(), inp.len(), "gelu_forward: length mismatch");
        let n = inp.len();
        launch!(
            self,
            "gelu_forward",
            elems_cfg(n)?,
            [out.at(0), inp.at(0), n as i64]
        )
    }

    fn gelu_backward(
        &self,
        dinp: &mut CudaBuffer,
        inp: &CudaBuffer,
        dout: &CudaBuffer,
    ) -> Result<(), DeviceError> {
        assert!(
            dinp.len() == inp.len() && dout.len() == inp.len(),
            "gelu_backward: length mismatch"
        );
        let n = inp.len();
        launch!(
            self,
            "gelu_backward",
            elems_cfg(n)?,
            [dinp.at(0), inp.at(0), dout.at(0), n as i64]
        )
    }

    fn softmax_crossentropy_forward(
        &self,
        probs: &mut CudaBuffer,
        losses: &mut CudaBuffer,
        targets: &[u32],
        vocab_size: usize,
    ) -> Result<(), DeviceError> {
        let op = "crossentropy";
        check_tokens(op, targets, vocab_size, true)?;
        assert!(probs.len() == targets.len() * vocab_size && losses.len() == targets.len());
        let n = targets.len();
        if n == 0 {
            return Ok(());
        }
        let d_targets = self.upload_vec("targets", targets)?;
        launch!(
            self,
            "crossentropy_forward",
            rows_cfg(n, VOCAB_THREADS)?,
            [
                probs.at(0),
                losses.at(0),
                d_targets.ptr,
                int(op, n)?,
                int(op, vocab_size)?
            ]
        )
    }

    fn softmax_crossentropy_backward(
        &self,
        dlogits: &mut CudaBuffer,
        probs: &CudaBuffer,
        targets: &[u32],
        vocab_size: usize,
        dloss: f32,
    ) -> Result<(), DeviceError> {
        let op = "crossentropy";
        check_tokens(op, targets, vocab_size, true)?;
        assert!(dlogits.len() == probs.len() && probs.len() == targets.len() * vocab_size);
        let n = targets.len();
        if n == 0 {
            return Ok(());
        }
        let d_targets = self.upload_vec("targets", targets)?;
        // Rows in x, vocabulary blocks in y (gridDim.y stops at 65535: V < 16.7 M).
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(n).map_err(|_| backend(op, n))?,
                u32::try_from(vocab_size.div_ceil(ELEM_THREADS as usize))
                    .ok()
                    .filter(|&y| y <= 65535)
                    .ok_or_else(|| backend(op, vocab_size))?,
                1,
            ),
            block_dim: (ELEM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            "crossentropy_backward",
            cfg,
            [
                dlogits.at(0),
                probs.at(0),
                d_targets.ptr,
                int(op, n)?,
                int(op, vocab_size)?,
                dloss
            ]
        )
    }
}

impl CudaDevice {
    /// The value heads of packed qkv rows (B,T,W): `dst = src`, or `dst += src` when
    /// `accumulate` (Qwen3's q/k norm passes the values through).
    fn copy_values(
        &self,
        dst: u64,
        src: u64,
        s: AttnShape,
        accumulate: bool,
    ) -> Result<(), DeviceError> {
        let op = "copy_cols";
        let (n, w) = (s.b * s.t, s.qkv_width());
        let (v0, vlen) = ((s.nh + s.n_kv_head) * s.head_dim, s.n_kv_head * s.head_dim);
        launch!(
            self,
            op,
            elems_cfg(n * vlen)?,
            [
                dst,
                src,
                int(op, n)?,
                int(op, w)?,
                int(op, v0)?,
                int(op, vlen)?,
                i32::from(accumulate)
            ]
        )
    }

    fn rope(
        &self,
        qkv: &mut CudaBuffer,
        table: &CudaBuffer,
        s: AttnShape,
        transpose: bool,
    ) -> Result<(), DeviceError> {
        check_attn_shape(s);
        let op = "rope";
        let positions = check_rope(qkv.len(), table.len(), s);
        let half = s.head_dim / 2;
        let (rows, heads) = (s.b * s.t, s.nh + s.n_kv_head);
        launch!(
            self,
            op,
            elems_cfg(rows * heads * half)?,
            [
                qkv.at(0),
                table.at(0),
                int(op, rows)?,
                int(op, s.t)?,
                int(op, s.qkv_width())?,
                int(op, heads)?,
                int(op, s.head_dim)?,
                int(op, positions)?,
                i32::from(transpose)
            ]
        )
    }
}

/// Which of the two q/k norm weights a part uses.
#[derive(Clone, Copy)]
enum QkWeight {
    Q,
    K,
}

fn pick(norm: QkNorm, w: QkWeight) -> usize {
    match w {
        QkWeight::Q => norm.q_w_off,
        QkWeight::K => norm.k_w_off,
    }
}

/// The query heads and the key heads of packed qkv rows as RMSNorm row sets: (weight, row
/// addressing, heads per token). rstd is (N, NH + KV): the query heads' first.
fn qk_parts(s: AttnShape) -> Result<[(QkWeight, RowAddr, usize); 2], DeviceError> {
    let (hd, heads) = (s.head_dim, s.nh + s.n_kv_head);
    let op = "qk_norm";
    let stride = int(op, s.qkv_width())?;
    let rstd_stride = int(op, heads)?;
    Ok([
        (
            QkWeight::Q,
            RowAddr {
                hpt: int(op, s.nh)?,
                stride,
                col0: 0,
                rstd_stride,
                rstd_off: 0,
            },
            s.nh,
        ),
        (
            QkWeight::K,
            RowAddr {
                hpt: int(op, s.n_kv_head)?,
                stride,
                col0: int(op, s.nh * hd)?,
                rstd_stride,
                rstd_off: int(op, s.nh)?,
            },
            s.n_kv_head,
        ),
    ])
}

/// Element offsets of one attention product batch: batch item `b`, position `r` inside a
/// key/value group; the batch runs over key/value heads `j` (query head `h = j g + r`).
struct AttnHeads {
    /// First query head's column in qkv (B,T,W).
    q: usize,
    /// First key head's column.
    k: usize,
    /// First value head's column.
    v: usize,
    /// First query head's (T,T) block of att (B,NH,T,T).
    att: usize,
    /// First query head's column in out (B,T,NH*HD).
    out: usize,
}

impl AttnHeads {
    fn new(s: AttnShape, b: usize, r: usize) -> Self {
        let (t, hd, w) = (s.t, s.head_dim, s.qkv_width());
        let row0 = b * t * w;
        AttnHeads {
            q: row0 + r * hd,
            k: row0 + s.nh * hd,
            v: row0 + (s.nh + s.n_kv_head) * hd,
            att: (b * s.nh + r) * t * t,
            out: b * t * s.q_width() + r * hd,
        }
    }
}
