//! `zinf generate`: load a Hugging Face GPT-2 checkpoint folder (as written by `zinf train`
//! or `save_pretrained`) and continue a prompt with greedy or top-k sampling on the CPU device.
//! A sanity check that a trained model learned something, not a serving path (no KV cache:
//! every new token reruns the window).

use crate::data::Tokenizer;
use crate::device::CpuDevice;
use crate::model::checkpoint::load_hf;
use crate::model::{Gpt, ParamDtype};
use anyhow::Context;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Checkpoint folder with model.safetensors and config.json.
    #[arg(long = "from")]
    pub from: PathBuf,
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

/// Continues `args.prompt`, handing each newly decodable piece of text to `emit`; returns the
/// whole continuation (without the prompt).
pub fn generate(args: &GenerateArgs, mut emit: impl FnMut(&str)) -> anyhow::Result<String> {
    let (cfg, params) = load_hf(&args.from, ParamDtype::F32)
        .with_context(|| format!("loading checkpoint {}", args.from.display()))?;
    let tok = Tokenizer::gpt2();
    let mut ids = tok.encode(&args.prompt)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty after tokenization");
    anyhow::ensure!(
        cfg.vocab_size >= crate::data::GPT2_VOCAB_SIZE,
        "the checkpoint's vocabulary ({}) is smaller than GPT-2's BPE",
        cfg.vocab_size
    );
    let t = cfg.block_size.min(ids.len() + args.max_new_tokens).max(1);
    let budget_bytes = (args.device_memory_gib * (1u64 << 30) as f64) as u64;
    let dev = CpuDevice::new(args.threads, budget_bytes);
    let mut model = Gpt::new(&dev, cfg, 1, t, false)?;
    model.load_params(&dev, &params)?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let (prompt_len, mut printed) = (ids.len(), ids.len());
    let mut text = String::new();
    for _ in 0..args.max_new_tokens {
        let start = ids.len().saturating_sub(t);
        let window = &ids[start..];
        let mut input = window.to_vec();
        input.resize(t, crate::data::GPT2_EOT); // later positions cannot affect earlier ones
        model.forward_logits(&dev, &input)?;
        let logits = model.logits_at(&dev, 0, window.len() - 1)?;
        ids.push(pick_token(&logits, args.top_k, args.temperature, &mut rng));
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
