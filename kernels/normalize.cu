// normalize.cu — L2 normalisation over the last dim (src/ops/normalize/gpu.rs ↔ this file), as
// torch.nn.functional.normalize:
//
//   forward:  ‖x‖ = √(Σ x²), y = x / max(‖x‖, eps); the norm is saved per row (f32).
//   backward: ‖x‖ > eps: dx = (dy − y·(y·dy)) / ‖x‖;  else (the map is x/eps): dx = dy / eps.
//
// One warp per row, blocks of (32, 8) = 8 rows, grid ceil(rows / 8); warp_sum butterflies for the
// row sums; warps past the last row skip the body (no lane leaves a collective early).
//
// f16/bf16 (mixed precision): the same templates on the storage type — loads widened to f32, the
// sums and the division in f32, y and dx rounded once; the norm stays f32. The backward's y·dy
// uses the rounded y the forward stored, as the graph saved it.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void l2norm_fwd(T* __restrict__ y, float* __restrict__ norm, const T* __restrict__ x,
                                           int rows, int d, float eps) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * d;
        float s = 0.0f;
        for (int i = lane; i < d; i += 32) {
            float v = to_f32(x[o + i]);
            s += v * v;
        }
        float nr = sqrtf(warp_sum(s));
        float inv = 1.0f / fmaxf(nr, eps);
        for (int i = lane; i < d; i += 32) y[o + i] = from_f32<T>(to_f32(x[o + i]) * inv);
        if (lane == 0) norm[row] = nr;
    }
}

template <class T>
__device__ __forceinline__ void l2norm_bwd(T* __restrict__ dx, const T* __restrict__ y, const float* __restrict__ norm,
                                           const T* __restrict__ dy, int rows, int d, float eps) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        long long o = (long long)row * d;
        float nr = norm[row];
        float dot = 0.0f;
        for (int i = lane; i < d; i += 32) dot += to_f32(y[o + i]) * to_f32(dy[o + i]);
        dot = warp_sum(dot);
        for (int i = lane; i < d; i += 32) {
            float g = to_f32(dy[o + i]);
            dx[o + i] = from_f32<T>(nr > eps ? (g - to_f32(y[o + i]) * dot) / nr : g / eps);
        }
    }
}

extern "C" __global__ void l2norm_fwd_f32(float* __restrict__ y, float* __restrict__ norm, const float* __restrict__ x,
                                          int rows, int d, float eps) {
    l2norm_fwd(y, norm, x, rows, d, eps);
}
extern "C" __global__ void l2norm_fwd_f16(__half* __restrict__ y, float* __restrict__ norm, const __half* __restrict__ x,
                                          int rows, int d, float eps) {
    l2norm_fwd(y, norm, x, rows, d, eps);
}
extern "C" __global__ void l2norm_fwd_bf16(__nv_bfloat16* __restrict__ y, float* __restrict__ norm,
                                           const __nv_bfloat16* __restrict__ x, int rows, int d, float eps) {
    l2norm_fwd(y, norm, x, rows, d, eps);
}

extern "C" __global__ void l2norm_bwd_f32(float* __restrict__ dx, const float* __restrict__ y,
                                          const float* __restrict__ norm, const float* __restrict__ dy, int rows,
                                          int d, float eps) {
    l2norm_bwd(dx, y, norm, dy, rows, d, eps);
}
extern "C" __global__ void l2norm_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ y,
                                          const float* __restrict__ norm, const __half* __restrict__ dy, int rows,
                                          int d, float eps) {
    l2norm_bwd(dx, y, norm, dy, rows, d, eps);
}
extern "C" __global__ void l2norm_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ y,
                                           const float* __restrict__ norm, const __nv_bfloat16* __restrict__ dy,
                                           int rows, int d, float eps) {
    l2norm_bwd(dx, y, norm, dy, rows, d, eps);
}
