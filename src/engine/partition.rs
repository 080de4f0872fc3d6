//! ZeRO-3 partitioning: every group's flat range is cut into `world_size` contiguous
//! partitions, and a rank owns one of them — its optimizer state, its share of the gradient
//! reduction and its slice of the parameter store. Fetching a group is an all-gather of the
//! partitions; releasing it drops the gathered copy.
//!
//! On one rank (`world_size` 1) the partition is the whole group. The engine and the tiers
//! only ever ask this type which elements a rank owns (`src/engine/ranks.rs` does the
//! gathering and reducing).

use std::ops::Range;

/// This process's place in the data-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub rank: usize,
    pub world_size: usize,
}

impl Partition {
    /// One process owning everything.
    pub fn single() -> Self {
        Partition {
            rank: 0,
            world_size: 1,
        }
    }

    /// Whether this is rank 0, the one that prints progress and writes the run's outputs
    /// (CSV, summary, trace, export).
    pub fn reports(&self) -> bool {
        self.rank == 0
    }

    /// The elements of `group` this rank owns: partitions of `ceil(len / world_size)`
    /// elements (DeepSpeed pads the last one; here the last one is just shorter).
    pub fn owned(&self, group: Range<usize>) -> Range<usize> {
        let per = group.len().div_ceil(self.world_size.max(1));
        let start = (group.start + self.rank * per).min(group.end);
        let end = (start + per).min(group.end);
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_tile_the_group_without_gaps_or_overlap() {
        for world_size in 1..=5 {
            for len in [0usize, 1, 7, 100, 101] {
                let g = 10..10 + len;
                let mut next = g.start;
                for rank in 0..world_size {
                    let r = Partition { rank, world_size }.owned(g.clone());
                    assert_eq!(r.start, next, "world {world_size} len {len} rank {rank}");
                    next = r.end;
                }
                assert_eq!(next, g.end);
            }
        }
        assert_eq!(Partition::single().owned(3..9), 3..9);
    }
}
