// Helpers every kernel file uses, header-free CUDA C. kernels.rs compiles this file followed
// by the others as one NVRTC program, so each file may call what is defined here.
//
// Determinism: every reduction below runs in a fixed order that depends only on the block
// size, never on scheduling (no float atomics), so a kernel's result is the same bit for bit
// on every launch on the same GPU.

// Threads of the row kernels (one block a row). A multiple of 32, at most 1024.
#define ROW_THREADS 256
// Threads of the element-wise kernels.
#define ELEM_THREADS 256
// Rows one block of a column reduction sums (the partial-sum chunk, see colsum_finish).
#define CHUNK_ROWS 64
// -inf, header-free (no math.h INFINITY).
#define NEG_INF __int_as_float(0xff800000)

// Sum of `v` over the block: a butterfly inside each warp (every lane ends with the same
// value, as IEEE addition commutes), then the same butterfly over the warps' sums. Every
// thread of the block must call it; every thread gets the sum.
__device__ float block_sum(float v) {
    __shared__ float warp_part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    float r = lane < warps ? warp_part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
    __syncthreads();
    return r;
}

// Maximum of `v` over the block; same pattern as block_sum.
__device__ float block_max(float v) {
    __shared__ float warp_part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    float r = lane < warps ? warp_part[lane] : NEG_INF;
    for (int o = 16; o > 0; o >>= 1) r = fmaxf(r, __shfl_xor_sync(0xffffffffu, r, o));
    __syncthreads();
    return r;
}

// The global index of this thread in a 1-D launch.
__device__ long long global_id() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }

// dst (C) += sum over chunks of partial (chunks, C), chunks in order. The second half of every
// column reduction (bias, LayerNorm and RMSNorm parameter gradients): the first half writes
// one row of `partial` per CHUNK_ROWS rows of input, summed in row order.
extern "C" __global__ void colsum_finish(float* dst, const float* partial, int chunks, int c) {
    long long col = global_id();
    if (col >= c) return;
    float acc = 0.0f;
    for (int k = 0; k < chunks; k++) acc += partial[(long long)k * c + col];
    dst[col] += acc;
}

// Half precision to fp32 (uploads of fp16/bf16 parameters: the home copy stays 16-bit).
extern "C" __global__ void widen_bf16(float* dst, const unsigned short* src, long long n) {
    long long i = global_id();
    if (i < n) dst[i] = __uint_as_float(((unsigned int)src[i]) << 16);
}

extern "C" __global__ void widen_f16(float* dst, const unsigned short* src, long long n) {
    long long i = global_id();
    if (i >= n) return;
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(src[i]));
    dst[i] = f;
}

// dst += src (gradient accumulation, residual backward).
extern "C" __global__ void add_assign(float* dst, const float* src, long long n) {
    long long i = global_id();
    if (i < n) dst[i] += src[i];
}

// out = a + b (residual forward).
extern "C" __global__ void residual_forward(float* out, const float* a, const float* b,
                                            long long n) {
    long long i = global_id();
    if (i < n) out[i] = a[i] + b[i];
}

// dst[r, col0 + j] (+)= src[r, col0 + j] for j < cols, rows of width w (the values' part of a
// packed qkv row, which Qwen3's q/k norm passes through). accumulate != 0 adds.
extern "C" __global__ void copy_cols(float* dst, const float* src, int rows, int w, int col0,
                                     int cols, int accumulate) {
    long long id = global_id();
    if (id >= (long long)rows * cols) return;
    long long at = (id / cols) * w + col0 + id % cols;
    dst[at] = accumulate ? dst[at] + src[at] : src[at];
}
