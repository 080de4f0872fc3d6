//! CUDA device backend (feature `cuda`): the driver context and the NVRTC-compiled kernels
//! (`kernels.rs`) the [`crate::device::Device`] implementation will launch (the CUDA backend
//! issue). A missing driver is a clear error, never a cudarc panic. It launches no kernel yet.

pub mod kernels;

use crate::device::{DeviceError, MemoryBudget};
use cudarc::driver::CudaContext;
use std::sync::Arc;

/// A CUDA device: a driver context on one ordinal and the memory budget it will charge.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    budget: MemoryBudget,
}

impl CudaDevice {
    /// Opens device `ordinal` (loads the driver library at run time).
    pub fn new(ordinal: usize, budget_bytes: u64) -> Result<Self, DeviceError> {
        // SAFETY: only probes whether the driver library loads; cudarc panics on first use
        // when it does not, so this check comes first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(DeviceError::Backend(
                "no CUDA driver found (libcuda.so): install the NVIDIA driver, or run with \
                 zinf.device: \"cpu\""
                    .into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| DeviceError::Backend(format!("cuda:{ordinal}: {e:?}")))?;
        Ok(CudaDevice {
            ctx,
            budget: MemoryBudget::new(budget_bytes),
        })
    }

    /// The driver context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The memory account.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }
}
