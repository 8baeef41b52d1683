// cross_entropy.cu — row-wise cross-entropy of logits against integer targets, on f32, f16 or
// bf16 logits (src/ops/cross_entropy/gpu.rs ↔ this file). The contrastive loss is two of these over the
// N×N similarity logits, plus its batch accuracies (diagonal_hits_f32).
//
// Targets: an i32 per row, or none (a null pointer) for the contrastive loss's labels 0..N−1,
// where row r's target is r itself — no index buffer to upload in every training step.
//
//   forward:  per row r of z [N, C] with target t: m = max_j z_j, s = Σ_j exp(z_j − m),
//             loss[r] = (m − z_t) + log s,  p[r, j] = exp(z_j − m) / s
//             (the mean over rows is the two-stage fixed-order sum of reduce.cu)
//   backward: dz[r, j] = (p[r, j] − [j = t]) · (dL / N), dL read from device memory
//
// Numerics (a row-wise log-softmax): subtracting the row max makes every exp ≤ 1, so nothing
// overflows whatever the logit scale, and s ≥ 1 (the max term is exp 0 = 1), so log s is finite
// and ≥ 0. The loss is written as (m − z_t) + log s rather than (m + log s) − z_t: when the target
// wins by a wide margin the loss is tiny, and forming the large log-sum-exp first and subtracting
// z_t afterwards would cancel away its leading digits; m − z_t is exact (Sterbenz) when the two
// are within a factor of 2, and otherwise is a well-conditioned difference of two inputs. The CPU
// reference accumulates s in f64; the warp's f32 sum differs by ~C·2⁻²⁴ relative, far below the
// tests' 1e-5.
//
// 16-bit logits (_f16, _bf16, the same templates): read widened to f32; the loss, the saved
// probabilities p and every sum stay f32 (p − onehot cancels where p ≈ 1: a 16-bit p would keep
// only 11 or 8 bits of the difference); dlogits is stored in the logits' dtype, rounded once.
//
// One warp per row, blocks of (32, 8) = 8 rows (LaunchConfig::warp_per_row). Lane l handles
// columns l, l+32, …; max and sum are warp butterflies (a fixed order, so results never depend on
// scheduling). A warp past the last row skips the body as a whole, so no lane leaves a collective
// early. The dloss scalar is read by every thread rather than copied to the host first, so the
// backward launch needs no device→host synchronisation.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void cross_entropy_fwd(float* __restrict__ loss, float* __restrict__ probs,
                                                  const T* __restrict__ logits, const int* __restrict__ targets,
                                                  int rows, int c) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        const T* z = logits + (long long)row * c;
        float* p = probs + (long long)row * c;
        float m = -INFINITY;
        for (int j = lane; j < c; j += 32) m = fmaxf(m, to_f32(z[j]));
        m = warp_max(m);
        float s = 0.0f;
        for (int j = lane; j < c; j += 32) s += expf(to_f32(z[j]) - m);
        s = warp_sum(s);
        float inv = 1.0f / s;
        for (int j = lane; j < c; j += 32) p[j] = expf(to_f32(z[j]) - m) * inv;
        if (lane == 0) loss[row] = (m - to_f32(z[targets ? targets[row] : row])) + logf(s);
    }
}

// clipcu: hot
extern "C" __global__ void cross_entropy_fwd_f32(float* __restrict__ loss, float* __restrict__ probs,
                                                 const float* __restrict__ logits, const int* __restrict__ targets,
                                                 int rows, int c) {
    cross_entropy_fwd(loss, probs, logits, targets, rows, c);
}
// clipcu: hot
extern "C" __global__ void cross_entropy_fwd_f16(float* __restrict__ loss, float* __restrict__ probs,
                                                 const __half* __restrict__ logits, const int* __restrict__ targets,
                                                 int rows, int c) {
    cross_entropy_fwd(loss, probs, logits, targets, rows, c);
}
// clipcu: hot
extern "C" __global__ void cross_entropy_fwd_bf16(float* __restrict__ loss, float* __restrict__ probs,
                                                  const __nv_bfloat16* __restrict__ logits,
                                                  const int* __restrict__ targets, int rows, int c) {
    cross_entropy_fwd(loss, probs, logits, targets, rows, c);
}

template <class T>
__device__ __forceinline__ void cross_entropy_bwd(T* __restrict__ dlogits, const float* __restrict__ probs,
                                                  const int* __restrict__ targets, const float* __restrict__ dloss,
                                                  int rows, int c) {
    int row = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (row < rows) {
        // The CPU reference's order: scale = dL / N once, then (p − onehot)·scale.
        float scale = dloss[0] / (float)rows;
        int t = targets ? targets[row] : row;
        long long o = (long long)row * c;
        for (int j = lane; j < c; j += 32)
            dlogits[o + j] = from_f32<T>((probs[o + j] - (j == t ? 1.0f : 0.0f)) * scale);
    }
}

// clipcu: hot
extern "C" __global__ void cross_entropy_bwd_f32(float* __restrict__ dlogits, const float* __restrict__ probs,
                                                 const int* __restrict__ targets, const float* __restrict__ dloss,
                                                 int rows, int c) {
    cross_entropy_bwd(dlogits, probs, targets, dloss, rows, c);
}
// clipcu: hot
extern "C" __global__ void cross_entropy_bwd_f16(__half* __restrict__ dlogits, const float* __restrict__ probs,
                                                 const int* __restrict__ targets, const float* __restrict__ dloss,
                                                 int rows, int c) {
    cross_entropy_bwd(dlogits, probs, targets, dloss, rows, c);
}
// clipcu: hot
extern "C" __global__ void cross_entropy_bwd_bf16(__nv_bfloat16* __restrict__ dlogits, const float* __restrict__ probs,
                                                  const int* __restrict__ targets, const float* __restrict__ dloss,
                                                  int rows, int c) {
    cross_entropy_bwd(dlogits, probs, targets, dloss, rows, c);
}

// The contrastive loss's batch accuracy: hit[i] = 1 when the diagonal logit of row i (or, with
// `transpose`, of column i) is strictly greater than every other logit of that row (column),
// else 0 — the CPU reference's rule, under which a tie is a miss. One warp per row/column; the
// hits are then summed by reduce.cu's fixed-order sum (exact: a sum of 0/1 values below 2^24).
extern "C" __global__ void diagonal_hits_f32(float* __restrict__ hit, const float* __restrict__ logits, int n,
                                             int transpose) {
    int i = blockIdx.x * blockDim.y + threadIdx.y;
    int lane = threadIdx.x;
    if (i < n) {
        long long row_step = transpose ? 1 : n, col_step = transpose ? n : 1;
        float d = logits[(long long)i * (n + 1)];
        int beaten = 0;
        for (int j = lane; j < n; j += 32) {
            float v = logits[(long long)i * row_step + (long long)j * col_step];
            beaten |= (j != i && !(v < d)); // as the CPU: a NaN on either side is a miss
        }
        // any lane that found a logit >= the diagonal makes row i a miss
        beaten = __any_sync(0xffffffffu, beaten);
        if (lane == 0) hit[i] = beaten ? 0.0f : 1.0f;
    }
}
