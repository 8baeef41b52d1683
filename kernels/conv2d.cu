// conv2d.cu — im2col and col2im for conv2d, NCHW, zero padding, f32, f16 or bf16
// (src/ops/conv2d/gpu.rs ↔ this file; 16-bit: the same templates, im2col a copy, col2im reading
// the f32 dcol of the GEMM and writing dx in the activations' dtype, its sums rounded once). The GEMMs stay cuBLAS on Cuda (the CPU GEMM on Emu); these kernels move the data.
//
//   col [K, N·P], K = C·kh·kw (row k = (c·kh + ki)·kw + kj), P = OH·OW (column j·P + oy·OW + ox):
//   im2col: col[k, j·P + oy·OW + ox] = x[j, c, oy·s + ki − pad, ox·s + kj − pad]  (0 outside)
//   col2im: dx[j, c, y, x] = Σ_{ki, kj : y = oy·s + ki − pad, x = ox·s + kj − pad, oy < OH, ox < OW}
//           dcol[k, j·P + oy·OW + ox]   — the adjoint of im2col (the input gradient)
//
// im2col: one thread per col element (coalesced writes), 1-D grid, blocks of 256. col2im as a
// gather (no atomics, deterministic): one thread per input element, visiting (ki, kj) in order —
// the CPU's col2im adds in the same order, so the two agree bit for bit.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void im2col_fwd(T* __restrict__ col, const T* __restrict__ x, int n, int c, int h, int w,
                                           int kh, int kw, int s, int pad, int oh, int ow) {
    long long p = (long long)oh * ow;
    long long ld = (long long)n * p;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)c * kh * kw * ld) {
        long long k = i / ld, q = i % ld;
        int j = (int)(q / p), pp = (int)(q % p);
        int oy = pp / ow, ox = pp % ow;
        int kj = (int)(k % kw), ki = (int)((k / kw) % kh), ch = (int)(k / ((long long)kw * kh));
        int y = oy * s + ki - pad, xx = ox * s + kj - pad;
        col[i] = (y >= 0 && y < h && xx >= 0 && xx < w) ? x[(((long long)j * c + ch) * h + y) * w + xx]
                                                        : from_f32<T>(0.0f);
    }
}

// dcol is f32 for every T: the GEMM that makes it (Wᵀ·dY) accumulates in f32 and hands its sums
// over unrounded, so each dx element — a sum of up to kh·kw of them — is rounded to T once.
template <class T>
__device__ __forceinline__ void col2im_bwd(T* __restrict__ dx, const float* __restrict__ dcol, int n, int c, int h, int w,
                                           int kh, int kw, int s, int pad, int oh, int ow) {
    long long p = (long long)oh * ow;
    long long ld = (long long)n * p;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)n * c * h * w) {
        int xx = (int)(i % w);
        int y = (int)((i / w) % h);
        int ch = (int)((i / ((long long)w * h)) % c);
        int j = (int)(i / ((long long)w * h * c));
        float acc = 0.0f;
        for (int ki = 0; ki < kh; ++ki) {
            int ty = y + pad - ki;
            if (ty < 0 || ty % s != 0 || ty / s >= oh) continue;
            for (int kj = 0; kj < kw; ++kj) {
                int tx = xx + pad - kj;
                if (tx < 0 || tx % s != 0 || tx / s >= ow) continue;
                long long k = ((long long)ch * kh + ki) * kw + kj;
                acc += dcol[k * ld + (long long)j * p + (long long)(ty / s) * ow + tx / s];
            }
        }
        dx[i] = from_f32<T>(acc);
    }
}

// clipcu: hot
extern "C" __global__ void im2col_fwd_f32(float* __restrict__ col, const float* __restrict__ x, int n, int c, int h, int w, int kh, int kw, int s, int pad, int oh, int ow) {
    im2col_fwd(col, x, n, c, h, w, kh, kw, s, pad, oh, ow);
}
// clipcu: hot
extern "C" __global__ void im2col_fwd_f16(__half* __restrict__ col, const __half* __restrict__ x, int n, int c, int h, int w, int kh, int kw, int s, int pad, int oh, int ow) {
    im2col_fwd(col, x, n, c, h, w, kh, kw, s, pad, oh, ow);
}
// clipcu: hot
extern "C" __global__ void im2col_fwd_bf16(__nv_bfloat16* __restrict__ col, const __nv_bfloat16* __restrict__ x, int n, int c, int h, int w, int kh, int kw, int s, int pad, int oh, int ow) {
    im2col_fwd(col, x, n, c, h, w, kh, kw, s, pad, oh, ow);
}

// clipcu: hot
extern "C" __global__ void col2im_bwd_f32(float* __restrict__ dx, const float* __restrict__ dcol, int n, int c, int h, int w, int kh, int kw, int s, int pad, int oh, int ow) {
    col2im_bwd(dx, dcol, n, c, h, w, kh, kw, s, pad, oh, ow);
}
// clipcu: hot
extern "C" __global__ void col2im_bwd_f16(__half* __restrict__ dx, const float* __restrict__ dcol, int n, int c, int h, int w, int kh, int kw, int s, int pad, int oh, int ow) {
    col2im_bwd(dx, dcol, n, c, h, w, kh, kw, s, pad, oh, ow);
}
// clipcu: hot
extern "C" __global__ void col2im_bwd_bf16(__nv_bfloat16* __restrict__ dx, const float* __restrict__ dcol, int n, int c, int h, int w, int kh, int kw, int s, int pad, int oh, int ow) {
    col2im_bwd(dx, dcol, n, c, h, w, kh, kw, s, pad, oh, ow);
}
