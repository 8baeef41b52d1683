// batchnorm.cu — BatchNorm2d over NCHW, f32 (src/ops/batchnorm/gpu.rs ↔ this file), PyTorch
// semantics (see src/ops/batchnorm/mod.rs):
//
//   stats (training): per channel c over its m = N·H·W values, μ = mean, σ² = mean((x − μ)²)
//                     (biased, two passes), rstd = 1/√(σ² + eps)
//   apply:            y = (x − μ_c)·rstd_c·w_c + b_c   (training: batch stats; eval: running
//                     stats, rstd from the running variance)
//   backward sums:    Σdy_c → db, Σ dy·x̂ → dw   (x̂ = (x − μ)·rstd)
//   dx:               training: w·rstd·(dy − Σdy/m − x̂·Σdy·x̂/m);  eval: w·rstd·dy
//
// Per-channel reductions: one block of 256 threads per channel (grid C); thread t visits the
// channel's elements j = t, t + 256, … (j → n = j / HW, i = j % HW) in order, then block_sum_256
// combines the 256 partials by warp_sum butterflies and a fixed 8-way second level. The order
// depends only on the shape: deterministic, no atomics. Elementwise kernels: one thread per
// element, blocks of 256.
#include "common.cuh"

// Sum over a block of exactly 256 threads; every thread gets the total. `red` holds 8 floats of
// shared memory; the leading barrier makes back-to-back calls safe.
__device__ __forceinline__ float block_sum_256(float v, float* red) {
    v = warp_sum(v);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    return warp_sum(lane < 8 ? red[lane] : 0.0f);
}

// Launch: grid (C), block (256).
extern "C" __global__ void batchnorm_stats_f32(float* __restrict__ mean, float* __restrict__ var,
                                               float* __restrict__ rstd, const float* __restrict__ x, int n, int c,
                                               int hw, float eps) {
    __shared__ float red[8];
    int ch = blockIdx.x;
    long long m = (long long)n * hw;
    float s = 0.0f;
    for (long long j = threadIdx.x; j < m; j += 256) s += x[((j / hw) * c + ch) * hw + j % hw];
    float mu = block_sum_256(s, red) / (float)m;
    float v = 0.0f;
    for (long long j = threadIdx.x; j < m; j += 256) {
        float d = x[((j / hw) * c + ch) * hw + j % hw] - mu;
        v += d * d;
    }
    float var_c = block_sum_256(v, red) / (float)m;
    if (threadIdx.x == 0) {
        mean[ch] = mu;
        var[ch] = var_c;
        rstd[ch] = rsqrtf(var_c + eps);
    }
}

// clipcu: hot
extern "C" __global__ void batchnorm_apply_f32(float* __restrict__ y, const float* __restrict__ x,
                                               const float* __restrict__ mean, const float* __restrict__ rstd,
                                               const float* __restrict__ w, const float* __restrict__ b, int c, int hw,
                                               int total) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        int ch = (i / hw) % c;
        y[i] = (x[i] - mean[ch]) * (rstd[ch] * w[ch]) + b[ch];
    }
}

// Launch: grid (C), block (256).
extern "C" __global__ void batchnorm_bwd_sums_f32(float* __restrict__ sum_dy, float* __restrict__ sum_dy_xhat,
                                                  const float* __restrict__ dy, const float* __restrict__ x,
                                                  const float* __restrict__ mean, const float* __restrict__ rstd,
                                                  int n, int c, int hw) {
    __shared__ float red[8];
    int ch = blockIdx.x;
    long long m = (long long)n * hw;
    float mu = mean[ch], rs = rstd[ch];
    float s = 0.0f, sx = 0.0f;
    for (long long j = threadIdx.x; j < m; j += 256) {
        long long o = ((j / hw) * c + ch) * hw + j % hw;
        float g = dy[o];
        s += g;
        sx += g * (x[o] - mu) * rs;
    }
    float t1 = block_sum_256(s, red);
    float t2 = block_sum_256(sx, red);
    if (threadIdx.x == 0) {
        sum_dy[ch] = t1;
        sum_dy_xhat[ch] = t2;
    }
}

// clipcu: hot
extern "C" __global__ void batchnorm_bwd_dx_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                                const float* __restrict__ x, const float* __restrict__ mean,
                                                const float* __restrict__ rstd, const float* __restrict__ w,
                                                const float* __restrict__ sum_dy,
                                                const float* __restrict__ sum_dy_xhat, int c, int hw, int total,
                                                float inv_m, int training) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        int ch = (i / hw) % c;
        float a = w[ch] * rstd[ch];
        float g = dy[i];
        if (training) {
            float xh = (x[i] - mean[ch]) * rstd[ch];
            g = g - sum_dy[ch] * inv_m - xh * sum_dy_xhat[ch] * inv_m;
        }
        dx[i] = a * g;
    }
}
