// reduce.cu — full and one-axis reductions (sum, mean, sum of squares) and the attention head
// layout (src/ops/reduce/gpu.rs, src/ops/attention/gpu.rs ↔ this file). Every kernel also takes
// f16/bf16 (_f16, _bf16: the same templates, sums in f32): the full reduction's result stays f32
// (a scalar: a loss, a squared gradient norm), the one-axis sum/mean and its gradient are
// rounded once to the input's dtype, the head layouts are copies.
//
// reduce_sum_f32(out, x, n, chunk, square, scale): block c sums v = x[i] (or x[i]² when square)
// over i in [c·chunk, min(n, (c+1)·chunk)) and writes scale·Σ to out[c]. Thread t adds i = c·chunk
// + t, + 256, … in order; the 256 partials are combined by warp_sum butterflies, the 8 warp sums
// through shared memory by warp 0 (a fixed order). A full reduction is two launches with a chunk
// fixed by the launcher: stage 1 (grid ceil(n / chunk)) → partials; stage 2 (grid 1, chunk =
// nparts) → the scalar. No atomics: the result depends only on n, never on scheduling.
//
// sum_axis_f32(out, x, outer, len, inner, mean, scale): out[o, i] = Σ_l x[o, l, i] (·scale if mean) over the middle
// axis of x seen as [outer, len, inner] (sum/mean over one axis); one thread per output element
// adds l = 0, 1, … in order — the CPU reference's order, so the two agree bit for bit; `mean`
// multiplies once at the end, as the CPU does.
// expand_axis_f32(out, g, outer, len, inner, scale): out[o, l, i] = scale·g[o, i], the gradient
// of that reduction (one thread per output element).
//
// head_split_{fwd,bwd}_f32: the [B·T, S·D] ↔ [S, B, H, T, Dh] layout of attention (D = H·Dh):
//   split[s, b, h, t, e] = x[(b·T + t), s·D + h·Dh + e]
// S = 3 splits a fused qkv projection into q, k, v heads; S = 1 is the head split of one tensor,
// and head_split_bwd with S = 1 is the head *merge* [B, H, T, Dh] → [B·T, D] (its backward is the
// split). One thread per element of the [S, B, H, T, Dh] side; reads or writes of the other side
// are strided by Dh-long runs.
#include "common.cuh"

// x in T, the partials and the result f32 (stage 2 is the f32 instantiation over the partials).
template <class T>
__device__ __forceinline__ void reduce_sum(float* __restrict__ out, const T* __restrict__ x, int n, int chunk,
                                           int square, float scale) {
    __shared__ float warps[8];
    int c = blockIdx.x;
    int lo = c * chunk;
    int hi = min(n, lo + chunk);
    float acc = 0.0f;
    for (int i = lo + (int)threadIdx.x; i < hi; i += 256) {
        float v = to_f32(x[i]);
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

// Launch: grid (nblocks), block (256).
extern "C" __global__ void reduce_sum_f32(float* __restrict__ out, const float* __restrict__ x, int n, int chunk,
                                          int square, float scale) {
    reduce_sum(out, x, n, chunk, square, scale);
}
extern "C" __global__ void reduce_sum_f16(float* __restrict__ out, const __half* __restrict__ x, int n, int chunk,
                                          int square, float scale) {
    reduce_sum(out, x, n, chunk, square, scale);
}
extern "C" __global__ void reduce_sum_bf16(float* __restrict__ out, const __nv_bfloat16* __restrict__ x, int n,
                                           int chunk, int square, float scale) {
    reduce_sum(out, x, n, chunk, square, scale);
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

template <class T>
__device__ __forceinline__ void head_split_fwd(T* __restrict__ out, const T* __restrict__ x, int B, int T_, int H,
                                               int Dh, int S) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long n = (long long)S * B * H * T_ * Dh;
    if (i < n) out[i] = x[head_src(i, B, T_, H, Dh, S)];
}

template <class T>
__device__ __forceinline__ void head_split_bwd(T* __restrict__ dx, const T* __restrict__ dsplit, int B, int T_, int H,
                                               int Dh, int S) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long n = (long long)S * B * H * T_ * Dh;
    if (i < n) dx[head_src(i, B, T_, H, Dh, S)] = dsplit[i];
}

// clipcu: hot
extern "C" __global__ void head_split_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int B, int T_, int H, int Dh, int S) {
    head_split_fwd(out, x, B, T_, H, Dh, S);
}
// clipcu: hot
extern "C" __global__ void head_split_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int B, int T_, int H, int Dh, int S) {
    head_split_fwd(out, x, B, T_, H, Dh, S);
}
// clipcu: hot
extern "C" __global__ void head_split_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int B, int T_, int H, int Dh, int S) {
    head_split_fwd(out, x, B, T_, H, Dh, S);
}

// clipcu: hot
extern "C" __global__ void head_split_bwd_f32(float* __restrict__ dx, const float* __restrict__ dsplit, int B, int T_, int H, int Dh, int S) {
    head_split_bwd(dx, dsplit, B, T_, H, Dh, S);
}
// clipcu: hot
extern "C" __global__ void head_split_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ dsplit, int B, int T_, int H, int Dh, int S) {
    head_split_bwd(dx, dsplit, B, T_, H, Dh, S);
}
// clipcu: hot
extern "C" __global__ void head_split_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ dsplit, int B, int T_, int H, int Dh, int S) {
    head_split_bwd(dx, dsplit, B, T_, H, Dh, S);
}

template <class T>
__device__ __forceinline__ void sum_axis(T* __restrict__ out, const T* __restrict__ x, int outer, int len, int inner,
                                         int mean, float scale) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)outer * inner) {
        long long o = i / inner, e = i % inner;
        const T* src = x + o * len * inner + e;
        float acc = 0.0f;
        for (int l = 0; l < len; ++l) acc += to_f32(src[(long long)l * inner]);
        out[i] = from_f32<T>(mean ? acc * scale : acc);
    }
}

template <class T>
__device__ __forceinline__ void expand_axis(T* __restrict__ out, const T* __restrict__ g, int outer, int len,
                                            int inner, float scale) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)outer * len * inner) {
        long long e = i % inner, o = i / ((long long)len * inner);
        out[i] = from_f32<T>(to_f32(g[o * inner + e]) * scale);
    }
}

// clipcu: hot
extern "C" __global__ void sum_axis_f32(float* __restrict__ out, const float* __restrict__ x, int outer, int len, int inner, int mean, float scale) {
    sum_axis(out, x, outer, len, inner, mean, scale);
}
// clipcu: hot
extern "C" __global__ void sum_axis_f16(__half* __restrict__ out, const __half* __restrict__ x, int outer, int len, int inner, int mean, float scale) {
    sum_axis(out, x, outer, len, inner, mean, scale);
}
// clipcu: hot
extern "C" __global__ void sum_axis_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int outer, int len, int inner, int mean, float scale) {
    sum_axis(out, x, outer, len, inner, mean, scale);
}

// clipcu: hot
extern "C" __global__ void expand_axis_f32(float* __restrict__ out, const float* __restrict__ g, int outer, int len, int inner, float scale) {
    expand_axis(out, g, outer, len, inner, scale);
}
// clipcu: hot
extern "C" __global__ void expand_axis_f16(__half* __restrict__ out, const __half* __restrict__ g, int outer, int len, int inner, float scale) {
    expand_axis(out, g, outer, len, inner, scale);
}
// clipcu: hot
extern "C" __global__ void expand_axis_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ g, int outer, int len, int inner, float scale) {
    expand_axis(out, g, outer, len, inner, scale);
}
