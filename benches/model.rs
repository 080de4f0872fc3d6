//! GPT-2 step throughput on the CPU device against the matmul crate's own peak, same run.
//!
//! Prints the FLOP rate of `gemm` on a large square product and of a GPT-2 forward+backward
//! step (default: 124M, batch 4 x 256 tokens, bf16 parameters, 2 threads), their ratio
//! (target >= 0.6) and tokens/s. Medians of interleaved repetitions. Environment:
//! `ZINF_THREADS` (2), `ZINF_BENCH_REPS` (3), `ZINF_BENCH_MODEL` (`124m` or `tiny`),
//! `ZINF_BENCH_CKPT` (1: activation checkpointing).

use std::time::Instant;
use zinf::device::cpu::kernels::{gemm_acc, Mat};
use zinf::device::CpuDevice;
use zinf::model::llama::seeded_source;
use zinf::model::{init_params, Gpt, GptConfig, HostParams, Llama, LlamaConfig, ParamDtype};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn gemm_seconds(n: usize, threads: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> f64 {
    let t0 = Instant::now();
    let lhs = Mat {
        data: a,
        off: 0,
        rs: n,
        cs: 1,
    };
    let rhs = Mat {
        data: b,
        off: 0,
        rs: n,
        cs: 1,
    };
    gemm_acc(n, n, n, c, 0, n, lhs, rhs, false, threads);
    t0.elapsed().as_secs_f64()
}

/// SmolLM2-135M's shape (a `LlamaForCausalLM` from Hugging Face: hidden 576, 30 layers, GQA
/// 9/3 heads of 64, SwiGLU 1536, vocab 49152, tied), the Llama family's GPT-2 124M.
const SMOLLM2_135M: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
  "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
  "rms_norm_eps": 1e-5, "rope_theta": 100000, "tie_word_embeddings": true}"#;

/// One model step (zero grads, forward, backward) of whichever model is benchmarked.
trait Bench {
    fn step(&mut self, dev: &CpuDevice, x: &[u32], y: &[u32]) -> anyhow::Result<f32>;
}

impl Bench for Gpt<CpuDevice> {
    fn step(&mut self, dev: &CpuDevice, x: &[u32], y: &[u32]) -> anyhow::Result<f32> {
        self.zero_grads(dev)?;
        let loss = self.forward(dev, x, y)?;
        self.backward(dev, x, y, 1.0)?;
        Ok(loss)
    }
}

impl Bench for Llama<CpuDevice> {
    fn step(&mut self, dev: &CpuDevice, x: &[u32], y: &[u32]) -> anyhow::Result<f32> {
        self.zero_grads(dev)?;
        let loss = self.forward_all(dev, x, y)?;
        self.backward_all(dev, x, y, 1.0)?;
        Ok(loss)
    }
}

fn main() -> anyhow::Result<()> {
    let threads = env("ZINF_THREADS", 2);
    let reps = env("ZINF_BENCH_REPS", 3).max(1);
    let ckpt = env("ZINF_BENCH_CKPT", 0) == 1;
    let which = std::env::var("ZINF_BENCH_MODEL").unwrap_or_default();
    let dev = CpuDevice::new(threads, 24 << 30);
    let (name, mut model, flops_per_token, params, vocab, b, t): (
        &str,
        Box<dyn Bench>,
        f64,
        usize,
        usize,
        usize,
        usize,
    ) = if which == "llama" {
        let cfg = LlamaConfig::from_json(SMOLLM2_135M, "SmolLM2-135M")?;
        let (b, t) = (4, 256);
        let mut m = Llama::new(&dev, cfg.clone(), b, t, ckpt)?;
        let mut src = seeded_source(&cfg, 1);
        let p = src(0..cfg.num_params())?;
        m.load_params(&dev, &HostParams::from_f32(ParamDtype::Bf16, &p).to_f32())?;
        let f = cfg.train_flops_per_token(t);
        (
            "smollm2-135m",
            Box::new(m),
            f,
            cfg.num_params(),
            cfg.vocab_size,
            b,
            t,
        )
    } else {
        let (cfg, b, t) = if which == "tiny" {
            (
                GptConfig {
                    n_layer: 2,
                    n_head: 4,
                    n_embd: 128,
                    vocab_size: 50257,
                    block_size: 64,
                },
                8,
                64,
            )
        } else {
            (GptConfig::gpt2_124m(), 4, 256)
        };
        let mut m = Gpt::new(&dev, cfg, b, t, ckpt)?;
        let p = init_params(&m.layout, cfg.n_layer, 1);
        m.load_params(&dev, &HostParams::from_f32(ParamDtype::Bf16, &p))?;
        let name = if cfg.n_layer == 12 {
            "gpt2-124m"
        } else {
            "tiny"
        };
        let f = cfg.train_flops_per_token(t);
        (name, Box::new(m), f, cfg.num_params(), cfg.vocab_size, b, t)
    };
    let n = 2048;
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let bm = a.clone();
    let mut c = vec![0.0f32; n * n];
    let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 31) % vocab) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| ((i * 17 + 3) % vocab) as u32).collect();
    gemm_seconds(n, threads, &a, &bm, &mut c); // warm-up: first touch of every buffer
    model.step(&dev, &tokens, &targets)?;
    let (mut g, mut s) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        g.push(gemm_seconds(n, threads, &a, &bm, &mut c));
        let t0 = Instant::now();
        let loss = model.step(&dev, &tokens, &targets)?;
        s.push(t0.elapsed().as_secs_f64());
        eprintln!("step {:.3}s loss {loss:.4}", s[s.len() - 1]);
    }
    let gemm_gflops = 2.0 * (n as f64).powi(3) / median(g) / 1e9;
    let step_s = median(s);
    let model_gflops = flops_per_token * (b * t) as f64 / step_s / 1e9;
    println!("threads={threads} model={name} params={params} batch={b}x{t} checkpointing={ckpt}");
    println!("gemm_{n}_gflops={gemm_gflops:.1}");
    println!(
        "model_step_s={step_s:.3} model_gflops={model_gflops:.1} tokens_per_s={:.0}",
        (b * t) as f64 / step_s
    );
    println!(
        "ratio_model_to_gemm={:.3} (target >= 0.6)",
        model_gflops / gemm_gflops
    );
    Ok(())
}
