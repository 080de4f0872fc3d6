//! Every CUDA kernel compiles with NVRTC for sm_80 (A100) and sm_90 (H100/H200), and a broken
//! source gives NVRTC's log as an error, not a panic. Needs the feature `cuda` and
//! `libnvrtc.so.13` on the loader path (the `nvidia-cuda-nvrtc==13.0.88` wheel's
//! `nvidia/cu13/lib`, see `../shared/GPU.md`); without the library the test says it is skipped.
#![cfg(feature = "cuda")]

use zinf::device::cuda::kernels::{compile, nvrtc_present, SOURCES};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_and_errors_carry_the_log() {
    if !nvrtc_present() {
        eprintln!("SKIPPED: libnvrtc.so.13 not on the loader path; no kernel was compiled");
        return;
    }
    for (name, src) in SOURCES {
        for arch in ["sm_80", "sm_90"] {
            let ptx = compile(name, src, arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            for kernel in [
                "rmsnorm_forward",
                "rmsnorm_backward_input",
                "rope",
                "swiglu_forward",
            ] {
                assert!(
                    text.contains(kernel),
                    "{name} for {arch}: no {kernel} in the PTX"
                );
            }
        }
    }
    let e = compile(
        "broken.cu",
        "extern \"C\" __global__ void k() { undeclared = 1; }",
        "sm_90",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("broken.cu") && e.contains("undeclared"), "{e}");
}
