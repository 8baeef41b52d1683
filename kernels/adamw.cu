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
// adamw_step_f32(table, chunk_entry, clip, decay, step_size, bc2_sqrt, b1, b2, eps): block c
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
// clamp_inplace_f32(x, lo, hi, n): x ← clamp(x, lo, hi) in place (logit_scale to [0, ln 100]
// after each step), NaN kept as Rust's f32::clamp keeps it. A kernel of its own rather than a
// per-entry table flag: the clamp is the model's rule applied after the step (open_clip does it
// outside the optimizer), it must also hold when logit_scale had no gradient, and it costs one
// one-element launch.
//
// Room for pure_fp16 / pure_bf16 (DESIGN §11): the step is a template over the parameter,
// gradient and moment storage types (loads widened with to_f32, stores rounded by from_f32);
// entries carry 32 bits of flags, a tensor id and a reserved word, so 16-bit moments with
// per-block f32 scales and stochastic rounding (random bits hashed from element index, step and
// tensor id) become new flag bits and instantiations. Only f32 is built.
#include "common.cuh"

// Elements per chunk (a multiple of ADAMW_LANES); the launcher numbers chunks with it too.
#define ADAMW_CHUNK 4096
// Logical lanes of the fixed-order sums.
#define ADAMW_LANES 256

// Entry flags. Bits 2.. are reserved for the mixed-precision paths (16-bit moments, stochastic
// rounding); the f32 kernels ignore them.
#define ADAMW_DECAY 1u

// One parameter of the launch: 64 bytes, 8 little-endian u64 words as the host packs them.
struct AdamWEntry {
    unsigned long long param;       // address of the values (P)
    unsigned long long grad;        // address of the gradient (G)
    unsigned long long exp_avg;     // address of m (M)
    unsigned long long exp_avg_sq;  // address of v (M)
    long long numel;
    long long first_chunk;          // this tensor's first chunk in the launch's numbering
    unsigned int flags;             // ADAMW_DECAY | reserved bits
    unsigned int tensor_id;         // the optimizer's slot index (for stochastic rounding later)
    unsigned long long reserved;    // 0 (per-block moment scales later)
};
static_assert(sizeof(AdamWEntry) == 64, "AdamWEntry is 8 words, as src/optim/adamw/gpu.rs packs it");

template <class P, class G, class M>
__device__ __forceinline__ void adamw_step(const AdamWEntry* __restrict__ table, const int* __restrict__ chunk_entry,
                                           const float* __restrict__ clip, float decay, float step_size,
                                           float bc2_sqrt, float b1, float b2, float eps) {
    const int c = blockIdx.x;
    const AdamWEntry e = table[chunk_entry[c]];
    const long long lo = (long long)(c - e.first_chunk) * ADAMW_CHUNK;
    const long long hi = min(e.numel, lo + (long long)ADAMW_CHUNK);
    P* __restrict__ p = reinterpret_cast<P*>(e.param);
    const G* __restrict__ grad = reinterpret_cast<const G*>(e.grad);
    M* __restrict__ m = reinterpret_cast<M*>(e.exp_avg);
    M* __restrict__ v = reinterpret_cast<M*>(e.exp_avg_sq);
    const float cf = clip ? *clip : 1.0f;
    const float d = (e.flags & ADAMW_DECAY) ? decay : 1.0f;
    const float a1 = __fsub_rn(1.0f, b1), a2 = __fsub_rn(1.0f, b2);
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float g = __fmul_rn(to_f32(grad[i]), cf);
        const float pi = __fmul_rn(to_f32(p[i]), d);
        const float mi = __fadd_rn(__fmul_rn(b1, to_f32(m[i])), __fmul_rn(a1, g));
        const float vi = __fadd_rn(__fmul_rn(b2, to_f32(v[i])), __fmul_rn(__fmul_rn(a2, g), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        m[i] = from_f32<M>(mi);
        v[i] = from_f32<M>(vi);
        p[i] = from_f32<P>(__fsub_rn(pi, __fdiv_rn(__fmul_rn(step_size, mi), denom)));
    }
}

// Launch: grid (number of chunks), block (256).
// clipcu: hot
extern "C" __global__ void adamw_step_f32(const AdamWEntry* __restrict__ table, const int* __restrict__ chunk_entry,
                                          const float* __restrict__ clip, float decay, float step_size,
                                          float bc2_sqrt, float b1, float b2, float eps) {
    adamw_step<float, float, float>(table, chunk_entry, clip, decay, step_size, bc2_sqrt, b1, b2, eps);
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

// Launch: grid (1), block (any, 256 from the launcher).
extern "C" __global__ void adamw_grad_norm_f32(float* __restrict__ norm, float* __restrict__ clip,
                                               double* __restrict__ sumsq, const double* __restrict__ partials,
                                               int n_partials, double max_norm) {
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
        const double total = sqrt(s[0]);
        const double coef = max_norm / (total + 1e-6);
        *norm = (float)total;
        // torch.nn.utils.clip_grad_norm_: scale by the clamped coefficient (NaN: left as is, as
        // the CPU reference's `coef < 1` test leaves it).
        *clip = coef < 1.0 ? (float)coef : 1.0f;
    }
}

// Launch: LaunchConfig::for_elements(n, 256).
extern "C" __global__ void clamp_inplace_f32(float* __restrict__ x, float lo, float hi, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float v = x[i];
        x[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}
