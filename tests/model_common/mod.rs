//! A naive f64 GPT-2 written independently of the crate's kernels: plain loops over the
//! Hugging Face tensors looked up by name. Tests compare the fast fp32 path against it.
#![allow(dead_code)]

use zinf::device::{CpuBuffer, CpuDevice, Device};
use zinf::model::{ParamLayout, TensorSpec};

pub struct RefModel<'a> {
    pub layout: &'a ParamLayout,
    pub p: &'a [f64],
    pub n_layer: usize,
    pub n_head: usize,
    pub c: usize,
    pub v: usize,
}

impl RefModel<'_> {
    fn t(&self, name: &str) -> &[f64] {
        let spec: &TensorSpec = self
            .layout
            .tensors
            .iter()
            .find(|t| t.name == name)
            .expect(name);
        &self.p[spec.range()]
    }

    /// tokens (B,T) -> logits (B,T,V).
    pub fn logits(&self, tokens: &[u32], b: usize, t: usize) -> Vec<f64> {
        let c = self.c;
        let (wte, wpe) = (self.t("wte.weight"), self.t("wpe.weight"));
        let mut x = vec![0.0; b * t * c];
        for i in 0..b * t {
            for j in 0..c {
                x[i * c + j] = wte[tokens[i] as usize * c + j] + wpe[(i % t) * c + j];
            }
        }
        for l in 0..self.n_layer {
            let h = |n: &str| format!("h.{l}.{n}");
            let a = layernorm(&x, self.t(&h("ln_1.weight")), self.t(&h("ln_1.bias")), c);
            let qkv = linear(
                &a,
                self.t(&h("attn.c_attn.weight")),
                self.t(&h("attn.c_attn.bias")),
                c,
                3 * c,
            );
            let y = attention(&qkv, b, t, c, self.n_head);
            let y = linear(
                &y,
                self.t(&h("attn.c_proj.weight")),
                self.t(&h("attn.c_proj.bias")),
                c,
                c,
            );
            x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
            let a = layernorm(&x, self.t(&h("ln_2.weight")), self.t(&h("ln_2.bias")), c);
            let f = linear(
                &a,
                self.t(&h("mlp.c_fc.weight")),
                self.t(&h("mlp.c_fc.bias")),
                c,
                4 * c,
            );
            let f: Vec<f64> = f.iter().map(|&u| gelu(u)).collect();
            let y = linear(
                &f,
                self.t(&h("mlp.c_proj.weight")),
                self.t(&h("mlp.c_proj.bias")),
                4 * c,
                c,
            );
            x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
        }
        let a = layernorm(&x, self.t("ln_f.weight"), self.t("ln_f.bias"), c);
        let mut logits = vec![0.0; b * t * self.v];
        for i in 0..b * t {
            for o in 0..self.v {
                logits[i * self.v + o] = (0..c).map(|j| a[i * c + j] * wte[o * c + j]).sum();
            }
        }
        logits
    }

    /// Mean cross-entropy.
    pub fn loss(&self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> f64 {
        let logits = self.logits(tokens, b, t);
        let v = self.v;
        let mut total = 0.0;
        for (i, &tgt) in targets.iter().enumerate() {
            let row = &logits[i * v..(i + 1) * v];
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            total += lse - row[tgt as usize];
        }
        total / targets.len() as f64
    }
}

pub fn layernorm(x: &[f64], w: &[f64], b: &[f64], c: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (o, r) in out.chunks_mut(c).zip(x.chunks(c)) {
        let mu = r.iter().sum::<f64>() / c as f64;
        let var = r.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / c as f64;
        let s = 1.0 / (var + 1e-5).sqrt();
        for j in 0..c {
            o[j] = (r[j] - mu) * s * w[j] + b[j];
        }
    }
    out
}

/// x (N,C) @ w [C,OC] + b.
pub fn linear(x: &[f64], w: &[f64], b: &[f64], c: usize, oc: usize) -> Vec<f64> {
    let n = x.len() / c;
    let mut out = vec![0.0; n * oc];
    for i in 0..n {
        for o in 0..oc {
            out[i * oc + o] = b[o] + (0..c).map(|j| x[i * c + j] * w[j * oc + o]).sum::<f64>();
        }
    }
    out
}

pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

/// qkv (B,T,3C) -> (B,T,C), causal.
pub fn attention(qkv: &[f64], b: usize, t: usize, c: usize, nh: usize) -> Vec<f64> {
    let hs = c / nh;
    let mut out = vec![0.0; b * t * c];
    for bi in 0..b {
        for h in 0..nh {
            let q = |i: usize, d: usize| qkv[(bi * t + i) * 3 * c + h * hs + d];
            let k = |i: usize, d: usize| qkv[(bi * t + i) * 3 * c + c + h * hs + d];
            let v = |i: usize, d: usize| qkv[(bi * t + i) * 3 * c + 2 * c + h * hs + d];
            for i in 0..t {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| (0..hs).map(|d| q(i, d) * k(j, d)).sum::<f64>() / (hs as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hs {
                    out[(bi * t + i) * c + h * hs + d] = (0..=i).map(|j| e[j] / z * v(j, d)).sum();
                }
            }
        }
    }
    out
}

/// Deterministic pseudo-random values in [-1, 1) (no RNG crate needed in tests).
pub fn lcg_values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// An fp32 device buffer holding `v`.
pub fn buf(dev: &CpuDevice, v: &[f64]) -> CpuBuffer {
    let mut b = dev.alloc("test", v.len()).unwrap();
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    b.as_mut_slice().copy_from_slice(&f);
    b
}

/// Central differences of `f` at every coordinate of `x`, in f64.
pub fn finite_diff(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-5;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + h;
            let up = f(&x);
            x[i] = x0 - h;
            let down = f(&x);
            x[i] = x0;
            (up - down) / (2.0 * h)
        })
        .collect()
}

pub fn assert_close(what: &str, analytic: &[f32], fd: &[f64]) {
    assert_eq!(analytic.len(), fd.len());
    let scale = fd.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
    for (i, (&a, &f)) in analytic.iter().zip(fd).enumerate() {
        let err = (a as f64 - f).abs();
        assert!(
            err <= 2e-3 * scale + 1e-2 * f.abs(),
            "{what}[{i}]: backward {a} vs finite difference {f}"
        );
    }
}

pub fn dot(a: &[f64], r: &[f64]) -> f64 {
    a.iter().zip(r).map(|(x, y)| x * y).sum()
}
