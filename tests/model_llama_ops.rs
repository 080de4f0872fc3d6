//! The Llama family's device ops on the CPU backend against naive f64 references written
//! here from transformers' definitions (`LlamaRMSNorm`, `apply_rotary_pos_emb` with
//! `rotate_half`, `LlamaMLP`'s SwiGLU, `eager_attention_forward` with `repeat_kv`, Qwen3's
//! per-head `q_norm`/`k_norm`): forward against the reference, backward against central
//! finite differences of it.

mod model_common;

use model_common::*;
use zinf::device::{AttnShape, CpuDevice, Device, DeviceBuffer, QkNorm, RmsNorm};
use zinf::model::llama::{Rope, RopeScaling};

fn rmsnorm_ref(x: &[f64], w: &[f64], c: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (o, row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
        let s = 1.0 / (ms + eps).sqrt();
        for j in 0..c {
            o[j] = row[j] * s * w[j];
        }
    }
    out
}

fn assert_forward(what: &str, got: &[f32], want: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs reference {w}"
        );
    }
}

#[test]
fn rmsnorm_forward_and_backward_match_reference() {
    let dev = CpuDevice::new(2, 1 << 30);
    let (n, c, eps) = (5, 12, 1e-5);
    let x = lcg_values(n * c, 1);
    let w: Vec<f64> = lcg_values(c, 2).iter().map(|v| 1.0 + 0.3 * v).collect();
    let r = lcg_values(n * c, 3);
    let norm = RmsNorm {
        w_off: 3,
        c,
        eps: eps as f32,
    };
    let mut pw = vec![0.0; 3];
    pw.extend(&w);
    let (xb, pb, rb) = (buf(&dev, &x), buf(&dev, &pw), buf(&dev, &r));
    let (mut out, mut rstd) = (dev.alloc("o", n * c).unwrap(), dev.alloc("r", n).unwrap());
    dev.rmsnorm_forward(&mut out, &mut rstd, &xb, &pb, norm)
        .unwrap();
    assert_forward("rmsnorm", out.as_slice(), &rmsnorm_ref(&x, &w, c, eps));
    let (mut dx, mut dp) = (
        dev.alloc("dx", n * c).unwrap(),
        dev.alloc("dp", pw.len()).unwrap(),
    );
    dev.rmsnorm_backward(&mut dx, &mut dp, &rb, &xb, &pb, &rstd, norm)
        .unwrap();
    let fdx = finite_diff(&x, |x| dot(&rmsnorm_ref(x, &w, c, eps), &r));
    let fdw = finite_diff(&w, |w| dot(&rmsnorm_ref(&x, w, c, eps), &r));
    assert_close("rmsnorm dx", dx.as_slice(), &fdx);
    assert_close("rmsnorm dw", &dp.as_slice()[3..], &fdw);
    assert!(
        dp.as_slice()[..3].iter().all(|&v| v == 0.0),
        "rmsnorm wrote outside its weight"
    );
}

/// transformers' RoPE on the q and k heads of packed qkv rows, in f64 from an f32 table.
fn rope_ref(qkv: &[f64], table: &[f32], s: AttnShape) -> Vec<f64> {
    let (w, hd) = (s.qkv_width(), s.head_dim);
    let half = hd / 2;
    let p = table.len() / hd;
    let mut out = qkv.to_vec();
    for i in 0..s.b * s.t {
        let pos = i % s.t;
        for h in 0..s.nh + s.n_kv_head {
            let base = i * w + h * hd;
            for j in 0..hd {
                // cos/sin of emb = cat(freqs, freqs); rotate_half(x) = cat(-x2, x1).
                let f = j % half;
                let (c, sn) = (
                    table[pos * half + f] as f64,
                    table[p * half + pos * half + f] as f64,
                );
                let rot = if j < half {
                    -qkv[base + j + half]
                } else {
                    qkv[base + j - half]
                };
                out[base + j] = qkv[base + j] * c + rot * sn;
            }
        }
    }
    out
}

#[test]
fn rope_forward_and_backward_match_reference() {
    let dev = CpuDevice::new(2, 1 << 30);
    let s = AttnShape {
        b: 2,
        t: 5,
        nh: 4,
        n_kv_head: 2,
        head_dim: 6,
    };
    let rope = Rope {
        theta: 10000.0,
        scaling: RopeScaling::Default,
    };
    let table = rope.table(s.head_dim, 7);
    let x = lcg_values(s.b * s.t * s.qkv_width(), 5);
    let r = lcg_values(x.len(), 6);
    let tb = {
        let mut b = dev.alloc("table", table.len()).unwrap();
        b.as_mut_slice().copy_from_slice(&table);
        b
    };
    let mut xb = buf(&dev, &x);
    dev.rope_forward(&mut xb, &tb, s).unwrap();
    assert_forward("rope", xb.as_slice(), &rope_ref(&x, &table, s));
    let mut rb = buf(&dev, &r);
    dev.rope_backward(&mut rb, &tb, s).unwrap();
    let fd = finite_diff(&x, |x| dot(&rope_ref(x, &table, s), &r));
    assert_close("rope backward", rb.as_slice(), &fd);
}

#[test]
fn llama3_inverse_frequencies_follow_transformers() {
    // transformers' _compute_llama3_parameters for head_dim 16, theta 500000, factor 8, low 1,
    // high 4, original 64 (values printed by transformers 5.24, the fixture llama3_rope).
    let rope = Rope {
        theta: 500000.0,
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        },
    };
    let want = [
        1.0,
        0.079_403_01,
        0.004_700_754,
        0.000_911_583_1,
        0.000_176_776_68,
        3.428_102_4e-5,
        6.647_869_7e-6,
        1.289_173_2e-6,
    ];
    for (g, w) in rope.inv_freq(16).iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * w,
            "inv_freq {g} vs transformers {w}"
        );
    }
}

fn swiglu_ref(x: &[f64], i: usize) -> Vec<f64> {
    x.chunks_exact(2 * i)
        .flat_map(|row| (0..i).map(move |j| row[j] / (1.0 + (-row[j]).exp()) * row[i + j]))
        .collect()
}

#[test]
fn swiglu_forward_and_backward_match_reference() {
    let dev = CpuDevice::new(2, 1 << 30);
    let (n, i) = (4, 7);
    let x: Vec<f64> = lcg_values(n * 2 * i, 8).iter().map(|v| 3.0 * v).collect();
    let r = lcg_values(n * i, 9);
    let (xb, rb) = (buf(&dev, &x), buf(&dev, &r));
    let mut out = dev.alloc("o", n * i).unwrap();
    dev.swiglu_forward(&mut out, &xb, i).unwrap();
    assert_forward("swiglu", out.as_slice(), &swiglu_ref(&x, i));
    let mut dx = dev.alloc("dx", x.len()).unwrap();
    dev.swiglu_backward(&mut dx, &xb, &rb, i).unwrap();
    let fd = finite_diff(&x, |x| dot(&swiglu_ref(x, i), &r));
    assert_close("swiglu backward", dx.as_slice(), &fd);
}

/// Causal grouped-query attention over packed rows, query head h reading kv head h / g.
fn gqa_ref(qkv: &[f64], s: AttnShape) -> Vec<f64> {
    let (w, hd, q) = (s.qkv_width(), s.head_dim, s.q_width());
    let g = s.nh / s.n_kv_head;
    let mut out = vec![0.0; s.b * s.t * q];
    for b in 0..s.b {
        for h in 0..s.nh {
            let (qo, ko, vo) = (h * hd, q + (h / g) * hd, q + (s.n_kv_head + h / g) * hd);
            for i in 0..s.t {
                let row = |t: usize| (b * s.t + t) * w;
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|d| qkv[row(i) + qo + d] * qkv[row(j) + ko + d])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[(b * s.t + i) * q + h * hd + d] =
                        (0..=i).map(|j| e[j] / z * qkv[row(j) + vo + d]).sum();
                }
            }
        }
    }
    out
}

#[test]
fn grouped_query_attention_matches_reference() {
    let dev = CpuDevice::new(2, 1 << 30);
    let s = AttnShape {
        b: 2,
        t: 4,
        nh: 4,
        n_kv_head: 2,
        head_dim: 3,
    };
    let qkv = lcg_values(s.b * s.t * s.qkv_width(), 11);
    let r = lcg_values(s.b * s.t * s.q_width(), 12);
    let (qb, rb) = (buf(&dev, &qkv), buf(&dev, &r));
    let mut out = dev.alloc("o", r.len()).unwrap();
    let mut att = dev.alloc("att", s.b * s.nh * s.t * s.t).unwrap();
    dev.attention_forward(&mut out, &mut att, &qb, s).unwrap();
    assert_forward("gqa attention", out.as_slice(), &gqa_ref(&qkv, s));
    let mut dq = dev.alloc("dqkv", qkv.len()).unwrap();
    let mut scratch = dev.alloc("scratch", att.len()).unwrap();
    dev.attention_backward(&mut dq, &mut scratch, &rb, &qb, &att, s)
        .unwrap();
    let fd = finite_diff(&qkv, |q| dot(&gqa_ref(q, s), &r));
    assert_close("gqa dqkv", dq.as_slice(), &fd);
}

/// Qwen3: RMSNorm of every query head by q_norm and key head by k_norm; values unchanged.
fn qk_norm_ref(qkv: &[f64], qw: &[f64], kw: &[f64], s: AttnShape, eps: f64) -> Vec<f64> {
    let (w, hd) = (s.qkv_width(), s.head_dim);
    let mut out = qkv.to_vec();
    for (orow, row) in out.chunks_exact_mut(w).zip(qkv.chunks_exact(w)) {
        for h in 0..s.nh + s.n_kv_head {
            let wt = if h < s.nh { qw } else { kw };
            let r = &row[h * hd..(h + 1) * hd];
            orow[h * hd..(h + 1) * hd].copy_from_slice(&rmsnorm_ref(r, wt, hd, eps));
        }
    }
    out
}

#[test]
fn qk_norm_forward_and_backward_match_reference() {
    let dev = CpuDevice::new(2, 1 << 30);
    let s = AttnShape {
        b: 1,
        t: 3,
        nh: 2,
        n_kv_head: 1,
        head_dim: 4,
    };
    let eps = 1e-6;
    let x = lcg_values(s.b * s.t * s.qkv_width(), 13);
    let qw: Vec<f64> = lcg_values(4, 14).iter().map(|v| 1.0 + 0.3 * v).collect();
    let kw: Vec<f64> = lcg_values(4, 15).iter().map(|v| 1.0 + 0.3 * v).collect();
    let params: Vec<f64> = qw.iter().chain(&kw).copied().collect();
    let norm = QkNorm {
        q_w_off: 0,
        k_w_off: 4,
        eps: eps as f32,
    };
    let r = lcg_values(x.len(), 16);
    let (xb, pb, rb) = (buf(&dev, &x), buf(&dev, &params), buf(&dev, &r));
    let mut out = dev.alloc("o", x.len()).unwrap();
    let mut rstd = dev.alloc("rstd", s.b * s.t * 3).unwrap();
    dev.qk_norm_forward(&mut out, &mut rstd, &xb, &pb, norm, s)
        .unwrap();
    assert_forward(
        "qk_norm",
        out.as_slice(),
        &qk_norm_ref(&x, &qw, &kw, s, eps),
    );
    let (mut dx, mut dp) = (
        dev.alloc("dx", x.len()).unwrap(),
        dev.alloc("dp", 8).unwrap(),
    );
    dev.qk_norm_backward(&mut dx, &mut dp, &rb, &xb, &pb, &rstd, norm, s)
        .unwrap();
    let fdx = finite_diff(&x, |x| dot(&qk_norm_ref(x, &qw, &kw, s, eps), &r));
    let fdp = finite_diff(&params, |p| {
        dot(&qk_norm_ref(&x, &p[..4], &p[4..], s, eps), &r)
    });
    assert_close("qk_norm dx", dx.as_slice(), &fdx);
    assert_close("qk_norm dw", dp.as_slice(), &fdp);
}
