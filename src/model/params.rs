//! Host-side parameter storage in fp32, fp16 or bf16, and GPT-2 initialisation.
//!
//! Initialisation follows Hugging Face's `GPT2PreTrainedModel._init_weights`: weights and
//! embeddings N(0, 0.02), biases 0, LayerNorm weight 1, and the two residual projections
//! (`attn.c_proj.weight`, `mlp.c_proj.weight`) N(0, 0.02/sqrt(2*n_layer)). Draws come from
//! ChaCha8 seeded by the caller, in layout order, so the same seed gives the same model.

use super::layout::{ParamLayout, TensorSpec};
pub use crate::host::{HostParams, ParamDtype};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// One N(0,1) draw by Box-Muller from two uniforms.
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// GPT-2 initial parameters in fp32, laid out by `layout`, from `seed`.
pub fn init_params(layout: &ParamLayout, n_layer: usize, seed: u64) -> Vec<f32> {
    let mut init = ParamInit::new(n_layer, seed);
    init.next_range(layout, 0..layout.total)
}

/// How one tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    Zeros,
    Ones,
    /// N(0, std²), drawn from the stream's generator.
    Normal(f32),
}

/// A seeded initialisation as a stream over a tensor list: ranges asked for in layout order
/// (whole tensors, one group at a time, so a model larger than RAM is initialised straight
/// into its tier), each tensor filled by a model's rule; only `Normal` tensors draw, in tensor
/// order, so the same seed gives the same model whatever the ranges asked for.
pub struct SeededInit {
    rng: ChaCha8Rng,
    next: usize,
}

impl SeededInit {
    pub fn new(seed: u64) -> Self {
        SeededInit {
            rng: ChaCha8Rng::seed_from_u64(seed),
            next: 0,
        }
    }

    /// Values of `r`, which must start where the previous range ended and hold whole tensors
    /// of `tensors`, each filled as `rule` says.
    pub fn next_range(
        &mut self,
        tensors: &[TensorSpec],
        r: Range<usize>,
        rule: impl Fn(&TensorSpec) -> Fill,
    ) -> Vec<f32> {
        assert_eq!(
            r.start, self.next,
            "seeded init: ranges must come in layout order"
        );
        self.next = r.end;
        let mut out = vec![0.0f32; r.len()];
        for t in tensors.iter().filter(|t| r.contains(&t.offset)) {
            let tr = t.range();
            assert!(
                tr.end <= r.end,
                "seeded init: {} straddles the range",
                t.name
            );
            let dst = &mut out[tr.start - r.start..tr.end - r.start];
            match rule(t) {
                Fill::Zeros => {}
                Fill::Ones => dst.fill(1.0),
                Fill::Normal(std) => {
                    let rng = &mut self.rng;
                    dst.iter_mut().for_each(|x| *x = normal(rng) * std);
                }
            }
        }
        out
    }
}

/// GPT-2's initialisation as a stream ([`SeededInit`] with HF's rule): ranges asked for in
/// layout order give exactly the values of [`init_params`].
pub struct ParamInit {
    init: SeededInit,
    proj_std: f32,
}

impl ParamInit {
    pub fn new(n_layer: usize, seed: u64) -> Self {
        ParamInit {
            init: SeededInit::new(seed),
            proj_std: 0.02 / (2.0 * n_layer as f32).sqrt(),
        }
    }

    /// Values of `r`, which must start where the previous range ended and hold whole tensors.
    pub fn next_range(&mut self, layout: &ParamLayout, r: Range<usize>) -> Vec<f32> {
        let proj_std = self.proj_std;
        self.init.next_range(&layout.tensors, r, |t| {
            let n = t.name.as_str();
            if n.ends_with(".bias") {
                Fill::Zeros
            } else if n.starts_with("ln_f") || n.contains(".ln_") {
                Fill::Ones
            } else if n.ends_with("c_proj.weight") {
                Fill::Normal(proj_std)
            } else {
                Fill::Normal(0.02)
            }
        })
    }
}
