// layout.cu — data movement of the layout ops (src/ops/layout/gpu.rs, src/ops/conv2d/gpu.rs,
// Tensor::try_contiguous / try_to_dtype ↔ this file). A tensor seen as [outer, len, inner]
// around the axis of the op (each f32, f16 or bf16 — `_<dtype>`, one template on the storage
// type: copies, so 16-bit values move bit-exactly):
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
//
// Any view made contiguous, f32/f16/bf16 (Tensor::try_contiguous on Emu and Cuda):
//
//   strided_copy(out, in, n, offset, rank, d0..d5, s0..s5):
//                                  out[i] = in[offset + Σ_k idx_k(i)·s_k], idx_k(i) the row-major
//                                  digits of i in the sizes d_k; dims listed innermost first
//                                  (d0, s0 is the fastest-varying dim), k < rank ≤ 6
//
// `in` is the whole storage of the view (element 0), `out` a fresh row-major buffer of n
// elements. The launcher first merges adjacent dims that are one run of memory (s_k·d_k = s_k+1)
// and drops size-1 dims, so a permuted or narrowed activation is typically rank 2–4 here; a
// stride of 0 (a broadcast / expand view) reads one element many times. Sizes, strides, the
// offset and n are 64-bit: views of more than 2³¹ elements, or into storage that large, index
// correctly. A grid-stride loop (the launcher caps the grid) so that n is not bounded by the
// grid size. Writes are coalesced; reads are as coalesced as the innermost stride allows.
//
// dtype casts (Tensor::try_to_dtype on Emu and Cuda), contiguous in and out:
//
//   cast_<from>_to_<to>(out, in, n): out[i] = round(in[i]) for f32 → f16/bf16 (round to nearest
//                                  even, overflow to ±inf, as the `half` crate on the CPU); exact
//                                  widening for f16/bf16 → f32; f16 ↔ bf16 through f32 (the
//                                  widening is exact, so there is one rounding, as on the CPU).
//                                  NaN becomes the canonical 16-bit NaN (0x7fff), as __float2half
//                                  does; the CPU's `half` keeps payload bits — the only difference.
//
//   cast_sr_f32_to_<f16|bf16>(out, in, n, step, tensor_id, stream, overflow): out[i] = in[i]
//                                  rounded stochastically (common.cuh: sround_*_bits) with the bits
//                                  sr_bits(sr_key(step, tensor_id, stream), i) — a hash of the
//                                  element index, never of the thread, so any grid and block size
//                                  give the same bits as the CPU's src/optim/sround.rs. Finite
//                                  values that would round past the largest finite saturate
//                                  there; each thread counts them and adds its count to
//                                  *overflow (an integer sum: the total is order-independent).
#include "common.cuh"

template <class T>
__device__ __forceinline__ void concat_fwd(T* __restrict__ out, const T* __restrict__ part, int outer, int len,
                                           int inner, int total, int start) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long slab = (long long)len * inner;
    if (i < (long long)outer * slab) {
        long long o = i / slab, r = i % slab;
        out[(o * total + start) * inner + r] = part[i];
    }
}

template <class T>
__device__ __forceinline__ void narrow_fwd(T* __restrict__ out, const T* __restrict__ x, int outer, int full, int len,
                                           int inner, int start) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long slab = (long long)len * inner;
    if (i < (long long)outer * slab) {
        long long o = i / slab, r = i % slab;
        out[i] = x[(o * full + start) * inner + r];
    }
}

template <class T>
__device__ __forceinline__ void narrow_bwd(T* __restrict__ dx, const T* __restrict__ g, int outer, int full, int len,
                                           int inner, int start) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long slab = (long long)full * inner;
    if (i < (long long)outer * slab) {
        long long o = i / slab, r = i % slab;
        int j = (int)(r / inner);
        long long e = r % inner;
        dx[i] = (j >= start && j < start + len) ? g[(o * len + (j - start)) * inner + e] : from_f32<T>(0.0f);
    }
}

template <class T>
__device__ __forceinline__ void transpose01(T* __restrict__ out, const T* __restrict__ x, int a, int b, int c) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)a * b * c) {
        long long k = i % c;
        long long r = i / c;
        long long ia = r % a, ib = r / a;  // out is [B, A, C]: r = ib·A + ia
        out[i] = x[(ia * b + ib) * c + k];
    }
}

// clipcu: hot
extern "C" __global__ void concat_fwd_f32(float* __restrict__ out, const float* __restrict__ part, int outer, int len, int inner, int total, int start) {
    concat_fwd(out, part, outer, len, inner, total, start);
}
// clipcu: hot
extern "C" __global__ void concat_fwd_f16(__half* __restrict__ out, const __half* __restrict__ part, int outer, int len, int inner, int total, int start) {
    concat_fwd(out, part, outer, len, inner, total, start);
}
// clipcu: hot
extern "C" __global__ void concat_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ part, int outer, int len, int inner, int total, int start) {
    concat_fwd(out, part, outer, len, inner, total, start);
}

// clipcu: hot
extern "C" __global__ void narrow_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int outer, int full, int len, int inner, int start) {
    narrow_fwd(out, x, outer, full, len, inner, start);
}
// clipcu: hot
extern "C" __global__ void narrow_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int outer, int full, int len, int inner, int start) {
    narrow_fwd(out, x, outer, full, len, inner, start);
}
// clipcu: hot
extern "C" __global__ void narrow_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int outer, int full, int len, int inner, int start) {
    narrow_fwd(out, x, outer, full, len, inner, start);
}

// clipcu: hot
extern "C" __global__ void narrow_bwd_f32(float* __restrict__ dx, const float* __restrict__ g, int outer, int full, int len, int inner, int start) {
    narrow_bwd(dx, g, outer, full, len, inner, start);
}
// clipcu: hot
extern "C" __global__ void narrow_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ g, int outer, int full, int len, int inner, int start) {
    narrow_bwd(dx, g, outer, full, len, inner, start);
}
// clipcu: hot
extern "C" __global__ void narrow_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ g, int outer, int full, int len, int inner, int start) {
    narrow_bwd(dx, g, outer, full, len, inner, start);
}

// clipcu: hot
extern "C" __global__ void transpose01_f32(float* __restrict__ out, const float* __restrict__ x, int a, int b, int c) {
    transpose01(out, x, a, b, c);
}
// clipcu: hot
extern "C" __global__ void transpose01_f16(__half* __restrict__ out, const __half* __restrict__ x, int a, int b, int c) {
    transpose01(out, x, a, b, c);
}
// clipcu: hot
extern "C" __global__ void transpose01_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int a, int b, int c) {
    transpose01(out, x, a, b, c);
}

// ---- any strided view → row-major -------------------------------------------------------------

template <class T>
__device__ __forceinline__ void strided_copy(T* __restrict__ out, const T* __restrict__ in, long long n,
                                             long long offset, int rank, const long long (&d)[6],
                                             const long long (&s)[6]) {
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        // Peel the row-major digits of i off from the innermost dim outward: digit k is
        // r mod d_k, and r / d_k carries on to dim k+1. 64-bit throughout: with int, i or a
        // product digit·stride past 2³¹ would wrap and read before the buffer.
        long long r = i, src = offset;
#pragma unroll
        for (int k = 0; k < 6; ++k) {
            if (k < rank) {
                long long q = r / d[k];
                src += (r - q * d[k]) * s[k];
                r = q;
            }
        }
        out[i] = in[src];
    }
}

// Launch: grid min(ceil(n / 256), 4096), block 256. Not marked as a hot kernel yet: the 64-bit
// divisions become ptxas subroutine calls, and no ptxas report has been read for them.
extern "C" __global__ void strided_copy_f32(float* __restrict__ out, const float* __restrict__ in, long long n,
                                            long long offset, int rank, long long d0, long long d1, long long d2,
                                            long long d3, long long d4, long long d5, long long s0, long long s1,
                                            long long s2, long long s3, long long s4, long long s5) {
    strided_copy(out, in, n, offset, rank, {d0, d1, d2, d3, d4, d5}, {s0, s1, s2, s3, s4, s5});
}

extern "C" __global__ void strided_copy_f16(__half* __restrict__ out, const __half* __restrict__ in, long long n,
                                            long long offset, int rank, long long d0, long long d1, long long d2,
                                            long long d3, long long d4, long long d5, long long s0, long long s1,
                                            long long s2, long long s3, long long s4, long long s5) {
    strided_copy(out, in, n, offset, rank, {d0, d1, d2, d3, d4, d5}, {s0, s1, s2, s3, s4, s5});
}

extern "C" __global__ void strided_copy_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ in,
                                             long long n, long long offset, int rank, long long d0, long long d1,
                                             long long d2, long long d3, long long d4, long long d5, long long s0,
                                             long long s1, long long s2, long long s3, long long s4, long long s5) {
    strided_copy(out, in, n, offset, rank, {d0, d1, d2, d3, d4, d5}, {s0, s1, s2, s3, s4, s5});
}

// ---- dtype casts ------------------------------------------------------------------------------

template <class From, class To>
__device__ __forceinline__ void cast(To* __restrict__ out, const From* __restrict__ in, long long n) {
    long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        out[i] = from_f32<To>(to_f32(in[i]));
}

// Launch: grid min(ceil(n / 256), 4096), block 256.
extern "C" __global__ void cast_f32_to_f16(__half* __restrict__ out, const float* __restrict__ in, long long n) {
    cast(out, in, n);
}
extern "C" __global__ void cast_f32_to_bf16(__nv_bfloat16* __restrict__ out, const float* __restrict__ in,
                                            long long n) {
    cast(out, in, n);
}
extern "C" __global__ void cast_f16_to_f32(float* __restrict__ out, const __half* __restrict__ in, long long n) {
    cast(out, in, n);
}
extern "C" __global__ void cast_bf16_to_f32(float* __restrict__ out, const __nv_bfloat16* __restrict__ in,
                                            long long n) {
    cast(out, in, n);
}
extern "C" __global__ void cast_f16_to_bf16(__nv_bfloat16* __restrict__ out, const __half* __restrict__ in,
                                            long long n) {
    cast(out, in, n);
}
extern "C" __global__ void cast_bf16_to_f16(__half* __restrict__ out, const __nv_bfloat16* __restrict__ in,
                                            long long n) {
    cast(out, in, n);
}

// Launch: grid-stride, any grid and block (the launcher: as the casts above; tests vary them).
template <class To>
__device__ __forceinline__ void cast_sr(To* __restrict__ out, const float* __restrict__ in, long long n,
                                        long long step, unsigned int tensor_id, unsigned int stream,
                                        unsigned long long* __restrict__ overflow) {
    const uint64_t key = sr_key((uint64_t)step, tensor_id, stream);
    unsigned int over = 0;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = sround<To>(in[i], sr_bits(key, (uint64_t)i), &over);
    if (over) atomicAdd(overflow, (unsigned long long)over);
}
extern "C" __global__ void cast_sr_f32_to_f16(__half* __restrict__ out, const float* __restrict__ in, long long n,
                                              long long step, unsigned int tensor_id, unsigned int stream,
                                              unsigned long long* __restrict__ overflow) {
    cast_sr(out, in, n, step, tensor_id, stream, overflow);
}
extern "C" __global__ void cast_sr_f32_to_bf16(__nv_bfloat16* __restrict__ out, const float* __restrict__ in,
                                               long long n, long long step, unsigned int tensor_id,
                                               unsigned int stream, unsigned long long* __restrict__ overflow) {
    cast_sr(out, in, n, step, tensor_id, stream, overflow);
}
