// pool.cu — 2-D average pooling, NCHW, no padding, on f32, f16 or bf16 activations
// (src/ops/pool/gpu.rs ↔ this file). 16-bit (_f16, _bf16): the same templates, window sums in
// f32, each output rounded once.
//
//   forward:  out[p, oy, ox] = (1/k²)·Σ_{ky,kx < k} x[p, oy·s + ky, ox·s + kx]   (p = n·C + c)
//   backward: dx[p, y, x] = (1/k²)·Σ over the windows (oy, ox) that contain (y, x) of dy[p, oy, ox]
//
// Forward: one thread per output element, 1-D grid, blocks of 256, window summed row by row.
// Backward as a gather (no atomics, deterministic): one thread per *input* element, visiting the
// windows oy ∈ [max(0, ⌈(y − k + 1)/s⌉), min(OH − 1, ⌊y/s⌋)] (same for x) in ascending order.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void avgpool_fwd(T* __restrict__ out, const T* __restrict__ x, int planes, int h, int w,
                                            int k, int s, int oh, int ow) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)planes * oh * ow) {
        int ox = (int)(i % ow);
        int oy = (int)((i / ow) % oh);
        long long p = i / ((long long)oh * ow);
        const T* src = x + p * h * w;
        float acc = 0.0f;
        for (int ky = 0; ky < k; ++ky)
            for (int kx = 0; kx < k; ++kx) acc += to_f32(src[(long long)(oy * s + ky) * w + ox * s + kx]);
        out[i] = from_f32<T>(acc * (1.0f / (float)(k * k)));
    }
}

template <class T>
__device__ __forceinline__ void avgpool_bwd(T* __restrict__ dx, const T* __restrict__ dy, int planes, int h, int w,
                                            int k, int s, int oh, int ow) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)planes * h * w) {
        int x = (int)(i % w);
        int y = (int)((i / w) % h);
        long long p = i / ((long long)h * w);
        const T* g = dy + p * oh * ow;
        int oy0 = y - k + 1 > 0 ? (y - k + 1 + s - 1) / s : 0, oy1 = min(oh - 1, y / s);
        int ox0 = x - k + 1 > 0 ? (x - k + 1 + s - 1) / s : 0, ox1 = min(ow - 1, x / s);
        float inv = 1.0f / (float)(k * k);
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) acc += to_f32(g[(long long)oy * ow + ox]) * inv;
        dx[i] = from_f32<T>(acc);
    }
}

extern "C" __global__ void avgpool_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int planes, int h, int w, int k, int s, int oh, int ow) {
    avgpool_fwd(out, x, planes, h, w, k, s, oh, ow);
}
extern "C" __global__ void avgpool_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int planes, int h, int w, int k, int s, int oh, int ow) {
    avgpool_fwd(out, x, planes, h, w, k, s, oh, ow);
}
extern "C" __global__ void avgpool_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int planes, int h, int w, int k, int s, int oh, int ow) {
    avgpool_fwd(out, x, planes, h, w, k, s, oh, ow);
}

extern "C" __global__ void avgpool_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy, int planes, int h, int w, int k, int s, int oh, int ow) {
    avgpool_bwd(dx, dy, planes, h, w, k, s, oh, ow);
}
extern "C" __global__ void avgpool_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ dy, int planes, int h, int w, int k, int s, int oh, int ow) {
    avgpool_bwd(dx, dy, planes, h, w, k, s, oh, ow);
}
extern "C" __global__ void avgpool_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ dy, int planes, int h, int w, int k, int s, int oh, int ow) {
    avgpool_bwd(dx, dy, planes, h, w, k, s, oh, ow);
}
