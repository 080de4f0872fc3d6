//! CPU layer kernels: plain functions over fp32 slices, llm.c style, shapes in comments.
//!
//! Matrix products go through the `gemm` crate; everything else is a simple loop, split over
//! rows or elements on the run's persistent compute pool (`crate::threads`): a call spawns no
//! thread and allocates nothing. A row's (or an element's) arithmetic never depends on which
//! thread runs it, and every reduction that crosses rows (bias and LayerNorm parameter
//! gradients) runs on the calling thread in one fixed order, so results are bit-identical
//! whatever the thread count. Backward kernels add (`+=`) into gradients.

use crate::device::{AttnShape, Linear, IGNORE_INDEX};
use crate::threads::{SharedMut, ThreadPool};
use gemm::Parallelism;

/// LayerNorm epsilon, as in Hugging Face's GPT-2 (`layer_norm_epsilon = 1e-5`).
pub const LN_EPS: f32 = 1e-5;

/// Row-wise kernels (LayerNorm) go parallel from this many rows; fewer run on the caller, where
/// waking the pool would cost more than the work.
const PAR_MIN_ROWS: usize = 65;

/// Element-wise kernels (GELU) go parallel from this many elements.
const PAR_MIN_ELEMS: usize = (1 << 14) + 1;

/// Element-wise ranges start on multiples of this many f32 (a 64-byte cache line).
const LINE_ELEMS: usize = 16;

/// A strided matrix view: element (i, j) lives at `data[off + i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

/// Largest index touched by an `rows x cols` matrix at `off` with strides `rs`, `cs`.
fn last_index(off: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    off + (rows - 1) * rs + (cols - 1) * cs
}

/// dst (m,n) [+]= lhs (m,k) @ rhs (k,n); `dst` is row-major with row stride `dst_rs`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[dst_off + i * dst_rs..][..n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        last_index(dst_off, m, n, dst_rs, 1) < dst.len(),
        "gemm dst out of range"
    );
    assert!(
        last_index(lhs.off, m, k, lhs.rs, lhs.cs) < lhs.data.len(),
        "gemm lhs out of range"
    );
    assert!(
        last_index(rhs.off, k, n, rhs.rs, rhs.cs) < rhs.data.len(),
        "gemm rhs out of range"
    );
    // gemm parallelises only over rayon's global pool (`Parallelism` has no other executor), and
    // its threads are persistent too, so products keep it rather than run on our compute pool:
    // splitting a product ourselves would mean writing our own blocking, i.e. our own matmul.
    // Products, the other kernels and Adam run one after another on the caller's thread, so
    // the two pools take turns on the cores (rayon's idle workers sleep after a short spin).
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the three asserts above prove every element the product touches lies inside its
    // slice; `dst` is borrowed mutably so it cannot alias `lhs` or `rhs`; strides fit in isize
    // because they index within slices no larger than isize::MAX bytes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// tokens (B,T) -> out (B,T,C) = wte[token] (+ wpe[t] when given). Tokens are checked by the
/// caller.
pub fn encoder_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: Option<&[f32]>,
    t: usize,
    c: usize,
) {
    for (i, (row, &tok)) in out.chunks_exact_mut(c).zip(tokens).enumerate() {
        let e = &wte[tok as usize * c..][..c];
        match wpe {
            Some(wpe) => {
                let p = &wpe[(i % t) * c..][..c];
                for ((o, a), b) in row.iter_mut().zip(e).zip(p) {
                    *o = a + b;
                }
            }
            None => row.copy_from_slice(e),
        }
    }
}

/// dout (B,T,C) -> dwte, dwpe (+=), in token order so repeated tokens sum deterministically.
pub fn encoder_backward(
    dwte: &mut [f32],
    mut dwpe: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[u32],
    t: usize,
    c: usize,
) {
    for (i, (row, &tok)) in dout.chunks_exact(c).zip(tokens).enumerate() {
        for (d, g) in dwte[tok as usize * c..][..c].iter_mut().zip(row) {
            *d += g;
        }
        if let Some(dwpe) = dwpe.as_deref_mut() {
            for (d, g) in dwpe[(i % t) * c..][..c].iter_mut().zip(row) {
                *d += g;
            }
        }
    }
}

/// inp (N,C) -> out (N,C), mean (N), rstd (N); rows split over `pool`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    c: usize,
    pool: &ThreadPool,
) {
    let n = mean.len();
    assert!(out.len() == n * c && inp.len() == n * c && rstd.len() == n);
    let (out, mean, rstd) = (
        SharedMut::new(out),
        SharedMut::new(mean),
        SharedMut::new(rstd),
    );
    pool.for_ranges(n, 1, PAR_MIN_ROWS, &|r| {
        let elems = r.start * c..r.end * c;
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let (o, m, s) = unsafe {
            (
                out.range(elems.clone()),
                mean.range(r.clone()),
                rstd.range(r),
            )
        };
        layernorm_forward_rows(o, m, s, &inp[elems], w, b, c);
    });
}

/// `layernorm_forward` over a run of whole rows, on this thread.
fn layernorm_forward_rows(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    c: usize,
) {
    for (((orow, mi), ri), xrow) in out
        .chunks_exact_mut(c)
        .zip(mean)
        .zip(rstd)
        .zip(inp.chunks_exact(c))
    {
        let mu = xrow.iter().sum::<f32>() / c as f32;
        let var = xrow.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
        let s = 1.0 / (var + LN_EPS).sqrt();
        for (((o, &xv), wv), bv) in orow.iter_mut().zip(xrow).zip(w).zip(b) {
            *o = (xv - mu) * s * wv + bv;
        }
        *mi = mu;
        *ri = s;
    }
}

/// dout (N,C) -> dinp (N,C) (+=, rows split over `pool`), then dw, db (+=, one fixed order on
/// the calling thread).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
    pool: &ThreadPool,
) {
    let n = mean.len();
    assert!(dinp.len() == n * c && dout.len() == n * c && inp.len() == n * c && rstd.len() == n);
    let shared = SharedMut::new(dinp);
    pool.for_ranges(n, 1, PAR_MIN_ROWS, &|r| {
        let elems = r.start * c..r.end * c;
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let di = unsafe { shared.range(elems.clone()) };
        let (go, x) = (&dout[elems.clone()], &inp[elems]);
        layernorm_backward_rows(di, go, x, w, &mean[r.clone()], &rstd[r], c);
    });
    for (((grow, xrow), &mu), &s) in dout
        .chunks_exact(c)
        .zip(inp.chunks_exact(c))
        .zip(mean)
        .zip(rstd)
    {
        for i in 0..c {
            dw[i] += (xrow[i] - mu) * s * grow[i];
            db[i] += grow[i];
        }
    }
}

/// The input gradient of `layernorm_backward` over a run of whole rows, on this thread.
fn layernorm_backward_rows(
    dinp: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    for ((((direw, grow), xrow), &mu), &s) in dinp
        .chunks_exact_mut(c)
        .zip(dout.chunks_exact(c))
        .zip(inp.chunks_exact(c))
        .zip(mean)
        .zip(rstd)
    {
        let (mut dnorm_mean, mut dnorm_norm_mean) = (0.0f32, 0.0f32);
        for i in 0..c {
            let dnorm = w[i] * grow[i];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * (xrow[i] - mu) * s;
        }
        dnorm_mean /= c as f32;
        dnorm_norm_mean /= c as f32;
        for i in 0..c {
            let norm = (xrow[i] - mu) * s;
            let dnorm = w[i] * grow[i];
            direw[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}

/// dbias (OC) += column sums of dout (N,OC), rows in order.
pub fn bias_backward(db: &mut [f32], dout: &[f32], oc: usize) {
    for row in dout.chunks_exact(oc) {
        for (d, g) in db.iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// out (N,OC) += b broadcast over rows.
pub fn bias_forward(out: &mut [f32], b: &[f32], oc: usize) {
    for row in out.chunks_exact_mut(oc) {
        for (o, v) in row.iter_mut().zip(b) {
            *o += v;
        }
    }
}

const GELU_SCALE: f32 = 0.797_884_6; // sqrt(2/pi)

/// Element-wise tanh-approximated GELU (Hugging Face's `gelu_new`), split over `pool`.
pub fn gelu_forward(out: &mut [f32], inp: &[f32], pool: &ThreadPool) {
    assert_eq!(out.len(), inp.len(), "gelu_forward: length mismatch");
    let shared = SharedMut::new(out);
    pool.for_ranges(inp.len(), LINE_ELEMS, PAR_MIN_ELEMS, &|r| {
        // SAFETY: `for_ranges` gives each job a disjoint range of elements.
        let o = unsafe { shared.range(r.clone()) };
        for (o, &x) in o.iter_mut().zip(&inp[r]) {
            let cube = 0.044715 * x * x * x;
            *o = 0.5 * x * (1.0 + (GELU_SCALE * (x + cube)).tanh());
        }
    });
}

/// dinp += gelu'(inp) * dout, split over `pool`.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32], pool: &ThreadPool) {
    assert!(dinp.len() == inp.len() && dout.len() == inp.len());
    let shared = SharedMut::new(dinp);
    pool.for_ranges(inp.len(), LINE_ELEMS, PAR_MIN_ELEMS, &|r| {
        // SAFETY: `for_ranges` gives each job a disjoint range of elements.
        let d = unsafe { shared.range(r.clone()) };
        for ((d, &x), g) in d.iter_mut().zip(&inp[r.clone()]).zip(&dout[r]) {
            let cube = 0.044715 * x * x * x;
            let arg = GELU_SCALE * (x + cube);
            let th = arg.tanh();
            let sech2 = 1.0 - th * th;
            let local =
                0.5 * (1.0 + th) + x * 0.5 * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
            *d += local * g;
        }
    });
}

/// logits (N,V) -> probs (N,V) in place, losses (N) = -ln probs[target]; rows split over `pool`.
pub fn softmax_crossentropy_forward(
    probs: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    v: usize,
    pool: &ThreadPool,
) {
    let n = targets.len();
    assert!(probs.len() == n * v && losses.len() == n);
    let (probs, losses) = (SharedMut::new(probs), SharedMut::new(losses));
    pool.for_ranges(n, 1, 2, &|r| {
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let (p, l) = unsafe { (probs.range(r.start * v..r.end * v), losses.range(r.clone())) };
        for ((row, loss), &tgt) in p.chunks_exact_mut(v).zip(l).zip(&targets[r]) {
            softmax_row(row);
            *loss = if tgt == IGNORE_INDEX {
                0.0
            } else {
                -row[tgt as usize].ln()
            };
        }
    });
}

/// In-place numerically stable softmax of one row.
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// dlogits (N,V) += (probs - onehot(target)) * dloss; rows split over `pool`.
pub fn softmax_crossentropy_backward(
    dlogits: &mut [f32],
    probs: &[f32],
    targets: &[u32],
    v: usize,
    dloss: f32,
    pool: &ThreadPool,
) {
    let n = targets.len();
    assert!(dlogits.len() == n * v && probs.len() == n * v);
    let shared = SharedMut::new(dlogits);
    pool.for_ranges(n, 1, 2, &|r| {
        let elems = r.start * v..r.end * v;
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let d = unsafe { shared.range(elems.clone()) };
        let rows = d.chunks_exact_mut(v).zip(probs[elems].chunks_exact(v));
        for ((d, p), &tgt) in rows.zip(&targets[r]) {
            if tgt == IGNORE_INDEX {
                continue;
            }
            for (i, (d, &p)) in d.iter_mut().zip(p).enumerate() {
                let ind = if i == tgt as usize { 1.0 } else { 0.0 };
                *d += (p - ind) * dloss;
            }
        }
    });
}

/// inp (N,C) -> out (N,OC) = inp @ W + b; `params` holds W at `lin.w_off` and b at `lin.b_off`.
pub fn matmul_forward(out: &mut [f32], inp: &[f32], params: &[f32], lin: Linear, threads: usize) {
    let (c, oc) = (lin.c, lin.oc);
    let n = inp.len() / c;
    let x = Mat {
        data: inp,
        off: 0,
        rs: c,
        cs: 1,
    };
    let w = if lin.w_out_in {
        Mat {
            data: params,
            off: lin.w_off,
            rs: 1,
            cs: c,
        }
    } else {
        Mat {
            data: params,
            off: lin.w_off,
            rs: oc,
            cs: 1,
        }
    };
    gemm_acc(n, oc, c, out, 0, oc, x, w, false, threads);
    if let Some(b_off) = lin.b_off {
        bias_forward(out, &params[b_off..b_off + oc], oc);
    }
}

/// dout (N,OC) -> dinp (N,C) += dout @ W^T, dW += (inp^T @ dout in W's layout), db += sum(dout).
pub fn matmul_backward(
    dinp: &mut [f32],
    dparams: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    params: &[f32],
    lin: Linear,
    threads: usize,
) {
    let (c, oc) = (lin.c, lin.oc);
    let n = inp.len() / c;
    let g = Mat {
        data: dout,
        off: 0,
        rs: oc,
        cs: 1,
    };
    let x = Mat {
        data: inp,
        off: 0,
        rs: c,
        cs: 1,
    };
    if lin.w_out_in {
        // W (OC,C): dinp (N,C) += dout (N,OC) @ W (OC,C); dW (OC,C) += dout^T (OC,N) @ inp (N,C)
        let w = Mat {
            data: params,
            off: lin.w_off,
            rs: c,
            cs: 1,
        };
        gemm_acc(n, c, oc, dinp, 0, c, g, w, true, threads);
        let g_t = Mat {
            data: dout,
            off: 0,
            rs: 1,
            cs: oc,
        };
        gemm_acc(oc, c, n, dparams, lin.w_off, c, g_t, x, true, threads);
    } else {
        // W (C,OC): dinp (N,C) += dout (N,OC) @ W^T (OC,C); dW (C,OC) += inp^T (C,N) @ dout (N,OC)
        let w_t = Mat {
            data: params,
            off: lin.w_off,
            rs: 1,
            cs: oc,
        };
        gemm_acc(n, c, oc, dinp, 0, c, g, w_t, true, threads);
        let x_t = Mat {
            data: inp,
            off: 0,
            rs: 1,
            cs: c,
        };
        gemm_acc(c, oc, n, dparams, lin.w_off, oc, x_t, g, true, threads);
    }
    if let Some(b_off) = lin.b_off {
        bias_backward(&mut dparams[b_off..b_off + oc], dout, oc);
    }
}

/// inp (N,C) -> out (N,C) = inp * rstd * w, rstd (N) = 1/sqrt(mean(inp^2) + eps) (transformers'
/// `LlamaRMSNorm` in fp32); rows split over `pool`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    c: usize,
    eps: f32,
    pool: &ThreadPool,
) {
    let n = rstd.len();
    assert!(out.len() == n * c && inp.len() == n * c);
    let (out, rstd) = (SharedMut::new(out), SharedMut::new(rstd));
    pool.for_ranges(n, 1, PAR_MIN_ROWS, &|r| {
        let elems = r.start * c..r.end * c;
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let (o, s) = unsafe { (out.range(elems.clone()), rstd.range(r)) };
        rmsnorm_rows(o, s, &inp[elems], w, c, eps);
    });
}

/// `rmsnorm_forward` over a run of whole rows of `c`, on this thread.
pub fn rmsnorm_rows(out: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], c: usize, eps: f32) {
    for ((orow, ri), xrow) in out.chunks_exact_mut(c).zip(rstd).zip(inp.chunks_exact(c)) {
        let ms = xrow.iter().map(|x| x * x).sum::<f32>() / c as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for ((o, &x), &wv) in orow.iter_mut().zip(xrow).zip(w) {
            *o = x * s * wv;
        }
        *ri = s;
    }
}

/// dout (N,C) -> dinp (N,C) (+=, rows split over `pool`), then dw (+=, one fixed order on the
/// calling thread).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    rstd: &[f32],
    c: usize,
    pool: &ThreadPool,
) {
    let n = rstd.len();
    assert!(dinp.len() == n * c && dout.len() == n * c && inp.len() == n * c);
    let shared = SharedMut::new(dinp);
    pool.for_ranges(n, 1, PAR_MIN_ROWS, &|r| {
        let elems = r.start * c..r.end * c;
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let di = unsafe { shared.range(elems.clone()) };
        rmsnorm_backward_rows(di, &dout[elems.clone()], &inp[elems], w, &rstd[r], c);
    });
    rmsnorm_weight_grad(dw, dout, inp, rstd, c);
}

/// The input gradient of RMSNorm over whole rows of `c`, on this thread:
/// `dx = s (w g) - s^3 x mean(w g x)`, `s` the row's rstd.
pub fn rmsnorm_backward_rows(
    dinp: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    rstd: &[f32],
    c: usize,
) {
    for (((drow, grow), xrow), &s) in dinp
        .chunks_exact_mut(c)
        .zip(dout.chunks_exact(c))
        .zip(inp.chunks_exact(c))
        .zip(rstd)
    {
        let mut dot = 0.0f32;
        for i in 0..c {
            dot += w[i] * grow[i] * xrow[i];
        }
        let k = s * s * s * dot / c as f32;
        for i in 0..c {
            drow[i] += s * w[i] * grow[i] - k * xrow[i];
        }
    }
}

/// dw (C) += sum over rows of dout * inp * rstd, rows in order.
pub fn rmsnorm_weight_grad(dw: &mut [f32], dout: &[f32], inp: &[f32], rstd: &[f32], c: usize) {
    for ((grow, xrow), &s) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(rstd) {
        for i in 0..c {
            dw[i] += xrow[i] * s * grow[i];
        }
    }
}

/// RoPE in place on the query and key heads of qkv (B,T,W) (layout in [`AttnShape`]) at
/// positions `0..T`: for the head's halves `x1`, `x2` and the position's `cos`, `sin` (HD/2),
/// `(x1 cos - x2 sin, x2 cos + x1 sin)`; with `transpose`, `(x1 cos + x2 sin, x2 cos - x1 sin)`
/// (the backward). `table` is `cos (P, HD/2)` then `sin (P, HD/2)`. Rows split over `pool`.
pub fn rope(qkv: &mut [f32], table: &[f32], s: AttnShape, transpose: bool, pool: &ThreadPool) {
    let (w, hd) = (s.qkv_width(), s.head_dim);
    let half = hd / 2;
    let positions = table.len() / (2 * half);
    let (cos, sin) = table.split_at(positions * half);
    let rotated = (s.nh + s.n_kv_head) * hd;
    let shared = SharedMut::new(qkv);
    pool.for_ranges(s.b * s.t, 1, PAR_MIN_ROWS, &|r| {
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let rows = unsafe { shared.range(r.start * w..r.end * w) };
        for (i, row) in rows.chunks_exact_mut(w).enumerate() {
            let pos = (r.start + i) % s.t;
            let (c, sn) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
            for head in row[..rotated].chunks_exact_mut(hd) {
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    if transpose {
                        x1[j] = a * c[j] + b * sn[j];
                        x2[j] = b * c[j] - a * sn[j];
                    } else {
                        x1[j] = a * c[j] - b * sn[j];
                        x2[j] = b * c[j] + a * sn[j];
                    }
                }
            }
        }
    });
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// SwiGLU: inp (N,2I) rows `[gate | up]` -> out (N,I) = silu(gate) * up; rows split over
/// `pool`.
pub fn swiglu_forward(out: &mut [f32], inp: &[f32], i: usize, pool: &ThreadPool) {
    let n = out.len() / i;
    assert!(out.len() == n * i && inp.len() == 2 * n * i);
    let shared = SharedMut::new(out);
    pool.for_ranges(n, 1, 2, &|r| {
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let o = unsafe { shared.range(r.start * i..r.end * i) };
        let x = &inp[r.start * 2 * i..r.end * 2 * i];
        for (orow, xrow) in o.chunks_exact_mut(i).zip(x.chunks_exact(2 * i)) {
            let (g, u) = xrow.split_at(i);
            for ((o, &g), &u) in orow.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        }
    });
}

/// dout (N,I) -> dinp (N,2I) (+=): `dgate = dout up sig(g) (1 + g (1 - sig(g)))`,
/// `dup = dout silu(g)`; rows split over `pool`.
pub fn swiglu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32], i: usize, pool: &ThreadPool) {
    let n = dout.len() / i;
    assert!(dout.len() == n * i && inp.len() == 2 * n * i && dinp.len() == inp.len());
    let shared = SharedMut::new(dinp);
    pool.for_ranges(n, 1, 2, &|r| {
        // SAFETY: `for_ranges` gives each job a disjoint range of rows, hence of elements.
        let d = unsafe { shared.range(r.start * 2 * i..r.end * 2 * i) };
        let x = &inp[r.start * 2 * i..r.end * 2 * i];
        let go = &dout[r.start * i..r.end * i];
        for ((drow, xrow), grow) in d
            .chunks_exact_mut(2 * i)
            .zip(x.chunks_exact(2 * i))
            .zip(go.chunks_exact(i))
        {
            let (dg, du) = drow.split_at_mut(i);
            let (g, u) = xrow.split_at(i);
            for j in 0..i {
                let sg = sigmoid(g[j]);
                let silu = g[j] * sg;
                dg[j] += grow[j] * u[j] * sg * (1.0 + g[j] * (1.0 - sg));
                du[j] += grow[j] * silu;
            }
        }
    });
}
