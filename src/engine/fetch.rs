//! Fetch, release and prefetch of parameter groups, and the device buffers they live in.
//!
//! `fetch` puts a group's fp32 working copy on the device (from host memory, or from the swap
//! store through a pool buffer) and reads ahead along the recorded trace: NVMe -> pinned pool
//! for the next groups, bounded by `stage3_prefetch_bucket_size`, `stage3_max_live_parameters`
//! and the pool. `release` drops the group unless it is persistent or used again within
//! `stage3_max_reuse_distance`. Device buffers are reused by length, so after the first step
//! nothing is allocated; a fetch that hits the device memory budget first evicts what is kept.

use super::residency::OnDevice;
use super::tiers::{self, Shards};
use super::{Engine, EngineError, ParamHome};
use crate::device::{Device, DeviceBuffer, DeviceError, HostSlice};
use crate::model::{Group, HostParams, ParamDtype};
use half::{bf16, f16};
use zinf_swap::BlockIo;

impl<D: Device, B: BlockIo> Engine<D, B> {
    pub(super) fn numel(&self, gi: usize) -> usize {
        self.model.layout.groups[gi].1.len()
    }

    /// Puts group `g`'s parameters on the device (a no-op when they are there) and starts
    /// reading the next groups of the trace.
    pub(super) fn fetch(&mut self, g: Group) -> Result<(), EngineError> {
        let gi = self.model.group_index(g);
        self.trace.record(gi);
        if self.on_device[gi] == OnDevice::Off {
            self.bring_in(gi)?;
            self.counters.device_fetches += 1;
        } else {
            self.counters.device_hits += 1;
        }
        self.on_device[gi] = OnDevice::InUse;
        self.prefetch_ahead()
    }

    /// Releases group `g` after its op: kept when persistent or reused soon, else dropped.
    pub(super) fn release(&mut self, g: Group) {
        let gi = self.model.group_index(g);
        if self.persistent[gi] {
            self.on_device[gi] = OnDevice::Kept;
            return;
        }
        let max = self.settings.max_reuse_distance;
        let layout = &self.model.layout;
        let d = self.trace.reuse_distance(gi, |j| layout.groups[j].1.len());
        if d.is_some_and(|d| d <= max) {
            self.on_device[gi] = OnDevice::Kept;
        } else {
            self.evict(gi);
        }
    }

    fn evict(&mut self, gi: usize) {
        let g = self.groups[gi];
        if let Some(buf) = self.model.take_params(g) {
            self.free.push(buf);
        }
        self.on_device[gi] = OnDevice::Off;
    }

    /// Evicts every kept group that is not persistent; true when one was evicted.
    fn evict_kept(&mut self) -> bool {
        let mut any = false;
        for gi in 0..self.groups.len() {
            if self.on_device[gi] == OnDevice::Kept && !self.persistent[gi] {
                self.evict(gi);
                any = true;
            }
        }
        any
    }

    /// Elements of parameters on the device now.
    fn live_numel(&self) -> u64 {
        (0..self.groups.len())
            .filter(|&gi| self.on_device[gi] != OnDevice::Off)
            .map(|gi| self.numel(gi) as u64)
            .sum()
    }

    /// A device buffer of `len` elements: a given-back one of that length, or a new one. Over
    /// the budget, buffers held for reuse and kept groups are given up first.
    pub(super) fn take_buf(
        &mut self,
        len: usize,
        what: impl FnOnce() -> String,
    ) -> Result<D::Buffer, EngineError> {
        if let Some(i) = self.free.iter().position(|b| b.len() == len) {
            return Ok(self.free.swap_remove(i));
        }
        let what = what(); // named only when memory is really allocated
        loop {
            match self.dev.alloc(&what, len) {
                Ok(b) => return Ok(b),
                Err(DeviceError::OutOfBudget { .. }) if !self.free.is_empty() => self.free.clear(),
                Err(DeviceError::OutOfBudget { .. }) if self.evict_kept() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Fills a device buffer with group `gi`'s parameters from their home and installs it.
    fn bring_in(&mut self, gi: usize) -> Result<(), EngineError> {
        let len = self.numel(gi);
        if self.live_numel() + len as u64 > self.settings.max_live_parameters {
            self.evict_kept();
        }
        let g = self.groups[gi];
        let mut buf = self.take_buf(len, || format!("parameters {g:?}"))?;
        let r = self.model.layout.groups[gi].1.clone();
        match &self.params {
            ParamHome::Host(hp) => {
                let ev = self.dev.upload(&mut buf, 0, hp.slice(r))?;
                self.dev.wait(ev)?;
            }
            ParamHome::Nvme { staging } if self.staged_group == Some(gi) => {
                self.counters.staged_hits += 1;
                let ev = self.dev.upload(&mut buf, 0, staging.slice(0..len))?;
                self.dev.wait(ev)?;
            }
            ParamHome::Nvme { .. } if self.param_cache[gi].is_some() => {
                self.counters.cache_hits += 1;
                let cached = self.param_cache[gi].as_ref().expect("checked");
                let ev = self.dev.upload(&mut buf, 0, cached.slice(0..len))?;
                self.dev.wait(ev)?;
            }
            ParamHome::Nvme { .. } => {
                let store = self.store.as_mut().expect("NVMe parameters have a store");
                let shard = self.queue.read(store, &mut self.rec, Shards::Param(gi))?;
                let shard = shard.into_iter().next().expect("one shard");
                let dtype = self.settings.train.dtype;
                let mut at = 0;
                for i in 0..shard.chunk_count() {
                    let bytes = shard.chunk(i);
                    let ev = self.dev.upload(&mut buf, at, host_slice(dtype, bytes))?;
                    self.dev.wait(ev)?;
                    at += bytes.len() / dtype.bytes();
                }
                debug_assert_eq!(at, len);
                // DeepSpeed's `max_in_cpu`: keep it in host memory while the budget allows.
                if self.cached_elems + len as u64 <= self.settings.max_in_cpu {
                    let mut copy = HostParams::zeros(dtype, len);
                    let mut at = 0;
                    for i in 0..shard.chunk_count() {
                        copy.set_range_bytes(at, shard.chunk(i));
                        at += shard.chunk(i).len() / dtype.bytes();
                    }
                    self.cached_elems += len as u64;
                    self.param_cache[gi] = Some(copy);
                }
            }
        }
        self.counters.device_bytes_in += (len * self.settings.train.dtype.bytes()) as u64;
        self.model.install_params(g, buf);
        Ok(())
    }

    /// Starts NVMe reads of the groups the trace says come next, within the bounds.
    fn prefetch_ahead(&mut self) -> Result<(), EngineError> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        if !matches!(self.params, ParamHome::Nvme { .. }) {
            return Ok(());
        }
        let layout = &self.model.layout;
        let numel = |gi: usize| layout.groups[gi].1.len() as u64;
        let mut ahead: u64 = self.queue.param_reads_in_flight().map(numel).sum();
        let mut live: u64 = (0..self.groups.len())
            .filter(|&gi| self.on_device[gi] != OnDevice::Off)
            .map(numel)
            .sum::<u64>()
            + ahead;
        for &gi in self.trace.upcoming() {
            if self.on_device[gi] != OnDevice::Off
                || self.param_cache[gi].is_some()
                || self.staged_group == Some(gi)
                || self.queue.param_reads_in_flight().any(|g| g == gi)
            {
                continue;
            }
            let n = numel(gi);
            let first = ahead == 0;
            if !first && ahead + n > self.settings.prefetch_bucket_size {
                break;
            }
            if live + n > self.settings.max_live_parameters {
                break;
            }
            if !self
                .queue
                .prefetch(store, &mut self.rec, Shards::Param(gi), first)?
            {
                break; // the pool is full now; the demand read will wait its turn
            }
            ahead += n;
            live += n;
        }
        Ok(())
    }

    /// Brings every persistent group onto the device (start-up, and after a resume).
    pub(super) fn load_persistent(&mut self) -> Result<(), EngineError> {
        for gi in 0..self.groups.len() {
            if self.persistent[gi] && self.on_device[gi] == OnDevice::Off {
                self.bring_in(gi)?;
                self.on_device[gi] = OnDevice::Kept;
            }
        }
        Ok(())
    }

    /// After group `gi`'s update: a persistent copy on the device is refreshed from the new
    /// values at the parameters' home (the staging buffer for NVMe); any other copy is
    /// dropped, so the next fetch reads the new version.
    pub(super) fn refresh_device_copy(&mut self, gi: usize) -> Result<(), EngineError> {
        if self.on_device[gi] == OnDevice::Off {
            return Ok(());
        }
        if !self.persistent[gi] {
            self.evict(gi);
            return Ok(());
        }
        let r = self.model.layout.groups[gi].1.clone();
        let values = match &self.params {
            ParamHome::Host(hp) => hp.slice(r),
            ParamHome::Nvme { staging } => staging.slice(0..r.len()),
        };
        let g = self.groups[gi];
        let buf = self
            .model
            .params_mut(g)
            .expect("a persistent group is installed");
        let ev = self.dev.upload(buf, 0, values)?;
        self.dev.wait(ev)?;
        self.counters.device_bytes_in += (values.len() * self.settings.train.dtype.bytes()) as u64;
        Ok(())
    }

    /// Writes group `gi`'s parameters (`values`, exactly the group) to the swap store, behind.
    pub(super) fn write_param_shard(
        &mut self,
        gi: usize,
        values: &HostParams,
    ) -> Result<(), EngineError> {
        let store = self.store.as_mut().expect("NVMe parameters have a store");
        let bytes = values.range_bytes(0..self.model.layout.groups[gi].1.len());
        self.queue
            .write_bytes(store, &mut self.rec, &tiers::param_shard(gi), bytes)
    }
}

/// Pool bytes as a host slice of the parameter dtype (pool buffers are page-aligned).
fn host_slice(dtype: ParamDtype, bytes: &[u8]) -> HostSlice<'_> {
    match dtype {
        ParamDtype::F32 => HostSlice::F32(bytemuck::cast_slice::<u8, f32>(bytes)),
        ParamDtype::F16 => HostSlice::F16(bytemuck::cast_slice::<u8, f16>(bytes)),
        ParamDtype::Bf16 => HostSlice::Bf16(bytemuck::cast_slice::<u8, bf16>(bytes)),
    }
}
