//! What one run of the engine did, counted: bytes per tier, hits and misses of every cache
//! and prefetch, and where the compute thread spent its time. The summary is built from it.

use super::tiers::QueueCounters;

/// Byte counters of one run, for the summary.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EngineCounters {
    pub queue: QueueCounters,
    /// Bytes read from and written to the swap store.
    pub nvme_bytes_read: u64,
    pub nvme_bytes_written: u64,
    /// Bytes uploaded to and downloaded from the device.
    pub device_bytes_in: u64,
    pub device_bytes_out: u64,
    /// Fetches served by a group already on the device (kept or persistent).
    pub device_hits: u64,
    /// Fetches that had to bring the group in.
    pub device_fetches: u64,
    /// NVMe fetches served from the host staging buffer of the group updated last.
    pub staged_hits: u64,
    /// NVMe fetches served from the `max_in_cpu` host cache.
    pub cache_hits: u64,
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
        let (a, b) = (&self.queue, &earlier.queue);
        EngineCounters {
            queue: QueueCounters {
                param_prefetch_hits: a.param_prefetch_hits - b.param_prefetch_hits,
                param_misses: a.param_misses - b.param_misses,
                opt_prefetch_hits: a.opt_prefetch_hits - b.opt_prefetch_hits,
                opt_misses: a.opt_misses - b.opt_misses,
                prefetches_dropped: a.prefetches_dropped - b.prefetches_dropped,
                io_wait_ns: a.io_wait_ns - b.io_wait_ns,
                pool_wait_ns: a.pool_wait_ns - b.pool_wait_ns,
            },
            nvme_bytes_read: self.nvme_bytes_read - earlier.nvme_bytes_read,
            nvme_bytes_written: self.nvme_bytes_written - earlier.nvme_bytes_written,
            device_bytes_in: self.device_bytes_in - earlier.device_bytes_in,
            device_bytes_out: self.device_bytes_out - earlier.device_bytes_out,
            device_hits: self.device_hits - earlier.device_hits,
            device_fetches: self.device_fetches - earlier.device_fetches,
            staged_hits: self.staged_hits - earlier.staged_hits,
            cache_hits: self.cache_hits - earlier.cache_hits,
            trace_deviations: self.trace_deviations - earlier.trace_deviations,
            optimizer_s: self.optimizer_s - earlier.optimizer_s,
            compute_s: self.compute_s - earlier.compute_s,
        }
    }
}
