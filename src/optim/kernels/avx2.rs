//! AVX2 + FMA + F16C kernels: 8 f32 lanes per iteration, the scalar reference's operations in
//! its order (`_mm256_fmadd_ps(a, b, c)` is `a.mul_add(b, c)`), tails through the reference's own
//! per-element function. Not a separate algorithm: any change here must be a change in
//! `scalar.rs` first.

use std::arch::x86_64::*;

use super::scalar::{self, combine_lanes};
use super::{GradElem, GradKind, OutElem, OutKind, StepConsts, DECAY_ADAMW, DECAY_L2, DECAY_NONE};

/// Loads 8 gradient elements widened to f32.
///
/// # Safety
/// `p` must be valid for reading 8 elements; the CPU must support AVX2 and F16C.
#[inline(always)]
unsafe fn load8<G: GradElem>(p: *const G) -> __m256 {
    match G::KIND {
        GradKind::F32 => _mm256_loadu_ps(p as *const f32),
        GradKind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        GradKind::Bf16 => {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
        }
    }
}

/// f32 -> bf16 for 8 lanes, the integer round-to-nearest-even of `scalar::f32_to_bf16_bits`,
/// returned in the low 128 bits.
#[inline(always)]
unsafe fn bf16x8(x: __m256) -> __m128i {
    let b = _mm256_castps_si256(x);
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
    let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb);
    let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(b, bias));
    let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(0x40));
    let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
    let r = _mm256_blendv_epi8(rounded, quiet, is_nan);
    // packus works per 128-bit half: [r0..3 r0..3 | r4..7 r4..7]; keep qwords 0 and 2.
    let packed = _mm256_packus_epi32(r, r);
    _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b00_00_10_00>(packed))
}

/// Stores 8 parameters narrowed to the copy-out dtype (nothing for `NoOut`).
///
/// # Safety
/// `p` must be valid for writing 8 elements; the CPU must support AVX2 and F16C.
#[inline(always)]
unsafe fn store8<O: OutElem>(p: *mut O, x: __m256) {
    match O::KIND {
        OutKind::None => {}
        OutKind::F16 => _mm_storeu_si128(
            p as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x),
        ),
        OutKind::Bf16 => _mm_storeu_si128(p as *mut __m128i, bf16x8(x)),
    }
}

/// Adam over one chunk, 8 lanes at a time; see `scalar::update_one` for the operation order.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; all slices must have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn adam_d<G: GradElem, O: OutElem, const D: u8>(
    c: &StepConsts,
    master: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grad: &[G],
    out: &mut [O],
) {
    let n = master.len();
    let (b1, b2) = (_mm256_set1_ps(c.beta1), _mm256_set1_ps(c.beta2));
    let (omb1, omb2) = (
        _mm256_set1_ps(c.one_minus_beta1),
        _mm256_set1_ps(c.one_minus_beta2),
    );
    let step_size = _mm256_set1_ps(c.step_size);
    let bc2 = _mm256_set1_ps(c.bias_correction2);
    let eps = _mm256_set1_ps(c.eps);
    let wd = _mm256_set1_ps(c.weight_decay);
    let adamw_decay = _mm256_set1_ps(c.adamw_decay);
    let gs = _mm256_set1_ps(c.grad_scale);
    let (pp, mp, vp) = (master.as_mut_ptr(), m.as_mut_ptr(), v.as_mut_ptr());
    let (gp, op) = (grad.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let mut g = _mm256_mul_ps(load8(gp.add(i)), gs);
        let mut p = _mm256_loadu_ps(pp.add(i));
        if D == DECAY_L2 {
            g = _mm256_fmadd_ps(p, wd, g);
        }
        let mo = _mm256_fmadd_ps(g, omb1, _mm256_mul_ps(_mm256_loadu_ps(mp.add(i)), b1));
        let vo = _mm256_fmadd_ps(
            _mm256_mul_ps(g, g),
            omb2,
            _mm256_mul_ps(_mm256_loadu_ps(vp.add(i)), b2),
        );
        let u = _mm256_div_ps(mo, _mm256_fmadd_ps(_mm256_sqrt_ps(vo), bc2, eps));
        if D == DECAY_ADAMW {
            p = _mm256_fmadd_ps(p, adamw_decay, p);
        }
        p = _mm256_fmadd_ps(u, step_size, p);
        _mm256_storeu_ps(pp.add(i), p);
        _mm256_storeu_ps(mp.add(i), mo);
        _mm256_storeu_ps(vp.add(i), vo);
        store8(op.add(i), p);
        i += 8;
    }
    scalar::adam_range::<G, O, D>(c, master, m, v, grad, out, i);
}

/// Adam over one chunk with the AVX2 path.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; all slices must have the same length.
pub(crate) unsafe fn adam<G: GradElem, O: OutElem>(
    c: &StepConsts,
    master: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grad: &[G],
    out: &mut [O],
) {
    match c.decay_mode {
        DECAY_L2 => adam_d::<G, O, DECAY_L2>(c, master, m, v, grad, out),
        DECAY_ADAMW => adam_d::<G, O, DECAY_ADAMW>(c, master, m, v, grad, out),
        _ => adam_d::<G, O, DECAY_NONE>(c, master, m, v, grad, out),
    }
}

/// Sum of squares in the canonical 8-lane order of `scalar::sum_sq`: lanes 0..4 in `lo`,
/// 4..8 in `hi`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn sum_sq<G: GradElem>(grad: &[G]) -> f64 {
    let n = grad.len();
    let gp = grad.as_ptr();
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut i = 0;
    while i + 8 <= n {
        let x = load8(gp.add(i));
        let xl = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
        let xh = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x));
        // x*x is exact in f64, so the fused form rounds exactly like `acc += x * x`.
        lo = _mm256_fmadd_pd(xl, xl, lo);
        hi = _mm256_fmadd_pd(xh, xh, hi);
        i += 8;
    }
    let mut acc = [0f64; 8];
    _mm256_storeu_pd(acc.as_mut_ptr(), lo);
    _mm256_storeu_pd(acc.as_mut_ptr().add(4), hi);
    for (a, x) in acc.iter_mut().zip(&grad[i..]) {
        let x = x.to_f32() as f64;
        *a += x * x;
    }
    combine_lanes(&acc)
}
