//! The one place a resolved [`Config`] becomes the settings of the parts that act on it: the CPU
//! Adam, the loss scaler, the LR scheduler and the aio engine. Field names are DeepSpeed's on
//! both sides, so the 16-bit/scheduler blocks cross by serde; anything either side rejects is
//! an error naming the config section.

use super::Config;
use crate::optim::{AdamConfig, LossScalerConfig, SchedulerConfig};

/// A config section the optimizer side could not accept.
#[derive(Debug, thiserror::Error)]
#[error("{section}: {message}")]
pub struct ConvertError {
    pub section: &'static str,
    pub message: String,
}

fn via_serde<T: serde::de::DeserializeOwned>(
    section: &'static str,
    value: serde_json::Value,
) -> Result<T, ConvertError> {
    serde_json::from_value(value).map_err(|e| ConvertError {
        section,
        message: e.to_string(),
    })
}

impl Config {
    /// `optimizer.params` as the CPU Adam's settings (f64 in JSON, f32 in the kernels).
    pub fn adam(&self) -> AdamConfig {
        let p = &self.optimizer.params;
        AdamConfig {
            lr: p.lr as f32,
            betas: (p.betas.0 as f32, p.betas.1 as f32),
            eps: p.eps as f32,
            weight_decay: p.weight_decay as f32,
            adam_w_mode: p.adam_w_mode,
            bias_correction: p.bias_correction,
        }
    }

    /// `fp16` as the loss scaler's settings (DeepSpeed's 2^32 quirk already resolved).
    pub fn loss_scaler(&self) -> Result<LossScalerConfig, ConvertError> {
        let v = serde_json::to_value(&self.fp16).map_err(|e| ConvertError {
            section: "fp16",
            message: e.to_string(),
        })?;
        via_serde("fp16", v)
    }

    /// `scheduler` as the LR scheduler's settings; none when the config has no scheduler.
    pub fn lr_scheduler(&self) -> Result<Option<SchedulerConfig>, ConvertError> {
        let Some(s) = &self.scheduler else {
            return Ok(None);
        };
        let mut v = serde_json::to_value(s).map_err(|e| ConvertError {
            section: "scheduler",
            message: e.to_string(),
        })?;
        // A resumed run's position, not a schedule parameter: fresh runs start at -1 and a
        // resume restores the scheduler's own state.
        if let Some(p) = v.get_mut("params").and_then(|p| p.as_object_mut()) {
            p.remove("last_batch_iteration");
        }
        via_serde("scheduler", v).map(Some)
    }

    /// The `aio` block (and `zinf.sqpoll`) as the I/O engine's settings.
    pub fn aio_config(&self) -> zinf_aio::AioConfig {
        let a = &self.aio;
        zinf_aio::AioConfig {
            block_size: a.block_size as usize,
            queue_depth: a.queue_depth as usize,
            intra_op_parallelism: a.intra_op_parallelism as usize,
            single_submit: a.single_submit,
            overlap_events: a.overlap_events,
            sqpoll: self.zinf.sqpoll,
            ..zinf_aio::AioConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn shipped_configs_convert_for_the_optimizer_and_aio() {
        for name in [
            "first_run.json",
            "zero3_cpu_offload.json",
            "zero3_nvme_offload.json",
            "gpt2_1p5b_nvme.json",
        ] {
            let path = format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"));
            let c = Config::load(std::path::Path::new(&path))
                .expect("valid")
                .config;
            c.loss_scaler().unwrap_or_else(|e| panic!("{name}: {e}"));
            c.lr_scheduler().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.aio_config().block_size as u64, c.aio.block_size);
        }
        let c = Config::parse(r#"{"train_batch_size": 1, "optimizer": {"type": "AdamW", "params": {"lr": 0.5, "betas": [0.8, 0.9]}}}"#, "t")
            .expect("valid")
            .config;
        let a = c.adam();
        assert_eq!((a.lr, a.betas, a.adam_w_mode), (0.5, (0.8, 0.9), true));
    }
}
