//! `Session`: the library entry point that turns a resolved DeepSpeed config (plus the few
//! things a command line overrides) into a ready engine: config → settings → placement and
//! budget checks → data → device → tiers → engine.
//!
//! Every check that can refuse a run — optimizer type, placement rules, the pinned pool's
//! size, the host memory budget, the swap folder — is a pure function that runs in
//! [`Session::plan`], **before anything is allocated**; [`Session::build`] only allocates.
//! `zinf train` is this plus flags, printing and a progress bar (`cli/train.rs`).
//!
//! The device is chosen in one place ([`open_device`]): the CPU backend today; `zinf.device`
//! (`cpu` / `cuda` / `auto`) comes with the CUDA backend.

use crate::config::Config;
use crate::data::{builtin_corpus, load_tokens, Dataset, Tokenizer};
use crate::device::CpuDevice;
use crate::engine::{
    checkpoint, Engine, EngineError, EngineSettings, IoFactory, Partition, Placement, Start, Tier,
};
use crate::model::checkpoint::load_hf;
use crate::model::{param_layout, ParamDtype};
use crate::settings::TrainSettings;
use crate::tiers::{NvmePlacement, TierLayout};
use crate::timeline::Timeline;
use std::path::{Path, PathBuf};
use zinf_swap::{AioBackend, PoolConfig};

/// Errors of planning and building a run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The config (or a flag) asks for something zinf refuses; the message says what to change.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a command line may override in the config.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Compute threads (`zinf.threads`).
    pub threads: Option<usize>,
    /// Token data (`zinf.data.path`): UTF-8 text or llm.c `.bin`.
    pub data: Option<PathBuf>,
    /// An HF GPT-2 folder to start from; its shape replaces the config's.
    pub init_from: Option<PathBuf>,
    /// Continue the run saved in this folder.
    pub resume: Option<PathBuf>,
    /// Record a timeline (`--trace`).
    pub trace: bool,
}

/// A checked plan of a run: everything [`Session::build`] needs, nothing allocated yet.
pub struct Session {
    pub settings: EngineSettings,
    /// Bytes of the pinned pool of the swap store (0 when nothing is on NVMe).
    pub pool_bytes: u64,
    /// Whether the pool is locked in RAM (`pin_memory`).
    pub pin_pool: bool,
    /// Host bytes the tiers and gradient buffers will hold outside the pool.
    pub host_bytes: u64,
    init: Option<crate::model::HostParams>,
    resume: Option<PathBuf>,
    trace: bool,
    aio: zinf_aio::AioConfig,
}

impl Session {
    /// Checks the run the config and overrides describe, before anything is allocated:
    /// settings, placement, pool size and host budget. `--init-from` reads the checkpoint's
    /// shape (and its parameters, which a fresh run starts from).
    pub fn plan(cfg: &Config, o: &Overrides) -> Result<Self, SessionError> {
        let mut train = train_settings(cfg, o.threads)?;
        let init = match &o.init_from {
            Some(dir) => {
                let (mcfg, p) = load_hf(dir, train.dtype)?;
                if mcfg != train.model {
                    tracing::info!(
                        "--init-from: model shape {mcfg:?} from the checkpoint replaces the config's"
                    );
                }
                train.model = mcfg;
                Some(p)
            }
            None => None,
        };
        let settings = engine_settings(cfg, train)?;
        let pool_bytes = pool_bytes(cfg, &settings);
        let host_bytes = host_bytes(&settings);
        check_host_budget(cfg, host_bytes, pool_bytes)?;
        let z = &cfg.zero_optimization;
        let pin_pool = matches!(settings.placement.params, Tier::Nvme { .. })
            && z.offload_param.pin_memory
            || z.offload_optimizer.pin_memory;
        Ok(Session {
            settings,
            pool_bytes,
            pin_pool,
            host_bytes,
            init,
            resume: o.resume.clone(),
            trace: o.trace,
            aio: cfg.aio_config(),
        })
    }

    /// Allocates the run: prepares the swap folder, opens the device, builds the tiers and the
    /// engine (a fresh start from the seed or `--init-from`, or a resume).
    pub fn build(self, data: Dataset) -> Result<Engine<CpuDevice, AioBackend>, SessionError> {
        prepare_swap_folder(&self.settings.placement, self.resume.is_some())?;
        let timeline = if self.trace {
            Timeline::enabled()
        } else {
            Timeline::disabled()
        };
        let dev = open_device(&self.settings.train);
        let start = match self.resume {
            Some(dir) => Start::Resume(dir),
            None => Start::Fresh(self.init),
        };
        let io = aio_factory(self.aio, self.pool_bytes, self.pin_pool);
        Ok(Engine::new(self.settings, dev, data, io, start, timeline)?)
    }
}

/// The device, chosen in one place: the CPU backend with the run's threads and device memory
/// budget.
pub fn open_device(s: &TrainSettings) -> CpuDevice {
    CpuDevice::new(s.threads, s.device_memory_budget)
}

/// The run's training settings from a resolved config (`threads` overrides `zinf.threads`).
pub fn train_settings(cfg: &Config, threads: Option<usize>) -> Result<TrainSettings, SessionError> {
    let kind = cfg.optimizer.kind.as_str();
    if !matches!(kind, "Adam" | "AdamW") {
        return Err(SessionError::Config(format!(
            "optimizer.type {kind:?}: zinf trains with the CPU Adam (\"Adam\" or \"AdamW\")"
        )));
    }
    let z = &cfg.zinf;
    let cfg_err = |e: crate::config::ConvertError| SessionError::Config(e.to_string());
    let dtype = match (cfg.fp16.enabled, cfg.bf16.enabled) {
        (true, _) => ParamDtype::F16,
        (false, true) => ParamDtype::Bf16,
        _ => ParamDtype::F32,
    };
    let threads = threads
        .or(z.threads.map(|t| t as usize))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    Ok(TrainSettings {
        model: z.model,
        micro_batch: cfg.train_micro_batch_size_per_gpu as usize,
        gradient_accumulation_steps: cfg.gradient_accumulation_steps.max(1) as usize,
        seq_len: z.data.seq_len as usize,
        gradient_clipping: cfg.gradient_clipping,
        dtype,
        fp16: cfg.fp16.enabled,
        loss_scaler: cfg.loss_scaler().map_err(cfg_err)?,
        adam: cfg.adam(),
        scheduler: cfg.lr_scheduler().map_err(cfg_err)?,
        activation_checkpointing: cfg.activation_checkpointing.enabled,
        seed: z.seed,
        threads,
        device_memory_budget: z.device_memory_budget,
        eval_batches: z.data.eval_batches as usize,
    })
}

/// The engine's settings: the trainer's plus placement and the stage-3 knobs.
pub fn engine_settings(cfg: &Config, train: TrainSettings) -> Result<EngineSettings, SessionError> {
    let z = &cfg.zero_optimization;
    Ok(EngineSettings {
        train,
        placement: Placement::from_config(cfg)?,
        partition: Partition::single(),
        sub_group_size: z.sub_group_size.max(1),
        prefetch_bucket_size: z.prefetch_bucket_size,
        max_live_parameters: z.max_live_parameters,
        max_reuse_distance: z.max_reuse_distance,
        param_persistence_threshold: z.param_persistence_threshold,
        max_in_cpu: z.offload_param.max_in_cpu,
        pipeline_read: z.offload_optimizer.pipeline_read,
        pipeline_write: z.offload_optimizer.pipeline_write,
        chunk_bytes: crate::tiers::layout::DEFAULT_CHUNK_BYTES,
        double_buffered: cfg.zinf.swap_double_buffered,
    })
}

/// The tiers' layout for these settings: the model's groups cut into this rank's units.
pub fn tier_layout(s: &EngineSettings) -> TierLayout {
    let layout = param_layout(&s.train.model);
    let part = s.partition;
    TierLayout::new(
        layout.groups.iter().map(|(_, r)| r.clone()).collect(),
        |r| part.owned(r),
        s.sub_group_size,
        s.train.dtype,
    )
}

/// Host bytes the run holds outside the pinned pool (what [`Engine::host_state_bytes`]
/// reports once built): the tiers' host arrays plus the fp32 gradient accumulators (kept
/// whole when the update waits for the global norm or micro-batches accumulate) or one
/// group's gradient scratch (streaming).
pub fn host_bytes(s: &EngineSettings) -> u64 {
    let layout = tier_layout(s);
    let tiers = crate::tiers::host_bytes(&layout, s.placement.on_nvme(), s.max_in_cpu);
    let t = &s.train;
    let streams = crate::optim::update_streams(t.gradient_clipping, t.fp16);
    let grads = if !streams || t.gradient_accumulation_steps > 1 {
        layout.total as u64 * 4
    } else {
        layout.max_group_len() as u64 * 4
    };
    tiers + grads
}

/// The pinned pool: `zinf.pinned_memory_budget`, else DeepSpeed's buffers (offload_param
/// `buffer_count x buffer_size` elements, offload_optimizer `buffer_count` sub-groups of fp32),
/// capped at twice what the engine's pipeline can hold at once and raised to what it needs.
pub fn pool_bytes(cfg: &Config, s: &EngineSettings) -> u64 {
    if let Some(b) = cfg.zinf.pinned_memory_budget {
        return b;
    }
    let z = &cfg.zero_optimization;
    let d = s.train.dtype.bytes() as u64;
    let layout = tier_layout(s);
    let group = layout.max_group_len() as u64;
    let unit = layout.max_unit_len() as u64;
    let NvmePlacement { params, optimizer } = s.placement.on_nvme();
    let mut ds = 0;
    let mut need = 0;
    if params {
        ds += z.offload_param.buffer_count * z.offload_param.buffer_size * d;
        need += 3 * group * d;
    }
    if optimizer {
        ds += z.offload_optimizer.buffer_count * unit * 4;
        need += 3 * 3 * unit * 4;
    }
    ds.min(2 * need).max(need)
}

/// Builds the aio backend of the swap store with a pool of `pool` bytes.
pub fn aio_factory(aio: zinf_aio::AioConfig, pool: u64, pin: bool) -> IoFactory<AioBackend> {
    Box::new(move || {
        let pc = PoolConfig {
            buffer_count: 1,
            buffer_size: pool,
            budget_bytes: Some(pool),
            pin_memory: pin,
        };
        AioBackend::new(&aio, &pc)
    })
}

/// Refuses a run whose host state would not fit `zinf.host_memory_budget`.
pub fn check_host_budget(cfg: &Config, host_bytes: u64, pool: u64) -> Result<(), SessionError> {
    use crate::engine::summary::human_bytes;
    if let Some(budget) = cfg.zinf.host_memory_budget {
        if host_bytes > budget {
            return Err(SessionError::Config(format!(
                "host memory budget exceeded: the tiers need {} in host memory (plus a {} pinned \
                 pool), zinf.host_memory_budget is {}; offload more to nvme, or raise the budget",
                human_bytes(host_bytes),
                human_bytes(pool),
                human_bytes(budget)
            )));
        }
    }
    Ok(())
}

/// A fresh run may reuse a swap folder only when no save lives in it.
pub fn prepare_swap_folder(p: &Placement, resuming: bool) -> Result<(), SessionError> {
    if resuming || p.nvme_paths().is_empty() {
        return Ok(());
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SessionError::Io { path, source }
    };
    for path in p.nvme_paths() {
        let folder = path.join(crate::engine::SWAP_DIR);
        let marker = folder.join(checkpoint::SAVED_MARKER);
        if marker.exists() {
            let what = std::fs::read_to_string(&marker).unwrap_or_default();
            return Err(SessionError::Config(format!(
                "{} holds a saved run ({}); continue it with --resume DIR, or delete the folder \
                 to start fresh",
                folder.display(),
                what.trim()
            )));
        }
        if folder.exists() {
            tracing::info!(
                "removing the swap store of an earlier unsaved run in {}",
                folder.display()
            );
            std::fs::remove_dir_all(&folder).map_err(io_err(&folder))?;
        }
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// The token data: `path` (UTF-8 text or llm.c `.bin`), else the built-in generated corpus;
/// split into train and validation.
pub fn load_data(
    cfg: &Config,
    path: Option<PathBuf>,
    seq_len: usize,
) -> Result<Dataset, SessionError> {
    let path = path.or(cfg.zinf.data.path.as_ref().map(PathBuf::from));
    let tokens = match &path {
        Some(p) => load_tokens(p)?,
        None => {
            tracing::info!("no data path: using the built-in generated corpus");
            Tokenizer::gpt2().encode(&builtin_corpus(6000, cfg.zinf.seed))
        }
    };
    let name = path.map_or("built-in corpus".to_string(), |p| p.display().to_string());
    tracing::info!("data: {name}, {} tokens", tokens.len());
    Ok(Dataset::split(tokens, cfg.zinf.data.val_fraction, seq_len)?)
}
