//! Tests of the optimizer module: SIMD kernels against the scalar reference (bit for bit), the
//! scalar reference against an f64 evaluation of the formula, the threaded driver against one
//! thread, gradient statistics, and the conversions against the `half` crate (which uses F16C
//! on this machine). Scaler and scheduler tests live with their own files' tests below.

use half::{bf16, f16};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::kernels::scalar::{f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits};
use super::*;

mod scaler;
mod schedules;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Random values spanning many magnitudes, never zero.
fn randv(r: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mag = 2f32.powi(r.random_range(-12..4));
            let x: f32 = r.random_range(0.01f32..1.0) * mag * scale;
            if r.random::<bool>() {
                x
            } else {
                -x
            }
        })
        .collect()
}

#[test]
fn f32_to_f16_matches_f16c_on_a_sweep_of_bit_patterns() {
    // Every 4099th bit pattern (about a million values, all classes: zeros, subnormal halves,
    // ties, overflow, inf, NaN payloads).
    let mut b = 0u32;
    loop {
        let x = f32::from_bits(b);
        let ours = f32_to_f16_bits(x);
        let theirs = f16::from_f32(x).to_bits();
        assert_eq!(ours, theirs, "f32 bits {b:#010x}");
        match b.checked_add(4099) {
            Some(n) => b = n,
            None => break,
        }
    }
    for b in [
        0x3300_0000u32,
        0x3300_0001,
        0x477F_EFFF,
        0x477F_F000,
        0x3880_0000,
        0x387F_FFFF,
    ] {
        let x = f32::from_bits(b);
        assert_eq!(f32_to_f16_bits(x), f16::from_f32(x).to_bits(), "{b:#x}");
        let x = -x;
        assert_eq!(f32_to_f16_bits(x), f16::from_f32(x).to_bits(), "-{b:#x}");
    }
}

#[test]
fn f16_to_f32_matches_f16c_for_every_half() {
    for h in 0..=u16::MAX {
        let ours = f16_bits_to_f32(h).to_bits();
        let theirs = f16::from_bits(h).to_f32().to_bits();
        assert_eq!(ours, theirs, "half bits {h:#06x}");
    }
}

#[test]
fn f32_to_bf16_matches_half_crate_rounding() {
    let mut b = 0u32;
    loop {
        let x = f32::from_bits(b);
        assert_eq!(f32_to_bf16_bits(x), bf16::from_f32(x).to_bits(), "{b:#x}");
        match b.checked_add(4099) {
            Some(n) => b = n,
            None => break,
        }
    }
}

/// One group's state, with an offset so the slices start unaligned.
struct Group {
    p: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    g32: Vec<f32>,
    g16: Vec<f16>,
    gb16: Vec<bf16>,
}

const OFF: usize = 1;

impl Group {
    fn new(n: usize, seed: u64) -> Self {
        let mut r = rng(seed);
        let p = randv(&mut r, n + OFF, 1.0);
        let m = randv(&mut r, n + OFF, 1e-2);
        let v: Vec<f32> = randv(&mut r, n + OFF, 1e-3).iter().map(|x| x * x).collect();
        let g32 = randv(&mut r, n + OFF, 256.0);
        let g16 = g32.iter().map(|&x| f16::from_f32(x)).collect();
        let gb16 = g32.iter().map(|&x| bf16::from_f32(x)).collect();
        Self {
            p,
            m,
            v,
            g32,
            g16,
            gb16,
        }
    }

    fn grad(&self, dtype: usize) -> Grad<'_> {
        match dtype {
            0 => Grad::F32(&self.g32[OFF..]),
            1 => Grad::F16(&self.g16[OFF..]),
            _ => Grad::Bf16(&self.gb16[OFF..]),
        }
    }
}

/// Runs one step on a copy of `g` and returns (p, m, v, out bits).
fn run_step(
    adam: &mut Adam,
    g: &Group,
    gdt: usize,
    odt: usize,
    s: StepScalars,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u16>) {
    let (mut p, mut m, mut v) = (g.p.clone(), g.m.clone(), g.v.clone());
    let n = p.len() - OFF;
    let mut o16 = vec![f16::ZERO; n];
    let mut ob16 = vec![bf16::ZERO; n];
    let out = match odt {
        0 => ParamOut::None,
        1 => ParamOut::F16(&mut o16),
        _ => ParamOut::Bf16(&mut ob16),
    };
    let grad = g.grad(gdt);
    adam.step(&mut p[OFF..], &mut m[OFF..], &mut v[OFF..], grad, out, s)
        .expect("step");
    let bits = match odt {
        0 => vec![],
        1 => o16.iter().map(|x| x.to_bits()).collect(),
        _ => ob16.iter().map(|x| x.to_bits()).collect(),
    };
    (p, m, v, bits)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Asserts two bit vectors are equal, reporting only the first difference (not megabytes).
fn same<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len(), "length {what}");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at {i}: {:?} vs {:?}", a[i], b[i]);
    }
}

fn configs() -> [AdamConfig; 3] {
    let base = AdamConfig {
        lr: 3e-3,
        weight_decay: 0.01,
        ..AdamConfig::default()
    };
    [
        base,
        AdamConfig {
            adam_w_mode: false,
            ..base
        },
        AdamConfig {
            weight_decay: 0.0,
            bias_correction: false,
            ..base
        },
    ]
}

#[test]
fn every_simd_kernel_is_bit_identical_to_scalar() {
    let scalars = StepScalars {
        lr: 3e-3,
        step: 7,
        grad_scale: 1.0 / 1024.0,
    };
    let kernels: Vec<Kernel> = Kernel::available()
        .into_iter()
        .filter(|k| *k != Kernel::Scalar)
        .collect();
    for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 33, 1000] {
        let g = Group::new(n, n as u64);
        for cfg in configs() {
            let mut reference = Adam::new(cfg, 1)
                .unwrap()
                .with_kernel(Kernel::Scalar)
                .unwrap();
            for &k in &kernels {
                let mut fast = Adam::new(cfg, 1).unwrap().with_kernel(k).unwrap();
                for gdt in 0..3 {
                    for odt in 0..3 {
                        let a = run_step(&mut reference, &g, gdt, odt, scalars);
                        let b = run_step(&mut fast, &g, gdt, odt, scalars);
                        let what = format!("{k} n={n} grad={gdt} out={odt} cfg={cfg:?}");
                        same(&bits(&a.0), &bits(&b.0), &format!("master {what}"));
                        same(&bits(&a.1), &bits(&b.1), &format!("m {what}"));
                        same(&bits(&a.2), &bits(&b.2), &format!("v {what}"));
                        same(&a.3, &b.3, &format!("copy {what}"));
                    }
                }
            }
        }
    }
}

#[test]
fn large_odd_group_threaded_simd_equals_scalar() {
    let n = 1_000_003;
    let g = Group::new(n, 99);
    let s = StepScalars {
        lr: 1e-3,
        step: 1,
        grad_scale: 0.5,
    };
    let cfg = AdamConfig::default();
    let mut reference = Adam::new(cfg, 1)
        .unwrap()
        .with_kernel(Kernel::Scalar)
        .unwrap();
    for k in Kernel::available() {
        let mut fast = Adam::new(cfg, 3).unwrap().with_kernel(k).unwrap();
        for (gdt, odt) in [(0, 2), (1, 1), (2, 2), (0, 0)] {
            let a = run_step(&mut reference, &g, gdt, odt, s);
            let b = run_step(&mut fast, &g, gdt, odt, s);
            let what = format!("{k} grad={gdt} out={odt}");
            same(&bits(&a.0), &bits(&b.0), &format!("master {what}"));
            same(&bits(&a.1), &bits(&b.1), &format!("m {what}"));
            same(&bits(&a.2), &bits(&b.2), &format!("v {what}"));
            same(&a.3, &b.3, &format!("copy {what}"));
        }
    }
}

#[test]
fn nan_and_inf_propagate_identically_in_every_kernel() {
    let n = 40;
    let mut g = Group::new(n, 5);
    g.g32[OFF + 3] = f32::NAN;
    g.g32[OFF + 17] = f32::INFINITY;
    g.g32[OFF + 38] = f32::NEG_INFINITY; // in the scalar tail of the 8- and 16-lane loops
    g.p[OFF + 20] = f32::NAN;
    let s = StepScalars {
        lr: 1e-3,
        step: 3,
        grad_scale: 1.0,
    };
    let mut reference = Adam::new(AdamConfig::default(), 1)
        .unwrap()
        .with_kernel(Kernel::Scalar)
        .unwrap();
    let a = run_step(&mut reference, &g, 0, 2, s);
    assert!(a.0[OFF + 3].is_nan() && a.0[OFF + 17].is_nan() && a.0[OFF + 20].is_nan());
    for k in Kernel::available() {
        let mut fast = Adam::new(AdamConfig::default(), 1)
            .unwrap()
            .with_kernel(k)
            .unwrap();
        let b = run_step(&mut fast, &g, 0, 2, s);
        same(&bits(&a.0), &bits(&b.0), &format!("{k}"));
        assert_eq!(a.3, b.3, "{k}");
    }
}

/// Adam in f64 with the same f32 hyper-parameters, the textbook way (torch's formula).
fn adam_f64(cfg: &AdamConfig, p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f32], t: u64) {
    let (b1, b2) = (cfg.betas.0 as f64, cfg.betas.1 as f64);
    let (lr, wd, eps) = (cfg.lr as f64, cfg.weight_decay as f64, cfg.eps as f64);
    let bc1 = 1.0 - b1.powi(t as i32);
    let bc2 = (1.0 - b2.powi(t as i32)).sqrt();
    for i in 0..p.len() {
        let mut gi = g[i] as f64;
        if !cfg.adam_w_mode {
            gi += wd * p[i];
        }
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        if cfg.adam_w_mode {
            p[i] -= lr * wd * p[i];
        }
        p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2 + eps);
    }
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn scalar_reference_tracks_f64_adam_over_100_steps() {
    let n = 4096;
    for cfg in &configs()[..2] {
        let mut r = rng(7);
        let mut p = randv(&mut r, n, 1.0);
        let p0 = p.clone();
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut m64, mut v64) = (vec![0f64; n], vec![0f64; n]);
        let mut adam = Adam::new(*cfg, 1)
            .unwrap()
            .with_kernel(Kernel::Scalar)
            .unwrap();
        for t in 1..=100 {
            let g = randv(&mut r, n, 1.0);
            let s = StepScalars {
                lr: cfg.lr,
                step: t,
                grad_scale: 1.0,
            };
            adam.step(&mut p, &mut m, &mut v, Grad::F32(&g), ParamOut::None, s)
                .unwrap();
            adam_f64(cfg, &mut p64, &mut m64, &mut v64, &g, t);
        }
        let (ep, em, ev) = (rel_err(&p, &p64), rel_err(&m, &m64), rel_err(&v, &v64));
        assert!(
            ep <= 1e-6 && em <= 1e-6 && ev <= 1e-6,
            "{ep:e} {em:e} {ev:e}"
        );
        // And the state really moved: an update that did nothing would also "match".
        assert!(p.iter().zip(&p0).all(|(a, b)| a != b));
        assert!(m.iter().all(|x| *x != 0.0));
    }
}

#[test]
fn grad_stats_are_exactly_the_same_for_any_thread_count_and_kernel() {
    let mut r = rng(11);
    let a = randv(&mut r, 300_001, 3.0);
    let b: Vec<f16> = randv(&mut r, 70_007, 1.0)
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let c: Vec<bf16> = randv(&mut r, 9, 1.0)
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    let grads = [Grad::F32(&a[1..]), Grad::F16(&b), Grad::Bf16(&c)];
    let reference = grad_stats(&grads);
    let exact: f64 = a[1..]
        .iter()
        .map(|&x| x as f64)
        .chain(b.iter().map(|x| x.to_f64()))
        .chain(c.iter().map(|x| x.to_f64()))
        .map(|x| x * x)
        .sum();
    assert!(((reference.sum_sq - exact) / exact).abs() < 1e-12);
    assert!(!reference.non_finite);
    for k in Kernel::available() {
        for threads in [1, 2, 3, 5] {
            let adam = Adam::new(AdamConfig::default(), threads)
                .unwrap()
                .with_kernel(k)
                .unwrap();
            let s = adam.grad_stats(&grads);
            assert_eq!(
                s.sum_sq.to_bits(),
                reference.sum_sq.to_bits(),
                "{k} {threads}"
            );
        }
    }
}

#[test]
fn a_single_non_finite_gradient_anywhere_is_detected() {
    let n = 1000;
    for (pos, bad) in [
        (0, f32::NAN),
        (517, f32::INFINITY),
        (999, f32::NEG_INFINITY),
    ] {
        let mut a = vec![0.5f32; n];
        a[pos] = bad;
        let h: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
        let b: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
        for g in [Grad::F32(&a), Grad::F16(&h), Grad::Bf16(&b)] {
            let ok = vec![1.0f32; 10];
            assert!(grad_stats(&[Grad::F32(&ok), g]).non_finite, "{pos}");
        }
    }
    // fp16 overflow of a large but finite f32 gradient (65520 rounds to inf in half).
    let h = [f16::from_f32(1.0), f16::from_f32(65520.0)];
    assert!(grad_stats(&[Grad::F16(&h)]).non_finite);
    let fine = [f16::from_f32(65504.0); 3];
    let s = grad_stats(&[Grad::F16(&fine)]);
    assert!(!s.non_finite && (global_norm(&s) - 65504.0 * 3f64.sqrt()).abs() < 1e-6);
}

#[test]
fn overflowed_step_is_skipped_and_leaves_state_untouched() {
    // The engine's sequence: stats -> scaler.update -> step only when applied.
    let g = Group::new(100, 3);
    let mut grad = g.g16.clone();
    grad[OFF + 50] = f16::INFINITY;
    let mut scaler = LossScaler::new(&LossScalerConfig::default(), true).unwrap();
    let before = scaler.scale();
    let stats = grad_stats(&[Grad::F16(&grad[OFF..])]);
    let outcome = scaler.update(stats.non_finite).unwrap();
    assert_eq!(outcome, StepOutcome::Skipped);
    assert_eq!(scaler.scale(), before / 2.0);
    let (mut p, mut m, mut v) = (g.p.clone(), g.m.clone(), g.v.clone());
    let mut adam = Adam::new(AdamConfig::default(), 2).unwrap();
    if outcome == StepOutcome::Applied {
        let s = StepScalars {
            lr: 1e-3,
            step: 1,
            grad_scale: 1.0,
        };
        adam.step(&mut p, &mut m, &mut v, Grad::F16(&grad), ParamOut::None, s)
            .unwrap();
    }
    assert_eq!(
        (bits(&p), bits(&m), bits(&v)),
        (bits(&g.p), bits(&g.m), bits(&g.v))
    );
}

#[test]
fn clip_and_unscale_follow_deepspeed() {
    assert_eq!(clip_coef(0.5, 1.0), 1.0);
    assert!((clip_coef(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
    assert_eq!(clip_coef(100.0, 0.0), 1.0);
    // Scaled norm 8192 at loss scale 1024 is an unscaled norm of 8; max_norm 2 clips by ~4.
    let gs = combined_grad_scale(8192.0, 2.0, 1024.0);
    let expect = 1.0 / (((8192.0 / 1024.0 + 1e-6) / 2.0) * 1024.0);
    assert_eq!(gs, expect as f32);
    assert_eq!(combined_grad_scale(100.0, 2.0, 1024.0), 1.0 / 1024.0);
    assert_eq!(combined_grad_scale(100.0, 0.0, 1.0), 1.0);
}

#[test]
fn step_rejects_mismatched_lengths_and_step_zero() {
    let mut adam = Adam::new(AdamConfig::default(), 1).unwrap();
    let (mut p, mut m, mut v) = (vec![1f32; 4], vec![0f32; 4], vec![0f32; 3]);
    let g = vec![1f32; 4];
    let s = StepScalars {
        lr: 1e-3,
        step: 1,
        grad_scale: 1.0,
    };
    let e = adam.step(&mut p, &mut m, &mut v, Grad::F32(&g), ParamOut::None, s);
    assert!(matches!(
        e,
        Err(OptimError::LengthMismatch { what: "v", .. })
    ));
    let mut v = vec![0f32; 4];
    let mut out = vec![bf16::ZERO; 5];
    let e = adam.step(
        &mut p,
        &mut m,
        &mut v,
        Grad::F32(&g),
        ParamOut::Bf16(&mut out),
        s,
    );
    assert!(matches!(e, Err(OptimError::LengthMismatch { .. })));
    let s0 = StepScalars { step: 0, ..s };
    let e = adam.step(&mut p, &mut m, &mut v, Grad::F32(&g), ParamOut::None, s0);
    assert_eq!(e, Err(OptimError::ZeroStep(0)));
    assert_eq!(p, vec![1f32; 4], "a refused step changes nothing");
}

#[test]
fn adam_config_defaults_are_deepspeeds_and_parse_from_json() {
    let c: AdamConfig = serde_json::from_str(r#"{"lr": 0.0002, "betas": [0.8, 0.99]}"#).unwrap();
    assert_eq!(c.lr, 2e-4);
    assert_eq!(c.betas, (0.8, 0.99));
    assert_eq!(c.eps, 1e-8);
    assert_eq!(c.weight_decay, 0.0);
    assert!(c.adam_w_mode && c.bias_correction);
}
