// softmax.cu — softmax over the last dim, optionally causal, f32, f16 and bf16
// (src/ops/softmax/gpu.rs ↔ this file).
//
//   forward:  row r of length n sees columns j < v, v = n (or (r mod n) + 1 with the causal mask
//             of [.., T, T] scores); m = max_j x_j, y_j = exp(x_j − m) / Σ exp(x_k − m) for j < v,
//             y_j = 0 exactly for masked j.
//   backward: dx = y·(dy − Σ_j dy_j·y_j)  (0 on masked entries, where y is 0).
//
// One warp per row, blocks of (32, 8) = 8 rows, grid ceil(rows / 8). Lane l handles columns l,
// l+32, …; max and sums are warp_max / warp_sum butterflies (a fixed order). A warp past the last
// row skips the whole body, so no lane leaves a collective early. The row is read twice (max,
// then exp-sum) and a third time to write; fine for T ≤ a few hundred.
//
// f16/bf16 (mixed precision): the same templates on the storage type — every element widened to
// f32 on load, max, exp, sums and the normalisation in f32, the output rounded once. The f32
// instantiation is the plain f32 kernel. Because y is stored rounded, the backward's Σ dy·y uses
// the rounded y that the forward produced, exactly as the graph saved it.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void softmax_fwd(T* __restrict__ y, const T* __restrict__ x, int rows, int n, int causal) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * n;
        int v = causal ? (row % n) + 1 : n;
        float m = -INFINITY;
        for (int i = lane; i < v; i += 32) m = fmaxf(m, to_f32(x[o + i]));
        m = warp_max(m);
        float s = 0.0f;
        for (int i = lane; i < v; i += 32) s += expf(to_f32(x[o + i]) - m);
        float inv = 1.0f / warp_sum(s);
        for (int i = lane; i < n; i += 32) y[o + i] = from_f32<T>(i < v ? expf(to_f32(x[o + i]) - m) * inv : 0.0f);
    }
}

template <class T>
__device__ __forceinline__ void softmax_bwd(T* __restrict__ dx, const T* __restrict__ y, const T* __restrict__ dy,
                                            int rows, int n) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * n;
        float dot = 0.0f;
        for (int i = lane; i < n; i += 32) dot += to_f32(y[o + i]) * to_f32(dy[o + i]);
        dot = warp_sum(dot);
        for (int i = lane; i < n; i += 32) dx[o + i] = from_f32<T>(to_f32(y[o + i]) * (to_f32(dy[o + i]) - dot));
    }
}

// clipcu: hot
extern "C" __global__ void softmax_fwd_f32(float* __restrict__ y, const float* __restrict__ x, int rows, int n,
                                           int causal) {
    softmax_fwd(y, x, rows, n, causal);
}
// clipcu: hot
extern "C" __global__ void softmax_fwd_f16(__half* __restrict__ y, const __half* __restrict__ x, int rows, int n,
                                           int causal) {
    softmax_fwd(y, x, rows, n, causal);
}
// clipcu: hot
extern "C" __global__ void softmax_fwd_bf16(__nv_bfloat16* __restrict__ y, const __nv_bfloat16* __restrict__ x,
                                            int rows, int n, int causal) {
    softmax_fwd(y, x, rows, n, causal);
}

// clipcu: hot
extern "C" __global__ void softmax_bwd_f32(float* __restrict__ dx, const float* __restrict__ y,
                                           const float* __restrict__ dy, int rows, int n) {
    softmax_bwd(dx, y, dy, rows, n);
}
// clipcu: hot
extern "C" __global__ void softmax_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ y,
                                           const __half* __restrict__ dy, int rows, int n) {
    softmax_bwd(dx, y, dy, rows, n);
}
// clipcu: hot
extern "C" __global__ void softmax_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ y,
                                            const __nv_bfloat16* __restrict__ dy, int rows, int n) {
    softmax_bwd(dx, y, dy, rows, n);
}
