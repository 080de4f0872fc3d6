//! The ZeRO-3 offload engine: trains the GPT with only its working set on the device.
//!
//! Parameters (fp16/bf16, or fp32) and optimizer state (fp32 master, m, v) each live in one
//! tier — the device, host memory, or the NVMe swap store — as the config's `offload_param` /
//! `offload_optimizer` say (`placement.rs`). The forward and backward loops below fetch each
//! group (embeddings, one block, final norm) before its op and release it after, in plain
//! sight; the first pass records the order, later passes prefetch along it (`fetch.rs`).
//! Each group's gradients leave the device when its backward ends; once they are final the
//! CPU Adam updates that group while backward goes on, or after backward when clipping or
//! fp16 needs the global norm first (`update.rs`). Results equal the resident trainer
//! ([`crate::model::train::Trainer`]) bit for bit, whatever the placement.
//!
//! This module does not print or parse command lines (`cli/train.rs` does), and knows nothing
//! of io_uring (the store's `BlockIo` does).

pub mod checkpoint;
pub mod counters;
mod fetch;
pub mod partition;
pub mod placement;
mod ranks;
pub mod residency;
pub mod summary;
pub mod swap_lock;
pub use crate::timeline;
mod update;

pub use counters::EngineCounters;
pub use partition::Partition;
pub use placement::{Placement, Tier};

use crate::data::{val_batches, Batcher, Dataset};
use crate::device::{Device, DeviceError};
use crate::dist::Collective;
use crate::model::{AnyModel, HostParams, Model, ModelError, ParamSource, Stages};
use crate::optim::{Grad, GradStats, OptimError, OptimizerStep, StepScalars};
use crate::settings::{StepMetrics, TrainSettings};
use crate::tiers::layout::is_persistent;
use crate::tiers::{NvmeSetup, Recorder, TierError, TierLayout, Tiers};
use residency::{Phase, Trace};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use timeline::{Overlap, Timeline, Track};
use zinf_swap::{BlockIo, ShardSpec, StoreConfig, SwapError};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Swap(#[from] SwapError),
    #[error("{0}")]
    Config(String),
    #[error(
        "non-finite gradient in {group} at step {step}: with bf16/fp32 and gradient_clipping 0 \
         the update streams group by group and cannot be skipped after the fact; lower the \
         learning rate, or set gradient_clipping so zinf checks the whole gradient first"
    )]
    NonFinite { group: String, step: u64 },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A collective among ranks failed (another rank stopped, or did not arrive in time).
    #[error("{0}")]
    Dist(String),
}

impl From<TierError> for EngineError {
    fn from(e: TierError) -> Self {
        match e {
            TierError::Swap(e) => EngineError::Swap(e),
            TierError::Config(m) => EngineError::Config(m),
        }
    }
}

impl From<DeviceError> for EngineError {
    fn from(e: DeviceError) -> Self {
        EngineError::Model(e.into())
    }
}

/// Everything the engine needs beyond the resident trainer's settings.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub train: TrainSettings,
    pub placement: Placement,
    /// This rank's share of every group (its rank and the world size).
    pub partition: Partition,
    /// Elements per optimizer unit (DeepSpeed `sub_group_size`).
    pub sub_group_size: u64,
    /// Elements of parameters read ahead along the trace (`stage3_prefetch_bucket_size`).
    pub prefetch_bucket_size: u64,
    /// Elements of parameters on the device, prefetches included (`stage3_max_live_parameters`).
    pub max_live_parameters: u64,
    /// A released group used again within this many elements stays (`stage3_max_reuse_distance`).
    pub max_reuse_distance: u64,
    /// Groups of at most this many elements stay on the device (`stage3_param_persistence_threshold`).
    pub param_persistence_threshold: u64,
    /// Elements of NVMe parameters kept in host memory once read (`offload_param.max_in_cpu`).
    pub max_in_cpu: u64,
    /// Read the next optimizer unit while one updates (`pipeline_read`).
    pub pipeline_read: bool,
    /// Write updated units behind (`pipeline_write`).
    pub pipeline_write: bool,
    /// Bytes per chunk of the swap store (one pool buffer and one request each).
    pub chunk_bytes: u64,
    /// Keep two slots per shard (crash-safe between saves) in the swap store.
    pub double_buffered: bool,
}

/// A model with its state in the configured tiers, ready to step.
pub struct Engine<D: Device, B: BlockIo, M: Model<D> = AnyModel<D>> {
    pub settings: EngineSettings,
    pub dev: D,
    model: M,
    /// The model's stages (shared, so the loops can walk them while `self` is borrowed).
    stages: Arc<Stages>,
    /// Per group: never released (persistent, or parameters placed on the device).
    persistent: Vec<bool>,
    /// Device buffers given back, reused by the next fetch of the same length.
    free: Vec<D::Buffer>,
    trace: Trace,
    /// Host memory registered with the device for DMA (the swap store's pool, a pinned host
    /// parameter array). Declared before `tiers`, so it is unregistered before the memory goes.
    host_registrations: Vec<D::HostRegistration>,
    /// Every home of parameters and optimizer state, and where each byte's newest copy is.
    tiers: Tiers<B>,
    /// Makes the block I/O backend of the swap store (at build) and of each save's store.
    io_factory: IoFactory<B>,
    /// fp32 gradients accumulated on the host across micro-batches (and kept whole until the
    /// global norm is known when clipping or fp16 needs it); `None` when they stream.
    grads_acc: Option<Vec<f32>>,
    /// The last group whose gradients left the device: its copy runs while the next stage
    /// computes, and it is summed or updated at the next `grads_out` (or the end of backward).
    grads_pending: Option<update::PendingGrads<D>>,
    /// Host buffers for gradient downloads (page-locked on a GPU), one group long; at most
    /// two exist, one copying and one being summed or updated.
    grad_host: Vec<D::HostBuffer>,
    /// How many `grad_host` buffers were made (for the host-memory account).
    grad_host_made: usize,
    /// Adam, the loss scaler, the LR schedule and the per-step decisions (shared with the
    /// resident trainer).
    opt: OptimizerStep,
    batcher: Batcher,
    data: Dataset,
    steps: u64,
    batches_drawn: u64,
    counters: EngineCounters,
    /// Sum of squares of this step's gradients so far (streaming mode).
    step_sum_sq: f64,
    /// The collectives among data-parallel ranks (`None` on one rank).
    comm: Option<Box<dyn Collective<D>>>,
    /// The lock on the swap folders (held by a run `Session` built; last, so the store is
    /// closed before the lock's drop removes it).
    swap_lock: Option<swap_lock::SwapLock>,
}

/// Builds a block-I/O backend (with its pinned pool) for a store: the swap store at start-up,
/// a save store at the first save.
pub type IoFactory<B> = Box<dyn Fn(Option<u64>) -> Result<B, SwapError> + Send>;

/// What the engine was given to start from.
pub enum Start {
    /// A fresh run from the seed, or from these parameters (`--init-from`), read one group
    /// range at a time in layout order.
    Fresh(Option<ParamSource>),
    /// Continue from a save folder (`--resume`).
    Resume(PathBuf),
}

impl<D: Device, B: BlockIo> Engine<D, B, AnyModel<D>> {
    /// Builds the engine for the model of `settings.train.model` (GPT-2 or a Llama-family
    /// shape; see [`Engine::with_model`]).
    pub fn new(
        settings: EngineSettings,
        dev: D,
        data: Dataset,
        io_factory: IoFactory<B>,
        start: Start,
        timeline: Timeline,
        comm: Option<Box<dyn Collective<D>>>,
    ) -> Result<Self, EngineError> {
        let s = &settings.train;
        crate::model::check_vocab(&data, s.model.vocab_size())?;
        let model = s
            .model
            .build(&dev, s.micro_batch, s.seq_len, s.activation_checkpointing)?;
        Self::with_model(
            settings, dev, model, data, io_factory, start, timeline, comm,
        )
    }
}

impl<D: Device, B: BlockIo, M: Model<D>> Engine<D, B, M> {
    /// Builds the engine around `model` (built without parameter or gradient buffers):
    /// the tiers, the swap store over `io` (needed when any state is on NVMe), and every
    /// buffer the step loop uses. With several ranks (`settings.partition.world_size > 1`)
    /// `comm` is this rank's end of their collectives, and every rank builds its engine at
    /// the same time (the persistent groups are gathered here).
    ///
    /// # Errors
    /// A model that does not match the settings, a world size without a matching `comm`,
    /// the tiers' and the start's errors.
    #[allow(clippy::too_many_arguments)]
    pub fn with_model(
        settings: EngineSettings,
        dev: D,
        model: M,
        data: Dataset,
        io_factory: IoFactory<B>,
        start: Start,
        timeline: Timeline,
        comm: Option<Box<dyn Collective<D>>>,
    ) -> Result<Self, EngineError> {
        let s = &settings.train;
        if model.num_params() != s.model.num_params() {
            return Err(EngineError::Config(format!(
                "the model has {} parameters but the settings describe {} ({})",
                model.num_params(),
                s.model.describe(),
                s.model.num_params()
            )));
        }
        let stages = Arc::new(model.stages().clone());
        stages.assert_consistent(model.groups().len());
        let persistent = model
            .groups()
            .iter()
            .map(|g| {
                settings.placement.params == Tier::Device
                    || is_persistent(g.range.len() as u64, settings.param_persistence_threshold)
            })
            .collect();
        let part = settings.partition;
        let comm_place = comm.as_ref().map(|c| (c.rank(), c.world_size()));
        // Several ranks need their collective; one rank may have one (a world of 1, which
        // runs the same gathers and reductions: how the NCCL path is checked on one GPU).
        let comm_ok = match comm_place {
            Some(place) => place == (part.rank, part.world_size),
            None => part.world_size == 1,
        };
        if !comm_ok {
            return Err(EngineError::Config(format!(
                "rank {} of {}: the collective given is {}",
                part.rank,
                part.world_size,
                match comm_place {
                    Some((r, w)) => format!("rank {r} of {w}"),
                    None => "missing".into(),
                }
            )));
        }

        let tensor_starts: Vec<usize> = model
            .groups()
            .iter()
            .flat_map(|g| g.tensor_starts.iter().copied())
            .collect();
        let layout = TierLayout::new(
            model.groups().iter().map(|g| g.range.clone()).collect(),
            &tensor_starts,
            |r| part.owned(r),
            settings.sub_group_size,
            s.dtype,
        );
        let opt = s.optimizer(dev.host_pool())?;
        let stream = opt.streams();
        let grads_acc =
            (!stream || s.gradient_accumulation_steps > 1).then(|| vec![0.0f32; layout.total]);
        let pointer = match &start {
            Start::Resume(dir) => Some(checkpoint::read_pointer(dir)?),
            Start::Fresh(_) => None,
        };
        let place = settings.placement.on_nvme();
        let setup = if place.any() {
            // With pipeline_write, up to 12 shard writes (four units) stay in flight, fewer
            // when the pool needs their room; more would queue ahead of the reads the next
            // units wait for. Without it each write is waited at once.
            Some(NvmeSetup::new(
                io_factory(None)?,
                store_config(&settings, &layout),
                if settings.pipeline_write { 12 } else { 0 },
            ))
        } else {
            None
        };
        let rec = Recorder {
            timeline,
            overlap: Overlap::default(),
        };
        let tiers = Tiers::new(layout, place, setup, settings.max_in_cpu, rec)?;
        let mut e = Engine {
            batcher: Batcher::new(s.seed, s.micro_batch, s.seq_len),
            settings: settings.clone(),
            dev,
            model,
            stages,
            persistent,
            free: Vec::new(),
            trace: Trace::default(),
            host_registrations: Vec::new(),
            tiers,
            io_factory,
            grads_acc,
            grads_pending: None,
            grad_host: Vec::new(),
            grad_host_made: 0,
            opt,
            data,
            steps: 0,
            batches_drawn: 0,
            counters: EngineCounters::default(),
            step_sum_sq: 0.0,
            comm,
            swap_lock: None,
        };
        match (start, pointer) {
            (Start::Resume(dir), Some(ptr)) => e.resume_from(&dir, &ptr)?,
            (Start::Fresh(init), _) => e.init_state(init)?,
            (Start::Resume(_), None) => unreachable!("a resume reads its pointer first"),
        }
        e.load_persistent()?;
        e.pin_host_tiers();
        e.register_host_memory();
        Ok(e)
    }

    /// Fills the tiers with the initial parameters, one group at a time (a model larger than
    /// RAM never exists whole in host memory), and commits the store.
    fn init_state(&mut self, init: Option<ParamSource>) -> Result<(), EngineError> {
        let s = &self.settings.train;
        let groups = self.model.groups().to_vec();
        let mut source = match init {
            Some(source) => source,
            None => self.model.seeded_init(s.seed),
        };
        for (gi, g) in groups.iter().enumerate() {
            let r = g.range.clone();
            // This rank's part of the group (all of it on one rank).
            let o = self.tiers.layout().owned[gi].clone();
            // Stored (rounded) values; the fp32 master starts from them, as DeepSpeed's does.
            // The fp32 values read are dropped before the master is made: two copies of the
            // largest group at once, not three.
            let values = source(r.clone())?;
            let stored = HostParams::from_f32(s.dtype, &values[o.start - r.start..o.end - r.start]);
            drop(values);
            let master = stored.to_f32();
            self.tiers.init_group(gi, &stored, &master)?;
        }
        self.tiers.commit()?;
        Ok(())
    }

    /// Locks host-tier arrays in RAM where the placement asks for `pin_memory` (logged once
    /// when the memlock limit refuses; the run goes on unpinned).
    fn pin_host_tiers(&mut self) {
        let pinned = |t: &Tier| matches!(t, Tier::Cpu { pin_memory: true });
        let pin_params = pinned(&self.settings.placement.params);
        let pin_opt = pinned(&self.settings.placement.optimizer);
        let mut ok = true;
        // This rank's parts only: locking a page makes it resident, and the other ranks'
        // parts of the flat arrays are never touched here.
        let spans = self.tiers.layout().owned_spans();
        let parts = self.tiers.parts();
        if let (true, Some(hp)) = (pin_params, &parts.params) {
            for r in &spans {
                ok &= zinf_aio::lock_in_ram(hp.range_bytes(r.clone()));
            }
        }
        if let (true, Some(o)) = (pin_opt, &parts.opt) {
            for a in [&o.master, &o.m, &o.v] {
                for r in &spans {
                    ok &= zinf_aio::lock_in_ram(bytemuck::cast_slice(&a[r.clone()]));
                }
            }
        }
        if let (true, Some(g)) = (pin_opt, &self.grads_acc) {
            for r in &spans {
                ok &= zinf_aio::lock_in_ram(bytemuck::cast_slice(&g[r.clone()]));
            }
        }
        if !ok {
            tracing::warn!(
                "pin_memory: host arrays not locked in RAM (memlock limit; raise `ulimit -l`); \
                 continuing unpinned"
            );
        }
    }

    /// Registers with the device the host memory uploads read from: the swap store's pool
    /// (when anything is on NVMe and `pin_memory` pins it) and a host parameter array with
    /// `pin_memory` — so on a GPU
    /// those copies are DMA with no staging copy (the CPU does nothing).
    fn register_host_memory(&mut self) {
        let mut regions = Vec::new();
        if let Some(arena) = self.tiers.pool_arena() {
            regions.push(arena);
        }
        if matches!(
            self.settings.placement.params,
            Tier::Cpu { pin_memory: true }
        ) {
            let spans = self.tiers.layout().owned_spans();
            if let Some(hp) = self.tiers.parts().params {
                // Parts that share a page are registered as one region (the driver refuses
                // a page registered twice).
                let page = zinf_aio::PAGE_BYTES;
                let mut merged: Vec<(*const u8, usize)> = Vec::new();
                for r in spans {
                    let bytes = hp.range_bytes(r);
                    let (start, end) = (
                        bytes.as_ptr() as usize,
                        bytes.as_ptr() as usize + bytes.len(),
                    );
                    match merged.last_mut() {
                        Some((p, len)) if (*p as usize + *len - 1) / page >= start / page => {
                            *len = end - *p as usize;
                        }
                        _ => merged.push((bytes.as_ptr(), bytes.len())),
                    }
                }
                regions.extend(merged);
            }
        }
        for (ptr, len) in regions {
            // SAFETY: both regions live in `self.tiers`, which outlives the registrations
            // (`host_registrations` is declared, hence dropped, first), and the host array is
            // never reallocated (the tiers size it once).
            let r = unsafe { self.dev.register_host(ptr, len) };
            self.host_registrations.push(r);
        }
    }

    /// Keeps `lock` for the life of the engine: dropping the engine closes the swap store,
    /// then the lock removes it and lets another run have the folder.
    pub fn hold_swap_lock(&mut self, lock: swap_lock::SwapLock) {
        self.swap_lock = Some(lock);
    }

    /// The folder of the swap store (in the first `nvme_path`).
    pub fn swap_folder(&self) -> PathBuf {
        swap_folder(&self.settings.placement)
    }

    /// Tokens consumed by one optimizer step, every rank's together.
    pub fn tokens_per_step(&self) -> usize {
        let s = &self.settings.train;
        s.micro_batch * s.seq_len * s.gradient_accumulation_steps * self.world_size()
    }

    /// Optimizer steps taken so far (skipped ones included).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The learning rate the next step uses.
    pub fn current_lr(&self) -> f64 {
        self.opt.lr()
    }

    /// Counters of the run so far.
    pub fn counters(&self) -> EngineCounters {
        let mut c = self.counters;
        c.queue = self.tiers.queue_counters();
        c.tiers = self.tiers.counters;
        c.trace_deviations = self.trace.deviations;
        (c.nvme_bytes_read, c.nvme_bytes_written) = self.tiers.nvme_bytes();
        c
    }

    /// Starts the overlap account afresh (the steps', not the set-up's).
    pub fn reset_overlap(&mut self) {
        self.tiers.rec.overlap = Overlap::starting_now();
    }

    /// The overlap account and the timeline.
    pub fn recorder(&self) -> &Recorder {
        &self.tiers.rec
    }

    /// Pool budget of the swap store, bytes (0 when nothing is on NVMe).
    pub fn pool_budget_bytes(&self) -> u64 {
        self.tiers.pool_budget_bytes()
    }

    /// The tiers (where every byte of state is).
    pub fn tiers(&self) -> &Tiers<B> {
        &self.tiers
    }

    /// Whether the update streams group by group during backward (no clipping, no fp16).
    pub fn streams(&self) -> bool {
        self.opt.streams()
    }

    /// One optimizer step over `gradient_accumulation_steps` micro-batches.
    pub fn step(&mut self) -> Result<StepMetrics, EngineError> {
        let step_start = Instant::now();
        let gas = self.settings.train.gradient_accumulation_steps;
        let loss_scale = self.opt.loss_scale();
        let lr = self.opt.lr();
        // Nothing can skip a streamed step, so its scalars are known before backward.
        let streamed = self.streams().then(|| self.opt.begin_streamed());
        self.step_sum_sq = 0.0;
        // A transfer left by a step that failed belongs to no step: drop it.
        self.grads_pending = None;
        let (world, rank) = (self.world_size(), self.rank());
        let mut losses = Vec::with_capacity(gas);
        // The last step's held writes go out during this forward, which reads little.
        self.defer_writes(false);
        // This rank's share of the global batch: micro-batches r·G .. (r+1)·G of it.
        self.skip_batches(rank * gas);
        for mb in 0..gas {
            let (x, y) = self.batcher.next_batch(&self.data.train);
            self.batches_drawn += 1;
            self.trace.begin(Phase::Train);
            losses.push(self.forward(&x, &y)?);
            let last = mb + 1 == gas;
            // The updates read optimizer state; their writes wait (pool permitting).
            self.defer_writes(last);
            // The mean over every rank's micro-batches (DeepSpeed scales by 1/gas and
            // averages over ranks in its gradient reduction: the same product).
            let grad_scale = (loss_scale / (gas * world) as f64) as f32;
            self.backward(&x, &y, grad_scale, mb, last, streamed)?;
            self.trace.end();
        }
        self.skip_batches((world - 1 - rank) * gas);
        // Every rank's losses, rank-major: the order one rank accumulating them all would use.
        let loss_sum: f64 = self.gather_values(&losses)?.iter().map(|&l| l as f64).sum();
        self.steps += 1;
        let (grad_norm, applied) = match streamed {
            Some(_) => {
                let mine = GradStats {
                    sum_sq: self.step_sum_sq,
                    non_finite: false,
                };
                let sum_sq = self.global_stats(mine)?.sum_sq;
                (self.opt.end_streamed(sum_sq)?, true)
            }
            None => {
                let acc = self
                    .grads_acc
                    .as_deref()
                    .expect("kept whole when not streaming");
                let d = if self.comm.is_none() {
                    self.opt.decide(&[Grad::F32(acc)])?
                } else {
                    // This rank's parts only; the statistics of all ranks decide.
                    let owned = &self.tiers.layout().owned;
                    let parts: Vec<Grad<'_>> =
                        owned.iter().map(|r| Grad::F32(&acc[r.clone()])).collect();
                    let mine = self.opt.adam.grad_stats(&parts);
                    let stats = self.global_stats(mine)?;
                    self.opt.decide_with(stats)?
                };
                if let Some(scalars) = d.scalars {
                    self.update_all(scalars)?;
                }
                (d.grad_norm, d.scalars.is_some())
            }
        };
        self.opt.finish(applied);
        self.tiers.assert_invariants();
        let name = format!("step {}", self.steps);
        let timeline = &self.tiers.rec.timeline;
        timeline.span(Track::Step, &name, step_start, Instant::now());
        Ok(StepMetrics {
            step: self.steps,
            loss: (loss_sum / (gas * world) as f64) as f32,
            lr,
            loss_scale,
            grad_norm,
            skipped: !applied,
        })
    }

    /// tokens, targets (B,T) -> mean loss: the model's forward stages in order, each group
    /// fetched right before the stage that reads it and released right after (the last
    /// stages keep what the backward reads first). Before each stage a share of the writes
    /// held from the last update goes out, so the drive's writes spread over the forward.
    fn forward(&mut self, x: &[u32], y: &[u32]) -> Result<f32, EngineError> {
        let stages = Arc::clone(&self.stages);
        let n = stages.forward.len();
        let mut loss = None;
        for (i, st) in stages.forward.iter().enumerate() {
            for &g in &st.fetch {
                self.fetch(g)?;
            }
            if i > 0 {
                self.submit_held_writes(n - 1 - i)?;
            }
            let l = self.compute(st.name, |m, d| m.forward(d, i, x, y))?;
            loss = l.or(loss);
            for &g in &st.release {
                self.release(g);
            }
        }
        Ok(loss.expect("a model's forward stages compute the loss"))
    }

    /// The forward read bottom-up: the model's backward stages in order. Each group's
    /// gradients leave the device when its last stage ends (`grads_out`); on the last
    /// micro-batch they are final and, when the update streams, the optimizer updates that
    /// group right there.
    fn backward(
        &mut self,
        x: &[u32],
        y: &[u32],
        grad_scale: f32,
        mb: usize,
        last: bool,
        streamed: Option<StepScalars>,
    ) -> Result<(), EngineError> {
        let stages = Arc::clone(&self.stages);
        let ckpt = self.settings.train.activation_checkpointing;
        let update_after = last && streamed.is_none();
        for (i, st) in stages.backward.iter().enumerate() {
            for &g in &st.fetch {
                self.fetch(g)?;
            }
            if let (true, Some(f)) = (ckpt, st.recompute) {
                self.compute("recompute", |m, d| m.forward(d, f, x, y))?;
            }
            for &g in &st.grads_in {
                self.grads_in(g, last)?;
            }
            if update_after && Some(i) == stages.last_grads_in() {
                // The update after backward starts with the last group: its first unit is
                // read now, while this stage's backward computes.
                self.prefetch_first_update_unit()?;
            }
            self.compute(st.name, |m, d| m.backward(d, i, x, y, grad_scale))?;
            for &g in &st.release {
                self.release(g);
            }
            for &g in &st.grads_out {
                self.grads_out(g, mb == 0, last.then_some(streamed).flatten())?;
            }
        }
        self.finish_pending_grads()
    }

    /// Runs one model op, timed as compute.
    fn compute<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut M, &D) -> Result<T, ModelError>,
    ) -> Result<T, EngineError> {
        let t = Instant::now();
        let r = f(&mut self.model, &self.dev)?;
        let end = Instant::now();
        self.counters.compute_s += (end - t).as_secs_f64();
        self.tiers.rec.timeline.span(Track::Compute, name, t, end);
        self.tiers.rec.overlap.compute(t, end);
        Ok(r)
    }

    /// Mean loss over up to `eval_batches` consecutive validation micro-batches.
    pub fn validate(&mut self) -> Result<Option<f32>, EngineError> {
        let s = &self.settings.train;
        let batches = val_batches(&self.data.val, s.micro_batch, s.seq_len, s.eval_batches);
        if batches.is_empty() {
            return Ok(None);
        }
        let mut sum = 0.0f64;
        for (x, y) in &batches {
            self.trace.begin(Phase::Eval);
            sum += self.forward(x, y)? as f64;
            self.release_all_in_use();
            self.trace.end();
        }
        Ok(Some((sum / batches.len() as f64) as f32))
    }

    /// The current parameters as one host array; `None` when they live on NVMe and would
    /// take more than `max_bytes` of host memory.
    ///
    /// # Errors
    /// With several ranks (each holds its partition: gather with
    /// [`Engine::gathered_group_bytes`]), or the store's.
    pub fn export_params(&mut self, max_bytes: u64) -> Result<Option<HostParams>, EngineError> {
        if self.world_size() > 1 {
            return Err(EngineError::Config(
                "export_params: each of several ranks holds only its partition; gather the \
                 groups with gathered_group_bytes"
                    .into(),
            ));
        }
        Ok(self.tiers.export_params(max_bytes)?)
    }

    /// Host bytes the run holds outside the pinned pool: the tiers' host arrays, gradient
    /// accumulators and scratch.
    pub fn host_state_bytes(&self) -> u64 {
        let layout = self.tiers.layout();
        // The accumulators are flat, but only this rank's parts are ever written.
        let owned: usize = layout.owned.iter().map(|r| r.len()).sum();
        let grads = self.grads_acc.as_ref().map_or(0, |_| owned as u64 * 4)
            + (self.grad_host_made * self.grad_host_len()) as u64 * 4;
        self.tiers.host_bytes() + grads
    }

    /// Holds new writes in the pool (`true`) or writes behind at once (`false`); see
    /// [`crate::tiers::SwapQueue::defer_writes`]. Off without `pipeline_write`.
    fn defer_writes(&mut self, on: bool) {
        self.tiers.defer_writes(on && self.settings.pipeline_write);
    }

    /// Sends a `1/parts` share of the writes held from the last update.
    fn submit_held_writes(&mut self, parts: usize) -> Result<(), EngineError> {
        Ok(self.tiers.submit_held(parts)?)
    }

    /// Finishes every write in flight (the end of a run, or before a save).
    pub fn flush(&mut self) -> Result<(), EngineError> {
        Ok(self.tiers.flush()?)
    }
}

/// The swap store's folder name inside each `nvme_path`.
pub const SWAP_DIR: &str = "zinf_swap";

/// The folder of the swap store's manifest for a placement (in the first `nvme_path`).
pub fn swap_folder(p: &Placement) -> PathBuf {
    p.nvme_paths()
        .first()
        .map(|p| p.join(SWAP_DIR))
        .unwrap_or_default()
}

/// The swap store's layout: its folders (every `nvme_path`), chunk size (at least one unit
/// of fp32 state, so a unit is one chunk), and slots.
/// The swap store a run creates: its layout over the `nvme_path` folders and every shard in
/// it, as [`Engine::new`] creates it. `zinf estimate` and
/// the session's free-space check price exactly this.
pub fn swap_store(settings: &EngineSettings, layout: &TierLayout) -> (StoreConfig, Vec<ShardSpec>) {
    let specs = layout.tier_specs(settings.placement.on_nvme());
    (store_config(settings, layout), specs)
}

fn store_config(settings: &EngineSettings, layout: &TierLayout) -> StoreConfig {
    let paths = settings
        .placement
        .nvme_paths()
        .into_iter()
        .map(|p| p.join(SWAP_DIR))
        .collect();
    StoreConfig::new(paths)
        .chunk_bytes(layout.chunk_bytes(settings.chunk_bytes))
        .double_buffered(settings.double_buffered)
        // Scratch under the run's lock (`session::SwapLock`): a store left by an earlier run
        // that stopped is laid over, never resumed from (saves live in their own folders).
        .overwrite(true)
}
