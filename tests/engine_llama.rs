//! The ZeRO-3 engine carries a Llama-family model too: starting from a Hugging Face folder
//! (the GQA fixture of `tests/data/llama`, its weights read group by group into their tier),
//! every placement of parameters and optimizer state (device, host, NVMe) gives the same
//! losses bit for bit, with activation checkpointing off and on; a run from the seed instead
//! of the folder gives other losses (the folder's weights are what trains).

mod engine_common;

use engine_common::*;
use std::path::{Path, PathBuf};
use zinf::device::CpuDevice;
use zinf::engine::timeline::Timeline;
use zinf::engine::{Engine, Start, Tier};
use zinf::model::hf::HfWeights;
use zinf::model::llama::{llama_layout, Llama, LlamaConfig};
use zinf::model::ParamDtype;
use zinf_swap::fake::FakeDisk;

const STEPS: usize = 3;

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama/gqa")
}

fn losses(params: Tier, optimizer: Tier, checkpointing: bool) -> Vec<u32> {
    let mut e = engine(params, optimizer, checkpointing, true);
    (0..STEPS)
        .map(|_| e.step().expect("step").loss.to_bits())
        .collect()
}

fn run(params: Tier, optimizer: Tier, checkpointing: bool, from_folder: bool) -> Vec<u32> {
    let mut e = engine(params, optimizer, checkpointing, from_folder);
    (0..STEPS)
        .map(|_| e.step().expect("step").loss.to_bits())
        .collect()
}

type LlamaEngine = Engine<CpuDevice, zinf_swap::fake::FakeIo, Llama<CpuDevice>>;

fn engine(params: Tier, optimizer: Tier, checkpointing: bool, from_folder: bool) -> LlamaEngine {
    let cfg = LlamaConfig::from_folder(&folder()).unwrap();
    assert_eq!(
        cfg.vocab_size, VOCAB,
        "the fixture's vocabulary fits the test data"
    );
    let layout = llama_layout(&cfg);
    let weights = HfWeights::open(&folder()).unwrap();
    assert!(weights.check(&layout.tensors).unwrap().is_empty());
    let mut train = train_settings(ParamDtype::Bf16, 1.0, 2);
    train.activation_checkpointing = checkpointing;
    train.model = zinf::model::ModelSpec::Llama(cfg.clone());
    let es = engine_settings(train, placement(params, optimizer));
    let dev = CpuDevice::new(1, es.train.device_memory_budget);
    let (b, t) = (es.train.micro_batch, es.train.seq_len);
    let model = Llama::without_groups(&dev, cfg, b, t, checkpointing).unwrap();
    let disk = FakeDisk::new(1);
    let _keep = disk.clone();
    let start = Start::Fresh(from_folder.then(|| weights.into_source(layout.tensors)));
    Engine::with_model(
        es,
        dev,
        model,
        dataset(),
        fake_factory(&disk, 8 << 20),
        start,
        Timeline::disabled(),
        None,
    )
    .expect("engine builds")
}

#[test]
fn every_placement_gives_the_same_llama_losses_with_and_without_checkpointing() {
    let dir = PathBuf::from("/nvme");
    let cpu = Tier::Cpu { pin_memory: false };
    let want = losses(Tier::Device, Tier::Device, false);
    assert!(want.iter().all(|l| f32::from_bits(*l).is_finite()));
    assert!(
        f32::from_bits(want[STEPS - 1]) < f32::from_bits(want[0]),
        "training lowers the loss: {:?}",
        want.iter().map(|l| f32::from_bits(*l)).collect::<Vec<_>>()
    );
    let seeded = run(Tier::Device, Tier::Device, false, false);
    assert_ne!(seeded[0], want[0], "the folder's weights were not loaded");
    for ckpt in [false, true] {
        for (p, o) in [
            (Tier::Device, Tier::Device),
            (cpu.clone(), cpu.clone()),
            (nvme(&dir), nvme(&dir)),
            (Tier::Device, nvme(&dir)),
            (nvme(&dir), cpu.clone()),
        ] {
            let got = losses(p.clone(), o.clone(), ckpt);
            assert_eq!(
                got,
                want,
                "params {} optimizer {} checkpointing {ckpt}",
                p.name(),
                o.name()
            );
        }
    }
}

#[test]
fn export_writes_a_folder_that_reimports_bit_exact_from_nvme_sharded() {
    let dir = PathBuf::from("/nvme");
    let mut e = engine(nvme(&dir), nvme(&dir), false, true);
    for _ in 0..2 {
        e.step().expect("step");
    }
    let out = tempfile::tempdir().unwrap();
    let report = e
        .export_hf(out.path(), Some(&folder()), 40_000)
        .expect("export");
    assert!(report.files.len() > 2, "sharded: {:?}", report.files);
    let want = e.export_params(u64::MAX).unwrap().unwrap();
    let cfg = LlamaConfig::from_folder(out.path()).unwrap();
    assert_eq!(cfg.torch_dtype.as_deref(), Some("bfloat16"));
    assert_eq!(
        cfg,
        LlamaConfig {
            torch_dtype: cfg.torch_dtype.clone(),
            ..LlamaConfig::from_folder(&folder()).unwrap()
        }
    );
    let layout = llama_layout(&cfg);
    let w = HfWeights::open(out.path()).unwrap();
    assert!(w.check(&layout.tensors).unwrap().is_empty());
    let back = w.read_range(&layout.tensors, 0..layout.total).unwrap();
    let back = zinf::model::HostParams::from_f32(ParamDtype::Bf16, &back);
    assert_eq!(
        back.range_bytes(0..back.len()),
        want.range_bytes(0..want.len())
    );
}
