// common.cuh — helpers shared by every kernel family, for both compilers: nvcc (PTX for the GPU)
// and g++ against the emulator (kernels/emu/emu.h). Everything a kernel needs beyond plain CUDA C++
// lives here: dynamic shared memory, warp reductions, 16-bit conversions and stochastic rounding
// (with its counter-based random bits), and the wrappers around the instructions that have no
// C++ spelling (ldmatrix, mma.sync, cp.async).
//
// Rule (DESIGN §4): inline PTX appears only in this file, and only in a helper that also has an
// emulator implementation (the #else branch), so every kernel runs under the emulator.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane / 4 and t = lane % 4, each 32-bit register holding two 16-bit values, low half first:
//   A 16x16 row-major, a[4]: a[0] (row g,   cols 2t,2t+1)   a[1] (row g+8, cols 2t,2t+1)
//                            a[2] (row g,   cols 2t+8,+9)   a[3] (row g+8, cols 2t+8,+9)
//   B 16x8 (k x n),  b[2]:   b[0] (rows 2t,2t+1, col g)     b[1] (rows 2t+8,2t+9, col g)
//   C/D 16x8 f32,    c[4]:   c[0],c[1] (row g,   cols 2t,2t+1)  c[2],c[3] (row g+8, same cols)
// ldmatrix (m8n8, b16): matrix m takes its 8 row addresses from lanes 8m..8m+7; lane L receives
// row L/4, cols 2(L%4),2(L%4)+1 of each matrix (with .trans: rows 2(L%4),+1 of col L/4). So
// ldmatrix_x4 over the four 8x8 quadrants of a 16x16 row-major tile (lanes 0-7 rows 0-7 col 0,
// 8-15 rows 8-15 col 0, 16-23 rows 0-7 col 8, 24-31 rows 8-15 col 8) yields exactly a[4] above,
// and ldmatrix_x2_trans over a row-major 16x8 (k x n) tile yields b[2].
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#else
#include "emu.h"
#endif

// ---- dynamic shared memory ------------------------------------------------------------------
// The launch's dynamic shared memory as T*. Use this, never `extern __shared__` in a kernel:
// the emulator cannot express it (it poisons this buffer with NaN before each block instead).
template <class T> __device__ __forceinline__ T* dynamic_smem() {
#ifdef __CUDACC__
    extern __shared__ __align__(16) unsigned char clipcu_dynamic_smem[];
    return reinterpret_cast<T*>(clipcu_dynamic_smem);
#else
    return reinterpret_cast<T*>(clipcu_emu::dynamic_smem());
#endif
}

// ---- warp reductions (full warp; every lane gets the result) ------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ---- element types: load as f32, store rounded -------------------------------------------------
// Kernels templated on the storage type T ∈ {float, __half, __nv_bfloat16} read with to_f32 and
// write with from_f32<T>: all arithmetic and accumulation is f32, and a 16-bit output is rounded
// once (round to nearest even). For T = float both are the identity, so a template's f32
// instantiation is the same code as a hand-written f32 kernel.
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// ---- stochastic rounding (f32 → f16 / bf16) ----------------------------------------------------
// Rounding x up with probability (x − lo)/(hi − lo) (lo, hi its 16-bit neighbours) makes the
// stored value an unbiased estimate of x: many updates each smaller than half an ulp still add up
// (round-to-nearest drops every one of them). The random bits are a counter-based hash of
// (element index, step, tensor id, stream) — never of thread or block ids — so Cuda, the emulator,
// any launch geometry and the CPU reference (src/optim/sround.rs, which documents and mirrors
// these functions bit for bit) draw the same bits for the same element:
//   key  = sr_key(step, tensor_id, stream)   (once per tensor and launch)
//   bits = sr_bits(key, index)               (64 bits per element: splitmix64 at key + (index+1)·γ)
// `stream` separates the draws of different arrays of one tensor (weights, m, v) in one step.
// All integer arithmetic: no PTX, no float rounding mode involved.
__device__ __forceinline__ uint64_t sr_mix64(uint64_t z) {
    // splitmix64's finaliser (Steele, Lea & Flood 2014): a bijection with full avalanche
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ uint64_t sr_key(uint64_t step, uint32_t tensor_id, uint32_t stream) {
    return sr_mix64(sr_mix64(step + 0x9E3779B97F4A7C15ull) ^ (((uint64_t)tensor_id << 8) | (stream & 0xffu)));
}
__device__ __forceinline__ uint64_t sr_bits(uint64_t key, uint64_t index) {
    return sr_mix64(key + (index + 1) * 0x9E3779B97F4A7C15ull);
}

// f32 → f16 bits, rounded stochastically with the random bits r. NaN → the canonical 0x7fff,
// ±inf kept; a finite x whose rounding would leave the finite range saturates at ±65504 and adds
// one to *overflow (the caller sums and reports it).
// Normal f16 range (|x| ≥ 2^-14): the 13 mantissa bits f16 drops are exactly what a uniform 13-bit
// r decides on — adding r to them and truncating rounds up with probability dropped/2^13, exactly
// unbiased; a carry into the exponent is the correct next value.
// Subnormal f16 range: the spacing is the subnormal ulp 2^-24 whatever the exponent of x, so the
// dropped part is the full 24-bit significand shifted right by 126 − e (14 or more bits), rounded
// with that many random bits: exact up to a 63-bit shift; below |x| < 2^-63 (a shift of 64 or
// more) the result is 0, a bias under 2^-39 of the subnormal ulp.
__device__ __forceinline__ uint16_t sround_f16_bits(float x, uint64_t r, unsigned int* overflow) {
    const uint32_t u = __float_as_uint(x);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fffu;
    if (a == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    uint32_t q;
    if (a >= 0x38800000u) {
        q = (a - 0x38000000u + (uint32_t)(r & 0x1fffu)) >> 13;  // rebias 127 → 15, round 13 bits
        if (q >= 0x7c00u) {
            q = 0x7bffu;
            *overflow += 1;
        }
    } else {
        const uint32_t e = a >> 23;  // 0 (an f32 subnormal) … 112
        const uint64_t m = (a & 0x7fffffu) | (e ? 0x800000u : 0u);
        const uint32_t shift = e ? 126u - e : 125u;  // |x| = m·2^-shift in units of 2^-24
        q = shift < 64u ? (uint32_t)((m + (r & ((1ull << shift) - 1ull))) >> shift) : 0u;
    }
    return (uint16_t)(sign | q);
}

// f32 → bf16 bits, rounded stochastically: bf16 is the top half of an f32 (f32 subnormals
// included, with the same uniform spacing), so 16 random bits added to the dropped half decide,
// exactly unbiased. NaN → 0x7fff, ±inf kept, finite overflow saturates at ±max finite
// (0x7f7f, ≈ 3.39e38) and counts.
__device__ __forceinline__ uint16_t sround_bf16_bits(float x, uint64_t r, unsigned int* overflow) {
    const uint32_t u = __float_as_uint(x);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fffu;
    if (a == 0x7f800000u) return (uint16_t)(u >> 16);
    uint32_t q = (a + (uint32_t)(r & 0xffffu)) >> 16;
    if (q >= 0x7f80u) {
        q = 0x7f7fu;
        *overflow += 1;
    }
    return (uint16_t)(((u >> 16) & 0x8000u) | q);
}

// Stochastic rounding as a storage conversion, like from_f32<T> (T = float: x itself).
template <class T> __device__ __forceinline__ T sround(float x, uint64_t r, unsigned int* overflow);
template <> __device__ __forceinline__ float sround<float>(float x, uint64_t, unsigned int*) { return x; }
template <> __device__ __forceinline__ __half sround<__half>(float x, uint64_t r, unsigned int* overflow) {
    return __ushort_as_half(sround_f16_bits(x, r, overflow));
}
template <> __device__ __forceinline__ __nv_bfloat16 sround<__nv_bfloat16>(float x, uint64_t r, unsigned int* overflow) {
    return __ushort_as_bfloat16(sround_bf16_bits(x, r, overflow));
}

// ---- 16-bit packing ---------------------------------------------------------------------------
__device__ __forceinline__ uint32_t pack_half2(__half lo, __half hi) {
    return (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
}
__device__ __forceinline__ uint32_t pack_bf162(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}

// ---- ldmatrix: warp-wide loads of 8x8 b16 matrices from shared memory ---------------------------
// `row` is this lane's row address (16-byte aligned, in shared memory); see the layout above.
#ifdef __CUDACC__
#define CLIPCU_LDMATRIX(NUM, TRANS, ...)                                                          \
    uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));                            \
    asm volatile("ldmatrix.sync.aligned.m8n8." NUM TRANS ".shared.b16 " __VA_ARGS__ : "memory")
#endif
__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* row) {
#ifdef __CUDACC__
    CLIPCU_LDMATRIX("x1", "", "{%0}, [%1];" : "=r"(r[0]) : "r"(a));
#else
    clipcu_emu::ldmatrix(1, false, row, r);
#endif
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
#ifdef __CUDACC__
    CLIPCU_LDMATRIX("x2", "", "{%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
#else
    clipcu_emu::ldmatrix(2, false, row, r);
#endif
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
#ifdef __CUDACC__
    CLIPCU_LDMATRIX("x4", "", "{%0, %1, %2, %3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#else
    clipcu_emu::ldmatrix(4, false, row, r);
#endif
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* row) {
#ifdef __CUDACC__
    CLIPCU_LDMATRIX("x1", ".trans", "{%0}, [%1];" : "=r"(r[0]) : "r"(a));
#else
    clipcu_emu::ldmatrix(1, true, row, r);
#endif
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
#ifdef __CUDACC__
    CLIPCU_LDMATRIX("x2", ".trans", "{%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
#else
    clipcu_emu::ldmatrix(2, true, row, r);
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
#ifdef __CUDACC__
    CLIPCU_LDMATRIX("x4", ".trans", "{%0, %1, %2, %3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#else
    clipcu_emu::ldmatrix(4, true, row, r);
#endif
}

// ---- mma.sync m16n8k16 with f32 accumulation: d = a·b + c over the warp -----------------------
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#ifdef __CUDACC__
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    clipcu_emu::mma_m16n8k16(false, d, a, b, c);
#endif
}
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#ifdef __CUDACC__
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    clipcu_emu::mma_m16n8k16(true, d, a, b, c);
#endif
}

// ---- cp.async: 16-byte global → shared copies, asynchronous on sm_80+ ---------------------------
// The emulator copies at once (it has no memory pipeline), so commit/wait are no-ops there; a
// missing wait is therefore only caught on the GPU, a missing __syncthreads by reverse mode.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
#ifdef __CUDACC__
    uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
#else
    std::memcpy(smem, gmem, 16);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDACC__
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Wait until at most N committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef __CUDACC__
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
