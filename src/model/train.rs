//! The resident training loop (state on the device and in host RAM; offload is the engine's):
//! micro-batches with gradient accumulation, fp16 loss scaling, global-norm clipping, the CPU
//! Adam over fp32 master weights with the fp16/bf16 copy-out, the LR schedule, and validation.
//!
//! One [`Trainer::step`] is one optimizer step of DeepSpeed's engine: `gradient_accumulation_steps`
//! forward/backward passes whose losses are scaled by `loss_scale / gas`, then gradient
//! statistics, the loss scaler's overflow decision, and Adam. It does not print, time or write
//! files; `zinf train` does that around it.

use super::{init_params, Gpt, GptConfig, HostParams, ModelError, ParamDtype};
use crate::data::{val_batches, Batcher, Dataset};
use crate::device::{CpuDevice, Device};
use crate::optim::{
    combined_grad_scale, Adam, AdamConfig, Grad, LossScaler, LossScalerConfig, LrScheduler,
    OptimError, ParamOut, SchedulerConfig, StepOutcome, StepScalars,
};

/// Everything a run needs, resolved from the config and the command line.
#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub model: GptConfig,
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
    /// The CPU Adam, the loss scaler and the LR scheduler these settings describe, fresh.
    /// Adam runs on `pool` when given (the CPU device's compute pool: one set of threads per
    /// run), else on a pool of its own of `threads` threads.
    pub fn optimizer(
        &self,
        pool: Option<std::sync::Arc<crate::threads::ThreadPool>>,
    ) -> Result<(Adam, LossScaler, Option<LrScheduler>), OptimError> {
        let adam = match pool {
            Some(p) => Adam::with_pool(self.adam, p),
            None => Adam::new(self.adam, self.threads)?,
        };
        let scaler = LossScaler::new(&self.loss_scaler, self.fp16)?;
        let sched = self
            .scheduler
            .map(|c| LrScheduler::new(c, self.adam.lr as f64))
            .transpose()?;
        Ok((adam, scaler, sched))
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

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optim(#[from] OptimError),
}

/// A model with its optimizer state and data, ready to step.
pub struct Trainer {
    pub settings: TrainSettings,
    pub dev: CpuDevice,
    pub model: Gpt<CpuDevice>,
    pub params: HostParams,
    master: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    grads: Vec<f32>,
    adam: Adam,
    scaler: LossScaler,
    sched: Option<LrScheduler>,
    batcher: Batcher,
    data: Dataset,
    steps: u64,
    applied_steps: u64,
}

impl Trainer {
    /// Builds everything up front: device buffers (an over-budget model fails here, before any
    /// step), optimizer state, scheduler and scaler. `init` overrides the seeded initialisation.
    pub fn new(
        settings: TrainSettings,
        data: Dataset,
        init: Option<HostParams>,
    ) -> Result<Self, TrainError> {
        let s = &settings;
        super::check_vocab(&data, s.model.vocab_size)?;
        let dev = CpuDevice::new(s.threads, s.device_memory_budget);
        let mut model = Gpt::new(
            &dev,
            s.model,
            s.micro_batch,
            s.seq_len,
            s.activation_checkpointing,
        )?;
        let params = match init {
            Some(p) => HostParams::from_f32(s.dtype, &p.to_f32()),
            None => HostParams::from_f32(
                s.dtype,
                &init_params(&model.layout, s.model.n_layer, s.seed),
            ),
        };
        model.load_params(&dev, &params)?;
        // The fp32 master starts from the stored (rounded) values, as DeepSpeed's does.
        let master = params.to_f32();
        let n = master.len();
        let (adam, scaler, sched) = s.optimizer(dev.host_pool())?;
        let batcher = Batcher::new(s.seed, s.micro_batch, s.seq_len);
        Ok(Trainer {
            settings,
            dev,
            model,
            params,
            master,
            m: vec![0.0; n],
            v: vec![0.0; n],
            grads: vec![0.0; n],
            adam,
            scaler,
            sched,
            batcher,
            data,
            steps: 0,
            applied_steps: 0,
        })
    }

    /// Tokens consumed by one optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.settings.micro_batch
            * self.settings.seq_len
            * self.settings.gradient_accumulation_steps
    }

    /// The learning rate the next step uses.
    pub fn current_lr(&self) -> f64 {
        self.sched
            .as_ref()
            .map_or(self.settings.adam.lr as f64, |s| s.get_lr())
    }

    /// One optimizer step over `gradient_accumulation_steps` micro-batches.
    pub fn step(&mut self) -> Result<StepMetrics, TrainError> {
        let gas = self.settings.gradient_accumulation_steps;
        let loss_scale = self.scaler.scale();
        let lr = self.current_lr();
        self.model.zero_grads(&self.dev)?;
        let mut loss_sum = 0.0f64;
        for _ in 0..gas {
            let (x, y) = self.batcher.next_batch(&self.data.train);
            loss_sum += self.model.forward(&self.dev, &x, &y)? as f64;
            self.model
                .backward(&self.dev, &x, &y, (loss_scale / gas as f64) as f32)?;
        }
        self.model.download_grads(&self.dev, &mut self.grads)?;
        let stats = self.adam.grad_stats(&[Grad::F32(&self.grads)]);
        let scaled_norm = stats.sum_sq.sqrt();
        let outcome = self.scaler.update(stats.non_finite)?;
        self.steps += 1;
        let skipped = outcome == StepOutcome::Skipped;
        if !skipped {
            self.apply_update(lr, scaled_norm, loss_scale)?;
        }
        Ok(StepMetrics {
            step: self.steps,
            loss: (loss_sum / gas as f64) as f32,
            lr,
            loss_scale,
            grad_norm: if stats.non_finite {
                f64::NAN
            } else {
                scaled_norm / loss_scale
            },
            skipped,
        })
    }

    fn apply_update(
        &mut self,
        lr: f64,
        scaled_norm: f64,
        loss_scale: f64,
    ) -> Result<(), TrainError> {
        self.applied_steps += 1;
        let scalars = StepScalars {
            lr: lr as f32,
            step: self.applied_steps,
            grad_scale: combined_grad_scale(
                scaled_norm,
                self.settings.gradient_clipping,
                loss_scale,
            ),
        };
        let grad = Grad::F32(&self.grads);
        let (master, m, v) = (&mut self.master, &mut self.m, &mut self.v);
        match &mut self.params {
            HostParams::F16(p) => self
                .adam
                .step(master, m, v, grad, ParamOut::F16(p), scalars)?,
            HostParams::Bf16(p) => {
                self.adam
                    .step(master, m, v, grad, ParamOut::Bf16(p), scalars)?
            }
            HostParams::F32(p) => {
                self.adam
                    .step(master, m, v, grad, ParamOut::None, scalars)?;
                p.copy_from_slice(master);
            }
        }
        if let Some(s) = &mut self.sched {
            s.step();
        }
        self.model.load_params(&self.dev, &self.params)?;
        Ok(())
    }

    /// Mean loss over up to `eval_batches` consecutive validation micro-batches.
    pub fn validate(&mut self) -> Result<Option<f32>, TrainError> {
        let s = &self.settings;
        let batches = val_batches(&self.data.val, s.micro_batch, s.seq_len, s.eval_batches);
        if batches.is_empty() {
            return Ok(None);
        }
        let mut sum = 0.0f64;
        for (x, y) in &batches {
            sum += self.model.forward(&self.dev, x, y)? as f64;
        }
        Ok(Some((sum / batches.len() as f64) as f32))
    }
}
