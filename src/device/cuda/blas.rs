//! Matrix products on the GPU through cuBLAS, in row-major terms, and the one place their
//! precision is chosen ([`MatmulPrecision`]).
//!
//! cuBLAS is column-major: a row-major `C (m,n) = op(A) (m,k) op(B) (k,n)` is the
//! column-major `C^T = op(B)^T op(A)^T`, so [`Blas::gemm`] swaps the operands and passes the
//! dimensions as `(n, m, k)`; a row-major matrix with row stride `ld` is a column-major one of
//! leading dimension `ld`, transposed, so each operand's transpose flag carries over unchanged.
//! Every product is `cublasGemmStridedBatchedEx` with fp32 storage and fp32 accumulation; one
//! stream and one handle make it bit-reproducible on one GPU (cuBLAS' reproducibility note).

use std::sync::Arc;

use cudarc::cublas::{result as cublas, sys, CudaBlas};
use cudarc::driver::CudaStream;

use crate::device::DeviceError;
use crate::host::ParamDtype;

/// How the GPU multiplies fp32 matrices: exactly in fp32 (TF32 off: the CPU backend's
/// arithmetic, for parity), or with operands rounded to 16 bits and fp32 accumulation (tensor
/// cores; what `torch.autocast` gives a matmul). Chosen from the config's `bf16`/`fp16`
/// sections by [`MatmulPrecision::for_dtype`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPrecision {
    Fp32,
    Bf16,
    Fp16,
}

impl MatmulPrecision {
    /// The precision of a run whose parameters are stored as `dtype` (DeepSpeed's `bf16` or
    /// `fp16` enabled -> 16-bit products; otherwise fp32).
    pub fn for_dtype(dtype: ParamDtype) -> Self {
        match dtype {
            ParamDtype::F32 => MatmulPrecision::Fp32,
            ParamDtype::Bf16 => MatmulPrecision::Bf16,
            ParamDtype::F16 => MatmulPrecision::Fp16,
        }
    }

    /// Name in logs and the device name.
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::Fp32 => "fp32 matmuls",
            MatmulPrecision::Bf16 => "bf16 matmuls, fp32 accumulation",
            MatmulPrecision::Fp16 => "fp16 matmuls, fp32 accumulation",
        }
    }

    fn compute_type(self) -> sys::cublasComputeType_t {
        match self {
            MatmulPrecision::Fp32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            MatmulPrecision::Bf16 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
            MatmulPrecision::Fp16 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16F,
        }
    }
}

/// A row-major fp32 matrix operand in device memory: its address, row stride (elements),
/// the distance between consecutive matrices of a batch (elements), and whether the product
/// reads it transposed.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub ptr: u64,
    pub ld: usize,
    pub stride: usize,
    pub trans: bool,
}

impl Mat {
    /// A matrix whose rows are `ld` elements apart, read as stored.
    pub fn rows(ptr: u64, ld: usize) -> Self {
        Mat {
            ptr,
            ld,
            stride: 0,
            trans: false,
        }
    }

    /// The same matrix read transposed.
    pub fn t(self) -> Self {
        Mat {
            trans: !self.trans,
            ..self
        }
    }

    /// The same matrix as the first of a batch, `stride` elements apart.
    pub fn batch(self, stride: usize) -> Self {
        Mat { stride, ..self }
    }

    fn op(self) -> sys::cublasOperation_t {
        if self.trans {
            sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            sys::cublasOperation_t::CUBLAS_OP_N
        }
    }
}

/// A cuBLAS handle on the device's stream, with its precision.
pub struct Blas {
    handle: CudaBlas,
    stream: Arc<CudaStream>,
    precision: MatmulPrecision,
}

impl Blas {
    /// A handle on `stream`: default math mode (no TF32 unless the precision asks for 16-bit
    /// products).
    ///
    /// # Errors
    /// cuBLAS (`libcublas.so.13`, `libcublasLt.so.13`) is not on the loader path, or the
    /// handle cannot be created.
    pub fn new(stream: Arc<CudaStream>, precision: MatmulPrecision) -> Result<Self, DeviceError> {
        // SAFETY: only probes whether the libraries load; no cuBLAS function is called.
        let present = unsafe {
            cudarc::cublas::sys::is_culib_present() && cudarc::cublaslt::sys::is_culib_present()
        };
        if !present {
            return Err(DeviceError::Backend(
                "cuBLAS (libcublas.so.13 and libcublasLt.so.13) not found: install the CUDA 13 \
                 libraries (the nvidia-cublas wheel, or the toolkit's lib64) and put them on \
                 LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let handle = CudaBlas::new(stream.clone())
            .map_err(|e| DeviceError::Backend(format!("cuBLAS: {e:?}")))?;
        // SAFETY: the handle was just created; setting its math mode has no other effect.
        unsafe { sys::cublasSetMathMode(*handle.handle(), sys::cublasMath_t::CUBLAS_DEFAULT_MATH) }
            .result()
            .map_err(|e| DeviceError::Backend(format!("cublasSetMathMode: {e:?}")))?;
        Ok(Blas {
            handle,
            stream,
            precision,
        })
    }

    /// `c = op(a) op(b) + beta c` for `batch` matrices in row-major terms: `op(a)` is (m,k),
    /// `op(b)` (k,n), `c` (m,n); `beta` 0 overwrites, 1 accumulates.
    ///
    /// # Errors
    /// A dimension beyond cuBLAS' 32-bit ints, or cuBLAS' status.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: Mat,
        b: Mat,
        c: Mat,
        beta: f32,
        batch: usize,
    ) -> Result<(), DeviceError> {
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let int = |v: usize| {
            i32::try_from(v)
                .map_err(|_| DeviceError::Backend(format!("gemm: {v} does not fit cuBLAS' int")))
        };
        let long = |v: usize| {
            i64::try_from(v)
                .map_err(|_| DeviceError::Backend(format!("gemm: {v} does not fit cuBLAS' int64")))
        };
        // cuBLAS runs in the calling thread's current context.
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| DeviceError::Backend(format!("cuCtxSetCurrent: {e:?}")))?;
        let alpha = 1.0f32;
        let f32_type = sys::cudaDataType::CUDA_R_32F;
        // SAFETY: the caller passes addresses of live device buffers whose extents cover
        // `batch` matrices of the given shapes, strides and leading dimensions (the Device
        // ops check their buffers' lengths first); alpha and beta live across the call.
        unsafe {
            cublas::gemm_strided_batched_ex(
                *self.handle.handle(),
                b.op(),
                a.op(),
                int(n)?,
                int(m)?,
                int(k)?,
                (&alpha) as *const f32 as *const _,
                b.ptr as *const _,
                f32_type,
                int(b.ld)?,
                long(b.stride)?,
                a.ptr as *const _,
                f32_type,
                int(a.ld)?,
                long(a.stride)?,
                (&beta) as *const f32 as *const _,
                c.ptr as *mut _,
                f32_type,
                int(c.ld)?,
                long(c.stride)?,
                int(batch)?,
                self.precision.compute_type(),
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| DeviceError::Backend(format!("cublasGemmStridedBatchedEx: {e:?}")))
    }
}
