//! The collectives on NVIDIA GPUs through NCCL (feature `nccl`): one process per GPU, the
//! communicator created from NCCL's unique id, which rank 0 makes and [`super::rendezvous`]
//! hands to the others. Collectives run on the device's stream, ordered with its kernels.
//!
//! NCCL is loaded at run time (`libnccl.so.2`, the `nvidia-nccl-cu13` wheel or the system's);
//! its absence is a clear error, never a panic.

use super::env::DistEnv;
use super::{check_extent, rendezvous::rendezvous, Collective, DistError};
use crate::device::cuda::{CudaBuffer, CudaDevice};
use crate::device::DeviceBuffer;
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::time::Duration;

/// One rank's NCCL communicator.
pub struct NcclComm {
    comm: Comm,
}

// SAFETY: an NCCL communicator may be used from any thread as long as no two calls on it run
// at once; `NcclComm` is only moved between threads (it is not `Sync`), never shared.
unsafe impl Send for NcclComm {}

fn backend(what: &str, e: impl std::fmt::Debug) -> DistError {
    DistError::Backend(format!("{what}: {e:?}"))
}

impl NcclComm {
    /// Joins the group `env` describes on `dev`'s stream: rank 0 creates the unique id, the
    /// rendezvous at `MASTER_ADDR:MASTER_PORT` hands it out (within `timeout`), then every rank
    /// initialises its communicator (`ncclCommInitRank`, which waits for all of them).
    ///
    /// # Errors
    /// NCCL absent, the rendezvous' errors, or NCCL's.
    pub fn new(dev: &CudaDevice, env: &DistEnv, timeout: Duration) -> Result<Self, DistError> {
        // SAFETY: only probes whether the library loads; no NCCL function is called.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(DistError::Backend(
                "NCCL (libnccl.so.2) not found: install NCCL (the nvidia-nccl-cu13 wheel's lib \
                 folder on LD_LIBRARY_PATH), or train with one rank"
                    .into(),
            ));
        }
        let mine = if env.rank == 0 {
            let id = Id::new().map_err(|e| backend("ncclGetUniqueId", e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        let blob = rendezvous(env, &mine, timeout)?;
        let raw: [std::ffi::c_char; 128] = blob
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                DistError::Rendezvous(format!("NCCL id of {} bytes, not 128", blob.len()))
            })?;
        let comm = Comm::from_rank(
            dev.stream().clone(),
            env.rank,
            env.world_size,
            Id::uninit(raw),
        )
        .map_err(|e| backend("ncclCommInitRank", e))?;
        Ok(NcclComm { comm })
    }
}

impl Collective<CudaDevice> for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_gather(
        &self,
        _dev: &CudaDevice,
        send: &CudaBuffer,
        send_off: usize,
        n: usize,
        recv: &mut CudaBuffer,
        recv_off: usize,
    ) -> Result<(), DistError> {
        let op = "all_gather";
        let world = self.world_size();
        check_extent(op, "send", send_off, n, send.len())?;
        check_extent(op, "recv", recv_off, n * world, recv.len())?;
        let s = send.mem().slice(send_off..send_off + n);
        let mut r = recv.mem_mut().slice_mut(recv_off..recv_off + n * world);
        self.comm
            .all_gather(&s, &mut r)
            .map(drop)
            .map_err(|e| backend("ncclAllGather", e))
    }

    fn reduce_scatter(
        &self,
        _dev: &CudaDevice,
        send: &CudaBuffer,
        send_off: usize,
        n: usize,
        recv: &mut CudaBuffer,
        recv_off: usize,
    ) -> Result<(), DistError> {
        let op = "reduce_scatter";
        let world = self.world_size();
        check_extent(op, "send", send_off, n * world, send.len())?;
        check_extent(op, "recv", recv_off, n, recv.len())?;
        let s = send.mem().slice(send_off..send_off + n * world);
        let mut r = recv.mem_mut().slice_mut(recv_off..recv_off + n);
        self.comm
            .reduce_scatter(&s, &mut r, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| backend("ncclReduceScatter", e))
    }

    fn all_reduce(
        &self,
        _dev: &CudaDevice,
        buf: &mut CudaBuffer,
        off: usize,
        n: usize,
    ) -> Result<(), DistError> {
        check_extent("all_reduce", "buf", off, n, buf.len())?;
        let mut b = buf.mem_mut().slice_mut(off..off + n);
        self.comm
            .all_reduce_in_place(&mut b, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| backend("ncclAllReduce", e))
    }

    fn broadcast(
        &self,
        _dev: &CudaDevice,
        buf: &mut CudaBuffer,
        off: usize,
        n: usize,
        root: usize,
    ) -> Result<(), DistError> {
        check_extent("broadcast", "buf", off, n, buf.len())?;
        let root = i32::try_from(root).map_err(|_| backend("broadcast", root))?;
        let mut b = buf.mem_mut().slice_mut(off..off + n);
        self.comm
            .broadcast_in_place(&mut b, root)
            .map(drop)
            .map_err(|e| backend("ncclBroadcast", e))
    }

    fn barrier(&self, dev: &CudaDevice) -> Result<(), DistError> {
        // NCCL has no barrier: an all-reduce of one element is one, then the stream waits.
        let mut one = crate::device::Device::alloc(dev, "barrier", 1)?;
        self.all_reduce(dev, &mut one, 0, 1)?;
        dev.synchronize()?;
        Ok(())
    }
}
