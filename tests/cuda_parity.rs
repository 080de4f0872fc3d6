//! Every `Device` op on CUDA against the CPU backend, forward and backward, in fp32 and with
//! bf16 parameters and bf16 products, on GPT-2 and Llama shapes including odd sizes:
//! relative error `‖gpu − cpu‖ / ‖cpu‖` at most 1e-5 in fp32 and 1e-2 in bf16. Outputs an op
//! overwrites are poisoned with NaN first (an unwritten element fails); gradients an op adds
//! into start from the same random values on both devices (an element left alone differs).
//! Each case also runs twice on the GPU and must give the same bits (fixed-order reductions).
//!
//! Needs the feature `cuda`; compiled in CI, and each test prints SKIPPED and returns when no
//! GPU is present (`scripts/gpu_check.sh` runs them on one).
#![cfg(feature = "cuda")]

use zinf::device::cuda::{device_count, CudaDevice, MatmulPrecision};
use zinf::device::{
    AttnShape, CpuDevice, Device, DeviceBuffer, DeviceError, HostSlice, Linear, Norm, QkNorm,
    RmsNorm, IGNORE_INDEX,
};

/// The GPU, or `None` (and a SKIPPED line) when there is none.
fn gpu(precision: MatmulPrecision, test: &str) -> Option<CudaDevice> {
    if device_count() == 0 {
        eprintln!("SKIPPED {test}: no CUDA GPU (or no driver) on this machine");
        return None;
    }
    Some(CudaDevice::new(0, 8 << 30, precision).unwrap_or_else(|e| panic!("{test}: {e}")))
}

/// Deterministic values in [-1, 1) (xorshift).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// How a buffer starts: given values (inputs, gradients added into), or NaN (outputs).
#[derive(Clone)]
enum Init {
    Values(Vec<f32>),
    Poison(usize),
}

/// One op (or a forward + backward chain) over numbered buffers, run on any device.
trait Case {
    /// The buffers, in the order `run` takes them, and which of them are compared.
    fn buffers(&self) -> Vec<(Init, bool)>;
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError>;
}

/// Whether parameters (buffer 0 of every case that has any) reach the device as bf16.
#[derive(Clone, Copy, PartialEq)]
enum Params {
    F32,
    Bf16,
}

fn run_on<D: Device, C: Case>(dev: &D, case: &C, params: Params) -> Vec<Vec<f32>> {
    let specs = case.buffers();
    let mut bufs = Vec::new();
    for (i, (init, _)) in specs.iter().enumerate() {
        let (len, host) = match init {
            Init::Values(v) => (v.len(), v.clone()),
            Init::Poison(n) => (*n, vec![f32::NAN; *n]),
        };
        let mut b = dev.alloc("test", len).expect("alloc");
        let ev = if i == 0 && params == Params::Bf16 {
            let h: Vec<half::bf16> = host.iter().map(|&x| half::bf16::from_f32(x)).collect();
            dev.upload(&mut b, 0, HostSlice::Bf16(&h))
        } else {
            dev.upload(&mut b, 0, HostSlice::F32(&host))
        };
        dev.wait(ev.expect("upload")).expect("wait");
        bufs.push(b);
    }
    case.run(dev, &mut bufs).expect("op runs");
    specs
        .iter()
        .zip(&bufs)
        .filter(|((_, compared), _)| *compared)
        .map(|(_, b)| {
            let mut out = vec![0.0; b.len()];
            let ev = dev.download(b, 0, &mut out).expect("download");
            dev.wait(ev).expect("wait");
            out
        })
        .collect()
}

/// Runs `case` on the CPU and twice on the GPU; checks the GPU against the CPU within `tol`
/// and the two GPU runs bit for bit.
fn check<G: Device, C: Case>(name: &str, case: &C, gpu: &G, params: Params, tol: f64) {
    let cpu = CpuDevice::new(2, 8 << 30);
    let want = run_on(&cpu, case, params);
    let got = run_on(gpu, case, params);
    let again = run_on(gpu, case, params);
    for (k, ((w, g), a)) in want.iter().zip(&got).zip(&again).enumerate() {
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{name}: output {k} has a NaN or inf on the GPU (an element left unwritten?)"
        );
        assert!(w.iter().all(|x| x.is_finite()), "{name}: CPU output {k}");
        let diff: f64 = w
            .iter()
            .zip(g)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = w.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        let rel = diff / norm.max(1e-30);
        eprintln!("{name}: output {k}: relative error {rel:.2e}");
        assert!(
            rel <= tol,
            "{name}: output {k}: relative error {rel:.3e} > {tol:.0e}"
        );
        let same = g.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name}: output {k} differs between two GPU runs");
    }
}

const FP32: f64 = 1e-5;
const BF16: f64 = 1e-2;

fn poison(n: usize) -> (Init, bool) {
    (Init::Poison(n), true)
}
fn input(n: usize, seed: u64) -> (Init, bool) {
    (Init::Values(values(n, seed)), false)
}
fn grad(n: usize, seed: u64) -> (Init, bool) {
    (Init::Values(values(n, seed)), true)
}

// ---------------------------------------------------------------------------------------
// GPT-2 ops

struct Encoder {
    b: usize,
    t: usize,
    c: usize,
    v: usize,
    wpe: bool,
}

impl Encoder {
    fn tokens(&self) -> Vec<u32> {
        // Repeats on purpose: the gradient of a token seen many times sums in row order.
        (0..self.b * self.t)
            .map(|i| ((i * 7) % 5 + (i % 3) * 11) as u32 % self.v as u32)
            .collect()
    }
}

impl Case for Encoder {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let (n, p) = (self.b * self.t, (self.v + self.t) * self.c);
        vec![
            input(p, 1),
            poison(n * self.c),
            input(n * self.c, 2),
            grad(p, 3),
        ]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [params, out, dout, dparams] = b else {
            unreachable!()
        };
        let wpe = self.wpe.then_some(self.v * self.c);
        let tokens = self.tokens();
        dev.encoder_forward(out, &tokens, params, 0, wpe, self.t, self.c, self.v)?;
        dev.encoder_backward(dparams, 0, wpe, dout, &tokens, self.t, self.c)
    }
}

#[test]
fn encoder_matches_the_cpu() {
    if let Some(g) = gpu(MatmulPrecision::Fp32, "encoder") {
        encoder_on(&g);
    }
}

fn encoder_on<G: Device>(g: &G) {
    for (c, wpe) in [(768, true), (37, true), (64, false)] {
        let case = Encoder {
            b: 3,
            t: 17,
            c,
            v: 50,
            wpe,
        };
        check(
            &format!("encoder c={c} wpe={wpe}"),
            &case,
            g,
            Params::F32,
            FP32,
        );
        check(&format!("encoder bf16 c={c}"), &case, g, Params::Bf16, FP32);
    }
}

struct LayerNorm {
    n: usize,
    c: usize,
}

impl Case for LayerNorm {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let (n, c) = (self.n, self.c);
        vec![
            input(2 * c, 1),
            input(n * c, 2),
            poison(n * c),
            poison(n),
            poison(n),
            input(n * c, 3),
            grad(n * c, 4),
            grad(2 * c, 5),
        ]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [params, inp, out, mean, rstd, dout, dinp, dparams] = b else {
            unreachable!()
        };
        let norm = Norm {
            w_off: 0,
            b_off: self.c,
            c: self.c,
        };
        dev.layernorm_forward(out, mean, rstd, inp, params, norm)?;
        dev.layernorm_backward(dinp, dparams, dout, inp, params, mean, rstd, norm)
    }
}

#[test]
fn layernorm_matches_the_cpu() {
    if let Some(g) = gpu(MatmulPrecision::Fp32, "layernorm") {
        layernorm_on(&g);
    }
}

fn layernorm_on<G: Device>(g: &G) {
    for (n, c) in [(64, 768), (131, 37), (3, 1600)] {
        let case = LayerNorm { n, c };
        check(&format!("layernorm {n}x{c}"), &case, g, Params::F32, FP32);
        check(
            &format!("layernorm bf16 {n}x{c}"),
            &case,
            g,
            Params::Bf16,
            FP32,
        );
    }
}

struct Matmul {
    n: usize,
    c: usize,
    oc: usize,
    bias: bool,
    w_out_in: bool,
}

impl Case for Matmul {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let (n, c, oc) = (self.n, self.c, self.oc);
        let p = c * oc + oc;
        vec![
            input(p, 1),
            input(n * c, 2),
            poison(n * oc),
            input(n * oc, 3),
            grad(n * c, 4),
            grad(p, 5),
        ]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [params, inp, out, dout, dinp, dparams] = b else {
            unreachable!()
        };
        let lin = Linear {
            w_off: 0,
            b_off: self.bias.then_some(self.c * self.oc),
            c: self.c,
            oc: self.oc,
            w_out_in: self.w_out_in,
        };
        dev.matmul_forward(out, inp, params, lin)?;
        dev.matmul_backward(dinp, dparams, dout, inp, params, lin)
    }
}

#[test]
fn matmul_matches_the_cpu_in_fp32_and_bf16() {
    for (precision, params, tol) in [
        (MatmulPrecision::Fp32, Params::F32, FP32),
        (MatmulPrecision::Bf16, Params::Bf16, BF16),
    ] {
        if let Some(g) = gpu(precision, "matmul") {
            matmul_on(&g, params, tol);
        }
    }
}

fn matmul_on<G: Device>(g: &G, params: Params, tol: f64) {
    let cases = [
        (64, 768, 2304, true, false),
        (67, 33, 129, true, false),
        (16, 96, 50, false, true),
        (129, 64, 172, false, false),
    ];
    for (n, c, oc, bias, w_out_in) in cases {
        let case = Matmul {
            n,
            c,
            oc,
            bias,
            w_out_in,
        };
        let name = format!("matmul tol {tol:.0e} {n}x{c}->{oc} bias={bias} out_in={w_out_in}");
        check(&name, &case, g, params, tol);
    }
}

struct Attention(AttnShape);

impl Case for Attention {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let s = self.0;
        let (n, att) = (s.b * s.t, s.b * s.nh * s.t * s.t);
        vec![
            input(n * s.qkv_width(), 1),
            poison(n * s.q_width()),
            poison(att),
            input(n * s.q_width(), 2),
            grad(n * s.qkv_width(), 3),
            (Init::Poison(att), false),
        ]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [qkv, out, att, dout, dqkv, scratch] = b else {
            unreachable!()
        };
        dev.attention_forward(out, att, qkv, self.0)?;
        dev.attention_backward(dqkv, scratch, dout, qkv, att, self.0)
    }
}

#[test]
fn attention_matches_the_cpu_mha_and_gqa() {
    for (precision, tol) in [(MatmulPrecision::Fp32, FP32), (MatmulPrecision::Bf16, BF16)] {
        if let Some(g) = gpu(precision, "attention") {
            attention_on(&g, tol);
        }
    }
}

fn attention_on<G: Device>(g: &G, tol: f64) {
    let shapes = [
        AttnShape::mha(2, 64, 768, 12),
        AttnShape::mha(3, 17, 20, 4),
        AttnShape {
            b: 2,
            t: 33,
            nh: 8,
            n_kv_head: 2,
            head_dim: 16,
        },
        AttnShape {
            b: 1,
            t: 40,
            nh: 6,
            n_kv_head: 3,
            head_dim: 64,
        },
    ];
    for s in shapes {
        let name = format!("attention tol {tol:.0e} {s:?}");
        check(&name, &Attention(s), g, Params::F32, tol);
    }
}

/// Element-wise ops: GELU forward and backward, residual forward, add_assign, zero.
struct Elementwise(usize);

impl Case for Elementwise {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let n = self.0;
        vec![
            input(n, 1),
            poison(n),
            input(n, 2),
            grad(n, 3),
            poison(n),
            grad(n, 4),
            grad(n, 5),
        ]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [inp, out, dout, dinp, sum, acc, zeroed] = b else {
            unreachable!()
        };
        dev.gelu_forward(out, inp)?;
        dev.gelu_backward(dinp, inp, dout)?;
        dev.residual_forward(sum, inp, dout)?;
        dev.add_assign(acc, inp)?;
        dev.zero(zeroed)
    }
}

#[test]
fn elementwise_ops_match_the_cpu() {
    if let Some(g) = gpu(MatmulPrecision::Fp32, "elementwise") {
        elementwise_on(&g);
    }
}

fn elementwise_on<G: Device>(g: &G) {
    for n in [1, 255, 257, 64 * 3072] {
        check(
            &format!("elementwise n={n}"),
            &Elementwise(n),
            g,
            Params::F32,
            FP32,
        );
    }
}

struct CrossEntropy {
    n: usize,
    v: usize,
}

impl CrossEntropy {
    fn targets(&self) -> Vec<u32> {
        (0..self.n)
            .map(|i| {
                if i % 5 == 3 {
                    IGNORE_INDEX
                } else {
                    ((i * 31) % self.v) as u32
                }
            })
            .collect()
    }
}

impl Case for CrossEntropy {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let nv = self.n * self.v;
        // logits (overwritten with probabilities in place), losses, dlogits.
        let logits: Vec<f32> = values(nv, 1).iter().map(|x| x * 8.0).collect();
        vec![(Init::Values(logits), true), poison(self.n), grad(nv, 2)]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [probs, losses, dlogits] = b else {
            unreachable!()
        };
        let t = self.targets();
        dev.softmax_crossentropy_forward(probs, losses, &t, self.v)?;
        dev.softmax_crossentropy_backward(dlogits, probs, &t, self.v, 1.0 / self.n as f32)
    }
}

#[test]
fn crossentropy_matches_the_cpu() {
    if let Some(g) = gpu(MatmulPrecision::Fp32, "crossentropy") {
        crossentropy_on(&g);
    }
}

fn crossentropy_on<G: Device>(g: &G) {
    for (n, v) in [(16, 50257), (33, 97), (4, 128256)] {
        check(
            &format!("crossentropy {n}x{v}"),
            &CrossEntropy { n, v },
            g,
            Params::F32,
            FP32,
        );
    }
}

#[test]
fn bad_tokens_are_errors_before_any_launch() {
    let Some(g) = gpu(MatmulPrecision::Fp32, "bad tokens") else {
        return;
    };
    let mut probs = g.alloc("t", 2 * 10).expect("alloc");
    let mut losses = g.alloc("t", 2).expect("alloc");
    let e = g
        .softmax_crossentropy_forward(&mut probs, &mut losses, &[3, 10], 10)
        .unwrap_err();
    assert!(matches!(e, DeviceError::BadToken { token: 10, .. }), "{e}");
    let mut small = g.alloc("t", 4).expect("alloc");
    let e = g
        .upload(&mut small, 2, HostSlice::F32(&[1.0; 3]))
        .unwrap_err();
    assert!(matches!(e, DeviceError::OutOfRange { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------
// Llama ops

struct RmsNormCase {
    n: usize,
    c: usize,
}

impl Case for RmsNormCase {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let (n, c) = (self.n, self.c);
        vec![
            input(c, 1),
            input(n * c, 2),
            poison(n * c),
            poison(n),
            input(n * c, 3),
            grad(n * c, 4),
            grad(c, 5),
        ]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [params, inp, out, rstd, dout, dinp, dparams] = b else {
            unreachable!()
        };
        let norm = RmsNorm {
            w_off: 0,
            c: self.c,
            eps: 1e-6,
        };
        dev.rmsnorm_forward(out, rstd, inp, params, norm)?;
        dev.rmsnorm_backward(dinp, dparams, dout, inp, params, rstd, norm)
    }
}

#[test]
fn rmsnorm_matches_the_cpu() {
    if let Some(g) = gpu(MatmulPrecision::Fp32, "rmsnorm") {
        rmsnorm_on(&g);
    }
}

fn rmsnorm_on<G: Device>(g: &G) {
    for (n, c) in [(64, 2048), (131, 37), (5, 4096)] {
        let case = RmsNormCase { n, c };
        check(&format!("rmsnorm {n}x{c}"), &case, g, Params::F32, FP32);
        check(
            &format!("rmsnorm bf16 {n}x{c}"),
            &case,
            g,
            Params::Bf16,
            FP32,
        );
    }
}

/// Qwen3's q/k norm, then RoPE, forward and backward, on packed GQA rows.
struct QkNormRope(AttnShape);

impl QkNormRope {
    fn table(&self) -> Vec<f32> {
        let (p, half) = (self.0.t + 3, self.0.head_dim / 2);
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for pos in 0..p {
            for j in 0..half {
                let a = pos as f32 / 10000f32.powf(2.0 * j as f32 / self.0.head_dim as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        cos.extend(sin);
        cos
    }
}

impl Case for QkNormRope {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let s = self.0;
        let (n, w, hd) = (s.b * s.t, s.qkv_width(), s.head_dim);
        let heads = s.nh + s.n_kv_head;
        vec![
            input(2 * hd, 1),
            input(n * w, 2),
            poison(n * w),
            poison(n * heads),
            input(n * w, 3),
            grad(n * w, 4),
            grad(2 * hd, 5),
            (Init::Values(self.table()), false),
        ]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [params, qkv, out, rstd, dout, dqkv, dparams, table] = b else {
            unreachable!()
        };
        let s = self.0;
        let norm = QkNorm {
            q_w_off: 0,
            k_w_off: s.head_dim,
            eps: 1e-6,
        };
        dev.qk_norm_forward(out, rstd, qkv, params, norm, s)?;
        dev.rope_forward(out, table, s)?;
        // The backward of the rotation runs in place on the incoming gradient.
        dev.rope_backward(dout, table, s)?;
        dev.qk_norm_backward(dqkv, dparams, dout, qkv, params, rstd, norm, s)
    }
}

#[test]
fn qk_norm_and_rope_match_the_cpu() {
    if let Some(g) = gpu(MatmulPrecision::Fp32, "qk_norm/rope") {
        qk_norm_rope_on(&g);
    }
}

fn qk_norm_rope_on<G: Device>(g: &G) {
    let shapes = [
        AttnShape {
            b: 2,
            t: 17,
            nh: 8,
            n_kv_head: 2,
            head_dim: 128,
        },
        AttnShape {
            b: 1,
            t: 5,
            nh: 3,
            n_kv_head: 1,
            head_dim: 6,
        },
    ];
    for s in shapes {
        check(
            &format!("qk_norm+rope {s:?}"),
            &QkNormRope(s),
            g,
            Params::F32,
            FP32,
        );
    }
}

struct Swiglu {
    n: usize,
    i: usize,
}

impl Case for Swiglu {
    fn buffers(&self) -> Vec<(Init, bool)> {
        let (n, i) = (self.n, self.i);
        vec![
            input(2 * n * i, 1),
            poison(n * i),
            input(n * i, 2),
            grad(2 * n * i, 3),
        ]
    }
    fn run<D: Device>(&self, dev: &D, b: &mut [D::Buffer]) -> Result<(), DeviceError> {
        let [inp, out, dout, dinp] = b else {
            unreachable!()
        };
        dev.swiglu_forward(out, inp, self.i)?;
        dev.swiglu_backward(dinp, inp, dout, self.i)
    }
}

#[test]
fn swiglu_matches_the_cpu() {
    if let Some(g) = gpu(MatmulPrecision::Fp32, "swiglu") {
        swiglu_on(&g);
    }
}

fn swiglu_on<G: Device>(g: &G) {
    for (n, i) in [(64, 8192), (7, 37)] {
        check(
            &format!("swiglu {n}x{i}"),
            &Swiglu { n, i },
            g,
            Params::F32,
            FP32,
        );
    }
}

/// Uploads widen fp16 and bf16 exactly as the CPU does, at an offset, and a download reads
/// back a sub-range.
#[test]
fn half_precision_uploads_widen_exactly() {
    let Some(g) = gpu(MatmulPrecision::Fp32, "upload") else {
        return;
    };
    let v = values(1000, 9);
    let h16: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    let hb: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
    let mut buf = g.alloc("t", 1003).expect("alloc");
    for (src, want) in [
        (
            HostSlice::F16(&h16),
            h16.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
        ),
        (
            HostSlice::Bf16(&hb),
            hb.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
        ),
    ] {
        let ev = g.upload(&mut buf, 3, src).expect("upload");
        g.wait(ev).expect("wait");
        let mut out = vec![0.0f32; 1000];
        let ev = g.download(&buf, 3, &mut out).expect("download");
        g.wait(ev).expect("wait");
        assert!(out
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

/// The harness itself, on the CPU against a second CPU device: every case runs, every
/// compared output is written (none stays NaN), and the tolerances hold trivially. Runs
/// everywhere, so a broken case fails here before it reaches a GPU.
#[test]
fn every_case_runs_on_the_cpu_against_itself() {
    let other = CpuDevice::new(1, 8 << 30);
    encoder_on(&other);
    layernorm_on(&other);
    matmul_on(&other, Params::F32, FP32);
    matmul_on(&other, Params::Bf16, FP32);
    attention_on(&other, FP32);
    elementwise_on(&other);
    crossentropy_on(&other);
    rmsnorm_on(&other);
    qk_norm_rope_on(&other);
    swiglu_on(&other);
}
