// normalize.cu — L2 normalisation over the last dim, f32 (src/ops/normalize/gpu.rs ↔ this file),
// as torch.nn.functional.normalize:
//
//   forward:  ‖x‖ = √(Σ x²), y = x / max(‖x‖, eps); the norm is saved per row.
//   backward: ‖x‖ > eps: dx = (dy − y·(y·dy)) / ‖x‖;  else (the map is x/eps): dx = dy / eps.
//
// One warp per row, blocks of (32, 8) = 8 rows, grid ceil(rows / 8); warp_sum butterflies for the
// row sums; warps past the last row skip the body (no lane leaves a collective early).
#include "common.cuh"

extern "C" __global__ void l2norm_fwd_f32(float* __restrict__ y, float* __restrict__ norm, const float* __restrict__ x,
                                          int rows, int d, float eps) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * d;
        float s = 0.0f;
        for (int i = lane; i < d; i += 32) s += x[o + i] * x[o + i];
        float nr = sqrtf(warp_sum(s));
        float inv = 1.0f / fmaxf(nr, eps);
        for (int i = lane; i < d; i += 32) y[o + i] = x[o + i] * inv;
        if (lane == 0) norm[row] = nr;
    }
}

extern "C" __global__ void l2norm_bwd_f32(float* __restrict__ dx, const float* __restrict__ y,
                                          const float* __restrict__ norm, const float* __restrict__ dy, int rows,
                                          int d, float eps) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * d;
        float nr = norm[row];
        float dot = 0.0f;
        for (int i = lane; i < d; i += 32) dot += y[o + i] * dy[o + i];
        dot = warp_sum(dot);
        for (int i = lane; i < d; i += 32) dx[o + i] = nr > eps ? (dy[o + i] - y[o + i] * dot) / nr : dy[o + i] / eps;
    }
}
