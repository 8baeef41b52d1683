// layernorm.cu — LayerNorm over the last dim, on f32, f16 or bf16 activations
// (src/ops/layernorm/gpu.rs ↔ this file).
//
//   forward:  μ = mean(x), σ² = mean((x − μ)²) (biased, two passes), rstd = 1/√(σ² + eps),
//             y = (x − μ)·rstd·w + b;  μ and rstd are saved per row for backward.
//   residual: s = x + r is written out, then y = LN(s) (a pre-norm block's "x + attn(x)" and
//             the next LN in one pass over memory).
//   backward: x̂ = (x − μ)·rstd, ĝ = dy·w,
//             dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),  dw = Σ_rows dy·x̂,  db = Σ_rows dy.
//
// Mixed precision: every kernel is a template on the activations' storage type T, instantiated
// _f32, _f16, _bf16. x, r, s, y, dy and dx are T (the activations and their gradients); w, b (the
// f32 master parameters), μ, rstd and the dw/db partials are f32, as are dw and db themselves;
// every sum is f32 — a 16-bit accumulator would lose the mean of a wide row to rounding (2⁻¹¹
// relative per add in f16, 2⁻⁸ in bf16). Each T output is rounded once (the residual sum s once,
// and y is the LayerNorm of s as stored). For T = float the code is the f32 kernel's.
//
// Row kernels (forward, residual forward, dx): one warp per row, blocks of (32, 8) = 8 rows; lane
// l handles columns l, l+32, …; row sums are warp_sum shuffles (fixed butterfly order). A warp
// past the last row skips the whole body, so no lane leaves a collective early. No shared memory.
// dw/db (deterministic two-stage reduction, no atomics): stage 1 `layernorm_bwd_dwdb_f32`, grid
// (ceil(d/32), nchunks), block (32, 8): block (cx, c) owns 32 columns of the row chunk
// [c·chunk, (c+1)·chunk); thread (x, y) sums rows y, y+8, … of its column in order, the 8
// partials are combined by a fixed shared-memory tree and written to part[c][col]. Stage 2
// `layernorm_bwd_dwdb_reduce_f32`: one thread per column adds the nchunks partials in chunk
// order. The chunk size is fixed by the launcher, so the sums never depend on the hardware.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void layernorm_fwd(T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                                              const T* __restrict__ x, const float* __restrict__ w,
                                              const float* __restrict__ b, int rows, int d, float eps) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        const T* xr = x + (long long)row * d;
        float s = 0.0f;
        for (int i = lane; i < d; i += 32) s += to_f32(xr[i]);
        float mu = warp_sum(s) / d;
        float v = 0.0f;
        for (int i = lane; i < d; i += 32) {
            float c = to_f32(xr[i]) - mu;
            v += c * c;
        }
        float rs = rsqrtf(warp_sum(v) / d + eps);
        T* yr = y + (long long)row * d;
        for (int i = lane; i < d; i += 32) yr[i] = from_f32<T>((to_f32(xr[i]) - mu) * rs * w[i] + b[i]);
        if (lane == 0) {
            mean[row] = mu;
            rstd[row] = rs;
        }
    }
}

// Launch: grid (ceil(rows / 8)), block (32, 8).
// clipcu: hot
extern "C" __global__ void layernorm_fwd_f32(float* __restrict__ y, float* __restrict__ mean,
                                             float* __restrict__ rstd, const float* __restrict__ x,
                                             const float* __restrict__ w, const float* __restrict__ b,
                                             int rows, int d, float eps) {
    layernorm_fwd(y, mean, rstd, x, w, b, rows, d, eps);
}
// clipcu: hot
extern "C" __global__ void layernorm_fwd_f16(__half* __restrict__ y, float* __restrict__ mean,
                                             float* __restrict__ rstd, const __half* __restrict__ x,
                                             const float* __restrict__ w, const float* __restrict__ b,
                                             int rows, int d, float eps) {
    layernorm_fwd(y, mean, rstd, x, w, b, rows, d, eps);
}
// clipcu: hot
extern "C" __global__ void layernorm_fwd_bf16(__nv_bfloat16* __restrict__ y, float* __restrict__ mean,
                                              float* __restrict__ rstd, const __nv_bfloat16* __restrict__ x,
                                              const float* __restrict__ w, const float* __restrict__ b,
                                              int rows, int d, float eps) {
    layernorm_fwd(y, mean, rstd, x, w, b, rows, d, eps);
}

// Each lane reads back only the s[i] it wrote, as stored (rounded to T): y is LN of the sum the
// graph keeps, as on the CPU (add, then LayerNorm of the stored sum).
template <class T>
__device__ __forceinline__ void layernorm_residual_fwd(T* __restrict__ y, T* __restrict__ sum, float* __restrict__ mean,
                                                       float* __restrict__ rstd, const T* __restrict__ x,
                                                       const T* __restrict__ r, const float* __restrict__ w,
                                                       const float* __restrict__ b, int rows, int d, float eps) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * d;
        float s = 0.0f;
        for (int i = lane; i < d; i += 32) {
            T v = from_f32<T>(to_f32(x[o + i]) + to_f32(r[o + i]));
            sum[o + i] = v;
            s += to_f32(v);
        }
        float mu = warp_sum(s) / d;
        float v = 0.0f;
        for (int i = lane; i < d; i += 32) {
            float c = to_f32(sum[o + i]) - mu;
            v += c * c;
        }
        float rs = rsqrtf(warp_sum(v) / d + eps);
        for (int i = lane; i < d; i += 32) y[o + i] = from_f32<T>((to_f32(sum[o + i]) - mu) * rs * w[i] + b[i]);
        if (lane == 0) {
            mean[row] = mu;
            rstd[row] = rs;
        }
    }
}

// Launch: grid (ceil(rows / 8)), block (32, 8).
// clipcu: hot
extern "C" __global__ void layernorm_residual_fwd_f32(float* __restrict__ y, float* __restrict__ sum,
                                                      float* __restrict__ mean, float* __restrict__ rstd,
                                                      const float* __restrict__ x, const float* __restrict__ r,
                                                      const float* __restrict__ w, const float* __restrict__ b,
                                                      int rows, int d, float eps) {
    layernorm_residual_fwd(y, sum, mean, rstd, x, r, w, b, rows, d, eps);
}
// clipcu: hot
extern "C" __global__ void layernorm_residual_fwd_f16(__half* __restrict__ y, __half* __restrict__ sum,
                                                      float* __restrict__ mean, float* __restrict__ rstd,
                                                      const __half* __restrict__ x, const __half* __restrict__ r,
                                                      const float* __restrict__ w, const float* __restrict__ b,
                                                      int rows, int d, float eps) {
    layernorm_residual_fwd(y, sum, mean, rstd, x, r, w, b, rows, d, eps);
}
// clipcu: hot
extern "C" __global__ void layernorm_residual_fwd_bf16(__nv_bfloat16* __restrict__ y, __nv_bfloat16* __restrict__ sum,
                                                       float* __restrict__ mean, float* __restrict__ rstd,
                                                       const __nv_bfloat16* __restrict__ x,
                                                       const __nv_bfloat16* __restrict__ r, const float* __restrict__ w,
                                                       const float* __restrict__ b, int rows, int d, float eps) {
    layernorm_residual_fwd(y, sum, mean, rstd, x, r, w, b, rows, d, eps);
}

template <class T>
__device__ __forceinline__ void layernorm_bwd(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                                              const float* __restrict__ w, const float* __restrict__ mean,
                                              const float* __restrict__ rstd, int rows, int d) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * d;
        float mu = mean[row], rs = rstd[row];
        float sg = 0.0f, sgx = 0.0f;
        for (int i = lane; i < d; i += 32) {
            float gh = to_f32(dy[o + i]) * w[i];
            sg += gh;
            sgx += gh * (to_f32(x[o + i]) - mu) * rs;
        }
        float mg = warp_sum(sg) / d, mgx = warp_sum(sgx) / d;
        for (int i = lane; i < d; i += 32) {
            float xh = (to_f32(x[o + i]) - mu) * rs;
            dx[o + i] = from_f32<T>(rs * (to_f32(dy[o + i]) * w[i] - mg - xh * mgx));
        }
    }
}

// Launch: grid (ceil(rows / 8)), block (32, 8).
// clipcu: hot
extern "C" __global__ void layernorm_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy,
                                             const float* __restrict__ x, const float* __restrict__ w,
                                             const float* __restrict__ mean, const float* __restrict__ rstd,
                                             int rows, int d) {
    layernorm_bwd(dx, dy, x, w, mean, rstd, rows, d);
}
// clipcu: hot
extern "C" __global__ void layernorm_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ dy,
                                             const __half* __restrict__ x, const float* __restrict__ w,
                                             const float* __restrict__ mean, const float* __restrict__ rstd,
                                             int rows, int d) {
    layernorm_bwd(dx, dy, x, w, mean, rstd, rows, d);
}
// clipcu: hot
extern "C" __global__ void layernorm_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ dy,
                                              const __nv_bfloat16* __restrict__ x, const float* __restrict__ w,
                                              const float* __restrict__ mean, const float* __restrict__ rstd,
                                              int rows, int d) {
    layernorm_bwd(dx, dy, x, w, mean, rstd, rows, d);
}

// Stage 1 of dw/db: dy, x in T, the partials (and so dw, db: the f32 parameters' gradients) f32.
template <class T>
__device__ __forceinline__ void layernorm_bwd_dwdb(float* __restrict__ dw_part, float* __restrict__ db_part,
                                                   const T* __restrict__ dy, const T* __restrict__ x,
                                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                                   int rows, int d, int chunk) {
    __shared__ float pw[8][32];
    __shared__ float pb[8][32];
    int col = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * chunk;
    int r1 = min(rows, r0 + chunk);
    float aw = 0.0f, ab = 0.0f;
    if (col < d)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            long long o = (long long)r * d + col;
            float g = to_f32(dy[o]);
            aw += g * (to_f32(x[o]) - mean[r]) * rstd[r];
            ab += g;
        }
    pw[threadIdx.y][threadIdx.x] = aw;
    pb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    for (int s = 4; s > 0; s >>= 1) {
        if ((int)threadIdx.y < s) {
            pw[threadIdx.y][threadIdx.x] += pw[threadIdx.y + s][threadIdx.x];
            pb[threadIdx.y][threadIdx.x] += pb[threadIdx.y + s][threadIdx.x];
        }
        __syncthreads();
    }
    if (threadIdx.y == 0 && col < d) {
        dw_part[(long long)blockIdx.y * d + col] = pw[0][threadIdx.x];
        db_part[(long long)blockIdx.y * d + col] = pb[0][threadIdx.x];
    }
}

// Launch: grid (ceil(d / 32), ceil(rows / chunk)), block (32, 8).
extern "C" __global__ void layernorm_bwd_dwdb_f32(float* __restrict__ dw_part, float* __restrict__ db_part,
                                                  const float* __restrict__ dy, const float* __restrict__ x,
                                                  const float* __restrict__ mean, const float* __restrict__ rstd,
                                                  int rows, int d, int chunk) {
    layernorm_bwd_dwdb(dw_part, db_part, dy, x, mean, rstd, rows, d, chunk);
}
extern "C" __global__ void layernorm_bwd_dwdb_f16(float* __restrict__ dw_part, float* __restrict__ db_part,
                                                  const __half* __restrict__ dy, const __half* __restrict__ x,
                                                  const float* __restrict__ mean, const float* __restrict__ rstd,
                                                  int rows, int d, int chunk) {
    layernorm_bwd_dwdb(dw_part, db_part, dy, x, mean, rstd, rows, d, chunk);
}
extern "C" __global__ void layernorm_bwd_dwdb_bf16(float* __restrict__ dw_part, float* __restrict__ db_part,
                                                   const __nv_bfloat16* __restrict__ dy,
                                                   const __nv_bfloat16* __restrict__ x, const float* __restrict__ mean,
                                                   const float* __restrict__ rstd, int rows, int d, int chunk) {
    layernorm_bwd_dwdb(dw_part, db_part, dy, x, mean, rstd, rows, d, chunk);
}

// Stage 2 of dw/db. Launch: one thread per column, grid (ceil(d / 256)), block (256).
extern "C" __global__ void layernorm_bwd_dwdb_reduce_f32(float* __restrict__ dw, float* __restrict__ db,
                                                         const float* __restrict__ dw_part,
                                                         const float* __restrict__ db_part, int nchunks, int d) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col < d) {
        float aw = 0.0f, ab = 0.0f;
        for (int c = 0; c < nchunks; ++c) {
            aw += dw_part[(long long)c * d + col];
            ab += db_part[(long long)c * d + col];
        }
        dw[col] = aw;
        db[col] = ab;
    }
}
