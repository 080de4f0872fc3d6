//! What a training run is, resolved from the config and the command line ([`TrainSettings`]),
//! and what one optimizer step reports ([`StepMetrics`]): shared by the resident trainer
//! (`model/train.rs`), the ZeRO-3 engine and `zinf train`. Built by `crate::session`.

use crate::model::{ModelSpec, ParamDtype};
use crate::optim::{
    Adam, AdamConfig, LossScalerConfig, OptimError, OptimizerStep, SchedulerConfig, ThreadPool,
};
use std::sync::Arc;

/// Everything a run needs, resolved from the config and the command line.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub model: ModelSpec,
    pub micro_batch: usize,
    pub gradient_accumulation_steps: usize,
    pub seq_len: usize,
    pub gradient_clipping: f64,
    pub dtype: ParamDtype,
    pub fp16: bool,
    pub loss_scaler: LossScalerConfig,
    pub adam: AdamConfig,
    pub scheduler: Option<SchedulerConfig>,
    pub activation_checkpointing: bool,
    pub seed: u64,
    pub threads: usize,
    pub device_memory_budget: u64,
    pub eval_batches: usize,
}

impl TrainSettings {
    /// The optimizer these settings describe, fresh: the CPU Adam (on `pool` when given,
    /// the CPU device's compute pool, so a run has one set of threads; else on a pool of its
    /// own of `threads` threads), the loss scaler and the LR schedule.
    pub fn optimizer(&self, pool: Option<Arc<ThreadPool>>) -> Result<OptimizerStep, OptimError> {
        let adam = match pool {
            Some(p) => Adam::with_pool(self.adam, p),
            None => Adam::new(self.adam, self.threads)?,
        };
        OptimizerStep::new(
            adam,
            &self.loss_scaler,
            self.fp16,
            self.scheduler,
            self.gradient_clipping,
        )
    }
}

/// What one optimizer step reports (the CSV columns).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct StepMetrics {
    /// 1-based step count, skipped steps included.
    pub step: u64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f32,
    pub lr: f64,
    pub loss_scale: f64,
    /// Global L2 norm of the unscaled gradients, before clipping.
    pub grad_norm: f64,
    /// The gradients overflowed and the update was skipped (fp16 only).
    pub skipped: bool,
}
