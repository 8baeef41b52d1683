// contrastive.cu — CLIP's contrastive loss fused, f32, f16 and bf16 (src/ops/contrastive/gpu.rs ↔
// this file): tiles of S = s·ÎT̂ᵀ (Î, T̂ the unit rows, normalised beforehand by normalize.cu in the
// features' dtype), never the N×N matrix. The algebra is in src/ops/contrastive/mod.rs; in short
//
//   r_i = lse_j S_ij, c_j = lse_i S_ij, loss = Σ_i (r_i − S_ii + c_i − S_ii) / 2N,
//   dS_ij = g·(e^(S_ij − r_i) + e^(S_ij − c_j) − 2δ_ij) / 2N,
//   dÎ = s·dS·T̂, dT̂ = s·dSᵀ·Î, d logit_scale = Σ dS_ij·S_ij,
//
// then dI = (dÎ − Î·(Î·dÎ)) / ‖I‖ (F.normalize's backward), folded into the backward kernel.
//
// Tiles are 32×32, blocks (32, 8). Two ways to compute a tile (cl_tile), chosen by the storage type:
//   f32 (FMA): thread (x, y) computes column x of rows y, y+8, y+16, y+24 of a tile, from 32-wide
//     feature chunks of both operands staged in shared memory (rows padded to 33 floats: the
//     column reads sB[x][k] fall in 32 different banks). Each dot product is an fma chain over k
//     in order, so a tile's values never depend on the launch.
//   f16/bf16 (tensor cores): the 32×32 tile is 2×4 mma.m16n8k16 tiles, one per warp (warp w owns
//     rows 16·(w/4).., columns 8·(w%4)..), accumulated in f32 over 16-wide k steps of 32-wide chunks
//     staged as 16-bit rows of 40 values (80 bytes: every ldmatrix row address is 16-byte
//     aligned, and the 8 rows of one 8×8 matrix start in 8 different 4-bank groups — no conflicts).
//     A = Î rows (row-major, ldmatrix_x4), B = T̂ rows, which are exactly the n×k "col" operand
//     (ldmatrix_x2, not transposed). The fragment layouts are written once, in common.cuh.
// Everything after the tile (the softmax statistics, the LSEs, dS, the sums) is f32 whatever the
// storage type, with the same code.
//
// Forward, one pass over the tiles for both directions:
//   contrastive_fwd_*: block b owns a stripe of q·32 rows and walks every column tile; for each
//     it computes the tile of each of its q row groups in turn. Rows: a warp reduces each row of
//     the tile (max, Σe^(x − max), max off the diagonal) and merges it into the row's running
//     triple in shared memory, tile after tile. Columns: a warp reduces each column over the q
//     tiles of the stripe in the same way and writes the stripe's partial triple of that column.
//   contrastive_cols_f32: column j's partials merged over the stripes in stripe order.
//   contrastive_loss_f32: one block; the loss and both hit counts in a fixed-order tree (f64).
// No float atomics anywhere: every result is bitwise reproducible for a given N, D and q.
// Memory beyond inputs: 3 floats per (stripe, column) — the launcher picks q so that stays small.
//
// Backward, the tiles recomputed; contrastive_bwd_* is launched twice with the roles swapped:
//   (A = Î, B = T̂, LSEs rows then columns) gives dI; (A = T̂, B = Î, swapped LSEs) gives dT, since
//   Sᵀ's tiles are the same entries and dS is symmetric in the roles. Block b owns 32 rows of A:
//   per column tile it turns S into dS in shared memory, then adds dS·B[tile] into its rows of
//   an f32 accumulator dÂ chunk by chunk (each (row, feature) belongs to one thread of one block:
//   no atomics); last, each warp turns four of the block's rows of dÂ into dA through the
//   normalisation backward (the block owns whole rows, so no other launch is needed), rounded
//   once to the storage type. In f16/bf16 the dS·B product runs on the tensor cores too: the
//   unscaled P = P^row + P^col − 2δ ∈ [−2, 2] is rounded to 16 bits (so f16 keeps its precision:
//   the factor g·s/2N, ~10⁻⁴ at N = 32k, would push dS into f16's subnormals) and the factor is
//   applied to the f32 accumulator. With want_dlog the kernel also sums, per block,
//   Σ P^row·(S − S_ii) + P^col·(S − S_jj) over the off-diagonal entries — Σ dS·S with the δ terms
//   gone (each softmax sums to 1), terms of one sign so nothing cancels — and
//   contrastive_dlogit_f32 adds the blocks' sums in order.
// The local form (src/ops/contrastive/local.rs: one rank's n rows against all N gathered
// columns, labels at column i + rank·n, row softmaxes only) runs the same kernels: the forward
// with nb = N, off = rank·n and no column statistics, once per side (images against all texts,
// texts against all images), the loss kernel with the two sides as "rows" and "columns"; the
// backward per side as a row-owner pass (CL_ROWS: d local rows) and a column-owner pass over
// the N columns (CL_COLS, off = −rank·n: d all columns), each with the normalisation folded in.
// Numerics as the CPU reference (cpu.rs): LSEs kept as (max, log Σ) pairs, e^(x − max − log Σ);
// on the diagonal P − 1 as expm1 (a confident pair has P ≈ 1).
#include "common.cuh"
#ifdef __CUDACC__
#include <type_traits>
#endif
#define CL_TILE 32
#define CL_NEG_INF (-INFINITY)
// A staged 16-bit chunk row: 32 values and 8 of padding (80 bytes; see the header).
#define CL_LD16 40
// The kernels' staging buffer: two f32 chunks [32][33] (8448 bytes), or in 16 bits two chunks
// and the backward's P tile, [32][40] each (7680 bytes).
#define CL_STAGE_BYTES (2 * CL_TILE * (CL_TILE + 1) * 4)

// The larger of two values, NaN if either is: a NaN entry makes its row and column misses (no
// diagonal is "strictly the largest" beside it), as the composed loss counts them. fmaxf would
// drop the NaN.
__device__ __forceinline__ float cl_max_nan(float a, float b) {
    return (a != a || b != b) ? a + b : fmaxf(a, b);  // a + b is the NaN
}
__device__ __forceinline__ float cl_warp_max_nan(float v) {
    for (int o = 16; o > 0; o >>= 1) v = cl_max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// A row's or column's running (max, Σ e^(x − max)) merged with a tile's (m, s) pair.
__device__ __forceinline__ void cl_merge(float& max, float& sum, float m, float s) {
    float nm = fmaxf(max, m);
    float a = (max == CL_NEG_INF) ? 0.0f : sum * expf(max - nm);
    float b = (m == CL_NEG_INF) ? 0.0f : s * expf(m - nm);
    max = nm;
    sum = a + b;
}

// ---- one tile: sS[i][j] = s · A[r0 + i] · B[c0 + j] (0 past A's na, B's nb rows) -----------------
// Every thread of the block must call it (it synchronises).

// f32, on FMA: `stage` holds sA, sB [32][33].
__device__ void cl_tile(float (*sS)[CL_TILE + 1], unsigned char* stage, const float* __restrict__ A,
                        const float* __restrict__ B, int na, int nb, int d, int r0, int c0, float s) {
    float(*sA)[CL_TILE + 1] = reinterpret_cast<float(*)[CL_TILE + 1]>(stage);
    float(*sB)[CL_TILE + 1] = sA + CL_TILE;
    int tx = threadIdx.x, ty = threadIdx.y;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < d; k0 += CL_TILE) {
        int k = k0 + tx;
        for (int q = 0; q < 4; ++q) {
            int r = ty + 8 * q;
            sA[r][tx] = (r0 + r < na && k < d) ? A[(long long)(r0 + r) * d + k] : 0.0f;
            sB[r][tx] = (c0 + r < nb && k < d) ? B[(long long)(c0 + r) * d + k] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < CL_TILE; ++kk) {
            float b = sB[tx][kk];
            for (int q = 0; q < 4; ++q) acc[q] = fmaf(sA[ty + 8 * q][kk], b, acc[q]);
        }
        __syncthreads();  // before the next chunk overwrites sA, sB
    }
    for (int q = 0; q < 4; ++q) sS[ty + 8 * q][tx] = acc[q] * s;
    __syncthreads();
}

// d += a·b on the tensor cores, f32 accumulation, for the storage type's mma.
__device__ __forceinline__ void cl_mma(float d[4], const uint32_t a[4], const uint32_t b[2], __half) {
    mma_m16n8k16_f16(d, a, b, d);
}
__device__ __forceinline__ void cl_mma(float d[4], const uint32_t a[4], const uint32_t b[2], __nv_bfloat16) {
    mma_m16n8k16_bf16(d, a, b, d);
}

// dst[r][x] = X[r0 + r][k0 + x] for the 32×32 chunk, 0 past n rows and d features.
template <class T>
__device__ __forceinline__ void cl_stage16(T (*dst)[CL_LD16], const T* __restrict__ X, int n, int d, int r0, int k0) {
    int tx = threadIdx.x, ty = threadIdx.y, k = k0 + tx;
    for (int q = 0; q < 4; ++q) {
        int r = ty + 8 * q;
        dst[r][tx] = (r0 + r < n && k < d) ? X[(long long)(r0 + r) * d + k] : from_f32<T>(0.0f);
    }
}

// f16/bf16, on the tensor cores: `stage` holds sA, sB [32][40] (16-bit). Warp w computes the
// 16×8 block (rows 16·(w/4) + 0..15, columns 8·(w%4) + 0..7) of the tile; the lane address
// patterns are the ones common.cuh derives for ldmatrix_x4 (A) and ldmatrix_x2 (B, n×k rows).
template <class T>
__device__ void cl_tile(float (*sS)[CL_TILE + 1], unsigned char* stage, const T* __restrict__ A,
                        const T* __restrict__ B, int na, int nb, int d, int r0, int c0, float s) {
    T(*sA)[CL_LD16] = reinterpret_cast<T(*)[CL_LD16]>(stage);
    T(*sB)[CL_LD16] = sA + CL_TILE;
    int lane = threadIdx.x, wm = threadIdx.y / 4, wn = threadIdx.y % 4;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < d; k0 += CL_TILE) {
        cl_stage16(sA, A, na, d, r0, k0);
        cl_stage16(sB, B, nb, d, c0, k0);
        __syncthreads();
        for (int kk = 0; kk < CL_TILE; kk += 16) {
            uint32_t a[4], b[2];
            ldmatrix_x4(a, &sA[16 * wm + (lane & 15)][kk + (lane >> 4) * 8]);
            ldmatrix_x2(b, &sB[8 * wn + (lane & 7)][kk + ((lane >> 3) & 1) * 8]);
            cl_mma(acc, a, b, T());
        }
        __syncthreads();  // before the next chunk overwrites sA, sB
    }
    // C fragment: c[0], c[1] at (row g, cols 2t, 2t+1), c[2], c[3] at row g + 8
    int r = 16 * wm + (lane >> 2), c = 8 * wn + 2 * (lane & 3);
    sS[r][c] = acc[0] * s;
    sS[r][c + 1] = acc[1] * s;
    sS[r + 8][c] = acc[2] * s;
    sS[r + 8][c + 1] = acc[3] * s;
    __syncthreads();
}

// ---- forward ------------------------------------------------------------------------------------
// Grid: ceil(n / (32·q)) blocks of (32, 8); dynamic shared memory 4·32·q floats (the stripe's
// row triples and diagonal). A (img) has n rows, B (txt) nb; row i's label is column i + off.
// Writes row_max, row_lsum (log Σ), row_other, diag [n] and, with want_cols, the stripe
// partials part_{max,sum,other} [stripes, nb]. The full loss: nb = n, off = 0, want_cols; one
// rank's local rows against all gathered columns: nb = N, off = rank·n, rows only.
template <class T>
__device__ __forceinline__ void contrastive_fwd(float (*sS)[CL_TILE + 1], unsigned char* stage,
                                                float* __restrict__ row_max, float* __restrict__ row_lsum,
                                                float* __restrict__ row_other, float* __restrict__ diag,
                                                float* __restrict__ part_max, float* __restrict__ part_sum,
                                                float* __restrict__ part_other, const T* __restrict__ img,
                                                const T* __restrict__ txt, const float* __restrict__ logit_scale,
                                                int n, int nb, int off, int want_cols, int d, int q) {
    int rows = CL_TILE * q;
    float* rm = dynamic_smem<float>();
    float* rs = rm + rows;
    float* ro = rs + rows;
    float* rd = ro + rows;
    int tx = threadIdx.x, ty = threadIdx.y, tid = ty * CL_TILE + tx;
    int stripe0 = blockIdx.x * rows;
    for (int i = tid; i < rows; i += CL_TILE * 8) {
        rm[i] = CL_NEG_INF;
        rs[i] = 0.0f;
        ro[i] = CL_NEG_INF;
        rd[i] = 0.0f;
    }
    __syncthreads();
    float s = expf(logit_scale[0]);
    for (int c0 = 0; c0 < nb; c0 += CL_TILE) {
        // this warp's four columns c0 + ty + 8p: the stripe's running triple, lane-uniform
        float cm[4], cs[4], co[4];
        for (int p = 0; p < 4; ++p) cm[p] = CL_NEG_INF, cs[p] = 0.0f, co[p] = CL_NEG_INF;
        for (int g = 0; g < q; ++g) {
            int r0 = stripe0 + g * CL_TILE;
            if (r0 >= n) break;  // uniform over the block
            cl_tile(sS, stage, img, txt, n, nb, d, r0, c0, s);
            for (int p = 0; p < 4; ++p) {
                // row r0 + i, lane = column
                int i = ty + 8 * p, gi = r0 + i, gj = c0 + tx;
                if (gi < n) {  // uniform over the warp
                    float x = gj < nb ? sS[i][tx] : CL_NEG_INF;
                    float m = warp_max(x);
                    float e = warp_sum(x == CL_NEG_INF ? 0.0f : expf(x - m));
                    float o = cl_warp_max_nan(gj == gi + off ? CL_NEG_INF : x);
                    if (tx == 0) {
                        int li = g * CL_TILE + i;
                        cl_merge(rm[li], rs[li], m, e);
                        ro[li] = cl_max_nan(ro[li], o);
                        if (gi + off >= c0 && gi + off < c0 + CL_TILE) rd[li] = sS[i][gi + off - c0];
                    }
                }
                // column c0 + j, lane = row
                int j = ty + 8 * p;
                gj = c0 + j;
                gi = r0 + tx;
                if (want_cols && gj < nb) {  // uniform over the warp
                    float x = gi < n ? sS[tx][j] : CL_NEG_INF;
                    float m = warp_max(x);
                    float e = warp_sum(x == CL_NEG_INF ? 0.0f : expf(x - m));
                    float o = cl_warp_max_nan(gj == gi ? CL_NEG_INF : x);
                    cl_merge(cm[p], cs[p], m, e);
                    co[p] = cl_max_nan(co[p], o);
                }
            }
            __syncthreads();  // the tile is read; the next one may overwrite it
        }
        if (want_cols && tx == 0) {
            for (int p = 0; p < 4; ++p) {
                int gj = c0 + ty + 8 * p;
                if (gj < nb) {
                    long long at = (long long)blockIdx.x * nb + gj;
                    part_max[at] = cm[p];
                    part_sum[at] = cs[p];
                    part_other[at] = co[p];
                }
            }
        }
    }
    __syncthreads();
    for (int i = tid; i < rows; i += CL_TILE * 8) {
        int gi = stripe0 + i;
        if (gi < n) {
            row_max[gi] = rm[i];
            row_lsum[gi] = logf(rs[i]);
            row_other[gi] = ro[i];
            diag[gi] = rd[i];
        }
    }
}

#define CL_FWD_PARAMS(T)                                                                                   \
    float *__restrict__ row_max, float *__restrict__ row_lsum, float *__restrict__ row_other,             \
        float *__restrict__ diag, float *__restrict__ part_max, float *__restrict__ part_sum,             \
        float *__restrict__ part_other, const T *__restrict__ img, const T *__restrict__ txt,             \
        const float *__restrict__ logit_scale, int n, int nb, int off, int want_cols, int d, int q
#define CL_FWD_ARGS \
    row_max, row_lsum, row_other, diag, part_max, part_sum, part_other, img, txt, logit_scale, n, nb, off, want_cols, d, q

// clipcu: hot
extern "C" __global__ void contrastive_fwd_f32(CL_FWD_PARAMS(float)) {
    __shared__ float sS[CL_TILE][CL_TILE + 1];
    __shared__ __align__(16) unsigned char stage[CL_STAGE_BYTES];
    contrastive_fwd(sS, stage, CL_FWD_ARGS);
}
// clipcu: hot
extern "C" __global__ void contrastive_fwd_f16(CL_FWD_PARAMS(__half)) {
    __shared__ float sS[CL_TILE][CL_TILE + 1];
    __shared__ __align__(16) unsigned char stage[CL_STAGE_BYTES];
    contrastive_fwd(sS, stage, CL_FWD_ARGS);
}
// clipcu: hot
extern "C" __global__ void contrastive_fwd_bf16(CL_FWD_PARAMS(__nv_bfloat16)) {
    __shared__ float sS[CL_TILE][CL_TILE + 1];
    __shared__ __align__(16) unsigned char stage[CL_STAGE_BYTES];
    contrastive_fwd(sS, stage, CL_FWD_ARGS);
}

// One thread per column: the stripes' partials merged in stripe order.
extern "C" __global__ void contrastive_cols_f32(float* __restrict__ col_max, float* __restrict__ col_lsum,
                                                float* __restrict__ col_other, const float* __restrict__ part_max,
                                                const float* __restrict__ part_sum,
                                                const float* __restrict__ part_other, int stripes, int n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    float m = CL_NEG_INF, s = 0.0f, o = CL_NEG_INF;
    for (int b = 0; b < stripes; ++b) {
        long long at = (long long)b * n + j;
        cl_merge(m, s, part_max[at], part_sum[at]);
        o = cl_max_nan(o, part_other[at]);
    }
    col_max[j] = m;
    col_lsum[j] = logf(s);
    col_other[j] = o;
}

#define CL_RED 256
// Softmax terms of the backward (`terms`).
#define CL_ROWS 1
#define CL_COLS 2

// One block of CL_RED threads: loss = Σ_i ((row_max − d) + row_lsum + (col_max − d') + col_lsum)
// / 2n in f64, and the hit fractions (a row hits when its diagonal beats every other entry). The
// full loss passes one diagonal twice (d = d'); the local form its two sides' rows as "rows" and
// "columns", each with its own label entries.
extern "C" __global__ void contrastive_loss_f32(float* __restrict__ loss, float* __restrict__ i2t,
                                                float* __restrict__ t2i, const float* __restrict__ row_max,
                                                const float* __restrict__ row_lsum,
                                                const float* __restrict__ row_other,
                                                const float* __restrict__ col_max,
                                                const float* __restrict__ col_lsum,
                                                const float* __restrict__ col_other,
                                                const float* __restrict__ diag,
                                                const float* __restrict__ col_diag, int n) {
    __shared__ double sl[CL_RED];
    __shared__ int sh_r[CL_RED];
    __shared__ int sh_c[CL_RED];
    int t = threadIdx.x;
    double l = 0.0;
    int hr = 0, hc = 0;
    for (int i = t; i < n; i += CL_RED) {
        double dg = diag[i], dc = col_diag[i];
        l += ((double)row_max[i] - dg) + (double)row_lsum[i] + ((double)col_max[i] - dc) + (double)col_lsum[i];
        hr += diag[i] > row_other[i];
        hc += col_diag[i] > col_other[i];
    }
    sl[t] = l;
    sh_r[t] = hr;
    sh_c[t] = hc;
    __syncthreads();
    for (int w = CL_RED / 2; w > 0; w >>= 1) {
        if (t < w) {
            sl[t] += sl[t + w];
            sh_r[t] += sh_r[t + w];
            sh_c[t] += sh_c[t + w];
        }
        __syncthreads();
    }
    if (t == 0) {
        loss[0] = (float)(sl[0] / (2.0 * n));
        float inv = 1.0f / (float)n;  // times 1/n, as the CPU computes it
        i2t[0] = (float)sh_r[0] * inv;
        t2i[0] = (float)sh_c[0] * inv;
    }
}

// ---- backward -----------------------------------------------------------------------------------

// dacc[r0 + i][k0 + x] (+)= f · Σ_c dS[i][c] · B[c0 + c][k0 + x] for every 32-wide chunk k0 of
// the features, where dS is in sS (f32, f = 1: the factor is already in) or, in 16 bits, in sP
// [32][40] (unscaled P; f = g·s/2N). Every thread must call it (it synchronises).
__device__ void cl_add_dsb(float* __restrict__ dacc, float (*sS)[CL_TILE + 1], unsigned char* stage,
                           const float* __restrict__ B, int na, int nb, int d, int r0, int c0, float) {
    float(*sB)[CL_TILE + 1] = reinterpret_cast<float(*)[CL_TILE + 1]>(stage) + CL_TILE;
    int tx = threadIdx.x, ty = threadIdx.y;
    for (int k0 = 0; k0 < d; k0 += CL_TILE) {
        int kk = k0 + tx;
        for (int q = 0; q < 4; ++q) {
            int r = ty + 8 * q;
            sB[r][tx] = (c0 + r < nb && kk < d) ? B[(long long)(c0 + r) * d + kk] : 0.0f;
        }
        __syncthreads();
        for (int p = 0; p < 4; ++p) {
            int i = ty + 8 * p, gi = r0 + i;
            float acc = 0.0f;
            for (int c = 0; c < CL_TILE; ++c) acc = fmaf(sS[i][c], sB[c][tx], acc);
            if (gi < na && kk < d) {
                long long at = (long long)gi * d + kk;
                dacc[at] = (c0 == 0) ? acc : dacc[at] + acc;
            }
        }
        __syncthreads();  // before the next chunk overwrites sB
    }
}

// 16 bits: M = the block's 32 rows, N = 32 features, K = the tile's 32 columns; warp w computes
// rows 16·(w/4).., features 8·(w%4).. . A = sP [i][c] (row-major, ldmatrix_x4); B = the staged
// B chunk [c][feature], a k×n row-major tile, hence ldmatrix_x2_trans (common.cuh).
template <class T>
__device__ void cl_add_dsb(float* __restrict__ dacc, float (*)[CL_TILE + 1], unsigned char* stage,
                           const T* __restrict__ B, int na, int nb, int d, int r0, int c0, float f) {
    T(*sB)[CL_LD16] = reinterpret_cast<T(*)[CL_LD16]>(stage) + CL_TILE;
    T(*sP)[CL_LD16] = sB + CL_TILE;
    int lane = threadIdx.x, wm = threadIdx.y / 4, wn = threadIdx.y % 4;
    int r = 16 * wm + (lane >> 2), c = 8 * wn + 2 * (lane & 3);
    for (int k0 = 0; k0 < d; k0 += CL_TILE) {
        cl_stage16(sB, B, nb, d, c0, k0);
        __syncthreads();
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int kk = 0; kk < CL_TILE; kk += 16) {
            uint32_t a[4], b[2];
            ldmatrix_x4(a, &sP[16 * wm + (lane & 15)][kk + (lane >> 4) * 8]);
            ldmatrix_x2_trans(b, &sB[kk + (lane & 15)][8 * wn]);
            cl_mma(acc, a, b, T());
        }
        for (int e = 0; e < 4; ++e) {
            int gi = r0 + r + (e >= 2 ? 8 : 0), gk = k0 + c + (e & 1);
            if (gi < na && gk < d) {
                long long at = (long long)gi * d + gk;
                float v = acc[e] * f;
                dacc[at] = (c0 == 0) ? v : dacc[at] + v;
            }
        }
        __syncthreads();  // before the next chunk overwrites sB
    }
}

// Grid: ceil(na / 32) blocks of (32, 8). dA [na, d] (written whole, in the storage type), dacc
// [na, d] f32 scratch (dÂ), dlog_part [blocks] (with want_dlog). Entry (i, j) of A·Bᵀ is a label
// when j = i + off. The softmax terms: with CL_ROWS, P^row = e^(S − lse of A's row i) (a_max,
// a_lsum; label entries a_diag[i]); with CL_COLS, P^col = e^(S − lse of B's row j) (b_max,
// b_lsum; b_diag[j]); the full loss takes both (na = nb = n, off = 0), the local form one per
// pass (the rank's rows against all columns: CL_ROWS, off = rank·n; all columns against the
// rank's rows: CL_COLS, off = −rank·n). dS is divided by 2·kn (kn = the rows a loss averages).
// a_norm: the norms of A's rows before normalisation.
template <class T>
__device__ __forceinline__ void contrastive_bwd(float (*sS)[CL_TILE + 1], unsigned char* stage, double* red,
                                                T* __restrict__ dA, float* __restrict__ dacc,
                                                double* __restrict__ dlog_part, const T* __restrict__ A,
                                                const T* __restrict__ B, const float* __restrict__ a_norm,
                                                const float* __restrict__ a_max, const float* __restrict__ a_lsum,
                                                const float* __restrict__ b_max, const float* __restrict__ b_lsum,
                                                const float* __restrict__ a_diag, const float* __restrict__ b_diag,
                                                const float* __restrict__ logit_scale,
                                                const float* __restrict__ dloss, int na, int nb, int kn, int off,
                                                int terms, int d, int want_dlog, float eps) {
    constexpr bool f32 = std::is_same<T, float>::value;
    int tx = threadIdx.x, ty = threadIdx.y;
    int r0 = blockIdx.x * CL_TILE;
    float s = expf(logit_scale[0]);
    float k = dloss[0] / (float)(2 * kn);
    const bool use_a = terms & CL_ROWS, use_b = terms & CL_COLS;
    T(*sP)[CL_LD16] = reinterpret_cast<T(*)[CL_LD16]>(stage) + 2 * CL_TILE;
    double dl = 0.0;
    for (int c0 = 0; c0 < nb; c0 += CL_TILE) {
        cl_tile(sS, stage, A, B, na, nb, d, r0, c0, s);
        int gj = c0 + tx;
        for (int p = 0; p < 4; ++p) {
            int i = ty + 8 * p, gi = r0 + i;
            float pr = 0.0f;
            if (gi < na && gj < nb) {
                float x = sS[i][tx];
                // a term that is off reads nothing (its statistics may be absent)
                float a = use_a ? (x - a_max[gi]) - a_lsum[gi] : 0.0f;
                float b = use_b ? (x - b_max[gj]) - b_lsum[gj] : 0.0f;
                if (gj == gi + off) {
                    pr = (use_a ? expm1f(a) : 0.0f) + (use_b ? expm1f(b) : 0.0f);
                } else {
                    float ea = use_a ? expf(a) : 0.0f, eb = use_b ? expf(b) : 0.0f;
                    pr = ea + eb;
                    if (want_dlog) {
                        if (use_a) dl += (double)ea * (double)(x - a_diag[gi]);
                        if (use_b) dl += (double)eb * (double)(x - b_diag[gj]);
                    }
                }
            }
            if constexpr (f32) {
                sS[i][tx] = pr * k * s;
            } else {
                sP[i][tx] = from_f32<T>(pr);
            }
        }
        __syncthreads();
        cl_add_dsb(dacc, sS, stage, B, na, nb, d, r0, c0, k * s);
    }
    // The block's rows of dÂ are complete (its own global writes are visible to it after the
    // barrier): dA = (dÂ − Â·(Â·dÂ)) / ‖a‖, or dÂ / eps below eps, as normalize.cu's backward.
    __syncthreads();
    for (int p = 0; p < 4; ++p) {
        int gi = r0 + ty + 8 * p;
        if (gi < na) {  // uniform over the warp
            long long o = (long long)gi * d;
            float dot = 0.0f;
            for (int x = tx; x < d; x += 32) dot += to_f32(A[o + x]) * dacc[o + x];
            dot = warp_sum(dot);
            float nr = a_norm[gi];
            for (int x = tx; x < d; x += 32) {
                float g = dacc[o + x];
                dA[o + x] = from_f32<T>(nr > eps ? (g - to_f32(A[o + x]) * dot) / nr : g / eps);
            }
        }
    }
    if (want_dlog) {
        int t = ty * CL_TILE + tx;
        red[t] = dl;
        __syncthreads();
        for (int w = CL_TILE * 4; w > 0; w >>= 1) {
            if (t < w) red[t] += red[t + w];
            __syncthreads();
        }
        if (t == 0) dlog_part[blockIdx.x] = red[0];
    }
}

#define CL_BWD_PARAMS(T)                                                                                   \
    T *__restrict__ dA, float *__restrict__ dacc, double *__restrict__ dlog_part, const T *__restrict__ A, \
        const T *__restrict__ B, const float *__restrict__ a_norm, const float *__restrict__ a_max,        \
        const float *__restrict__ a_lsum, const float *__restrict__ b_max, const float *__restrict__ b_lsum,  \
        const float *__restrict__ a_diag, const float *__restrict__ b_diag, const float *__restrict__ logit_scale, \
        const float *__restrict__ dloss, int na, int nb, int kn, int off, int terms, int d, int want_dlog, float eps
#define CL_BWD_ARGS                                                                                            \
    dA, dacc, dlog_part, A, B, a_norm, a_max, a_lsum, b_max, b_lsum, a_diag, b_diag, logit_scale, dloss, na, nb, kn, \
        off, terms, d, want_dlog, eps

// clipcu: hot
extern "C" __global__ void contrastive_bwd_f32(CL_BWD_PARAMS(float)) {
    __shared__ float sS[CL_TILE][CL_TILE + 1];
    __shared__ __align__(16) unsigned char stage[CL_STAGE_BYTES];
    __shared__ double red[CL_TILE * 8];
    contrastive_bwd(sS, stage, red, CL_BWD_ARGS);
}
// clipcu: hot
extern "C" __global__ void contrastive_bwd_f16(CL_BWD_PARAMS(__half)) {
    __shared__ float sS[CL_TILE][CL_TILE + 1];
    __shared__ __align__(16) unsigned char stage[CL_STAGE_BYTES];
    __shared__ double red[CL_TILE * 8];
    contrastive_bwd(sS, stage, red, CL_BWD_ARGS);
}
// clipcu: hot
extern "C" __global__ void contrastive_bwd_bf16(CL_BWD_PARAMS(__nv_bfloat16)) {
    __shared__ float sS[CL_TILE][CL_TILE + 1];
    __shared__ __align__(16) unsigned char stage[CL_STAGE_BYTES];
    __shared__ double red[CL_TILE * 8];
    contrastive_bwd(sS, stage, red, CL_BWD_ARGS);
}

// One thread: the blocks' Σ P·(S − S_ii) in block order, times g/2n.
extern "C" __global__ void contrastive_dlogit_f32(float* __restrict__ dlogit, const double* __restrict__ parts,
                                                  const float* __restrict__ dloss, int blocks, int n) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double sum = 0.0;
    for (int b = 0; b < blocks; ++b) sum += parts[b];
    dlogit[0] = (float)(sum * (double)(dloss[0] / (float)(2 * n)));
}
