// layout.cu — data movement of the layout ops, f32 (src/ops/layout/gpu.rs, src/ops/conv2d/gpu.rs
// ↔ this file). A tensor seen as [outer, len, inner] around the axis of the op:
//
//   concat_fwd(out, part, start):  out[o, start + l, i] = part[o, l, i]   (out is [outer, total, inner];
//                                  one launch per part, each writing only its own slab, so the
//                                  launches never write the same element and together write all)
//   narrow_fwd(out, x, start):     out[o, l, i] = x[o, start + l, i]      (a slice made contiguous;
//                                  also the gradient of concat)
//   narrow_bwd(dx, g, start):      dx[o, j, i] = g[o, j − start, i] for start ≤ j < start + len, else 0
//                                  (the gradient of narrow: every element written, zeros included)
//   transpose01(out, x):           out[b, a, c] = x[a, b, c]  ([A, B, C] → [B, A, C]; conv2d's
//                                  GEMM output [O, N, P] ↔ NCHW [N, O, P])
//
// One thread per output element, 1-D grid, blocks of 256: writes are coalesced, reads are runs
// of `inner` (or C) contiguous elements. Pure copies: results are bit-exact.
#include "common.cuh"

// clipcu: hot
extern "C" __global__ void concat_fwd_f32(float* __restrict__ out, const float* __restrict__ part, int outer,
                                          int len, int inner, int total, int start) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long slab = (long long)len * inner;
    if (i < (long long)outer * slab) {
        long long o = i / slab, r = i % slab;
        out[(o * total + start) * inner + r] = part[i];
    }
}

// clipcu: hot
extern "C" __global__ void narrow_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int outer,
                                          int full, int len, int inner, int start) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long slab = (long long)len * inner;
    if (i < (long long)outer * slab) {
        long long o = i / slab, r = i % slab;
        out[i] = x[(o * full + start) * inner + r];
    }
}

// clipcu: hot
extern "C" __global__ void narrow_bwd_f32(float* __restrict__ dx, const float* __restrict__ g, int outer,
                                          int full, int len, int inner, int start) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long slab = (long long)full * inner;
    if (i < (long long)outer * slab) {
        long long o = i / slab, r = i % slab;
        int j = (int)(r / inner);
        long long e = r % inner;
        dx[i] = (j >= start && j < start + len) ? g[(o * len + (j - start)) * inner + e] : 0.0f;
    }
}

// clipcu: hot
extern "C" __global__ void transpose01_f32(float* __restrict__ out, const float* __restrict__ x, int a, int b,
                                           int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)a * b * c) {
        long long k = i % c;
        long long r = i / c;
        long long ia = r % a, ib = r / a;  // out is [B, A, C]: r = ib·A + ia
        out[i] = x[(ia * b + ib) * c + k];
    }
}
