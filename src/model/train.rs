//! The resident training loop (state on the device and in host RAM; offload is the engine's):
//! micro-batches with gradient accumulation, fp16 loss scaling, global-norm clipping, the CPU
//! Adam over fp32 master weights with the fp16/bf16 copy-out, the LR schedule, and validation.
//!
//! One [`Trainer::step`] is one optimizer step of DeepSpeed's engine: `gradient_accumulation_steps`
//! forward/backward passes whose losses are scaled by `loss_scale / gas`, then gradient
//! statistics, the loss scaler's overflow decision, and Adam. It does not print, time or write
//! files; `zinf train` does that around it.

use super::{init_params, Gpt, HostParams, ModelError};
use crate::data::{val_batches, Batcher, Dataset};
use crate::device::{CpuDevice, Device};
use crate::optim::{Grad, OptimError, OptimizerStep, ParamOut, StepScalars};
use crate::settings::{StepMetrics, TrainSettings};

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
    opt: OptimizerStep,
    batcher: Batcher,
    data: Dataset,
    steps: u64,
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
        let super::ModelSpec::Gpt2(cfg) = s.model else {
            return Err(ModelError::Shape(format!(
                "the resident reference trainer runs GPT-2 only, not {}; the engine runs it",
                s.model.describe()
            ))
            .into());
        };
        super::check_vocab(&data, cfg.vocab_size)?;
        let dev = CpuDevice::new(s.threads, s.device_memory_budget);
        let mut model = Gpt::new(
            &dev,
            cfg,
            s.micro_batch,
            s.seq_len,
            s.activation_checkpointing,
        )?;
        let params = match init {
            Some(p) => HostParams::from_f32(s.dtype, &p.to_f32()),
            None => HostParams::from_f32(s.dtype, &init_params(&model.layout, cfg.n_layer, s.seed)),
        };
        model.load_params(&dev, &params)?;
        // The fp32 master starts from the stored (rounded) values, as DeepSpeed's does.
        let master = params.to_f32();
        let n = master.len();
        let opt = s.optimizer(dev.host_pool())?;
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
            opt,
            batcher,
            data,
            steps: 0,
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
        self.opt.lr()
    }

    /// One optimizer step over `gradient_accumulation_steps` micro-batches.
    pub fn step(&mut self) -> Result<StepMetrics, TrainError> {
        let gas = self.settings.gradient_accumulation_steps;
        let loss_scale = self.opt.loss_scale();
        let lr = self.opt.lr();
        let mut loss_sum = 0.0f64;
        let mut one = Vec::new();
        for mb in 0..gas {
            let (x, y) = self.batcher.next_batch(&self.data.train);
            loss_sum += self.model.forward(&self.dev, &x, &y)? as f64;
            // Each micro-batch's gradients alone, then summed on the host in fp32,
            // `((g_0 + g_1) + g_2) + ...`: the order the engine sums micro-batches and
            // ranks in, so every run of the same samples gives the same bits.
            self.model.zero_grads(&self.dev)?;
            self.model
                .backward(&self.dev, &x, &y, (loss_scale / gas as f64) as f32)?;
            if mb == 0 {
                self.model.download_grads(&self.dev, &mut self.grads)?;
            } else {
                one.resize(self.grads.len(), 0.0);
                self.model.download_grads(&self.dev, &mut one)?;
                self.grads.iter_mut().zip(&one).for_each(|(s, g)| *s += g);
            }
        }
        let d = self.opt.decide(&[Grad::F32(&self.grads)])?;
        self.steps += 1;
        if let Some(scalars) = d.scalars {
            self.apply_update(scalars)?;
        }
        self.opt.finish(d.scalars.is_some());
        Ok(StepMetrics {
            step: self.steps,
            loss: (loss_sum / gas as f64) as f32,
            lr,
            loss_scale,
            grad_norm: d.grad_norm,
            skipped: d.scalars.is_none(),
        })
    }

    /// Adam over the whole arrays, then the new parameters go to the device.
    fn apply_update(&mut self, scalars: StepScalars) -> Result<(), TrainError> {
        let grad = Grad::F32(&self.grads);
        let (master, m, v) = (&mut self.master, &mut self.m, &mut self.v);
        let adam = &mut self.opt.adam;
        match &mut self.params {
            HostParams::F16(p) => adam.step(master, m, v, grad, ParamOut::F16(p), scalars)?,
            HostParams::Bf16(p) => adam.step(master, m, v, grad, ParamOut::Bf16(p), scalars)?,
            HostParams::F32(p) => {
                adam.step(master, m, v, grad, ParamOut::None, scalars)?;
                p.copy_from_slice(master);
            }
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
