//! `zinf generate`: load a Hugging Face folder (GPT-2 or the Llama family, as written by
//! `zinf train` or `save_pretrained`) and continue a prompt with greedy or top-k sampling on
//! the chosen device (`--device`); `--chat` wraps the prompt in the folder's chat template as a user turn.
//! A sanity check that a trained model learned something, not a serving path (no KV cache:
//! every new token reruns the window).

use crate::data::Tokenizer;
use crate::device::{Device, HostSlice};
use crate::model::hf::open_weights;
use crate::model::{AnyModel, Model, ModelSpec, ParamDtype};
use anyhow::Context;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Hugging Face folder: config.json, safetensors (sharded or not), and for the Llama
    /// family tokenizer.json.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Render the prompt as a user turn with the folder's chat template (and stop at the end
    /// of the assistant's turn).
    #[arg(long)]
    pub chat: bool,
    /// Text to continue.
    #[arg(long, default_value = "The")]
    pub prompt: String,
    /// Number of tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample from the k most likely tokens; 1 is greedy.
    #[arg(long, default_value_t = 40, value_parser = super::count_usize(1, u32::MAX as u64))]
    pub top_k: usize,
    /// Softmax temperature for sampling (0: greedy); a finite number at or above 0.
    #[arg(long, default_value_t = 0.8, value_parser = temperature)]
    pub temperature: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
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
}

/// `--temperature`: finite and at or above 0 (NaN would make every probability NaN).
fn temperature(s: &str) -> Result<f32, String> {
    super::parse_non_negative(s).map(|v| v as f32)
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    generate(args, |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
    })?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// The model of folder `dir` (shape `spec`) resident on `dev` for `b` sequences of `t` tokens:
/// every group's parameters uploaded (fp32) and installed.
pub fn load_resident<D: Device>(
    dev: &D,
    dir: &std::path::Path,
    spec: &ModelSpec,
    b: usize,
    t: usize,
) -> anyhow::Result<AnyModel<D>> {
    let (weights, tensors, _) = open_weights(dir, spec)?;
    let (_, groups) = spec.layout();
    let mut model = spec.build(dev, b, t, false)?;
    for (g, r) in groups.iter().enumerate() {
        let values = weights.read_range(&tensors, r.clone())?;
        let mut buf = dev.alloc("parameters", r.len())?;
        dev.wait(dev.upload(&mut buf, 0, HostSlice::F32(&values))?)?;
        model.install_params(g, buf);
    }
    Ok(model)
}

/// Runs every forward stage but the loss: logits for `input` (B,T) are left in the model.
pub fn forward_logits<D: Device>(
    model: &mut AnyModel<D>,
    dev: &D,
    input: &[u32],
) -> anyhow::Result<()> {
    let n = model.stages().forward.len();
    for stage in 0..n - 1 {
        model.forward(dev, stage, input, &[])?;
    }
    Ok(())
}

/// Continues `args.prompt`, handing each newly decodable piece of text to `emit`; returns the
/// whole continuation (without the prompt).
pub fn generate(args: &GenerateArgs, mut emit: impl FnMut(&str)) -> anyhow::Result<String> {
    let budget_bytes = (args.device_memory_gib * (1u64 << 30) as f64) as u64;
    let kind = crate::session::pick_device(args.device)?;
    let any = crate::session::open_device_of(kind, args.threads, budget_bytes, ParamDtype::F32)?;
    crate::with_device!(any, |dev| generate_on(&dev, args, &mut emit))
}

/// [`generate`] on an opened device.
fn generate_on<D: Device>(
    dev: &D,
    args: &GenerateArgs,
    emit: &mut impl FnMut(&str),
) -> anyhow::Result<String> {
    // The window: the prompt and what is generated, at most the model's positions.
    let spec = ModelSpec::from_folder(&args.from)
        .with_context(|| format!("loading checkpoint {}", args.from.display()))?;
    let tok = Tokenizer::for_model(&spec, Some(&args.from))?;
    let prompt = if args.chat {
        let chat = crate::data::chat::ChatTemplate::from_folder(&args.from)?
            .context("--chat: the folder has no chat_template")?;
        let user = crate::data::chat::Message {
            role: "user".into(),
            content: args.prompt.clone(),
        };
        chat.render(&[user], true)?
    } else {
        args.prompt.clone()
    };
    let mut ids = if args.chat {
        tok.encode_with_offsets(&prompt)?.0
    } else {
        tok.encode(&prompt)?
    };
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty after tokenization");
    if let Some(&big) = ids.iter().max() {
        anyhow::ensure!(
            (big as usize) < spec.vocab_size(),
            "the tokenizer gives id {big}, beyond the model's vocabulary ({})",
            spec.vocab_size()
        );
    }
    let t = spec
        .max_positions()
        .min(ids.len() + args.max_new_tokens)
        .max(1);
    let mut model = load_resident(dev, &args.from, &spec, 1, t)?;
    // transformers stops at generation_config.json's eos ids (Llama 3 Instruct lists its
    // end-of-turn token only there) and config.json's.
    let mut stop: Vec<u32> = match &spec {
        ModelSpec::Llama(c) => c.eos_token_ids.clone(),
        ModelSpec::Gpt2(_) => Vec::new(),
    };
    if let Ok(text) = std::fs::read_to_string(args.from.join("generation_config.json")) {
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not valid JSON",
                args.from.join("generation_config.json").display()
            )
        })?;
        let ids = match &v["eos_token_id"] {
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).collect(),
            x => x.as_u64().into_iter().collect::<Vec<_>>(),
        };
        stop.extend(ids.into_iter().filter_map(|x| u32::try_from(x).ok()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let (prompt_len, mut printed) = (ids.len(), ids.len());
    let mut text = String::new();
    for _ in 0..args.max_new_tokens {
        let start = ids.len().saturating_sub(t);
        let window = &ids[start..];
        let mut input = window.to_vec();
        input.resize(t, 0); // later positions cannot affect earlier ones
        forward_logits(&mut model, dev, &input)?;
        let logits = model.logits_at(dev, 0, window.len() - 1)?;
        let next = pick_token(&logits, args.top_k, args.temperature, &mut rng);
        if stop.contains(&next) {
            break;
        }
        ids.push(next);
        // Emit whole characters only: a token may end inside a multi-byte one.
        let piece = tok.decode(&ids[printed..])?;
        if !piece.contains('\u{FFFD}') {
            emit(&piece);
            text.push_str(&piece);
            printed = ids.len();
        }
    }
    if printed < ids.len() {
        text = tok.decode(&ids[prompt_len..])?;
    }
    Ok(text)
}

/// Greedy when `top_k <= 1` or `temperature <= 0`, else top-k sampling at `temperature`.
pub fn pick_token(logits: &[f32], top_k: usize, temperature: f32, rng: &mut ChaCha8Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if top_k <= 1 || temperature <= 0.0 {
        return order[0] as u32;
    }
    let top = &order[..top_k.min(order.len())];
    let max = logits[top[0]];
    let weights: Vec<f64> = top
        .iter()
        .map(|&i| (((logits[i] - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (&i, w) in top.iter().zip(&weights) {
        if r < *w {
            return i as u32;
        }
        r -= w;
    }
    top[top.len() - 1] as u32
}
