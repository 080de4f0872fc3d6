//! Gradients out of the device and the optimizer update of each group.
//!
//! A group's gradient buffer is installed (zeroed) just before its backward op and starts on
//! its way to the host right after (`grads_in` / `grads_out`): the copy runs while the next
//! stage computes, and the group is summed or updated at the next `grads_out` — on a GPU,
//! compute, the copy and the CPU Adam overlap. The device buffer and the host buffer belong to
//! the transfer until it is finished ([`crate::device::Download`]), so neither is reused
//! early. With several ranks the gradients are reduce-scattered first and only this rank's
//! part leaves the device. Across micro-batches the sums are formed on the host in fp32,
//! `((g_0 + g_1) + g_2) + ...` — the order of the resident trainer (bit-identical results),
//! and the order in which ranks' contributions are summed, so N ranks of one micro-batch each
//! equal one rank accumulating N bit for bit.
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

use super::{Engine, EngineError};
use crate::device::{Device, DeviceBuffer, Download};
use crate::model::{HostParams, Model};
use crate::optim::{Grad, ParamOut, StepScalars};
use crate::timeline::Track;
use std::ops::Range;
use std::time::Instant;
use zinf_swap::BlockIo;

impl<D: Device, B: BlockIo, M: Model<D>> Engine<D, B, M> {
    fn group_range(&self, gi: usize) -> Range<usize> {
        self.model.groups()[gi].range.clone()
    }

    /// Installs group `gi`'s gradient buffer, zeroed (this micro-batch's gradients alone; the
    /// host sums them). On the last micro-batch of a streaming step, starts reading the
    /// group's optimizer state so it arrives while backward computes.
    pub(super) fn grads_in(&mut self, gi: usize, last: bool) -> Result<(), EngineError> {
        let r = self.group_range(gi);
        let mut buf = self.take_buf(r.len(), "gradients", gi)?;
        self.dev.zero(&mut buf)?;
        self.model.install_grads(gi, buf);
        if last && self.streams() {
            if let Some(u) = self.tiers.layout().group_units[gi].clone().next() {
                self.prefetch_unit(u, true)?;
            }
        }
        Ok(())
    }

    /// Starts reading the first optimizer unit of the update after backward (the last
    /// group's first unit, or the first this rank owns).
    pub(super) fn prefetch_first_update_unit(&mut self) -> Result<(), EngineError> {
        // The last group's first unit; a rank that owns nothing of it starts with the next
        // group down that it owns some of.
        match self.tiers.layout().first_update_unit() {
            Some(u) => self.prefetch_unit(u, true),
            None => Ok(()),
        }
    }

    /// Starts group `gi`'s gradients on their way to the host (the copy runs while the next
    /// stage computes), then finishes the group before it: its gradients are summed into the
    /// host accumulators or, when they are final and the update streams (`streamed`: this
    /// step's scalars), it is updated. Groups are finished in the order they left, so the
    /// results are those of finishing each at once.
    pub(super) fn grads_out(
        &mut self,
        gi: usize,
        first: bool,
        streamed: Option<StepScalars>,
    ) -> Result<(), EngineError> {
        let mut buf = self.model.take_grads(gi).expect("grads_in installed it");
        if self.comm.is_some() {
            buf = self.reduce_scatter_grads(gi, buf)?;
        }
        let host = match self.grad_host.pop() {
            Some(h) => h,
            None => {
                self.grad_host_made += 1;
                let len = self.grad_host_len();
                self.dev
                    .alloc_host("gradients on their way to the host", len)?
            }
        };
        self.counters.device_bytes_out += buf.len() as u64 * 4;
        let transfer = self.dev.start_download(buf, host)?;
        let previous = self.grads_pending.replace(PendingGrads {
            gi,
            transfer,
            first,
            streamed,
        });
        if let Some(p) = previous {
            self.finish_grads(p)?;
        }
        if !self.dev.copies_overlap() {
            // Nothing would run while the copy does (the CPU copies at once): finish now and
            // keep one host buffer.
            self.finish_pending_grads()?;
        }
        Ok(())
    }

    /// Finishes the group whose gradients are still on their way (the end of backward).
    pub(super) fn finish_pending_grads(&mut self) -> Result<(), EngineError> {
        match self.grads_pending.take() {
            Some(p) => self.finish_grads(p),
            None => Ok(()),
        }
    }

    /// Waits for a group's gradients, gives its device buffer back, and sums or updates.
    fn finish_grads(&mut self, p: PendingGrads<D>) -> Result<(), EngineError> {
        let (buf, host) = self.dev.finish_download(p.transfer)?;
        self.free.push(buf);
        // This rank's part (the whole group on one rank).
        let r = self.tiers.layout().owned[p.gi].clone();
        let grads = &host[..r.len()];
        let res = match self.grads_acc.take() {
            Some(mut acc) => {
                let sums = &mut acc[r.clone()];
                if p.first {
                    sums.copy_from_slice(grads);
                } else {
                    sums.iter_mut().zip(grads).for_each(|(s, g)| *s += g);
                }
                let res = match p.streamed {
                    Some(scalars) => self.stream_update(p.gi, &acc[r], scalars),
                    None => Ok(()),
                };
                self.grads_acc = Some(acc);
                res
            }
            None => match p.streamed {
                Some(scalars) => self.stream_update(p.gi, grads, scalars),
                None => Ok(()),
            },
        };
        self.grad_host.push(host);
        res
    }

    fn stream_update(
        &mut self,
        gi: usize,
        grads: &[f32],
        scalars: StepScalars,
    ) -> Result<(), EngineError> {
        let stats = self.opt.adam.grad_stats(&[Grad::F32(grads)]);
        if stats.non_finite {
            return Err(EngineError::NonFinite {
                group: self.model.groups()[gi].name.clone(),
                step: self.steps + 1,
            });
        }
        self.step_sum_sq += stats.sum_sq;
        self.update_group(gi, grads, scalars)
    }

    /// The update after backward: every group, in backward order (the embeddings, which the
    /// next step fetches first, come last and are freshest).
    pub(super) fn update_all(&mut self, scalars: StepScalars) -> Result<(), EngineError> {
        let acc = self
            .grads_acc
            .take()
            .expect("kept whole when not streaming");
        let mut res = Ok(());
        for gi in (0..self.n_groups()).rev() {
            let r = self.tiers.layout().owned[gi].clone();
            res = self.update_group(gi, &acc[r], scalars);
            if res.is_err() {
                break;
            }
        }
        self.grads_acc = Some(acc);
        res
    }

    fn prefetch_unit(&mut self, u: usize, next: bool) -> Result<(), EngineError> {
        if self.settings.pipeline_read {
            self.tiers.prefetch_opt(u, next)?;
        }
        Ok(())
    }

    /// Adam on every unit of group `gi` with its gradients `grads` (this rank's part of the
    /// group: all of it on one rank), then the new parameters go home and to the device.
    fn update_group(
        &mut self,
        gi: usize,
        grads: &[f32],
        scalars: StepScalars,
    ) -> Result<(), EngineError> {
        let t = Instant::now();
        let g0 = self.tiers.layout().owned[gi].start;
        self.tiers.begin_group_update();
        for u in self.tiers.layout().group_units[gi].clone() {
            // Read ahead two units: the next one even if writes must finish first, the one
            // after only if the pool has room.
            if let Some(next) = self.tiers.layout().next_unit(u) {
                self.prefetch_unit(next, true)?;
                if let Some(after) = self.tiers.layout().next_unit(next) {
                    self.prefetch_unit(after, false)?;
                }
            }
            let r = self.tiers.layout().units[u].range.clone();
            let grad = &grads[r.start - g0..r.end - g0];
            let adam = &mut self.opt.adam;
            self.tiers
                .update_unit::<EngineError>(u, |master, m, v, out, out_range| {
                    adam.step(
                        master,
                        m,
                        v,
                        Grad::F32(grad),
                        param_out(out, out_range),
                        scalars,
                    )?;
                    Ok(())
                })?;
        }
        // New 16-bit values go home (written behind from the staging buffer, which keeps
        // them for the next fetch of this group when parameters live on NVMe).
        self.tiers.finish_group_update(gi)?;
        self.refresh_device_copy(gi)?;
        let end = Instant::now();
        self.counters.optimizer_s += (end - t).as_secs_f64();
        if self.tiers.rec.timeline.is_enabled() {
            let name = format!("adam {}", self.model.groups()[gi].name);
            self.tiers
                .rec
                .timeline
                .span(Track::Optimizer, &name, t, end);
        }
        Ok(())
    }
}

/// A group's gradients on their way from the device ([`Engine::grads_out`]).
pub(super) struct PendingGrads<D: Device> {
    gi: usize,
    transfer: Download<D>,
    /// The first micro-batch of the step: its gradients start the host sums.
    first: bool,
    /// This step's scalars when the group is updated as soon as its gradients arrive.
    streamed: Option<StepScalars>,
}

/// Where Adam writes the 16-bit copy of range `r` (nothing for fp32 parameters).
fn param_out(p: &mut HostParams, r: Range<usize>) -> ParamOut<'_> {
    match p {
        HostParams::F16(v) => ParamOut::F16(&mut v[r]),
        HostParams::Bf16(v) => ParamOut::Bf16(&mut v[r]),
        HostParams::F32(_) => ParamOut::None,
    }
}
