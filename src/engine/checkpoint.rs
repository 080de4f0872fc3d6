//! `--save DIR` / `--resume DIR`: the run's whole state at a step boundary, crash-safe.
//!
//! State on NVMe is snapshotted in place: the swap store already holds it, double-buffered, so
//! a save is a commit of that store (no copy of the NVMe tier). What lives in host memory
//! (parameters and optimizer state on the `none`/`cpu` tiers) is written into checkpoint
//! shards of the same store, and the small rest (step, loss scaler, scheduler, data position;
//! the data RNG is replayed from the seed) into one `engine.state` shard. One atomic commit
//! covers all of it. Runs with nothing on NVMe keep the same shards in a store inside DIR.
//! `DIR/checkpoint.json` (replaced atomically after the commit) says where the store is.
//!
//! A kill -9 at any moment leaves the last commit readable: writes between saves land in the
//! store's other slot, and the manifest flips only in a commit. A corrupted shard is reported
//! by name when it is read on resume (every chunk is checksummed), never trained on.

use super::{Engine, EngineError, EngineSettings};
use crate::device::Device;
use crate::host::HostParams;
use crate::model::{GptConfig, Model};
use crate::optim::{LossScaler, LrSchedulerState, OptimizerStepState};
use crate::tiers::layout::dtype_tag;
use crate::tiers::{HostOpt, Recorder, SwapQueue, TierLayout, OPT_STATES};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zinf_swap::{BlockIo, ShardSpec, Store, StoreConfig};

/// The shard holding the small rest of the state (length-prefixed JSON).
pub const STATE_SHARD: &str = "engine.state";
const STATE_BYTES: u64 = 64 << 10;
const FORMAT: &str = "zinf-engine/1";
/// The pointer file in a save folder.
pub const POINTER: &str = "checkpoint.json";
/// Written into the swap folder after a save, so a fresh run does not destroy it.
pub const SAVED_MARKER: &str = "zinf-saved.json";

/// Everything that is not a tensor.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct EngineState {
    format: String,
    step: u64,
    applied_steps: u64,
    batches_drawn: u64,
    scaler: LossScaler,
    scheduler: Option<LrSchedulerState>,
    model: GptConfig,
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
    /// Folder of the store's manifest.
    pub store: PathBuf,
    pub step: u64,
}

fn ckpt_param(gi: usize) -> String {
    format!("ckpt.param.g{gi}")
}

fn ckpt_opt(u: usize, t: usize) -> String {
    format!("ckpt.opt.u{u}.{}", OPT_STATES[t])
}

/// Shards a save needs besides the NVMe tiers: the state shard and host-tier tensors.
pub(super) fn store_specs(settings: &EngineSettings, layout: &TierLayout) -> Vec<ShardSpec> {
    let mut v = vec![ShardSpec::new(STATE_SHARD, STATE_BYTES, "json")];
    let pl = &settings.placement;
    let dtype = layout.dtype;
    if !pl.params.is_nvme() {
        for (gi, r) in layout.groups.iter().enumerate() {
            let len = (r.len() * dtype.bytes()) as u64;
            v.push(ShardSpec::new(ckpt_param(gi), len, dtype_tag(dtype)));
        }
    }
    if !pl.optimizer.is_nvme() {
        v.extend(layout.opt_specs_named(ckpt_opt));
    }
    v
}

/// Reads `dir/checkpoint.json`.
pub(super) fn read_pointer(dir: &Path) -> Result<Pointer, EngineError> {
    let ptr_path = dir.join(POINTER);
    let body = std::fs::read(&ptr_path).map_err(|e| {
        ckpt_err(
            &ptr_path,
            format!("no save here ({e}); was the run started with --save?"),
        )
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ckpt_err(&ptr_path, format!("not a zinf checkpoint pointer: {e}")))
}

fn ckpt_err(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl<D: Device, B: BlockIo, M: Model<D>> Engine<D, B, M> {
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
            model: s.model,
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

    /// Saves the run at this step boundary into `dir` (see the file header). Returns the
    /// folder of the store that holds it.
    pub fn save(&mut self, dir: &Path) -> Result<PathBuf, EngineError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ckpt_err(dir, format!("cannot create the folder: {e}")))?;
        self.flush()?;
        let on_nvme = self.tiers.nvme().is_some();
        if !on_nvme && self.save_store.is_none() {
            let io = (self.io_factory)()?;
            let layout = self.tiers.layout();
            let chunk = layout.chunk_bytes(self.settings.chunk_bytes);
            let cfg = StoreConfig::new(vec![dir.join("state")]).chunk_bytes(chunk);
            let specs = store_specs(&self.settings, layout);
            self.save_store = Some(Store::create(io, &cfg, &specs)?);
        }
        let state = serde_json::to_vec(&self.state()).expect("the state serializes");
        let Engine {
            tiers, save_store, ..
        } = self;
        let mut rec = Recorder::untraced();
        let parts = tiers.parts();
        let store = match (parts.nvme, save_store.as_mut()) {
            (Some(n), _) => &mut n.store,
            (None, Some(s)) => s,
            (None, None) => unreachable!("a store to save into was made above"),
        };
        let host = HostState {
            params: parts.params.as_deref(),
            opt: parts.opt.as_deref(),
        };
        save_into(store, &mut rec, &host, parts.layout, &state)?;
        let folder = if on_nvme {
            self.swap_folder()
        } else {
            dir.join("state")
        };
        let ptr = Pointer {
            format: FORMAT.into(),
            store: folder.clone(),
            step: self.steps,
        };
        let body = serde_json::to_vec_pretty(&ptr).expect("a pointer serializes");
        zinf_swap::aio_backend::replace_file(&dir.join(POINTER), &body)
            .map_err(|e| ckpt_err(&dir.join(POINTER), format!("cannot write: {e}")))?;
        if let Some(n) = self.tiers.nvme() {
            let marker = serde_json::json!({ "save_dir": dir, "step": self.steps });
            n.store
                .io()
                .replace_file(&folder.join(SAVED_MARKER), marker.to_string().as_bytes())
                .map_err(|e| ckpt_err(&folder, format!("cannot write the save marker: {e}")))?;
        }
        tracing::info!(
            "saved step {} to {} (store {})",
            self.steps,
            dir.display(),
            folder.display()
        );
        Ok(folder)
    }

    /// Continues the run saved in `dir` (pointer `ptr`): the store (the NVMe tier's, opened by
    /// the tiers, or the save folder's), the config check, the host tiers and the small state.
    pub(super) fn resume_from(&mut self, dir: &Path, ptr: &Pointer) -> Result<(), EngineError> {
        if self.tiers.nvme().is_none() {
            let io = (self.io_factory)()?;
            self.save_store = Some(Store::open(io, &ptr.store, false)?);
        }
        let mut rec = Recorder::untraced();
        let Engine {
            tiers, save_store, ..
        } = self;
        let parts = tiers.parts();
        let layout = parts.layout;
        let store = match (parts.nvme, save_store.as_mut()) {
            (Some(n), _) => &mut n.store,
            (None, Some(s)) => s,
            (None, None) => unreachable!("the save store was opened above"),
        };
        let mut q = SwapQueue::<B>::new(4, store, 0, 0)?;
        let raw = read_whole(&mut q, store, &mut rec, STATE_SHARD)?;
        let len = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as usize;
        if len == 0 || len + 8 > raw.len() {
            return Err(ckpt_err(&ptr.store, "the store holds no saved state"));
        }
        let st: EngineState = serde_json::from_slice(&raw[8..8 + len])
            .map_err(|e| ckpt_err(&ptr.store, format!("engine state unreadable: {e}")))?;
        if let Some(hp) = parts.params {
            for (gi, r) in layout.groups.iter().enumerate() {
                let bytes = read_whole(&mut q, store, &mut rec, &ckpt_param(gi))?;
                hp.set_range_bytes(r.start, &bytes);
            }
        }
        if let Some(o) = parts.opt {
            for (u, unit) in layout.units.iter().enumerate() {
                for (t, dst) in [&mut o.master, &mut o.m, &mut o.v].into_iter().enumerate() {
                    let bytes = read_whole(&mut q, store, &mut rec, &ckpt_opt(u, t))?;
                    let d: &mut [u8] = bytemuck::cast_slice_mut(&mut dst[unit.range.clone()]);
                    d.copy_from_slice(&bytes);
                }
            }
        }
        self.check_compatible(&st, &ptr.store)?;
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
        tracing::info!("resumed at step {} from {}", st.step, dir.display());
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

/// Host arrays a save writes into checkpoint shards.
struct HostState<'a> {
    params: Option<&'a HostParams>,
    opt: Option<&'a HostOpt>,
}

/// Writes the host tiers and the small state (`state`, JSON) into `store` and commits it.
fn save_into<B: BlockIo>(
    store: &mut Store<B>,
    rec: &mut Recorder,
    host: &HostState<'_>,
    layout: &TierLayout,
    state: &[u8],
) -> Result<(), EngineError> {
    let mut q = SwapQueue::<B>::new(4, store, 0, 0)?;
    if let Some(hp) = host.params {
        for (gi, r) in layout.groups.iter().enumerate() {
            let id = store.shard_id(&ckpt_param(gi))?;
            q.write_bytes(store, rec, id, hp.range_bytes(r.clone()))?;
        }
    }
    if let Some(o) = host.opt {
        for (u, unit) in layout.units.iter().enumerate() {
            for (t, src) in [&o.master, &o.m, &o.v].into_iter().enumerate() {
                let bytes = bytemuck::cast_slice(&src[unit.range.clone()]);
                let id = store.shard_id(&ckpt_opt(u, t))?;
                q.write_bytes(store, rec, id, bytes)?;
            }
        }
    }
    if state.len() as u64 + 8 > STATE_BYTES {
        return Err(EngineError::Config(
            "engine state larger than its shard".into(),
        ));
    }
    let mut body = vec![0u8; STATE_BYTES as usize];
    body[..8].copy_from_slice(&(state.len() as u64).to_le_bytes());
    body[8..8 + state.len()].copy_from_slice(state);
    let id = store.shard_id(STATE_SHARD)?;
    q.write_bytes(store, rec, id, &body)?;
    q.flush(store, rec)?;
    store.commit()?;
    Ok(())
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
