// GPT-2's kernels, header-free CUDA C: embedding, LayerNorm, bias, GELU, causal softmax and the
// fused softmax + cross-entropy. Each mirrors the CPU kernel of the same name in
// src/device/cpu/kernels.rs (llm.c's formulas); reductions use the fixed-order helpers of
// common.cu. Shapes as in src/device/mod.rs: N = B*T rows, C channels, V vocabulary.

// tokens (N) -> out (N,C) = wte[token] (+ wpe[row % t] when has_wpe). Tokens were checked
// against V on the host.
extern "C" __global__ void encoder_forward(float* out, const unsigned int* tokens,
                                           const float* wte, const float* wpe, int has_wpe,
                                           int n, int t, int c) {
    long long id = global_id();
    if (id >= (long long)n * c) return;
    int row = (int)(id / c), j = (int)(id % c);
    float v = wte[(long long)tokens[row] * c + j];
    if (has_wpe) v += wpe[(long long)(row % t) * c + j];
    out[id] = v;
}

// dwte[token] += dout rows, one block per distinct token: `rows` lists the rows of dout
// grouped by token (ascending row order inside a group), group g spans rows[starts[g] ..
// starts[g+1]] and belongs to uniq[g]. Each element sums its rows in order: the CPU's order.
extern "C" __global__ void encoder_backward_wte(float* dwte, const float* dout,
                                                const unsigned int* uniq, const int* starts,
                                                const int* rows, int c) {
    int g = blockIdx.x;
    long long base = (long long)uniq[g] * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float acc = dwte[base + j];
        for (int k = starts[g]; k < starts[g + 1]; k++) acc += dout[(long long)rows[k] * c + j];
        dwte[base + j] = acc;
    }
}

// dwpe (T,C) += sum over the batch of dout (B,T,C), batch items in order.
extern "C" __global__ void encoder_backward_wpe(float* dwpe, const float* dout, int b, int t,
                                                int c) {
    long long id = global_id();
    if (id >= (long long)t * c) return;
    float acc = dwpe[id];
    for (int i = 0; i < b; i++) acc += dout[(long long)i * t * c + id];
    dwpe[id] = acc;
}

// inp (N,C) -> out (N,C), mean (N), rstd (N); eps as Hugging Face's GPT-2. One block a row.
extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd,
                                             const float* inp, const float* w, const float* b,
                                             int n, int c, float eps) {
    int row = blockIdx.x;
    if (row >= n) return;
    const float* x = inp + (long long)row * c;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) acc += x[i];
    float mu = block_sum(acc) / (float)c;
    acc = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) acc += (x[i] - mu) * (x[i] - mu);
    float var = block_sum(acc) / (float)c;
    float s = 1.0f / sqrtf(var + eps);
    float* o = out + (long long)row * c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) o[i] = (x[i] - mu) * s * w[i] + b[i];
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = s;
    }
}

// dout (N,C) -> dinp (N,C) += (w g - mean(w g) - xhat mean(w g xhat)) s. One block a row.
extern "C" __global__ void layernorm_backward_input(float* dinp, const float* dout,
                                                    const float* inp, const float* w,
                                                    const float* mean, const float* rstd,
                                                    int n, int c) {
    int row = blockIdx.x;
    if (row >= n) return;
    long long base = (long long)row * c;
    float mu = mean[row], s = rstd[row];
    float a = 0.0f, bsum = 0.0f;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float dn = w[i] * dout[base + i];
        a += dn;
        bsum += dn * (inp[base + i] - mu) * s;
    }
    float dnorm_mean = block_sum(a) / (float)c;
    float dnorm_norm_mean = block_sum(bsum) / (float)c;
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        float norm = (inp[base + i] - mu) * s;
        float dn = w[i] * dout[base + i];
        dinp[base + i] += (dn - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
}

// The first half of the LayerNorm parameter gradients: for the CHUNK_ROWS rows of chunk
// blockIdx.x (columns in blockIdx.y), pdw[chunk, col] = sum (x - mu) s g, pdb[chunk, col] = sum g, rows in order.
extern "C" __global__ void layernorm_param_partial(float* pdw, float* pdb, const float* dout,
                                                   const float* inp, const float* mean,
                                                   const float* rstd, int n, int c) {
    int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= c) return;
    int r0 = blockIdx.x * CHUNK_ROWS, r1 = min(n, r0 + CHUNK_ROWS);
    float dw = 0.0f, db = 0.0f;
    for (int r = r0; r < r1; r++) {
        long long at = (long long)r * c + col;
        dw += (inp[at] - mean[r]) * rstd[r] * dout[at];
        db += dout[at];
    }
    pdw[(long long)blockIdx.x * c + col] = dw;
    pdb[(long long)blockIdx.x * c + col] = db;
}

// The first half of a bias gradient: pdb[chunk, col] = sum of dout (N,OC) over the chunk's rows.
extern "C" __global__ void bias_partial(float* pdb, const float* dout, int n, int oc) {
    int col = blockIdx.y * blockDim.x + threadIdx.x;
    if (col >= oc) return;
    int r0 = blockIdx.x * CHUNK_ROWS, r1 = min(n, r0 + CHUNK_ROWS);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) acc += dout[(long long)r * oc + col];
    pdb[(long long)blockIdx.x * oc + col] = acc;
}

// out (N,OC) += b broadcast over rows.
extern "C" __global__ void bias_forward(float* out, const float* b, int n, int oc) {
    long long id = global_id();
    if (id < (long long)n * oc) out[id] += b[id % oc];
}

#define GELU_SCALE 0.7978845608f

// out = gelu_tanh(inp) (Hugging Face's gelu_new).
extern "C" __global__ void gelu_forward(float* out, const float* inp, long long n) {
    long long i = global_id();
    if (i >= n) return;
    float x = inp[i];
    float cube = 0.044715f * x * x * x;
    out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube)));
}

// dinp += gelu_tanh'(inp) dout.
extern "C" __global__ void gelu_backward(float* dinp, const float* inp, const float* dout,
                                         long long n) {
    long long i = global_id();
    if (i >= n) return;
    float x = inp[i];
    float cube = 0.044715f * x * x * x;
    float th = tanhf(GELU_SCALE * (x + cube));
    float sech2 = 1.0f - th * th;
    float local = 0.5f * (1.0f + th) + x * 0.5f * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] += local * dout[i];
}

// Causal softmax in place over rows of att (rows, T) holding q k^T: row r is query position
// r % T; entries j <= i are scaled by `scale` and softmaxed, the rest set to 0. One block a row.
extern "C" __global__ void softmax_causal_forward(float* att, int rows, int t, float scale) {
    int r = blockIdx.x;
    if (r >= rows) return;
    int i = r % t;
    float* a = att + (long long)r * t;
    float m = NEG_INF;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, a[j] * scale);
    m = block_max(m);
    float acc = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) {
        float e = expf(a[j] * scale - m);
        a[j] = e;
        acc += e;
    }
    float inv = 1.0f / block_sum(acc);
    for (int j = threadIdx.x; j < t; j += blockDim.x) a[j] = j <= i ? a[j] * inv : 0.0f;
}

// Softmax backward in place: datt (rows, T) -> dpreatt = att (datt - <att, datt>) scale. One
// block a row; masked entries have att = 0, so they get 0.
extern "C" __global__ void softmax_causal_backward(float* datt, const float* att, int rows, int t,
                                                   float scale) {
    int r = blockIdx.x;
    if (r >= rows) return;
    float* d = datt + (long long)r * t;
    const float* a = att + (long long)r * t;
    float acc = 0.0f;
    for (int j = threadIdx.x; j < t; j += blockDim.x) acc += d[j] * a[j];
    float dot = block_sum(acc);
    for (int j = threadIdx.x; j < t; j += blockDim.x) d[j] = a[j] * (d[j] - dot) * scale;
}

#define IGNORE_INDEX 0xffffffffu

// logits (N,V) -> probs in place, losses (N) = -ln probs[target] (0 for IGNORE_INDEX). One
// block a row.
extern "C" __global__ void crossentropy_forward(float* probs, float* losses,
                                                const unsigned int* targets, int n, int v) {
    int row = blockIdx.x;
    if (row >= n) return;
    float* p = probs + (long long)row * v;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, p[j]);
    m = block_max(m);
    float acc = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float e = expf(p[j] - m);
        p[j] = e;
        acc += e;
    }
    float inv = 1.0f / block_sum(acc);
    for (int j = threadIdx.x; j < v; j += blockDim.x) p[j] *= inv;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int tgt = targets[row];
        losses[row] = tgt == IGNORE_INDEX ? 0.0f : -logf(p[tgt]);
    }
}

// dlogits (N,V) += (probs - onehot(target)) dloss; rows whose target is IGNORE_INDEX get
// nothing. Grid: (N, ceil(V / blockDim)) (rows in x: gridDim.y stops at 65535).
extern "C" __global__ void crossentropy_backward(float* dlogits, const float* probs,
                                                 const unsigned int* targets, int n, int v,
                                                 float dloss) {
    int row = blockIdx.x;
    int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (row >= n || j >= v) return;
    unsigned int tgt = targets[row];
    if (tgt == IGNORE_INDEX) return;
    long long at = (long long)row * v + j;
    float ind = (unsigned int)j == tgt ? 1.0f : 0.0f;
    dlogits[at] += (probs[at] - ind) * dloss;
}
