//! The `"zinf"` block: what a DeepSpeed config cannot say (the model's shape, the data, the
//! device/pinned/host memory budgets, trace output, the seed). DeepSpeed ignores unknown
//! top-level blocks, so one file serves both.

use super::reader::{describe, parse_size, whole_u64, Auto, Section};
use super::Diagnostics;
use crate::model::{GptConfig, ModelSpec};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataConfig {
    /// A UTF-8 text file or an llm.c `.bin` of u16 tokens; none = the built-in corpus.
    pub path: Option<String>,
    /// Tokens per training sequence; at most `model.block_size`.
    pub seq_len: u64,
    /// Fraction of the tokens held out for validation.
    pub val_fraction: f64,
    /// Validation every this many steps (0: never).
    pub eval_interval: u64,
    /// Micro-batches per validation.
    pub eval_batches: u64,
    /// How the data file is read: `auto` (by extension and keys), `text`, `jsonl` (a `text`
    /// field a line), `messages`, `alpaca`, `sharegpt` (chat data, prompt masked).
    pub format: String,
}

/// `zinf.device`: which backend computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DeviceChoice {
    /// The first CUDA GPU when this build has CUDA support and a GPU is present, else the CPU
    /// (the default; the run logs which it took and why).
    Auto,
    /// The CPU backend.
    Cpu,
    /// CUDA GPU `N` (`"cuda"` is `"cuda:0"`).
    Cuda(usize),
}

impl DeviceChoice {
    /// Reads `"auto"`, `"cpu"`, `"cuda"` or `"cuda:N"` (the `--device` flag's values too).
    ///
    /// # Errors
    /// Anything else, with the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!(
                    "{s:?} is not a device: use \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// `zinf.device`: a string [`DeviceChoice::parse`] takes; absent is `"auto"`.
fn read_device(s: &mut Section<'_>, diag: &mut Diagnostics) -> DeviceChoice {
    let path = s.key_path("device");
    match s.raw("device") {
        None => DeviceChoice::Auto,
        Some(Value::String(v)) => DeviceChoice::parse(v).unwrap_or_else(|e| {
            diag.error(&path, e);
            DeviceChoice::Auto
        }),
        Some(other) => {
            diag.error(
                &path,
                format!(
                    "expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", found {}",
                    describe(other)
                ),
            );
            DeviceChoice::Auto
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZinfConfig {
    pub strict_config: bool,
    pub seed: u64,
    pub train_steps: u64,
    /// GPT-2 dimensions from `zinf.model`, or the shape of the Hugging Face folder named by
    /// `zinf.model.from`.
    pub model: ModelSpec,
    /// `zinf.model.from`: the Hugging Face folder the run starts from (its weights, and its
    /// tokenizer for a Llama-family model).
    pub model_from: Option<String>,
    pub data: DataConfig,
    /// The compute device (`zinf.device`, or `zinf train --device`), resolved to a backend in
    /// `session::pick_device`.
    pub device: DeviceChoice,
    /// Bytes of device memory the engine may use (the CPU backend enforces it like HBM).
    /// `"auto"` resolves here to half of host RAM, which the CPU backend uses; on a GPU it is
    /// the GPU's free memory less a margin (`device_memory_budget_auto`).
    pub device_memory_budget: u64,
    /// `zinf.device_memory_budget` was `"auto"` (or absent).
    pub device_memory_budget_auto: bool,
    /// Bytes of pinned host memory for swap buffers; none = DeepSpeed's buffer_count × buffer_size.
    pub pinned_memory_budget: Option<u64>,
    /// Bytes of host memory the run may use beyond the pinned pool; none = unchecked.
    pub host_memory_budget: Option<u64>,
    /// Compute threads; none = all cores.
    pub threads: Option<u64>,
    /// Chrome/Perfetto trace output path.
    pub trace: Option<String>,
    /// io_uring submission-queue polling thread (off: it burns a core).
    pub sqpoll: bool,
    /// Two slots per swap-store shard (default false: one). The swap store is scratch — saves
    /// are snapshots in their own folder — so a second slot only doubles the NVMe space; kept
    /// for runs that want the live store itself to survive a crash consistent.
    pub swap_double_buffered: bool,
}

pub fn read(value: Option<&Value>, diag: &mut Diagnostics) -> ZinfConfig {
    let mut s = Section::new("zinf", value, diag);
    let strict_config = s.bool("strict_config", true, diag);
    diag.strict = strict_config;
    let seed = s.u64("seed", 1234, diag);
    let train_steps = s.u64("train_steps", 100, diag);
    let (model, model_from) = read_model(&mut s, diag);
    let data = read_data(&mut s, &model, diag);
    let device = read_device(&mut s, diag);
    let budget = size(&mut s, "device_memory_budget", diag);
    let device_memory_budget_auto = !matches!(budget, Some(Auto::Set(_)));
    let device_memory_budget = match budget {
        Some(Auto::Set(b)) => b,
        _ => {
            let total = host_memory_bytes().unwrap_or(8 << 30);
            let b = total / 2;
            diag.resolved(
                "zinf.device_memory_budget",
                format!("auto -> {b} bytes (half of host RAM)"),
            );
            b
        }
    };
    let pinned_memory_budget = match size(&mut s, "pinned_memory_budget", diag) {
        Some(Auto::Set(b)) => Some(b),
        _ => None,
    };
    let host_memory_budget = match size(&mut s, "host_memory_budget", diag) {
        Some(Auto::Set(b)) => Some(b),
        _ => None,
    };
    let threads = s.opt_u64("threads", diag);
    let threads = match threads {
        Some(0) => {
            diag.error(
                "zinf.threads",
                "must be at least 1 (leave it out to use every core)",
            );
            None
        }
        Some(t) if t > MAX_THREADS => {
            diag.error(
                "zinf.threads",
                format!("{t} is out of range: must be between 1 and {MAX_THREADS}"),
            );
            None
        }
        t => t,
    };
    let trace = s.opt_string("trace", diag);
    let sqpoll = s.bool("sqpoll", false, diag);
    let swap_double_buffered = s.bool("swap_double_buffered", false, diag);
    s.finish(diag);
    ZinfConfig {
        strict_config,
        seed,
        train_steps,
        model,
        model_from,
        data,
        device,
        device_memory_budget,
        device_memory_budget_auto,
        pinned_memory_budget,
        host_memory_budget,
        threads,
        trace,
        sqpoll,
        swap_double_buffered,
    }
}

/// The model: `zinf.model.from` (a Hugging Face folder, read here so `"auto"` values see its
/// hidden size; GPT-2 dimensions written beside it must agree with the folder), else the GPT-2
/// dimensions, defaulting to GPT-2 small (124M). Each dimension is bounded
/// ([`super::limits::MODEL_LIMITS`]); one out of range is an error and reading goes on with the
/// default, so the checks below never see an absurd number.
fn read_model(parent: &mut Section<'_>, diag: &mut Diagnostics) -> (ModelSpec, Option<String>) {
    let raw = parent.raw("model");
    let mut s = Section::new("zinf.model", raw, diag);
    let from = s.opt_string("from", diag);
    let d = GptConfig::gpt2_124m();
    let defaults = [d.n_layer, d.n_head, d.n_embd, d.vocab_size, d.block_size];
    let mut dims = [0usize; 5];
    let mut written = Vec::new();
    for (slot, ((key, min, max), default)) in dims
        .iter_mut()
        .zip(super::limits::MODEL_LIMITS.into_iter().zip(defaults))
    {
        let default = default as u64;
        let key: &'static str = key;
        if s.raw(key).is_some() {
            written.push(key);
        }
        *slot = s.u64_in(key, default, (min, max), diag) as usize;
    }
    let [n_layer, n_head, n_embd, vocab_size, block_size] = dims;
    let m = GptConfig {
        n_layer,
        n_head,
        n_embd,
        vocab_size,
        block_size,
    };
    s.finish(diag);
    if let Some(dir) = &from {
        let spec = match ModelSpec::from_folder(std::path::Path::new(dir)) {
            Ok(spec) => spec,
            Err(e) => {
                diag.error("zinf.model.from", e.to_string());
                return (ModelSpec::Gpt2(m), from);
            }
        };
        for key in written {
            let (mine, theirs) = (spec_dim(&ModelSpec::Gpt2(m), key), spec_dim(&spec, key));
            if mine != theirs {
                diag.error(
                    &format!("zinf.model.{key}"),
                    format!(
                        "{mine}, but the folder of zinf.model.from has {theirs}; drop the key \
                         (the folder's config.json gives the shape)"
                    ),
                );
            }
        }
        return (spec, from);
    }
    if !m.n_embd.is_multiple_of(m.n_head) {
        diag.error(
            "zinf.model.n_embd",
            format!("{} is not divisible by n_head = {}", m.n_embd, m.n_head),
        );
    }
    (ModelSpec::Gpt2(m), None)
}

/// A GPT-2-named dimension of any spec (`n_layer`, `n_head`, `n_embd`, `vocab_size`,
/// `block_size`), for checking a `zinf.model` block against a folder.
fn spec_dim(spec: &ModelSpec, key: &str) -> usize {
    match (spec, key) {
        (ModelSpec::Gpt2(c), "n_layer") => c.n_layer,
        (ModelSpec::Gpt2(c), "n_head") => c.n_head,
        (ModelSpec::Gpt2(c), "n_embd") => c.n_embd,
        (ModelSpec::Llama(c), "n_layer") => c.num_hidden_layers,
        (ModelSpec::Llama(c), "n_head") => c.num_attention_heads,
        (ModelSpec::Llama(c), "n_embd") => c.hidden_size,
        (s, "vocab_size") => s.vocab_size(),
        (s, _) => s.max_positions(),
    }
}

/// The default `zinf.data.seq_len` is the model's positions capped at this, as transformers'
/// `run_clm.py` caps its `block_size` at 1024 (a Llama's 131072 positions are not a sequence
/// length to train at by default).
const DEFAULT_SEQ_LEN_CAP: u64 = 1024;

fn read_data(parent: &mut Section<'_>, model: &ModelSpec, diag: &mut Diagnostics) -> DataConfig {
    let raw = parent.raw("data");
    let mut s = Section::new("zinf.data", raw, diag);
    let path = s.opt_string("path", diag);
    let max = model.max_positions() as u64;
    let seq_len = s.u64("seq_len", max.min(DEFAULT_SEQ_LEN_CAP), diag);
    if seq_len == 0 || seq_len > max {
        diag.error(
            "zinf.data.seq_len",
            format!(
                "{seq_len} must be between 1 and the model's positions, {max} ({})",
                match model {
                    ModelSpec::Gpt2(_) => "zinf.model.block_size",
                    ModelSpec::Llama(_) => "max_position_embeddings of zinf.model.from",
                }
            ),
        );
    }
    let val_fraction = s.f64("val_fraction", 0.1, diag);
    if !(0.0..1.0).contains(&val_fraction) {
        diag.error(
            "zinf.data.val_fraction",
            format!("{val_fraction} must be in [0, 1)"),
        );
    }
    let eval_interval = s.u64("eval_interval", 50, diag);
    let eval_batches = s.u64_in("eval_batches", 4, (0, MAX_EVAL_BATCHES), diag);
    let format = s
        .choice(
            "format",
            crate::data::formats::DataFormat::NAMES,
            "auto",
            diag,
        )
        .to_string();
    s.finish(diag);
    DataConfig {
        format,
        path,
        seq_len,
        val_fraction,
        eval_interval,
        eval_batches,
    }
}

/// A byte size: integer, `"512MiB"`-style string, or `"auto"`.
fn size(s: &mut Section<'_>, key: &'static str, diag: &mut Diagnostics) -> Option<Auto<u64>> {
    let path = s.key_path(key);
    match s.raw(key)? {
        Value::String(t) if t == "auto" => Some(Auto::Auto),
        Value::String(t) => match parse_size(t) {
            Some(b) => Some(Auto::Set(b)),
            None => {
                diag.error(
                    &path,
                    format!(
                        "{t:?} is not a size below 16 EiB (write e.g. 4096, \"512MiB\", \"2GB\")"
                    ),
                );
                None
            }
        },
        v => match v.as_f64().and_then(whole_u64) {
            Some(b) => Some(Auto::Set(b)),
            _ => {
                diag.error(
                    &path,
                    format!(
                        "expected a size in bytes or \"512MiB\", found {}",
                        describe(v)
                    ),
                );
                None
            }
        },
    }
}

/// Most compute threads `zinf.threads` (and `zinf train --threads`) may ask for.
pub const MAX_THREADS: u64 = 4096;
/// Most validation micro-batches per evaluation.
pub const MAX_EVAL_BATCHES: u64 = 1 << 20;

/// Physical memory from /proc/meminfo (MemTotal).
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpt2_small_and_xl_have_huggingface_param_counts() {
        let small = crate::model::GptConfig::gpt2_124m();
        assert_eq!(small.num_params(), 124_439_808);
        let xl = crate::model::GptConfig {
            n_layer: 48,
            n_head: 25,
            n_embd: 1600,
            ..small
        };
        assert_eq!(xl.num_params(), 1_557_611_200);
    }
}
