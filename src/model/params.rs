//! Host-side parameter storage in fp32, fp16 or bf16, and GPT-2 initialisation.
//!
//! Initialisation follows Hugging Face's `GPT2PreTrainedModel._init_weights`: weights and
//! embeddings N(0, 0.02), biases 0, LayerNorm weight 1, and the two residual projections
//! (`attn.c_proj.weight`, `mlp.c_proj.weight`) N(0, 0.02/sqrt(2*n_layer)). Draws come from
//! ChaCha8 seeded by the caller, in layout order, so the same seed gives the same model.

use super::layout::ParamLayout;
use crate::device::HostSlice;
use half::{bf16, f16};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// Storage type of parameters outside the optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamDtype {
    F32,
    F16,
    Bf16,
}

impl ParamDtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            ParamDtype::F32 => 4,
            ParamDtype::F16 | ParamDtype::Bf16 => 2,
        }
    }
}

/// A flat parameter array in one dtype, laid out by [`super::param_layout`].
#[derive(Clone, Debug, PartialEq)]
pub enum HostParams {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl HostParams {
    /// Rounds fp32 values to `dtype` (round to nearest even).
    pub fn from_f32(dtype: ParamDtype, values: &[f32]) -> Self {
        match dtype {
            ParamDtype::F32 => HostParams::F32(values.to_vec()),
            ParamDtype::F16 => HostParams::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            ParamDtype::Bf16 => {
                HostParams::Bf16(values.iter().map(|&x| bf16::from_f32(x)).collect())
            }
        }
    }

    /// `len` zeros in `dtype`, without an fp32 array on the way (a host tier of a large model).
    pub fn zeros(dtype: ParamDtype, len: usize) -> Self {
        match dtype {
            ParamDtype::F32 => HostParams::F32(vec![0.0; len]),
            ParamDtype::F16 => HostParams::F16(vec![f16::ZERO; len]),
            ParamDtype::Bf16 => HostParams::Bf16(vec![bf16::ZERO; len]),
        }
    }

    /// The storage dtype.
    pub fn dtype(&self) -> ParamDtype {
        match self {
            HostParams::F32(_) => ParamDtype::F32,
            HostParams::F16(_) => ParamDtype::F16,
            HostParams::Bf16(_) => ParamDtype::Bf16,
        }
    }

    /// Element count.
    pub fn len(&self) -> usize {
        self.full().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn full(&self) -> HostSlice<'_> {
        match self {
            HostParams::F32(v) => HostSlice::F32(v),
            HostParams::F16(v) => HostSlice::F16(v),
            HostParams::Bf16(v) => HostSlice::Bf16(v),
        }
    }

    /// A sub-range, ready to upload.
    pub fn slice(&self, r: Range<usize>) -> HostSlice<'_> {
        match self {
            HostParams::F32(v) => HostSlice::F32(&v[r]),
            HostParams::F16(v) => HostSlice::F16(&v[r]),
            HostParams::Bf16(v) => HostSlice::Bf16(&v[r]),
        }
    }

    /// Values of range `r` widened to fp32.
    pub fn range_to_f32(&self, r: Range<usize>) -> Vec<f32> {
        match self {
            HostParams::F32(v) => v[r].to_vec(),
            HostParams::F16(v) => v[r].iter().map(|x| x.to_f32()).collect(),
            HostParams::Bf16(v) => v[r].iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Copies all of `src` (same dtype) to `self[start..]`.
    pub fn copy_range_from(&mut self, start: usize, src: &HostParams) {
        match (self, src) {
            (HostParams::F32(d), HostParams::F32(s)) => {
                d[start..start + s.len()].copy_from_slice(s)
            }
            (HostParams::F16(d), HostParams::F16(s)) => {
                d[start..start + s.len()].copy_from_slice(s)
            }
            (HostParams::Bf16(d), HostParams::Bf16(s)) => {
                d[start..start + s.len()].copy_from_slice(s)
            }
            _ => panic!("copy_range_from: dtypes differ"),
        }
    }

    /// The bytes of range `r` (native-endian), as the swap store keeps them.
    pub fn range_bytes(&self, r: Range<usize>) -> &[u8] {
        match self {
            HostParams::F32(v) => bytemuck::cast_slice(&v[r]),
            HostParams::F16(v) => bytemuck::cast_slice(&v[r]),
            HostParams::Bf16(v) => bytemuck::cast_slice(&v[r]),
        }
    }

    /// Overwrites range `r` from native-endian bytes (exactly its length).
    pub fn set_range_bytes(&mut self, start: usize, bytes: &[u8]) {
        match self {
            HostParams::F32(v) => fill_from_bytes(&mut v[start..], bytes),
            HostParams::F16(v) => fill_from_bytes(&mut v[start..], bytes),
            HostParams::Bf16(v) => fill_from_bytes(&mut v[start..], bytes),
        }
    }

    /// All values widened to fp32 (the optimizer's master copy starts from this).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            HostParams::F32(v) => v.clone(),
            HostParams::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostParams::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Overwrites every value from fp32 (the optimizer's copy-out), rounding to the dtype.
    pub fn copy_from_f32(&mut self, values: &[f32]) {
        assert_eq!(values.len(), self.len(), "copy_from_f32: length mismatch");
        match self {
            HostParams::F32(v) => v.copy_from_slice(values),
            HostParams::F16(v) => v
                .iter_mut()
                .zip(values)
                .for_each(|(d, &s)| *d = f16::from_f32(s)),
            HostParams::Bf16(v) => v
                .iter_mut()
                .zip(values)
                .for_each(|(d, &s)| *d = bf16::from_f32(s)),
        }
    }
}

fn fill_from_bytes<T: bytemuck::Pod>(dst: &mut [T], bytes: &[u8]) {
    let n = bytes.len() / std::mem::size_of::<T>();
    let d: &mut [u8] = bytemuck::cast_slice_mut(&mut dst[..n]);
    d.copy_from_slice(bytes);
}

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
