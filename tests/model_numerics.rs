//! Numerics of the GPT-2 path on a tiny model: the fp32 forward against an independent naive
//! f64 implementation, each layer's backward and the whole model's gradient against central
//! finite differences of that f64 reference, and checkpointing/thread-count bit-identity.

mod model_common;

use model_common::*;
use zinf::device::{AttnShape, CpuDevice, Device, DeviceBuffer, Linear, Norm};
use zinf::model::{init_params, param_layout, Gpt, GptConfig, HostParams};

fn tiny() -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        vocab_size: 37,
        block_size: 8,
    }
}

/// Initial parameters plus a perturbation so biases and LayerNorm weights are not trivial.
fn tiny_params(cfg: &GptConfig) -> Vec<f32> {
    let layout = param_layout(cfg);
    let mut p = init_params(&layout, cfg.n_layer, 7);
    for (x, r) in p.iter_mut().zip(lcg_values(layout.total, 3)) {
        *x += 0.1 * r as f32;
    }
    p
}

fn batch(cfg: &GptConfig, n: usize, seed: u64) -> Vec<u32> {
    lcg_values(n, seed)
        .iter()
        .map(|r| ((r + 1.0) / 2.0 * cfg.vocab_size as f64) as u32 % cfg.vocab_size as u32)
        .collect()
}

#[test]
fn forward_matches_naive_f64_reference() {
    let cfg = tiny();
    let (b, t) = (2, 7);
    let dev = CpuDevice::new(2, 1 << 30);
    let p = tiny_params(&cfg);
    let mut model = Gpt::new(&dev, cfg, b, t, false).unwrap();
    model
        .load_params(&dev, &HostParams::F32(p.clone()))
        .unwrap();
    let tokens = batch(&cfg, b * t, 1);
    let targets = batch(&cfg, b * t, 2);
    model.forward_logits(&dev, &tokens).unwrap();
    let p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let layout = param_layout(&cfg);
    let r = RefModel {
        layout: &layout,
        p: &p64,
        n_layer: 2,
        n_head: 2,
        c: 16,
        v: 37,
    };
    let want = r.logits(&tokens, b, t);
    for s in 0..b {
        for pos in 0..t {
            let got = model.logits_at(&dev, s, pos).unwrap();
            for (o, g) in got.iter().enumerate() {
                let w = want[(s * t + pos) * cfg.vocab_size + o];
                assert!(
                    (*g as f64 - w).abs() < 1e-4,
                    "logit ({s},{pos},{o}): {g} vs {w}"
                );
            }
        }
    }
    let loss = model.forward(&dev, &tokens, &targets).unwrap();
    let want_loss = r.loss(&tokens, &targets, b, t);
    assert!(
        (loss as f64 - want_loss).abs() < 1e-5,
        "loss {loss} vs reference {want_loss}"
    );
}

fn model_grads(
    cfg: GptConfig,
    p: &[f32],
    threads: usize,
    ckpt: bool,
    tokens: &[u32],
    targets: &[u32],
) -> (f32, Vec<f32>) {
    let dev = CpuDevice::new(threads, 1 << 30);
    let mut model = Gpt::new(&dev, cfg, 2, 7, ckpt).unwrap();
    model
        .load_params(&dev, &HostParams::F32(p.to_vec()))
        .unwrap();
    model.zero_grads(&dev).unwrap();
    let loss = model.forward(&dev, tokens, targets).unwrap();
    model.backward(&dev, tokens, targets, 1.0).unwrap();
    let mut g = vec![0.0; p.len()];
    model.download_grads(&dev, &mut g).unwrap();
    (loss, g)
}

#[test]
fn whole_model_gradient_matches_finite_differences() {
    let cfg = tiny();
    let p = tiny_params(&cfg);
    let tokens = batch(&cfg, 14, 4);
    let targets = batch(&cfg, 14, 5);
    let (_, g) = model_grads(cfg, &p, 2, false, &tokens, &targets);
    let layout = param_layout(&cfg);
    let p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    // Every 5th parameter, so each tensor of the layout is sampled.
    let idx: Vec<usize> = (0..p.len()).step_by(5).collect();
    let sub: Vec<f64> = idx.iter().map(|&i| p64[i]).collect();
    let fd = finite_diff(&sub, |s| {
        let mut q = p64.clone();
        idx.iter().zip(s).for_each(|(&i, &x)| q[i] = x);
        RefModel {
            layout: &layout,
            p: &q,
            n_layer: 2,
            n_head: 2,
            c: 16,
            v: 37,
        }
        .loss(&tokens, &targets, 2, 7)
    });
    let analytic: Vec<f32> = idx.iter().map(|&i| g[i]).collect();
    assert_close("model", &analytic, &fd);
}

#[test]
fn checkpointing_and_thread_count_give_bit_identical_gradients() {
    let cfg = tiny();
    let p = tiny_params(&cfg);
    let tokens = batch(&cfg, 14, 8);
    let targets = batch(&cfg, 14, 9);
    let base = model_grads(cfg, &p, 1, false, &tokens, &targets);
    assert_eq!(
        base,
        model_grads(cfg, &p, 2, false, &tokens, &targets),
        "1 vs 2 threads"
    );
    assert_eq!(
        base,
        model_grads(cfg, &p, 2, true, &tokens, &targets),
        "checkpointing"
    );
    assert_eq!(
        base,
        model_grads(cfg, &p, 1, false, &tokens, &targets),
        "second run"
    );
}

#[test]
fn over_budget_model_is_a_clear_error_before_any_step() {
    let cfg = tiny();
    let dev = CpuDevice::new(1, 64 * 1024);
    let err = Gpt::new(&dev, cfg, 2, 7, false)
        .err()
        .expect("must not fit")
        .to_string();
    assert!(err.contains("device memory budget exceeded"), "{err}");
    assert!(
        err.contains("asked for") && err.contains("65536-byte budget"),
        "{err}"
    );
    assert_eq!(
        dev.budget().used_bytes(),
        0,
        "a failed build must return what it took"
    );
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let dev = CpuDevice::new(2, 1 << 30);
    let (n, c) = (5, 8);
    let x = lcg_values(n * c, 11);
    let wb: Vec<f64> = lcg_values(2 * c, 12)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let r = lcg_values(n * c, 13);
    let norm = Norm {
        w_off: 0,
        b_off: c,
        c,
    };
    let (xb, pb, rb) = (buf(&dev, &x), buf(&dev, &wb), buf(&dev, &r));
    let (mut out, mut mean, mut rstd) = (
        dev.alloc("o", n * c).unwrap(),
        dev.alloc("m", n).unwrap(),
        dev.alloc("r", n).unwrap(),
    );
    dev.layernorm_forward(&mut out, &mut mean, &mut rstd, &xb, &pb, norm)
        .unwrap();
    let (mut dx, mut dp) = (
        dev.alloc("dx", n * c).unwrap(),
        dev.alloc("dp", 2 * c).unwrap(),
    );
    dev.layernorm_backward(&mut dx, &mut dp, &rb, &xb, &pb, &mean, &rstd, norm)
        .unwrap();
    let fdx = finite_diff(&x, |x| dot(&layernorm(x, &wb[..c], &wb[c..], c), &r));
    let fdp = finite_diff(&wb, |wb| dot(&layernorm(&x, &wb[..c], &wb[c..], c), &r));
    assert_close("layernorm dinp", dx.as_slice(), &fdx);
    assert_close("layernorm dparams", dp.as_slice(), &fdp);
}

fn check_matmul(w_out_in: bool) {
    let dev = CpuDevice::new(2, 1 << 30);
    let (n, c, oc) = (6, 5, 7);
    let x = lcg_values(n * c, 21);
    let p = lcg_values(c * oc + oc, 22);
    let r = lcg_values(n * oc, 23);
    let lin = Linear {
        w_off: 0,
        b_off: Some(c * oc),
        c,
        oc,
        w_out_in,
    };
    // The reference always takes W as [C, OC]; transpose the [OC, C] layout for it.
    let as_in_out = |p: &[f64]| -> Vec<f64> {
        if !w_out_in {
            return p[..c * oc].to_vec();
        }
        (0..c * oc).map(|k| p[(k % oc) * c + k / oc]).collect()
    };
    let (xb, pb, rb) = (buf(&dev, &x), buf(&dev, &p), buf(&dev, &r));
    let mut out = dev.alloc("o", n * oc).unwrap();
    dev.matmul_forward(&mut out, &xb, &pb, lin).unwrap();
    let want = linear(&x, &as_in_out(&p), &p[c * oc..], c, oc);
    for (g, w) in out.as_slice().iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5);
    }
    let (mut dx, mut dp) = (
        dev.alloc("dx", n * c).unwrap(),
        dev.alloc("dp", p.len()).unwrap(),
    );
    dev.matmul_backward(&mut dx, &mut dp, &rb, &xb, &pb, lin)
        .unwrap();
    let fdx = finite_diff(&x, |x| {
        dot(&linear(x, &as_in_out(&p), &p[c * oc..], c, oc), &r)
    });
    let fdp = finite_diff(&p, |p| {
        dot(&linear(&x, &as_in_out(p), &p[c * oc..], c, oc), &r)
    });
    assert_close("matmul dinp", dx.as_slice(), &fdx);
    assert_close("matmul dparams", dp.as_slice(), &fdp);
}

#[test]
fn matmul_backward_matches_finite_differences_in_both_weight_layouts() {
    check_matmul(false);
    check_matmul(true);
}

#[test]
fn attention_backward_matches_finite_differences() {
    let dev = CpuDevice::new(2, 1 << 30);
    let s = AttnShape::mha(2, 4, 6, 2);
    let c = s.q_width();
    let qkv = lcg_values(s.b * s.t * 3 * c, 31);
    let r = lcg_values(s.b * s.t * c, 32);
    let (qb, rb) = (buf(&dev, &qkv), buf(&dev, &r));
    let mut out = dev.alloc("o", s.b * s.t * c).unwrap();
    let mut att = dev.alloc("att", s.b * s.nh * s.t * s.t).unwrap();
    dev.attention_forward(&mut out, &mut att, &qb, s).unwrap();
    let want = attention(&qkv, s.b, s.t, c, s.nh);
    for (g, w) in out.as_slice().iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5, "attention forward {g} vs {w}");
    }
    let mut dq = dev.alloc("dqkv", qkv.len()).unwrap();
    let mut scratch = dev.alloc("scratch", att.len()).unwrap();
    dev.attention_backward(&mut dq, &mut scratch, &rb, &qb, &att, s)
        .unwrap();
    let fd = finite_diff(&qkv, |q| dot(&attention(q, s.b, s.t, c, s.nh), &r));
    assert_close("attention dqkv", dq.as_slice(), &fd);
}

#[test]
fn gelu_and_crossentropy_backward_match_finite_differences() {
    let dev = CpuDevice::new(2, 1 << 30);
    let x: Vec<f64> = lcg_values(40, 41).iter().map(|v| 3.0 * v).collect();
    let r = lcg_values(40, 42);
    let (xb, rb) = (buf(&dev, &x), buf(&dev, &r));
    let mut dx = dev.alloc("dx", 40).unwrap();
    dev.gelu_backward(&mut dx, &xb, &rb).unwrap();
    let fd = finite_diff(&x, |x| x.iter().zip(&r).map(|(x, r)| gelu(*x) * r).sum());
    assert_close("gelu", dx.as_slice(), &fd);

    let (n, v) = (4, 9);
    let logits = lcg_values(n * v, 43);
    let targets = [0u32, 8, 3, 3];
    let mut probs = buf(&dev, &logits);
    let mut losses = dev.alloc("l", n).unwrap();
    dev.softmax_crossentropy_forward(&mut probs, &mut losses, &targets, v)
        .unwrap();
    let mut dl = dev.alloc("dl", n * v).unwrap();
    dev.softmax_crossentropy_backward(&mut dl, &probs, &targets, v, 0.5)
        .unwrap();
    let ce = |z: &[f64]| -> f64 {
        (0..n)
            .map(|i| {
                let row = &z[i * v..(i + 1) * v];
                let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
                0.5 * (lse - row[targets[i] as usize])
            })
            .sum()
    };
    assert_close("crossentropy", dl.as_slice(), &finite_diff(&logits, ce));
    let bad = dev.softmax_crossentropy_forward(&mut probs, &mut losses, &[0, 1, 2, 9], v);
    assert!(bad.unwrap_err().to_string().contains("token id 9"));
}

#[test]
fn activation_checkpointing_needs_less_device_memory() {
    let cfg = GptConfig {
        n_layer: 4,
        ..tiny()
    };
    let used = |ckpt: bool| {
        let dev = CpuDevice::new(1, 1 << 30);
        let _model = Gpt::new(&dev, cfg, 2, 8, ckpt).unwrap();
        dev.budget().used_bytes()
    };
    assert!(
        used(true) < used(false),
        "checkpointing keeps one block's activations, not four"
    );
}

/// `zinf estimate` prices the device's activations with `gpt::activation_elems`; it must be
/// exactly what the model allocates, with and without activation checkpointing.
#[test]
fn activation_elems_is_what_the_model_allocates() {
    use zinf::device::Device;
    use zinf::model::gpt::activation_elems;
    let cfg = tiny();
    for (b, t, ckpt) in [(2, 8, false), (3, 5, true), (1, 1, false)] {
        let dev = CpuDevice::new(1, 1 << 30);
        let m = zinf::model::Gpt::without_groups(&dev, cfg, b, t, ckpt).expect("model");
        assert_eq!(
            u128::from(dev.budget().used_bytes()),
            4 * activation_elems(&cfg, b, t, ckpt),
            "b {b}, t {t}, checkpointing {ckpt}"
        );
        drop(m);
    }
}
