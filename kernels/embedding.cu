// embedding.cu — embedding lookup and its deterministic gradient, f32, f16 or bf16
// (src/ops/embedding/gpu.rs ↔ this file).
//
//   forward:  out[k, j] = w[ids[k], j]                          (a row gather)
//   backward: dw[v, j] = Σ_{k : ids[k] = v} dy[k, j], k ascending (the CPU's order, so the result
//             is bit-identical to it), dw[v, :] = 0 for ids that do not occur.
//
// Storage: the table (and so the output) f32, f16 or bf16 — a gather copies values, no
// arithmetic. Backward: dy in the output's dtype, dw in the table's (the `_f16_f32` kernels: a
// 16-bit gradient into an f32 master table), the sums always f32, one rounding of a 16-bit dw.
//
// Forward: one thread per output element, 1-D grid, blocks of 256.
// Backward without float atomics, by per-row ownership: the host (which holds the ids anyway)
// builds a CSR index by counting sort — off[v]..off[v+1] are the positions k with ids[k] = v,
// ascending — and uploads it. Grid (V, ceil(D / 128)), block 128: block (v, c) owns columns
// c·128… of vocab row v and sums its positions in order. Every dw element is written exactly once
// (zero for absent ids), in an order fixed by the ids alone. Cost O(V·D + N·D) — no V×N scan.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void embedding_fwd(T* __restrict__ out, const T* __restrict__ w, const int* __restrict__ ids,
                                              int n, int d) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)n * d) {
        long long k = i / d;
        int j = (int)(i - k * d);
        out[i] = w[(long long)ids[k] * d + j];
    }
}

// clipcu: hot
extern "C" __global__ void embedding_fwd_f32(float* __restrict__ out, const float* __restrict__ w,
                                             const int* __restrict__ ids, int n, int d) {
    embedding_fwd(out, w, ids, n, d);
}
// clipcu: hot
extern "C" __global__ void embedding_fwd_f16(__half* __restrict__ out, const __half* __restrict__ w,
                                             const int* __restrict__ ids, int n, int d) {
    embedding_fwd(out, w, ids, n, d);
}
// clipcu: hot
extern "C" __global__ void embedding_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ w,
                                              const int* __restrict__ ids, int n, int d) {
    embedding_fwd(out, w, ids, n, d);
}

// dy in G, dw in W (the table's dtype), the sum in f32, rounded once when W is 16-bit.
template <class W, class G>
__device__ __forceinline__ void embedding_bwd(W* __restrict__ dw, const G* __restrict__ dy, const int* __restrict__ off,
                                              const int* __restrict__ pos, int d) {
    int v = blockIdx.x;
    int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j < d) {
        float acc = 0.0f;
        for (int p = off[v]; p < off[v + 1]; ++p) acc += to_f32(dy[(long long)pos[p] * d + j]);
        dw[(long long)v * d + j] = from_f32<W>(acc);
    }
}

// Launch: grid (V, ceil(d / 128)), block (128).
extern "C" __global__ void embedding_bwd_f32(float* __restrict__ dw, const float* __restrict__ dy,
                                             const int* __restrict__ off, const int* __restrict__ pos, int d) {
    embedding_bwd(dw, dy, off, pos, d);
}
extern "C" __global__ void embedding_bwd_f16(__half* __restrict__ dw, const __half* __restrict__ dy,
                                             const int* __restrict__ off, const int* __restrict__ pos, int d) {
    embedding_bwd(dw, dy, off, pos, d);
}
extern "C" __global__ void embedding_bwd_bf16(__nv_bfloat16* __restrict__ dw, const __nv_bfloat16* __restrict__ dy,
                                              const int* __restrict__ off, const int* __restrict__ pos, int d) {
    embedding_bwd(dw, dy, off, pos, d);
}
// 16-bit dy into an f32 table's gradient (f32 master weights): named <dy>_f32.
extern "C" __global__ void embedding_bwd_f16_f32(float* __restrict__ dw, const __half* __restrict__ dy,
                                                 const int* __restrict__ off, const int* __restrict__ pos, int d) {
    embedding_bwd(dw, dy, off, pos, d);
}
extern "C" __global__ void embedding_bwd_bf16_f32(float* __restrict__ dw, const __nv_bfloat16* __restrict__ dy,
                                                  const int* __restrict__ off, const int* __restrict__ pos, int d) {
    embedding_bwd(dw, dy, off, pos, d);
}
