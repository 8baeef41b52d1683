// emu_half.h — __half and __nv_bfloat16 for the emulator: 16-bit storage types with IEEE
// round-to-nearest-even conversions from float (bit-exact with cuda_fp16/cuda_bf16 and with
// Rust's `half` crate for every non-NaN input; NaN becomes the canonical 0x7fff as on CUDA).
//
// Arithmetic intrinsics (__hadd, __hmul, ...) compute in float and round once. For + − × ÷ that
// is the correctly rounded 16-bit result: float has 24 ≥ 2·11+2 significand bits, so the double
// rounding is innocuous (the same holds for bf16's 8). __hfma goes through double.
#pragma once
#include <cstdint>
#include <cstring>

namespace clipcu_emu {
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// float → binary16, round to nearest even.
inline uint16_t f32_to_f16_bits(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fffu;                 // NaN (canonical, as __float2half)
    if (a >= 0x477ff000u) return sign | 0x7c00u;          // ≥ 65520 rounds to infinity
    if (a >= 0x38800000u) {                               // normal half: ≥ 2^-14
        // Rebias the exponent (127 → 15) and round the 13 dropped mantissa bits to nearest even.
        uint32_t r = a - 0x38000000u;                     // exponent −112
        uint32_t rounded = (r + 0x0fffu + ((r >> 13) & 1u)) >> 13;
        return sign | (uint16_t)rounded;                  // a carry into the exponent is correct
    }
    if (a < 0x33000000u) return sign;                     // < 2^-25: rounds to ±0 (2^-25 ties to 0)
    // Subnormal half: value = m · 2^-24 with m = full significand shifted right.
    uint32_t e = a >> 23;                                 // 102..112
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;                             // 14..24: bits dropped below 2^-24
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q += 1;  // may carry into the smallest normal
    return sign | (uint16_t)q;
}

inline float f16_bits_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));  // inf / NaN
    if (e != 0) return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
    if (m == 0) return bits_f32(sign);
    // Subnormal: normalise.
    int k = 0;
    while (!(m & 0x400u)) { m <<= 1; ++k; }
    return bits_f32(sign | ((uint32_t)(113 - k) << 23) | ((m & 0x3ffu) << 13));
}

// float → bfloat16, round to nearest even (the upper 16 bits of the rounded float).
inline uint16_t f32_to_bf16_bits(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN (canonical, as __float2bfloat16)
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }
}  // namespace clipcu_emu

struct __align__(2) __half {
    uint16_t __x;
    __half() = default;
    __half(float f) : __x(clipcu_emu::f32_to_f16_bits(f)) {}
    __half(double f) : __x(clipcu_emu::f32_to_f16_bits((float)f)) {}
    __half(int i) : __x(clipcu_emu::f32_to_f16_bits((float)i)) {}
    operator float() const { return clipcu_emu::f16_bits_to_f32(__x); }
};
struct __align__(2) __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(clipcu_emu::f32_to_bf16_bits(f)) {}
    __nv_bfloat16(double f) : __x(clipcu_emu::f32_to_bf16_bits((float)f)) {}
    __nv_bfloat16(int i) : __x(clipcu_emu::f32_to_bf16_bits((float)i)) {}
    operator float() const { return clipcu_emu::bf16_bits_to_f32(__x); }
};
struct __align__(4) __half2 { __half x, y; };
struct __align__(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

// ---- conversions --------------------------------------------------------------------------
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return (float)h; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return (float)b; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline short __half_as_short(__half h) { return (short)h.__x; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 b; b.__x = u; return b; }
inline __half2 __halves2half2(__half lo, __half hi) { return {lo, hi}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__half(lo), __half(hi)}; }
inline __half2 __float2half2_rn(float f) { return {__half(f), __half(f)}; }
inline __half2 __float22half2_rn(float2 f) { return {__half(f.x), __half(f.y)}; }
inline float2 __half22float2(__half2 h) { return {(float)h.x, (float)h.y}; }
inline float __low2float(__half2 h) { return (float)h.x; }
inline float __high2float(__half2 h) { return (float)h.y; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return {lo, hi}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__nv_bfloat16(lo), __nv_bfloat16(hi)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return {__nv_bfloat16(f), __nv_bfloat16(f)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return {__nv_bfloat16(f.x), __nv_bfloat16(f.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return {(float)b.x, (float)b.y}; }
inline float __low2float(__nv_bfloat162 b) { return (float)b.x; }
inline float __high2float(__nv_bfloat162 b) { return (float)b.y; }

// ---- arithmetic: compute in float, round once -------------------------------------------------
#define CLIPCU_EMU_H16_OPS(T, T2)                                                                  \
    inline T __hadd(T a, T b) { return T((float)a + (float)b); }                                   \
    inline T __hsub(T a, T b) { return T((float)a - (float)b); }                                   \
    inline T __hmul(T a, T b) { return T((float)a * (float)b); }                                   \
    inline T __hdiv(T a, T b) { return T((float)a / (float)b); }                                   \
    inline T __hneg(T a) { T r = a; r.__x ^= 0x8000u; return r; }                                  \
    inline T __habs(T a) { T r = a; r.__x &= 0x7fffu; return r; }                                  \
    inline T __hfma(T a, T b, T c) { return T((float)((double)(float)a * (float)b + (float)c)); }  \
    inline T __hmax(T a, T b) { return T(std::fmax((float)a, (float)b)); }                         \
    inline T __hmin(T a, T b) { return T(std::fmin((float)a, (float)b)); }                         \
    inline bool __hisnan(T a) { return (float)a != (float)a; }                                     \
    inline bool __hlt(T a, T b) { return (float)a < (float)b; }                                    \
    inline bool __hgt(T a, T b) { return (float)a > (float)b; }                                    \
    inline T2 __hadd2(T2 a, T2 b) { return {__hadd(a.x, b.x), __hadd(a.y, b.y)}; }                 \
    inline T2 __hmul2(T2 a, T2 b) { return {__hmul(a.x, b.x), __hmul(a.y, b.y)}; }                 \
    inline T2 __hfma2(T2 a, T2 b, T2 c) { return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }
CLIPCU_EMU_H16_OPS(__half, __half2)
CLIPCU_EMU_H16_OPS(__nv_bfloat16, __nv_bfloat162)
#undef CLIPCU_EMU_H16_OPS
