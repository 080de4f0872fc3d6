//! `--save DIR` / `--resume DIR`: the run's whole state at a step boundary, as a snapshot
//! that belongs to DIR alone.
//!
//! A save is a store of its own in `DIR/step-NNNNNNNN/` (single-slot: it is written once and
//! committed): every group's parameters (`param.gN`), every optimizer unit's fp32 master, m
//! and v (`opt.uN.*`) — copied from wherever they live (host arrays, or the swap store after
//! its writes are flushed) — and the small rest (`engine.state`: step, loss scaler,
//! scheduler, data position; the data RNG is replayed from the seed). Only after that store
//! is committed is `DIR/checkpoint.json` replaced (atomically) to name it, by a path
//! relative to DIR; then older `step-*` folders are removed. So a kill at any moment leaves
//! the last complete save; a save can be copied, moved or kept (`cp -a DIR backup`), and
//! nothing the run does later changes it. The swap store under `nvme_path` is scratch: it is
//! never resumed from.
//!
//! A resume opens the save's store, checks the config and the step against it, and copies
//! the state into fresh tiers (host arrays, or a new swap store). Every chunk read is checked
//! against its checksum; a corrupted shard is reported by name, never trained on.
//!
//! DeepSpeed's NVMe tier could not be checkpointed until 2024 (its swap files are live
//! state); zinf copies it, paying one read and one write of the model state per save
//! (logged with its size and time).

use super::{Engine, EngineError, EngineSettings};
use crate::device::Device;
use crate::model::{Model, ModelSpec};
use crate::optim::{LossScaler, LrSchedulerState, OptimizerStepState};
use crate::tiers::layout::dtype_tag;
use crate::tiers::{NvmePlacement, Recorder, SwapQueue, TierLayout};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use zinf_swap::{BlockIo, ShardSpec, Store, StoreConfig};

/// The shard holding the small rest of the state (length-prefixed JSON).
pub const STATE_SHARD: &str = "engine.state";
const STATE_BYTES: u64 = 64 << 10;
/// Format of `checkpoint.json` and the save it names.
const FORMAT: &str = "zinf-save/2";
/// The pointer file in a save folder.
pub const POINTER: &str = "checkpoint.json";
/// Prefix of the folder of each save's store inside DIR.
const STEP_PREFIX: &str = "step-";

/// Everything that is not a tensor.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct EngineState {
    format: String,
    step: u64,
    applied_steps: u64,
    batches_drawn: u64,
    scaler: LossScaler,
    scheduler: Option<LrSchedulerState>,
    model: ModelSpec,
    dtype: String,
    params_tier: String,
    optimizer_tier: String,
    sub_group_size: u64,
    seed: u64,
    micro_batch: usize,
    seq_len: usize,
    gradient_accumulation_steps: usize,
}

/// What `DIR/checkpoint.json` says.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Pointer {
    pub format: String,
    /// Folder of the save's store, relative to DIR (`step-00000040`).
    pub store: PathBuf,
    pub step: u64,
    /// Data-parallel ranks that wrote it: with more than one, rank `r`'s partition is in
    /// `store/rank{r}` (absent in saves of one rank).
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

/// Where rank `rank` of `world_size` keeps its part of the save whose folder is `folder`.
fn rank_folder(folder: &Path, rank: usize, world_size: usize) -> PathBuf {
    if world_size > 1 {
        folder.join(format!("rank{rank}"))
    } else {
        folder.to_path_buf()
    }
}

/// The shards of a save's store: every group's parameters, every unit's optimizer state
/// (the tiers' own names, whatever the placement), and the state shard.
pub fn save_specs(layout: &TierLayout) -> Vec<ShardSpec> {
    let mut v = layout.tier_specs(NvmePlacement {
        params: true,
        optimizer: true,
    });
    v.push(ShardSpec::new(STATE_SHARD, STATE_BYTES, "json"));
    v
}

/// The layout of a save's store in `folder`: one slot per shard (written once), chunks as
/// the run's swap store has them.
fn save_store_config(
    settings: &EngineSettings,
    layout: &TierLayout,
    folder: PathBuf,
) -> StoreConfig {
    StoreConfig::new(vec![folder])
        .chunk_bytes(layout.chunk_bytes(settings.chunk_bytes))
        .double_buffered(false)
}

/// Bytes of pool a save's own store reads and writes through: four chunks (the writes of one
/// unit's three shards in flight while the next is copied).
pub fn save_pool_bytes(settings: &EngineSettings, layout: &TierLayout) -> u64 {
    4 * layout.chunk_bytes(settings.chunk_bytes)
}

/// Bytes a save of this run takes on disk (its store's extent file; the pointer aside):
/// what `--save DIR` needs free, checked before the first step.
pub fn save_bytes(settings: &EngineSettings, layout: &TierLayout) -> u64 {
    let cfg = save_store_config(settings, layout, PathBuf::from("save"));
    zinf_swap::disk_bytes_needed(
        &save_specs(layout),
        &cfg,
        crate::tiers::layout::STORE_ALIGN_BYTES,
    )
    .unwrap_or(u64::MAX)
}

/// Ranks that wrote the save in `dir` (what `--resume` and `zinf export` must run with).
///
/// # Errors
/// As [`read_pointer`]: no save there, or not one this zinf reads.
pub fn saved_world_size(dir: &Path) -> Result<usize, EngineError> {
    Ok(read_pointer(dir)?.world_size)
}

/// Reads `dir/checkpoint.json` and checks it names a save of this format inside `dir`.
pub(super) fn read_pointer(dir: &Path) -> Result<Pointer, EngineError> {
    let ptr_path = dir.join(POINTER);
    let body = std::fs::read(&ptr_path).map_err(|e| {
        ckpt_err(
            &ptr_path,
            format!("no save here ({e}); was the run started with --save?"),
        )
    })?;
    let ptr: Pointer = serde_json::from_slice(&body)
        .map_err(|e| ckpt_err(&ptr_path, format!("not a zinf checkpoint pointer: {e}")))?;
    if ptr.format != FORMAT {
        return Err(ckpt_err(
            &ptr_path,
            format!(
                "a save in format {:?}; this zinf reads {FORMAT:?} (saves of format \
                 \"zinf-engine/1\" pointed into a live swap store and cannot be resumed)",
                ptr.format
            ),
        ));
    }
    if !(1..=crate::cli::MAX_RANKS).contains(&ptr.world_size) {
        return Err(ckpt_err(
            &ptr_path,
            format!(
                "names a save of {} ranks; zinf runs 1 to {}",
                ptr.world_size,
                crate::cli::MAX_RANKS
            ),
        ));
    }
    let name = ptr.store.to_str().unwrap_or("");
    if !name.starts_with(STEP_PREFIX) || name.contains('/') || name.contains("..") {
        return Err(ckpt_err(
            &ptr_path,
            format!("names {:?}, not a step folder inside the save", ptr.store),
        ));
    }
    Ok(ptr)
}

fn ckpt_err(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl<D: Device, B: BlockIo, M: Model<D>> Engine<D, B, M> {
    /// This rank's part of group `gi`'s parameters (the whole group on one rank) as stored
    /// (the run's dtype, little-endian), from whichever tier holds their newest copy; the
    /// next group's read starts first, so the drive reads it while this one is copied
    /// (callers walk the groups in order).
    pub fn param_group_bytes(&mut self, gi: usize) -> Result<Vec<u8>, EngineError> {
        let layout = self.tiers.layout();
        let (n_groups, width) = (layout.groups.len(), layout.dtype.bytes());
        let len = layout.owned[gi].len();
        if gi + 1 < n_groups {
            self.tiers.prefetch_params(gi + 1, true)?;
        }
        let mut group = vec![0u8; len * width];
        self.tiers.upload_params::<EngineError>(gi, |at, chunk| {
            let b = chunk.as_bytes();
            let at = at * width;
            group[at..at + b.len()].copy_from_slice(b);
            Ok(())
        })?;
        Ok(group)
    }

    /// Writes the trained parameters as a Hugging Face folder (`config.json`, safetensors
    /// sharded at `max_shard_bytes`, the tokenizer files of `source` copied), streamed one
    /// group at a time from the tiers: parameters on NVMe never sit whole in host memory.
    /// `source` is the folder the run started from (required for a Llama-family model, whose
    /// `config.json` it keeps).
    pub fn export_hf(
        &mut self,
        dir: &Path,
        source: Option<&Path>,
        max_shard_bytes: u64,
    ) -> Result<crate::model::export::ExportReport, EngineError> {
        let spec = self.settings.train.model.clone();
        let dtype = self.settings.train.dtype;
        if self.comm.is_some() {
            // Every rank gathers each group in turn; rank 0 writes the folder.
            if !self.settings.partition.reports() {
                for gi in 0..self.tiers.layout().groups.len() {
                    self.gathered_group_bytes(gi)?;
                }
                return Ok(crate::model::export::ExportReport::default());
            }
            return crate::model::export::write_folder(
                dir,
                &spec,
                dtype,
                source,
                max_shard_bytes,
                |gi| self.gathered_group_bytes(gi),
            );
        }
        crate::model::export::write_folder(dir, &spec, dtype, source, max_shard_bytes, |gi| {
            self.param_group_bytes(gi)
        })
    }

    fn state(&self) -> EngineState {
        let s = &self.settings.train;
        let opt = self.opt.state();
        EngineState {
            format: FORMAT.into(),
            step: self.steps,
            applied_steps: opt.applied_steps,
            batches_drawn: self.batches_drawn,
            scaler: opt.scaler,
            scheduler: opt.scheduler,
            model: s.model.clone(),
            dtype: dtype_tag(s.dtype).into(),
            params_tier: self.settings.placement.params.name().into(),
            optimizer_tier: self.settings.placement.optimizer.name().into(),
            sub_group_size: self.settings.sub_group_size,
            seed: s.seed,
            micro_batch: s.micro_batch,
            seq_len: s.seq_len,
            gradient_accumulation_steps: s.gradient_accumulation_steps,
        }
    }

    /// Saves the run at this step boundary into `dir` (see the file header): a new store in
    /// `dir/step-NNNNNNNN`, then the pointer, then older saves in `dir` removed. Saving again
    /// at a step already saved there does nothing. Returns the folder of the save's store.
    ///
    /// With several ranks every rank calls it at the same step: each writes its partition
    /// to `step-NNNNNNNN/rank{r}`, and rank 0 replaces the pointer once every rank's store
    /// is committed (a kill of any rank before that leaves the previous save).
    pub fn save(&mut self, dir: &Path) -> Result<PathBuf, EngineError> {
        let (rank, world) = (self.rank(), self.world_size());
        let name = format!("{STEP_PREFIX}{:08}", self.steps);
        if read_pointer(dir).is_ok_and(|p| p.step == self.steps && p.store == Path::new(&name)) {
            return Ok(dir.join(name));
        }
        let t0 = Instant::now();
        std::fs::create_dir_all(dir)
            .map_err(|e| ckpt_err(dir, format!("cannot create the folder: {e}")))?;
        // The newest values of every shard are in the store (or host arrays) once the
        // writes in flight are done.
        self.tiers.flush()?;
        let folder = rank_folder(&dir.join(&name), rank, world);
        if folder.exists() {
            // A save at this step that a kill interrupted: never pointed to.
            std::fs::remove_dir_all(&folder)
                .map_err(|e| ckpt_err(&folder, format!("cannot remove: {e}")))?;
        }
        let layout = self.tiers.layout().clone();
        let io = (self.io_factory)(Some(save_pool_bytes(&self.settings, &layout)))?;
        let cfg = save_store_config(&self.settings, &layout, folder.clone());
        let mut store = Store::create(io, &cfg, &save_specs(&layout))?;
        let mut rec = Recorder::untraced();
        let mut q = SwapQueue::<B>::new(4, &store, 0, 0)?;
        let mut bytes = 0u64;
        // Reads run one shard ahead of the copy, so the drive reads the next while the save
        // store writes this one.
        let n_groups = layout.groups.len();
        for gi in 0..n_groups {
            let group = self.param_group_bytes(gi)?;
            let id = store.shard_id(&crate::tiers::layout::param_shard(gi))?;
            q.write_bytes(&mut store, &mut rec, id, &group)?;
            bytes += group.len() as u64;
        }
        for u in 0..layout.units.len() {
            if u + 1 < layout.units.len() {
                self.tiers.prefetch_opt(u + 1, true)?;
            }
            for (t, state) in self.tiers.opt_unit_bytes(u)?.iter().enumerate() {
                let id = store.shard_id(&crate::tiers::layout::opt_shard(u, t))?;
                q.write_bytes(&mut store, &mut rec, id, state)?;
                bytes += state.len() as u64;
            }
        }
        let state = serde_json::to_vec(&self.state()).expect("the state serializes");
        if state.len() as u64 + 8 > STATE_BYTES {
            return Err(EngineError::Config(
                "engine state larger than its shard".into(),
            ));
        }
        let mut body = vec![0u8; STATE_BYTES as usize];
        body[..8].copy_from_slice(&(state.len() as u64).to_le_bytes());
        body[8..8 + state.len()].copy_from_slice(&state);
        let id = store.shard_id(STATE_SHARD)?;
        q.write_bytes(&mut store, &mut rec, id, &body)?;
        q.flush(&mut store, &mut rec)?;
        store.commit()?;
        drop(store);
        if world > 1 {
            // Every rank's part is committed before the pointer names the save.
            self.barrier()?;
        }
        if rank == 0 {
            let ptr = Pointer {
                format: FORMAT.into(),
                store: PathBuf::from(&name),
                step: self.steps,
                world_size: world,
            };
            let body = serde_json::to_vec_pretty(&ptr).expect("a pointer serializes");
            zinf_swap::aio_backend::replace_file(&dir.join(POINTER), &body)
                .map_err(|e| ckpt_err(&dir.join(POINTER), format!("cannot write: {e}")))?;
            remove_older_saves(dir, &name);
        }
        if world > 1 {
            // No rank goes on (or saves again) before the pointer names this save.
            self.barrier()?;
        }
        let secs = t0.elapsed().as_secs_f64();
        tracing::info!(
            "saved step {} to {} ({} of state copied in {secs:.1} s)",
            self.steps,
            folder.display(),
            crate::engine::summary::human_bytes(bytes)
        );
        Ok(folder)
    }

    /// Continues the run saved in `dir` (pointer `ptr`): opens the save's store, checks the
    /// config and the step against it, and copies the state into the fresh tiers.
    pub(super) fn resume_from(&mut self, dir: &Path, ptr: &Pointer) -> Result<(), EngineError> {
        if ptr.world_size != self.world_size() {
            return Err(ckpt_err(
                &dir.join(POINTER),
                format!(
                    "saved by {} rank(s), and this run has {}: each rank's partition depends \
                     on the world size; resume with --nproc-per-node {} (resharding is not \
                     supported yet)",
                    ptr.world_size,
                    self.world_size(),
                    ptr.world_size
                ),
            ));
        }
        let folder = rank_folder(&dir.join(&ptr.store), self.rank(), ptr.world_size);
        let layout = self.tiers.layout().clone();
        let io = (self.io_factory)(Some(save_pool_bytes(&self.settings, &layout)))?;
        let mut store = Store::open(io, &folder, false)?;
        let mut rec = Recorder::untraced();
        let mut q = SwapQueue::<B>::new(4, &store, 0, 0)?;
        let raw = read_whole(&mut q, &mut store, &mut rec, STATE_SHARD)?;
        let len = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as usize;
        if len == 0 || len + 8 > raw.len() {
            return Err(ckpt_err(&folder, "the store holds no saved state"));
        }
        let st: EngineState = serde_json::from_slice(&raw[8..8 + len])
            .map_err(|e| ckpt_err(&folder, format!("engine state unreadable: {e}")))?;
        self.check_compatible(&st, &folder)?;
        if st.step != ptr.step {
            return Err(ckpt_err(
                &folder,
                format!(
                    "holds step {} but {} names step {}: the save is inconsistent; resume \
                     from another copy",
                    st.step, POINTER, ptr.step
                ),
            ));
        }
        for gi in 0..layout.groups.len() {
            let name = crate::tiers::layout::param_shard(gi);
            let bytes = read_whole(&mut q, &mut store, &mut rec, &name)?;
            self.tiers.restore_params(gi, &bytes)?;
        }
        for u in 0..layout.units.len() {
            for t in 0..3 {
                let name = crate::tiers::layout::opt_shard(u, t);
                let bytes = read_whole(&mut q, &mut store, &mut rec, &name)?;
                self.tiers.restore_opt(u, t, &bytes)?;
            }
        }
        self.tiers.commit()?;
        self.steps = st.step;
        self.opt.load_state(OptimizerStepState {
            applied_steps: st.applied_steps,
            scaler: st.scaler,
            scheduler: st.scheduler,
        });
        for _ in 0..st.batches_drawn {
            self.batcher.next_batch(&self.data.train);
        }
        self.batches_drawn = st.batches_drawn;
        tracing::info!("resumed at step {} from {}", st.step, folder.display());
        Ok(())
    }

    fn check_compatible(&self, st: &EngineState, path: &Path) -> Result<(), EngineError> {
        let now = self.state();
        let fields = [
            ("format", st.format == now.format),
            ("zinf.model", st.model == now.model),
            ("parameter dtype (fp16/bf16)", st.dtype == now.dtype),
            ("offload_param.device", st.params_tier == now.params_tier),
            (
                "offload_optimizer.device",
                st.optimizer_tier == now.optimizer_tier,
            ),
            ("sub_group_size", st.sub_group_size == now.sub_group_size),
            ("zinf.seed", st.seed == now.seed),
            (
                "train_micro_batch_size_per_gpu",
                st.micro_batch == now.micro_batch,
            ),
            ("zinf.data.seq_len", st.seq_len == now.seq_len),
            (
                "gradient_accumulation_steps",
                st.gradient_accumulation_steps == now.gradient_accumulation_steps,
            ),
        ];
        let bad: Vec<&str> = fields
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| *n)
            .collect();
        if !bad.is_empty() {
            return Err(ckpt_err(
                path,
                format!(
                    "saved with a different {}; resume with the config the run was saved with",
                    bad.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// Removes every `step-*` folder in `dir` but `keep` (older saves, and a save a kill
/// interrupted). Best effort: a folder that cannot be removed is logged and left.
fn remove_older_saves(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STEP_PREFIX) && name != keep {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(
                    "could not remove the older save {}: {err}",
                    e.path().display()
                );
            }
        }
    }
}

/// Reads a whole shard (checksums checked) into a vector.
fn read_whole<B: BlockIo>(
    q: &mut SwapQueue<B>,
    store: &mut Store<B>,
    rec: &mut Recorder,
    name: &str,
) -> Result<Vec<u8>, EngineError> {
    let id = store.shard_id(name)?;
    let buf = q.alloc(store, rec, id)?;
    let h = store.read_begin_id(id, buf)?;
    Ok(store.wait_read(h)?.to_vec())
}
