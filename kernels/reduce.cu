// reduce.cu — full reductions (sum, mean, sum of squares) and the attention head layout, f32
// (src/ops/reduce/gpu.rs, src/ops/attention/gpu.rs ↔ this file).
//
// reduce_sum_f32(out, x, n, chunk, square, scale): block c sums v = x[i] (or x[i]² when square)
// over i in [c·chunk, min(n, (c+1)·chunk)) and writes scale·Σ to out[c]. Thread t adds i = c·chunk
// + t, + 256, … in order; the 256 partials are combined by warp_sum butterflies, the 8 warp sums
// through shared memory by warp 0 (a fixed order). A full reduction is two launches with a chunk
// fixed by the launcher: stage 1 (grid ceil(n / chunk)) → partials; stage 2 (grid 1, chunk =
// nparts) → the scalar. No atomics: the result depends only on n, never on scheduling.
//
// head_split_{fwd,bwd}_f32: the [B·T, S·D] ↔ [S, B, H, T, Dh] layout of attention (D = H·Dh):
//   split[s, b, h, t, e] = x[(b·T + t), s·D + h·Dh + e]
// S = 3 splits a fused qkv projection into q, k, v heads; S = 1 is the head split of one tensor,
// and head_split_bwd with S = 1 is the head *merge* [B, H, T, Dh] → [B·T, D] (its backward is the
// split). One thread per element of the [S, B, H, T, Dh] side; reads or writes of the other side
// are strided by Dh-long runs.
#include "common.cuh"

// Launch: grid (nblocks), block (256).
extern "C" __global__ void reduce_sum_f32(float* __restrict__ out, const float* __restrict__ x, int n, int chunk,
                                          int square, float scale) {
    __shared__ float warps[8];
    int c = blockIdx.x;
    int lo = c * chunk;
    int hi = min(n, lo + chunk);
    float acc = 0.0f;
    for (int i = lo + (int)threadIdx.x; i < hi; i += 256) {
        float v = x[i];
        acc += square ? v * v : v;
    }
    acc = warp_sum(acc);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) warps[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        float v = lane < 8 ? warps[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) out[c] = v * scale;
    }
}

__device__ __forceinline__ long long head_src(long long i, int B, int T, int H, int Dh, int S) {
    int e = (int)(i % Dh);
    long long r = i / Dh;
    int t = (int)(r % T);
    r /= T;
    int h = (int)(r % H);
    r /= H;
    int b = (int)(r % B);
    int s = (int)(r / B);
    long long D = (long long)H * Dh;
    return ((long long)b * T + t) * (S * D) + s * D + (long long)h * Dh + e;
}

// clipcu: hot
extern "C" __global__ void head_split_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int B, int T,
                                              int H, int Dh, int S) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long n = (long long)S * B * H * T * Dh;
    if (i < n) out[i] = x[head_src(i, B, T, H, Dh, S)];
}

// clipcu: hot
extern "C" __global__ void head_split_bwd_f32(float* __restrict__ dx, const float* __restrict__ dsplit, int B,
                                              int T, int H, int Dh, int S) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long n = (long long)S * B * H * T * Dh;
    if (i < n) dx[head_src(i, B, T, H, Dh, S)] = dsplit[i];
}
