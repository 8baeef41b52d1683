// emu.h — the CUDA execution model for g++: what a .cu kernel file needs (dim3, threadIdx,
// __syncthreads, warp collectives, __half/__nv_bfloat16, atomics, math intrinsics) so that the
// same source runs on the CPU under the emulator runtime (emu.cpp).
//
// How it works. build.rs compiles each kernels/*.cu a second time as C++: a generated wrapper
// includes this header, then the .cu file, then registers every `extern "C" __global__` kernel
// (CLIPCU_EMU_KERNEL) in a table that Rust launches by name (clipcu_emu_launch). A launch runs the
// blocks one after another; every thread of a block is a fiber with its own stack; a barrier or a
// warp collective suspends the fiber and switches to the scheduler, which resumes the others.
// Because one OS thread runs a launch and fibers never preempt each other, atomics are plain
// read-modify-writes and launches are serialised by one lock (the built-ins below are globals).
//
// What kernels must follow (checked here or by the runtime, see docs/gpu.md):
// - kernels are `extern "C" __global__ void name(...)`, helpers `__device__`;
// - dynamic shared memory through dynamic_smem<T>() from common.cuh (never `extern __shared__`,
//   which g++ cannot express); it is poisoned with 0xFF bytes (NaN) before every block;
// - every thread of a block reaches every __syncthreads(), every lane named in a warp mask
//   reaches the collective (no early `return` before one): otherwise the launch fails as a
//   deadlock that names the kernel and block;
// - inline PTX only in common.cuh helpers, which call the emulator versions declared here.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

#define CLIPCU_EMU 1

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
// `__shared__` variables are function-local statics. build.rs moves their storage (the
// .bss._ZZ* sections of the kernel objects) into one section, `clipcu_emu_shared`, that the
// runtime poisons before every block, so each block starts from garbage as on a GPU.
#define __shared__ static

// ---- vector types and launch built-ins --------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// Set by the scheduler before it resumes a fiber.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

// ---- runtime entry points (emu.cpp) -----------------------------------------------------------
namespace clipcu_emu {
enum WarpOp : uint32_t {
    OP_SYNCWARP, OP_SHFL_IDX, OP_SHFL_UP, OP_SHFL_DOWN, OP_SHFL_XOR, OP_BALLOT, OP_ANY, OP_ALL,
    OP_REDUCE_ADD, OP_REDUCE_MIN_S, OP_REDUCE_MAX_S, OP_REDUCE_MIN_U, OP_REDUCE_MAX_U,
    OP_REDUCE_AND, OP_REDUCE_OR, OP_REDUCE_XOR, OP_LDMATRIX, OP_MMA_F16, OP_MMA_BF16, OP_ACTIVEMASK
};
enum BlockOp : uint32_t { BAR_SYNC, BAR_COUNT, BAR_AND, BAR_OR };
// Block barrier; returns the count / and / or of `pred` over the block (BAR_SYNC: 0).
int block_barrier(BlockOp op, int pred);
// A warp collective on 64-bit payloads: `value` is this lane's input, `b` and `c` the operands
// of shfl.sync (lane/delta/mask, and the PTX clamp+segment word). Returns this lane's result.
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int b, int c);
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: `row` is this lane's row address.
void ldmatrix(int num, bool trans, const void* row, uint32_t* r);
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, d = a·b + c per warp.
void mma_m16n8k16(bool bf16, float* d, const uint32_t* a, const uint32_t* b, const float* c);
// Dynamic shared memory of the running block (0xFF-poisoned before the block starts).
unsigned char* dynamic_smem();
// Fails the launch with a message naming kernel, block and thread (device-side assert, __trap).
[[noreturn]] void trap(const char* what, const char* file, int line);
}  // namespace clipcu_emu

// ---- synchronisation --------------------------------------------------------------------------
inline void __syncthreads() { clipcu_emu::block_barrier(clipcu_emu::BAR_SYNC, 0); }
inline int __syncthreads_count(int p) { return clipcu_emu::block_barrier(clipcu_emu::BAR_COUNT, p != 0); }
inline int __syncthreads_and(int p) { return clipcu_emu::block_barrier(clipcu_emu::BAR_AND, p != 0); }
inline int __syncthreads_or(int p) { return clipcu_emu::block_barrier(clipcu_emu::BAR_OR, p != 0); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { clipcu_emu::warp_collective(clipcu_emu::OP_SYNCWARP, mask, 0, 0, 0); }
// One OS thread runs the whole launch: fences only need to stop the compiler reordering.
inline void __threadfence() { __asm__ __volatile__("" ::: "memory"); }
inline void __threadfence_block() { __asm__ __volatile__("" ::: "memory"); }
[[noreturn]] inline void __trap() { clipcu_emu::trap("__trap()", __FILE__, __LINE__); }
#undef assert
#define assert(e) ((e) ? (void)0 : ::clipcu_emu::trap("assertion `" #e "` failed", __FILE__, __LINE__))

// ---- warp collectives -------------------------------------------------------------------------
namespace clipcu_emu {
template <class T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T> inline T from_bits(uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
}
// The `c` operand of shfl.sync for a sub-warp of `width` lanes: segment mask in bits 8..12,
// clamp in bits 0..4 (PTX ISA, shfl.sync; .up clamps at the segment start).
inline int shfl_c(int width, bool up) { return ((32 - width) << 8) | (up ? 0 : 0x1f); }
}  // namespace clipcu_emu
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    using namespace clipcu_emu;
    return from_bits<T>(warp_collective(OP_SHFL_IDX, mask, to_bits(v), src, shfl_c(width, false)));
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    using namespace clipcu_emu;
    return from_bits<T>(warp_collective(OP_SHFL_UP, mask, to_bits(v), (int)delta, shfl_c(width, true)));
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    using namespace clipcu_emu;
    return from_bits<T>(warp_collective(OP_SHFL_DOWN, mask, to_bits(v), (int)delta, shfl_c(width, false)));
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    using namespace clipcu_emu;
    return from_bits<T>(warp_collective(OP_SHFL_XOR, mask, to_bits(v), lane_mask, shfl_c(width, false)));
}
inline unsigned __ballot_sync(unsigned mask, int p) { return (unsigned)clipcu_emu::warp_collective(clipcu_emu::OP_BALLOT, mask, p != 0, 0, 0); }
inline int __any_sync(unsigned mask, int p) { return (int)clipcu_emu::warp_collective(clipcu_emu::OP_ANY, mask, p != 0, 0, 0); }
inline int __all_sync(unsigned mask, int p) { return (int)clipcu_emu::warp_collective(clipcu_emu::OP_ALL, mask, p != 0, 0, 0); }
inline unsigned __activemask() { return (unsigned)clipcu_emu::warp_collective(clipcu_emu::OP_ACTIVEMASK, 0, 0, 0, 0); }
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return (unsigned)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_ADD, mask, v, 0, 0); }
inline int __reduce_add_sync(unsigned mask, int v) { return (int)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_ADD, mask, (uint32_t)v, 0, 0); }
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return (unsigned)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_MIN_U, mask, v, 0, 0); }
inline int __reduce_min_sync(unsigned mask, int v) { return (int)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_MIN_S, mask, (uint32_t)v, 0, 0); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return (unsigned)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_MAX_U, mask, v, 0, 0); }
inline int __reduce_max_sync(unsigned mask, int v) { return (int)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_MAX_S, mask, (uint32_t)v, 0, 0); }
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return (unsigned)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_AND, mask, v, 0, 0); }
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return (unsigned)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_OR, mask, v, 0, 0); }
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return (unsigned)clipcu_emu::warp_collective(clipcu_emu::OP_REDUCE_XOR, mask, v, 0, 0); }

// ---- atomics: plain read-modify-write (one OS thread, no preemption inside) ---------------------
template <class T> inline T clipcu_emu_atomic_add(T* p, T v) { T old = *p; *p = old + v; return old; }
inline float atomicAdd(float* p, float v) { return clipcu_emu_atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return clipcu_emu_atomic_add(p, v); }
inline int atomicAdd(int* p, int v) { return (int)clipcu_emu_atomic_add((unsigned*)p, (unsigned)v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return clipcu_emu_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return clipcu_emu_atomic_add(p, v); }
inline int atomicSub(int* p, int v) { return (int)clipcu_emu_atomic_add((unsigned*)p, 0u - (unsigned)v); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return clipcu_emu_atomic_add(p, 0u - v); }
template <class T> inline T clipcu_emu_atomic_max(T* p, T v) { T old = *p; *p = old < v ? v : old; return old; }
template <class T> inline T clipcu_emu_atomic_min(T* p, T v) { T old = *p; *p = v < old ? v : old; return old; }
inline int atomicMax(int* p, int v) { return clipcu_emu_atomic_max(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return clipcu_emu_atomic_max(p, v); }
inline int atomicMin(int* p, int v) { return clipcu_emu_atomic_min(p, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return clipcu_emu_atomic_min(p, v); }
template <class T> inline T clipcu_emu_atomic_cas(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
inline int atomicCAS(int* p, int cmp, int v) { return clipcu_emu_atomic_cas(p, cmp, v); }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { return clipcu_emu_atomic_cas(p, cmp, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) { return clipcu_emu_atomic_cas(p, cmp, v); }
template <class T> inline T clipcu_emu_atomic_exch(T* p, T v) { T old = *p; *p = v; return old; }
inline int atomicExch(int* p, int v) { return clipcu_emu_atomic_exch(p, v); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return clipcu_emu_atomic_exch(p, v); }
inline float atomicExch(float* p, float v) { return clipcu_emu_atomic_exch(p, v); }

// ---- loads/stores with cache hints: plain on the CPU ----------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---- math ---------------------------------------------------------------------------------
// The fast intrinsics map to the accurate libm functions: emulated results are a reference, not
// a model of the GPU's approximation error (tests compare with a tolerance, DESIGN §7).
using std::abs;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline unsigned __float2uint_rn(float x) { return (unsigned)std::nearbyint(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
// CUDA's min/max overloads (device code uses them unqualified on ints and floats).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

#include "emu_half.h"

// ---- kernel registration (used by the wrappers build.rs generates) ---------------------------
// Each kernel is described by its name, its type-erased address, a thunk that unpacks a
// cuLaunchKernel-style `void** params` into its parameter list, and one (kind, size) per
// parameter so that a launch with the wrong argument list is an error, not a crash.
namespace clipcu_emu {
enum ArgKind : uint32_t { ARG_PTR = 0, ARG_INT = 1, ARG_UINT = 2, ARG_FLOAT = 3, ARG_POD = 4 };
struct ParamDesc { uint32_t kind, size; };
using Thunk = void (*)(void (*fn)(), void* const* params);
struct KernelInfo {
    const char* name;
    void (*fn)();
    Thunk thunk;
    uint32_t nparams;
    const ParamDesc* params;
};
template <class T> constexpr ParamDesc param_desc() {
    static_assert(std::is_trivially_copyable<T>::value, "kernel parameters must be trivially copyable");
    return {std::is_pointer<T>::value            ? ARG_PTR
            : std::is_floating_point<T>::value   ? ARG_FLOAT
            : std::is_integral<T>::value         ? (std::is_signed<T>::value ? ARG_INT : ARG_UINT)
                                                 : ARG_POD,
            (uint32_t)sizeof(T)};
}
template <class... A> struct Signature {
    static constexpr ParamDesc descs[sizeof...(A) + 1] = {param_desc<A>()..., {ARG_POD, 0}};
    template <size_t... I> static void call(void (*k)(A...), void* const* p, std::index_sequence<I...>) {
        k(*static_cast<typename std::remove_reference<A>::type*>(p[I])...);
    }
    static void thunk(void (*fn)(), void* const* p) {
        call(reinterpret_cast<void (*)(A...)>(fn), p, std::index_sequence_for<A...>{});
    }
};
template <class... A> KernelInfo kernel_info(const char* name, void (*k)(A...)) {
    return {name, reinterpret_cast<void (*)()>(k), &Signature<A...>::thunk, (uint32_t)sizeof...(A),
            Signature<A...>::descs};
}
}  // namespace clipcu_emu
#define CLIPCU_EMU_KERNEL(name)                                                                    \
    extern "C" const ::clipcu_emu::KernelInfo clipcu_emu_kernel_##name;                           \
    extern "C" const ::clipcu_emu::KernelInfo clipcu_emu_kernel_##name =                          \
        ::clipcu_emu::kernel_info(#name, &name);
