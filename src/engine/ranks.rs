//! ZeRO-3 across data-parallel ranks: what the engine does with its [`Collective`] when there
//! are several ranks (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
//! Parameter Models", 2020, §5.3; DeepSpeed's `deepspeed/runtime/zero/stage3.py`).
//!
//! - A group's parameters live partitioned: rank `r` keeps elements `Partition::owned` of it
//!   in its tiers. Fetching the group uploads this rank's part into a device buffer of
//!   `per = ceil(len / world)` elements (zero tail when the part is shorter) and all-gathers
//!   the parts into the whole group (through a `per × world` buffer when that exceeds the
//!   group's length, as DeepSpeed pads its partitions).
//! - After a group's backward its gradients are reduce-scattered: each rank keeps the sum over
//!   ranks (in rank order) of its own part, and only that part leaves the device.
//! - Scalars every rank needs (the step's losses, the gradient statistics) are exchanged
//!   exactly: each rank puts its values in its own slots of a zeroed vector and the vector is
//!   all-reduced (`x + 0 = x`), so every rank sums the same values in the same order and a
//!   run's reports do not depend on the world size beyond the sums themselves.
//! - The data: rank `r` of `W` with `G` accumulation steps takes micro-batches
//!   `s·G·W + r·G .. + G` of the seeded stream in step `s` — a disjoint share of every global
//!   batch, so world 2 sees exactly the samples world 1 with twice the accumulation sees.

use super::{Engine, EngineError};
use crate::device::{Device, HostSlice};
use crate::dist::{Collective, DistError};
use crate::model::Model;
use crate::optim::GradStats;
use zinf_swap::BlockIo;

impl From<DistError> for EngineError {
    fn from(e: DistError) -> Self {
        EngineError::Dist(e.to_string())
    }
}

/// Elements of each rank's padded part of a group of `len` elements on `world` ranks.
pub(super) fn part_len(len: usize, world: usize) -> usize {
    len.div_ceil(world.max(1))
}

impl<D: Device, B: BlockIo, M: Model<D>> Engine<D, B, M> {
    /// Ranks in the data-parallel group (1 without a collective).
    pub fn world_size(&self) -> usize {
        self.settings.partition.world_size
    }

    /// This rank, `0..world_size`.
    pub fn rank(&self) -> usize {
        self.settings.partition.rank
    }

    /// Elements of a host buffer for gradients on their way out: the largest group, or with
    /// a collective the largest part of one (only that part leaves the device).
    pub(super) fn grad_host_len(&self) -> usize {
        let layout = self.tiers.layout();
        match self.comm {
            Some(_) => layout
                .groups
                .iter()
                .map(|g| part_len(g.len(), self.world_size()))
                .max()
                .unwrap_or(0),
            None => layout.max_group_len(),
        }
    }

    fn comm(&self) -> &dyn Collective<D> {
        self.comm
            .as_deref()
            .expect("called only when the engine has a collective")
    }

    /// Fills `buf` (group `gi`'s length) with the whole group: this rank's part from the
    /// tiers, every other rank's by all-gather.
    pub(super) fn gather_group(
        &mut self,
        gi: usize,
        buf: &mut D::Buffer,
    ) -> Result<(), EngineError> {
        let len = self.numel(gi);
        let world = self.world_size();
        let per = part_len(len, world);
        let owned = self.tiers.layout().owned[gi].len();
        let mut part = self.take_buf(per, "parameters (this rank's part)", gi)?;
        if owned < per {
            self.dev.zero(&mut part)?;
        }
        self.upload_own_part(gi, &mut part)?;
        if per * world == len {
            self.comm().all_gather(&self.dev, &part, 0, per, buf, 0)?;
        } else {
            let mut padded = self.take_buf(per * world, "parameters (gathered, padded)", gi)?;
            self.comm()
                .all_gather(&self.dev, &part, 0, per, &mut padded, 0)?;
            self.dev.copy(buf, 0, &padded, 0, len)?;
            self.free.push(padded);
        }
        self.counters.collective_bytes += (per * (world - 1) * 4) as u64;
        self.free.push(part);
        Ok(())
    }

    /// Reduce-scatters group `gi`'s gradients (`grads`, the whole group): returns a buffer
    /// of `ceil(len / world)` elements whose first `owned` hold the sum over ranks of this
    /// rank's part. `grads` is given back to the free list.
    pub(super) fn reduce_scatter_grads(
        &mut self,
        gi: usize,
        grads: D::Buffer,
    ) -> Result<D::Buffer, EngineError> {
        let len = self.numel(gi);
        let world = self.world_size();
        let per = part_len(len, world);
        let mut part = self.take_buf(per, "gradients (this rank's part)", gi)?;
        if per * world == len {
            self.comm()
                .reduce_scatter(&self.dev, &grads, 0, per, &mut part, 0)?;
        } else {
            let mut padded = self.take_buf(per * world, "gradients (padded)", gi)?;
            self.dev.zero(&mut padded)?;
            self.dev.copy(&mut padded, 0, &grads, 0, len)?;
            self.comm()
                .reduce_scatter(&self.dev, &padded, 0, per, &mut part, 0)?;
            self.free.push(padded);
        }
        self.counters.collective_bytes += (per * (world - 1) * 4) as u64;
        self.free.push(grads);
        Ok(part)
    }

    /// Every rank's `mine` (the same length on each), rank-major: `out[r * n + i]` is rank
    /// `r`'s `mine[i]`, exact. Without a collective: `mine` itself.
    pub(super) fn gather_values(&mut self, mine: &[f32]) -> Result<Vec<f32>, EngineError> {
        let world = self.world_size();
        if self.comm.is_none() {
            return Ok(mine.to_vec());
        }
        let n = mine.len();
        let mut all = vec![0.0f32; n * world];
        let r = self.rank();
        all[r * n..(r + 1) * n].copy_from_slice(mine);
        let mut buf = self.dev.alloc("exchanged values", all.len())?;
        self.dev
            .wait(self.dev.upload(&mut buf, 0, HostSlice::F32(&all))?)?;
        self.comm().all_reduce(&self.dev, &mut buf, 0, all.len())?;
        self.dev.wait(self.dev.download(&buf, 0, &mut all)?)?;
        Ok(all)
    }

    /// The gradient statistics of all ranks from this rank's (`mine`): sums of squares added
    /// in rank order, non-finite when any rank's is. Without a collective: `mine`.
    pub(super) fn global_stats(&mut self, mine: GradStats) -> Result<GradStats, EngineError> {
        if self.comm.is_none() {
            return Ok(mine);
        }
        let mut v = f64_to_exact_f32s(mine.sum_sq).to_vec();
        v.push(if mine.non_finite { 1.0 } else { 0.0 });
        let all = self.gather_values(&v)?;
        let mut sum_sq = 0.0f64;
        let mut non_finite = false;
        for r in all.chunks_exact(v.len()) {
            sum_sq += f64_from_exact_f32s([r[0], r[1], r[2], r[3]]);
            non_finite |= r[4] != 0.0;
        }
        Ok(GradStats { sum_sq, non_finite })
    }

    /// Whether any rank says `flag` (a stop asked for on one rank ends every rank after the
    /// same step). Without a collective: `flag`.
    pub fn any_rank(&mut self, flag: bool) -> Result<bool, EngineError> {
        let all = self.gather_values(&[if flag { 1.0 } else { 0.0 }])?;
        Ok(all.iter().any(|&v| v != 0.0))
    }

    /// Group `gi`'s whole parameters as stored (the run's dtype, little-endian), gathered
    /// from every rank's part through the device (widening to fp32 and back is exact). Every
    /// rank calls it for the same groups in the same order. Without a collective: the tiers' copy.
    pub fn gathered_group_bytes(&mut self, gi: usize) -> Result<Vec<u8>, EngineError> {
        if self.comm.is_none() {
            return self.param_group_bytes(gi);
        }
        let len = self.numel(gi);
        let mut buf = self.take_buf(len, "parameters (export)", gi)?;
        let res = self.gather_group(gi, &mut buf);
        let mut values = vec![0.0f32; len];
        let res = res.and_then(|()| {
            let ev = self.dev.download(&buf, 0, &mut values)?;
            Ok(self.dev.wait(ev)?)
        });
        self.free.push(buf);
        res?;
        let stored = crate::model::HostParams::from_f32(self.settings.train.dtype, &values);
        Ok(stored.range_bytes(0..len).to_vec())
    }

    /// Returns once every rank has called it (one rank: at once).
    pub(super) fn barrier(&mut self) -> Result<(), EngineError> {
        if self.comm.is_some() {
            self.comm().barrier(&self.dev)?;
        }
        Ok(())
    }

    /// Advances the data stream past `n` micro-batches of other ranks.
    pub(super) fn skip_batches(&mut self, n: usize) {
        for _ in 0..n {
            self.batcher.next_batch(&self.data.train);
            self.batches_drawn += 1;
        }
    }
}

/// An f64's bits as four f32s, each an integer below 2^16 (exactly representable, and
/// unchanged by adding zeros).
fn f64_to_exact_f32s(x: f64) -> [f32; 4] {
    let b = x.to_bits();
    std::array::from_fn(|i| ((b >> (16 * i)) & 0xffff) as f32)
}

fn f64_from_exact_f32s(p: [f32; 4]) -> f64 {
    let b = p
        .iter()
        .enumerate()
        .fold(0u64, |b, (i, &v)| b | ((v as u64) << (16 * i)));
    f64::from_bits(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64s_survive_the_exact_exchange() {
        for x in [
            0.0,
            -0.0,
            1.0,
            1e-300,
            3.5e300,
            f64::NAN,
            f64::INFINITY,
            123.456,
        ] {
            let back = f64_from_exact_f32s(f64_to_exact_f32s(x));
            assert_eq!(back.to_bits(), x.to_bits());
        }
        assert_eq!(part_len(10, 4), 3);
        assert_eq!(part_len(8, 4), 2);
        assert_eq!(part_len(0, 3), 0);
    }
}
