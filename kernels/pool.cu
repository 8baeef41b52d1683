// pool.cu — 2-D average pooling, NCHW, no padding, f32 (src/ops/pool/gpu.rs ↔ this file).
//
//   forward:  out[p, oy, ox] = (1/k²)·Σ_{ky,kx < k} x[p, oy·s + ky, ox·s + kx]   (p = n·C + c)
//   backward: dx[p, y, x] = (1/k²)·Σ over the windows (oy, ox) that contain (y, x) of dy[p, oy, ox]
//
// Forward: one thread per output element, 1-D grid, blocks of 256, window summed row by row.
// Backward as a gather (no atomics, deterministic): one thread per *input* element, visiting the
// windows oy ∈ [max(0, ⌈(y − k + 1)/s⌉), min(OH − 1, ⌊y/s⌋)] (same for x) in ascending order.
#include "common.cuh"

extern "C" __global__ void avgpool_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int planes, int h,
                                           int w, int k, int s, int oh, int ow) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)planes * oh * ow) {
        int ox = (int)(i % ow);
        int oy = (int)((i / ow) % oh);
        long long p = i / ((long long)oh * ow);
        const float* src = x + p * h * w;
        float acc = 0.0f;
        for (int ky = 0; ky < k; ++ky)
            for (int kx = 0; kx < k; ++kx) acc += src[(oy * s + ky) * w + ox * s + kx];
        out[i] = acc * (1.0f / (float)(k * k));
    }
}

extern "C" __global__ void avgpool_bwd_f32(float* __restrict__ dx, const float* __restrict__ dy, int planes, int h,
                                           int w, int k, int s, int oh, int ow) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)planes * h * w) {
        int x = (int)(i % w);
        int y = (int)((i / w) % h);
        long long p = i / ((long long)h * w);
        const float* g = dy + p * oh * ow;
        int oy0 = y - k + 1 > 0 ? (y - k + 1 + s - 1) / s : 0, oy1 = min(oh - 1, y / s);
        int ox0 = x - k + 1 > 0 ? (x - k + 1 + s - 1) / s : 0, ox1 = min(ow - 1, x / s);
        float inv = 1.0f / (float)(k * k);
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) acc += g[oy * ow + ox] * inv;
        dx[i] = acc;
    }
}
