//! `Session`: the library entry point that turns a resolved DeepSpeed config (plus the few
//! things a command line overrides) into a ready engine: config → settings → placement →
//! layout and pool → estimate → refusals → data → device → tiers → engine.
//!
//! Every check that can refuse a run — optimizer type, placement rules, the pinned pool's
//! size, the device and host budgets, the NVMe free space — runs in [`Session::plan`]
//! ([`Session::draft`] + [`crate::estimate::estimate`] + [`Session::refusals`]), **before
//! anything is allocated**; [`Session::build`] only allocates. `zinf config check` and `zinf
//! estimate` run the same pre-flight; `zinf train` is it plus flags, printing and a progress
//! bar (`cli/train.rs`).
//!
//! The device is chosen in one place: [`pick_device`] resolves `zinf.device` (or `--device`)
//! when the run is planned (`auto` takes the first GPU when this build has CUDA support and
//! one is present, and logs which it took and why), and [`Session::open_device`] opens it.

use crate::config::{Config, DeviceChoice};
use crate::data::chat::ChatTemplate;
use crate::data::formats::{self, DataFormat, TokenizeWith};
use crate::data::{Dataset, Tokenizer, BUILTIN_TEXT};
use crate::device::{CpuDevice, Device};
use crate::engine::{
    swap_lock::SwapLock, Engine, EngineError, EngineSettings, IoFactory, Partition, Placement,
    Start, Tier,
};
use crate::model::hf::open_weights;
use crate::model::{ModelSpec, ParamDtype, ParamSource};
use crate::settings::TrainSettings;
use crate::tiers::layout::MIN_SUB_GROUP_SIZE;
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
    /// Plan from the folder's `config.json` alone, without checking its weights (`zinf
    /// estimate` of a shape: a folder with only `config.json` is enough).
    pub shape_only: bool,
    /// The compute device (`--device`), over `zinf.device`.
    pub device: Option<DeviceChoice>,
    /// This process's (or thread's) place among data-parallel ranks (`--nproc-per-node`, a
    /// launcher's `RANK`/`WORLD_SIZE`); one rank when `None`.
    pub partition: Option<Partition>,
}

/// The backend a run computes on, resolved from `zinf.device` by [`pick_device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    /// CUDA GPU `N`.
    Cuda(usize),
}

/// An opened device of either backend ([`Session::open_device`]); `zinf train` runs the
/// engine generic over whichever it holds.
pub enum AnyDevice {
    Cpu(CpuDevice),
    #[cfg(feature = "cuda")]
    Cuda(crate::device::cuda::CudaDevice),
}

/// Runs `$body` with `$dev` bound to the device an [`AnyDevice`] holds, whichever backend it
/// is: the one `match` over backends, so code after it is generic over [`Device`].
#[macro_export]
macro_rules! with_device {
    ($any:expr, |$dev:ident| $body:expr) => {
        match $any {
            $crate::session::AnyDevice::Cpu($dev) => $body,
            #[cfg(feature = "cuda")]
            $crate::session::AnyDevice::Cuda($dev) => $body,
        }
    };
}

/// Opens a device of `kind` under `budget_bytes` of device memory: the CPU backend with
/// `threads` threads, or the GPU with its kernels compiled and products at the precision of
/// `dtype` (the one place a backend is constructed; `zinf generate` and `zinf eval` use it
/// directly, `zinf train` through [`Session::open_device`]).
///
/// # Errors
/// The GPU cannot be opened (no driver, libraries, a kernel that does not compile), saying
/// what to do.
pub fn open_device_of(
    kind: DeviceKind,
    threads: usize,
    budget_bytes: u64,
    dtype: ParamDtype,
) -> Result<AnyDevice, SessionError> {
    match kind {
        DeviceKind::Cpu => Ok(AnyDevice::Cpu(CpuDevice::new(threads, budget_bytes))),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda(n) => {
            use crate::device::cuda::{CudaDevice, MatmulPrecision};
            let dev = CudaDevice::new(n, budget_bytes, MatmulPrecision::for_dtype(dtype))
                .map_err(|e| SessionError::Config(format!("zinf.device: cuda:{n}: {e}")))?;
            tracing::info!("device: {}", dev.name());
            Ok(AnyDevice::Cuda(dev))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda(n) => {
            let _ = dtype;
            Err(SessionError::Config(format!(
                "zinf.device: cuda:{n}: this zinf was built without CUDA support"
            )))
        }
    }
}

/// Resolves a device choice: `cpu` is the CPU; `cuda[:N]` needs a build with CUDA support, a
/// driver and GPU `N`; `auto` takes `cuda:0` when all three are there, else the CPU, and logs
/// which it took and why.
///
/// # Errors
/// `cuda` asked for and impossible here, saying why and what to do.
pub fn pick_device(choice: DeviceChoice) -> Result<DeviceKind, SessionError> {
    let gpus = cuda_device_count();
    match choice {
        DeviceChoice::Cpu => Ok(DeviceKind::Cpu),
        DeviceChoice::Cuda(n) => match gpus {
            Err(why) => Err(SessionError::Config(format!(
                "zinf.device: \"cuda:{n}\": {why}; or run on the CPU (zinf.device: \"cpu\", \
                 --device cpu)"
            ))),
            Ok(count) if n >= count => Err(SessionError::Config(format!(
                "zinf.device: \"cuda:{n}\": this machine has {count} CUDA GPU(s); pick one of \
                 cuda:0..{} or run with --device cpu",
                count.saturating_sub(1)
            ))),
            Ok(_) => Ok(DeviceKind::Cuda(n)),
        },
        DeviceChoice::Auto => match gpus {
            Ok(count) if count > 0 => {
                tracing::info!("zinf.device: auto -> cuda:0 ({count} CUDA GPU(s) found)");
                Ok(DeviceKind::Cuda(0))
            }
            Ok(_) => {
                tracing::info!("zinf.device: auto -> cpu (the CUDA driver sees no GPU)");
                Ok(DeviceKind::Cpu)
            }
            Err(why) => {
                tracing::info!("zinf.device: auto -> cpu ({why})");
                Ok(DeviceKind::Cpu)
            }
        },
    }
}

/// CUDA GPUs this process can use, or why it can use none.
fn cuda_device_count() -> Result<usize, String> {
    #[cfg(feature = "cuda")]
    {
        crate::device::cuda::require_driver().map_err(|_| {
            "no CUDA driver found (libcuda.so.1): install the NVIDIA driver".to_string()
        })?;
        Ok(crate::device::cuda::device_count())
    }
    #[cfg(not(feature = "cuda"))]
    Err(
        "this zinf was built without CUDA support (rebuild with `cargo build --release \
         --features cuda`)"
            .into(),
    )
}

/// A plan of a run: everything [`Session::build`] needs, nothing allocated yet.
/// [`Session::plan`] returns it only when [`Session::refusals`] found nothing.
pub struct Session {
    pub settings: EngineSettings,
    /// The tiers' layout: the model's groups cut into this rank's optimizer units.
    pub layout: TierLayout,
    /// Bytes of the pinned pool of the swap store (0 when nothing is on NVMe).
    pub pool_bytes: u64,
    /// Whether the pool is locked in RAM (`pin_memory`).
    pub pin_pool: bool,
    /// The backend the run computes on.
    pub device: DeviceKind,
    /// The Hugging Face folder a fresh run starts from (`zinf.model.from`, `--init-from`).
    init_from: Option<PathBuf>,
    resume: Option<PathBuf>,
    trace: bool,
    aio: zinf_aio::AioConfig,
}

impl Session {
    /// The whole pre-flight of a run, before anything is allocated: settings, placement, the
    /// layout and pool size ([`Session::draft`]), then `zinf estimate`'s figures for them
    /// ([`crate::estimate::estimate`], free space from `statvfs`), then every refusal
    /// ([`Session::refusals`]). `zinf config check` and `zinf estimate` run the same.
    /// Returns the plan and its estimate, or a [`SessionError::Config`] listing every
    /// refusal.
    pub fn plan(
        cfg: &Config,
        o: &Overrides,
    ) -> Result<(Self, crate::estimate::Estimate), SessionError> {
        let s = Session::draft(cfg, o)?;
        let est = crate::estimate::estimate(
            cfg,
            &s,
            2.0,
            crate::config::host_memory_bytes(),
            &crate::estimate::statvfs_free_bytes,
        );
        let refused = s.refusals(cfg, &est);
        if !refused.is_empty() {
            return Err(SessionError::Config(refused.join("\n")));
        }
        Ok((s, est))
    }

    /// Settings, placement, layout and pool size of the run the config and overrides
    /// describe. Refuses only what leaves nothing to plan (an optimizer zinf does not run, a
    /// placement DeepSpeed refuses); budgets and space are [`Session::refusals`]' job.
    /// `--init-from` reads the checkpoint's shape (and its parameters, which a fresh run
    /// starts from).
    pub fn draft(cfg: &Config, o: &Overrides) -> Result<Self, SessionError> {
        let device = pick_device(o.device.unwrap_or(cfg.zinf.device))?;
        let mut train = train_settings(cfg, o.threads)?;
        if let (DeviceKind::Cuda(n), true) = (device, cfg.zinf.device_memory_budget_auto) {
            train.device_memory_budget = cuda_auto_budget(n)?;
        }
        // The config already read the folder's shape (`--init-from` is `zinf.model.from`);
        // its weights are checked here, before anything is allocated.
        let init_from = o
            .init_from
            .clone()
            .or_else(|| cfg.zinf.model_from.as_ref().map(PathBuf::from));
        if let (Some(dir), false) = (&init_from, o.shape_only) {
            check_weights(dir, &train.model)?;
        }
        let mut settings = engine_settings(cfg, train)?;
        if let Some(p) = o.partition.filter(|p| p.world_size > 1) {
            settings.partition = p;
            settings.placement = settings.placement.for_rank(p.rank);
        }
        let layout = tier_layout(&settings);
        warn_unit_cost(&settings, &layout);
        let pool_bytes = pool_bytes(cfg, &settings, &layout);
        let z = &cfg.zero_optimization;
        let pin_pool = matches!(settings.placement.params, Tier::Nvme { .. })
            && z.offload_param.pin_memory
            || z.offload_optimizer.pin_memory;
        Ok(Session {
            settings,
            layout,
            pool_bytes,
            pin_pool,
            device,
            init_from,
            resume: o.resume.clone(),
            trace: o.trace,
            aio: cfg.aio_config(),
        })
    }

    /// Everything `zinf train` would refuse before step 1, each as "JSON path: what is
    /// wrong; what to do": the pinned pool too small for one shard, the device peak over
    /// `zinf.device_memory_budget`, host state over `zinf.host_memory_budget`, and a swap
    /// store larger than the free space under its `nvme_path` (a store of an earlier unsaved
    /// run there, which a fresh run removes, counts as free). `est` is this plan's estimate.
    pub fn refusals(&self, cfg: &Config, est: &crate::estimate::Estimate) -> Vec<String> {
        use crate::engine::summary::human_bytes;
        let mut out = Vec::new();
        let place = self.settings.placement.on_nvme();
        if place.any() {
            let need = self.layout.min_pool_bytes(
                place,
                self.layout.chunk_bytes(self.settings.chunk_bytes),
                self.pool_bytes,
            );
            if self.pool_bytes < need {
                out.push(format!(
                    "zinf.pinned_memory_budget: the pinned pool of {} cannot hold the largest \
                     shard the engine moves at once ({}); raise it to at least {} (or drop the \
                     key: zinf sizes the pool itself), or lower zero_optimization.sub_group_size",
                    human_bytes(self.pool_bytes),
                    human_bytes(need),
                    human_bytes(need)
                ));
            }
        }
        let budget = self.settings.train.device_memory_budget;
        if est.device.bytes > budget {
            out.push(format!(
                "zinf.device_memory_budget: the device peak of this run is {} ({}), above the \
                 {} budget; raise the budget, offload parameters (offload_param), enable \
                 activation_checkpointing, or lower train_micro_batch_size_per_gpu",
                human_bytes(est.device.bytes),
                est.device.summary(),
                human_bytes(budget)
            ));
        }
        if let Some(budget) = cfg.zinf.host_memory_budget {
            // Every rank on this node holds its share (rank 0's, the largest, for each).
            let host = est
                .host_bytes()
                .saturating_mul(self.settings.partition.world_size as u64);
            if host > budget {
                out.push(format!(
                    "zinf.host_memory_budget: the run holds {} in host memory ({}), above the \
                     {} budget; offload more to nvme, or raise the budget",
                    human_bytes(host),
                    est.host_summary(),
                    human_bytes(budget)
                ));
            }
        }
        let part = self.settings.partition;
        for s in &est.nvme_space {
            // The swap folders under this `nvme_path`: its own, or one per rank.
            let folders: Vec<PathBuf> = if part.world_size > 1 {
                (0..part.world_size)
                    .map(|r| Path::new(&s.path).join(format!("rank{r}")))
                    .collect()
            } else {
                vec![PathBuf::from(&s.path)]
            };
            // This rank's folder only: another rank of this run may hold its own already.
            let mine = &folders[part.rank.min(folders.len() - 1)];
            if let Some(pid) = SwapLock::holder(mine) {
                out.push(format!(
                    "{}: {} is in use by another zinf run (pid {pid}); give this run another \
                     nvme_path, or stop that run first",
                    s.key,
                    mine.display()
                ));
                continue;
            }
            if let Some(free) = s.available_bytes {
                let reclaimed: u64 = folders.iter().map(|f| stale_store_bytes(f)).sum();
                if s.needed_bytes > free.saturating_add(reclaimed) {
                    out.push(format!(
                        "{}: the swap store needs {} under {} but its drive has {} free; free \
                         space there, or point nvme_path at a larger drive",
                        s.key,
                        human_bytes(s.needed_bytes),
                        s.path,
                        human_bytes(free.saturating_add(reclaimed))
                    ));
                }
            }
        }
        out
    }

    /// Opens the planned device: the CPU backend with the run's threads, or the GPU (kernels
    /// compiled for it, products at the precision of the run's dtype), each under the run's
    /// device memory budget.
    pub fn open_device(&self) -> Result<AnyDevice, SessionError> {
        let s = &self.settings.train;
        open_device_of(self.device, s.threads, s.device_memory_budget, s.dtype)
    }

    /// Allocates the run on `dev` (from [`Session::open_device`]): prepares the swap folder,
    /// builds the tiers and the engine (a fresh start from the seed or `--init-from`, or a
    /// resume). When a fresh start fails (a disk that filled up meanwhile), the swap store it
    /// began is removed: nothing is left allocated on the drive.
    ///
    /// With several ranks every rank builds at the same time, each with its end of the
    /// collectives in `comm` (`None` on one rank).
    pub fn build<D: Device>(
        self,
        dev: D,
        data: Dataset,
        comm: Option<Box<dyn crate::dist::Collective<D>>>,
    ) -> Result<Engine<D, AioBackend>, SessionError> {
        // The folder is this run's from here on; an earlier run's scratch store is removed.
        let lock = SwapLock::acquire(&self.settings.placement)
            .map_err(|e| SessionError::Config(e.to_string()))?;
        let timeline = if self.trace {
            Timeline::enabled()
        } else {
            Timeline::disabled()
        };
        let start = match self.resume {
            Some(dir) => Start::Resume(dir),
            None => Start::Fresh(
                self.init_from
                    .as_deref()
                    .map(|dir| init_source(dir, &self.settings.train))
                    .transpose()?,
            ),
        };
        let io = aio_factory(self.aio, self.pool_bytes, self.pin_pool);
        // A start that fails drops the lock, which removes the store it began: a disk that
        // filled up meanwhile is left as it was.
        let mut engine = Engine::new(self.settings, dev, data, io, start, timeline, comm)?;
        engine.hold_swap_lock(lock);
        Ok(engine)
    }
}

/// Checks a Hugging Face folder's weights against the model its config describes: every
/// tensor present with its shape and a dtype zinf reads (names unused by the model are
/// logged, as transformers ignores them).
fn check_weights(dir: &Path, model: &ModelSpec) -> Result<(), SessionError> {
    let (_, _, unused) = open_weights(dir, model)?;
    if !unused.is_empty() {
        tracing::warn!(
            "{}: {} tensors the model does not use are ignored: {}",
            dir.display(),
            unused.len(),
            unused
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The initial parameters from a Hugging Face folder, read group by group from its mapped
/// shards as the engine fills the tiers.
fn init_source(dir: &Path, s: &TrainSettings) -> Result<ParamSource, SessionError> {
    let (weights, tensors, _) = open_weights(dir, &s.model)?;
    Ok(weights.into_source(tensors))
}

/// Bytes of a swap store an earlier run left under `nvme_path` (the next run removes it
/// first); 0 when there is none.
fn stale_store_bytes(nvme_path: &Path) -> u64 {
    let folder = nvme_path.join(crate::engine::SWAP_DIR);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            // Allocated blocks, not the apparent length: what removing it gives back.
            m.blocks().saturating_mul(512)
        })
        .sum()
}

/// The CPU backend with the run's threads and device memory budget, which it enforces as a
/// GPU's memory would be.
pub fn open_cpu_device(s: &TrainSettings) -> CpuDevice {
    // The tests and `zinf export` (which runs no product) take the CPU without a choice.
    CpuDevice::new(s.threads, s.device_memory_budget)
}

/// `zinf.device_memory_budget: "auto"` on GPU `n`: its free memory less a margin for the
/// context and cuBLAS (`cuda::auto_budget_margin_bytes`).
fn cuda_auto_budget(n: usize) -> Result<u64, SessionError> {
    #[cfg(feature = "cuda")]
    {
        let b = crate::device::cuda::auto_budget_bytes(n)
            .map_err(|e| SessionError::Config(format!("zinf.device: cuda:{n}: {e}")))?;
        tracing::info!(
            "zinf.device_memory_budget: auto -> {b} bytes (cuda:{n}'s free memory less a margin)"
        );
        Ok(b)
    }
    #[cfg(not(feature = "cuda"))]
    Err(SessionError::Config(format!(
        "zinf.device: cuda:{n}: this zinf was built without CUDA support"
    )))
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
        model: z.model.clone(),
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
        sub_group_size: sub_group_size(z.sub_group_size),
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

/// DeepSpeed's `zero_optimization.sub_group_size`, raised to
/// [`MIN_SUB_GROUP_SIZE`] elements with a warning: below it a unit costs more in padding and
/// requests than it saves in memory, and the unit count would grow with 1/`sub_group_size`
/// instead of with the model.
pub fn sub_group_size(configured: u64) -> u64 {
    if configured < MIN_SUB_GROUP_SIZE {
        tracing::warn!(
            "zero_optimization.sub_group_size {configured}: below {MIN_SUB_GROUP_SIZE} elements \
             every optimizer unit costs three store requests and up to 12 KiB of padding for \
             little memory saved; using {MIN_SUB_GROUP_SIZE} (DeepSpeed's default is 1e9)"
        );
        MIN_SUB_GROUP_SIZE
    } else {
        configured
    }
}

/// Warns when cutting groups into optimizer units on NVMe costs more than 1% of the state in
/// padding (beyond one unit per group) or makes more than 100,000 units: what a small
/// `sub_group_size` costs per step.
fn warn_unit_cost(s: &EngineSettings, layout: &TierLayout) {
    if !s.placement.optimizer.is_nvme() {
        return;
    }
    let state = layout.total as u64 * 12;
    let chunk = layout.chunk_bytes(s.chunk_bytes);
    let moved = layout.opt_store_bytes(chunk);
    let one_per_group: u64 = layout
        .groups
        .iter()
        .map(|g| 3 * crate::tiers::layout::store_bytes(g.len() as u64 * 4, chunk))
        .sum();
    let padding = moved.saturating_sub(one_per_group);
    let units = layout.units.len() as u64;
    if padding > state / 100 || units > 100_000 {
        use crate::engine::summary::human_bytes;
        tracing::warn!(
            "zero_optimization.sub_group_size {}: {units} optimizer units, {} store requests \
             each way per step and {} of padding ({:.1}% of the {} optimizer state) read and \
             written every step; a larger sub_group_size (DeepSpeed's default is 1e9) costs \
             only pinned memory",
            s.sub_group_size,
            3 * units,
            human_bytes(padding),
            100.0 * padding as f64 / state.max(1) as f64,
            human_bytes(state)
        );
    }
}

/// The tiers' layout for these settings: the model's groups cut into this rank's units,
/// whole tensors grouped as DeepSpeed groups them into sub-groups.
pub fn tier_layout(s: &EngineSettings) -> TierLayout {
    let (tensors, groups) = s.train.model.layout();
    let part = s.partition;
    let tensor_starts: Vec<usize> = tensors.iter().map(|t| t.offset).collect();
    TierLayout::new(
        groups,
        &tensor_starts,
        |r| part.owned(r),
        s.sub_group_size,
        s.train.dtype,
    )
}

/// The pinned pool: `zinf.pinned_memory_budget`, else DeepSpeed's buffers (offload_param
/// `buffer_count x buffer_size` elements, offload_optimizer `buffer_count` sub-groups of fp32),
/// capped at twice what the engine's pipeline can hold at once and raised to what it needs.
pub fn pool_bytes(cfg: &Config, s: &EngineSettings, layout: &TierLayout) -> u64 {
    if let Some(b) = cfg.zinf.pinned_memory_budget {
        return b;
    }
    let z = &cfg.zero_optimization;
    let d = s.train.dtype.bytes() as u64;
    let group = layout.max_group_len() as u64;
    let unit = layout.max_unit_len() as u64;
    let NvmePlacement { params, optimizer } = s.placement.on_nvme();
    let mut ds = 0u64;
    let mut need = 0u64;
    if params {
        ds = ds.saturating_add(
            z.offload_param
                .buffer_count
                .saturating_mul(z.offload_param.buffer_size)
                .saturating_mul(d),
        );
        need = need.saturating_add(3 * group * d);
    }
    if optimizer {
        ds = ds.saturating_add(z.offload_optimizer.buffer_count.saturating_mul(unit * 4));
        need = need.saturating_add(3 * 3 * unit * 4);
    }
    ds.min(need.saturating_mul(2)).max(need)
}

/// Builds the aio backend of a store: the swap store's with a pool of `pool` bytes (pinned
/// when `pin`), or a save's with the pool it asks for.
pub fn aio_factory(aio: zinf_aio::AioConfig, pool: u64, pin: bool) -> IoFactory<AioBackend> {
    Box::new(move |save_pool: Option<u64>| {
        let bytes = save_pool.unwrap_or(pool);
        let pc = PoolConfig {
            buffer_count: 1,
            buffer_size: bytes,
            budget_bytes: Some(bytes),
            pin_memory: pin && save_pool.is_none(),
        };
        AioBackend::new(&aio, &pc)
    })
}

/// The token data: `path` (UTF-8 text or llm.c `.bin`), else the built-in corpus
/// ([`BUILTIN_TEXT`]);
/// split into train and validation.
pub fn load_data(
    cfg: &Config,
    path: Option<PathBuf>,
    seq_len: usize,
) -> Result<Dataset, SessionError> {
    let path = path.or(cfg.zinf.data.path.as_ref().map(PathBuf::from));
    let folder = cfg.zinf.model_from.as_ref().map(PathBuf::from);
    // The model's tokenizer; pre-tokenized .bin data needs none (GPT-2's stands in, unused).
    let pre_tokenized = path
        .as_ref()
        .is_some_and(|p| p.extension().is_some_and(|e| e == "bin"));
    let tokenizer = if pre_tokenized {
        Tokenizer::gpt2()
    } else {
        Tokenizer::for_model(&cfg.zinf.model, folder.as_deref())?
    };
    let chat = match &folder {
        Some(dir) => ChatTemplate::from_folder(dir)?,
        None => None,
    };
    let format = DataFormat::from_name(&cfg.zinf.data.format).unwrap_or(DataFormat::Auto);
    let tokens = match &path {
        Some(p) => formats::load(
            p,
            format,
            &TokenizeWith {
                tokenizer: &tokenizer,
                chat: chat.as_ref(),
            },
        )?,
        None => {
            tracing::info!(
                "no data path: training on the built-in corpus (Shakespeare, corpus/tinyshakespeare.txt)"
            );
            tokenizer.encode(BUILTIN_TEXT)?.into()
        }
    };
    let name = path.map_or("built-in Shakespeare".to_string(), |p| {
        p.display().to_string()
    });
    let learned = tokens
        .iter()
        .filter(|&&k| k & formats::PROMPT_FLAG == 0)
        .count();
    tracing::info!(
        "data: {name}, {} tokens ({learned} learned, the rest prompt)",
        tokens.len()
    );
    Ok(Dataset::split(tokens, cfg.zinf.data.val_fraction, seq_len)?)
}
