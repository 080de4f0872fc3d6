//! What one run of the engine did, counted: bytes per tier, hits and misses of every cache
//! and prefetch, and where the compute thread spent its time. The summary is built from it.

use crate::tiers::{QueueCounters, TierCounters};

/// Byte counters of one run, for the summary.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EngineCounters {
    pub queue: QueueCounters,
    /// Fetches served from host copies (staging buffer, `max_in_cpu` cache, held writes).
    pub tiers: TierCounters,
    /// Bytes read from and written to the swap store.
    pub nvme_bytes_read: u64,
    pub nvme_bytes_written: u64,
    /// Bytes uploaded to and downloaded from the device.
    pub device_bytes_in: u64,
    pub device_bytes_out: u64,
    /// Bytes this rank received through collectives (all-gathers of parameters,
    /// reduce-scatters of gradients; 0 on one rank).
    pub collective_bytes: u64,
    /// Fetches served by a group already on the device (kept or persistent).
    pub device_hits: u64,
    /// Fetches that had to bring the group in.
    pub device_fetches: u64,
    /// Passes that left the recorded access order.
    pub trace_deviations: u64,
    /// Time in the optimizer (Adam and its copies), seconds.
    pub optimizer_s: f64,
    /// Compute (forward and backward ops), seconds.
    pub compute_s: f64,
}

impl EngineCounters {
    /// The counts since `earlier` (a snapshot of the same run).
    pub fn since(&self, earlier: &EngineCounters) -> EngineCounters {
        EngineCounters {
            queue: self.queue.since(&earlier.queue),
            tiers: TierCounters {
                staged_hits: self.tiers.staged_hits - earlier.tiers.staged_hits,
                cache_hits: self.tiers.cache_hits - earlier.tiers.cache_hits,
                held_param_hits: self.tiers.held_param_hits - earlier.tiers.held_param_hits,
            },
            nvme_bytes_read: self.nvme_bytes_read - earlier.nvme_bytes_read,
            nvme_bytes_written: self.nvme_bytes_written - earlier.nvme_bytes_written,
            device_bytes_in: self.device_bytes_in - earlier.device_bytes_in,
            device_bytes_out: self.device_bytes_out - earlier.device_bytes_out,
            collective_bytes: self.collective_bytes - earlier.collective_bytes,
            device_hits: self.device_hits - earlier.device_hits,
            device_fetches: self.device_fetches - earlier.device_fetches,
            trace_deviations: self.trace_deviations - earlier.trace_deviations,
            optimizer_s: self.optimizer_s - earlier.optimizer_s,
            compute_s: self.compute_s - earlier.compute_s,
        }
    }
}
