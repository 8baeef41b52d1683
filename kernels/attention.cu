// attention.cu — fused multi-head self-attention straight from the packed in-projection, forward
// and backward, f32 and f16/bf16 storage (src/ops/attention/packed.rs ↔ this file).
//
// Layout (no split or merge copies): qkv [B·T, 3·D] with D = H·dh, as nn.MultiheadAttention's
// in-projection writes it — query t of batch b is row b·T + t, its head-h q, k, v are the columns
// h·dh .., D + h·dh .., 2D + h·dh ..; the output is written with heads merged, out [B·T, D]
// (column h·dh + e), and the backward writes dqkv in qkv's layout. lse [B, H, T] (f32).
//
// Forward (online softmax, FlashAttention's algebra): for a query row q and key tiles j,
//   S_j = scale·q·K_jᵀ;  m' = max(m, max S_j);  α = e^(m − m');  P_j = e^(S_j − m')
//   l' = α·l + Σ P_j;   o' = α·o + P_j·V_j;       after the last tile: O = o / l, lse = m + log l
// so no T×T matrix exists anywhere; only O and lse are kept for backward.
// Backward, with D_q = rowsum(dO ∘ O) first (attn_bwd_dot) and P recomputed as e^(S − lse):
//   dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ∘ (dP − D),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q.
// No float atomics: attn_bwd_dkv_* blocks own a key tile of one head (dK and dV of those keys
// accumulated over every query tile in order), attn_bwd_dq_* blocks own a query tile (dQ over
// every key tile in order); they write disjoint columns of dqkv. Every result is bitwise
// reproducible for a given shape.
//
// Geometry: tiles of 32 queries × 32 keys, blocks (32, 4) = 4 warps, grid (⌈T/32⌉, B·H). Warp w
// owns the rows w, w+4, …, w+28 of its tile; within a row, lane x is key x (for S, P, dS) or
// feature x and x + 32 (for O, dQ, dK, dV accumulators, in registers). Tiles are staged in shared
// memory as f32 with rows padded to 65 floats, so the lane-strided reads sK[x][e] fall in 32
// different banks. A warp writes and reads back only its own rows of sP/sdS (__syncwarp between);
// __syncthreads guards the tiles every warp reads. Head dims up to 64 (CLIP's is 64; tiny configs
// use 16 and 32); the launcher refuses larger ones. Causal: key ≤ query; a causal block stops at
// the diagonal tile. The f16/bf16 kernels widen every load to f32 and round each output once:
// arithmetic and accumulation are f32 (CUDA cores, not yet tensor cores).
#include "common.cuh"

#define AT_TILE 32
#define AT_MAXD 64
#define AT_LD (AT_MAXD + 1)
#define AT_NEG_INF (-INFINITY)

// dst[r][e] = the tile's rows r0 + r (< T) of the column block at `col` of a [B·T, ld] matrix
// (batch b), 0 past T or dh; every thread of the block takes part.
template <class T>
__device__ __forceinline__ void at_stage(float (*dst)[AT_LD], const T* __restrict__ src, long long ld, int b, int t_len,
                                         int r0, int col, int dh) {
    int tid = threadIdx.y * AT_TILE + threadIdx.x;
    for (int i = tid; i < AT_TILE * AT_MAXD; i += AT_TILE * 4) {
        int r = i / AT_MAXD, e = i % AT_MAXD;
        int t = r0 + r;
        dst[r][e] = (t < t_len && e < dh) ? to_f32(src[((long long)b * t_len + t) * ld + col + e]) : 0.0f;
    }
}

// Σ_e a[e]·b[e] over the head dim, in order.
__device__ __forceinline__ float at_dot(const float* a, const float* b, int dh) {
    float s = 0.0f;
    for (int e = 0; e < dh; ++e) s = fmaf(a[e], b[e], s);
    return s;
}

// Whether key k is visible from query q (both < T).
__device__ __forceinline__ bool at_visible(int q, int k, int t_len, int causal) {
    return q < t_len && k < t_len && (!causal || k <= q);
}

// Grid (⌈T/32⌉, B·H), block (32, 4). out [B·T, D], lse [B·H·T].
template <class T>
__device__ __forceinline__ void attn_fwd(float (*sQ)[AT_LD], float (*sK)[AT_LD], float (*sV)[AT_LD],
                                         float (*sP)[AT_TILE + 1], T* __restrict__ out, float* __restrict__ lse,
                                         const T* __restrict__ qkv, int t_len, int heads, int dh, int causal,
                                         float scale) {
    int lane = threadIdx.x, w = threadIdx.y;
    int bh = blockIdx.y, b = bh / heads, h = bh % heads;
    int q0 = blockIdx.x * AT_TILE;
    long long d = (long long)heads * dh, ld = 3 * d;
    at_stage(sQ, qkv, ld, b, t_len, q0, h * dh, dh);
    float m[8], l[8], o0[8], o1[8];
    for (int p = 0; p < 8; ++p) m[p] = AT_NEG_INF, l[p] = 0.0f, o0[p] = 0.0f, o1[p] = 0.0f;
    int k_end = causal ? min(t_len, q0 + AT_TILE) : t_len;
    for (int k0 = 0; k0 < k_end; k0 += AT_TILE) {
        __syncthreads();  // the previous tile is read (and sQ staged, the first time)
        at_stage(sK, qkv, ld, b, t_len, k0, d + h * dh, dh);
        at_stage(sV, qkv, ld, b, t_len, k0, 2 * d + h * dh, dh);
        __syncthreads();
        for (int p = 0; p < 8; ++p) {
            int r = w + 4 * p;
            bool vis = at_visible(q0 + r, k0 + lane, t_len, causal);
            float s = vis ? at_dot(sQ[r], sK[lane], dh) * scale : AT_NEG_INF;
            float mn = fmaxf(m[p], warp_max(s));
            float e = (s == AT_NEG_INF) ? 0.0f : expf(s - mn);
            float alpha = (m[p] == AT_NEG_INF) ? 0.0f : expf(m[p] - mn);
            l[p] = l[p] * alpha + warp_sum(e);
            o0[p] *= alpha;
            o1[p] *= alpha;
            m[p] = mn;
            sP[r][lane] = e;
        }
        __syncwarp();  // this warp's rows of sP are written
        for (int p = 0; p < 8; ++p) {
            int r = w + 4 * p;
            for (int j = 0; j < AT_TILE; ++j) {
                float pj = sP[r][j];
                o0[p] = fmaf(pj, sV[j][lane], o0[p]);
                o1[p] = fmaf(pj, sV[j][lane + 32], o1[p]);
            }
        }
    }
    for (int p = 0; p < 8; ++p) {
        int t = q0 + w + 4 * p;
        if (t < t_len) {
            long long row = ((long long)b * t_len + t) * d + h * dh;
            float inv = 1.0f / l[p];
            if (lane < dh) out[row + lane] = from_f32<T>(o0[p] * inv);
            if (lane + 32 < dh) out[row + lane + 32] = from_f32<T>(o1[p] * inv);
            if (lane == 0) lse[(long long)bh * t_len + t] = m[p] + logf(l[p]);
        }
    }
}

#define AT_FWD_PARAMS(T) \
    T *__restrict__ out, float *__restrict__ lse, const T *__restrict__ qkv, int t_len, int heads, int dh, int causal, float scale
#define AT_FWD_BODY                                   \
    __shared__ float sQ[AT_TILE][AT_LD];              \
    __shared__ float sK[AT_TILE][AT_LD];              \
    __shared__ float sV[AT_TILE][AT_LD];              \
    __shared__ float sP[AT_TILE][AT_TILE + 1];        \
    attn_fwd(sQ, sK, sV, sP, out, lse, qkv, t_len, heads, dh, causal, scale)

// clipcu: hot
extern "C" __global__ void attn_fwd_f32(AT_FWD_PARAMS(float)) { AT_FWD_BODY; }
// clipcu: hot
extern "C" __global__ void attn_fwd_f16(AT_FWD_PARAMS(__half)) { AT_FWD_BODY; }
// clipcu: hot
extern "C" __global__ void attn_fwd_bf16(AT_FWD_PARAMS(__nv_bfloat16)) { AT_FWD_BODY; }

// D [B·H·T] = rowsum(dO ∘ O) per (query, head): one warp per (row, head), blocks (32, 8), grid
// ⌈B·T·H / 8⌉. dout and out are [B·T, D].
template <class T>
__device__ __forceinline__ void attn_bwd_dot(float* __restrict__ dsum, const T* __restrict__ dout,
                                             const T* __restrict__ out, int rows, int t_len, int heads, int dh) {
    long long i = (long long)blockIdx.x * blockDim.y + threadIdx.y;  // (row, head)
    if (i < (long long)rows * heads) {
        long long row = i / heads;
        int h = (int)(i % heads);
        long long at = row * heads * dh + (long long)h * dh;
        float s = 0.0f;
        for (int e = threadIdx.x; e < dh; e += 32) s += to_f32(dout[at + e]) * to_f32(out[at + e]);
        s = warp_sum(s);
        long long b = row / t_len, t = row % t_len;
        if (threadIdx.x == 0) dsum[(b * heads + h) * t_len + t] = s;
    }
}
extern "C" __global__ void attn_bwd_dot_f32(float* __restrict__ dsum, const float* __restrict__ dout,
                                            const float* __restrict__ out, int rows, int t_len, int heads, int dh) {
    attn_bwd_dot(dsum, dout, out, rows, t_len, heads, dh);
}
extern "C" __global__ void attn_bwd_dot_f16(float* __restrict__ dsum, const __half* __restrict__ dout,
                                            const __half* __restrict__ out, int rows, int t_len, int heads, int dh) {
    attn_bwd_dot(dsum, dout, out, rows, t_len, heads, dh);
}
extern "C" __global__ void attn_bwd_dot_bf16(float* __restrict__ dsum, const __nv_bfloat16* __restrict__ dout,
                                             const __nv_bfloat16* __restrict__ out, int rows, int t_len, int heads,
                                             int dh) {
    attn_bwd_dot(dsum, dout, out, rows, t_len, heads, dh);
}

// Grid (⌈T/32⌉ key tiles, B·H), block (32, 4): dK and dV of the block's 32 keys over every query
// tile (causal: from the diagonal tile on). Warp w owns key rows w + 4p; lane x is query x of the
// tile for P and dS, feature x (and x + 32) for the accumulators.
template <class T>
__device__ __forceinline__ void attn_bwd_dkv(float (*sK)[AT_LD], float (*sV)[AT_LD], float (*sQ)[AT_LD],
                                             float (*sO)[AT_LD], float (*sP)[AT_TILE + 1],
                                             float (*sS)[AT_TILE + 1], float* sL, float* sD,
                                             T* __restrict__ dqkv, const T* __restrict__ qkv,
                                             const T* __restrict__ dout, const float* __restrict__ lse,
                                             const float* __restrict__ dsum, int t_len, int heads, int dh,
                                             int causal, float scale) {
    int lane = threadIdx.x, w = threadIdx.y, tid = w * AT_TILE + lane;
    int bh = blockIdx.y, b = bh / heads, h = bh % heads;
    int k0 = blockIdx.x * AT_TILE;
    long long d = (long long)heads * dh, ld = 3 * d;
    at_stage(sK, qkv, ld, b, t_len, k0, d + h * dh, dh);
    at_stage(sV, qkv, ld, b, t_len, k0, 2 * d + h * dh, dh);
    float dk0[8], dk1[8], dv0[8], dv1[8];
    for (int p = 0; p < 8; ++p) dk0[p] = dk1[p] = dv0[p] = dv1[p] = 0.0f;
    for (int q0 = causal ? k0 : 0; q0 < t_len; q0 += AT_TILE) {
        __syncthreads();  // the previous query tile is read (and sK, sV staged, the first time)
        at_stage(sQ, qkv, ld, b, t_len, q0, h * dh, dh);
        at_stage(sO, dout, d, b, t_len, q0, h * dh, dh);  // dO
        if (tid < AT_TILE) {
            int t = q0 + tid;
            sL[tid] = t < t_len ? lse[(long long)bh * t_len + t] : 0.0f;
            sD[tid] = t < t_len ? dsum[(long long)bh * t_len + t] : 0.0f;
        }
        __syncthreads();
        for (int p = 0; p < 8; ++p) {
            int kr = w + 4 * p;
            float pr = 0.0f, ds = 0.0f;
            if (at_visible(q0 + lane, k0 + kr, t_len, causal)) {
                pr = expf(at_dot(sQ[lane], sK[kr], dh) * scale - sL[lane]);
                ds = pr * (at_dot(sO[lane], sV[kr], dh) - sD[lane]);
            }
            sP[kr][lane] = pr;
            sS[kr][lane] = ds;
        }
        __syncwarp();  // this warp's rows of sP, sS are written
        for (int p = 0; p < 8; ++p) {
            int kr = w + 4 * p;
            for (int j = 0; j < AT_TILE; ++j) {
                float pj = sP[kr][j], sj = sS[kr][j];
                dv0[p] = fmaf(pj, sO[j][lane], dv0[p]);
                dv1[p] = fmaf(pj, sO[j][lane + 32], dv1[p]);
                dk0[p] = fmaf(sj, sQ[j][lane], dk0[p]);
                dk1[p] = fmaf(sj, sQ[j][lane + 32], dk1[p]);
            }
        }
    }
    for (int p = 0; p < 8; ++p) {
        int t = k0 + w + 4 * p;
        if (t < t_len) {
            long long row = ((long long)b * t_len + t) * ld;
            long long kc = d + h * dh, vc = 2 * d + h * dh;
            if (lane < dh) {
                dqkv[row + kc + lane] = from_f32<T>(dk0[p] * scale);
                dqkv[row + vc + lane] = from_f32<T>(dv0[p]);
            }
            if (lane + 32 < dh) {
                dqkv[row + kc + lane + 32] = from_f32<T>(dk1[p] * scale);
                dqkv[row + vc + lane + 32] = from_f32<T>(dv1[p]);
            }
        }
    }
}

// Grid (⌈T/32⌉ query tiles, B·H), block (32, 4): dQ of the block's 32 queries over every key
// tile (causal: up to the diagonal tile). Warp w owns query rows w + 4p.
template <class T>
__device__ __forceinline__ void attn_bwd_dq(float (*sQ)[AT_LD], float (*sO)[AT_LD], float (*sK)[AT_LD],
                                            float (*sV)[AT_LD], float (*sS)[AT_TILE + 1], float* sL, float* sD,
                                            T* __restrict__ dqkv, const T* __restrict__ qkv,
                                            const T* __restrict__ dout, const float* __restrict__ lse,
                                            const float* __restrict__ dsum, int t_len, int heads, int dh,
                                            int causal, float scale) {
    int lane = threadIdx.x, w = threadIdx.y, tid = w * AT_TILE + lane;
    int bh = blockIdx.y, b = bh / heads, h = bh % heads;
    int q0 = blockIdx.x * AT_TILE;
    long long d = (long long)heads * dh, ld = 3 * d;
    at_stage(sQ, qkv, ld, b, t_len, q0, h * dh, dh);
    at_stage(sO, dout, d, b, t_len, q0, h * dh, dh);  // dO
    if (tid < AT_TILE) {
        int t = q0 + tid;
        sL[tid] = t < t_len ? lse[(long long)bh * t_len + t] : 0.0f;
        sD[tid] = t < t_len ? dsum[(long long)bh * t_len + t] : 0.0f;
    }
    float dq0[8], dq1[8];
    for (int p = 0; p < 8; ++p) dq0[p] = dq1[p] = 0.0f;
    int k_end = causal ? min(t_len, q0 + AT_TILE) : t_len;
    for (int k0 = 0; k0 < k_end; k0 += AT_TILE) {
        __syncthreads();  // the previous key tile is read (and the query tile staged, the first time)
        at_stage(sK, qkv, ld, b, t_len, k0, d + h * dh, dh);
        at_stage(sV, qkv, ld, b, t_len, k0, 2 * d + h * dh, dh);
        __syncthreads();
        for (int p = 0; p < 8; ++p) {
            int r = w + 4 * p;
            float ds = 0.0f;
            if (at_visible(q0 + r, k0 + lane, t_len, causal)) {
                float pr = expf(at_dot(sQ[r], sK[lane], dh) * scale - sL[r]);
                ds = pr * (at_dot(sO[r], sV[lane], dh) - sD[r]);
            }
            sS[r][lane] = ds;
        }
        __syncwarp();  // this warp's rows of sS are written
        for (int p = 0; p < 8; ++p) {
            int r = w + 4 * p;
            for (int j = 0; j < AT_TILE; ++j) {
                float sj = sS[r][j];
                dq0[p] = fmaf(sj, sK[j][lane], dq0[p]);
                dq1[p] = fmaf(sj, sK[j][lane + 32], dq1[p]);
            }
        }
    }
    for (int p = 0; p < 8; ++p) {
        int t = q0 + w + 4 * p;
        if (t < t_len) {
            long long row = ((long long)b * t_len + t) * ld + h * dh;
            if (lane < dh) dqkv[row + lane] = from_f32<T>(dq0[p] * scale);
            if (lane + 32 < dh) dqkv[row + lane + 32] = from_f32<T>(dq1[p] * scale);
        }
    }
}

#define AT_BWD_PARAMS(T)                                                                                 \
    T *__restrict__ dqkv, const T *__restrict__ qkv, const T *__restrict__ dout, const float *__restrict__ lse, \
        const float *__restrict__ dsum, int t_len, int heads, int dh, int causal, float scale
#define AT_BWD_ARGS dqkv, qkv, dout, lse, dsum, t_len, heads, dh, causal, scale
#define AT_DKV_BODY                                                   \
    __shared__ float sK[AT_TILE][AT_LD];                              \
    __shared__ float sV[AT_TILE][AT_LD];                              \
    __shared__ float sQ[AT_TILE][AT_LD];                              \
    __shared__ float sO[AT_TILE][AT_LD];                              \
    __shared__ float sP[AT_TILE][AT_TILE + 1];                        \
    __shared__ float sS[AT_TILE][AT_TILE + 1];                        \
    __shared__ float sL[AT_TILE];                                     \
    __shared__ float sD[AT_TILE];                                     \
    attn_bwd_dkv(sK, sV, sQ, sO, sP, sS, sL, sD, AT_BWD_ARGS)
#define AT_DQ_BODY                                                    \
    __shared__ float sQ[AT_TILE][AT_LD];                              \
    __shared__ float sO[AT_TILE][AT_LD];                              \
    __shared__ float sK[AT_TILE][AT_LD];                              \
    __shared__ float sV[AT_TILE][AT_LD];                              \
    __shared__ float sS[AT_TILE][AT_TILE + 1];                        \
    __shared__ float sL[AT_TILE];                                     \
    __shared__ float sD[AT_TILE];                                     \
    attn_bwd_dq(sQ, sO, sK, sV, sS, sL, sD, AT_BWD_ARGS)

// clipcu: hot
extern "C" __global__ void attn_bwd_dkv_f32(AT_BWD_PARAMS(float)) { AT_DKV_BODY; }
// clipcu: hot
extern "C" __global__ void attn_bwd_dkv_f16(AT_BWD_PARAMS(__half)) { AT_DKV_BODY; }
// clipcu: hot
extern "C" __global__ void attn_bwd_dkv_bf16(AT_BWD_PARAMS(__nv_bfloat16)) { AT_DKV_BODY; }
// clipcu: hot
extern "C" __global__ void attn_bwd_dq_f32(AT_BWD_PARAMS(float)) { AT_DQ_BODY; }
// clipcu: hot
extern "C" __global__ void attn_bwd_dq_f16(AT_BWD_PARAMS(__half)) { AT_DQ_BODY; }
// clipcu: hot
extern "C" __global__ void attn_bwd_dq_bf16(AT_BWD_PARAMS(__nv_bfloat16)) { AT_DQ_BODY; }
