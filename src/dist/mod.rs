//! Data-parallel ranks: the collectives ZeRO runs between them, and how ranks find each other.
//!
//! - [`Collective`]: all-gather, reduce-scatter, all-reduce, broadcast and barrier on device
//!   buffers, as ZeRO-3 uses them (Rajbhandari et al., "ZeRO: Memory Optimizations Toward
//!   Training Trillion Parameter Models", 2020, §5; DeepSpeed's
//!   `deepspeed/runtime/zero/partition_parameters.py` and `stage3.py`): parameters are
//!   all-gathered before a group runs, gradients reduce-scattered after its backward so each
//!   rank keeps the sum of its own partition. Sums run in rank order, so a result never
//!   depends on which rank arrived first.
//! - [`threads`]: ranks that are threads of one process, over the CPU device (the tests, and
//!   `--device cpu` runs with several ranks).
//! - [`env`]: the rank, world size and rendezvous address a launcher gives a process
//!   (torchrun's and DeepSpeed's `RANK`/`WORLD_SIZE`/`LOCAL_RANK`/`MASTER_ADDR`/
//!   `MASTER_PORT`, Open MPI's and Slurm's equivalents).
//! - [`rendezvous`]: rank 0 hands every rank a blob (NCCL's unique id) over TCP.
//! - `nccl` (feature `nccl`): the collectives on GPUs through NCCL, one process per GPU.
//!
//! The engine uses them through `Box<dyn Collective<D>>` (`src/engine/ranks.rs`).

pub mod env;
pub mod rendezvous;
pub mod threads;

#[cfg(feature = "nccl")]
pub mod nccl;

use crate::device::{Device, DeviceError, HostSlice};

/// Errors of collectives and rendezvous. Every one names what to do.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// Another rank failed or left, so this collective cannot complete.
    #[error("rank {rank}: {why}")]
    Aborted { rank: usize, why: String },
    /// Ranks did not all arrive in time.
    #[error("rank {rank}: {what}")]
    Timeout { rank: usize, what: String },
    /// The launch environment is incomplete or inconsistent.
    #[error("{0}")]
    Env(String),
    /// Rendezvous failed (network, protocol, a rank that never came).
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    /// Buffers of the wrong size for the collective.
    #[error("{op}: {what}")]
    Shape { op: &'static str, what: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The collective library itself failed (NCCL).
    #[error("collective backend: {0}")]
    Backend(String),
}

/// Collectives among `world_size` ranks on device buffers. Every rank calls the same
/// collectives in the same order (as NCCL requires). Each is stream-ordered with the device's
/// other work: its result is ready for the next op on that device (the CPU backend completes
/// it before returning).
///
/// Sums run in rank order (`((x_0 + x_1) + x_2) + ...`), the order a single rank accumulating
/// the same micro-batches one after another would use; the NCCL implementation leaves the
/// order to NCCL, which is deterministic for a fixed world size and topology.
pub trait Collective<D: Device>: Send {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world_size(&self) -> usize;
    /// `recv[recv_off + r n ..][..n]` = rank `r`'s `send[send_off..][..n]`, for every rank.
    #[allow(clippy::too_many_arguments)]
    fn all_gather(
        &self,
        dev: &D,
        send: &D::Buffer,
        send_off: usize,
        n: usize,
        recv: &mut D::Buffer,
        recv_off: usize,
    ) -> Result<(), DistError>;
    /// `recv[recv_off..][..n]` = the sum over ranks of their `send[send_off + rank n ..][..n]`
    /// (this rank's partition of every rank's `world_size n` elements).
    #[allow(clippy::too_many_arguments)]
    fn reduce_scatter(
        &self,
        dev: &D,
        send: &D::Buffer,
        send_off: usize,
        n: usize,
        recv: &mut D::Buffer,
        recv_off: usize,
    ) -> Result<(), DistError>;
    /// `buf[off..][..n]` = the sum over ranks of their `buf[off..][..n]`, in place.
    fn all_reduce(
        &self,
        dev: &D,
        buf: &mut D::Buffer,
        off: usize,
        n: usize,
    ) -> Result<(), DistError>;
    /// `buf[off..][..n]` = rank `root`'s, in place.
    fn broadcast(
        &self,
        dev: &D,
        buf: &mut D::Buffer,
        off: usize,
        n: usize,
        root: usize,
    ) -> Result<(), DistError>;
    /// Returns once every rank has called it.
    fn barrier(&self, dev: &D) -> Result<(), DistError>;
}

/// Sums host values over ranks in place (the loss, the squared gradient norm): through a
/// device buffer, so it works with any [`Collective`].
///
/// # Errors
/// The collective's, or the device's (allocation, copies).
pub fn all_reduce_values<D: Device, C: Collective<D> + ?Sized>(
    c: &C,
    dev: &D,
    values: &mut [f32],
) -> Result<(), DistError> {
    let mut buf = dev.alloc("all_reduce values", values.len())?;
    dev.wait(dev.upload(&mut buf, 0, HostSlice::F32(values))?)?;
    c.all_reduce(dev, &mut buf, 0, values.len())?;
    dev.wait(dev.download(&buf, 0, values)?)?;
    Ok(())
}

/// Checks `off..off + n` lies inside a buffer of `len` elements.
pub(crate) fn check_extent(
    op: &'static str,
    what: &str,
    off: usize,
    n: usize,
    len: usize,
) -> Result<(), DistError> {
    match off.checked_add(n) {
        Some(end) if end <= len => Ok(()),
        _ => Err(DistError::Shape {
            op,
            what: format!("{what}: {off}..{off}+{n} is outside a buffer of {len} elements"),
        }),
    }
}
