//! Fetch, release and prefetch of parameter groups, and the device buffers they live in.
//!
//! `fetch` puts a group's fp32 working copy on the device (uploaded from the freshest host
//! copy the tiers hold: host array, staging buffer, cache, a pending write's pool buffer, or
//! the disk) and reads ahead along the recorded trace: NVMe -> pinned pool for the next groups,
//! bounded by `stage3_prefetch_bucket_size`, `stage3_max_live_parameters` and the pool.
//! `release` drops the group unless it is persistent or used again within
//! `stage3_max_reuse_distance`. Device buffers are reused by length, so after the first step
//! nothing is allocated; a fetch that hits the device memory budget first evicts what is kept.
//! The device state of every group lives in the tiers' residency table.

use super::{Engine, EngineError};
use crate::device::{Device, DeviceBuffer, DeviceError};
use crate::model::Model;
use crate::tiers::OnDevice;
use zinf_swap::BlockIo;

impl<D: Device, B: BlockIo, M: Model<D>> Engine<D, B, M> {
    pub(super) fn numel(&self, gi: usize) -> usize {
        self.model.groups()[gi].range.len()
    }

    pub(super) fn n_groups(&self) -> usize {
        self.model.groups().len()
    }

    fn on_device(&self, gi: usize) -> OnDevice {
        self.tiers.device.get(gi)
    }

    /// Puts group `gi`'s parameters on the device (a no-op when they are there) and starts
    /// reading the next groups of the trace.
    pub(super) fn fetch(&mut self, gi: usize) -> Result<(), EngineError> {
        self.trace.record(gi);
        if self.on_device(gi) == OnDevice::Off {
            self.bring_in(gi)?;
            self.counters.device_fetches += 1;
        } else {
            self.counters.device_hits += 1;
        }
        self.tiers.device.set(gi, OnDevice::InUse);
        self.prefetch_ahead()
    }

    /// Releases group `gi` after its op: kept when persistent or reused soon, else dropped.
    pub(super) fn release(&mut self, gi: usize) {
        if self.persistent[gi] {
            self.tiers.device.set(gi, OnDevice::Kept);
            return;
        }
        let max = self.settings.max_reuse_distance;
        let groups = self.model.groups();
        let d = self.trace.reuse_distance(gi, |j| groups[j].range.len());
        if d.is_some_and(|d| d <= max) {
            self.tiers.device.set(gi, OnDevice::Kept);
        } else {
            self.evict(gi);
        }
    }

    /// Releases every group still in use (the end of an evaluation pass, which has no
    /// backward to release what the forward's last stages keep).
    pub(super) fn release_all_in_use(&mut self) {
        for gi in 0..self.n_groups() {
            if self.on_device(gi) == OnDevice::InUse {
                self.release(gi);
            }
        }
    }

    fn evict(&mut self, gi: usize) {
        if let Some(buf) = self.model.take_params(gi) {
            self.free.push(buf);
        }
        self.tiers.device.set(gi, OnDevice::Off);
    }

    /// Evicts every kept group that is not persistent; true when one was evicted.
    fn evict_kept(&mut self) -> bool {
        let kept: Vec<usize> = self.tiers.device.in_state(OnDevice::Kept).collect();
        let mut any = false;
        for gi in kept {
            if !self.persistent[gi] {
                self.evict(gi);
                any = true;
            }
        }
        any
    }

    /// Elements of parameters on the device now.
    fn live_numel(&self) -> u64 {
        (0..self.n_groups())
            .filter(|&gi| self.on_device(gi) != OnDevice::Off)
            .map(|gi| self.numel(gi) as u64)
            .sum()
    }

    /// A device buffer of `len` elements for `kind` ("parameters", "gradients") of group `gi`:
    /// a given-back one of that length, or a new one. Over the budget, buffers held for reuse
    /// and kept groups are given up first.
    pub(super) fn take_buf(
        &mut self,
        len: usize,
        kind: &str,
        gi: usize,
    ) -> Result<D::Buffer, EngineError> {
        if let Some(i) = self.free.iter().position(|b| b.len() == len) {
            return Ok(self.free.swap_remove(i));
        }
        // Named only when memory is really allocated.
        let what = format!("{kind} {}", self.model.groups()[gi].name);
        loop {
            match self.dev.alloc(&what, len) {
                Ok(b) => return Ok(b),
                Err(DeviceError::OutOfBudget { .. }) if !self.free.is_empty() => self.free.clear(),
                Err(DeviceError::OutOfBudget { .. }) if self.evict_kept() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Fills a device buffer with group `gi`'s parameters from the tiers and installs it.
    fn bring_in(&mut self, gi: usize) -> Result<(), EngineError> {
        let len = self.numel(gi);
        if self.live_numel() + len as u64 > self.settings.max_live_parameters {
            self.evict_kept();
        }
        let mut buf = self.take_buf(len, "parameters", gi)?;
        if self.comm.is_some() {
            self.gather_group(gi, &mut buf)?;
        } else {
            self.upload_own_part(gi, &mut buf)?;
        }
        self.model.install_params(gi, buf);
        Ok(())
    }

    /// Uploads this rank's part of group `gi` (the whole group on one rank) from the tiers'
    /// freshest copy into `buf` from element 0, each chunk waited before the tiers reuse its
    /// source.
    pub(super) fn upload_own_part(
        &mut self,
        gi: usize,
        buf: &mut D::Buffer,
    ) -> Result<(), EngineError> {
        let dev = &self.dev;
        self.tiers.upload_params::<EngineError>(gi, |at, chunk| {
            let ev = dev.upload(buf, at, chunk)?;
            dev.wait(ev)?;
            Ok(())
        })?;
        let owned = self.tiers.layout().owned[gi].len();
        self.counters.device_bytes_in += (owned * self.settings.train.dtype.bytes()) as u64;
        Ok(())
    }

    /// Starts NVMe reads of the groups the trace says come next, within the bounds.
    fn prefetch_ahead(&mut self) -> Result<(), EngineError> {
        if !self.tiers.params_on_nvme() {
            return Ok(());
        }
        let live = self.live_numel();
        let Engine {
            model,
            tiers,
            trace,
            settings,
            ..
        } = self;
        let numel = |gi: usize| model.groups()[gi].range.len() as u64;
        let mut ahead: u64 = tiers.param_reads_in_flight().map(numel).sum();
        let mut live = live + ahead;
        for &gi in trace.upcoming() {
            // On the device, in flight, or served from a host copy: nothing to read.
            if tiers.device.get(gi) != OnDevice::Off || !tiers.param_read_needed(gi)? {
                continue;
            }
            let n = numel(gi);
            let first = ahead == 0;
            if !first && ahead + n > settings.prefetch_bucket_size {
                break;
            }
            if live + n > settings.max_live_parameters {
                break;
            }
            if !tiers.prefetch_params(gi, first)? {
                break; // the pool is full now; the demand read will wait its turn
            }
            ahead += n;
            live += n;
        }
        Ok(())
    }

    /// Brings every persistent group onto the device (start-up, and after a resume).
    pub(super) fn load_persistent(&mut self) -> Result<(), EngineError> {
        for gi in 0..self.n_groups() {
            if self.persistent[gi] && self.on_device(gi) == OnDevice::Off {
                self.bring_in(gi)?;
                self.tiers.device.set(gi, OnDevice::InUse);
                self.tiers.device.set(gi, OnDevice::Kept);
            }
        }
        Ok(())
    }

    /// After group `gi`'s update: a persistent copy on the device is refreshed from the new
    /// values in host memory; any other copy is dropped, so the next fetch reads the new
    /// version.
    pub(super) fn refresh_device_copy(&mut self, gi: usize) -> Result<(), EngineError> {
        if self.on_device(gi) == OnDevice::Off {
            return Ok(());
        }
        if !self.persistent[gi] {
            self.evict(gi);
            return Ok(());
        }
        if self.comm.is_some() {
            // Every rank updated its part: gather the new group.
            let mut buf = self
                .model
                .take_params(gi)
                .expect("a persistent group is installed");
            let res = self.gather_group(gi, &mut buf);
            self.model.install_params(gi, buf);
            return res;
        }
        let values = self.tiers.updated_params(gi);
        let buf = self
            .model
            .params_mut(gi)
            .expect("a persistent group is installed");
        let ev = self.dev.upload(buf, 0, values)?;
        self.dev.wait(ev)?;
        self.counters.device_bytes_in += (values.len() * self.settings.train.dtype.bytes()) as u64;
        Ok(())
    }
}
