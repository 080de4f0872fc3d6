//! Gradient statistics in one pass — the global squared L2 norm accumulated in f64 and "is any
//! element non-finite" — plus DeepSpeed's clip coefficient. The sum is defined over 64 fixed
//! slices of the concatenated gradients, each summed in the kernels' canonical 8-lane order and
//! added up in slice order, so the result is the same bits whatever the thread count or kernel.

use std::sync::atomic::{AtomicU64, Ordering};

use super::adam::Grad;
use super::kernels::{sum_sq_chunk, Kernel};
use crate::threads::ThreadPool;

/// Number of fixed slices the concatenated gradients are summed in (and the most threads the
/// statistics use).
const STATS_PARTS: usize = 64;

/// Below this many elements the statistics run on the calling thread only.
const PARALLEL_MIN_ELEMS: usize = 1 << 16;

/// What one pass over the gradients reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradStats {
    /// Sum of squares of every element, widened to f64 (non-finite iff `non_finite`).
    pub sum_sq: f64,
    /// Some element is +-inf or NaN: with fp16 this is DeepSpeed's "overflow" (skip the step).
    pub non_finite: bool,
}

/// Statistics of all `grads` together, with the fastest kernel on the calling thread.
/// Bit-identical to [`Adam::grad_stats`](super::Adam::grad_stats) with any thread count.
pub fn grad_stats(grads: &[Grad<'_>]) -> GradStats {
    grad_stats_with(Kernel::detect(), None, grads)
}

/// Global L2 norm from the statistics: `sqrt(sum_sq)`, non-finite when a gradient was (DeepSpeed
/// reports -1 in that case; the step is skipped anyway).
pub fn global_norm(stats: &GradStats) -> f64 {
    stats.sum_sq.sqrt()
}

/// `torch.nn.utils.clip_grad_norm_`'s coefficient as DeepSpeed's `clip_grad_norm_` computes it:
/// `max_norm / (norm + 1e-6)` when that is below 1, else 1; `max_norm <= 0` disables clipping
/// (`gradient_clipping: 0`). `norm` is the norm of the *unscaled* gradients.
pub fn clip_coef(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    let c = max_norm / (norm + 1e-6);
    if c < 1.0 {
        c
    } else {
        1.0
    }
}

/// The gradient multiplier of ZeRO stage 3's `unscale_and_clip_grads`: with `scaled_norm` the
/// norm of the loss-scaled gradients, `clip = (scaled_norm / loss_scale + 1e-6) / max_norm`,
/// `combined = loss_scale * max(clip, 1)` (clip only when `max_norm > 0`), result
/// `1 / combined`. This is `StepScalars::grad_scale`.
pub fn combined_grad_scale(scaled_norm: f64, max_norm: f64, loss_scale: f64) -> f32 {
    let mut combined = loss_scale;
    if max_norm > 0.0 {
        let clip = (scaled_norm / loss_scale + 1e-6) / max_norm;
        if clip > 1.0 {
            combined = clip * loss_scale;
        }
    }
    (1.0 / combined) as f32
}

/// Statistics with a given kernel, optionally spread over a pool.
pub(crate) fn grad_stats_with(
    kernel: Kernel,
    pool: Option<&ThreadPool>,
    grads: &[Grad<'_>],
) -> GradStats {
    let total: usize = grads.iter().map(|g| g.len()).sum();
    let parts: [AtomicU64; STATS_PARTS] = std::array::from_fn(|_| AtomicU64::new(0));
    let do_part = |p: usize| {
        let s = part_sum(kernel, grads, total, p);
        parts[p].store(s.to_bits(), Ordering::Relaxed);
    };
    match pool {
        Some(pool) if pool.threads() > 1 && total >= PARALLEL_MIN_ELEMS => {
            let threads = pool.threads().min(STATS_PARTS);
            pool.run(&|t| {
                if t < threads {
                    let (a, b) = (t * STATS_PARTS / threads, (t + 1) * STATS_PARTS / threads);
                    (a..b).for_each(do_part);
                }
            });
        }
        _ => (0..STATS_PARTS).for_each(do_part),
    }
    // `pool.run` joins every thread before returning, so these loads see every store.
    let sum_sq = parts.iter().fold(0.0f64, |acc, p| {
        acc + f64::from_bits(p.load(Ordering::Relaxed))
    });
    GradStats {
        sum_sq,
        non_finite: !sum_sq.is_finite(),
    }
}

/// Sum of squares of slice `p` of the concatenation of `grads` (`total` elements in all).
fn part_sum(kernel: Kernel, grads: &[Grad<'_>], total: usize, p: usize) -> f64 {
    let lo = (total as u128 * p as u128 / STATS_PARTS as u128) as usize;
    let hi = (total as u128 * (p as u128 + 1) / STATS_PARTS as u128) as usize;
    let mut sum = 0.0f64;
    let mut offset = 0usize;
    for g in grads {
        let (gs, ge) = (offset, offset + g.len());
        offset = ge;
        let (s, e) = (lo.max(gs), hi.min(ge));
        if s >= e {
            continue;
        }
        let r = (s - gs)..(e - gs);
        sum += match g {
            Grad::F32(x) => sum_sq_chunk(kernel, &x[r]),
            Grad::F16(x) => sum_sq_chunk(kernel, &x[r]),
            Grad::Bf16(x) => sum_sq_chunk(kernel, &x[r]),
        };
    }
    sum
}
