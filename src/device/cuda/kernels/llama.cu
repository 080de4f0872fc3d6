// Llama-family kernels, header-free CUDA C: RMSNorm (also Qwen3's per-head q/k norm), RoPE and
// SwiGLU. Each mirrors the CPU kernel of the same name in src/device/cpu/kernels.rs (same
// formulas, fp32); reductions use the fixed-order helpers of common.cu.
//
// RMSNorm rows are addressed generally so that one kernel serves both uses: row r of `rows` is
// head r % hpt of token r / hpt, its `c` elements start at token * stride + col0 + head * c,
// and its rstd lives at token * rstd_stride + rstd_off + head. A plain RMSNorm over (N,C) is
// hpt = 1, stride = c, col0 = 0, rstd_stride = 1, rstd_off = 0.

__device__ long long rms_at(int r, int hpt, int c, int stride, int col0) {
    return (long long)(r / hpt) * stride + col0 + (long long)(r % hpt) * c;
}

__device__ long long rstd_at(int r, int hpt, int rstd_stride, int rstd_off) {
    return (long long)(r / hpt) * rstd_stride + rstd_off + r % hpt;
}

// out = inp * rstd * w, rstd = 1/sqrt(mean(inp^2) + eps) (transformers' LlamaRMSNorm in
// fp32). One block a row.
extern "C" __global__ void rmsnorm_forward(float* out, float* rstd, const float* inp,
                                           const float* w, int rows, int c, float eps, int hpt,
                                           int stride, int col0, int rstd_stride,
                                           int rstd_off) {
    int r = blockIdx.x;
    if (r >= rows) return;
    long long base = rms_at(r, hpt, c, stride, col0);
    const float* x = inp + base;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) acc += x[i] * x[i];
    float ms = block_sum(acc) / (float)c;
    float s = 1.0f / sqrtf(ms + eps);
    float* o = out + base;
    for (int i = threadIdx.x; i < c; i += blockDim.x) o[i] = x[i] * s * w[i];
    if (threadIdx.x == 0) rstd[rstd_at(r, hpt, rstd_stride, rstd_off)] = s;
}

// dinp += s w g - s^3 x mean(w g x). One block a row.
extern "C" __global__ void rmsnorm_backward_input(float* dinp, const float* dout,
                                                  const float* inp, const float* w,
                                                  const float* rstd, int rows, int c, int hpt,
                                                  int stride, int col0, int rstd_stride,
                                                  int rstd_off) {
    int r = blockIdx.x;
    if (r >= rows) return;
    long long base = rms_at(r, hpt, c, stride, col0);
    float acc = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) acc += w[i] * dout[base + i] * inp[base + i];
    float dot = block_sum(acc);
    float s = rstd[rstd_at(r, hpt, rstd_stride, rstd_off)];
    float k = s * s * s * dot / (float)c;
    for (int i = threadIdx.x; i < c; i += blockDim.x)
        dinp[base + i] += s * w[i] * dout[base + i] - k * inp[base + i];
}

// The first half of the RMSNorm weight gradient: pdw[chunk, col] = sum of inp rstd dout over
// the CHUNK_ROWS rows of chunk blockIdx.x, rows in order (colsum_finish adds the chunks).
extern "C" __global__ void rmsnorm_weight_partial(float* pdw, const float* dout,
                                                  const float* inp, const float* rstd, int rows,
                                                  int c, int hpt, int stride, int col0,
                                                  int rstd_stride, int rstd_off) {
    int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= c) return;
    int r0 = blockIdx.x * CHUNK_ROWS, r1 = min(rows, r0 + CHUNK_ROWS);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) {
        long long at = rms_at(r, hpt, c, stride, col0) + col;
        acc += inp[at] * rstd[rstd_at(r, hpt, rstd_stride, rstd_off)] * dout[at];
    }
    pdw[(long long)blockIdx.x * c + col] = acc;
}

// RoPE in place on the q and k heads of qkv (B*T rows of width w; rotated = (nh + nkv) heads
// of hd), position = row % t. table: cos (P, hd/2) then sin (P, hd/2). transpose != 0: the
// backward. One thread per (row, head, pair).
extern "C" __global__ void rope(float* qkv, const float* table, int rows, int t, int w,
                                int heads, int hd, int positions, int transpose) {
    int half = hd / 2;
    long long id = global_id();
    long long total = (long long)rows * heads * half;
    if (id >= total) return;
    int j = (int)(id % half);
    int h = (int)((id / half) % heads);
    long long row = id / ((long long)half * heads);
    int pos = (int)(row % t);
    float c = table[(long long)pos * half + j];
    float s = table[(long long)positions * half + (long long)pos * half + j];
    float* x = qkv + row * w + (long long)h * hd;
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
    long long id = global_id();
    if (id >= (long long)n * i) return;
    long long row = id / i, j = id % i;
    float g = inp[row * 2 * i + j], u = inp[row * 2 * i + i + j];
    out[id] = g * sigmoidf(g) * u;
}

// dout (N, I) -> dinp (N, 2I) += [dout u sig(g)(1 + g(1 - sig(g))) | dout silu(g)].
extern "C" __global__ void swiglu_backward(float* dinp, const float* inp, const float* dout,
                                           int n, int i) {
    long long id = global_id();
    if (id >= (long long)n * i) return;
    long long row = id / i, j = id % i;
    float g = inp[row * 2 * i + j], u = inp[row * 2 * i + i + j];
    float sg = sigmoidf(g);
    dinp[row * 2 * i + j] += dout[id] * u * sg * (1.0f + g * (1.0f - sg));
    dinp[row * 2 * i + i + j] += dout[id] * g * sg;
}
