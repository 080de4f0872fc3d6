//! Where each shard of state sits in the store, and how optimizer state is cut into units:
//! the names of the store's shards, and the unit list both the engine and `zinf estimate`
//! use (so the estimate counts the same units, the same padding and the same bytes).
//!
//! Model-agnostic: a group is a range of the flat parameter array, nothing more.

use crate::host::ParamDtype;
use std::ops::Range;
use zinf_swap::ShardSpec;

/// Names of the optimizer state tensors of a unit, in order (master, m, v); DeepSpeed's
/// `fp32` master and Adam's `exp_avg` / `exp_avg_sq` (torch.optim.Adam state names).
pub const OPT_STATES: [&str; 3] = ["fp32", "exp_avg", "exp_avg_sq"];

/// One optimizer unit: whole tensors of one parameter group grouped up to `sub_group_size`
/// elements (DeepSpeed's sub-group), or a piece of a tensor larger than that. Units are what
/// the optimizer reads, updates and writes in one go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Index of the group in layout order.
    pub group: usize,
    /// Element range in the flat parameter array.
    pub range: Range<usize>,
}

/// Everything the tiers need to know of a model: its groups, this rank's optimizer units and
/// the parameters' storage dtype.
#[derive(Clone, Debug)]
pub struct TierLayout {
    /// Flat element range of every group, layout order; they tile `0..total`.
    pub groups: Vec<Range<usize>>,
    /// The part of every group this rank owns (its ZeRO-3 partition, flat elements; the whole
    /// group on one rank): the parameter home holds these elements only.
    pub owned: Vec<Range<usize>>,
    /// Optimizer units of the partition this rank owns, in layout order.
    pub units: Vec<Unit>,
    /// Units of each group (indices into `units`).
    pub group_units: Vec<Range<usize>>,
    /// Storage dtype of parameters (fp16/bf16, or fp32 when neither is on).
    pub dtype: ParamDtype,
    /// Elements per unit at most (DeepSpeed `sub_group_size`, at least 1).
    pub sub_group_size: u64,
    /// Elements of the flat parameter array.
    pub total: usize,
}

impl TierLayout {
    /// Cuts the `owned` part of every group (this rank's partition) into units of at most
    /// `sub_group_size` elements, as DeepSpeed forms sub-groups
    /// (`deepspeed/runtime/zero/stage3.py`, `_create_fp16_sub_groups`): whole tensors are
    /// grouped in order until the next one would not fit; a tensor larger than
    /// `sub_group_size` is cut into pieces of that size (DeepSpeed keeps it whole; the store
    /// can move any range, and a bounded unit keeps the pinned pool bounded). `tensor_starts`
    /// are the flat offsets where tensors begin (empty: each group is one tensor). So the unit
    /// count is at most tensors + elements ÷ `sub_group_size`: the session raises a tiny
    /// `sub_group_size` to [`MIN_SUB_GROUP_SIZE`] so it stays linear in the model.
    pub fn new(
        groups: Vec<Range<usize>>,
        tensor_starts: &[usize],
        owned: impl Fn(Range<usize>) -> Range<usize>,
        sub_group_size: u64,
        dtype: ParamDtype,
    ) -> Self {
        let size = usize::try_from(sub_group_size.max(1)).unwrap_or(usize::MAX);
        let mut units = Vec::new();
        let mut group_units = Vec::with_capacity(groups.len());
        let owned: Vec<Range<usize>> = groups.iter().map(|g| owned(g.clone())).collect();
        for (gi, r) in owned.iter().enumerate() {
            let first = units.len();
            for range in cut_units(r.clone(), tensor_starts, size) {
                units.push(Unit { group: gi, range });
            }
            group_units.push(first..units.len());
        }
        let total = groups.last().map_or(0, |g| g.end);
        TierLayout {
            groups,
            owned,
            units,
            group_units,
            dtype,
            sub_group_size: size as u64,
            total,
        }
    }

    /// Elements of group `gi`.
    pub fn numel(&self, gi: usize) -> usize {
        self.groups[gi].len()
    }

    /// Elements of the largest group (a gathered group on the device).
    pub fn max_group_len(&self) -> usize {
        self.groups.iter().map(|g| g.len()).max().unwrap_or(0)
    }

    /// Elements of the largest owned part of a group (the staging buffer's size, and the
    /// largest parameter shard of this rank).
    pub fn max_owned_len(&self) -> usize {
        self.owned.iter().map(|g| g.len()).max().unwrap_or(0)
    }

    /// This rank's parts of the flat parameter array, adjacent parts merged (one span, the
    /// whole array, on one rank).
    pub fn owned_spans(&self) -> Vec<Range<usize>> {
        let mut spans: Vec<Range<usize>> = Vec::new();
        for r in self.owned.iter().filter(|r| !r.is_empty()) {
            match spans.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => spans.push(r.clone()),
            }
        }
        spans
    }

    /// Elements of the largest unit.
    pub fn max_unit_len(&self) -> usize {
        self.units.iter().map(|u| u.range.len()).max().unwrap_or(0)
    }

    /// The unit after `u` in update order (a group's units ascending, groups descending:
    /// backward's order, so the embeddings, which the next step fetches first, come last).
    pub fn next_unit(&self, u: usize) -> Option<usize> {
        let gi = self.units[u].group;
        if u + 1 < self.group_units[gi].end {
            return Some(u + 1);
        }
        // The next group down this rank owns some of (a rank's part of a small group can be
        // empty).
        (0..gi)
            .rev()
            .find_map(|g| self.group_units[g].clone().next())
    }

    /// The first unit in update order (of the last group this rank owns some of).
    pub fn first_update_unit(&self) -> Option<usize> {
        self.group_units.iter().rev().find_map(|u| u.clone().next())
    }

    /// Bytes per chunk of the store for this layout (see [`chunk_bytes`]).
    pub fn chunk_bytes(&self, configured: u64) -> u64 {
        chunk_bytes(configured, self.max_unit_len() as u64)
    }

    /// Store bytes of this rank's parameter shard of every group, padded as the store moves
    /// them: one step's parameter writes when they live on NVMe.
    pub fn param_store_bytes(&self, chunk: u64) -> u64 {
        let d = self.dtype.bytes() as u64;
        self.owned
            .iter()
            .map(|g| store_bytes(g.len() as u64 * d, chunk))
            .sum()
    }

    /// Store bytes of every unit's three fp32 state shards, padded as the store moves them:
    /// one step's optimizer reads, and its writes, when the state lives on NVMe.
    pub fn opt_store_bytes(&self, chunk: u64) -> u64 {
        self.units
            .iter()
            .map(|u| 3 * store_bytes(u.range.len() as u64 * 4, chunk))
            .sum()
    }

    /// The fewest pinned-pool bytes that can serve this layout: the largest set of buffers
    /// the engine holds at once for one request — a group's parameter shard (parameters on
    /// NVMe), or a unit's three fp32 state shards (optimizer on NVMe) — each chunk of `chunk`
    /// bytes reserved as the aio pool of `pool_capacity` bytes reserves it
    /// ([`zinf_swap::pool_reserve_bytes`]). A smaller pool fails at its first fetch; the
    /// session refuses it before the run starts.
    pub fn min_pool_bytes(
        &self,
        place: super::NvmePlacement,
        chunk: u64,
        pool_capacity: u64,
    ) -> u64 {
        let reserve = |len: u64| -> u64 {
            let chunk = chunk.max(1);
            let (full, rest) = (len / chunk, len % chunk);
            let one = |l: u64| {
                let padded = l
                    .checked_next_multiple_of(STORE_ALIGN_BYTES)
                    .unwrap_or(u64::MAX);
                zinf_swap::pool_reserve_bytes(padded, pool_capacity)
            };
            let rest_bytes = if rest > 0 { one(rest) } else { 0 };
            full.saturating_mul(one(chunk)).saturating_add(rest_bytes)
        };
        let params = if place.params {
            reserve(self.max_owned_len() as u64 * self.dtype.bytes() as u64)
        } else {
            0
        };
        let opt = if place.optimizer {
            reserve(self.max_unit_len() as u64 * 4).saturating_mul(3)
        } else {
            0
        };
        params.max(opt)
    }

    /// The tiers' own shards of the store for placement `place`: every group's parameters
    /// (parameters on NVMe), then every unit's optimizer state (optimizer on NVMe).
    pub fn tier_specs(&self, place: super::NvmePlacement) -> Vec<ShardSpec> {
        let mut specs = Vec::new();
        if place.params {
            specs.extend(self.param_specs());
        }
        if place.optimizer {
            specs.extend(self.opt_specs());
        }
        specs
    }

    /// The shards of this rank's parameters of every group (its owned part).
    pub fn param_specs(&self) -> Vec<ShardSpec> {
        let b = self.dtype.bytes() as u64;
        let tag = dtype_tag(self.dtype);
        (0..self.groups.len())
            .map(|gi| ShardSpec::new(param_shard(gi), self.owned[gi].len() as u64 * b, tag))
            .collect()
    }

    /// The shards of the optimizer state of every unit (three fp32 tensors each).
    pub fn opt_specs(&self) -> Vec<ShardSpec> {
        self.opt_specs_named(opt_shard)
    }

    /// The optimizer state shards of every unit under the names `name(unit, tensor)` (a save
    /// of host-resident state uses its own names in the same store).
    pub fn opt_specs_named(&self, name: impl Fn(usize, usize) -> String) -> Vec<ShardSpec> {
        let mut v = Vec::with_capacity(self.units.len() * 3);
        for (u, unit) in self.units.iter().enumerate() {
            for t in 0..3 {
                v.push(ShardSpec::new(
                    name(u, t),
                    unit.range.len() as u64 * 4,
                    "f32",
                ));
            }
        }
        v
    }
}

/// Bytes per chunk of the swap store unless one unit's fp32 state needs more (one pool buffer
/// and one request each).
pub const DEFAULT_CHUNK_BYTES: u64 = 8 << 20;

/// Alignment of every chunk in the store's extent files and pool buffers (O_DIRECT pages).
pub const STORE_ALIGN_BYTES: u64 = zinf_aio::PAGE_BYTES as u64;

/// Bytes a shard of `len` bytes moves to or from the store: each chunk of at most `chunk`
/// bytes padded to [`STORE_ALIGN_BYTES`] (what the store's byte counters count).
/// Saturates at `u64::MAX` (an estimate of an absurd config must not overflow).
pub fn store_bytes(len: u64, chunk: u64) -> u64 {
    let rest = len % chunk.max(1);
    let padded = rest
        .checked_next_multiple_of(STORE_ALIGN_BYTES)
        .unwrap_or(u64::MAX);
    (len - rest).saturating_add(padded)
}

/// Bytes per chunk of the store: `configured`, raised so the fp32 state of the largest unit
/// (`max_unit_elems`) is one chunk.
pub fn chunk_bytes(configured: u64, max_unit_elems: u64) -> u64 {
    let unit_bytes = max_unit_elems.saturating_mul(4);
    let aligned = unit_bytes
        .checked_next_multiple_of(STORE_ALIGN_BYTES)
        .unwrap_or(u64::MAX);
    configured.max(aligned)
}

/// The smallest `sub_group_size` the session passes on (elements): 16 KiB of fp32 per state
/// tensor, four store pages, so padding stays small and the unit count stays at most
/// tensors + elements ÷ 4096. A config asking for less is raised to it with a warning.
pub const MIN_SUB_GROUP_SIZE: u64 = 4096;

/// The units of one owned range: the pieces between tensor starts, grouped in order while
/// they fit in `size` elements; a piece larger than `size` is cut into `size`-element units
/// (the last one may then take the following pieces). See [`TierLayout::new`].
pub fn cut_units(owned: Range<usize>, tensor_starts: &[usize], size: usize) -> Vec<Range<usize>> {
    let size = size.max(1);
    // Boundaries of the pieces: the owned range's ends and every tensor start inside it.
    let first = tensor_starts.partition_point(|&s| s <= owned.start);
    let inner = tensor_starts[first..]
        .iter()
        .copied()
        .take_while(|&s| s < owned.end);
    let mut units = Vec::new();
    let mut unit_start = owned.start;
    let mut piece_start = owned.start;
    for piece_end in inner.chain(std::iter::once(owned.end)) {
        if piece_end <= piece_start {
            continue;
        }
        // The piece does not fit after what the unit holds: close the unit first.
        if piece_start > unit_start && piece_end - unit_start > size {
            units.push(unit_start..piece_start);
            unit_start = piece_start;
        }
        // A piece larger than a unit: whole units of it, the rest stays open.
        while piece_end - unit_start > size {
            units.push(unit_start..unit_start + size);
            unit_start += size;
        }
        piece_start = piece_end;
    }
    if owned.end > unit_start {
        units.push(unit_start..owned.end);
    }
    units
}

/// Whether a group of `numel` elements stays on the device for the whole run
/// (`stage3_param_persistence_threshold`; DeepSpeed compares each parameter's `ds_numel <=
/// threshold` in `parameter_offload.py`, zinf each group, as it fetches groups). The engine
/// and `zinf estimate` both use this rule.
pub fn is_persistent(numel: u64, threshold: u64) -> bool {
    numel <= threshold
}

/// Store name of group `gi`'s 16-bit (or fp32) parameters.
pub fn param_shard(gi: usize) -> String {
    format!("param.g{gi}")
}

/// Store name of optimizer state `t` (index into [`OPT_STATES`]) of unit `u`.
pub fn opt_shard(u: usize, t: usize) -> String {
    format!("opt.u{u}.{}", OPT_STATES[t])
}

/// The dtype tag the store's manifest records for parameters.
pub fn dtype_tag(d: ParamDtype) -> &'static str {
    match d {
        ParamDtype::F32 => "f32",
        ParamDtype::F16 => "f16",
        ParamDtype::Bf16 => "bf16",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_tile_each_owned_range_and_follow_backward_order() {
        let l = TierLayout::new(vec![0..10, 10..13, 13..30], &[], |r| r, 4, ParamDtype::Bf16);
        let ranges: Vec<_> = l.units.iter().map(|u| u.range.clone()).collect();
        assert_eq!(
            ranges,
            vec![
                0..4,
                4..8,
                8..10,
                10..13,
                13..17,
                17..21,
                21..25,
                25..29,
                29..30
            ]
        );
        assert_eq!(l.group_units, vec![0..3, 3..4, 4..9]);
        // Update order: group 2's units, then group 1, then group 0.
        let mut order = vec![4];
        while let Some(n) = l.next_unit(*order.last().unwrap()) {
            order.push(n);
        }
        assert_eq!(order, vec![4, 5, 6, 7, 8, 3, 0, 1, 2]);
        assert_eq!(l.param_specs()[2].len_bytes, 17 * 2);
    }

    #[test]
    fn units_group_whole_tensors_as_deepspeed_sub_groups() {
        // One group of tensors 0..3, 3..5, 5..15, 15..16, 16..18 with sub_group_size 6:
        // 3+2 fit; the 10-element tensor starts a new unit and is cut at 6; its last 4 take
        // the next 1 (5 elements) but not the 2 after (7 > 6).
        let starts = [0, 3, 5, 15, 16];
        assert_eq!(
            cut_units(0..18, &starts, 6),
            vec![0..5, 5..11, 11..16, 16..18]
        );
        // A big size: one unit. Size 1: one unit per element of a tensor, each tensor alone.
        assert_eq!(cut_units(0..18, &starts, 100), vec![0..18]);
        assert_eq!(cut_units(3..5, &starts, 1), vec![3..4, 4..5]);
        // An owned range that starts inside a tensor (a rank's partition).
        assert_eq!(cut_units(4..16, &starts, 6), vec![4..5, 5..11, 11..16]);
        // The unit count stays linear in tensors + elements ÷ size, whatever the size.
        let many: Vec<usize> = (0..1000).map(|i| i * 64).collect();
        let units = cut_units(0..64_000, &many, MIN_SUB_GROUP_SIZE as usize);
        assert_eq!(units.len(), 16);
        assert!(units.iter().all(|u| u.len() <= MIN_SUB_GROUP_SIZE as usize));
        let l = TierLayout::new(vec![0..9, 9..18], &starts, |r| r, 6, ParamDtype::F32);
        assert_eq!(l.units.len(), 4);
        assert_eq!(l.max_unit_len(), 6);
    }
}
