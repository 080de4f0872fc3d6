//! The one error type of the optimizer module. Programmer errors (a kernel called with slices of
//! different lengths by our own driver) are assertions; everything that can come from a config,
//! a checkpoint or a caller's buffers is a variant here.

/// Everything the optimizer, the loss scaler and the schedulers can refuse.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OptimError {
    /// The slices of one parameter group do not all have the same number of elements.
    #[error(
        "length mismatch in parameter group: {what} has {got} elements, master has {expected}"
    )]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// Adam's step count is 1-based; step 0 would divide by a zero bias correction.
    #[error("Adam step count must be >= 1 (1-based, per parameter group), got {0}")]
    ZeroStep(u64),
    /// A hyper-parameter outside the range where the update is defined.
    #[error("invalid optimizer setting {name} = {value}: {why}")]
    InvalidHyperParameter {
        name: &'static str,
        value: f64,
        why: &'static str,
    },
    /// A kernel was forced that this CPU (or this build) cannot run.
    #[error("kernel {0} is not available on this CPU")]
    KernelUnavailable(&'static str),
    /// The compute pool could not start its workers.
    #[error("could not start compute thread {index}: {message}")]
    ThreadSpawn { index: usize, message: String },
    /// DeepSpeed's `DynamicLossScaler` raises here: the gradients overflowed while the loss
    /// scale was already at `min_loss_scale` and no hysteresis was left.
    #[error(
        "current loss scale already at minimum ({min_loss_scale}) - cannot decrease scale anymore"
    )]
    LossScaleAtMinimum { min_loss_scale: f64 },
    /// A scheduler parameter that makes the schedule undefined (e.g. a zero step size).
    #[error("invalid scheduler setting {name} = {value}: {why}")]
    InvalidSchedule {
        name: &'static str,
        value: f64,
        why: &'static str,
    },
}

impl From<crate::threads::SpawnError> for OptimError {
    fn from(e: crate::threads::SpawnError) -> Self {
        OptimError::ThreadSpawn {
            index: e.index,
            message: e.message,
        }
    }
}
