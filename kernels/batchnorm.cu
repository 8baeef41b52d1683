// batchnorm.cu — BatchNorm2d over NCHW, f32, f16 or bf16 activations (src/ops/batchnorm/gpu.rs
// ↔ this file), PyTorch semantics (see src/ops/batchnorm/mod.rs):
//
//   stats (training): per channel c over its m = N·H·W values, μ = mean, σ² = mean((x − μ)²)
//                     (biased, two passes), rstd = 1/√(σ² + eps)
//   apply:            y = (x − μ_c)·rstd_c·w_c + b_c   (training: batch stats; eval: running
//                     stats, rstd from the running variance)
//   backward sums:    Σdy_c → db, Σ dy·x̂ → dw   (x̂ = (x − μ)·rstd)
//   dx:               training: w·rstd·(dy − Σdy/m − x̂·Σdy·x̂/m);  eval: w·rstd·dy
//   SyncBatchNorm:    the statistics in three steps with all-reduces between (the launcher's):
//                     sums (Σx_c of this rank's values) → all-reduce → centred sums (μ = Σx/m
//                     over all ranks' m values, Σ(x − μ)² of this rank's) → all-reduce →
//                     finish (σ² = Σ/m, rstd); backward sums all-reduced before dx, with the
//                     global m. The same per-channel loops as stats, so one rank computes what
//                     stats computes when the all-reduce is the identity.
//
// Mixed precision: every kernel is a template on the activations' storage type T (x, y, dy, dx;
// _f32, _f16, _bf16); the statistics (μ, σ², rstd, the running ones), w, b, the backward sums —
// and so dw, db — are f32, and so is every sum and product; y and dx are rounded once.
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

template <class T>
__device__ __forceinline__ void batchnorm_stats(float* __restrict__ mean, float* __restrict__ var,
                                                float* __restrict__ rstd, const T* __restrict__ x, int n, int c,
                                                int hw, float eps) {
    __shared__ float red[8];
    int ch = blockIdx.x;
    long long m = (long long)n * hw;
    float s = 0.0f;
    for (long long j = threadIdx.x; j < m; j += 256) s += to_f32(x[((j / hw) * c + ch) * hw + j % hw]);
    float mu = block_sum_256(s, red) / (float)m;
    float v = 0.0f;
    for (long long j = threadIdx.x; j < m; j += 256) {
        float d = to_f32(x[((j / hw) * c + ch) * hw + j % hw]) - mu;
        v += d * d;
    }
    float var_c = block_sum_256(v, red) / (float)m;
    if (threadIdx.x == 0) {
        mean[ch] = mu;
        var[ch] = var_c;
        rstd[ch] = rsqrtf(var_c + eps);
    }
}

// Launch: grid (C), block (256).
extern "C" __global__ void batchnorm_stats_f32(float* __restrict__ mean, float* __restrict__ var, float* __restrict__ rstd, const float* __restrict__ x, int n, int c, int hw, float eps) {
    batchnorm_stats(mean, var, rstd, x, n, c, hw, eps);
}
extern "C" __global__ void batchnorm_stats_f16(float* __restrict__ mean, float* __restrict__ var, float* __restrict__ rstd, const __half* __restrict__ x, int n, int c, int hw, float eps) {
    batchnorm_stats(mean, var, rstd, x, n, c, hw, eps);
}
extern "C" __global__ void batchnorm_stats_bf16(float* __restrict__ mean, float* __restrict__ var, float* __restrict__ rstd, const __nv_bfloat16* __restrict__ x, int n, int c, int hw, float eps) {
    batchnorm_stats(mean, var, rstd, x, n, c, hw, eps);
}

template <class T>
__device__ __forceinline__ void batchnorm_sums(float* __restrict__ sum, const T* __restrict__ x, int n, int c,
                                               int hw) {
    __shared__ float red[8];
    int ch = blockIdx.x;
    long long m = (long long)n * hw;
    float s = 0.0f;
    for (long long j = threadIdx.x; j < m; j += 256) s += to_f32(x[((j / hw) * c + ch) * hw + j % hw]);
    float t = block_sum_256(s, red);
    if (threadIdx.x == 0) sum[ch] = t;
}

// SyncBatchNorm, step 1: Σx per channel over this rank's values. Launch: grid (C), block (256).
extern "C" __global__ void batchnorm_sums_f32(float* __restrict__ sum, const float* __restrict__ x, int n, int c, int hw) {
    batchnorm_sums(sum, x, n, c, hw);
}
extern "C" __global__ void batchnorm_sums_f16(float* __restrict__ sum, const __half* __restrict__ x, int n, int c, int hw) {
    batchnorm_sums(sum, x, n, c, hw);
}
extern "C" __global__ void batchnorm_sums_bf16(float* __restrict__ sum, const __nv_bfloat16* __restrict__ x, int n, int c, int hw) {
    batchnorm_sums(sum, x, n, c, hw);
}

// μ = Σx/m with Σx over every rank (written by block ch), then this rank's Σ(x − μ)².
template <class T>
__device__ __forceinline__ void batchnorm_centred_sums(float* __restrict__ mean, float* __restrict__ sq,
                                                       const T* __restrict__ x, const float* __restrict__ sum,
                                                       float m_all, int n, int c, int hw) {
    __shared__ float red[8];
    int ch = blockIdx.x;
    long long m = (long long)n * hw;
    float mu = sum[ch] / m_all;
    float v = 0.0f;
    for (long long j = threadIdx.x; j < m; j += 256) {
        float d = to_f32(x[((j / hw) * c + ch) * hw + j % hw]) - mu;
        v += d * d;
    }
    float t = block_sum_256(v, red);
    if (threadIdx.x == 0) {
        mean[ch] = mu;
        sq[ch] = t;
    }
}

// SyncBatchNorm, step 2 (m_all: the values per channel over every rank). Launch: grid (C),
// block (256).
extern "C" __global__ void batchnorm_centred_sums_f32(float* __restrict__ mean, float* __restrict__ sq, const float* __restrict__ x, const float* __restrict__ sum, float m_all, int n, int c, int hw) {
    batchnorm_centred_sums(mean, sq, x, sum, m_all, n, c, hw);
}
extern "C" __global__ void batchnorm_centred_sums_f16(float* __restrict__ mean, float* __restrict__ sq, const __half* __restrict__ x, const float* __restrict__ sum, float m_all, int n, int c, int hw) {
    batchnorm_centred_sums(mean, sq, x, sum, m_all, n, c, hw);
}
extern "C" __global__ void batchnorm_centred_sums_bf16(float* __restrict__ mean, float* __restrict__ sq, const __nv_bfloat16* __restrict__ x, const float* __restrict__ sum, float m_all, int n, int c, int hw) {
    batchnorm_centred_sums(mean, sq, x, sum, m_all, n, c, hw);
}

// SyncBatchNorm, step 3: σ² = Σ(x − μ)²/m over every rank, rstd = 1/√(σ² + eps), as stats
// finishes. One thread per channel: Launch for_elements(C, 256).
extern "C" __global__ void batchnorm_finish_stats_f32(float* __restrict__ var, float* __restrict__ rstd, const float* __restrict__ sq, float m_all, float eps, int c) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch < c) {
        float v = sq[ch] / m_all;
        var[ch] = v;
        rstd[ch] = rsqrtf(v + eps);
    }
}

// 64-bit element index: N·C·H·W of a large batch of feature maps can pass 2^31 − 1 only when the
// launcher's i32 check is lifted, but i + blockDim·gridDim near the top of the range must not
// wrap either way.
template <class T>
__device__ __forceinline__ void batchnorm_apply(T* __restrict__ y, const T* __restrict__ x,
                                                const float* __restrict__ mean, const float* __restrict__ rstd,
                                                const float* __restrict__ w, const float* __restrict__ b, int c, int hw,
                                                int total) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        int ch = (int)((i / hw) % c);
        y[i] = from_f32<T>((to_f32(x[i]) - mean[ch]) * (rstd[ch] * w[ch]) + b[ch]);
    }
}

// clipcu: hot
extern "C" __global__ void batchnorm_apply_f32(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, const float* __restrict__ b, int c, int hw, int total) {
    batchnorm_apply(y, x, mean, rstd, w, b, c, hw, total);
}
// clipcu: hot
extern "C" __global__ void batchnorm_apply_f16(__half* __restrict__ y, const __half* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, const float* __restrict__ b, int c, int hw, int total) {
    batchnorm_apply(y, x, mean, rstd, w, b, c, hw, total);
}
// clipcu: hot
extern "C" __global__ void batchnorm_apply_bf16(__nv_bfloat16* __restrict__ y, const __nv_bfloat16* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, const float* __restrict__ b, int c, int hw, int total) {
    batchnorm_apply(y, x, mean, rstd, w, b, c, hw, total);
}

template <class T>
__device__ __forceinline__ void batchnorm_bwd_sums(float* __restrict__ sum_dy, float* __restrict__ sum_dy_xhat,
                                                   const T* __restrict__ dy, const T* __restrict__ x,
                                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                                   int n, int c, int hw) {
    __shared__ float red[8];
    int ch = blockIdx.x;
    long long m = (long long)n * hw;
    float mu = mean[ch], rs = rstd[ch];
    float s = 0.0f, sx = 0.0f;
    for (long long j = threadIdx.x; j < m; j += 256) {
        long long o = ((j / hw) * c + ch) * hw + j % hw;
        float g = to_f32(dy[o]);
        s += g;
        sx += g * (to_f32(x[o]) - mu) * rs;
    }
    float t1 = block_sum_256(s, red);
    float t2 = block_sum_256(sx, red);
    if (threadIdx.x == 0) {
        sum_dy[ch] = t1;
        sum_dy_xhat[ch] = t2;
    }
}

// Launch: grid (C), block (256).
extern "C" __global__ void batchnorm_bwd_sums_f32(float* __restrict__ sum_dy, float* __restrict__ sum_dy_xhat, const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, int n, int c, int hw) {
    batchnorm_bwd_sums(sum_dy, sum_dy_xhat, dy, x, mean, rstd, n, c, hw);
}
extern "C" __global__ void batchnorm_bwd_sums_f16(float* __restrict__ sum_dy, float* __restrict__ sum_dy_xhat, const __half* __restrict__ dy, const __half* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, int n, int c, int hw) {
    batchnorm_bwd_sums(sum_dy, sum_dy_xhat, dy, x, mean, rstd, n, c, hw);
}
extern "C" __global__ void batchnorm_bwd_sums_bf16(float* __restrict__ sum_dy, float* __restrict__ sum_dy_xhat, const __nv_bfloat16* __restrict__ dy, const __nv_bfloat16* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, int n, int c, int hw) {
    batchnorm_bwd_sums(sum_dy, sum_dy_xhat, dy, x, mean, rstd, n, c, hw);
}

template <class T>
__device__ __forceinline__ void batchnorm_bwd_dx(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                                                 const float* __restrict__ mean, const float* __restrict__ rstd,
                                                 const float* __restrict__ w, const float* __restrict__ sum_dy,
                                                 const float* __restrict__ sum_dy_xhat, int c, int hw, int total,
                                                 float inv_m, int training) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) {
        int ch = (int)((i / hw) % c);
        float a = w[ch] * rstd[ch];
        float g = to_f32(dy[i]);
        if (training) {
            float xh = (to_f32(x[i]) - mean[ch]) * rstd[ch];
            g = g - sum_dy[ch] * inv_m - xh * sum_dy_xhat[ch] * inv_m;
        }
        dx[i] = from_f32<T>(a * g);
    }
}

// clipcu: hot
extern "C" __global__ void batchnorm_bwd_dx_f32(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, const float* __restrict__ sum_dy, const float* __restrict__ sum_dy_xhat, int c, int hw, int total, float inv_m, int training) {
    batchnorm_bwd_dx(dx, dy, x, mean, rstd, w, sum_dy, sum_dy_xhat, c, hw, total, inv_m, training);
}
// clipcu: hot
extern "C" __global__ void batchnorm_bwd_dx_f16(__half* __restrict__ dx, const __half* __restrict__ dy, const __half* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, const float* __restrict__ sum_dy, const float* __restrict__ sum_dy_xhat, int c, int hw, int total, float inv_m, int training) {
    batchnorm_bwd_dx(dx, dy, x, mean, rstd, w, sum_dy, sum_dy_xhat, c, hw, total, inv_m, training);
}
// clipcu: hot
extern "C" __global__ void batchnorm_bwd_dx_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ dy, const __nv_bfloat16* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, const float* __restrict__ sum_dy, const float* __restrict__ sum_dy_xhat, int c, int hw, int total, float inv_m, int training) {
    batchnorm_bwd_dx(dx, dy, x, mean, rstd, w, sum_dy, sum_dy_xhat, c, hw, total, inv_m, training);
}
