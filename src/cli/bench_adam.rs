//! `zinf bench adam`: CPU Adam step throughput on random state (never zeros), against this
//! machine's memory bandwidth measured in the same run (a built-in STREAM triad) and against the
//! scalar reference kernel. Prints params/s, GB/s and the kernel chosen; `--json` prints one
//! object. It measures; it does not tune anything or write files.

use std::process::ExitCode;
use std::time::Instant;

use half::{bf16, f16};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::optim::{Adam, AdamConfig, Grad, Kernel, ParamOut, StepScalars};

#[derive(clap::Args, Debug)]
pub struct BenchAdamArgs {
    /// Parameters in the group (fp32 master, m, v and gradient each take 4 B per parameter);
    /// `2e8` style accepted, as `bench swap --params`.
    #[arg(long, default_value = "2e8", value_parser = super::count_usize(1, MAX_PARAMS))]
    pub params: usize,
    /// Optimizer threads (0: one per available CPU).
    #[arg(long, default_value_t = 0, value_parser = super::count_usize(0, 4096))]
    pub threads: usize,
    /// Parameter copy-out dtype written in the same pass: fp16, bf16 or none.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Gradient dtype: fp32 (DeepSpeed's CPU gradient partitions), fp16 or bf16.
    #[arg(long, default_value = "fp32")]
    pub grad_dtype: String,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 11, value_parser = super::count_usize(1, 1_000_000))]
    pub steps: usize,
    /// Untimed steps before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Kernel: auto, scalar, avx2 or avx512.
    #[arg(long, default_value = "auto")]
    pub kernel: String,
    /// Timed steps of the scalar reference for the comparison (0 skips it).
    #[arg(long, default_value_t = 3)]
    pub scalar_steps: usize,
    /// f64 elements per STREAM-triad array (3 arrays; 0 skips the triad).
    #[arg(long, default_value_t = 1 << 25)]
    pub stream_elems: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Most parameters `bench adam` and `bench swap` take (2^40).
pub const MAX_PARAMS: u64 = 1 << 40;

/// The buffers of one benchmark group.
struct State {
    p: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    g32: Vec<f32>,
    g16: Vec<f16>,
    gb16: Vec<bf16>,
    o16: Vec<f16>,
    ob16: Vec<bf16>,
}

pub fn run(args: &BenchAdamArgs) -> anyhow::Result<ExitCode> {
    let (grad_bytes, out_bytes) = dtype_bytes(args)?;
    let adam = Adam::new(AdamConfig::default(), args.threads)?;
    let adam = match args.kernel.as_str() {
        "auto" => adam,
        name => {
            let k = Kernel::from_name(name).ok_or_else(|| {
                super::BadInput(format!(
                    "--kernel {name}: not one of auto, scalar, avx2, avx512"
                ))
            })?;
            adam.with_kernel(k)?
        }
    };
    let threads = adam.threads();
    let mut st = init_state(&adam, args);
    let mut adam = adam;
    let times = time_steps(&mut adam, &mut st, args, args.warmup, args.steps, 1)?;
    let med_s = median(times);
    let n = args.params as f64;
    let params_per_s = n / med_s;
    let bytes_per_param = (grad_bytes + 24 + out_bytes) as f64;
    let scalar_pps = if args.scalar_steps > 0 && adam.kernel() != Kernel::Scalar {
        let mut sc = Adam::new(AdamConfig::default(), threads)?.with_kernel(Kernel::Scalar)?;
        let first = (args.warmup + args.steps + 1) as u64;
        let t = time_steps(&mut sc, &mut st, args, 0, args.scalar_steps, first)?;
        Some(n / median(t))
    } else {
        None
    };
    let triad = (args.stream_elems > 0).then(|| stream_triad_gbps(args.stream_elems, threads));
    let report = serde_json::json!({
        "params": args.params,
        "threads": threads,
        "kernel": adam.kernel().name(),
        "dtype": args.dtype,
        "grad_dtype": args.grad_dtype,
        "steps": args.steps,
        "step_ms_median": med_s * 1e3,
        "params_per_s": params_per_s,
        "bytes_per_param": bytes_per_param,
        "gbps": params_per_s * bytes_per_param / 1e9,
        "gbps_28": params_per_s * 28.0 / 1e9,
        "scalar_params_per_s": scalar_pps,
        "speedup_vs_scalar": scalar_pps.map(|s| params_per_s / s),
        "stream_triad_gbps": triad,
        "fraction_of_triad": triad.map(|t| params_per_s * bytes_per_param / 1e9 / t),
    });
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn dtype_bytes(args: &BenchAdamArgs) -> anyhow::Result<(usize, usize)> {
    let g = match args.grad_dtype.as_str() {
        "fp32" => 4,
        "fp16" | "bf16" => 2,
        other => {
            let m = format!("--grad-dtype must be fp32, fp16 or bf16, got {other}");
            return Err(super::BadInput(m).into());
        }
    };
    let o = match args.dtype.as_str() {
        "none" => 0,
        "fp16" | "bf16" => 2,
        other => {
            let m = format!("--dtype must be fp16, bf16 or none, got {other}");
            return Err(super::BadInput(m).into());
        }
    };
    Ok((g, o))
}

fn print_text(r: &serde_json::Value) {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "adam: {} params, {} threads, kernel {}, grad {}, copy-out {}",
        r["params"], r["threads"], r["kernel"], r["grad_dtype"], r["dtype"]
    );
    println!(
        "  step {:.2} ms (median of {}): {:.3} G params/s, {:.2} GB/s at {} B/param ({:.2} GB/s at 28 B/param)",
        f("step_ms_median"),
        r["steps"],
        f("params_per_s") / 1e9,
        f("gbps"),
        r["bytes_per_param"],
        f("gbps_28")
    );
    if r["scalar_params_per_s"].is_number() {
        println!(
            "  scalar reference: {:.3} G params/s ({:.1}x slower)",
            f("scalar_params_per_s") / 1e9,
            f("speedup_vs_scalar")
        );
    }
    if r["stream_triad_gbps"].is_number() {
        println!(
            "  STREAM triad (same run): {:.2} GB/s; adam streams {:.0}% of it",
            f("stream_triad_gbps"),
            100.0 * f("fraction_of_triad")
        );
    }
}

/// Random state, filled in parallel along the optimizer's own partition (first touch).
fn init_state(adam: &Adam, args: &BenchAdamArgs) -> State {
    let n = args.params;
    let want = |d: &str, x: &str| if d == x { n } else { 0 };
    let mut st = State {
        p: vec![0.0; n],
        m: vec![0.0; n],
        v: vec![0.0; n],
        g32: vec![0.0; want(&args.grad_dtype, "fp32")],
        g16: vec![f16::ZERO; want(&args.grad_dtype, "fp16")],
        gb16: vec![bf16::ZERO; want(&args.grad_dtype, "bf16")],
        o16: vec![f16::ZERO; want(&args.dtype, "fp16")],
        ob16: vec![bf16::ZERO; want(&args.dtype, "bf16")],
    };
    let ranges = std::sync::Mutex::new(Vec::new());
    adam.for_each_partition(n, &|r| {
        ranges.lock().unwrap_or_else(|e| e.into_inner()).push(r)
    });
    let mut ranges = ranges.into_inner().unwrap_or_else(|e| e.into_inner());
    ranges.sort_by_key(|r| r.start);
    std::thread::scope(|s| {
        let (mut p, mut m, mut v) = (&mut st.p[..], &mut st.m[..], &mut st.v[..]);
        let mut g = &mut st.g32[..];
        let (mut h, mut b) = (&mut st.g16[..], &mut st.gb16[..]);
        for r in ranges {
            let len = r.end - r.start;
            let (p0, p1) = std::mem::take(&mut p).split_at_mut(len);
            let (m0, m1) = std::mem::take(&mut m).split_at_mut(len);
            let (v0, v1) = std::mem::take(&mut v).split_at_mut(len);
            // Only the gradient dtype being benchmarked is allocated; the others are empty.
            let (gl, hl, bl) = (len.min(g.len()), len.min(h.len()), len.min(b.len()));
            let (g0, g1) = std::mem::take(&mut g).split_at_mut(gl);
            let (h0, h1) = std::mem::take(&mut h).split_at_mut(hl);
            let (b0, b1) = std::mem::take(&mut b).split_at_mut(bl);
            (p, m, v, g, h, b) = (p1, m1, v1, g1, h1, b1);
            s.spawn(move || fill_chunk(r.start as u64, p0, m0, v0, g0, h0, b0));
        }
    });
    st
}

fn fill_chunk(
    seed: u64,
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &mut [f32],
    h: &mut [f16],
    b: &mut [bf16],
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5A17_AD4A);
    // Uniform in +-[0.01, 0.51): no zeros, and 1e-2 times it stays normal even in fp16.
    let mut r = || {
        let x: f32 = rng.random::<f32>() - 0.5;
        x + 0.01f32.copysign(x)
    };
    for i in 0..p.len() {
        let x = r();
        p[i] = x;
        m[i] = 1e-2 * r();
        v[i] = 1e-4 * x * x;
        let gi = 1e-2 * r();
        if let Some(e) = g.get_mut(i) {
            *e = gi;
        }
        if let Some(e) = h.get_mut(i) {
            *e = f16::from_f32(gi);
        }
        if let Some(e) = b.get_mut(i) {
            *e = bf16::from_f32(gi);
        }
    }
}

/// Runs `warmup + steps` steps (step counts from `first_step`) and returns the timed seconds.
fn time_steps(
    adam: &mut Adam,
    st: &mut State,
    args: &BenchAdamArgs,
    warmup: usize,
    steps: usize,
    first_step: u64,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let grad = match args.grad_dtype.as_str() {
            "fp16" => Grad::F16(&st.g16),
            "bf16" => Grad::Bf16(&st.gb16),
            _ => Grad::F32(&st.g32),
        };
        let out = match args.dtype.as_str() {
            "fp16" => ParamOut::F16(&mut st.o16),
            "bf16" => ParamOut::Bf16(&mut st.ob16),
            _ => ParamOut::None,
        };
        let s = StepScalars {
            lr: 1e-3,
            step: first_step + i as u64,
            grad_scale: 1.0 / 1024.0,
        };
        let t0 = Instant::now();
        adam.step(&mut st.p, &mut st.m, &mut st.v, grad, out, s)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// STREAM triad `a = b + s*c` over f64 arrays of `n` elements on `threads` threads: median of
/// 10 passes after one warm-up, 24 B per element (STREAM's counting, no write-allocate).
pub fn stream_triad_gbps(n: usize, threads: usize) -> f64 {
    let threads = threads.max(1);
    let (mut a, b, c) = (vec![0f64; n], vec![1f64; n], vec![2f64; n]);
    let chunk = n.div_ceil(threads);
    let mut times = Vec::with_capacity(10);
    for pass in 0..11 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for ((a, b), c) in a
                .chunks_mut(chunk)
                .zip(b.chunks(chunk))
                .zip(c.chunks(chunk))
            {
                s.spawn(move || triad(a, b, c, 3.0));
            }
        });
        if pass > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&a);
    24.0 * n as f64 / median(times) / 1e9
}

fn triad(a: &mut [f64], b: &[f64], c: &[f64], s: f64) {
    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
        *a = b + s * c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kernel: &str, dtype: &str, grad_dtype: &str) -> BenchAdamArgs {
        BenchAdamArgs {
            params: 100_003,
            threads: 2,
            dtype: dtype.into(),
            grad_dtype: grad_dtype.into(),
            steps: 2,
            warmup: 1,
            kernel: kernel.into(),
            scalar_steps: 1,
            stream_elems: 1 << 16,
            json: true,
        }
    }

    #[test]
    fn bench_runs_every_dtype_and_refuses_bad_ones() {
        for (d, g) in [("bf16", "fp32"), ("fp16", "fp16"), ("none", "bf16")] {
            assert!(run(&args("auto", d, g)).is_ok(), "{d} {g}");
        }
        assert!(run(&args("auto", "fp8", "fp32")).is_err());
        assert!(run(&args("auto", "bf16", "int8")).is_err());
        assert!(run(&args("nosuch", "bf16", "fp32")).is_err());
    }

    #[test]
    fn random_state_has_no_zeros() {
        let adam = Adam::new(AdamConfig::default(), 3).unwrap();
        let st = init_state(&adam, &args("auto", "bf16", "fp32"));
        assert!(st
            .p
            .iter()
            .chain(&st.m)
            .chain(&st.v)
            .chain(&st.g32)
            .all(|x| *x != 0.0));
        let st = init_state(&adam, &args("auto", "bf16", "fp16"));
        assert!(st.g16.iter().all(|x| x.to_f32() != 0.0) && st.g16.len() == 100_003);
        let st = init_state(&adam, &args("auto", "bf16", "bf16"));
        assert!(st.gb16.iter().all(|x| x.to_f32() != 0.0) && st.gb16.len() == 100_003);
        assert!(stream_triad_gbps(1 << 16, 2) > 0.0);
    }
}
