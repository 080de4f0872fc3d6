//! Gradients out of the device and the optimizer update of each group.
//!
//! A group's gradient buffer is installed just before its backward op and downloaded right
//! after (`grads_in` / `grads_out`). Across micro-batches the host copy is uploaded again
//! before the next backward adds to it, so the sums are formed in exactly the order of the
//! resident trainer's device buffers (bit-identical results) and are fp32 throughout.
//!
//! The update is Adam on each optimizer unit of the group, in host memory or through pool
//! buffers of the swap store (read ahead one unit, written behind). Two schedules, one rule:
//! - **streaming** (no clipping, no fp16): the grad scale does not depend on the global norm,
//!   so a group is updated as soon as its last micro-batch's gradients are out, while backward
//!   continues with the next group; its optimizer state was read while its backward computed.
//! - **after backward** (clipping or fp16): the global norm (and the overflow check) needs
//!   every gradient first, so gradients are kept whole in host memory and the update runs once
//!   backward ends, units pipelined. zinf waits rather than speculates: a speculative update
//!   would need the old state back on a clip or an overflow, i.e. a second copy of all of it.

use super::tiers::{self, Shards, Unit};
use super::timeline::Track;
use super::{Engine, EngineError, OptHome, ParamHome};
use crate::device::{Device, HostSlice};
use crate::model::{Group, HostParams};
use crate::optim::{combined_grad_scale, Grad, ParamOut, StepScalars};
use std::ops::Range;
use std::time::Instant;
use zinf_swap::BlockIo;

impl<D: Device, B: BlockIo> Engine<D, B> {
    fn group_range(&self, gi: usize) -> Range<usize> {
        self.model.layout.groups[gi].1.clone()
    }

    /// Installs group `g`'s gradient buffer: zeros on the first micro-batch, else the sums so
    /// far. On the last micro-batch of a streaming step, starts reading the group's optimizer
    /// state so it arrives while backward computes.
    pub(super) fn grads_in(&mut self, g: Group, mb: usize, last: bool) -> Result<(), EngineError> {
        let gi = self.model.group_index(g);
        let r = self.group_range(gi);
        let mut buf = self.take_buf(r.len(), || format!("gradients {g:?}"))?;
        match &self.grads_acc {
            Some(acc) if mb > 0 => {
                let ev = self
                    .dev
                    .upload(&mut buf, 0, HostSlice::F32(&acc[r.clone()]))?;
                self.dev.wait(ev)?;
                self.counters.device_bytes_in += r.len() as u64 * 4;
            }
            _ => self.dev.zero(&mut buf)?,
        }
        self.model.install_grads(g, buf);
        if last && self.streams() {
            if let Some(u) = self.group_units[gi].clone().next() {
                self.prefetch_unit(u, true)?;
            }
        } else if last && g == Group::Block(0) {
            // After backward the update starts with the last group: its state is read now,
            // while the first block's backward computes.
            let u = self.group_units[self.groups.len() - 1].start;
            self.prefetch_unit(u, true)?;
        }
        Ok(())
    }

    /// Downloads group `g`'s gradients; when they are final and the update streams, updates
    /// the group now.
    pub(super) fn grads_out(&mut self, g: Group, last: bool, lr: f64) -> Result<(), EngineError> {
        let gi = self.model.group_index(g);
        let r = self.group_range(gi);
        let buf = self.model.take_grads(g).expect("grads_in installed it");
        let mut host = match self.grads_acc.take() {
            Some(acc) => GradHost::Acc(acc),
            None => GradHost::Scratch(std::mem::take(&mut self.grad_scratch)),
        };
        let dst = host.slice_mut(r.clone());
        let ev = self.dev.download(&buf, 0, dst)?;
        self.dev.wait(ev)?;
        self.counters.device_bytes_out += r.len() as u64 * 4;
        self.free.push(buf);
        let res = if last && self.streams() {
            self.stream_update(gi, host.slice(r), lr)
        } else {
            Ok(())
        };
        match host {
            GradHost::Acc(a) => self.grads_acc = Some(a),
            GradHost::Scratch(s) => self.grad_scratch = s,
        }
        res
    }

    fn stream_update(&mut self, gi: usize, grads: &[f32], lr: f64) -> Result<(), EngineError> {
        let stats = self.adam.grad_stats(&[Grad::F32(grads)]);
        if stats.non_finite {
            return Err(EngineError::NonFinite {
                group: format!("{:?}", self.groups[gi]),
                step: self.steps + 1,
            });
        }
        self.step_sum_sq += stats.sum_sq;
        let loss_scale = self.scaler.scale();
        let scalars = StepScalars {
            lr: lr as f32,
            step: self.applied_steps,
            grad_scale: combined_grad_scale(0.0, 0.0, loss_scale),
        };
        self.update_group(gi, grads, scalars)
    }

    /// The update after backward: every group, in backward order (the embeddings, which the
    /// next step fetches first, come last and are freshest).
    pub(super) fn update_all(
        &mut self,
        lr: f64,
        scaled_norm: f64,
        loss_scale: f64,
    ) -> Result<(), EngineError> {
        let scalars = StepScalars {
            lr: lr as f32,
            step: self.applied_steps,
            grad_scale: combined_grad_scale(
                scaled_norm,
                self.settings.train.gradient_clipping,
                loss_scale,
            ),
        };
        let acc = self
            .grads_acc
            .take()
            .expect("kept whole when not streaming");
        let mut res = Ok(());
        for gi in (0..self.groups.len()).rev() {
            let r = self.group_range(gi);
            res = self.update_group(gi, &acc[r], scalars);
            if res.is_err() {
                break;
            }
        }
        self.grads_acc = Some(acc);
        res
    }

    /// The unit after `u` in update order (a group's units ascending, groups descending).
    fn next_unit(&self, u: usize) -> Option<usize> {
        let gi = self.units[u].group;
        if u + 1 < self.group_units[gi].end {
            return Some(u + 1);
        }
        (gi > 0).then(|| self.group_units[gi - 1].start)
    }

    fn prefetch_unit(&mut self, u: usize, next: bool) -> Result<(), EngineError> {
        if let (OptHome::Nvme, Some(store)) = (&self.opt, self.store.as_mut()) {
            if self.settings.pipeline_read {
                self.queue
                    .prefetch(store, &mut self.rec, Shards::Opt(u), next)?;
            }
        }
        Ok(())
    }

    /// Adam on every unit of group `gi` with its gradients `grads` (the whole group), then the
    /// new parameters go home and to the device.
    fn update_group(
        &mut self,
        gi: usize,
        grads: &[f32],
        scalars: StepScalars,
    ) -> Result<(), EngineError> {
        let t = Instant::now();
        let g0 = self.group_range(gi).start;
        self.staged_group = None; // the staging buffer is about to hold this group
        for u in self.group_units[gi].clone() {
            // Read ahead two units: the next one even if writes must finish first, the one
            // after only if the pool has room.
            if let Some(next) = self.next_unit(u) {
                self.prefetch_unit(next, true)?;
                if let Some(after) = self.next_unit(next) {
                    self.prefetch_unit(after, false)?;
                }
            }
            let unit = self.units[u].clone();
            let rel = unit.range.start - g0..unit.range.end - g0;
            self.update_unit(u, &unit, &grads[rel], scalars)?;
        }
        if let ParamHome::Nvme { staging } = &self.params {
            // The new 16-bit values go out from the staging buffer, which keeps them for the
            // next fetch of this group (`staged_group`).
            let bytes = staging.range_bytes(0..grads.len());
            let store = self.store.as_mut().expect("NVMe parameters have a store");
            let name = tiers::param_shard(gi);
            self.queue.write_bytes(store, &mut self.rec, &name, bytes)?;
            if let Some(c) = &mut self.param_cache[gi] {
                c.set_range_bytes(0, bytes);
            }
            self.staged_group = Some(gi);
        }
        self.refresh_device_copy(gi)?;
        let end = Instant::now();
        self.counters.optimizer_s += (end - t).as_secs_f64();
        if self.rec.timeline.is_enabled() {
            let name = format!("adam {:?}", self.groups[gi]);
            self.rec.timeline.span(Track::Optimizer, &name, t, end);
        }
        Ok(())
    }

    /// Adam on one unit: its state from host memory or the store, its 16-bit copy-out into the
    /// parameters' home (the staging buffer when they live on NVMe).
    fn update_unit(
        &mut self,
        u: usize,
        unit: &Unit,
        grad: &[f32],
        scalars: StepScalars,
    ) -> Result<(), EngineError> {
        let g0 = self.group_range(unit.group).start;
        let Engine {
            params,
            opt,
            adam,
            store,
            queue,
            rec,
            ..
        } = self;
        let (out_params, out_range) = match params {
            ParamHome::Host(hp) => (hp, unit.range.clone()),
            ParamHome::Nvme { staging } => (staging, unit.range.start - g0..unit.range.end - g0),
        };
        match opt {
            OptHome::Host { master, m, v } => {
                let r = unit.range.clone();
                let master = &mut master[r.clone()];
                let out = param_out(out_params, out_range.clone());
                adam.step(
                    master,
                    &mut m[r.clone()],
                    &mut v[r],
                    Grad::F32(grad),
                    out,
                    scalars,
                )?;
                copy_fp32(out_params, out_range, master);
            }
            OptHome::Nvme => {
                let store = store.as_mut().expect("NVMe optimizer state has a store");
                let mut bufs = queue.read(store, rec, Shards::Opt(u))?;
                {
                    let [a, b, c] = &mut bufs[..] else {
                        unreachable!("three state tensors")
                    };
                    let master: &mut [f32] = bytemuck::cast_slice_mut(a.chunk_mut(0));
                    let m: &mut [f32] = bytemuck::cast_slice_mut(b.chunk_mut(0));
                    let v: &mut [f32] = bytemuck::cast_slice_mut(c.chunk_mut(0));
                    let out = param_out(out_params, out_range.clone());
                    adam.step(master, m, v, Grad::F32(grad), out, scalars)?;
                    copy_fp32(out_params, out_range, master);
                }
                for (t, buf) in bufs.into_iter().enumerate() {
                    queue.write(store, rec, &tiers::opt_shard(u, t), buf)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the initial fp32 master of group `gi` (`master`, the whole group) to the store;
    /// m and v start as the store's zeros.
    pub(super) fn write_master_shards(
        &mut self,
        gi: usize,
        master: &[f32],
    ) -> Result<(), EngineError> {
        let g0 = self.group_range(gi).start;
        for u in self.group_units[gi].clone() {
            let r = self.units[u].range.clone();
            let store = self
                .store
                .as_mut()
                .expect("NVMe optimizer state has a store");
            let bytes = bytemuck::cast_slice(&master[r.start - g0..r.end - g0]);
            self.queue
                .write_bytes(store, &mut self.rec, &tiers::opt_shard(u, 0), bytes)?;
        }
        Ok(())
    }
}

/// The host gradient buffer a download lands in.
enum GradHost {
    /// Whole-model accumulators (indexed by flat range).
    Acc(Vec<f32>),
    /// One group's scratch (indexed from 0).
    Scratch(Vec<f32>),
}

impl GradHost {
    fn slice_mut(&mut self, r: Range<usize>) -> &mut [f32] {
        match self {
            GradHost::Acc(a) => &mut a[r],
            GradHost::Scratch(s) => &mut s[..r.len()],
        }
    }

    fn slice(&self, r: Range<usize>) -> &[f32] {
        match self {
            GradHost::Acc(a) => &a[r],
            GradHost::Scratch(s) => &s[..r.len()],
        }
    }
}

/// Where Adam writes the 16-bit copy of range `r` (nothing for fp32 parameters).
fn param_out(p: &mut HostParams, r: Range<usize>) -> ParamOut<'_> {
    match p {
        HostParams::F16(v) => ParamOut::F16(&mut v[r]),
        HostParams::Bf16(v) => ParamOut::Bf16(&mut v[r]),
        HostParams::F32(_) => ParamOut::None,
    }
}

/// fp32 parameters are the master itself.
fn copy_fp32(p: &mut HostParams, r: Range<usize>, master: &[f32]) {
    if let HostParams::F32(v) = p {
        v[r].copy_from_slice(master);
    }
}
