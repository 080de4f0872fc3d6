//! `Tiers`: the one owner of every byte of model state that is not on the device — the
//! parameters' home (host array, or NVMe shards with a one-group staging buffer and the
//! `max_in_cpu` host cache), the optimizer state's home (host arrays, or NVMe shards), the swap
//! store, its bounded request queue and pool buffers, and the residency table that says, for
//! every shard, where its newest bytes are (home / reading / in hand / held / writing) and, for
//! every group, whether the device holds it.
//!
//! The engine asks: "group g's parameters, chunk by chunk, to upload" ([`Tiers::upload_params`]),
//! "read ahead group g / unit u" ([`Tiers::prefetch_params`], [`Tiers::prefetch_opt`]), "unit
//! u's optimizer state and its copy-out target" ([`Tiers::update_unit`]), "write group g's new
//! values home" ([`Tiers::finish_group_update`]). Each answer comes from the freshest copy: the
//! staging buffer of the group updated last, the host cache, the pool buffer of a write still
//! held or in flight, and only then the disk.
//!
//! Types carry the facts: [`Homes`] has one variant per placement, and the variants with state
//! on NVMe hold the store; nothing here is an `Option` that the code then `expect`s.
//!
//! Model-agnostic: a group is a range of the flat parameter array. This module depends on
//! zinf-swap, zinf-aio, the host arrays (`crate::host`) and the timeline, nothing else; it
//! does not decide what to prefetch or when (the engine's loops do).

pub mod layout;
pub mod queue;
pub mod residency;
#[cfg(test)]
mod tests;

pub use layout::{TierLayout, Unit, OPT_STATES};
pub use queue::{QueueCounters, Recorder, Shards, SwapQueue};
pub use residency::{DeviceTable, OnDevice, ShardState, ShardTable};

use crate::host::{HostParams, HostSlice, ParamDtype};
use half::{bf16, f16};
use std::ops::Range;
use zinf_swap::{BlockIo, Store, StoreConfig, SwapError};

/// Errors of the tiers.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error(transparent)]
    Swap(#[from] SwapError),
    /// A sizing the config chose that cannot work (a pool too small for one unit).
    #[error("{0}")]
    Config(String),
}

/// Optimizer state in host memory: fp32 master weights and Adam's two moments, flat.
#[derive(Debug)]
pub struct HostOpt {
    pub master: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl HostOpt {
    fn zeros(n: usize) -> Self {
        HostOpt {
            master: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

/// The swap store of the NVMe tier and the queue of its requests.
pub struct Nvme<B: BlockIo> {
    pub store: Store<B>,
    pub queue: SwapQueue<B>,
}

/// Where parameters and optimizer state live; one variant per placement.
pub enum Homes<B: BlockIo> {
    /// Both in host memory (offload `none` or `cpu`).
    Host { params: HostParams, opt: HostOpt },
    /// Parameters on NVMe (`staging` holds the group updated last), optimizer state in host
    /// memory.
    ParamsNvme {
        nvme: Nvme<B>,
        staging: HostParams,
        opt: HostOpt,
    },
    /// Parameters in host memory, optimizer state on NVMe.
    OptNvme { nvme: Nvme<B>, params: HostParams },
    /// Both on NVMe.
    AllNvme { nvme: Nvme<B>, staging: HostParams },
}

/// Which state goes to NVMe (from `offload_param` / `offload_optimizer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmePlacement {
    pub params: bool,
    pub optimizer: bool,
}

impl NvmePlacement {
    /// Whether anything lives on NVMe.
    pub fn any(&self) -> bool {
        self.params || self.optimizer
    }
}

/// Host-side counters of the tiers (the queue's are in [`QueueCounters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TierCounters {
    /// NVMe fetches served from the staging buffer of the group updated last.
    pub staged_hits: u64,
    /// NVMe fetches served from the `max_in_cpu` host cache.
    pub cache_hits: u64,
    /// Held parameter writes a fetch uploaded from in place.
    pub held_param_hits: u64,
}

/// The borrowed parts a save or a resume works on: host arrays and, when anything is on NVMe,
/// the store.
pub struct Parts<'a, B: BlockIo> {
    pub layout: &'a TierLayout,
    pub params: Option<&'a mut HostParams>,
    pub opt: Option<&'a mut HostOpt>,
    pub nvme: Option<&'a mut Nvme<B>>,
}

/// Every home of model state outside the device, and where each byte's newest copy is.
pub struct Tiers<B: BlockIo> {
    layout: TierLayout,
    homes: Homes<B>,
    /// Device state of every group (the engine moves it; the tiers keep it in one table).
    pub device: DeviceTable,
    /// The group whose newest values the staging buffer holds (it was updated last).
    staged: Option<usize>,
    /// NVMe parameters kept in host memory (DeepSpeed `offload_param.max_in_cpu` elements).
    cache: Vec<Option<HostParams>>,
    cached_elems: u64,
    max_in_cpu: u64,
    pub rec: Recorder,
    pub counters: TierCounters,
}

/// What [`Tiers::new`] needs to build the NVMe tier: the backend, the store's layout, and how
/// many write-behinds stay in flight.
pub struct NvmeSetup<B: BlockIo> {
    pub io: B,
    pub config: StoreConfig,
    /// Write-behinds kept in flight (0: each waited at once).
    pub max_writes: usize,
}

impl<B: BlockIo> NvmeSetup<B> {
    /// A fresh store laid out by `config` over `io`, holding the tiers' shards, with
    /// `max_writes` write-behinds in flight.
    pub fn new(io: B, config: StoreConfig, max_writes: usize) -> Self {
        NvmeSetup {
            io,
            config,
            max_writes,
        }
    }
}

impl<B: BlockIo> Tiers<B> {
    /// Lays out the homes: host arrays of the layout's size (zeros) and, when `place` puts
    /// anything on NVMe, the swap store (`nvme` must then be given: a config error otherwise).
    pub fn new(
        layout: TierLayout,
        place: NvmePlacement,
        setup: Option<NvmeSetup<B>>,
        max_in_cpu: u64,
        rec: Recorder,
    ) -> Result<Self, TierError> {
        let total = layout.total;
        let dtype = layout.dtype;
        let staging = || HostParams::zeros(dtype, layout.max_owned_len());
        let make_nvme = |n: Option<NvmeSetup<B>>| -> Result<Nvme<B>, TierError> {
            let n =
                n.ok_or_else(|| TierError::Config("state on NVMe needs a swap store".into()))?;
            let store = Store::create(n.io, &n.config, &layout.tier_specs(place))?;
            let groups = if place.params { layout.groups.len() } else { 0 };
            let units = if place.optimizer {
                layout.units.len()
            } else {
                0
            };
            let queue = SwapQueue::new(n.max_writes, &store, groups, units)?;
            Ok(Nvme { store, queue })
        };
        let homes = match (place.params, place.optimizer) {
            (false, false) => Homes::Host {
                params: HostParams::zeros(dtype, total),
                opt: HostOpt::zeros(total),
            },
            (true, false) => Homes::ParamsNvme {
                nvme: make_nvme(setup)?,
                staging: staging(),
                opt: HostOpt::zeros(total),
            },
            (false, true) => Homes::OptNvme {
                nvme: make_nvme(setup)?,
                params: HostParams::zeros(dtype, total),
            },
            (true, true) => Homes::AllNvme {
                nvme: make_nvme(setup)?,
                staging: staging(),
            },
        };
        let n_groups = layout.groups.len();
        Ok(Tiers {
            device: DeviceTable::new(n_groups),
            cache: vec![None; n_groups],
            layout,
            homes,
            staged: None,
            cached_elems: 0,
            max_in_cpu,
            rec,
            counters: TierCounters::default(),
        })
    }

    /// The layout the tiers were built for.
    pub fn layout(&self) -> &TierLayout {
        &self.layout
    }

    /// The NVMe tier, when anything lives there.
    pub fn nvme(&self) -> Option<&Nvme<B>> {
        match &self.homes {
            Homes::Host { .. } => None,
            Homes::ParamsNvme { nvme, .. }
            | Homes::OptNvme { nvme, .. }
            | Homes::AllNvme { nvme, .. } => Some(nvme),
        }
    }

    /// The swap store pool's memory (start, bytes), when parameters or optimizer state are
    /// on NVMe, the backend has one region, and the config pins it (`pin_memory`): a GPU
    /// device page-locks it too.
    pub fn pool_arena(&self) -> Option<(*const u8, usize)> {
        let io = self.nvme()?.store.io();
        io.pool_pinned().then(|| io.pool_arena()).flatten()
    }

    /// The parts a save or resume reads and writes.
    pub fn parts(&mut self) -> Parts<'_, B> {
        let layout = &self.layout;
        let (params, opt, nvme) = match &mut self.homes {
            Homes::Host { params, opt } => (Some(params), Some(opt), None),
            Homes::ParamsNvme { nvme, opt, .. } => (None, Some(opt), Some(nvme)),
            Homes::OptNvme { nvme, params } => (Some(params), None, Some(nvme)),
            Homes::AllNvme { nvme, .. } => (None, None, Some(nvme)),
        };
        Parts {
            layout,
            params,
            opt,
            nvme,
        }
    }

    /// Whether parameters live on NVMe.
    pub fn params_on_nvme(&self) -> bool {
        matches!(self.homes, Homes::ParamsNvme { .. } | Homes::AllNvme { .. })
    }

    /// Whether optimizer state lives on NVMe.
    pub fn opt_on_nvme(&self) -> bool {
        matches!(self.homes, Homes::OptNvme { .. } | Homes::AllNvme { .. })
    }

    /// Pool budget of the swap store, bytes (0 when nothing is on NVMe).
    pub fn pool_budget_bytes(&self) -> u64 {
        self.nvme().map_or(0, |n| n.store.io().pool_budget_bytes())
    }

    /// Bytes read from and written to the swap store so far.
    pub fn nvme_bytes(&self) -> (u64, u64) {
        self.nvme().map_or((0, 0), |n| {
            let c = n.store.counters();
            (c.bytes_read, c.bytes_written)
        })
    }

    /// The queue's counters (zeros when nothing is on NVMe).
    pub fn queue_counters(&self) -> QueueCounters {
        self.nvme().map(|n| n.queue.counters).unwrap_or_default()
    }

    /// Host bytes the tiers hold outside the pinned pool (see [`host_bytes`]).
    pub fn host_bytes(&self) -> u64 {
        let place = NvmePlacement {
            params: self.params_on_nvme(),
            optimizer: self.opt_on_nvme(),
        };
        host_bytes(&self.layout, place, self.max_in_cpu)
    }

    /// Sets the initial values of this rank's part of group `gi`: `stored` (the owned part,
    /// in the storage dtype) and the fp32 master `master` (the owned part); m and v start at
    /// zero. Nothing outside the owned part is written (with several ranks, its host pages
    /// are never touched).
    pub fn init_group(
        &mut self,
        gi: usize,
        stored: &HostParams,
        master: &[f32],
    ) -> Result<(), TierError> {
        let r = self.layout.owned[gi].clone();
        assert_eq!(stored.len(), r.len(), "init_group: the owned part's values");
        let Tiers {
            homes, rec, layout, ..
        } = self;
        match homes {
            Homes::Host { params, opt } => {
                params.copy_range_from(r.start, stored);
                opt.master[r].copy_from_slice(master);
            }
            Homes::ParamsNvme { nvme, opt, .. } => {
                write_param(nvme, rec, gi, stored.range_bytes(0..r.len()))?;
                opt.master[r].copy_from_slice(master);
            }
            Homes::OptNvme { nvme, params } => {
                params.copy_range_from(r.start, stored);
                write_master(nvme, rec, layout, gi, master)?;
            }
            Homes::AllNvme { nvme, .. } => {
                write_param(nvme, rec, gi, stored.range_bytes(0..r.len()))?;
                write_master(nvme, rec, layout, gi, master)?;
            }
        }
        Ok(())
    }

    /// Sets this rank's part of group `gi`'s parameters to `bytes` (the storage dtype,
    /// exactly the owned part): a resume restoring a save into fresh tiers.
    pub fn restore_params(&mut self, gi: usize, bytes: &[u8]) -> Result<(), TierError> {
        let start = self.layout.owned[gi].start;
        let Tiers { homes, rec, .. } = self;
        match homes {
            Homes::Host { params, .. } | Homes::OptNvme { params, .. } => {
                params.set_range_bytes(start, bytes);
            }
            Homes::ParamsNvme { nvme, .. } | Homes::AllNvme { nvme, .. } => {
                write_param(nvme, rec, gi, bytes)?;
            }
        }
        Ok(())
    }

    /// Sets state tensor `t` ([`OPT_STATES`] order: master, m, v) of unit `u` to `bytes`
    /// (fp32, exactly the unit): a resume restoring a save into fresh tiers.
    pub fn restore_opt(&mut self, u: usize, t: usize, bytes: &[u8]) -> Result<(), TierError> {
        let range = self.layout.units[u].range.clone();
        let Tiers { homes, rec, .. } = self;
        match opt_at(homes) {
            OptAt::Host(o) => {
                let dst = match t {
                    0 => &mut o.master,
                    1 => &mut o.m,
                    _ => &mut o.v,
                };
                let d: &mut [u8] = bytemuck::cast_slice_mut(&mut dst[range]);
                d.copy_from_slice(bytes);
            }
            OptAt::Nvme(n) => {
                let id = n.queue.opt_id(u, t);
                n.queue.write_bytes(&mut n.store, rec, id, bytes)?;
            }
        }
        Ok(())
    }

    /// Unit `u`'s optimizer state, newest values, as fp32 bytes in [`OPT_STATES`] order (a
    /// save). Call after [`Tiers::flush`].
    pub fn opt_unit_bytes(&mut self, u: usize) -> Result<[Vec<u8>; 3], TierError> {
        let range = self.layout.units[u].range.clone();
        let Tiers { homes, rec, .. } = self;
        match opt_at(homes) {
            OptAt::Host(o) => Ok([&o.master, &o.m, &o.v]
                .map(|src| bytemuck::cast_slice::<f32, u8>(&src[range.clone()]).to_vec())),
            OptAt::Nvme(n) => {
                let bufs = n.queue.read(&mut n.store, rec, Shards::Opt(u))?;
                let out = [0, 1, 2].map(|t| bufs[t].to_vec());
                drop(bufs);
                n.queue.done_with(Shards::Opt(u));
                Ok(out)
            }
        }
    }

    /// Finishes every write in flight and commits the store (the end of initialisation).
    pub fn commit(&mut self) -> Result<(), TierError> {
        let Tiers { homes, rec, .. } = self;
        if let Some(n) = nvme_of(homes) {
            n.queue.flush(&mut n.store, rec)?;
            n.store.commit()?;
        }
        Ok(())
    }

    /// Uploads this rank's part of group `gi`'s parameters (all of it on one rank) through
    /// `up(offset_elems, chunk)`, offsets from the owned part's start, from the freshest
    /// copy: the host array, the staging buffer of the group updated last, the host cache,
    /// the pool buffer of a held or in-flight write, or the disk (a prefetch in flight or a
    /// read now). A group read from disk goes into the `max_in_cpu` cache while it has room.
    pub fn upload_params<E: From<TierError>>(
        &mut self,
        gi: usize,
        mut up: impl FnMut(usize, HostSlice<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let r = self.layout.owned[gi].clone();
        let len = r.len();
        let dtype = self.layout.dtype;
        let Tiers {
            homes,
            rec,
            staged,
            cache,
            cached_elems,
            max_in_cpu,
            counters,
            ..
        } = self;
        let (nvme, staging) = match homes {
            Homes::Host { params, .. } | Homes::OptNvme { params, .. } => {
                return up(0, params.slice(r));
            }
            Homes::ParamsNvme { nvme, staging, .. } | Homes::AllNvme { nvme, staging } => {
                (nvme, staging)
            }
        };
        if *staged == Some(gi) {
            counters.staged_hits += 1;
            return up(0, staging.slice(0..len));
        }
        if let Some(c) = &cache[gi] {
            counters.cache_hits += 1;
            return up(0, c.slice(0..len));
        }
        if let Some(buf) = nvme.queue.held_param(gi) {
            counters.held_param_hits += 1;
            return upload_chunks(buf, dtype, &mut up);
        }
        let bufs = nvme
            .queue
            .read(&mut nvme.store, rec, Shards::Param(gi))
            .map_err(E::from)?;
        let buf = &bufs[0];
        let res = upload_chunks(buf, dtype, &mut up);
        // DeepSpeed's `max_in_cpu`: keep it in host memory while the budget allows.
        if res.is_ok() && *cached_elems + len as u64 <= *max_in_cpu {
            let mut copy = HostParams::zeros(dtype, len);
            let mut at = 0;
            for i in 0..buf.chunk_count() {
                copy.set_range_bytes(at, buf.chunk(i));
                at += buf.chunk(i).len() / dtype.bytes();
            }
            *cached_elems += len as u64;
            cache[gi] = Some(copy);
        }
        drop(bufs);
        nvme.queue.done_with(Shards::Param(gi));
        res
    }

    /// Whether a fetch of group `gi` would read the disk (not host-resident, staged, cached,
    /// pending in the pool, or already being read).
    pub fn param_read_needed(&self, gi: usize) -> Result<bool, TierError> {
        let (Homes::ParamsNvme { nvme, .. } | Homes::AllNvme { nvme, .. }) = &self.homes else {
            return Ok(false);
        };
        if self.staged == Some(gi) || self.cache[gi].is_some() {
            return Ok(false);
        }
        let id = nvme.queue.param_id(gi);
        Ok(nvme.queue.table().get(id) == ShardState::Home)
    }

    /// Groups whose parameter reads are in flight.
    pub fn param_reads_in_flight(&self) -> impl Iterator<Item = usize> + '_ {
        self.nvme()
            .into_iter()
            .flat_map(|n| n.queue.param_reads_in_flight())
    }

    /// Starts reading group `gi`'s parameters ahead (see [`SwapQueue::prefetch`]); true when
    /// the read is in flight or not needed.
    pub fn prefetch_params(&mut self, gi: usize, next: bool) -> Result<bool, TierError> {
        if !self.param_read_needed(gi)? {
            return Ok(true);
        }
        let Tiers { homes, rec, .. } = self;
        match nvme_of(homes) {
            Some(n) => n.queue.prefetch(&mut n.store, rec, Shards::Param(gi), next),
            None => Ok(true),
        }
    }

    /// Starts reading unit `u`'s optimizer state ahead when it lives on NVMe.
    pub fn prefetch_opt(&mut self, u: usize, next: bool) -> Result<bool, TierError> {
        let Tiers { homes, rec, .. } = self;
        match homes {
            Homes::OptNvme { nvme, .. } | Homes::AllNvme { nvme, .. } => {
                nvme.queue
                    .prefetch(&mut nvme.store, rec, Shards::Opt(u), next)
            }
            _ => Ok(true),
        }
    }

    /// Starts a group's update: the staging buffer is about to hold its new values.
    pub fn begin_group_update(&mut self) {
        self.staged = None;
    }

    /// Runs `step(master, m, v, out, out_range)` on unit `u`'s optimizer state, wherever it
    /// lives, with the parameters' copy-out target (`out[out_range]`: the host array, or the
    /// staging buffer when parameters live on NVMe); the state goes home after (written
    /// behind when on NVMe). fp32 parameters are the master itself: copied out after.
    pub fn update_unit<E: From<TierError>>(
        &mut self,
        u: usize,
        step: impl FnOnce(
            &mut [f32],
            &mut [f32],
            &mut [f32],
            &mut HostParams,
            Range<usize>,
        ) -> Result<(), E>,
    ) -> Result<(), E> {
        let unit = self.layout.units[u].clone();
        let g0 = self.layout.owned[unit.group].start;
        let rel = unit.range.start - g0..unit.range.end - g0;
        let Tiers { homes, rec, .. } = self;
        let (out, out_range, opt) = match homes {
            Homes::Host { params, opt } => (params, unit.range.clone(), OptAt::Host(opt)),
            Homes::ParamsNvme { staging, opt, .. } => (staging, rel, OptAt::Host(opt)),
            Homes::OptNvme { nvme, params } => (params, unit.range.clone(), OptAt::Nvme(nvme)),
            Homes::AllNvme { nvme, staging } => (staging, rel, OptAt::Nvme(nvme)),
        };
        match opt {
            OptAt::Host(o) => {
                let r = unit.range.clone();
                let master = &mut o.master[r.clone()];
                step(
                    master,
                    &mut o.m[r.clone()],
                    &mut o.v[r],
                    out,
                    out_range.clone(),
                )?;
                copy_fp32(out, out_range, master);
            }
            OptAt::Nvme(n) => {
                let mut bufs = n
                    .queue
                    .read(&mut n.store, rec, Shards::Opt(u))
                    .map_err(E::from)?;
                {
                    let [a, b, c] = &mut bufs[..] else {
                        unreachable!("three state tensors")
                    };
                    let master: &mut [f32] = bytemuck::cast_slice_mut(a.chunk_mut(0));
                    let m: &mut [f32] = bytemuck::cast_slice_mut(b.chunk_mut(0));
                    let v: &mut [f32] = bytemuck::cast_slice_mut(c.chunk_mut(0));
                    step(master, m, v, out, out_range.clone())?;
                    copy_fp32(out, out_range, master);
                }
                for (t, buf) in bufs.into_iter().enumerate() {
                    let id = n.queue.opt_id(u, t);
                    n.queue.write(&mut n.store, rec, id, buf)?;
                }
            }
        }
        Ok(())
    }

    /// Ends the update of group `gi`: with parameters on NVMe its new values go out from the
    /// staging buffer (written behind), which keeps them for the next fetch; the host cache
    /// copy, if any, is refreshed.
    pub fn finish_group_update(&mut self, gi: usize) -> Result<(), TierError> {
        let len = self.layout.owned[gi].len();
        let Tiers {
            homes, rec, cache, ..
        } = self;
        if let Homes::ParamsNvme { nvme, staging, .. } | Homes::AllNvme { nvme, staging } = homes {
            let bytes = staging.range_bytes(0..len);
            write_param(nvme, rec, gi, bytes)?;
            if let Some(c) = &mut cache[gi] {
                c.set_range_bytes(0, bytes);
            }
            self.staged = Some(gi);
        }
        Ok(())
    }

    /// The newest values of this rank's part of group `gi` in host memory right after its
    /// update (the host array, or the staging buffer), to refresh a persistent device copy.
    pub fn updated_params(&self, gi: usize) -> HostSlice<'_> {
        let r = self.layout.owned[gi].clone();
        match &self.homes {
            Homes::Host { params, .. } | Homes::OptNvme { params, .. } => params.slice(r),
            Homes::ParamsNvme { staging, .. } | Homes::AllNvme { staging, .. } => {
                assert_eq!(
                    self.staged,
                    Some(gi),
                    "updated_params right after the update"
                );
                staging.slice(0..r.len())
            }
        }
    }

    /// Holds new writes in the pool (`true`) or writes behind at once (`false`); see
    /// [`SwapQueue::defer_writes`].
    pub fn defer_writes(&mut self, on: bool) {
        if let Some(n) = nvme_of(&mut self.homes) {
            n.queue.defer_writes(on);
        }
    }

    /// Sends a `1/parts` share of the writes held from the last update.
    pub fn submit_held(&mut self, parts: usize) -> Result<(), TierError> {
        let Tiers { homes, rec, .. } = self;
        if let Some(n) = nvme_of(homes) {
            n.queue.submit_held(&mut n.store, rec, parts)?;
        }
        Ok(())
    }

    /// Finishes every write in flight and drops every prefetch (the end of a run, a save).
    pub fn flush(&mut self) -> Result<(), TierError> {
        let Tiers { homes, rec, .. } = self;
        if let Some(n) = nvme_of(homes) {
            n.queue.flush(&mut n.store, rec)?;
        }
        Ok(())
    }

    /// Asserts the residency invariants at a step boundary (programmer errors panic): the
    /// queue's (nothing in hand, table = queues, write limit kept, every pool byte accounted
    /// for) and the device table's (no group left in use).
    pub fn assert_invariants(&self) {
        if let Some(n) = self.nvme() {
            n.queue.assert_invariants(&n.store);
        }
        assert_eq!(
            self.device.in_state(OnDevice::InUse).count(),
            0,
            "a group is still in use on the device at a step boundary"
        );
    }

    /// Every parameter, newest values, as one host array (the HF export); `None` when they
    /// live on NVMe and would take more than `max_bytes` of host memory. One rank only (with
    /// several, each holds its partition: the engine gathers them).
    pub fn export_params(&mut self, max_bytes: u64) -> Result<Option<HostParams>, TierError> {
        assert_eq!(
            self.layout.owned, self.layout.groups,
            "export_params on one rank"
        );
        let total = self.layout.total;
        let dtype = self.layout.dtype;
        if let Homes::Host { params, .. } | Homes::OptNvme { params, .. } = &self.homes {
            return Ok(Some(params.clone()));
        }
        if (total * dtype.bytes()) as u64 > max_bytes {
            return Ok(None);
        }
        self.flush()?;
        let mut out = HostParams::zeros(dtype, total);
        for gi in 0..self.layout.groups.len() {
            let start = self.layout.groups[gi].start;
            self.upload_params::<TierError>(gi, |at, s| {
                out.set_range_bytes(start + at, s.as_bytes());
                Ok(())
            })?;
        }
        Ok(Some(out))
    }
}

/// Host bytes tiers of `layout` placed as `place` hold outside the pinned pool: host-resident
/// parameters (storage dtype) and optimizer state (fp32 master, m, v: 12 bytes a parameter);
/// with parameters on NVMe, the one-group staging buffer and the `max_in_cpu` cache instead.
/// A pure function, so a run is checked against `zinf.host_memory_budget` before it allocates.
pub fn host_bytes(layout: &TierLayout, place: NvmePlacement, max_in_cpu: u64) -> u64 {
    // This rank's part of the state (all of it on one rank): the host arrays are flat, but
    // only the owned elements are ever written, so only their pages are resident.
    let total = layout.owned.iter().map(|r| r.len() as u64).sum::<u64>();
    let d = layout.dtype.bytes() as u64;
    let params = if place.params {
        layout.max_owned_len() as u64 * d + max_in_cpu.min(total) * d
    } else {
        total * d
    };
    let opt = if place.optimizer { 0 } else { 12 * total };
    params + opt
}

enum OptAt<'a, B: BlockIo> {
    Host(&'a mut HostOpt),
    Nvme(&'a mut Nvme<B>),
}

/// Where the optimizer state lives.
fn opt_at<B: BlockIo>(homes: &mut Homes<B>) -> OptAt<'_, B> {
    match homes {
        Homes::Host { opt, .. } | Homes::ParamsNvme { opt, .. } => OptAt::Host(opt),
        Homes::OptNvme { nvme, .. } | Homes::AllNvme { nvme, .. } => OptAt::Nvme(nvme),
    }
}

fn nvme_of<B: BlockIo>(homes: &mut Homes<B>) -> Option<&mut Nvme<B>> {
    match homes {
        Homes::Host { .. } => None,
        Homes::ParamsNvme { nvme, .. }
        | Homes::OptNvme { nvme, .. }
        | Homes::AllNvme { nvme, .. } => Some(nvme),
    }
}

fn write_param<B: BlockIo>(
    n: &mut Nvme<B>,
    rec: &mut Recorder,
    gi: usize,
    bytes: &[u8],
) -> Result<(), TierError> {
    let id = n.queue.param_id(gi);
    n.queue.write_bytes(&mut n.store, rec, id, bytes)
}

/// Writes the initial fp32 master of group `gi` (`master`, this rank's owned part); m and v
/// start as the store's zeros.
fn write_master<B: BlockIo>(
    n: &mut Nvme<B>,
    rec: &mut Recorder,
    layout: &TierLayout,
    gi: usize,
    master: &[f32],
) -> Result<(), TierError> {
    let g0 = layout.owned[gi].start;
    for u in layout.group_units[gi].clone() {
        let r = layout.units[u].range.clone();
        let bytes = bytemuck::cast_slice(&master[r.start - g0..r.end - g0]);
        let id = n.queue.opt_id(u, 0);
        n.queue.write_bytes(&mut n.store, rec, id, bytes)?;
    }
    Ok(())
}

/// Uploads a shard's chunks in order through `up`.
fn upload_chunks<T: std::ops::DerefMut<Target = [u8]>, E>(
    buf: &zinf_swap::ShardBuf<T>,
    dtype: ParamDtype,
    up: &mut impl FnMut(usize, HostSlice<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let mut at = 0;
    for i in 0..buf.chunk_count() {
        let bytes = buf.chunk(i);
        up(at, host_slice(dtype, bytes))?;
        at += bytes.len() / dtype.bytes();
    }
    Ok(())
}

/// Pool bytes as a host slice of the parameter dtype (pool buffers are page-aligned).
fn host_slice(dtype: ParamDtype, bytes: &[u8]) -> HostSlice<'_> {
    match dtype {
        ParamDtype::F32 => HostSlice::F32(bytemuck::cast_slice::<u8, f32>(bytes)),
        ParamDtype::F16 => HostSlice::F16(bytemuck::cast_slice::<u8, f16>(bytes)),
        ParamDtype::Bf16 => HostSlice::Bf16(bytemuck::cast_slice::<u8, bf16>(bytes)),
    }
}

/// fp32 parameters are the master itself.
fn copy_fp32(p: &mut HostParams, r: Range<usize>, master: &[f32]) {
    if let HostParams::F32(v) = p {
        v[r].copy_from_slice(master);
    }
}
