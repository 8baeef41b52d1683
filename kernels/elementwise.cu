// elementwise.cu — exact GELU, forward and backward, f32 (src/ops/unary ↔ this file).
//
//   gelu(x)  = x·Φ(x) = 0.5·x·(1 + erf(x/√2))
//   gelu'(x) = Φ(x) + x·φ(x),  φ(x) = exp(−x²/2)/√(2π);   dx = dy·gelu'(x)
//
// One thread per element, a 1-D grid of ceil(n / blockDim.x) blocks (the launcher in
// src/ops/unary/gpu.rs picks blockDim.x = 256). Memory-bound: one load (two for backward) and one
// store per element, coalesced. erff is the accurate CUDA erf (not an approximation), matching
// the CPU reference in src/ops/unary/cpu.rs to a few ulp.
#include "common.cuh"

// clipcu: hot
extern "C" __global__ void gelu_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        out[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
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
