//! CPU kernels at sizes where `gemm` and the compute pool really split the work: results with
//! 1, 2 and 3 threads, and on a pool shared with Adam, are bit-identical, and the products agree
//! with a naive f64 loop.

use std::sync::Arc;

use zinf::device::{AttnShape, CpuBuffer, CpuDevice, Device, Linear, Norm};
use zinf::optim::{Adam, AdamConfig, Grad, ParamOut, StepScalars};
use zinf::threads::ThreadPool;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn buf(dev: &CpuDevice, v: &[f32]) -> CpuBuffer {
    let mut b = dev.alloc("test", v.len()).unwrap();
    b.as_mut_slice().copy_from_slice(v);
    b
}

/// Forward and backward of a linear layer and LayerNorm, and attention, on `threads` threads.
fn run_layers(threads: usize) -> Vec<Vec<f32>> {
    run_layers_on(&CpuDevice::new(threads, 1 << 30))
}

/// `run_layers` on a given device, plus GELU and softmax cross-entropy forward and backward.
fn run_layers_on(dev: &CpuDevice) -> Vec<Vec<f32>> {
    let (n, c, oc) = (300, 96, 200);
    let x = buf(dev, &values(n * c, 1));
    let p = buf(dev, &values(c * oc + oc, 2));
    let g = buf(dev, &values(n * oc, 3));
    let lin = Linear {
        w_off: 0,
        b_off: Some(c * oc),
        c,
        oc,
        w_out_in: false,
    };
    let mut out = dev.alloc("o", n * oc).unwrap();
    dev.matmul_forward(&mut out, &x, &p, lin).unwrap();
    let (mut dx, mut dp) = (
        dev.alloc("dx", n * c).unwrap(),
        dev.alloc("dp", c * oc + oc).unwrap(),
    );
    dev.matmul_backward(&mut dx, &mut dp, &g, &x, &p, lin)
        .unwrap();
    let norm = Norm {
        w_off: 0,
        b_off: c,
        c,
    };
    let (mut ln, mut mean, mut rstd) = (
        dev.alloc("ln", n * c).unwrap(),
        dev.alloc("m", n).unwrap(),
        dev.alloc("r", n).unwrap(),
    );
    dev.layernorm_forward(&mut ln, &mut mean, &mut rstd, &x, &p, norm)
        .unwrap();
    let (mut dln, mut dlp) = (
        dev.alloc("dln", n * c).unwrap(),
        dev.alloc("dlp", 2 * c).unwrap(),
    );
    dev.layernorm_backward(&mut dln, &mut dlp, &x, &x, &p, &mean, &rstd, norm)
        .unwrap();
    let s = AttnShape::mha(3, 70, 64, 4);
    let c = s.q_width();
    let qkv = buf(dev, &values(s.b * s.t * 3 * c, 4));
    let (mut y, mut att) = (
        dev.alloc("y", s.b * s.t * c).unwrap(),
        dev.alloc("att", s.b * s.nh * s.t * s.t).unwrap(),
    );
    dev.attention_forward(&mut y, &mut att, &qkv, s).unwrap();
    let dy = buf(dev, &values(s.b * s.t * c, 5));
    let (mut dqkv, mut scratch) = (
        dev.alloc("dqkv", qkv.as_slice().len()).unwrap(),
        dev.alloc("s", att.as_slice().len()).unwrap(),
    );
    dev.attention_backward(&mut dqkv, &mut scratch, &dy, &qkv, &att, s)
        .unwrap();
    // GELU over n * oc = 60_000 elements (past the parallel threshold), softmax over 300 rows.
    let mut gl = dev.alloc("gelu", n * oc).unwrap();
    dev.gelu_forward(&mut gl, &out).unwrap();
    let mut dgl = dev.alloc("dgelu", n * oc).unwrap();
    dev.gelu_backward(&mut dgl, &out, &g).unwrap();
    let targets: Vec<u32> = (0..n as u32).map(|i| i * 7 % oc as u32).collect();
    let (mut probs, mut losses) = (buf(dev, out.as_slice()), dev.alloc("loss", n).unwrap());
    dev.softmax_crossentropy_forward(&mut probs, &mut losses, &targets, oc)
        .unwrap();
    let mut dlogits = dev.alloc("dlogits", n * oc).unwrap();
    dev.softmax_crossentropy_backward(&mut dlogits, &probs, &targets, oc, 0.25)
        .unwrap();
    [
        out, dx, dp, ln, dln, dlp, y, dqkv, gl, dgl, probs, losses, dlogits,
    ]
    .iter()
    .map(|b| b.as_slice().to_vec())
    .collect()
}

fn assert_same(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "output {i} differs: {what}"
        );
    }
}

/// One Adam step over `n` parameters on `adam`; returns the new master weights.
fn adam_step(adam: &mut Adam, n: usize) -> Vec<f32> {
    let (mut p, mut m, mut v, g) = (values(n, 6), vec![0.0; n], vec![0.0; n], values(n, 7));
    let s = StepScalars {
        lr: 1e-3,
        step: 1,
        grad_scale: 1.0,
    };
    adam.step(&mut p, &mut m, &mut v, Grad::F32(&g), ParamOut::None, s)
        .unwrap();
    p
}

#[test]
fn the_device_and_adam_share_one_pool_with_the_same_results() {
    let pool = Arc::new(ThreadPool::new(3).unwrap());
    let dev = CpuDevice::with_pool(Arc::clone(&pool), 1 << 30);
    let mut adam = Adam::with_pool(AdamConfig::default(), Arc::clone(&pool));
    assert_eq!((dev.threads(), adam.threads()), (3, 3));
    assert!(Arc::ptr_eq(dev.pool(), adam.pool()));
    let alone = run_layers(1);
    let n = 300_000;
    let reference = adam_step(&mut Adam::new(AdamConfig::default(), 1).unwrap(), n);
    // Kernels and optimizer steps interleaved on the same pool, as in a training step.
    for _ in 0..2 {
        assert_same(&run_layers_on(&dev), &alone, "shared pool vs 1 thread");
        let p = adam_step(&mut adam, n);
        assert!(p
            .iter()
            .zip(&reference)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn kernels_are_bit_identical_with_one_two_and_three_threads() {
    let one = run_layers(1);
    assert_same(&one, &run_layers(2), "1 vs 2 threads");
    assert_same(&one, &run_layers(3), "1 vs 3 threads");
}

#[test]
fn gemm_products_match_a_naive_f64_loop() {
    let outs = run_layers(2);
    let (n, c, oc) = (300, 96, 200);
    let (x, p, g) = (values(n * c, 1), values(c * oc + oc, 2), values(n * oc, 3));
    let close = |got: f32, want: f64| (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs());
    for i in (0..n).step_by(7) {
        for o in (0..oc).step_by(5) {
            let want = p[c * oc + o] as f64
                + (0..c)
                    .map(|k| x[i * c + k] as f64 * p[k * oc + o] as f64)
                    .sum::<f64>();
            assert!(close(outs[0][i * oc + o], want), "forward ({i},{o})");
        }
    }
    for k in (0..c).step_by(5) {
        for o in (0..oc).step_by(7) {
            let want: f64 = (0..n)
                .map(|i| x[i * c + k] as f64 * g[i * oc + o] as f64)
                .sum();
            assert!(close(outs[2][k * oc + o], want), "dW ({k},{o})");
        }
    }
}
