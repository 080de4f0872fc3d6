//! The CPU optimizer: Adam / AdamW over fp32 master weights and moments with DeepSpeed's
//! semantics, fused with gradient unscaling, clipping and the fp16/bf16 parameter copy-out in one
//! streaming pass; gradient statistics (global L2 norm and "any non-finite") in one pass; the
//! dynamic loss scaler; and the learning-rate schedulers.
//!
//! This module knows nothing of models, devices or files: it works on slices that the engine
//! hands it. The SIMD kernels (`kernels/`) are chosen at run time and are bit-identical to the
//! scalar reference (`kernels/scalar.rs`); the driver (`adam.rs`) splits a step over the run's
//! persistent CPU compute pool (`crate::threads`, shared with the CPU device) without allocating.

mod adam;
mod error;
pub mod kernels;
mod loss_scaler;
mod lr_schedule;
mod stats;
mod step;

#[cfg(test)]
mod tests;

/// The compute pool moved to [`crate::threads`]; this path stays for existing callers.
pub use crate::threads::ThreadPool;
pub use adam::{Adam, AdamConfig, Grad, ParamOut, StepScalars};
pub use error::OptimError;
pub use kernels::Kernel;
pub use loss_scaler::{LossScaler, LossScalerConfig, StepOutcome};
pub use lr_schedule::{
    LRRangeTestConfig, LrScheduler, LrSchedulerState, OneCycleConfig, SchedulerConfig,
    WarmupCosineLRConfig, WarmupDecayLRConfig, WarmupLRConfig, WarmupType,
};
pub use stats::{clip_coef, combined_grad_scale, global_norm, grad_stats, GradStats};
pub use step::{update_streams, Decision, OptimizerStep, OptimizerStepState};
