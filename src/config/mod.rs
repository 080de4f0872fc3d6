//! The DeepSpeed JSON config, read as DeepSpeed reads it, with clearer errors.
//!
//! [`Config::from_str`] turns the text into typed structs with DeepSpeed's defaults filled in,
//! every `"auto"` resolved (and said so), deprecated keys mapped (with one warning each), and
//! every problem reported with its JSON path — all of them, not just the first. What DeepSpeed
//! cannot express (model shape, data, memory budgets, trace output) lives in the top-level
//! `"zinf"` block ([`ZinfConfig`]), which DeepSpeed ignores.
//!
//! This module only reads and validates; it does not act on the config.

mod convert;
mod json;
mod limits;
mod reader;
mod sections;
mod zero;
mod zinf;

pub use convert::ConvertError;
pub use limits::{largest_tensor, min_state_bytes, param_count, MAX_BATCH, MODEL_LIMITS};
pub use reader::{parse_size, whole_u64, Auto};
pub use sections::{
    ActivationCheckpointing, AdamParams, Bf16Config, Fp16Config, MonitorConfig, OptimizerConfig,
    SchedulerConfig, SchedulerType,
};
pub use zero::{
    AioSection, OffloadDevice, OffloadOptimizer, OffloadParam, ZeroConfig, AIO_MAX_QUEUE_DEPTH,
    AIO_MAX_THREADS,
};
pub use zinf::{host_memory_bytes, DataConfig, DeviceChoice, ZinfConfig, MAX_THREADS};

use reader::Section;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// The config every subcommand runs from when none is given: `configs/first_run.json`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../configs/first_run.json");

/// One problem or notice, anchored at a JSON path (`zero_optimization.offload_param.device`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything found while reading a config: errors end the read, warnings and resolutions
/// (`"auto"` → value, with the reason) are logged once by the caller.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Diagnostics {
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
    pub resolutions: Vec<Issue>,
    /// `zinf.strict_config`: unknown keys are errors (true, the default) or warnings.
    #[serde(skip)]
    pub strict: bool,
    /// Every section read so far: its path and the keys it knows.
    #[serde(skip)]
    sections: Vec<(String, Vec<&'static str>)>,
    /// Keys nobody read: (section path, key), reported by `report_unknown_keys`.
    #[serde(skip)]
    unread: Vec<(String, String)>,
}

impl Diagnostics {
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Issue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Issue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn resolved(&mut self, path: &str, message: impl Into<String>) {
        self.resolutions.push(Issue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// A section's known keys and the keys in it nobody read (from `Section::finish`).
    pub(crate) fn section_read(
        &mut self,
        path: &str,
        known: Vec<&'static str>,
        unread: Vec<String>,
    ) {
        self.sections.push((path.to_string(), known));
        self.unread
            .extend(unread.into_iter().map(|k| (path.to_string(), k)));
    }

    /// Reports every unread key, once all sections are known. A key that some other section
    /// knows points there (`offload_optimizer` at the top → `zero_optimization.offload_optimizer`),
    /// else a near spelling in its own section is suggested. DeepSpeed reads its top level key
    /// by key and ignores the rest, so an unknown top-level key with no suggestion is a warning
    /// (`my_block: not a key zinf uses; ignored`); inside DeepSpeed's strict sections
    /// (`zero_optimization`, `offload_*`, …, pydantic models with `extra = "forbid"`) it is an
    /// error unless `zinf.strict_config` is false.
    pub(crate) fn report_unknown_keys(&mut self) {
        for (section, key) in std::mem::take(&mut self.unread) {
            let path = reader::join(&section, &key);
            let elsewhere: Vec<String> = self
                .sections
                .iter()
                .filter(|(p, known)| *p != section && known.contains(&key.as_str()))
                .map(|(p, _)| reader::join(p, &key))
                .collect();
            let own = self
                .sections
                .iter()
                .find(|(p, _)| *p == section)
                .and_then(|(_, known)| reader::nearest(&key, known.iter().copied()));
            let hint = match (elsewhere.len(), own) {
                (1..=2, _) => Some(elsewhere.join(" or ")),
                (_, Some(n)) => Some(n.to_string()),
                _ => None,
            };
            match hint {
                Some(h) => self.unknown_key(Issue {
                    path,
                    message: format!("unknown key; did you mean {h}?"),
                }),
                None if section.is_empty() => self.warn(&path, "not a key zinf uses; ignored"),
                None => self.unknown_key(Issue {
                    path,
                    message: "unknown key".into(),
                }),
            }
        }
    }

    pub(crate) fn unknown_key(&mut self, issue: Issue) {
        if self.strict {
            self.errors.push(issue);
        } else {
            self.warnings.push(issue);
        }
    }
}

/// A config that could not be read: every problem found, each naming its JSON path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{source_name}: not valid UTF-8 at byte {byte} (save the file as UTF-8)")]
    Encoding { source_name: String, byte: usize },
    #[error("{source_name}: not valid JSON at line {line}, column {column}: {message}")]
    Syntax {
        source_name: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{source_name}: {} problem(s):\n{}", issues.len(), list(issues))]
    Invalid {
        source_name: String,
        issues: Vec<Issue>,
    },
}

fn list(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fully resolved config: every field has its value, defaults and `"auto"` filled in.
/// Field names are DeepSpeed's JSON keys.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub train_batch_size: u64,
    pub train_micro_batch_size_per_gpu: u64,
    pub gradient_accumulation_steps: u64,
    pub gradient_clipping: f64,
    pub steps_per_print: u64,
    pub wall_clock_breakdown: bool,
    pub optimizer: OptimizerConfig,
    pub scheduler: Option<SchedulerConfig>,
    pub fp16: Fp16Config,
    pub bf16: Bf16Config,
    pub zero_optimization: ZeroConfig,
    pub aio: AioSection,
    pub activation_checkpointing: ActivationCheckpointing,
    pub csv_monitor: MonitorConfig,
    pub tensorboard: MonitorConfig,
    pub flops_profiler: sections::FlopsProfiler,
    pub zinf: ZinfConfig,
}

/// A config plus what was noticed while reading it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub diagnostics: Diagnostics,
}

impl Loaded {
    /// The config for a run of `steps` optimizer steps (`zinf train --steps`; `None` keeps
    /// `zinf.train_steps`): `zinf.train_steps` becomes `steps`, an `"auto"` `total_num_steps`
    /// follows it (Hugging Face sets it from the steps the trainer runs), and the warning for a
    /// run longer than its schedule is redone for `steps`. Call it before [`Loaded::log`] so
    /// each line is logged once, with the final numbers.
    pub fn with_train_steps(mut self, steps: Option<u64>) -> Loaded {
        let Some(steps) = steps else { return self };
        self.config.zinf.train_steps = steps;
        const TOTAL: &str = "scheduler.params.total_num_steps";
        let d = &mut self.diagnostics;
        d.warnings.retain(|w| w.path != TOTAL);
        let Some(s) = &mut self.config.scheduler else {
            return self;
        };
        if s.auto_total_num_steps {
            s.params
                .insert("total_num_steps".into(), Value::from(steps));
            d.resolutions.retain(|r| r.path != TOTAL);
            d.resolved(TOTAL, format!("auto -> {steps} (the steps this run takes)"));
        }
        d.warnings.extend(sections::schedule_overrun(s, steps));
        self
    }

    /// Logs warnings and `"auto"` resolutions, once each.
    pub fn log(&self) {
        for w in &self.diagnostics.warnings {
            tracing::warn!("config: {w}");
        }
        for r in &self.diagnostics.resolutions {
            tracing::info!("config: {r}");
        }
    }
}

impl Config {
    /// Reads and resolves a config file (UTF-8, with or without a byte-order mark).
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_bytes(&bytes, &path.display().to_string())
    }

    /// The embedded default run (`configs/first_run.json`).
    pub fn embedded_default() -> Result<Loaded, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT, "configs/first_run.json (embedded)")
    }

    /// Reads and resolves config text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Loaded, ConfigError> {
        Self::parse_bytes(text.as_bytes(), source_name)
    }

    /// Reads and resolves config bytes: a UTF-8 byte-order mark is skipped; invalid UTF-8, a
    /// JSON syntax error or a key written twice in one object (DeepSpeed refuses those too) is
    /// an error naming where.
    pub fn parse_bytes(bytes: &[u8], source_name: &str) -> Result<Loaded, ConfigError> {
        Self::parse_bytes_from(bytes, source_name, None, 1)
    }

    /// [`Config::parse_bytes`] for a run of `world_size` ranks (see
    /// [`Config::load_for_world`]).
    pub fn parse_bytes_for_world(
        bytes: &[u8],
        source_name: &str,
        world_size: u64,
    ) -> Result<Loaded, ConfigError> {
        Self::parse_bytes_from(bytes, source_name, None, world_size)
    }

    /// Reads and resolves a config file, or the embedded default when `path` is `None`, with
    /// `zinf.model.from` set to `model_from` when given (`--init-from DIR`): the folder's
    /// shape is known while the config resolves, so `"auto"` sizes follow its hidden size.
    pub fn load_from(
        path: Option<&Path>,
        model_from: Option<&Path>,
    ) -> Result<Loaded, ConfigError> {
        Self::load_for_world(path, model_from, 1)
    }

    /// [`Config::load_from`] for a run of `world_size` data-parallel ranks:
    /// `train_batch_size = train_micro_batch_size_per_gpu × gradient_accumulation_steps ×
    /// world_size`, as DeepSpeed resolves it with its world size.
    pub fn load_for_world(
        path: Option<&Path>,
        model_from: Option<&Path>,
        world_size: u64,
    ) -> Result<Loaded, ConfigError> {
        match path {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse_bytes_from(&bytes, &path.display().to_string(), model_from, world_size)
            }
            None => Self::parse_bytes_from(
                EMBEDDED_DEFAULT.as_bytes(),
                "configs/first_run.json (embedded)",
                model_from,
                world_size,
            ),
        }
    }

    fn parse_bytes_from(
        bytes: &[u8],
        source_name: &str,
        model_from: Option<&Path>,
        world_size: u64,
    ) -> Result<Loaded, ConfigError> {
        let source = || source_name.to_string();
        let mut value: Value = json::parse(bytes).map_err(|p| match p {
            json::JsonProblem::Utf8 { byte } => ConfigError::Encoding {
                source_name: source(),
                byte,
            },
            json::JsonProblem::Syntax {
                line,
                column,
                message,
            } => ConfigError::Syntax {
                source_name: source(),
                line,
                column,
                message,
            },
            json::JsonProblem::Duplicates(paths) => ConfigError::Invalid {
                source_name: source(),
                issues: paths
                    .into_iter()
                    .map(|path| Issue {
                        path,
                        message: "key written twice in one object; keep one".into(),
                    })
                    .collect(),
            },
        })?;
        if let (Some(dir), Some(root)) = (model_from, value.as_object_mut()) {
            let zinf = root
                .entry("zinf")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(z) = zinf.as_object_mut() {
                let model = z
                    .entry("model")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(m) = model.as_object_mut() {
                    m.insert("from".into(), Value::from(dir.display().to_string()));
                }
            }
        }
        let mut diag = Diagnostics {
            strict: true,
            ..Diagnostics::default()
        };
        let config = read_root(&value, world_size.max(1), &mut diag);
        if let Some(c) = config.as_ref().filter(|_| diag.errors.is_empty()) {
            let free = |p: &str| crate::estimate::statvfs_free_bytes(std::path::Path::new(p));
            if let Err(issue) = c.check_fits(host_memory_bytes(), &free) {
                diag.errors.push(issue);
            }
        }
        match config {
            Some(config) if diag.errors.is_empty() => Ok(Loaded {
                config,
                diagnostics: diag,
            }),
            _ => Err(ConfigError::Invalid {
                source_name: source_name.to_string(),
                issues: diag.errors,
            }),
        }
    }

    /// Bytes per parameter element of the stored (16-bit or fp32) model weights.
    pub fn param_dtype_bytes(&self) -> u64 {
        if self.fp16.enabled || self.bf16.enabled {
            2
        } else {
            4
        }
    }

    /// The stored weight type's name: "fp16", "bf16" or "fp32".
    pub fn param_dtype_name(&self) -> &'static str {
        if self.fp16.enabled {
            "fp16"
        } else if self.bf16.enabled {
            "bf16"
        } else {
            "fp32"
        }
    }
}

/// DeepSpeed top-level sections zinf parses but does not act on (one node, no Python).
const ACCEPTED_UNUSED: &[&str] = &[
    "amp",
    "autotuning",
    "checkpoint",
    "comet",
    "comms_logger",
    "communication_data_type",
    "compression_training",
    "curriculum_learning",
    "data_efficiency",
    "data_types",
    "disable_allgather",
    "dump_state",
    "eigenvalue",
    "elasticity",
    "gradient_predivide_factor",
    "memory_breakdown",
    "nebula",
    "pipeline",
    "prescale_gradients",
    "progressive_layer_drop",
    "quantize_training",
    "seq_parallel_communication_data_type",
    "sparse_attention",
    "sparse_gradients",
    "wandb",
    "weight_quantization",
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
];

fn read_root(value: &Value, world_size: u64, diag: &mut Diagnostics) -> Option<Config> {
    if !value.is_object() {
        diag.error(
            "",
            format!(
                "the config must be a JSON object, found {}",
                reader::describe(value)
            ),
        );
        return None;
    }
    // The zinf block first: it decides strictness and gives the model that "auto" resolves from.
    let zinf = zinf::read(value.get("zinf"), diag);
    let mut root = Section::new("", Some(value), diag);
    root.raw("zinf");
    for key in ACCEPTED_UNUSED {
        if root.raw(key).is_some() {
            diag.warn(
                key,
                "parsed but not used by zinf (single node, no Python); ignored",
            );
        }
    }
    let fp16 = sections::read_fp16(&mut root, diag);
    let bf16 = sections::read_bf16(&mut root, diag);
    if fp16.enabled && bf16.enabled {
        diag.error("bf16.enabled", "fp16 and bf16 cannot both be enabled");
    }
    let (train_batch_size, micro, gas) = sections::read_batch(&mut root, world_size, diag);
    let gradient_clipping = match root.auto_f64("gradient_clipping", diag) {
        Some(Auto::Set(v)) => v,
        Some(Auto::Auto) => {
            diag.resolved(
                "gradient_clipping",
                "auto -> 1.0 (Hugging Face's max_grad_norm default)",
            );
            1.0
        }
        None => 0.0,
    };
    let steps_per_print = root.u64("steps_per_print", 10, diag);
    let wall_clock_breakdown = root.bool("wall_clock_breakdown", false, diag);
    let optimizer = sections::read_optimizer(&mut root, diag);
    let scheduler = sections::read_scheduler(&mut root, &optimizer, &zinf, diag);
    if let Some(w) = scheduler
        .as_ref()
        .and_then(|s| sections::schedule_overrun(s, zinf.train_steps))
    {
        diag.warnings.push(w);
    }
    let zero_optimization = zero::read_zero(&mut root, &zinf, diag);
    let aio = zero::read_aio(&mut root, diag);
    let activation_checkpointing = sections::read_activation_checkpointing(&mut root, diag);
    let csv_monitor = sections::read_monitor(&mut root, "csv_monitor", diag);
    let tensorboard = sections::read_monitor(&mut root, "tensorboard", diag);
    let flops_profiler = sections::read_flops_profiler(&mut root, diag);
    root.finish(diag);
    diag.report_unknown_keys();
    Some(Config {
        train_batch_size,
        train_micro_batch_size_per_gpu: micro,
        gradient_accumulation_steps: gas,
        gradient_clipping,
        steps_per_print,
        wall_clock_breakdown,
        optimizer,
        scheduler,
        fp16,
        bf16,
        zero_optimization,
        aio,
        activation_checkpointing,
        csv_monitor,
        tensorboard,
        flops_profiler,
        zinf,
    })
}
