//! One optimizer step's decisions, shared by the resident trainer and the ZeRO-3 engine: the
//! learning rate and loss scale a step uses, the gradient statistics (global norm, overflow),
//! the loss scaler's skip-or-apply decision, the combined unscale × clip factor Adam applies,
//! the Adam step count, and the LR schedule's advance. Where the state lives and in what order
//! units are updated is the caller's business (the trainer: whole arrays; the engine: units
//! through the tiers).
//!
//! The order and arithmetic follow DeepSpeed's `DeepSpeedZeroOptimizer_Stage3.step`
//! (`deepspeed/runtime/zero/stage3.py`): overflow check, `_update_scale`, skip on overflow
//! without touching the step count, else unscale-and-clip, Adam, then `lr_scheduler.step()`.

use super::{
    combined_grad_scale, Adam, Grad, GradStats, LossScaler, LossScalerConfig, LrScheduler,
    LrSchedulerState, OptimError, SchedulerConfig, StepOutcome, StepScalars,
};

/// Whether the update can stream group by group during backward: with no clipping
/// (`gradient_clipping` 0) and no fp16 nothing needs the global norm or an overflow check
/// before a group's Adam (the grad scale is the loss scale alone). The one rule the engine,
/// the session's host budget and `zinf estimate` use.
pub fn update_streams(gradient_clipping: f64, fp16: bool) -> bool {
    gradient_clipping <= 0.0 && !fp16
}

/// What the decision after backward says about this step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Scalars for every Adam call of this step; `None` when the step is skipped (overflow).
    pub scalars: Option<StepScalars>,
    /// Global L2 norm of the unscaled gradients before clipping (NaN when non-finite).
    pub grad_norm: f64,
}

/// The optimizer's state between steps and its per-step decisions.
pub struct OptimizerStep {
    pub adam: Adam,
    pub scaler: LossScaler,
    pub sched: Option<LrScheduler>,
    /// Adam steps applied (skipped steps excluded): Adam's bias-correction step.
    pub applied_steps: u64,
    lr_base: f64,
    gradient_clipping: f64,
    fp16: bool,
}

/// The small state a checkpoint keeps to continue the optimizer bit-identically.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct OptimizerStepState {
    pub applied_steps: u64,
    pub scaler: LossScaler,
    pub scheduler: Option<LrSchedulerState>,
}

impl OptimizerStep {
    /// Adam (on `adam`'s pool), the loss scaler (`fp16`: dynamic scaling as configured) and
    /// the LR schedule, fresh. `gradient_clipping` 0 turns clipping off.
    pub fn new(
        adam: Adam,
        loss_scaler: &LossScalerConfig,
        fp16: bool,
        scheduler: Option<SchedulerConfig>,
        gradient_clipping: f64,
    ) -> Result<Self, OptimError> {
        let lr_base = adam.config().lr as f64;
        Ok(OptimizerStep {
            scaler: LossScaler::new(loss_scaler, fp16)?,
            sched: scheduler
                .map(|c| LrScheduler::new(c, lr_base))
                .transpose()?,
            adam,
            applied_steps: 0,
            lr_base,
            gradient_clipping,
            fp16,
        })
    }

    /// The learning rate the next step uses.
    pub fn lr(&self) -> f64 {
        self.sched.as_ref().map_or(self.lr_base, |s| s.get_lr())
    }

    /// The loss scale the next step's backward multiplies the loss by.
    pub fn loss_scale(&self) -> f64 {
        self.scaler.scale()
    }

    /// Whether the update can go group by group during backward: nothing (clipping, fp16's
    /// overflow check) needs the global norm first.
    pub fn streams(&self) -> bool {
        update_streams(self.gradient_clipping, self.fp16)
    }

    /// The decision after backward over the whole gradient `grads` (scaled by the loss
    /// scale): overflow → skipped (the scaler backs off, Adam's step count stays); otherwise
    /// the scalars (this step's lr, step, unscale × clip) every Adam call of this step uses.
    pub fn decide(&mut self, grads: &[Grad<'_>]) -> Result<Decision, OptimError> {
        let stats = self.adam.grad_stats(grads);
        self.decide_with(stats)
    }

    /// [`OptimizerStep::decide`] from gradient statistics already formed (with several
    /// ranks, the sum over every rank's partition).
    pub fn decide_with(&mut self, stats: GradStats) -> Result<Decision, OptimError> {
        let lr = self.lr();
        let loss_scale = self.scaler.scale();
        let scaled_norm = stats.sum_sq.sqrt();
        let outcome = self.scaler.update(stats.non_finite)?;
        let grad_norm = if stats.non_finite {
            f64::NAN
        } else {
            scaled_norm / loss_scale
        };
        let scalars = (outcome == StepOutcome::Applied).then(|| {
            self.applied_steps += 1;
            StepScalars {
                lr: lr as f32,
                step: self.applied_steps,
                grad_scale: combined_grad_scale(scaled_norm, self.gradient_clipping, loss_scale),
            }
        });
        Ok(Decision { scalars, grad_norm })
    }

    /// The scalars of a streamed step, known before backward (no clipping, no fp16: nothing can
    /// skip it, and the grad scale is the loss scale alone). Call [`OptimizerStep::end_streamed`]
    /// after backward with the step's sum of squares.
    pub fn begin_streamed(&mut self) -> StepScalars {
        self.applied_steps += 1;
        StepScalars {
            lr: self.lr() as f32,
            step: self.applied_steps,
            grad_scale: combined_grad_scale(0.0, 0.0, self.scaler.scale()),
        }
    }

    /// Ends a streamed step: the scaler sees no overflow; returns the global gradient norm from
    /// the sum of squares of every (scaled) gradient element.
    pub fn end_streamed(&mut self, sum_sq: f64) -> Result<f64, OptimError> {
        let loss_scale = self.scaler.scale();
        self.scaler.update(false)?;
        Ok(sum_sq.sqrt() / loss_scale)
    }

    /// Advances the LR schedule after an applied step (a skipped step does not advance it).
    pub fn finish(&mut self, applied: bool) {
        if applied {
            if let Some(s) = &mut self.sched {
                s.step();
            }
        }
    }

    /// The state a checkpoint keeps.
    pub fn state(&self) -> OptimizerStepState {
        OptimizerStepState {
            applied_steps: self.applied_steps,
            scaler: self.scaler.clone(),
            scheduler: self.sched.as_ref().map(|s| s.state()),
        }
    }

    /// Restores a checkpoint's state.
    pub fn load_state(&mut self, st: OptimizerStepState) {
        self.applied_steps = st.applied_steps;
        self.scaler = st.scaler;
        if let (Some(s), Some(state)) = (&mut self.sched, st.scheduler) {
            s.load_state(state);
        }
    }
}
