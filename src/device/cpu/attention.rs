//! CPU causal self-attention, forward and backward, over one batch item at a time.
//!
//! Per head the products are `gemm` calls on strided views of the packed `qkv (T,W)` rows
//! (query heads, then key heads, then value heads; see [`AttnShape`]), so no head is ever
//! copied out. Query head `h` reads key/value head `h / group_size` (grouped-query attention);
//! for GPT-2 (one key/value head per query head) the offsets are those of `(T,3C)` rows. Batch items are split over the run's compute pool; each writes
//! only its own rows, which keeps the result independent of the thread count.

use super::kernels::{gemm_acc, softmax_row, Mat};
use crate::device::AttnShape;
use crate::threads::{SharedMut, ThreadPool};

/// qkv (B,T,W) -> out (B,T,NH*HD), att (B,NH,T,T) = causal softmax(q k^T / sqrt(HD)); batch
/// items split over `pool`.
pub fn attention_forward(
    out: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    s: AttnShape,
    pool: &ThreadPool,
) {
    let (t, c, w, nh) = (s.t, s.q_width(), s.qkv_width(), s.nh);
    assert!(out.len() == s.b * t * c && att.len() == s.b * nh * t * t);
    assert_eq!(qkv.len(), s.b * t * w);
    let (out, att) = (SharedMut::new(out), SharedMut::new(att));
    pool.for_ranges(s.b, 1, 2, &|r| {
        for b in r {
            // SAFETY: `for_ranges` gives each job a disjoint range of batch items, and each
            // item's rows of `out` and `att` are disjoint from every other item's.
            let (out_b, att_b) = unsafe {
                (
                    out.range(b * t * c..(b + 1) * t * c),
                    att.range(b * nh * t * t..(b + 1) * nh * t * t),
                )
            };
            let qkv_b = &qkv[b * t * w..(b + 1) * t * w];
            attention_forward_one(out_b, att_b, qkv_b, s);
        }
    });
}

/// Offsets inside a packed qkv row of query head `h` and of the key and value heads it reads.
fn head_offsets(s: AttnShape, h: usize) -> (usize, usize, usize) {
    let hs = s.head_dim;
    let kv = h / s.group_size();
    let k0 = s.nh * hs;
    (h * hs, k0 + kv * hs, k0 + (s.n_kv_head + kv) * hs)
}

fn attention_forward_one(out_b: &mut [f32], att_b: &mut [f32], qkv_b: &[f32], s: AttnShape) {
    let (t, c, w) = (s.t, s.q_width(), s.qkv_width());
    let hs = s.head_dim;
    let scale = 1.0 / (hs as f32).sqrt();
    for (h, att_h) in att_b.chunks_exact_mut(t * t).enumerate() {
        let (q_off, k_off, v_off) = head_offsets(s, h);
        let q = Mat {
            data: qkv_b,
            off: q_off,
            rs: w,
            cs: 1,
        };
        let k_t = Mat {
            data: qkv_b,
            off: k_off,
            rs: 1,
            cs: w,
        };
        // preatt (T,T) = q (T,hs) @ k^T (hs,T)
        gemm_acc(t, t, hs, att_h, 0, t, q, k_t, false, 1);
        for (i, row) in att_h.chunks_exact_mut(t).enumerate() {
            row[..=i].iter_mut().for_each(|x| *x *= scale);
            softmax_row(&mut row[..=i]);
            row[i + 1..].fill(0.0);
        }
        let a = Mat {
            data: att_h,
            off: 0,
            rs: t,
            cs: 1,
        };
        let v = Mat {
            data: qkv_b,
            off: v_off,
            rs: w,
            cs: 1,
        };
        // out_h (T,hs) = att (T,T) @ v (T,hs)
        gemm_acc(t, hs, t, out_b, h * hs, c, a, v, false, 1);
    }
}

/// dout (B,T,NH*HD) -> dqkv (B,T,W) (+=); scratch holds (B,NH,T,T); batch items split over
/// `pool`. Key/value heads shared by several query heads sum their gradients in head order.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    s: AttnShape,
    pool: &ThreadPool,
) {
    let (t, c, w, nh) = (s.t, s.q_width(), s.qkv_width(), s.nh);
    assert!(dqkv.len() == s.b * t * w && qkv.len() == dqkv.len());
    assert!(scratch.len() == s.b * nh * t * t && att.len() == scratch.len());
    assert_eq!(dout.len(), s.b * t * c);
    let (dqkv, scratch) = (SharedMut::new(dqkv), SharedMut::new(scratch));
    pool.for_ranges(s.b, 1, 2, &|r| {
        for b in r {
            let (qkv_rows, att_rows) = (
                b * t * w..(b + 1) * t * w,
                b * nh * t * t..(b + 1) * nh * t * t,
            );
            // SAFETY: `for_ranges` gives each job a disjoint range of batch items, and each
            // item's rows of `dqkv` and `scratch` are disjoint from every other item's.
            let (dqkv_b, scr_b) = unsafe {
                (
                    dqkv.range(qkv_rows.clone()),
                    scratch.range(att_rows.clone()),
                )
            };
            let dout_b = &dout[b * t * c..(b + 1) * t * c];
            attention_backward_one(dqkv_b, scr_b, dout_b, &qkv[qkv_rows], &att[att_rows], s);
        }
    });
}

fn attention_backward_one(
    dqkv_b: &mut [f32],
    scr_b: &mut [f32],
    dout_b: &[f32],
    qkv_b: &[f32],
    att_b: &[f32],
    s: AttnShape,
) {
    let (t, c, w) = (s.t, s.q_width(), s.qkv_width());
    let hs = s.head_dim;
    let scale = 1.0 / (hs as f32).sqrt();
    for (h, (datt, att_h)) in scr_b
        .chunks_exact_mut(t * t)
        .zip(att_b.chunks_exact(t * t))
        .enumerate()
    {
        let (q_off, k_off, v_off) = head_offsets(s, h);
        let dout_h = Mat {
            data: dout_b,
            off: h * hs,
            rs: c,
            cs: 1,
        };
        let v_t = Mat {
            data: qkv_b,
            off: v_off,
            rs: 1,
            cs: w,
        };
        // datt (T,T) = dout_h (T,hs) @ v^T (hs,T)
        gemm_acc(t, t, hs, datt, 0, t, dout_h, v_t, false, 1);
        let att_t = Mat {
            data: att_h,
            off: 0,
            rs: 1,
            cs: t,
        };
        // dv (T,hs) += att^T (T,T) @ dout_h (T,hs)
        gemm_acc(t, hs, t, dqkv_b, v_off, w, att_t, dout_h, true, 1);
        softmax_backward_rows(datt, att_h, t, scale);
        let dpre = Mat {
            data: datt,
            off: 0,
            rs: t,
            cs: 1,
        };
        let dpre_t = Mat {
            data: datt,
            off: 0,
            rs: 1,
            cs: t,
        };
        let k = Mat {
            data: qkv_b,
            off: k_off,
            rs: w,
            cs: 1,
        };
        let q = Mat {
            data: qkv_b,
            off: q_off,
            rs: w,
            cs: 1,
        };
        // dq (T,hs) += dpreatt (T,T) @ k (T,hs); dk (T,hs) += dpreatt^T @ q
        gemm_acc(t, hs, t, dqkv_b, q_off, w, dpre, k, true, 1);
        gemm_acc(t, hs, t, dqkv_b, k_off, w, dpre_t, q, true, 1);
    }
}

/// Softmax backward over rows of `t`, in place: dpreatt = att * (datt - <att, datt>) * scale.
/// Masked positions have att = 0, so their gradient is 0 too.
fn softmax_backward_rows(datt: &mut [f32], att: &[f32], t: usize, scale: f32) {
    for (drow, arow) in datt.chunks_exact_mut(t).zip(att.chunks_exact(t)) {
        let dot: f32 = drow.iter().zip(arow).map(|(d, a)| d * a).sum();
        for (d, a) in drow.iter_mut().zip(arow) {
            *d = a * (*d - dot) * scale;
        }
    }
}
