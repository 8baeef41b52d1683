// elementwise.cu — pointwise activations, scaling, adds and the bias gradient, f32
// (src/ops/unary/gpu.rs, src/ops/binary/gpu.rs ↔ this file).
//
//   gelu(x)        = x·Φ(x) = 0.5·x·erfc(−x/√2);       gelu'(x) = Φ(x) + x·φ(x)
//                    (erfc, not 1 + erf, which cancels for x < 0: the CPU reference is accurate there)
//   quick_gelu(x)  = x·σ(1.702x);                       quick_gelu'(x) = s + 1.702·x·s·(1−s), s = σ(1.702x)
//   relu(x)        = max(x, 0);                          relu'(x) = [x > 0]
//   scale(x; c)    = c·x                                 (its backward is scale(dy; c))
//   add(a, b)      = a + b  (same shape)
//   add_bias(x, b) = x[r, j] + b[j]  (a [D] bias broadcast over the R rows of [R, D])
//   bias_bwd(g)    = db[j] = Σ_r g[r, j]  (the gradient of the broadcast bias)
//
// Pointwise kernels: one thread per element, a 1-D grid of ceil(n / blockDim.x) blocks (the
// launchers pick 256 threads). Memory-bound: coalesced loads and one store per element.
// bias_bwd: a block of (32, 8) threads owns 32 adjacent columns (coalesced row reads); thread
// (x, y) sums rows y, y+8, y+16, … of column x in order, then the 8 partials of a column are
// combined in shared memory by a fixed tree (4, 2, 1). The order of additions depends only on
// R and D — never on scheduling — and no atomics are used, so the result is deterministic.
#include "common.cuh"

// clipcu: hot
extern "C" __global__ void gelu_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        out[i] = 0.5f * v * erfcf(-v * 0.70710678118654752f);
    }
}

// clipcu: hot
extern "C" __global__ void gelu_bwd_f32(float* __restrict__ dx, const float* __restrict__ x,
                                        const float* __restrict__ dy, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

// clipcu: hot
extern "C" __global__ void quick_gelu_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        out[i] = v / (1.0f + expf(-1.702f * v));
    }
}

// clipcu: hot
extern "C" __global__ void quick_gelu_bwd_f32(float* __restrict__ dx, const float* __restrict__ x,
                                              const float* __restrict__ dy, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        float s = 1.0f / (1.0f + expf(-1.702f * v));
        dx[i] = dy[i] * (s + 1.702f * v * s * (1.0f - s));
    }
}

// clipcu: hot
extern "C" __global__ void relu_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = fmaxf(x[i], 0.0f);
}

// clipcu: hot
extern "C" __global__ void relu_bwd_f32(float* __restrict__ dx, const float* __restrict__ x,
                                        const float* __restrict__ dy, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
}

// clipcu: hot
extern "C" __global__ void scale_fwd_f32(float* __restrict__ out, const float* __restrict__ x, float c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = c * x[i];
}

// clipcu: hot
extern "C" __global__ void add_fwd_f32(float* __restrict__ out, const float* __restrict__ a,
                                       const float* __restrict__ b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// clipcu: hot
extern "C" __global__ void add_bias_fwd_f32(float* __restrict__ out, const float* __restrict__ x,
                                            const float* __restrict__ bias, int rows, int d) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)rows * d) out[i] = x[i] + bias[i % d];
}

// Launch: grid (ceil(d / 32)), block (32, 8), no dynamic shared memory.
extern "C" __global__ void bias_bwd_f32(float* __restrict__ db, const float* __restrict__ g, int rows, int d) {
    __shared__ float part[8][32];
    int col = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (col < d)
        for (int r = threadIdx.y; r < rows; r += 8) acc += g[(long long)r * d + col];
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int s = 4; s > 0; s >>= 1) {
        if ((int)threadIdx.y < s) part[threadIdx.y][threadIdx.x] += part[threadIdx.y + s][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && col < d) db[col] = part[0][threadIdx.x];
}
