//! The CUDA backend's kernels: header-free CUDA C under `kernels/`, embedded in the binary and
//! compiled by NVRTC, as one program, for the device's own architecture when the device opens
//! (no toolkit at build time, no driver JIT of PTX at run time: NVRTC runs ptxas and the
//! driver loads the resulting CUBIN). See `../shared/GPU.md`.
//!
//! `common.cu` holds the fixed-order block reductions and the element-wise kernels, `gpt2.cu`
//! GPT-2's (embedding, LayerNorm, GELU, causal softmax, cross-entropy), `llama.cu` the Llama
//! family's (RMSNorm, RoPE, SwiGLU). `tests/cuda_kernels.rs` compiles them for sm_80 and sm_90
//! without a GPU, and fails on a register spill.

use crate::device::DeviceError;
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use std::ffi::{c_char, CStr, CString};

/// Every kernel source, in the order they are compiled: (file name, CUDA C).
pub const SOURCES: &[(&str, &str)] = &[
    ("common.cu", include_str!("kernels/common.cu")),
    ("gpt2.cu", include_str!("kernels/gpt2.cu")),
    ("llama.cu", include_str!("kernels/llama.cu")),
];

/// Every kernel (`extern "C" __global__`) the backend launches, by name.
pub const KERNELS: &[&str] = &[
    "colsum_finish",
    "widen_bf16",
    "widen_f16",
    "add_assign",
    "residual_forward",
    "copy_cols",
    "encoder_forward",
    "encoder_backward_wte",
    "encoder_backward_wpe",
    "layernorm_forward",
    "layernorm_backward_input",
    "layernorm_param_partial",
    "bias_partial",
    "bias_forward",
    "gelu_forward",
    "gelu_backward",
    "softmax_causal_forward",
    "softmax_causal_backward",
    "crossentropy_forward",
    "crossentropy_backward",
    "rmsnorm_forward",
    "rmsnorm_backward_input",
    "rmsnorm_weight_partial",
    "rope",
    "swiglu_forward",
    "swiglu_backward",
];

/// The one program NVRTC compiles: every file of [`SOURCES`] in order, each behind a `#line`
/// directive so that a compile error names its own file and line.
pub fn program_source() -> String {
    let mut s = String::new();
    for (name, src) in SOURCES {
        s.push_str(&format!("#line 1 \"{name}\"\n{src}\n"));
    }
    s
}

/// Whether the NVRTC library can be opened (`libnvrtc.so.13` on the loader path).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes whether the library loads; no NVRTC function is called.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// What ptxas reported for one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelStats {
    pub name: String,
    pub registers: u32,
    /// Bytes of registers spilled to local memory (stores + loads); 0 is the requirement.
    pub spill_bytes: u32,
}

/// A compiled program: the CUBIN the driver loads and ptxas' per-kernel report.
#[derive(Debug)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub stats: Vec<KernelStats>,
    pub log: String,
}

/// Compiles `src` (named `name` in errors) for `arch` (`"sm_90"`, a real architecture, so the
/// result is a CUBIN): fp32 semantics as the CPU backend's (no fast math, no flush to zero,
/// IEEE division and square root, no fused multiply-add contraction), ptxas verbose so every
/// kernel's registers and spills are reported.
///
/// # Errors
/// NVRTC absent (what to install), or the compiler's log when the source does not compile.
pub fn compile(name: &str, src: &str, arch: &str) -> Result<Compiled, DeviceError> {
    if !nvrtc_present() {
        return Err(DeviceError::Backend(
            "NVRTC (libnvrtc.so.13) not found: install the CUDA 13 runtime libraries or put the \
             nvidia-cuda-nvrtc wheel's lib folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let fail = |what: &str, e: nvrtc::NvrtcError| {
        DeviceError::Backend(format!("{name} for {arch}: NVRTC {what}: {e:?}"))
    };
    let c_src = CString::new(src)
        .map_err(|_| DeviceError::Backend(format!("{name}: the source contains a NUL byte")))?;
    let c_name = CString::new(name)
        .map_err(|_| DeviceError::Backend(format!("{name}: the name contains a NUL byte")))?;
    let prog = nvrtc::create_program(&c_src, Some(&c_name)).map_err(|e| fail("create", e))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--fmad=false".into(),
        "--ptxas-options=-v".into(),
    ];
    // SAFETY: `prog` was created above and is destroyed once, at the end of this function;
    // the log and CUBIN calls size their buffers with NVRTC's own size queries.
    let result = unsafe {
        let compiled = nvrtc::compile_program(prog, &options);
        let log = nvrtc::get_program_log(prog)
            .map(|raw| c_chars_to_string(&raw))
            .unwrap_or_default();
        let out = match compiled {
            Err(_) => Err(DeviceError::Backend(format!("{name} for {arch}: {log}"))),
            Ok(()) => get_cubin(prog)
                .map_err(|e| fail("CUBIN", e))
                .map(|cubin| Compiled {
                    cubin,
                    stats: parse_ptxas_log(&log),
                    log,
                }),
        };
        let _ = nvrtc::destroy_program(prog);
        out
    };
    result
}

/// The program's CUBIN (after a successful compile for a real architecture).
///
/// # Safety
/// `prog` is a live, compiled NVRTC program.
unsafe fn get_cubin(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, nvrtc::NvrtcError> {
    let mut size = 0usize;
    nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
    let mut cubin = vec![0u8; size];
    nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char).result()?;
    Ok(cubin)
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    if raw.is_empty() {
        return String::new();
    }
    // SAFETY: NVRTC's log is NUL-terminated inside the buffer it sized.
    unsafe { CStr::from_ptr(raw.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Reads ptxas' verbose report (`--ptxas-options=-v`): for each entry function, the registers
/// it uses and the bytes it spills. Lines look like
/// `ptxas info : Compiling entry function 'rope' for 'sm_90'`,
/// `ptxas info : Function properties for rope`,
/// `    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads`,
/// `ptxas info : Used 16 registers, used 0 barriers, 400 bytes cmem[0]`.
pub fn parse_ptxas_log(log: &str) -> Vec<KernelStats> {
    let mut stats: Vec<KernelStats> = Vec::new();
    let mut props_for: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            stats.push(KernelStats {
                name,
                registers: 0,
                spill_bytes: 0,
            });
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            props_for = Some(rest.trim().to_string());
        } else if line.contains("spill stores") {
            let spill = number_before(line, "bytes spill stores")
                + number_before(line, "bytes spill loads");
            if let Some(k) = props_for
                .as_ref()
                .and_then(|n| stats.iter_mut().rev().find(|k| &k.name == n))
            {
                k.spill_bytes += spill;
            }
        } else if line.contains("Used ") && line.contains(" registers") {
            if let Some(k) = stats.last_mut() {
                k.registers = number_before(line, "registers");
            }
        }
    }
    stats
}

/// The number just before `word` in `line` (`"16 registers"` -> 16); 0 when there is none.
fn number_before(line: &str, word: &str) -> u32 {
    line.split(word)
        .next()
        .and_then(|head| head.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
