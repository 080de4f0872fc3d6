//! The CUDA backend's kernels: header-free CUDA C under `kernels/`, embedded in the binary and
//! compiled by NVRTC for the device's own architecture when the device opens (no toolkit at
//! build time, no driver JIT of PTX at run time). See `../shared/GPU.md`.
//!
//! Today: the Llama family's row and element-wise kernels (`llama.cu`: RMSNorm forward and
//! backward, RoPE, SwiGLU), compile-checked for sm_80 and sm_90 by `tests/cuda_kernels.rs`
//! when the NVRTC library is on the loader path. The `Device` implementation that launches
//! them is the CUDA backend issue's.

use crate::device::DeviceError;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

/// Every kernel source: (file name, CUDA C).
pub const SOURCES: &[(&str, &str)] = &[("llama.cu", include_str!("kernels/llama.cu"))];

/// Whether the NVRTC library can be opened (`libnvrtc.so.13` on the loader path).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes whether the library loads; no NVRTC function is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `src` (named `name` in errors) for `arch` (`"sm_90"`): fp32 semantics as the CPU
/// backend's (no fast math, no flush to zero, IEEE division and square root).
///
/// # Errors
/// NVRTC absent (what to install), or the compiler's log when the source does not compile.
pub fn compile(name: &str, src: &str, arch: &'static str) -> Result<Ptx, DeviceError> {
    if !nvrtc_present() {
        return Err(DeviceError::Backend(
            "NVRTC (libnvrtc.so.13) not found: install the CUDA 13 runtime libraries or put the \
             nvidia-cuda-nvrtc wheel's lib folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let opts = CompileOptions {
        ftz: Some(false),
        prec_sqrt: Some(true),
        prec_div: Some(true),
        fmad: Some(false),
        use_fast_math: Some(false),
        arch: Some(arch),
        name: Some(name.to_string()),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => {
            DeviceError::Backend(format!("{name} for {arch}: {}", log.to_string_lossy()))
        }
        other => DeviceError::Backend(format!("{name} for {arch}: {other}")),
    })
}
