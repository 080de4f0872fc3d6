// Llama-family element-wise and row kernels, header-free CUDA C (compiled by NVRTC when the
// device opens, for its own sm_XY). Each mirrors the CPU kernel of the same name in
// src/device/cpu/kernels.rs: same formulas, one thread block per row where a row reduces, the
// reduction in a fixed order (a block-wide tree over a fixed thread count), so a result never
// depends on scheduling. Shapes as in src/device/mod.rs.

#define BLOCK 256

// Sum of `v` over the block (BLOCK threads), the same tree every launch.
__device__ float block_sum(float v, float* shared) {
    int t = threadIdx.x;
    shared[t] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (t < s) shared[t] += shared[t + s];
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

// inp (N,C) -> out (N,C) = inp * rstd * w, rstd (N) = 1/sqrt(mean(inp^2) + eps). One block a row.
extern "C" __global__ void rmsnorm_forward(float* out, float* rstd, const float* inp,
                                           const float* w, int n, int c, float eps) {
    __shared__ float shared[BLOCK];
    int row = blockIdx.x;
    if (row >= n) return;
    const float* x = inp + (long long)row * c;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < c; i += BLOCK) acc += x[i] * x[i];
    float ms = block_sum(acc, shared) / (float)c;
    float s = rsqrtf(ms + eps);
    float* o = out + (long long)row * c;
    for (int i = threadIdx.x; i < c; i += BLOCK) o[i] = x[i] * s * w[i];
    if (threadIdx.x == 0) rstd[row] = s;
}

// dout (N,C) -> dinp (N,C) += s w g - s^3 x mean(w g x). One block a row. (The weight
// gradient is rmsnorm_weight_grad, a column reduction in row order.)
extern "C" __global__ void rmsnorm_backward_input(float* dinp, const float* dout, const float* inp,
                                                  const float* w, const float* rstd, int n, int c) {
    __shared__ float shared[BLOCK];
    int row = blockIdx.x;
    if (row >= n) return;
    long long base = (long long)row * c;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < c; i += BLOCK) acc += w[i] * dout[base + i] * inp[base + i];
    float dot = block_sum(acc, shared);
    float s = rstd[row];
    float k = s * s * s * dot / (float)c;
    for (int i = threadIdx.x; i < c; i += BLOCK)
        dinp[base + i] += s * w[i] * dout[base + i] - k * inp[base + i];
}

// dw (C) += sum over rows of dout * inp * rstd; one thread a column, rows in order.
extern "C" __global__ void rmsnorm_weight_grad(float* dw, const float* dout, const float* inp,
                                               const float* rstd, int n, int c) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    float acc = dw[col];
    for (int r = 0; r < n; r++) {
        long long at = (long long)r * c + col;
        acc += inp[at] * rstd[r] * dout[at];
    }
    dw[col] = acc;
}

// RoPE in place on the q and k heads of qkv (B*T rows of width w; rotated = (nh + nkv) heads
// of hd), position = row % t. table: cos (P, hd/2) then sin (P, hd/2). transpose != 0: the
// backward. One thread per (row, head, pair).
extern "C" __global__ void rope(float* qkv, const float* table, int rows, int t, int w,
                                int heads, int hd, int positions, int transpose) {
    int half = hd / 2;
    long long id = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)rows * heads * half;
    if (id >= total) return;
    int j = (int)(id % half);
    int h = (int)((id / half) % heads);
    int row = (int)(id / ((long long)half * heads));
    int pos = row % t;
    float c = table[pos * half + j];
    float s = table[positions * half + pos * half + j];
    float* x = qkv + (long long)row * w + h * hd;
    float a = x[j], b = x[j + half];
    if (transpose) {
        x[j] = a * c + b * s;
        x[j + half] = b * c - a * s;
    } else {
        x[j] = a * c - b * s;
        x[j + half] = b * c + a * s;
    }
}

__device__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// inp (N, 2I) rows [gate | up] -> out (N, I) = silu(gate) * up.
extern "C" __global__ void swiglu_forward(float* out, const float* inp, int n, int i) {
    long long id = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= (long long)n * i) return;
    long long row = id / i, j = id % i;
    float g = inp[row * 2 * i + j], u = inp[row * 2 * i + i + j];
    out[id] = g * sigmoidf(g) * u;
}

// dout (N, I) -> dinp (N, 2I) += [dout u sig(g)(1 + g(1 - sig(g))) | dout silu(g)].
extern "C" __global__ void swiglu_backward(float* dinp, const float* inp, const float* dout,
                                           int n, int i) {
    long long id = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= (long long)n * i) return;
    long long row = id / i, j = id % i;
    float g = inp[row * 2 * i + j], u = inp[row * 2 * i + i + j];
    float sg = sigmoidf(g);
    dinp[row * 2 * i + j] += dout[id] * u * sg * (1.0f + g * (1.0f - sg));
    dinp[row * 2 * i + i + j] += dout[id] * g * sg;
}
