// contrastive.cu — CLIP's contrastive loss fused, f32 (src/ops/contrastive/gpu.rs ↔ this file):
// tiles of S = s·ÎT̂ᵀ (Î, T̂ the unit rows, normalised beforehand by normalize.cu), never the
// N×N matrix. The algebra is in src/ops/contrastive/mod.rs; in short
//
//   r_i = lse_j S_ij, c_j = lse_i S_ij, loss = Σ_i (r_i − S_ii + c_i − S_ii) / 2N,
//   dS_ij = g·(e^(S_ij − r_i) + e^(S_ij − c_j) − 2δ_ij) / 2N,
//   dÎ = s·dS·T̂, dT̂ = s·dSᵀ·Î, d logit_scale = Σ dS_ij·S_ij.
//
// Tiles are 32×32, blocks (32, 8): thread (x, y) computes column x of rows y, y+8, y+16, y+24 of
// a tile, from 32-wide feature chunks of both operands staged in shared memory (rows padded to
// 33 floats: the column reads sB[x][k] fall in 32 different banks). Each dot product is an fma
// chain over k in order, so a tile's values never depend on the launch.
//
// Forward, one pass over the tiles for both directions:
//   contrastive_fwd_f32: block b owns a stripe of q·32 rows and walks every column tile; for each
//     it computes the tile of each of its q row groups in turn. Rows: a warp reduces each row of
//     the tile (max, Σe^(x − max), max off the diagonal) and merges it into the row's running
//     triple in shared memory, tile after tile. Columns: a warp reduces each column over the q
//     tiles of the stripe in the same way and writes the stripe's partial triple of that column.
//   contrastive_cols_f32: column j's partials merged over the stripes in stripe order.
//   contrastive_loss_f32: one block; the loss and both hit counts in a fixed-order tree (f64).
// No float atomics anywhere: every result is bitwise reproducible for a given N, D and q.
// Memory beyond inputs: 3 floats per (stripe, column) — the launcher picks q so that stays small.
//
// Backward, the tiles recomputed; contrastive_bwd_f32 is launched twice with the roles swapped:
//   (A = Î, B = T̂, LSEs rows then columns) gives dÎ; (A = T̂, B = Î, swapped LSEs) gives dT̂, since
//   Sᵀ's tiles are the same entries and dS is symmetric in the roles. Block b owns 32 rows of A:
//   per column tile it turns S into dS·s in shared memory, then adds dS·B[tile] into its rows of
//   dA chunk by chunk (each (row, feature) belongs to one thread of one block: no atomics).
//   With want_dlog it also sums, per block, Σ P^row·(S − S_ii) + P^col·(S − S_jj) over the
//   off-diagonal entries — Σ dS·S with the δ terms gone (each softmax sums to 1), terms of one
//   sign so nothing cancels — and contrastive_dlogit_f32 adds the blocks' sums in order.
// Numerics as the CPU reference (cpu.rs): LSEs kept as (max, log Σ) pairs, e^(x − max − log Σ);
// on the diagonal P − 1 as expm1 (a confident pair has P ≈ 1).
#include "common.cuh"

#define CL_TILE 32
#define CL_NEG_INF (-INFINITY)

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

// sS[i][j] = s · A[r0 + i] · B[c0 + j] for the 32×32 tile (0 past n), staged through sA, sB.
// Every thread of the block must call it (it synchronises).
__device__ void cl_tile(float (*sS)[CL_TILE + 1], float (*sA)[CL_TILE + 1], float (*sB)[CL_TILE + 1],
                        const float* __restrict__ A, const float* __restrict__ B, int n, int d, int r0,
                        int c0, float s) {
    int tx = threadIdx.x, ty = threadIdx.y;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < d; k0 += CL_TILE) {
        int k = k0 + tx;
        for (int q = 0; q < 4; ++q) {
            int r = ty + 8 * q;
            sA[r][tx] = (r0 + r < n && k < d) ? A[(long long)(r0 + r) * d + k] : 0.0f;
            sB[r][tx] = (c0 + r < n && k < d) ? B[(long long)(c0 + r) * d + k] : 0.0f;
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

// Grid: ceil(n / (32·q)) blocks of (32, 8); dynamic shared memory 4·32·q floats (the stripe's
// row triples and diagonal). Writes row_max, row_lsum (log Σ), row_other, diag [n] and the
// stripe partials part_{max,sum,other} [stripes, n].
// clipcu: hot
extern "C" __global__ void contrastive_fwd_f32(float* __restrict__ row_max, float* __restrict__ row_lsum,
                                               float* __restrict__ row_other, float* __restrict__ diag,
                                               float* __restrict__ part_max, float* __restrict__ part_sum,
                                               float* __restrict__ part_other, const float* __restrict__ img,
                                               const float* __restrict__ txt,
                                               const float* __restrict__ logit_scale, int n, int d, int q) {
    __shared__ float sS[CL_TILE][CL_TILE + 1];
    __shared__ float sA[CL_TILE][CL_TILE + 1];
    __shared__ float sB[CL_TILE][CL_TILE + 1];
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
    for (int c0 = 0; c0 < n; c0 += CL_TILE) {
        // this warp's four columns c0 + ty + 8p: the stripe's running triple, lane-uniform
        float cm[4], cs[4], co[4];
        for (int p = 0; p < 4; ++p) cm[p] = CL_NEG_INF, cs[p] = 0.0f, co[p] = CL_NEG_INF;
        for (int g = 0; g < q; ++g) {
            int r0 = stripe0 + g * CL_TILE;
            if (r0 >= n) break;  // uniform over the block
            cl_tile(sS, sA, sB, img, txt, n, d, r0, c0, s);
            for (int p = 0; p < 4; ++p) {
                // row r0 + i, lane = column
                int i = ty + 8 * p, gi = r0 + i, gj = c0 + tx;
                if (gi < n) {  // uniform over the warp
                    float x = gj < n ? sS[i][tx] : CL_NEG_INF;
                    float m = warp_max(x);
                    float e = warp_sum(x == CL_NEG_INF ? 0.0f : expf(x - m));
                    float o = cl_warp_max_nan(gj == gi ? CL_NEG_INF : x);
                    if (tx == 0) {
                        int li = g * CL_TILE + i;
                        cl_merge(rm[li], rs[li], m, e);
                        ro[li] = cl_max_nan(ro[li], o);
                        if (gi >= c0 && gi < c0 + CL_TILE) rd[li] = sS[i][gi - c0];
                    }
                }
                // column c0 + j, lane = row
                int j = ty + 8 * p;
                gj = c0 + j;
                gi = r0 + tx;
                if (gj < n) {
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
        if (tx == 0) {
            for (int p = 0; p < 4; ++p) {
                int gj = c0 + ty + 8 * p;
                if (gj < n) {
                    long long at = (long long)blockIdx.x * n + gj;
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

// One block of CL_RED threads: loss = Σ_i ((row_max − d) + row_lsum + (col_max − d) + col_lsum)
// / 2n in f64, and the hit fractions (a row hits when its diagonal beats every other entry).
extern "C" __global__ void contrastive_loss_f32(float* __restrict__ loss, float* __restrict__ i2t,
                                                float* __restrict__ t2i, const float* __restrict__ row_max,
                                                const float* __restrict__ row_lsum,
                                                const float* __restrict__ row_other,
                                                const float* __restrict__ col_max,
                                                const float* __restrict__ col_lsum,
                                                const float* __restrict__ col_other,
                                                const float* __restrict__ diag, int n) {
    __shared__ double sl[CL_RED];
    __shared__ int sh_r[CL_RED];
    __shared__ int sh_c[CL_RED];
    int t = threadIdx.x;
    double l = 0.0;
    int hr = 0, hc = 0;
    for (int i = t; i < n; i += CL_RED) {
        double dg = diag[i];
        l += ((double)row_max[i] - dg) + (double)row_lsum[i] + ((double)col_max[i] - dg) + (double)col_lsum[i];
        hr += diag[i] > row_other[i];
        hc += diag[i] > col_other[i];
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

// Grid: ceil(n / 32) blocks of (32, 8). dA [n, d] (written whole), dlog_part [blocks] (with
// want_dlog). a_* are the LSEs of A's rows, b_* of B's rows (the other direction).
// clipcu: hot
extern "C" __global__ void contrastive_bwd_f32(float* __restrict__ dA, double* __restrict__ dlog_part,
                                               const float* __restrict__ A, const float* __restrict__ B,
                                               const float* __restrict__ a_max, const float* __restrict__ a_lsum,
                                               const float* __restrict__ b_max, const float* __restrict__ b_lsum,
                                               const float* __restrict__ diag,
                                               const float* __restrict__ logit_scale,
                                               const float* __restrict__ dloss, int n, int d, int want_dlog) {
    __shared__ float sS[CL_TILE][CL_TILE + 1];
    __shared__ float sA[CL_TILE][CL_TILE + 1];
    __shared__ float sB[CL_TILE][CL_TILE + 1];
    __shared__ double red[CL_TILE * 8];
    int tx = threadIdx.x, ty = threadIdx.y;
    int r0 = blockIdx.x * CL_TILE;
    float s = expf(logit_scale[0]);
    float k = dloss[0] / (float)(2 * n);
    double dl = 0.0;
    for (int c0 = 0; c0 < n; c0 += CL_TILE) {
        cl_tile(sS, sA, sB, A, B, n, d, r0, c0, s);
        int gj = c0 + tx;
        for (int p = 0; p < 4; ++p) {
            int i = ty + 8 * p, gi = r0 + i;
            float ds = 0.0f;
            if (gi < n && gj < n) {
                float x = sS[i][tx];
                float a = (x - a_max[gi]) - a_lsum[gi];
                float b = (x - b_max[gj]) - b_lsum[gj];
                float pr;
                if (gi == gj) {
                    pr = expm1f(a) + expm1f(b);
                } else {
                    float ea = expf(a), eb = expf(b);
                    pr = ea + eb;
                    if (want_dlog) dl += (double)ea * (double)(x - diag[gi]) + (double)eb * (double)(x - diag[gj]);
                }
                ds = pr * k * s;
            }
            sS[i][tx] = ds;
        }
        __syncthreads();
        // dA[r0 + i, k0 + tx] (+)= Σ_c dS[i][c] · B[c0 + c, k0 + tx]
        for (int k0 = 0; k0 < d; k0 += CL_TILE) {
            int kk = k0 + tx;
            for (int q = 0; q < 4; ++q) {
                int r = ty + 8 * q;
                sB[r][tx] = (c0 + r < n && kk < d) ? B[(long long)(c0 + r) * d + kk] : 0.0f;
            }
            __syncthreads();
            for (int p = 0; p < 4; ++p) {
                int i = ty + 8 * p, gi = r0 + i;
                float acc = 0.0f;
                for (int c = 0; c < CL_TILE; ++c) acc = fmaf(sS[i][c], sB[c][tx], acc);
                if (gi < n && kk < d) {
                    long long at = (long long)gi * d + kk;
                    dA[at] = (c0 == 0) ? acc : dA[at] + acc;
                }
            }
            __syncthreads();  // before the next chunk overwrites sB
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

// One thread: the blocks' Σ P·(S − S_ii) in block order, times g/2n.
extern "C" __global__ void contrastive_dlogit_f32(float* __restrict__ dlogit, const double* __restrict__ parts,
                                                  const float* __restrict__ dloss, int blocks, int n) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double sum = 0.0;
    for (int b = 0; b < blocks; ++b) sum += parts[b];
    dlogit[0] = (float)(sum * (double)(dloss[0] / (float)(2 * n)));
}
