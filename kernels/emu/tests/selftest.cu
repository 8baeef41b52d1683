// selftest.cu — test-only kernels for the emulator's own tests (tests/emulator.rs). They are valid
// CUDA: build.rs compiles them with nvcc too (checked in the ptxas report, never embedded as PTX),
// so the common.cuh wrappers they use are proven to compile for the GPU as well.
//
// Each kernel exercises one part of the execution model against a reference computed in Rust:
// barriers and shared memory, warp collectives with partial masks, shared-memory poison,
// half/bf16 conversions, ldmatrix and mma fragment layouts, cp.async, atomics, launch geometry,
// and the failure modes (deadlock, trap, a planted missing barrier, a planted out-of-bounds write).
#include "common.cuh"

// Launch geometry: every thread writes its coordinates at its global linear index.
extern "C" __global__ void emutest_ids(unsigned* out) {
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
    unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 12 * (block * nthreads + t);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
    o[6] = blockDim.x; o[7] = blockDim.y; o[8] = blockDim.z;
    o[9] = gridDim.x; o[10] = gridDim.y; o[11] = gridDim.z;
}

// Sum of each block's slice of x in dynamic shared memory (blockDim.x floats), any block size:
// fold the upper half onto the lower half until one value is left, a barrier between steps.
extern "C" __global__ void emutest_block_sum(const float* x, float* out, int n) {
    float* s = dynamic_smem<float>();
    unsigned t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned len = blockDim.x; len > 1;) {
        unsigned half = (len + 1) / 2;
        if (t + half < len) s[t] += s[t + half];
        len = half;
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// Block sum with static shared memory and a warp-shuffle stage (blockDim.x = 256): warp sums by
// __shfl_xor_sync, one partial per warp in shared memory, the first warp adds the partials.
extern "C" __global__ void emutest_block_sum_static(const float* x, float* out, int n) {
    __shared__ float partial[8];
    int i = blockIdx.x * 256 + threadIdx.x;
    float v = warp_sum(i < n ? x[i] : 0.0f);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float p = threadIdx.x < 8 ? partial[threadIdx.x] : 0.0f;
        p = warp_sum(p);
        if (threadIdx.x == 0) out[blockIdx.x] = p;
    }
}

// Thread 0 publishes a per-block scale in shared memory; everyone uses it. With the barrier
// (`sync` = 1) this is correct; without it, it only works when thread 0 happens to run first —
// which the emulator's normal lane order does and its reverse order does not.
extern "C" __global__ void emutest_missing_sync(const float* scale, const float* x, float* out, int n, int sync) {
    __shared__ float s_scale;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) s_scale = scale[blockIdx.x];
    if (sync) __syncthreads();
    if (i < n) out[i] = s_scale * x[i];
}

// Shared memory is garbage at block start: block 0 writes then reads; other blocks only read.
extern "C" __global__ void emutest_poison(float* out_dyn, float* out_static) {
    __shared__ float s[64];
    float* d = dynamic_smem<float>();
    unsigned t = threadIdx.x;
    if (blockIdx.x == 0) {
        d[t] = 1.0f + t;
        s[t] = 2.0f + t;
    }
    __syncthreads();
    out_dyn[blockIdx.x * blockDim.x + t] = d[t];
    out_static[blockIdx.x * blockDim.x + t] = s[t];
}

// One warp collective per launch over the lanes named in masks[warp]; lanes outside the mask do
// not take part and write `skip`. ops: 0 shfl 1 shfl_up 2 shfl_down 3 shfl_xor 4 ballot(v>0)
// 5 any(v>0) 6 all(v>0) 7 reduce_add 8 reduce_min 9 reduce_max; args are per lane.
extern "C" __global__ void emutest_warp(const int* in, const int* args, const unsigned* masks,
                                        int* out, int op, int width, int skip) {
    unsigned t = threadIdx.x, lane = t % 32;
    unsigned m = masks[t / 32];
    int v = in[t], a = args[t], r = skip;
    if (m >> lane & 1) {
        switch (op) {
            case 0: r = __shfl_sync(m, v, a, width); break;
            case 1: r = __shfl_up_sync(m, v, (unsigned)a, width); break;
            case 2: r = __shfl_down_sync(m, v, (unsigned)a, width); break;
            case 3: r = __shfl_xor_sync(m, v, a, width); break;
            case 4: r = (int)__ballot_sync(m, v > 0); break;
            case 5: r = __any_sync(m, v > 0); break;
            case 6: r = __all_sync(m, v > 0); break;
            case 7: r = __reduce_add_sync(m, v); break;
            case 8: r = __reduce_min_sync(m, v); break;
            case 9: r = __reduce_max_sync(m, v); break;
        }
    }
    out[t] = r;
}

// 64-bit payloads: a full-warp down-shuffle of doubles.
extern "C" __global__ void emutest_shfl_f64(const double* in, double* out, int delta) {
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, in[threadIdx.x], (unsigned)delta);
}

// __syncthreads_count / _and / _or of (x > 0) per block.
extern "C" __global__ void emutest_sync_votes(const float* x, int* out) {
    int p = x[blockIdx.x * blockDim.x + threadIdx.x] > 0.0f;
    int c = __syncthreads_count(p);
    int a = __syncthreads_and(p);
    int o = __syncthreads_or(p);
    if (threadIdx.x == 0) {
        out[3 * blockIdx.x] = c;
        out[3 * blockIdx.x + 1] = a;
        out[3 * blockIdx.x + 2] = o;
    }
}

// Conversions: float → f16/bf16 bits, f16/bf16 bits → float, and __hadd/__hmul of bit pairs.
extern "C" __global__ void emutest_half(const float* x, const unsigned short* bits, unsigned short* h,
                                        unsigned short* b, float* hf, float* bf, unsigned short* hsum,
                                        unsigned short* hprod, unsigned short* bsum, unsigned short* bprod, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    h[i] = __half_as_ushort(__float2half(x[i]));
    b[i] = __bfloat16_as_ushort(__float2bfloat16(x[i]));
    hf[i] = __half2float(__ushort_as_half(bits[i]));
    bf[i] = __bfloat162float(__ushort_as_bfloat16(bits[i]));
    int j = (i + 1) % n;
    __half h1 = __ushort_as_half(bits[i]), h2 = __ushort_as_half(bits[j]);
    __nv_bfloat16 b1 = __ushort_as_bfloat16(bits[i]), b2 = __ushort_as_bfloat16(bits[j]);
    hsum[i] = __half_as_ushort(__hadd(h1, h2));
    hprod[i] = __half_as_ushort(__hmul(h1, h2));
    bsum[i] = __bfloat16_as_ushort(__hadd(b1, b2));
    bprod[i] = __bfloat16_as_ushort(__hmul(b1, b2));
}

// ldmatrix .x{num}{.trans}: 32 rows of 8 b16 values staged in shared memory `stride` values apart;
// lane L passes the address of staged row rows[L] (lanes ≥ 8·num pass null: ignored). Each lane
// writes the registers it received to out[4L..4L+num).
extern "C" __global__ void emutest_ldmatrix(const unsigned short* src, const int* rows, unsigned* out,
                                            int num, int trans, int stride) {
    unsigned short* s = dynamic_smem<unsigned short>();
    unsigned lane = threadIdx.x;
    for (int k = 0; k < 8; ++k) s[lane * stride + k] = src[lane * 8 + k];
    __syncthreads();
    const void* p = (int)lane < 8 * num ? s + rows[lane] * stride : nullptr;
    uint32_t r[4] = {0, 0, 0, 0};
    if (num == 1) trans ? ldmatrix_x1_trans(r, p) : ldmatrix_x1(r, p);
    if (num == 2) trans ? ldmatrix_x2_trans(r, p) : ldmatrix_x2(r, p);
    if (num == 4) trans ? ldmatrix_x4_trans(r, p) : ldmatrix_x4(r, p);
    for (int j = 0; j < num; ++j) out[4 * lane + j] = r[j];
}

// One m16n8k16 mma with fragments gathered from global memory by the PTX ISA layout (see
// common.cuh): A 16x16 and B 16x8 (k x n) row-major 16-bit bits, C and D 16x8 row-major f32.
extern "C" __global__ void emutest_mma(const unsigned short* A, const unsigned short* B, const float* C,
                                       float* D, int bf16) {
    unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
    uint32_t a[4], b[2];
    float c[4], d[4];
    for (int i = 0; i < 4; ++i) {
        unsigned row = g + ((i & 1) ? 8 : 0), col = 2 * t + ((i & 2) ? 8 : 0);
        a[i] = (uint32_t)A[row * 16 + col] | ((uint32_t)A[row * 16 + col + 1] << 16);
    }
    for (int i = 0; i < 2; ++i) {
        unsigned k = 2 * t + (i ? 8 : 0);
        b[i] = (uint32_t)B[k * 8 + g] | ((uint32_t)B[(k + 1) * 8 + g] << 16);
    }
    for (int i = 0; i < 4; ++i) c[i] = C[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)];
    if (bf16) mma_m16n8k16_bf16(d, a, b, c);
    else mma_m16n8k16_f16(d, a, b, c);
    for (int i = 0; i < 4; ++i) D[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = d[i];
}

// D (16x8) = A (16xK) · B (Kx8), one warp, the way a GEMM kernel does it: 16-wide K chunks
// staged in shared memory (rows padded to 24 values, 48 bytes, keeping 16-byte alignment),
// A fragments by ldmatrix_x4, B fragments by ldmatrix_x2_trans, accumulation in registers.
extern "C" __global__ void emutest_mma_gemm(const unsigned short* A, const unsigned short* B, float* D, int K, int bf16) {
    unsigned short* sa = dynamic_smem<unsigned short>();  // 16 x 24
    unsigned short* sb = sa + 16 * 24;                    // 16 x 24 (8 used)
    unsigned lane = threadIdx.x, g = lane / 4, t = lane % 4;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < K; k0 += 16) {
        for (int e = lane; e < 256; e += 32) sa[(e / 16) * 24 + e % 16] = A[(e / 16) * K + k0 + e % 16];
        for (int e = lane; e < 128; e += 32) sb[(e / 8) * 24 + e % 8] = B[(k0 + e / 8) * 8 + e % 8];
        __syncthreads();
        uint32_t a[4], b[2];
        ldmatrix_x4(a, sa + (lane % 16) * 24 + (lane / 16) * 8);
        ldmatrix_x2_trans(b, sb + (lane % 16) * 24);
        if (bf16) mma_m16n8k16_bf16(acc, a, b, acc);
        else mma_m16n8k16_f16(acc, a, b, acc);
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) D[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = acc[i];
}

// cp.async 16-byte chunks into shared memory, then each thread reads another thread's chunk.
extern "C" __global__ void emutest_cp_async(const float* in, float* out) {
    float* s = dynamic_smem<float>();
    unsigned t = threadIdx.x, n = blockDim.x;
    cp_async_16(s + 4 * t, in + 4 * (blockIdx.x * n + t));
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    for (int k = 0; k < 4; ++k) out[4 * (blockIdx.x * n + t) + k] = s[4 * (n - 1 - t) + k];
}

// Atomics over the whole grid: count of positives, max of the integers, sum of the floats.
extern "C" __global__ void emutest_atomics(const int* v, const float* x, int* count, int* vmax, float* sum, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (v[i] > 0) atomicAdd(count, 1);
    atomicMax(vmax, v[i]);
    atomicAdd(sum, x[i]);
}

// Half of the block skips the barrier and exits: a deadlock the emulator must report.
extern "C" __global__ void emutest_deadlock(float* out) {
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Lanes 16..31 return before a full-warp shuffle: the lanes that stay wait forever.
extern "C" __global__ void emutest_deadlock_warp(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// A device-side assertion that fails in one thread.
extern "C" __global__ void emutest_trap(int* out, int bad) {
    assert((int)threadIdx.x != bad);
    out[threadIdx.x] = 1;
}

// Planted out-of-bounds write: with extra = 1 the last thread writes out[n], one past the end.
extern "C" __global__ void emutest_oob_write(float* out, int n, int extra) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n + extra) out[i] = 1.0f;
}
