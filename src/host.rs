//! Host arrays of parameter values in their storage dtype (fp32, fp16, bf16): the flat
//! parameter array a host tier keeps ([`HostParams`]) and the borrowed view handed to a
//! device upload ([`HostSlice`]), which widens 16-bit values to the fp32 working copy.
//!
//! A leaf module: the device backends, the model, the tiers and checkpoints all use it; it
//! uses none of them.

use half::{bf16, f16};
use std::ops::Range;

/// A host slice handed to [`Device::upload`]; half-precision sources are widened to fp32 on
/// the device, which is how parameters stored in fp16/bf16 become an fp32 working copy.
#[derive(Clone, Copy, Debug)]
pub enum HostSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl HostSlice<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostSlice::F32(s) => s.len(),
            HostSlice::F16(s) => s.len(),
            HostSlice::Bf16(s) => s.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements' bytes (native-endian), as the swap store and
    /// [`HostParams::set_range_bytes`] take them.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostSlice::F32(s) => bytemuck::cast_slice(s),
            HostSlice::F16(s) => bytemuck::cast_slice(s),
            HostSlice::Bf16(s) => bytemuck::cast_slice(s),
        }
    }
}

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
