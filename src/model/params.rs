//! Host-side parameter storage in fp32, fp16 or bf16, and GPT-2 initialisation.
//!
//! Initialisation follows Hugging Face's `GPT2PreTrainedModel._init_weights`: weights and
//! embeddings N(0, 0.02), biases 0, LayerNorm weight 1, and the two residual projections
//! (`attn.c_proj.weight`, `mlp.c_proj.weight`) N(0, 0.02/sqrt(2*n_layer)). Draws come from
//! ChaCha8 seeded by the caller, in layout order, so the same seed gives the same model.

use super::layout::ParamLayout;
pub use crate::host::{HostParams, ParamDtype};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// One N(0,1) draw by Box-Muller from two uniforms.
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// GPT-2 initial parameters in fp32, laid out by `layout`, from `seed`.
pub fn init_params(layout: &ParamLayout, n_layer: usize, seed: u64) -> Vec<f32> {
    let mut init = ParamInit::new(n_layer, seed);
    init.next_range(layout, 0..layout.total)
}

/// The initialisation as a stream: ranges asked for in layout order (one group at a time, so a
/// model larger than RAM can be initialised straight into its tier) give exactly the values of
/// [`init_params`].
pub struct ParamInit {
    rng: ChaCha8Rng,
    proj_std: f32,
    next: usize,
}

impl ParamInit {
    pub fn new(n_layer: usize, seed: u64) -> Self {
        ParamInit {
            rng: ChaCha8Rng::seed_from_u64(seed),
            proj_std: 0.02 / (2.0 * n_layer as f32).sqrt(),
            next: 0,
        }
    }

    /// Values of `r`, which must start where the previous range ended and hold whole tensors.
    pub fn next_range(&mut self, layout: &ParamLayout, r: Range<usize>) -> Vec<f32> {
        assert_eq!(
            r.start, self.next,
            "ParamInit: ranges must come in layout order"
        );
        self.next = r.end;
        let mut out = vec![0.0f32; r.len()];
        for t in layout.tensors.iter().filter(|t| r.contains(&t.offset)) {
            let tr = t.range();
            assert!(tr.end <= r.end, "ParamInit: {} straddles the range", t.name);
            let dst = &mut out[tr.start - r.start..tr.end - r.start];
            let n = t.name.as_str();
            if n.ends_with(".bias") {
                continue; // zeros
            } else if n.starts_with("ln_f") || n.contains(".ln_") {
                dst.fill(1.0);
            } else {
                let std = if n.ends_with("c_proj.weight") {
                    self.proj_std
                } else {
                    0.02
                };
                let rng = &mut self.rng;
                dst.iter_mut().for_each(|x| *x = normal(rng) * std);
            }
        }
        out
    }
}
