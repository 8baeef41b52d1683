// adamw.cu — the optimizer step on the device: one fused multi-tensor AdamW launch over every
// parameter, the global L2 norm of the gradients with torch's clipping factor, and an in-place
// clamp, f32 (src/optim/adamw/gpu.rs ↔ this file).
//
// The launch table (multi-tensor layout). The host describes every parameter that has a gradient
// by one AdamWEntry — the addresses of its value, gradient, exp_avg and exp_avg_sq, its numel as
// 64-bit, the index of its first chunk, flags — uploads the table once, and rebuilds it only
// when a storage address changes (src/optim/adamw/gpu.rs). Each tensor is cut into chunks of
// ADAMW_CHUNK elements, numbered across the table in entry order: entry e owns chunks
// first_chunk .. first_chunk + ceil(numel / ADAMW_CHUNK) − 1, the last one partial. chunk_entry[c]
// (uploaded with the table) names the entry of chunk c, so a block finds its tensor with one
// load. A chunk never spans two tensors: a 1-element logit_scale and a 49408×512 embedding share
// one launch without padding, and element i of a chunk is element (c − first_chunk)·CHUNK + i of
// its tensor.
//
// adamw_step_f32(table, chunk_entry, clip, decay, step_size, bc2_sqrt, b1, b2, eps, step, overflow): block c
// updates chunk c (grid = the number of chunks; any block size, 256 from the launcher), thread t
// elements t, t + blockDim.x, … of it — torch.optim.AdamW's arithmetic exactly as the CPU
// reference does it (src/optim/adamw/mod.rs):
//   g = grad·clip;  p ← p·decay (decay = 1 − lr·wd on entries with ADAMW_DECAY, else 1);
//   m ← b1·m + (1 − b1)·g;  v ← b2·v + ((1 − b2)·g)·g;  p ← p − (step_size·m) / (√v / bc2_sqrt + eps)
// with step_size = lr / (1 − β₁ᵗ) and bc2_sqrt = √(1 − β₂ᵗ) computed on the host in f64 and
// rounded to f32 as the reference rounds them. Every operation is an explicitly rounded f32 op
// (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn) in the reference's order, so nvcc cannot
// contract a multiply-add into an FMA: the update is bit-identical to the CPU's on Emu and on the
// GPU. `clip` is a pointer to the factor adamw_grad_norm_f32 left in device memory (no host sync
// between clipping and the step); a null pointer means 1 (no clipping this step). Scaling the
// gradient here instead of in its own pass is bit-identical to the reference's separate
// `g·factor`, and grad·1 = grad exactly.
//
// The gradient norm for clipping, two stages over the same table, no atomics:
//   adamw_grad_sumsq_f32(partials, table, chunk_entry, n_chunks): partials[c] = Σ g² over chunk c
//   in f64. Block b takes chunks b, b + gridDim.x, …; inside a chunk, ADAMW_LANES = 256 logical
//   lanes l sum elements l, l + 256, … in order, then a fixed pairwise tree adds the lanes
//   (s[l] += s[l + w] for w = 128, 64, …, 1). The block's threads share out the logical lanes, so
//   neither the block size nor the grid changes a bit of any partial.
//   adamw_grad_norm_f32(norm, clip, sumsq, partials, n_partials, max_norm): one block reduces
//   the partials the same way (lane l adds partials l, l + 256, … in index order, then the
//   tree), norm = √Σ, and clip = max_norm / (norm + 1e-6) when that is below 1, else 1 — torch's
//   clip_grad_norm_ rule, computed in f64 as the CPU reference computes it, stored as f32; Σ
//   itself goes to `sumsq` in f64 (where the launch-geometry claim can be checked bit for bit:
//   the f32 norm would hide a difference in f64 rounding).
//   Why f64: a square of an f32 is exact in f64 and millions of them are summed; f32 partials
//   would lose ~1e-7 per addition relative to the running sum (the CPU reference sums in f64).
//   Why no atomics: float atomics add in arrival order, which differs from run to run; this
//   order depends only on the tensors' sizes, so the norm is bitwise reproducible on any launch
//   geometry, and within f64 rounding (≪ f32 resolution) of the reference's sequential sum.
//
// ZeRO-1's clip over sharded gradients: adamw_sumsq_as_f32 and adamw_clip_from_sumsq_f32 (at
// their definitions below).
//
// clamp_inplace_f32(x, lo, hi, n): x ← clamp(x, lo, hi) in place (logit_scale to [0, ln 100]
// after each step), NaN kept as Rust's f32::clamp keeps it. A kernel of its own rather than a
// per-entry table flag: the clamp is the model's rule applied after the step (open_clip does it
// outside the optimizer), it must also hold when logit_scale had no gradient, and it costs one
// one-element launch.
//
// 16-bit storage (pure_fp16 / pure_bf16, DESIGN §11; AdamWConfig::moments, a parameter's dtype).
// The arithmetic above is unchanged and stays f32 — only what is loaded and stored changes:
//   - weights: an entry flagged ADAMW_P_F16 / ADAMW_P_BF16 holds its values in 16 bits; the new
//     weight is computed in f32 as above and stored with stochastic rounding (common.cuh's
//     sround), random bits sr_bits(sr_key(step, tensor_id, STREAM_P), element index). The
//     dispatch is per entry (one launch mixes f32 and 16-bit weights); gradients are f32.
//   - adamw_step_f16s: m and v stored in f16, each block of ADAMW_SCALE_BLOCK = 256 elements of a
//     tensor with its own f32 scale per moment (entry.reserved: the tensor's m scales, then its v
//     scales, one per block). A step loads m = f16(m_q)·scale (as does v), computes the f32
//     moments and the update as above, then picks the block's new scale from the new moments'
//     largest magnitude amax: the power of two 2^k with amax / 2^k in [2^14, 2^15), and stores
//     m / 2^k rounded to nearest. Why a power of two: multiplying by it is exact, so a scale
//     adds no rounding of its own and the dequantised value is exactly the stored f16 times
//     2^k. Why [2^14, 2^15): the block's largest value keeps f16's full 11 bits and rounding
//     cannot carry it to inf (f16's max is 65504), while values down to amax·2^-38 still survive
//     as f16 subnormals — a gradient of 1e-6 gives v ≈ 2e-14, which plain f16 (smallest
//     subnormal 6e-8) would flush to zero, but the scale follows it down. amax comes from a
//     fixed tree over the block's 256 logical lanes in shared memory, so the block size never
//     matters (a max is exact anyway).
//   - adamw_step_bf16sr: m and v stored in bf16 (f32's exponent range: no scale needed) with
//     stochastic rounding (streams STREAM_M, STREAM_V), so that the many small changes of a
//     moment average out instead of stalling at bf16's 8-bit resolution.
//   Which one is the default 16-bit choice (MomentPrecision::half_default): f16 with block
//   scales, by measurement — tests/kernels_adamw.rs, 500 steps (lr 1e-2, warmup 50, cosine),
//   the largest |loss − f32 Adam's loss| / f32's over the run (every 10 steps), 12 fresh seeds
//   on the CPU reference (= Emu bit for bit), 2026-12-06:
//                       least squares [32×64]        tiny MLP 16→32→4
//     f16 scaled        mean 0.030%, max 0.064%      mean 0.15%, max 0.31%
//     bf16 + SR         mean 0.33%,  max 0.76%       mean 1.3%,  max 5.6%
//   (at step 500 both reach f32's least-squares optimum to < 0.001%). f16's 11-bit mantissa
//   with a per-block exponent resolves m and v 8× finer than bf16's 8 bits; stochastic rounding
//   keeps bf16 unbiased but adds a relative noise of ~2^-9 to each moment every step, which the
//   MLP's small late gradients feel. Both cost 4 bytes per parameter (+ 8 bytes per 256 for the
//   scales), so the finer one wins; bf16 + SR needs no reduction (no block max) and stays
//   available (AdamWConfig::moments).
//   Saturation: a finite weight or bf16 moment rounding past the format's largest finite value
//   is stored as that value and counted into *overflow (64-bit, integer atomics; null: none
//   wanted), which the optimizer reads back on request.
#include "common.cuh"

// Elements per chunk (a multiple of ADAMW_LANES); the launcher numbers chunks with it too.
#define ADAMW_CHUNK 4096
// Logical lanes of the fixed-order sums.
#define ADAMW_LANES 256

// Elements per moment scale (adamw_step_f16s); a chunk holds ADAMW_CHUNK / ADAMW_SCALE_BLOCK.
#define ADAMW_SCALE_BLOCK 256

// Entry flags: decay, and the weights' storage type (neither P bit: f32).
#define ADAMW_DECAY 1u
#define ADAMW_P_F16 2u
#define ADAMW_P_BF16 4u
// Stochastic-rounding streams (src/optim/sround.rs: STREAM_PARAM, STREAM_EXP_AVG, STREAM_EXP_AVG_SQ).
#define STREAM_P 0u
#define STREAM_M 1u
#define STREAM_V 2u

// One parameter of the launch: 64 bytes, 8 little-endian u64 words as the host packs them.
struct AdamWEntry {
    unsigned long long param;       // address of the values (P)
    unsigned long long grad;        // address of the gradient (G)
    unsigned long long exp_avg;     // address of m (M)
    unsigned long long exp_avg_sq;  // address of v (M)
    long long numel;
    long long first_chunk;          // this tensor's first chunk in the launch's numbering
    unsigned int flags;             // ADAMW_DECAY | reserved bits
    unsigned int tensor_id;         // stochastic rounding's tensor id: the slot's index in the (unsharded) optimizer
    unsigned long long reserved;    // adamw_step_f16s: address of the m scales, then the v scales (f32); else 0
};
static_assert(sizeof(AdamWEntry) == 64, "AdamWEntry is 8 words, as src/optim/adamw/gpu.rs packs it");

// The scalars of one launch.
struct AdamWScalars {
    float cf, decay, step_size, bc2_sqrt, b1, b2, eps;
    unsigned long long step;
};

// One element's update in f32, torch's order (see the top): m, v in and out, the new weight out.
__device__ __forceinline__ float adamw_element(float g, float p, float& m, float& v, float d, const AdamWScalars& s) {
    const float a1 = __fsub_rn(1.0f, s.b1), a2 = __fsub_rn(1.0f, s.b2);
    g = __fmul_rn(g, s.cf);
    const float pi = __fmul_rn(p, d);
    m = __fadd_rn(__fmul_rn(s.b1, m), __fmul_rn(a1, g));
    v = __fadd_rn(__fmul_rn(s.b2, v), __fmul_rn(__fmul_rn(a2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
    return __fsub_rn(pi, __fdiv_rn(__fmul_rn(s.step_size, m), denom));
}

// Moments in M ∈ {float, __nv_bfloat16 (stochastic rounding)}, weights in P: elements lo..hi of
// entry e, thread t taking t, t + blockDim.x, …
template <class P, class M>
__device__ __forceinline__ void adamw_chunk(const AdamWEntry& e, long long lo, long long hi, const AdamWScalars& s,
                                            unsigned int* over) {
    P* __restrict__ p = reinterpret_cast<P*>(e.param);
    const float* __restrict__ grad = reinterpret_cast<const float*>(e.grad);
    M* __restrict__ m = reinterpret_cast<M*>(e.exp_avg);
    M* __restrict__ v = reinterpret_cast<M*>(e.exp_avg_sq);
    const float d = (e.flags & ADAMW_DECAY) ? s.decay : 1.0f;
    const uint64_t kp = sr_key(s.step, e.tensor_id, STREAM_P);
    const uint64_t km = sr_key(s.step, e.tensor_id, STREAM_M), kv = sr_key(s.step, e.tensor_id, STREAM_V);
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float mi = to_f32(m[i]), vi = to_f32(v[i]);
        const float pn = adamw_element(grad[i], to_f32(p[i]), mi, vi, d, s);
        m[i] = sround<M>(mi, sr_bits(km, (uint64_t)i), over);
        v[i] = sround<M>(vi, sr_bits(kv, (uint64_t)i), over);
        p[i] = sround<P>(pn, sr_bits(kp, (uint64_t)i), over);
    }
}

// The per-block scale 2^k for a block whose largest magnitude is amax: amax·2^-k in [2^14, 2^15)
// (k ≥ −126: a normal f32), 1 when there is nothing to fit (0, inf, NaN). By exponent bits.
__device__ __forceinline__ float f16_block_scale(float amax) {
    const uint32_t b = __float_as_uint(amax);
    if (!(amax > 0.0f) || b >= 0x7f800000u) return 1.0f;
    int k = (int)(b >> 23) - 127 - 14;
    if (k < -126) k = -126;
    return __uint_as_float((uint32_t)(k + 127) << 23);
}
// 1 / scale, exact (a power of two whose reciprocal is a normal f32 too).
__device__ __forceinline__ float f16_block_inv(float scale) {
    return __uint_as_float((254u - (__float_as_uint(scale) >> 23)) << 23);
}

// Max of the ADAMW_SCALE_BLOCK values of a and of b by a fixed tree (as lanes_tree_sum); results
// in a[0], b[0]. fmaxf skips NaN, so a NaN never picks the scale (it is stored as NaN anyway).
__device__ __forceinline__ void scale_block_tree_max(float* a, float* b) {
    for (int w = ADAMW_SCALE_BLOCK / 2; w > 0; w /= 2) {
        for (int l = threadIdx.x; l < w; l += blockDim.x) {
            a[l] = fmaxf(a[l], a[l + w]);
            b[l] = fmaxf(b[l], b[l + w]);
        }
        __syncthreads();
    }
}

// f16 moments with per-block scales, weights in P: the scale blocks of elements lo..hi of entry
// e, one after another; logical lane l of a block is element b0 + l, shared out among threads.
// `shared`: 4·ADAMW_SCALE_BLOCK floats of shared memory (the caller's, one array for every
// instantiation: each would otherwise reserve its own).
template <class P>
__device__ __forceinline__ void adamw_chunk_f16s(const AdamWEntry& e, long long lo, long long hi,
                                                 const AdamWScalars& s, unsigned int* over, float* shared) {
    float* sm = shared;
    float* sv = shared + ADAMW_SCALE_BLOCK;
    float* am = shared + 2 * ADAMW_SCALE_BLOCK;
    float* av = shared + 3 * ADAMW_SCALE_BLOCK;
    P* __restrict__ p = reinterpret_cast<P*>(e.param);
    const float* __restrict__ grad = reinterpret_cast<const float*>(e.grad);
    __half* __restrict__ m = reinterpret_cast<__half*>(e.exp_avg);
    __half* __restrict__ v = reinterpret_cast<__half*>(e.exp_avg_sq);
    float* __restrict__ mscale = reinterpret_cast<float*>(e.reserved);
    float* __restrict__ vscale = mscale + (e.numel + ADAMW_SCALE_BLOCK - 1) / ADAMW_SCALE_BLOCK;
    const float d = (e.flags & ADAMW_DECAY) ? s.decay : 1.0f;
    const uint64_t kp = sr_key(s.step, e.tensor_id, STREAM_P);
    for (long long b0 = lo; b0 < hi; b0 += ADAMW_SCALE_BLOCK) {
        const long long blk = b0 / ADAMW_SCALE_BLOCK;
        const float ms = mscale[blk], vs = vscale[blk];
        for (int l = threadIdx.x; l < ADAMW_SCALE_BLOCK; l += blockDim.x) {
            const long long i = b0 + l;
            float mi = 0.0f, vi = 0.0f;
            if (i < hi) {
                mi = __fmul_rn(to_f32(m[i]), ms);  // exact: ms is a power of two
                vi = __fmul_rn(to_f32(v[i]), vs);
                const float pn = adamw_element(grad[i], to_f32(p[i]), mi, vi, d, s);
                p[i] = sround<P>(pn, sr_bits(kp, (uint64_t)i), over);
            }
            sm[l] = mi;
            sv[l] = vi;
            am[l] = fabsf(mi);
            av[l] = vi;
        }
        __syncthreads();
        scale_block_tree_max(am, av);
        const float ms2 = f16_block_scale(am[0]), vs2 = f16_block_scale(av[0]);
        const float mi2 = f16_block_inv(ms2), vi2 = f16_block_inv(vs2);
        for (int l = threadIdx.x; l < ADAMW_SCALE_BLOCK; l += blockDim.x) {
            const long long i = b0 + l;
            if (i < hi) {
                m[i] = __float2half_rn(__fmul_rn(sm[l], mi2));
                v[i] = __float2half_rn(__fmul_rn(sv[l], vi2));
            }
        }
        if (threadIdx.x == 0) {
            mscale[blk] = ms2;
            vscale[blk] = vs2;
        }
        __syncthreads();  // sm … av are refilled for the next block
    }
}

// Block c: its chunk's entry and element range, the weights' type from the entry's flags.
template <int MOMENTS>  // 0: f32, 1: f16 scaled, 2: bf16 stochastic
__device__ __forceinline__ void adamw_step(const AdamWEntry* __restrict__ table, const int* __restrict__ chunk_entry,
                                           const AdamWScalars& s, unsigned long long* overflow) {
    const int c = blockIdx.x;
    const AdamWEntry e = table[chunk_entry[c]];
    const long long lo = (long long)(c - e.first_chunk) * ADAMW_CHUNK;
    const long long hi = min(e.numel, lo + (long long)ADAMW_CHUNK);
    unsigned int over = 0;
    const unsigned int pt = e.flags & (ADAMW_P_F16 | ADAMW_P_BF16);
    if constexpr (MOMENTS == 0) {
        if (pt == ADAMW_P_F16) adamw_chunk<__half, float>(e, lo, hi, s, &over);
        else if (pt == ADAMW_P_BF16) adamw_chunk<__nv_bfloat16, float>(e, lo, hi, s, &over);
        else adamw_chunk<float, float>(e, lo, hi, s, &over);
    } else if constexpr (MOMENTS == 1) {
        __shared__ float shared[4 * ADAMW_SCALE_BLOCK];
        if (pt == ADAMW_P_F16) adamw_chunk_f16s<__half>(e, lo, hi, s, &over, shared);
        else if (pt == ADAMW_P_BF16) adamw_chunk_f16s<__nv_bfloat16>(e, lo, hi, s, &over, shared);
        else adamw_chunk_f16s<float>(e, lo, hi, s, &over, shared);
    } else {
        if (pt == ADAMW_P_F16) adamw_chunk<__half, __nv_bfloat16>(e, lo, hi, s, &over);
        else if (pt == ADAMW_P_BF16) adamw_chunk<__nv_bfloat16, __nv_bfloat16>(e, lo, hi, s, &over);
        else adamw_chunk<float, __nv_bfloat16>(e, lo, hi, s, &over);
    }
    if (over && overflow) atomicAdd(overflow, (unsigned long long)over);
}

#define ADAMW_SCALARS {clip ? *clip : 1.0f, decay, step_size, bc2_sqrt, b1, b2, eps, (unsigned long long)step}

// Launch (all three): grid (number of chunks), block (any; 256 from the launcher).
// clipcu: hot
extern "C" __global__ void adamw_step_f32(
        const AdamWEntry* __restrict__ table, const int* __restrict__ chunk_entry,
        const float* __restrict__ clip, float decay, float step_size, float bc2_sqrt, float b1, float b2, float eps,
        long long step, unsigned long long* __restrict__ overflow) {
    const AdamWScalars s = ADAMW_SCALARS;
    adamw_step<0>(table, chunk_entry, s, overflow);
}
// clipcu: hot
extern "C" __global__ void adamw_step_f16s(
        const AdamWEntry* __restrict__ table, const int* __restrict__ chunk_entry,
        const float* __restrict__ clip, float decay, float step_size, float bc2_sqrt, float b1, float b2, float eps,
        long long step, unsigned long long* __restrict__ overflow) {
    const AdamWScalars s = ADAMW_SCALARS;
    adamw_step<1>(table, chunk_entry, s, overflow);
}
// clipcu: hot
extern "C" __global__ void adamw_step_bf16sr(
        const AdamWEntry* __restrict__ table, const int* __restrict__ chunk_entry,
        const float* __restrict__ clip, float decay, float step_size, float bc2_sqrt, float b1, float b2, float eps,
        long long step, unsigned long long* __restrict__ overflow) {
    const AdamWScalars s = ADAMW_SCALARS;
    adamw_step<2>(table, chunk_entry, s, overflow);
}

// Σ of the ADAMW_LANES values in s by the fixed pairwise tree s[l] += s[l + w], w = 128 … 1;
// the caller has synchronised after filling s. The pairing depends only on ADAMW_LANES, never on
// blockDim.x, which is what makes the norm independent of the launch geometry. Every thread of
// the block calls it (it has barriers); the result is in s[0] afterwards.
__device__ __forceinline__ void lanes_tree_sum(double* s) {
    for (int w = ADAMW_LANES / 2; w > 0; w /= 2) {
        for (int l = threadIdx.x; l < w; l += blockDim.x) s[l] += s[l + w];
        __syncthreads();
    }
}

// Launch: grid (any; the launcher uses one block per chunk), block (any, 256 from the launcher).
extern "C" __global__ void adamw_grad_sumsq_f32(double* __restrict__ partials, const AdamWEntry* __restrict__ table,
                                                const int* __restrict__ chunk_entry, int n_chunks) {
    __shared__ double s[ADAMW_LANES];
    for (int c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const AdamWEntry e = table[chunk_entry[c]];
        const long long lo = (long long)(c - e.first_chunk) * ADAMW_CHUNK;
        const long long hi = min(e.numel, lo + (long long)ADAMW_CHUNK);
        const float* __restrict__ g = reinterpret_cast<const float*>(e.grad);
        // Logical lane l adds its elements in index order; which thread runs it does not matter.
        for (int l = threadIdx.x; l < ADAMW_LANES; l += blockDim.x) {
            double acc = 0.0;
            for (long long i = lo + l; i < hi; i += ADAMW_LANES) {
                const double x = (double)g[i];
                // x·x is exact in f64 (an f32 squared fits its mantissa), so the FMA nvcc
                // contracts this into rounds exactly as the emulator's multiply-then-add
                acc += x * x;
            }
            s[l] = acc;
        }
        __syncthreads();
        lanes_tree_sum(s);
        if (threadIdx.x == 0) partials[c] = s[0];
        __syncthreads();  // s is refilled for the block's next chunk
    }
}

// The norm of Σ g² (a loss scaler's multiple of the true gradients' squares) and the clip
// factor the step applies, in f64 as the CPU reference computes them (one thread).
__device__ __forceinline__ void norm_and_clip(double sum_sq, double max_norm, double inv_grad_scale,
                              float* __restrict__ norm, float* __restrict__ clip) {
    // The gradients are the loss scaler's multiple of the true ones (inv_grad_scale = 1 / a
    // power of two, 1 without a scaler): the norm and the clip are those of the true
    // gradients, and the factor the step applies also unscales. Products with a power of
    // two are exact, so inv_grad_scale = 1 gives the unscaled path's bits.
    const double total = sqrt(sum_sq) * inv_grad_scale;
    const double coef = max_norm / (total + 1e-6);
    *norm = (float)total;
    // torch.nn.utils.clip_grad_norm_: scale by the clamped coefficient (NaN: left as is, as
    // the CPU reference's `coef < 1` test leaves it).
    *clip = (float)((coef < 1.0 ? coef : 1.0) * inv_grad_scale);
}

// Launch: grid (1), block (any, 256 from the launcher).
extern "C" __global__ void adamw_grad_norm_f32(float* __restrict__ norm, float* __restrict__ clip,
                                               double* __restrict__ sumsq, const double* __restrict__ partials,
                                               int n_partials, double max_norm, double inv_grad_scale) {
    __shared__ double s[ADAMW_LANES];
    // The same fixed order over the partials: lane l adds partials l, l + 256, … in index order.
    for (int l = threadIdx.x; l < ADAMW_LANES; l += blockDim.x) {
        double acc = 0.0;
        for (int i = l; i < n_partials; i += ADAMW_LANES) acc += partials[i];
        s[l] = acc;
    }
    __syncthreads();
    lanes_tree_sum(s);
    if (threadIdx.x == 0) {
        *sumsq = s[0];
        norm_and_clip(s[0], max_norm, inv_grad_scale, norm, clip);
    }
}

// ZeRO-1 (src/train/trainer.rs): each rank holds its shard's gradients only, so the global Σ g²
// is the shards' sums added over the ranks. adamw_grad_norm_f32 above (max_norm = ∞) leaves a
// shard's Σ in `sumsq`; adamw_sumsq_as_f32 makes it a 1-element f32 tensor the communicator
// all-reduces (the rounding to f32 costs ≤ 2^-24 of the sum, 2^-25 of the norm); and
// adamw_clip_from_sumsq_f32 turns the all-reduced Σ into the norm and the factor exactly as a
// one-process clip would. Launch: grid (1), block (1) each.
extern "C" __global__ void adamw_sumsq_as_f32(float* __restrict__ out, const double* __restrict__ sumsq) {
    if (threadIdx.x == 0 && blockIdx.x == 0) *out = (float)*sumsq;
}

extern "C" __global__ void adamw_clip_from_sumsq_f32(float* __restrict__ norm, float* __restrict__ clip,
                                                     const float* __restrict__ sum_sq, double max_norm,
                                                     double inv_grad_scale) {
    if (threadIdx.x == 0 && blockIdx.x == 0) norm_and_clip((double)*sum_sq, max_norm, inv_grad_scale, norm, clip);
}

// Launch: LaunchConfig::for_elements(n, 256).
extern "C" __global__ void clamp_inplace_f32(float* __restrict__ x, float lo, float hi, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float v = x[i];
        x[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}
