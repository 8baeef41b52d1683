// embedding.cu — embedding lookup and its deterministic gradient, f32 (src/ops/embedding/gpu.rs
// ↔ this file).
//
//   forward:  out[k, j] = w[ids[k], j]                          (a row gather)
//   backward: dw[v, j] = Σ_{k : ids[k] = v} dy[k, j], k ascending (the CPU's order, so the result
//             is bit-identical to it), dw[v, :] = 0 for ids that do not occur.
//
// Forward: one thread per output element, 1-D grid, blocks of 256.
// Backward without float atomics, by per-row ownership: the host (which holds the ids anyway)
// builds a CSR index by counting sort — off[v]..off[v+1] are the positions k with ids[k] = v,
// ascending — and uploads it. Grid (V, ceil(D / 128)), block 128: block (v, c) owns columns
// c·128… of vocab row v and sums its positions in order. Every dw element is written exactly once
// (zero for absent ids), in an order fixed by the ids alone. Cost O(V·D + N·D) — no V×N scan.
#include "common.cuh"

// clipcu: hot
extern "C" __global__ void embedding_fwd_f32(float* __restrict__ out, const float* __restrict__ w,
                                             const int* __restrict__ ids, int n, int d) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)n * d) {
        long long k = i / d;
        int j = (int)(i - k * d);
        out[i] = w[(long long)ids[k] * d + j];
    }
}

// Launch: grid (V, ceil(d / 128)), block (128).
extern "C" __global__ void embedding_bwd_f32(float* __restrict__ dw, const float* __restrict__ dy,
                                             const int* __restrict__ off, const int* __restrict__ pos, int d) {
    int v = blockIdx.x;
    int j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j < d) {
        float acc = 0.0f;
        for (int p = off[v]; p < off[v + 1]; ++p) acc += dy[(long long)pos[p] * d + j];
        dw[(long long)v * d + j] = acc;
    }
}
