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
pub mod residency;
pub mod summary;
pub mod tiers;
pub mod timeline;
mod update;

pub use counters::EngineCounters;
pub use partition::Partition;
pub use placement::{Placement, Tier};

use crate::data::{val_batches, Batcher, Dataset};
use crate::device::{Device, DeviceError};
use crate::model::train::{StepMetrics, TrainSettings};
use crate::model::{Gpt, Group, HostParams, ModelError, ParamInit};
use crate::optim::{Adam, LossScaler, LrScheduler, OptimError, StepOutcome};
use residency::{OnDevice, Phase, Trace};
use std::path::PathBuf;
use std::time::Instant;
use tiers::{Recorder, SwapQueue, Unit};
use timeline::{Overlap, Timeline, Track};
use zinf_swap::{BlockIo, Store, StoreConfig, SwapError};

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
    /// This rank's share of every group (one rank today).
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

/// Parameters' home (their 16-bit copy, or fp32 when neither fp16 nor bf16 is on).
enum ParamHome {
    /// Host memory (placements `none` and `cpu`).
    Host(HostParams),
    /// The swap store; `staging` holds one group's updated values on their way out.
    Nvme { staging: HostParams },
}

/// Optimizer state's home.
enum OptHome {
    Host {
        master: Vec<f32>,
        m: Vec<f32>,
        v: Vec<f32>,
    },
    Nvme,
}

/// A model with its state in the configured tiers, ready to step.
pub struct Engine<D: Device, B: BlockIo> {
    pub settings: EngineSettings,
    pub dev: D,
    model: Gpt<D>,
    groups: Vec<Group>,
    /// Per group: never released (persistent, or parameters placed on the device).
    persistent: Vec<bool>,
    on_device: Vec<OnDevice>,
    /// Device buffers given back, reused by the next fetch of the same length.
    free: Vec<D::Buffer>,
    trace: Trace,
    params: ParamHome,
    /// The group whose newest values the NVMe staging buffer holds (it was the last updated):
    /// the next fetch of it uploads from there instead of reading its write back.
    staged_group: Option<usize>,
    /// NVMe parameters kept in host memory (DeepSpeed `offload_param.max_in_cpu` elements).
    param_cache: Vec<Option<HostParams>>,
    cached_elems: u64,
    opt: OptHome,
    units: Vec<Unit>,
    /// Units of each group (indices into `units`).
    group_units: Vec<std::ops::Range<usize>>,
    /// The swap store of the NVMe tiers (and of saves, when anything is on NVMe).
    store: Option<Store<B>>,
    /// The store of saves when nothing is on NVMe (in the save folder).
    save_store: Option<Store<B>>,
    io_factory: IoFactory<B>,
    queue: SwapQueue<B>,
    rec: Recorder,
    /// fp32 gradients accumulated on the host across micro-batches (and kept whole until the
    /// global norm is known when clipping or fp16 needs it); `None` when they stream.
    grads_acc: Option<Vec<f32>>,
    /// One group's gradients on their way from the device to the optimizer.
    grad_scratch: Vec<f32>,
    adam: Adam,
    scaler: LossScaler,
    sched: Option<LrScheduler>,
    batcher: Batcher,
    data: Dataset,
    steps: u64,
    applied_steps: u64,
    batches_drawn: u64,
    counters: EngineCounters,
    /// Sum of squares of this step's gradients so far (streaming mode).
    step_sum_sq: f64,
}

/// Builds a block-I/O backend (with its pinned pool) for a store: the swap store at start-up,
/// a save store at the first save.
pub type IoFactory<B> = Box<dyn Fn() -> Result<B, SwapError> + Send>;

/// What the engine was given to start from.
pub enum Start {
    /// A fresh run from the seed, or from these parameters (`--init-from`).
    Fresh(Option<HostParams>),
    /// Continue from a save folder (`--resume`).
    Resume(PathBuf),
}

impl<D: Device, B: BlockIo> Engine<D, B> {
    /// Builds the engine: device buffers for activations, the tiers, and the swap store over
    /// `io` (needed when any state is on NVMe). Every buffer the step loop uses is sized here.
    pub fn new(
        settings: EngineSettings,
        dev: D,
        data: Dataset,
        io_factory: IoFactory<B>,
        start: Start,
        timeline: Timeline,
    ) -> Result<Self, EngineError> {
        let s = &settings.train;
        crate::model::check_vocab(&data, s.model.vocab_size)?;
        let model = Gpt::without_groups(
            &dev,
            s.model,
            s.micro_batch,
            s.seq_len,
            s.activation_checkpointing,
        )?;
        let layout = &model.layout;
        let groups: Vec<Group> = layout.groups.iter().map(|(g, _)| *g).collect();
        let persistent = layout
            .groups
            .iter()
            .map(|(_, r)| {
                settings.placement.params == Tier::Device
                    || r.len() as u64 <= settings.param_persistence_threshold
            })
            .collect();
        if settings.partition.world_size != 1 {
            return Err(EngineError::Config(format!(
                "world size {}: zinf trains on one rank today (the partitioned layout is ready, \
                 the collective backend is not)",
                settings.partition.world_size
            )));
        }
        let units = tiers::units(layout, settings.partition, settings.sub_group_size);
        let group_units = (0..groups.len())
            .map(|gi| {
                let a = units.iter().position(|u| u.group == gi).unwrap_or(0);
                let b = units
                    .iter()
                    .rposition(|u| u.group == gi)
                    .map_or(a, |b| b + 1);
                a..b
            })
            .collect();
        let max_group = layout
            .groups
            .iter()
            .map(|(_, r)| r.len())
            .max()
            .unwrap_or(0);
        let stream = streams(s);
        let grads_acc =
            (!stream || s.gradient_accumulation_steps > 1).then(|| vec![0.0f32; layout.total]);
        let (adam, scaler, sched) = s.optimizer()?;
        // With pipeline_write, up to 12 shard writes (four units) stay in flight, fewer when the
        // pool needs their room; more would queue ahead of the reads the next units wait for.
        // Without it each write is waited at once.
        let max_writes = if settings.pipeline_write { 12 } else { 0 };
        let n_groups = groups.len();
        let mut e = Engine {
            batcher: Batcher::new(s.seed, s.micro_batch, s.seq_len),
            settings: settings.clone(),
            dev,
            model,
            groups,
            persistent,
            on_device: vec![OnDevice::Off; n_groups],
            free: Vec::new(),
            trace: Trace::default(),
            params: ParamHome::Nvme {
                staging: HostParams::from_f32(s.dtype, &[]),
            },
            staged_group: None,
            param_cache: vec![None; n_groups],
            cached_elems: 0,
            opt: OptHome::Nvme,
            units,
            group_units,
            store: None,
            save_store: None,
            io_factory,
            queue: SwapQueue::new(max_writes),
            rec: Recorder {
                timeline,
                overlap: Overlap::default(),
            },
            grads_acc,
            grad_scratch: if stream && s.gradient_accumulation_steps == 1 {
                vec![0.0; max_group]
            } else {
                Vec::new()
            },
            adam,
            scaler,
            sched,
            data,
            steps: 0,
            applied_steps: 0,
            batches_drawn: 0,
            counters: EngineCounters::default(),
            step_sum_sq: 0.0,
        };
        match start {
            Start::Fresh(init) => e.init_state(init)?,
            Start::Resume(dir) => {
                e.init_tiers_for_resume();
                e.resume_from(&dir)?;
            }
        }
        e.load_persistent()?;
        e.pin_host_tiers();
        Ok(e)
    }

    /// Lays out the tiers and fills them with the initial parameters, one group at a time
    /// (a model larger than RAM never exists whole in host memory).
    fn init_state(&mut self, init: Option<HostParams>) -> Result<(), EngineError> {
        let s = self.settings.train.clone();
        let pl = self.settings.placement.clone();
        if pl.params.is_nvme() || pl.optimizer.is_nvme() {
            let io = (self.io_factory)()?;
            let cfg = self.store_config();
            let specs = self.store_specs();
            self.store = Some(Store::create(io, &cfg, &specs)?);
        }
        let layout = self.model.layout.clone();
        let total = layout.total;
        let host_params = !pl.params.is_nvme();
        let host_opt = !pl.optimizer.is_nvme();
        let mut params = host_params.then(|| HostParams::zeros(s.dtype, total));
        let mut opt = host_opt.then(|| (vec![0.0f32; total], vec![0.0; total], vec![0.0; total]));
        let mut gen = ParamInit::new(s.model.n_layer, s.seed);
        for gi in 0..layout.groups.len() {
            let r = layout.groups[gi].1.clone();
            let values = match &init {
                Some(p) => p.range_to_f32(r.clone()),
                None => gen.next_range(&layout, r.clone()),
            };
            // Stored (rounded) values; the fp32 master starts from them, as DeepSpeed's does.
            let stored = HostParams::from_f32(s.dtype, &values);
            let master = stored.to_f32();
            match &mut params {
                Some(p) => p.copy_range_from(r.start, &stored),
                None => self.write_param_shard(gi, &stored)?,
            }
            match &mut opt {
                Some((m32, _, _)) => m32[r.clone()].copy_from_slice(&master),
                None => self.write_master_shards(gi, &master)?,
            }
        }
        self.params = match params {
            Some(p) => ParamHome::Host(p),
            None => ParamHome::Nvme {
                staging: HostParams::zeros(s.dtype, self.max_group_len()),
            },
        };
        self.opt = match opt {
            Some((master, m, v)) => OptHome::Host { master, m, v },
            None => OptHome::Nvme,
        };
        if let Some(store) = &mut self.store {
            self.queue.flush(store, &mut self.rec)?;
            store.commit()?;
        }
        Ok(())
    }

    /// Locks host-tier arrays in RAM where the placement asks for `pin_memory` (logged once
    /// when the memlock limit refuses; the run goes on unpinned).
    fn pin_host_tiers(&self) {
        let pinned = |t: &Tier| matches!(t, Tier::Cpu { pin_memory: true });
        let mut ok = true;
        if let (true, ParamHome::Host(hp)) = (pinned(&self.settings.placement.params), &self.params)
        {
            ok &= zinf_aio::lock_in_ram(hp.range_bytes(0..hp.len()));
        }
        if let (true, OptHome::Host { master, m, v }) =
            (pinned(&self.settings.placement.optimizer), &self.opt)
        {
            for a in [master, m, v] {
                ok &= zinf_aio::lock_in_ram(bytemuck::cast_slice(a));
            }
            if let Some(g) = &self.grads_acc {
                ok &= zinf_aio::lock_in_ram(bytemuck::cast_slice(g));
            }
        }
        if !ok {
            tracing::warn!(
                "pin_memory: host arrays not locked in RAM (memlock limit; raise `ulimit -l`); \
                 continuing unpinned"
            );
        }
    }

    /// Empty host tiers of the right size, filled by `resume_from`.
    fn init_tiers_for_resume(&mut self) {
        let s = &self.settings.train;
        let total = self.model.layout.total;
        let pl = &self.settings.placement;
        self.params = if pl.params.is_nvme() {
            ParamHome::Nvme {
                staging: HostParams::zeros(s.dtype, self.max_group_len()),
            }
        } else {
            ParamHome::Host(HostParams::zeros(s.dtype, total))
        };
        self.opt = if pl.optimizer.is_nvme() {
            OptHome::Nvme
        } else {
            OptHome::Host {
                master: vec![0.0; total],
                m: vec![0.0; total],
                v: vec![0.0; total],
            }
        };
    }

    /// The folder of the swap store (in the first `nvme_path`).
    pub fn swap_folder(&self) -> PathBuf {
        swap_folder(&self.settings.placement)
    }

    fn chunk_bytes(&self) -> u64 {
        let max_unit = self.units.iter().map(|u| u.range.len()).max().unwrap_or(0) as u64;
        self.settings
            .chunk_bytes
            .max((max_unit * 4).next_multiple_of(4096))
    }

    fn max_group_len(&self) -> usize {
        let l = &self.model.layout;
        l.groups.iter().map(|(_, r)| r.len()).max().unwrap_or(0)
    }

    fn store_config(&self) -> StoreConfig {
        let paths = self
            .settings
            .placement
            .nvme_paths()
            .into_iter()
            .map(|p| p.join(SWAP_DIR))
            .collect();
        StoreConfig::new(paths)
            .chunk_bytes(self.chunk_bytes())
            .double_buffered(self.settings.double_buffered)
    }

    fn store_specs(&self) -> Vec<zinf_swap::ShardSpec> {
        let pl = &self.settings.placement;
        let dtype = self.settings.train.dtype;
        let mut specs = Vec::new();
        if pl.params.is_nvme() {
            specs.extend(tiers::param_specs(
                &self.model.layout,
                dtype.bytes(),
                dtype_tag(dtype),
            ));
        }
        if pl.optimizer.is_nvme() {
            specs.extend(tiers::opt_specs(&self.units));
        }
        specs.extend(checkpoint::store_specs(self));
        specs
    }

    /// Tokens consumed by one optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        let s = &self.settings.train;
        s.micro_batch * s.seq_len * s.gradient_accumulation_steps
    }

    /// Optimizer steps taken so far (skipped ones included).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The learning rate the next step uses.
    pub fn current_lr(&self) -> f64 {
        self.sched
            .as_ref()
            .map_or(self.settings.train.adam.lr as f64, |s| s.get_lr())
    }

    /// Counters of the run so far.
    pub fn counters(&self) -> EngineCounters {
        let mut c = self.counters;
        c.queue = self.queue.counters;
        c.trace_deviations = self.trace.deviations;
        if let Some(st) = &self.store {
            let io = st.counters();
            c.nvme_bytes_read = io.bytes_read;
            c.nvme_bytes_written = io.bytes_written;
        }
        c
    }

    /// Starts the overlap account afresh (the steps', not the set-up's).
    pub fn reset_overlap(&mut self) {
        self.rec.overlap = Overlap::starting_now();
    }

    /// The overlap account and the timeline.
    pub fn recorder(&self) -> &Recorder {
        &self.rec
    }

    /// Pool budget of the swap store, bytes (0 when nothing is on NVMe).
    pub fn pool_budget_bytes(&self) -> u64 {
        self.store
            .as_ref()
            .map_or(0, |s| s.io().pool_budget_bytes())
    }

    /// Whether the update streams group by group during backward (no clipping, no fp16).
    pub fn streams(&self) -> bool {
        streams(&self.settings.train)
    }

    /// One optimizer step over `gradient_accumulation_steps` micro-batches.
    pub fn step(&mut self) -> Result<StepMetrics, EngineError> {
        let gas = self.settings.train.gradient_accumulation_steps;
        let loss_scale = self.scaler.scale();
        let lr = self.current_lr();
        let stream = self.streams();
        self.step_sum_sq = 0.0;
        if stream {
            // Nothing can skip a streamed step, so its Adam step count is known up front.
            self.applied_steps += 1;
        }
        let mut loss_sum = 0.0f64;
        // The last step's held writes go out during this forward, which reads little.
        self.queue.stop_deferring();
        for mb in 0..gas {
            let (x, y) = self.batcher.next_batch(&self.data.train);
            self.batches_drawn += 1;
            self.trace.begin(Phase::Train);
            loss_sum += self.forward(&x, &y)? as f64;
            let last = mb + 1 == gas;
            if last {
                // The updates read optimizer state; their writes wait (pool permitting).
                self.defer_writes(true)?;
            } else {
                self.defer_writes(false)?;
            }
            let grad_scale = (loss_scale / gas as f64) as f32;
            self.backward(&x, &y, grad_scale, mb, last, lr)?;
            self.trace.end();
        }
        self.steps += 1;
        let (grad_norm, skipped) = if stream {
            self.scaler.update(false)?;
            (self.step_sum_sq.sqrt() / loss_scale, false)
        } else {
            let acc = self
                .grads_acc
                .as_deref()
                .expect("kept whole when not streaming");
            let stats = self.adam.grad_stats(&[crate::optim::Grad::F32(acc)]);
            let scaled_norm = stats.sum_sq.sqrt();
            let outcome = self.scaler.update(stats.non_finite)?;
            let skipped = outcome == StepOutcome::Skipped;
            if !skipped {
                self.applied_steps += 1;
                self.update_all(lr, scaled_norm, loss_scale)?;
            }
            let norm = if stats.non_finite {
                f64::NAN
            } else {
                scaled_norm / loss_scale
            };
            (norm, skipped)
        };
        if !skipped {
            if let Some(s) = &mut self.sched {
                s.step();
            }
        }
        Ok(StepMetrics {
            step: self.steps,
            loss: (loss_sum / gas as f64) as f32,
            lr,
            loss_scale,
            grad_norm,
            skipped,
        })
    }

    /// tokens, targets (B,T) -> mean loss. Each group is fetched right before the op that reads
    /// it and released right after; `Final` and `Embed` stay for the head's backward.
    fn forward(&mut self, x: &[u32], y: &[u32]) -> Result<f32, EngineError> {
        let nl = self.settings.train.model.n_layer;
        self.fetch(Group::Embed)?;
        self.compute("embed forward", |m, d| m.embed_forward(d, x))?;
        self.release(Group::Embed);
        for l in 0..nl {
            self.fetch(Group::Block(l))?;
            self.submit_held_writes(nl - l)?;
            self.compute("block forward", |m, d| m.block_forward(d, l))?;
            self.release(Group::Block(l));
        }
        self.fetch(Group::Final)?;
        self.fetch(Group::Embed)?;
        self.compute("head forward", |m, d| m.head_forward(d))?;
        let loss = self.compute("loss", |m, d| m.loss_forward(d, y))?;
        Ok(loss)
    }

    /// The forward loop read bottom-up. Each group's gradients leave the device when its
    /// backward ends (`grads_out`); on the last micro-batch they are final and, when the
    /// update streams, the optimizer updates that group right there.
    fn backward(
        &mut self,
        x: &[u32],
        y: &[u32],
        grad_scale: f32,
        mb: usize,
        last: bool,
        lr: f64,
    ) -> Result<(), EngineError> {
        let nl = self.settings.train.model.n_layer;
        let ckpt = self.settings.train.activation_checkpointing;
        self.grads_in(Group::Embed, mb, last)?;
        self.grads_in(Group::Final, mb, last)?;
        self.compute("head backward", |m, d| m.head_backward(d, y, grad_scale))?;
        self.release(Group::Final);
        self.release(Group::Embed);
        self.grads_out(Group::Final, last, lr)?;
        for l in (0..nl).rev() {
            self.fetch(Group::Block(l))?;
            if ckpt {
                self.compute("block recompute", |m, d| m.block_forward(d, l))?;
            }
            self.grads_in(Group::Block(l), mb, last)?;
            self.compute("block backward", |m, d| m.block_backward(d, l))?;
            self.release(Group::Block(l));
            self.grads_out(Group::Block(l), last, lr)?;
        }
        self.compute("embed backward", |m, d| m.embed_backward(d, x))?;
        self.grads_out(Group::Embed, last, lr)?;
        Ok(())
    }

    /// Runs one model op, timed as compute.
    fn compute<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Gpt<D>, &D) -> Result<T, ModelError>,
    ) -> Result<T, EngineError> {
        let t = Instant::now();
        let r = f(&mut self.model, &self.dev)?;
        let end = Instant::now();
        self.counters.compute_s += (end - t).as_secs_f64();
        self.rec.timeline.span(Track::Compute, name, t, end);
        self.rec.overlap.compute(t, end);
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
            self.release(Group::Final);
            self.release(Group::Embed);
            self.trace.end();
        }
        Ok(Some((sum / batches.len() as f64) as f32))
    }

    /// The current parameters as one host array (the HF export at the end of a run); `None`
    /// when they live on NVMe and would take more than `max_bytes` of host memory.
    pub fn export_params(&mut self, max_bytes: u64) -> Result<Option<HostParams>, EngineError> {
        let s = &self.settings.train;
        let total = self.model.layout.total;
        if let ParamHome::Host(hp) = &self.params {
            return Ok(Some(hp.clone()));
        }
        if (total * s.dtype.bytes()) as u64 > max_bytes {
            return Ok(None);
        }
        let mut out = HostParams::zeros(s.dtype, total);
        let store = self.store.as_mut().expect("NVMe parameters have a store");
        self.queue.flush(store, &mut self.rec)?;
        for gi in 0..self.groups.len() {
            let buf = self
                .queue
                .read(store, &mut self.rec, tiers::Shards::Param(gi))?;
            out.set_range_bytes(self.model.layout.groups[gi].1.start, &buf[0].to_vec());
        }
        Ok(Some(out))
    }

    /// Host bytes the tiers hold outside the pinned pool: host-resident parameters and
    /// optimizer state, gradient accumulators and staging.
    pub fn host_state_bytes(&self) -> u64 {
        let total = self.model.layout.total as u64;
        let d = self.settings.train.dtype.bytes() as u64;
        let params = match &self.params {
            ParamHome::Host(_) => total * d,
            ParamHome::Nvme { .. } => self.max_group_len() as u64 * d,
        };
        let opt = match &self.opt {
            OptHome::Host { .. } => 12 * total,
            OptHome::Nvme => 0,
        };
        let cache = self.settings.max_in_cpu.min(total) * d * u64::from(self.params_on_nvme());
        let grads = self.grads_acc.as_ref().map_or(0, |g| g.len() as u64 * 4)
            + self.grad_scratch.len() as u64 * 4;
        params + opt + grads + cache
    }

    fn params_on_nvme(&self) -> bool {
        matches!(self.params, ParamHome::Nvme { .. })
    }

    /// Holds the store's writes in the pool (`true`) or sends them all (`false`); see
    /// [`tiers::SwapQueue::defer_writes`]. Off without `pipeline_write`.
    fn defer_writes(&mut self, on: bool) -> Result<(), EngineError> {
        if let Some(store) = &mut self.store {
            let on = on && self.settings.pipeline_write;
            self.queue.defer_writes(store, on)?;
        }
        Ok(())
    }

    /// Sends a `1/parts` share of the writes held from the last update.
    fn submit_held_writes(&mut self, parts: usize) -> Result<(), EngineError> {
        if let Some(store) = &mut self.store {
            self.queue.submit_held(store, parts)?;
        }
        Ok(())
    }

    /// Finishes every write in flight (the end of a run, or before a save).
    pub fn flush(&mut self) -> Result<(), EngineError> {
        if let Some(store) = &mut self.store {
            self.queue.flush(store, &mut self.rec)?;
        }
        Ok(())
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

/// Whether the update can stream group by group: nothing needs the global norm first.
fn streams(s: &TrainSettings) -> bool {
    s.gradient_clipping <= 0.0 && !s.fp16
}

fn dtype_tag(d: crate::model::ParamDtype) -> &'static str {
    match d {
        crate::model::ParamDtype::F32 => "f32",
        crate::model::ParamDtype::F16 => "f16",
        crate::model::ParamDtype::Bf16 => "bf16",
    }
}
