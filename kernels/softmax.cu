// softmax.cu — softmax over the last dim, optionally causal, f32 (src/ops/softmax/gpu.rs ↔ this
// file).
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
#include "common.cuh"

// clipcu: hot
extern "C" __global__ void softmax_fwd_f32(float* __restrict__ y, const float* __restrict__ x, int rows, int n,
                                           int causal) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * n;
        int v = causal ? (row % n) + 1 : n;
        float m = -INFINITY;
        for (int i = lane; i < v; i += 32) m = fmaxf(m, x[o + i]);
        m = warp_max(m);
        float s = 0.0f;
        for (int i = lane; i < v; i += 32) s += expf(x[o + i] - m);
        float inv = 1.0f / warp_sum(s);
        for (int i = lane; i < n; i += 32) y[o + i] = i < v ? expf(x[o + i] - m) * inv : 0.0f;
    }
}

// clipcu: hot
extern "C" __global__ void softmax_bwd_f32(float* __restrict__ dx, const float* __restrict__ y,
                                           const float* __restrict__ dy, int rows, int n) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * n;
        float dot = 0.0f;
        for (int i = lane; i < n; i += 32) dot += y[o + i] * dy[o + i];
        dot = warp_sum(dot);
        for (int i = lane; i < n; i += 32) dx[o + i] = y[o + i] * (dy[o + i] - dot);
    }
}
