//! `zinf eval --from DIR --data FILE`: the mean loss and perplexity of a Hugging Face folder's
//! model over a data file (any format `train` reads; chat prompts are masked, as in
//! training), in consecutive windows of `--seq-len` tokens.
//!
//! The weights stream as in training: the folder's memory-mapped shards are the parameters'
//! home, and each stage's groups are read and uploaded right before it and dropped right after,
//! so the device and host hold one layer at a time — a model larger than RAM evaluates from
//! the page cache and the drive. No optimizer state is made.

use crate::data::chat::ChatTemplate;
use crate::data::formats::{self, DataFormat, TokenizeWith, PROMPT_FLAG};
use crate::data::{val_batches, Tokenizer};
use crate::device::{Device, HostSlice};
use crate::model::hf::open_weights;
use crate::model::stages::valid_targets;
use crate::model::{Model, ModelSpec, ParamDtype};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Hugging Face folder (config.json, safetensors, tokenizer.json for the Llama family).
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Text, llm.c .bin tokens, or JSONL (text, messages, alpaca, sharegpt).
    #[arg(long)]
    pub data: PathBuf,
    /// How the data is read: auto, text, jsonl, messages, alpaca, sharegpt.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Tokens per window (default: the model's positions, at most 1024).
    #[arg(long, value_parser = super::count_usize(1, 1 << 22))]
    pub seq_len: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 1, value_parser = super::count_usize(1, 1 << 20))]
    pub batch: usize,
    /// At most this many batches (default: the whole file).
    #[arg(long, value_parser = super::count_usize(1, u32::MAX as u64))]
    pub max_batches: Option<usize>,
    /// Compute device: auto (the GPU when this build has CUDA support and one is present),
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = crate::config::DeviceChoice::parse)]
    pub device: crate::config::DeviceChoice,
    /// CPU threads.
    #[arg(long, default_value_t = 2, value_parser = super::parse_threads)]
    pub threads: usize,
    /// Device memory budget in GiB.
    #[arg(long, default_value_t = 8.0, value_parser = super::parse_positive)]
    pub device_memory_gib: f64,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `zinf eval` measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy over every predicted (not masked) token, nats.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Tokens predicted (targets not masked).
    pub tokens: u64,
    pub batches: usize,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let r = eval(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "loss {:.4} | perplexity {:.3} | {} tokens in {} batches",
            r.loss, r.perplexity, r.tokens, r.batches
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Evaluates `args.from` on `args.data`.
pub fn eval(args: &EvalArgs) -> anyhow::Result<EvalResult> {
    let spec = ModelSpec::from_folder(&args.from)
        .with_context(|| format!("loading {}", args.from.display()))?;
    let format = DataFormat::from_name(&args.format).with_context(|| {
        format!(
            "--format {}: one of {}",
            args.format,
            DataFormat::NAMES.join(", ")
        )
    })?;
    let (_, groups) = spec.layout();
    // The parameters' home: the mapped folder, read one group range at a time.
    let (weights, tensors, _) = open_weights(&args.from, &spec)?;
    let tok = Tokenizer::for_model(&spec, Some(&args.from))?;
    let chat = ChatTemplate::from_folder(&args.from)?;
    let tokens = formats::load(
        &args.data,
        format,
        &TokenizeWith {
            tokenizer: &tok,
            chat: chat.as_ref(),
        },
    )?;
    let t = args
        .seq_len
        .unwrap_or(spec.max_positions().min(1024))
        .min(spec.max_positions());
    let max_tok = tokens.iter().map(|&k| k & !PROMPT_FLAG).max().unwrap_or(0);
    anyhow::ensure!(
        (max_tok as usize) < spec.vocab_size(),
        "{}: token id {max_tok} is beyond the model's vocabulary ({})",
        args.data.display(),
        spec.vocab_size()
    );
    let batches = val_batches(
        &tokens,
        args.batch,
        t,
        args.max_batches.unwrap_or(usize::MAX),
    );
    anyhow::ensure!(
        !batches.is_empty(),
        "{}: {} tokens, fewer than one window of {} x {t} + 1",
        args.data.display(),
        tokens.len(),
        args.batch
    );
    let budget_bytes = (args.device_memory_gib * (1u64 << 30) as f64) as u64;
    let kind = crate::session::pick_device(args.device)?;
    let any = crate::session::open_device_of(kind, args.threads, budget_bytes, ParamDtype::F32)?;
    let run = Windows {
        spec: &spec,
        groups: &groups,
        weights: &weights,
        tensors: &tensors,
        batches: &batches,
        batch: args.batch,
        t,
    };
    crate::with_device!(any, |dev| run.eval_on(&dev))
}

/// What [`eval`] resolved before opening the device.
struct Windows<'a> {
    spec: &'a ModelSpec,
    groups: &'a [std::ops::Range<usize>],
    weights: &'a crate::model::hf::HfWeights,
    tensors: &'a [crate::model::TensorSpec],
    batches: &'a [(Vec<u32>, Vec<u32>)],
    batch: usize,
    t: usize,
}

impl Windows<'_> {
    /// The mean loss over the windows on `dev`, the weights streamed stage by stage.
    fn eval_on<D: Device>(&self, dev: &D) -> anyhow::Result<EvalResult> {
        let Windows {
            spec,
            groups,
            weights,
            tensors,
            batches,
            batch,
            t,
        } = *self;
        let mut model = spec.build(dev, batch, t, false)?;
        let stages = model.stages().clone();
        let (mut sum, mut count) = (0.0f64, 0u64);
        for (x, y) in batches {
            let mut loss = None;
            for (i, st) in stages.forward.iter().enumerate() {
                for &g in &st.fetch {
                    let values = weights.read_range(tensors, groups[g].clone())?;
                    let mut buf = dev.alloc("parameters", values.len())?;
                    dev.wait(dev.upload(&mut buf, 0, HostSlice::F32(&values))?)?;
                    model.install_params(g, buf);
                }
                loss = model.forward(dev, i, x, y)?.or(loss);
                for &g in &st.release {
                    model.take_params(g);
                }
            }
            // The head's groups are kept for a backward that eval does not run.
            for g in 0..groups.len() {
                model.take_params(g);
            }
            let n = y
                .iter()
                .filter(|&&k| k != crate::device::IGNORE_INDEX)
                .count() as u64;
            if n > 0 {
                sum += loss.context("the model computed no loss")? as f64 * valid_targets(y) as f64;
                count += n;
            }
        }
        anyhow::ensure!(
            count > 0,
            "every target in the data is masked: nothing to evaluate"
        );
        let loss = sum / count as f64;
        Ok(EvalResult {
            loss,
            perplexity: loss.exp(),
            tokens: count,
            batches: batches.len(),
        })
    }
}
