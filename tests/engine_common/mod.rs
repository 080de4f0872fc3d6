//! Shared set-up of the engine tests: a small GPT, synthetic tokens, and engines over the
//! fake disk or the real aio backend.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use zinf::data::Dataset;
use zinf::device::{CpuDevice, Device};
use zinf::engine::timeline::Timeline;
use zinf::engine::{Engine, EngineSettings, IoFactory, Placement, Start, Tier};
use zinf::model::train::Trainer;
use zinf::model::{GptConfig, ModelSpec, ParamDtype};
use zinf::optim::{AdamConfig, LossScalerConfig};
use zinf::settings::{StepMetrics, TrainSettings};
use zinf_swap::fake::{FakeDisk, FakeIo};
use zinf_swap::{AioBackend, PoolConfig};

pub const VOCAB: usize = 96;

/// Tokens with some structure to learn: a repeating walk over the vocabulary.
pub fn tokens(n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7 + (i / 13) * 3) % VOCAB) as u32)
        .collect()
}

pub fn dataset() -> Dataset {
    Dataset::split(tokens(4000), 0.1, 16).expect("enough tokens")
}

pub fn train_settings(dtype: ParamDtype, clip: f64, gas: usize) -> TrainSettings {
    TrainSettings {
        model: ModelSpec::Gpt2(GptConfig {
            n_layer: 3,
            n_head: 2,
            n_embd: 32,
            vocab_size: VOCAB,
            block_size: 16,
        }),
        micro_batch: 2,
        gradient_accumulation_steps: gas,
        seq_len: 16,
        gradient_clipping: clip,
        dtype,
        fp16: dtype == ParamDtype::F16,
        loss_scaler: LossScalerConfig::default(),
        adam: AdamConfig {
            lr: 3e-3,
            weight_decay: 0.01,
            ..AdamConfig::default()
        },
        scheduler: None,
        activation_checkpointing: false,
        seed: 7,
        threads: 1,
        device_memory_budget: 1 << 30,
        eval_batches: 2,
    }
}

pub fn engine_settings(train: TrainSettings, placement: Placement) -> EngineSettings {
    EngineSettings {
        train,
        placement,
        partition: zinf::engine::Partition::single(),
        sub_group_size: 5000,
        prefetch_bucket_size: 1 << 30,
        max_live_parameters: 1 << 30,
        max_reuse_distance: 0,
        param_persistence_threshold: 0,
        max_in_cpu: 0,
        pipeline_read: true,
        pipeline_write: true,
        chunk_bytes: 64 << 10,
        double_buffered: true,
    }
}

pub fn nvme(dir: &Path) -> Tier {
    Tier::Nvme {
        path: dir.to_path_buf(),
    }
}

pub fn placement(params: Tier, optimizer: Tier) -> Placement {
    Placement { params, optimizer }
}

pub fn fake_factory(disk: &FakeDisk, pool_bytes: u64) -> IoFactory<FakeIo> {
    let disk = disk.clone();
    Box::new(move |save_pool| Ok(FakeIo::new(&disk, save_pool.unwrap_or(pool_bytes))))
}

pub fn aio_factory(pool_bytes: u64) -> IoFactory<AioBackend> {
    Box::new(move |save_pool| {
        let pool_bytes = save_pool.unwrap_or(pool_bytes);
        let pool = PoolConfig {
            buffer_count: 1,
            buffer_size: pool_bytes,
            budget_bytes: Some(pool_bytes),
            pin_memory: false,
        };
        AioBackend::new(&zinf_aio::AioConfig::default(), &pool)
    })
}

pub fn fake_engine(
    s: EngineSettings,
    disk: &FakeDisk,
    pool_bytes: u64,
    start: Start,
) -> Engine<CpuDevice, FakeIo> {
    let budget = s.train.device_memory_budget;
    let dev = CpuDevice::new(s.train.threads, budget);
    fake_engine_on(dev, s, disk, pool_bytes, start)
}

/// An engine over the fake disk on any device (the CUDA tests give it the GPU).
pub fn fake_engine_on<D: Device>(
    dev: D,
    s: EngineSettings,
    disk: &FakeDisk,
    pool_bytes: u64,
    start: Start,
) -> Engine<D, FakeIo> {
    Engine::new(
        s,
        dev,
        dataset(),
        fake_factory(disk, pool_bytes),
        start,
        Timeline::disabled(),
        None,
    )
    .expect("engine builds")
}

/// Losses of `steps` steps of the resident trainer.
pub fn resident_run(s: TrainSettings, steps: usize) -> Vec<StepMetrics> {
    resident_run_and_validate(s, steps).0
}

/// Losses of `steps` steps of the resident trainer, then its validation loss.
pub fn resident_run_and_validate(s: TrainSettings, steps: usize) -> (Vec<StepMetrics>, f32) {
    let mut t = Trainer::new(s, dataset(), None).expect("trainer builds");
    let m = (0..steps).map(|_| t.step().expect("step")).collect();
    (m, t.validate().expect("validate").expect("validation data"))
}

pub fn engine_run<D: Device, B: zinf_swap::BlockIo>(
    e: &mut Engine<D, B>,
    steps: usize,
) -> Vec<StepMetrics> {
    (0..steps).map(|_| e.step().expect("step")).collect()
}

pub fn bits(m: &[StepMetrics]) -> Vec<u32> {
    m.iter().map(|m| m.loss.to_bits()).collect()
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zinf-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
