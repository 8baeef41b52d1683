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
// Two ways to compute it, chosen by the storage type (the launcher picks the grid to match):
//   f32 (FMA): tiles of 32 queries × 32 keys, blocks (32, 4) = 4 warps, grid (⌈T/32⌉, B·H). Warp
//     w owns the rows w, w+4, …, w+28 of its tile; within a row, lane x is key x (for S, P, dS)
//     or feature x and x + 32 (for O, dQ, dK, dV accumulators, in registers). Tiles are staged in
//     shared memory as f32 with rows padded to 65 floats, so the lane-strided reads sK[x][e] fall
//     in 32 different banks. A warp writes and reads back only its own rows of sP/sdS
//     (__syncwarp between); __syncthreads guards the tiles every warp reads.
//   f16/bf16 (tensor cores, FlashAttention-2's scheme): blocks (32, 4) own 64 rows (queries for
//     the forward and dQ, keys for dK/dV), grid (⌈T/64⌉, B·H); warp w owns 16 of them (the m of
//     mma.m16n8k16) and the block steps over the other operand 32 rows at a time. Q, K, V, dO
//     are staged in 16 bits as rows of 72 values (64 features, zero past dh — so dh needs no
//     multiple of 16 — and 8 of padding: ldmatrix rows 16-byte aligned and conflict-free). Every
//     product is mma.m16n8k16 with f32 accumulators in registers: S = Q·Kᵀ and dP = dO·Vᵀ (A by
//     ldmatrix_x4, the n×k B operand by ldmatrix_x4 = two n blocks), then P·V, Pᵀ·dO, dSᵀ·Q,
//     dS·K with P / dS taken straight from the score tile's C fragments as A operands (rounded
//     to 16 bits) and the row-major k×n B by ldmatrix_x4_trans. The dK/dV owner computes the
//     transposed tiles Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ so that Pᵀ and dSᵀ are A operands too. The
//     softmax statistics (m, l, lse, D), the rescaling of O by α per row and every accumulator
//     are f32; the fragment layouts are written next to the helpers (at_abt, at_pb).
// Head dims up to 64 (CLIP's is 64; tiny configs use 16 and 32); the launcher refuses larger
// ones. Causal: key ≤ query; a causal block stops at (or, for dK/dV, starts from) the diagonal.
// Outputs are rounded once to the storage type.
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
extern "C" __global__ void attn_bwd_dq_f32(AT_BWD_PARAMS(float)) { AT_DQ_BODY; }

// ==== f16/bf16 on the tensor cores ===============================================================
// A block of 4 warps owns 64 rows (queries for attn_fwd16 and attn_bwd_dq16, keys for
// attn_bwd_dkv16), warp w the 16 rows 16w..16w+15, and walks the other operand in steps of 32
// rows. Tiles are staged in 16 bits as rows of 72 values (64 features, zero past dh, and 8 of
// padding: 144 bytes, so every ldmatrix row address is 16-byte aligned and the 8 rows of one 8×8
// matrix start 36 words apart — in 8 different 4-bank groups, no conflicts). Every product is a
// sequence of mma.m16n8k16 with f32 accumulators in registers, k steps in a fixed order.
#define AT16_ROWS 64  // rows a block owns (4 warps × 16)
#define AT16_STEP 32  // rows of the other operand per step
#define AT16_LD 72    // a staged 16-bit row (see above)

__device__ __forceinline__ void at_mma(float d[4], const uint32_t a[4], const uint32_t b[2], __half) {
    mma_m16n8k16_f16(d, a, b, d);
}
__device__ __forceinline__ void at_mma(float d[4], const uint32_t a[4], const uint32_t b[2], __nv_bfloat16) {
    mma_m16n8k16_bf16(d, a, b, d);
}
// Two f32 values rounded (to nearest even) to the storage type and packed, low half first.
__device__ __forceinline__ uint32_t at_pack(float lo, float hi, __half) {
    return pack_half2(__float2half_rn(lo), __float2half_rn(hi));
}
__device__ __forceinline__ uint32_t at_pack(float lo, float hi, __nv_bfloat16) {
    return pack_bf162(__float2bfloat16_rn(lo), __float2bfloat16_rn(hi));
}

// dst[r][e] = the rows r0 + r (r < n, t < T) of the column block at `col` of a [B·T, ld] matrix
// (batch b), features e < 64, 0 past T or dh; every thread of the block takes part.
template <class T>
__device__ __forceinline__ void at_stage16(T (*dst)[AT16_LD], int n, const T* __restrict__ src, long long ld, int b,
                                           int t_len, int r0, int col, int dh) {
    int tid = threadIdx.y * 32 + threadIdx.x;
    for (int i = tid; i < n * AT_MAXD; i += 128) {
        int r = i / AT_MAXD, e = i % AT_MAXD;
        int t = r0 + r;
        dst[r][e] = (t < t_len && e < dh) ? src[((long long)b * t_len + t) * ld + col + e] : from_f32<T>(0.0f);
    }
}

// Fragment ownership of the helpers below (common.cuh's layouts; g = lane / 4, t = lane % 4):
//   a 16×32 score tile of warp w (its rows 16w.., 32 columns of the step) is 4 C fragments
//   s[nt][4], nt = column block of 8: s[nt][0], s[nt][1] at (row g, cols 8nt + 2t, +1) and
//   s[nt][2], s[nt][3] at (row g + 8, same cols) — a lane holds 8 values of two rows;
//   the same values as A operand of the next product (k = those 32 columns, 2 k steps of 16):
//   p[j] = {pack(s[2j][0..1]), pack(s[2j][2..3]), pack(s[2j+1][0..1]), pack(s[2j+1][2..3])}
//   (A's a[0..3] = rows g / g+8 × cols 2t.. / 2t+8.. of k step j), so P and dS never touch
//   shared memory; a 16×64 accumulator (O, dQ, dK, dV) is 8 C fragments acc[nt][4], features
//   8nt + 2t, +1 of rows g and g + 8.

// s[nt] = A[a0 .. a0+15] · B[0 .. 31]ᵀ over the features (< dh, in k steps of 16): A's rows as
// the row-major A operand (ldmatrix_x4 over its four 8×8 quadrants), B's rows as the n×k "col"
// operand (ldmatrix_x4 = two n blocks: matrices 0, 1 rows 8nt.. features k.., k+8..; 2, 3 the
// same for rows 8nt + 8..).
template <class T>
__device__ __forceinline__ void at_abt(float s[4][4], const T (*sA)[AT16_LD], int a0, const T (*sB)[AT16_LD], int dh) {
    int lane = threadIdx.x;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < AT_MAXD / 16; ++ks) {
        if (16 * ks < dh) {  // warp-uniform
            uint32_t a[4];
            ldmatrix_x4(a, &sA[a0 + (lane & 15)][16 * ks + (lane >> 4) * 8]);
#pragma unroll
            for (int nt = 0; nt < 4; nt += 2) {
                uint32_t b[4];
                ldmatrix_x4(b, &sB[8 * nt + (lane & 7) + ((lane >> 4) << 3)][16 * ks + ((lane >> 3) & 1) * 8]);
                at_mma(s[nt], a, b, T());
                at_mma(s[nt + 1], a, b + 2, T());
            }
        }
    }
}

// acc[nt] += P · B[0 .. 31][features], P the 16×32 A operand p[2][4] (layout above), B's rows
// row-major k×n (k = its 32 rows, n = features): ldmatrix_x4_trans gives two n blocks (matrices
// 0, 1 rows 16j.., 16j+8.. of features 8nt..; 2, 3 the same of features 8nt + 8..).
template <class T>
__device__ __forceinline__ void at_pb(float acc[8][4], const uint32_t p[2][4], const T (*sB)[AT16_LD], int dh) {
    int lane = threadIdx.x;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int nt = 0; nt < 8; nt += 2) {
            if (8 * nt < dh) {  // warp-uniform
                uint32_t b[4];
                ldmatrix_x4_trans(b, &sB[16 * j + (lane & 15)][8 * nt + (lane >> 4) * 8]);
                at_mma(acc[nt], p[j], b, T());
                at_mma(acc[nt + 1], p[j], b + 2, T());
            }
        }
    }
}

// The A operand p[2][4] of a score tile s[4][4], rounded to the storage type.
template <class T> __device__ __forceinline__ void at_to_a(uint32_t p[2][4], const float s[4][4]) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        p[j][0] = at_pack(s[2 * j][0], s[2 * j][1], T());
        p[j][1] = at_pack(s[2 * j][2], s[2 * j][3], T());
        p[j][2] = at_pack(s[2 * j + 1][0], s[2 * j + 1][1], T());
        p[j][3] = at_pack(s[2 * j + 1][2], s[2 * j + 1][3], T());
    }
}

// Sum over the 4 lanes of a quad (the lanes holding one row of a C fragment), fixed order.
__device__ __forceinline__ float at_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float at_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// Writes the 16×dh accumulator of warp w (rows r0 + 16w + g, + 8) times f[row half] into the
// columns `col` of rows of a [B·T, ld] matrix.
template <class T>
__device__ __forceinline__ void at_store16(T* __restrict__ dst, long long ld, long long col, int b, int t_len, int r_lo,
                                           const float acc[8][4], float f_lo, float f_hi, int dh) {
    int tq = threadIdx.x & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        int t = r_lo + 8 * half;
        if (t >= t_len) continue;
        float f = half ? f_hi : f_lo;
        T* row = dst + ((long long)b * t_len + t) * ld + col;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            int e = 8 * nt + 2 * tq;
            if (e < dh) row[e] = from_f32<T>(acc[nt][2 * half] * f);
            if (e + 1 < dh) row[e + 1] = from_f32<T>(acc[nt][2 * half + 1] * f);
        }
    }
}

// Grid (⌈T/64⌉, B·H), block (32, 4). Warp w: queries q0 + 16w + g (r_lo) and + 8 (r_hi).
// Numerics: S, the running max m, the sum l and O are f32; only P is rounded to 16 bits, as the
// A operand of P·V (as FlashAttention-2 does): P ∈ [0, 1], so f16 keeps 11 bits of it (bf16 8) —
// a relative error of 2^-11 (2^-8) per weight, the same size as V's own rounding, and l sums the
// unrounded P (so lse is the f32 softmax's, which the backward recomputes P from).
template <class T>
__device__ __forceinline__ void attn_fwd16(T (*sQ)[AT16_LD], T (*sK)[AT16_LD], T (*sV)[AT16_LD], T* __restrict__ out,
                                           float* __restrict__ lse, const T* __restrict__ qkv, int t_len, int heads,
                                           int dh, int causal, float scale) {
    int lane = threadIdx.x, w = threadIdx.y, tq = lane & 3;
    int bh = blockIdx.y, b = bh / heads, h = bh % heads;
    int q0 = blockIdx.x * AT16_ROWS;
    long long d = (long long)heads * dh, ld = 3 * d;
    int r_lo = q0 + 16 * w + (lane >> 2);
    at_stage16(sQ, AT16_ROWS, qkv, ld, b, t_len, q0, h * dh, dh);
    float m[2] = {AT_NEG_INF, AT_NEG_INF}, l[2] = {0.0f, 0.0f};  // l: this lane's columns only
    float o[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    int k_end = causal ? min(t_len, q0 + AT16_ROWS) : t_len;
    for (int k0 = 0; k0 < k_end; k0 += AT16_STEP) {
        __syncthreads();  // the previous tile is read (and sQ staged, the first time)
        at_stage16(sK, AT16_STEP, qkv, ld, b, t_len, k0, d + h * dh, dh);
        at_stage16(sV, AT16_STEP, qkv, ld, b, t_len, k0, 2 * d + h * dh, dh);
        __syncthreads();
        float s[4][4];
        at_abt(s, sQ, 16 * w, sK, dh);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int k = k0 + 8 * nt + 2 * tq + (i & 1);
                s[nt][i] = at_visible(r_lo + 8 * (i >> 1), k, t_len, causal) ? s[nt][i] * scale : AT_NEG_INF;
                mx[i >> 1] = fmaxf(mx[i >> 1], s[nt][i]);
            }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = at_quad_max(mx[r]);
            // a row with no visible key yet keeps m = −inf (only rows past T: key 0 is visible
            // from every query), and its e and α are 0, never e^(−inf + inf)
            alpha[r] = (m[r] == AT_NEG_INF) ? 0.0f : expf(m[r] - mx[r]);
            l[r] *= alpha[r];
            m[r] = mx[r];
        }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                float e = (s[nt][i] == AT_NEG_INF) ? 0.0f : expf(s[nt][i] - mx[i >> 1]);
                s[nt][i] = e;
                l[i >> 1] += e;
            }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            o[nt][0] *= alpha[0], o[nt][1] *= alpha[0];
            o[nt][2] *= alpha[1], o[nt][3] *= alpha[1];
        }
        uint32_t p[2][4];
        at_to_a<T>(p, s);
        at_pb(o, p, sV, dh);
    }
    float lsum[2] = {at_quad_sum(l[0]), at_quad_sum(l[1])};
    at_store16(out, d, (long long)h * dh, b, t_len, r_lo, o, 1.0f / lsum[0], 1.0f / lsum[1], dh);
    if (tq == 0)
        for (int r = 0; r < 2; ++r) {
            int t = r_lo + 8 * r;
            if (t < t_len) lse[(long long)bh * t_len + t] = m[r] + logf(lsum[r]);
        }
}

// Grid (⌈T/64⌉ key tiles, B·H), block (32, 4): dK and dV of the block's 64 keys over every
// query step of 32 (causal: from the block's first key on). Warp w: keys k0 + 16w + g and + 8;
// its score tiles are transposed, Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (rows keys, columns queries), so that
// Pᵀ and dSᵀ are A operands of dV += Pᵀ·dO and dK += dSᵀ·Q straight from registers.
// Numerics: P = e^(S − lse) and dS = P ∘ (dP − D) in f32, rounded to 16 bits only as mma
// operands (FlashAttention-2's choice): P ∈ [0, 1]; dS is unscaled (the softmax scale is
// applied to the f32 accumulators at the end), so it is not pushed towards f16's subnormals.
template <class T>
__device__ __forceinline__ void attn_bwd_dkv16(T (*sK)[AT16_LD], T (*sV)[AT16_LD], T (*sQ)[AT16_LD],
                                               T (*sO)[AT16_LD], float* sL, float* sD, T* __restrict__ dqkv,
                                               const T* __restrict__ qkv, const T* __restrict__ dout,
                                               const float* __restrict__ lse, const float* __restrict__ dsum,
                                               int t_len, int heads, int dh, int causal, float scale) {
    int lane = threadIdx.x, w = threadIdx.y, tq = lane & 3, tid = w * 32 + lane;
    int bh = blockIdx.y, b = bh / heads, h = bh % heads;
    int k0 = blockIdx.x * AT16_ROWS;
    long long d = (long long)heads * dh, ld = 3 * d;
    int k_lo = k0 + 16 * w + (lane >> 2);
    at_stage16(sK, AT16_ROWS, qkv, ld, b, t_len, k0, d + h * dh, dh);
    at_stage16(sV, AT16_ROWS, qkv, ld, b, t_len, k0, 2 * d + h * dh, dh);
    float dk[8][4], dv[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) dk[nt][i] = dv[nt][i] = 0.0f;
    for (int q0 = causal ? k0 : 0; q0 < t_len; q0 += AT16_STEP) {
        __syncthreads();  // the previous query step is read (and sK, sV staged, the first time)
        at_stage16(sQ, AT16_STEP, qkv, ld, b, t_len, q0, h * dh, dh);
        at_stage16(sO, AT16_STEP, dout, d, b, t_len, q0, h * dh, dh);  // dO
        if (tid < AT16_STEP) {
            int t = q0 + tid;
            sL[tid] = t < t_len ? lse[(long long)bh * t_len + t] : 0.0f;
            sD[tid] = t < t_len ? dsum[(long long)bh * t_len + t] : 0.0f;
        }
        __syncthreads();
        float s[4][4], dp[4][4];
        at_abt(s, sK, 16 * w, sQ, dh);
        at_abt(dp, sV, 16 * w, sO, dh);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int qc = 8 * nt + 2 * tq + (i & 1);
                float pr = 0.0f, ds = 0.0f;
                if (at_visible(q0 + qc, k_lo + 8 * (i >> 1), t_len, causal)) {
                    pr = expf(s[nt][i] * scale - sL[qc]);
                    ds = pr * (dp[nt][i] - sD[qc]);
                }
                s[nt][i] = pr;
                dp[nt][i] = ds;
            }
        uint32_t p[2][4];
        at_to_a<T>(p, s);
        at_pb(dv, p, sO, dh);
        at_to_a<T>(p, dp);
        at_pb(dk, p, sQ, dh);
    }
    at_store16(dqkv, ld, d + h * dh, b, t_len, k_lo, dk, scale, scale, dh);
    at_store16(dqkv, ld, 2 * d + h * dh, b, t_len, k_lo, dv, 1.0f, 1.0f, dh);
}

// Grid (⌈T/64⌉ query tiles, B·H), block (32, 4): dQ of the block's 64 queries over every key
// step of 32 (causal: up to the block's last query). Warp w: queries q0 + 16w + g and + 8;
// dS = P ∘ (dP − D) from S = Q·Kᵀ and dP = dO·Vᵀ, then dQ += dS·K, numerics as attn_bwd_dkv16.
template <class T>
__device__ __forceinline__ void attn_bwd_dq16(T (*sQ)[AT16_LD], T (*sO)[AT16_LD], T (*sK)[AT16_LD],
                                              T (*sV)[AT16_LD], T* __restrict__ dqkv, const T* __restrict__ qkv,
                                              const T* __restrict__ dout, const float* __restrict__ lse,
                                              const float* __restrict__ dsum, int t_len, int heads, int dh,
                                              int causal, float scale) {
    int lane = threadIdx.x, w = threadIdx.y, tq = lane & 3;
    int bh = blockIdx.y, b = bh / heads, h = bh % heads;
    int q0 = blockIdx.x * AT16_ROWS;
    long long d = (long long)heads * dh, ld = 3 * d;
    int r_lo = q0 + 16 * w + (lane >> 2);
    at_stage16(sQ, AT16_ROWS, qkv, ld, b, t_len, q0, h * dh, dh);
    at_stage16(sO, AT16_ROWS, dout, d, b, t_len, q0, h * dh, dh);  // dO
    float rl[2], rd[2];  // lse and D of this lane's two rows
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int t = r_lo + 8 * r;
        rl[r] = t < t_len ? lse[(long long)bh * t_len + t] : 0.0f;
        rd[r] = t < t_len ? dsum[(long long)bh * t_len + t] : 0.0f;
    }
    float dq[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.0f;
    int k_end = causal ? min(t_len, q0 + AT16_ROWS) : t_len;
    for (int k0 = 0; k0 < k_end; k0 += AT16_STEP) {
        __syncthreads();  // the previous key step is read (and the query tile staged, the first time)
        at_stage16(sK, AT16_STEP, qkv, ld, b, t_len, k0, d + h * dh, dh);
        at_stage16(sV, AT16_STEP, qkv, ld, b, t_len, k0, 2 * d + h * dh, dh);
        __syncthreads();
        float s[4][4], dp[4][4];
        at_abt(s, sQ, 16 * w, sK, dh);
        at_abt(dp, sO, 16 * w, sV, dh);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int r = i >> 1;
                float ds = 0.0f;
                if (at_visible(r_lo + 8 * r, k0 + 8 * nt + 2 * tq + (i & 1), t_len, causal))
                    ds = expf(s[nt][i] * scale - rl[r]) * (dp[nt][i] - rd[r]);
                s[nt][i] = ds;
            }
        uint32_t p[2][4];
        at_to_a<T>(p, s);
        at_pb(dq, p, sK, dh);
    }
    at_store16(dqkv, ld, (long long)h * dh, b, t_len, r_lo, dq, scale, scale, dh);
}

// 16-bit tiles in byte buffers (16-byte aligned for ldmatrix), viewed as T[rows][AT16_LD].
#define AT16_TILE(name, rows) \
    __shared__ __align__(16) unsigned char name##_b[(rows) * AT16_LD * 2]; \
    T(*name)[AT16_LD] = reinterpret_cast<T(*)[AT16_LD]>(name##_b)
#define AT16_FWD_BODY                \
    AT16_TILE(sQ, AT16_ROWS);        \
    AT16_TILE(sK, AT16_STEP);        \
    AT16_TILE(sV, AT16_STEP);        \
    attn_fwd16(sQ, sK, sV, out, lse, qkv, t_len, heads, dh, causal, scale)
#define AT16_DKV_BODY                \
    AT16_TILE(sK, AT16_ROWS);        \
    AT16_TILE(sV, AT16_ROWS);        \
    AT16_TILE(sQ, AT16_STEP);        \
    AT16_TILE(sO, AT16_STEP);        \
    __shared__ float sL[AT16_STEP];  \
    __shared__ float sD[AT16_STEP];  \
    attn_bwd_dkv16(sK, sV, sQ, sO, sL, sD, AT_BWD_ARGS)
#define AT16_DQ_BODY                 \
    AT16_TILE(sQ, AT16_ROWS);        \
    AT16_TILE(sO, AT16_ROWS);        \
    AT16_TILE(sK, AT16_STEP);        \
    AT16_TILE(sV, AT16_STEP);        \
    attn_bwd_dq16(sQ, sO, sK, sV, AT_BWD_ARGS)

// clipcu: hot
extern "C" __global__ void attn_fwd_f16(AT_FWD_PARAMS(__half)) {
    typedef __half T;
    AT16_FWD_BODY;
}
// clipcu: hot
extern "C" __global__ void attn_fwd_bf16(AT_FWD_PARAMS(__nv_bfloat16)) {
    typedef __nv_bfloat16 T;
    AT16_FWD_BODY;
}
// clipcu: hot
extern "C" __global__ void attn_bwd_dkv_f16(AT_BWD_PARAMS(__half)) {
    typedef __half T;
    AT16_DKV_BODY;
}
// clipcu: hot
extern "C" __global__ void attn_bwd_dkv_bf16(AT_BWD_PARAMS(__nv_bfloat16)) {
    typedef __nv_bfloat16 T;
    AT16_DKV_BODY;
}
// clipcu: hot
extern "C" __global__ void attn_bwd_dq_f16(AT_BWD_PARAMS(__half)) {
    typedef __half T;
    AT16_DQ_BODY;
}
// clipcu: hot
extern "C" __global__ void attn_bwd_dq_bf16(AT_BWD_PARAMS(__nv_bfloat16)) {
    typedef __nv_bfloat16 T;
    AT16_DQ_BODY;
}
