//! Where each kind of state lives, resolved from `zero_optimization`: parameters and optimizer
//! state each on the device (`none`), in host memory (`cpu`) or in the NVMe swap store (`nvme`).
//!
//! This file only decides; the tiers themselves are in `tiers.rs`. DeepSpeed's rules are kept:
//! parameter offload needs stage 3; an `nvme` device needs an `nvme_path`.

use super::EngineError;
use crate::config::{Config, OffloadDevice};
use std::path::PathBuf;

/// One tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Resident: kept where compute reads it (device memory for parameters; for the optimizer
    /// of the CPU backend, host memory next to the parameters).
    Device,
    /// Host memory (`pin_memory` asks for page-locked buffers).
    Cpu { pin_memory: bool },
    /// The swap store's extent files in this folder.
    Nvme { path: PathBuf },
}

impl Tier {
    /// The name DeepSpeed's `device` key uses.
    pub fn name(&self) -> &'static str {
        match self {
            Tier::Device => "none",
            Tier::Cpu { .. } => "cpu",
            Tier::Nvme { .. } => "nvme",
        }
    }

    pub fn is_nvme(&self) -> bool {
        matches!(self, Tier::Nvme { .. })
    }
}

/// Placement of parameters (their fp16/bf16 copy) and of optimizer state (fp32 master, m, v).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub params: Tier,
    pub optimizer: Tier,
}

impl Placement {
    /// Everything resident.
    pub fn resident() -> Self {
        Placement {
            params: Tier::Device,
            optimizer: Tier::Device,
        }
    }

    /// Resolves the config's offload sections.
    pub fn from_config(cfg: &Config) -> Result<Self, EngineError> {
        let z = &cfg.zero_optimization;
        let tier = |dev: OffloadDevice, path: &Option<String>, pin: bool, key: &str| match dev {
            OffloadDevice::None => Ok(Tier::Device),
            OffloadDevice::Cpu => Ok(Tier::Cpu { pin_memory: pin }),
            OffloadDevice::Nvme => match path {
                Some(p) if !p.is_empty() => Ok(Tier::Nvme {
                    path: PathBuf::from(p),
                }),
                _ => Err(EngineError::Config(format!(
                    "zero_optimization.{key}.nvme_path: {} but {key}.device is \"nvme\": name a \
                     folder on the drive to offload to",
                    if path.is_some() { "empty" } else { "not set" }
                ))),
            },
        };
        let p = &z.offload_param;
        let o = &z.offload_optimizer;
        let params = tier(p.device, &p.nvme_path, p.pin_memory, "offload_param")?;
        let optimizer = tier(o.device, &o.nvme_path, o.pin_memory, "offload_optimizer")?;
        if params != Tier::Device && z.stage != 3 {
            return Err(EngineError::Config(format!(
                "zero_optimization.offload_param needs stage 3 (the config has stage {}): \
                 set \"stage\": 3 or drop offload_param",
                z.stage
            )));
        }
        Ok(Placement { params, optimizer })
    }

    /// Which state goes to the NVMe tier.
    pub fn on_nvme(&self) -> crate::tiers::NvmePlacement {
        crate::tiers::NvmePlacement {
            params: self.params.is_nvme(),
            optimizer: self.optimizer.is_nvme(),
        }
    }

    /// The placement of rank `rank` of several: each `nvme_path` gets a `rank{rank}` folder,
    /// so ranks sharing a drive never share a store (DeepSpeed's swap folders are per rank
    /// too, `zero_stage_3/.../rank{r}`).
    pub fn for_rank(&self, rank: usize) -> Self {
        let per_rank = |t: &Tier| match t {
            Tier::Nvme { path } => Tier::Nvme {
                path: path.join(format!("rank{rank}")),
            },
            other => other.clone(),
        };
        Placement {
            params: per_rank(&self.params),
            optimizer: per_rank(&self.optimizer),
        }
    }

    /// The folders of the swap store: every distinct `nvme_path` (chunks are striped over them,
    /// so two folders on two drives add their bandwidth).
    pub fn nvme_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = Vec::new();
        for t in [&self.params, &self.optimizer] {
            if let Tier::Nvme { path } = t {
                if !v.contains(path) {
                    v.push(path.clone());
                }
            }
        }
        v
    }
}
