//! Every CUDA kernel compiles with NVRTC for sm_80 (A100) and sm_90 (H100/H200) with no
//! register spill, every kernel the backend launches is in the program, and a broken source
//! gives NVRTC's log as an error, not a panic. Needs the feature `cuda` and `libnvrtc.so.13`
//! on the loader path (the `nvidia-cuda-nvrtc==13.0.88` wheel's `nvidia/cu13/lib`, see
//! `../shared/GPU.md`); without the library the compile test says it is skipped.
#![cfg(feature = "cuda")]

use zinf::device::cuda::kernels::{
    compile, nvrtc_present, parse_ptxas_log, program_source, KernelStats, KERNELS,
};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills_and_errors_carry_the_log() {
    if !nvrtc_present() {
        eprintln!("SKIPPED: libnvrtc.so.13 not on the loader path; no kernel was compiled");
        return;
    }
    let src = program_source();
    for arch in ["sm_80", "sm_90"] {
        let out = compile("zinf_kernels.cu", &src, arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(!out.cubin.is_empty(), "{arch}: empty CUBIN");
        eprintln!("{arch}: kernel registers (spilled bytes)");
        for k in KERNELS {
            let s =
                out.stats.iter().find(|s| s.name == *k).unwrap_or_else(|| {
                    panic!("{arch}: ptxas reported nothing for {k}:\n{}", out.log)
                });
            eprintln!("  {:<28} {:>3} ({})", s.name, s.registers, s.spill_bytes);
            assert!(
                s.registers > 0,
                "{arch}: {k} uses no registers?\n{}",
                out.log
            );
            assert_eq!(
                s.spill_bytes, 0,
                "{arch}: {k} spills registers:\n{}",
                out.log
            );
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

#[test]
fn every_launched_kernel_is_defined_in_the_sources() {
    let src = program_source();
    for k in KERNELS {
        assert!(
            src.contains(&format!("__global__ void {k}(")),
            "{k} is launched but not defined"
        );
    }
}

#[test]
fn ptxas_report_gives_registers_and_spills_per_kernel() {
    let log = "ptxas info    : 0 bytes gmem\n\
        ptxas info    : Compiling entry function 'rope' for 'sm_90'\n\
        ptxas info    : Function properties for rope\n    \
        0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
        ptxas info    : Used 16 registers, used 0 barriers, 400 bytes cmem[0]\n\
        ptxas info    : Compiling entry function 'big' for 'sm_90'\n\
        ptxas info    : Function properties for big\n    \
        8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
        ptxas info    : Used 255 registers, used 1 barriers\n";
    let s = parse_ptxas_log(log);
    let k = |name: &str, registers, spill_bytes| KernelStats {
        name: name.into(),
        registers,
        spill_bytes,
    };
    assert_eq!(s, vec![k("rope", 16, 0), k("big", 255, 12)]);
}
