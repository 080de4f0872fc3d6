//! The ZeRO-3 engine on the GPU: GPT-2 and a Llama-family model (the GQA fixture of
//! `tests/data/llama`) give the same losses bit for bit in every placement of parameters and
//! optimizer state (device, host, NVMe), with activation checkpointing off and on — the
//! promise the CPU backend keeps, kept on one GPU — and those losses follow the CPU
//! backend's to rounding (fp32 products, TF32 off).
//!
//! Needs the feature `cuda`; compiled in CI, and each test prints SKIPPED and returns when no
//! GPU is present (`scripts/gpu_check.sh` runs them on one).
#![cfg(feature = "cuda")]

mod engine_common;

use engine_common::*;
use std::path::{Path, PathBuf};
use zinf::device::cuda::{device_count, CudaDevice, MatmulPrecision};
use zinf::device::CpuDevice;
use zinf::engine::{Start, Tier};
use zinf::model::hf::HfWeights;
use zinf::model::llama::{llama_layout, LlamaConfig};
use zinf::model::{ModelSpec, ParamDtype};
use zinf::settings::TrainSettings;
use zinf_swap::fake::FakeDisk;

const STEPS: usize = 4;

fn has_gpu(test: &str) -> bool {
    let n = device_count();
    if n == 0 {
        eprintln!("SKIPPED {test}: no CUDA GPU (or no driver) on this machine");
    }
    n > 0
}

fn placements() -> Vec<(Tier, Tier)> {
    let (cpu, nvme) = (Tier::Cpu { pin_memory: false }, nvme(Path::new("/nvme")));
    vec![
        (Tier::Device, Tier::Device),
        (cpu.clone(), cpu.clone()),
        (nvme.clone(), nvme.clone()),
        (Tier::Device, nvme.clone()),
        (nvme, cpu),
    ]
}

/// The fixture folder: under `CARGO_MANIFEST_DIR` at run time when set (cargo sets it;
/// `scripts/gpu_check.sh` sets it to the checkout it runs in, where the build's path does not
/// exist), else where the test was built.
fn llama_folder() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/data/llama/gqa")
}

/// Loss bits of `STEPS` steps on `dev` in placement (params, optimizer).
fn losses<D: zinf::device::Device>(
    dev: D,
    train: &TrainSettings,
    (params, optimizer): (Tier, Tier),
    llama: bool,
) -> Vec<f32> {
    let es = engine_settings(train.clone(), placement(params, optimizer));
    let start = if llama {
        let cfg = LlamaConfig::from_folder(&llama_folder()).expect("fixture config");
        let weights = HfWeights::open(&llama_folder()).expect("fixture weights");
        Start::Fresh(Some(weights.into_source(llama_layout(&cfg).tensors)))
    } else {
        Start::Fresh(None)
    };
    let disk = FakeDisk::new(1);
    let mut e = fake_engine_on(dev, es, &disk, 8 << 20, start);
    engine_run(&mut e, STEPS).iter().map(|m| m.loss).collect()
}

fn check_model(test: &str, train: TrainSettings, llama: bool) {
    if has_gpu(test) {
        let gpu = || CudaDevice::new(0, 1 << 30, MatmulPrecision::Fp32).expect("GPU opens");
        check_model_on(test, train, llama, gpu);
    }
}

/// The checks of [`check_model`] with devices from `gpu`.
fn check_model_on<D: zinf::device::Device>(
    test: &str,
    mut train: TrainSettings,
    llama: bool,
    gpu: impl Fn() -> D,
) {
    train.dtype = ParamDtype::F32;
    let cpu = CpuDevice::new(2, 1 << 30);
    let want = losses(cpu, &train, (Tier::Device, Tier::Device), llama);
    for checkpointing in [false, true] {
        train.activation_checkpointing = checkpointing;
        let first = losses(gpu(), &train, (Tier::Device, Tier::Device), llama);
        eprintln!("{test}: checkpointing {checkpointing}: gpu {first:?}, cpu {want:?}");
        for (g, c) in first.iter().zip(&want) {
            assert!(
                ((g - c) / c).abs() < 1e-4,
                "{test}: GPU losses {first:?} do not follow the CPU's {want:?}"
            );
        }
        for p in placements() {
            let got = losses(gpu(), &train, p.clone(), llama);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&first),
                "{test}: params {} optimizer {} checkpointing {checkpointing}: {got:?} vs {first:?}",
                p.0.name(),
                p.1.name()
            );
        }
    }
}

#[test]
fn gpt2_on_cuda_gives_the_same_losses_in_every_placement() {
    check_model(
        "gpt2 engine",
        train_settings(ParamDtype::F32, 1.0, 2),
        false,
    );
}

#[test]
fn llama_on_cuda_gives_the_same_losses_in_every_placement() {
    let cfg = LlamaConfig::from_folder(&llama_folder()).expect("fixture config");
    let mut train = train_settings(ParamDtype::F32, 1.0, 2);
    train.model = ModelSpec::Llama(cfg);
    check_model("llama engine", train, true);
}

/// The harness on the CPU standing in for the GPU: it runs, and the CPU keeps its own promise.
#[test]
fn the_harness_runs_on_the_cpu() {
    let cpu = || CpuDevice::new(1, 1 << 30);
    check_model_on(
        "gpt2 harness",
        train_settings(ParamDtype::F32, 1.0, 2),
        false,
        cpu,
    );
    let cfg = LlamaConfig::from_folder(&llama_folder()).expect("fixture config");
    let mut train = train_settings(ParamDtype::F32, 1.0, 2);
    train.model = ModelSpec::Llama(cfg);
    check_model_on("llama harness", train, true, cpu);
}
