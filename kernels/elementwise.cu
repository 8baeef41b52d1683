// elementwise.cu — pointwise activations (GELU, QuickGELU, ReLU, exp, log, sigmoid), scaling,
// broadcasting add/mul/sub/div and the bias gradient, f32 (the activations' ops also f16/bf16)
// (src/ops/unary/gpu.rs, src/ops/binary/gpu.rs ↔ this file).
//
//   gelu(x)        = x·Φ(x) = 0.5·x·erfc(−x/√2);       gelu'(x) = Φ(x) + x·φ(x)
//                    (erfc, not 1 + erf, which cancels for x < 0: the CPU reference is accurate there)
//   quick_gelu(x)  = x·σ(1.702x);                       quick_gelu'(x) = s + 1.702·x·s·(1−s), s = σ(1.702x)
//   relu(x)        = max(x, 0);                          relu'(x) = [x > 0]
//   scale(x; c)    = c·x                                 (its backward is scale(dy; c))
//   add(a, b)      = a + b  (same shape)
//   add_inplace    acc[i] += g[i] and copy out[i] = x[i]: a parameter's gradient accumulated in
//                  its own storage across steps (src/graph/param.rs), so its address stays put
//   add_bias(x, b) = x[r, j] + b[j]  (a [D] bias broadcast over the R rows of [R, D])
//   bias_bwd(g)    = db[j] = Σ_r g[r, j]  (the gradient of the broadcast bias)
//   exp(x)         = eˣ;                                 exp'    from the output: dx = dy·y
//   log(x)         = ln x;                               log'(x) = 1/x:  dx = dy / x
//   sigmoid(x)     = 1 / (1 + e⁻ˣ);                      sigmoid' from the output: dx = dy·y·(1−y)
//   mul, sub, div  (a, b) with a repeating operand: out[i] = a[i mod na] ∘ b[i mod nb], where
//                  na, nb ∈ {n, block}: equal shapes (na = nb = n), or one operand a trailing-dims
//                  block (a [D] bias, a [] scalar) repeated over the leading rows of the other
//   div_bwd_b      = −g[i]·a[i mod na] / b[i mod nb]²  (the divisor's gradient before it is
//                  summed back down to b's shape by bias_bwd)
//
// 16-bit variants (_f16, _bf16) of every unary kernel fwd/bwd, scale, add, add_bias, bias_bwd,
// mul/sub/div and div_bwd_b (the activations' ops: MLP activations, residual and bias adds,
// their gradients): the same templates on the storage type (common.cuh's to_f32 / from_f32):
// loads widened to f32, f32 arithmetic and accumulation, one rounding of the result. The _f32
// kernels are the float instantiations, unchanged in their arithmetic; add_fwd (the same-shape
// residual add) too. fill, add_inplace and copy stay f32 (seeds and parameter gradients).
//
// Pointwise kernels: one thread per element, a 1-D grid of ceil(n / blockDim.x) blocks (the
// launchers pick 256 threads). Memory-bound: coalesced loads and one store per element. The
// element index is 64-bit: n fits an int (the launchers check), but blockIdx·blockDim + threadIdx
// of the last block can pass 2³¹ − 1 when n is near it, and as an int would wrap negative and
// pass the `i < n` guard.
// bias_bwd: a block of (32, 8) threads owns 32 adjacent columns (coalesced row reads); thread
// (x, y) sums rows y, y+8, y+16, … of column x in order, then the 8 partials of a column are
// combined in shared memory by a fixed tree (4, 2, 1). The order of additions depends only on
// R and D — never on scheduling — and no atomics are used, so the result is deterministic.
#include "common.cuh"

template <class T>
__device__ __forceinline__ void gelu_fwd(T* __restrict__ out, const T* __restrict__ x, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = to_f32(x[i]);
        out[i] = from_f32<T>(0.5f * v * erfcf(-v * 0.70710678118654752f));
    }
}

template <class T>
__device__ __forceinline__ void gelu_bwd(T* __restrict__ dx, const T* __restrict__ x, const T* __restrict__ dy,
                                         int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = to_f32(x[i]);
        float cdf = 0.5f * erfcf(-v * 0.70710678118654752f);
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] = from_f32<T>(to_f32(dy[i]) * (cdf + v * pdf));
    }
}

// clipcu: hot
extern "C" __global__ void gelu_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    gelu_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void gelu_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int n) {
    gelu_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void gelu_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x,
                                         int n) {
    gelu_fwd(out, x, n);
}

// clipcu: hot
extern "C" __global__ void gelu_bwd_f32(float* __restrict__ dx, const float* __restrict__ x,
                                        const float* __restrict__ dy, int n) {
    gelu_bwd(dx, x, dy, n);
}
// clipcu: hot
extern "C" __global__ void gelu_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ x,
                                        const __half* __restrict__ dy, int n) {
    gelu_bwd(dx, x, dy, n);
}
// clipcu: hot
extern "C" __global__ void gelu_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ x,
                                         const __nv_bfloat16* __restrict__ dy, int n) {
    gelu_bwd(dx, x, dy, n);
}

template <class T>
__device__ __forceinline__ void quick_gelu_fwd(T* __restrict__ out, const T* __restrict__ x, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = to_f32(x[i]);
        out[i] = from_f32<T>(v / (1.0f + expf(-1.702f * v)));
    }
}

template <class T>
__device__ __forceinline__ void quick_gelu_bwd(T* __restrict__ dx, const T* __restrict__ x, const T* __restrict__ dy,
                                               int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = to_f32(x[i]);
        float s = 1.0f / (1.0f + expf(-1.702f * v));
        dx[i] = from_f32<T>(to_f32(dy[i]) * (s + 1.702f * v * s * (1.0f - s)));
    }
}

template <class T>
__device__ __forceinline__ void relu_fwd(T* __restrict__ out, const T* __restrict__ x, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32<T>(fmaxf(to_f32(x[i]), 0.0f));
}

template <class T>
__device__ __forceinline__ void relu_bwd(T* __restrict__ dx, const T* __restrict__ x, const T* __restrict__ dy, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = from_f32<T>(to_f32(x[i]) > 0.0f ? to_f32(dy[i]) : 0.0f);
}

// clipcu: hot
extern "C" __global__ void quick_gelu_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    quick_gelu_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void quick_gelu_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int n) {
    quick_gelu_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void quick_gelu_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int n) {
    quick_gelu_fwd(out, x, n);
}

// clipcu: hot
extern "C" __global__ void quick_gelu_bwd_f32(float* __restrict__ dx, const float* __restrict__ x, const float* __restrict__ dy, int n) {
    quick_gelu_bwd(dx, x, dy, n);
}
// clipcu: hot
extern "C" __global__ void quick_gelu_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ x, const __half* __restrict__ dy, int n) {
    quick_gelu_bwd(dx, x, dy, n);
}
// clipcu: hot
extern "C" __global__ void quick_gelu_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy, int n) {
    quick_gelu_bwd(dx, x, dy, n);
}

// clipcu: hot
extern "C" __global__ void relu_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    relu_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void relu_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int n) {
    relu_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void relu_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int n) {
    relu_fwd(out, x, n);
}

// clipcu: hot
extern "C" __global__ void relu_bwd_f32(float* __restrict__ dx, const float* __restrict__ x, const float* __restrict__ dy, int n) {
    relu_bwd(dx, x, dy, n);
}
// clipcu: hot
extern "C" __global__ void relu_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ x, const __half* __restrict__ dy, int n) {
    relu_bwd(dx, x, dy, n);
}
// clipcu: hot
extern "C" __global__ void relu_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy, int n) {
    relu_bwd(dx, x, dy, n);
}

// A constant (the seed gradient 1 of backward, zeros to broadcast into): made on the device, so
// no host buffer is uploaded for it.
extern "C" __global__ void fill_f32(float* __restrict__ out, float value, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = value;
}

template <class T>
__device__ __forceinline__ void scale_fwd(T* __restrict__ out, const T* __restrict__ x, float c, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32<T>(c * to_f32(x[i]));
}

// clipcu: hot
extern "C" __global__ void scale_fwd_f32(float* __restrict__ out, const float* __restrict__ x, float c, int n) {
    scale_fwd(out, x, c, n);
}
// clipcu: hot
extern "C" __global__ void scale_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, float c, int n) {
    scale_fwd(out, x, c, n);
}
// clipcu: hot
extern "C" __global__ void scale_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, float c, int n) {
    scale_fwd(out, x, c, n);
}

// Same-shape add: the residual adds of a pre-norm block (x + attn(x), x + mlp(x)).
template <class T>
__device__ __forceinline__ void add_fwd(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

// clipcu: hot
extern "C" __global__ void add_fwd_f32(float* __restrict__ out, const float* __restrict__ a,
                                       const float* __restrict__ b, int n) {
    add_fwd(out, a, b, n);
}
// clipcu: hot
extern "C" __global__ void add_fwd_f16(__half* __restrict__ out, const __half* __restrict__ a,
                                       const __half* __restrict__ b, int n) {
    add_fwd(out, a, b, n);
}
// clipcu: hot
extern "C" __global__ void add_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ a,
                                        const __nv_bfloat16* __restrict__ b, int n) {
    add_fwd(out, a, b, n);
}

// acc and g never alias (g is a fresh gradient, acc the parameter's own buffer).
// clipcu: hot
extern "C" __global__ void add_inplace_f32(float* __restrict__ acc, const float* __restrict__ g, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) acc[i] += g[i];
}

// clipcu: hot
extern "C" __global__ void copy_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i];
}

template <class T>
__device__ __forceinline__ void add_bias_fwd(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ bias,
                                             int rows, int d) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)rows * d) out[i] = from_f32<T>(to_f32(x[i]) + to_f32(bias[i % d]));
}

// clipcu: hot
extern "C" __global__ void add_bias_fwd_f32(float* __restrict__ out, const float* __restrict__ x,
                                            const float* __restrict__ bias, int rows, int d) {
    add_bias_fwd(out, x, bias, rows, d);
}
// clipcu: hot
extern "C" __global__ void add_bias_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x,
                                            const __half* __restrict__ bias, int rows, int d) {
    add_bias_fwd(out, x, bias, rows, d);
}
// clipcu: hot
extern "C" __global__ void add_bias_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x,
                                             const __nv_bfloat16* __restrict__ bias, int rows, int d) {
    add_bias_fwd(out, x, bias, rows, d);
}

// g and db in T, the sums f32 (db rounded once).
template <class T>
__device__ __forceinline__ void bias_bwd(T* __restrict__ db, const T* __restrict__ g, int rows, int d) {
    __shared__ float part[8][32];
    int col = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (col < d)
        for (int r = threadIdx.y; r < rows; r += 8) acc += to_f32(g[(long long)r * d + col]);
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int s = 4; s > 0; s >>= 1) {
        if ((int)threadIdx.y < s) part[threadIdx.y][threadIdx.x] += part[threadIdx.y + s][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && col < d) db[col] = from_f32<T>(part[0][threadIdx.x]);
}

// Launch: grid (ceil(d / 32)), block (32, 8), no dynamic shared memory.
extern "C" __global__ void bias_bwd_f32(float* __restrict__ db, const float* __restrict__ g, int rows, int d) {
    bias_bwd(db, g, rows, d);
}
extern "C" __global__ void bias_bwd_f16(__half* __restrict__ db, const __half* __restrict__ g, int rows, int d) {
    bias_bwd(db, g, rows, d);
}
extern "C" __global__ void bias_bwd_bf16(__nv_bfloat16* __restrict__ db, const __nv_bfloat16* __restrict__ g, int rows,
                                         int d) {
    bias_bwd(db, g, rows, d);
}

template <class T>
__device__ __forceinline__ void exp_fwd(T* __restrict__ out, const T* __restrict__ x, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32<T>(expf(to_f32(x[i])));
}

// The derivative of exp is its output, which the graph saves: no second exp.
template <class T>
__device__ __forceinline__ void exp_bwd(T* __restrict__ dx, const T* __restrict__ y, const T* __restrict__ dy, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = from_f32<T>(to_f32(dy[i]) * to_f32(y[i]));
}

template <class T>
__device__ __forceinline__ void log_fwd(T* __restrict__ out, const T* __restrict__ x, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32<T>(logf(to_f32(x[i])));
}

template <class T>
__device__ __forceinline__ void log_bwd(T* __restrict__ dx, const T* __restrict__ x, const T* __restrict__ dy, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = from_f32<T>(to_f32(dy[i]) / to_f32(x[i]));
}

// 1 / (1 + e⁻ˣ): for x → −∞ e⁻ˣ overflows to +inf and the result is 0, as it should be; for
// x → +∞ it is 1. No branch needed.
template <class T>
__device__ __forceinline__ void sigmoid_fwd(T* __restrict__ out, const T* __restrict__ x, int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32<T>(1.0f / (1.0f + expf(-to_f32(x[i]))));
}

template <class T>
__device__ __forceinline__ void sigmoid_bwd(T* __restrict__ dx, const T* __restrict__ y, const T* __restrict__ dy,
                                            int n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float s = to_f32(y[i]);
        dx[i] = from_f32<T>(to_f32(dy[i]) * s * (1.0f - s));
    }
}

// clipcu: hot
extern "C" __global__ void exp_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    exp_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void exp_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int n) {
    exp_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void exp_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int n) {
    exp_fwd(out, x, n);
}

// clipcu: hot
extern "C" __global__ void exp_bwd_f32(float* __restrict__ dx, const float* __restrict__ y, const float* __restrict__ dy, int n) {
    exp_bwd(dx, y, dy, n);
}
// clipcu: hot
extern "C" __global__ void exp_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ y, const __half* __restrict__ dy, int n) {
    exp_bwd(dx, y, dy, n);
}
// clipcu: hot
extern "C" __global__ void exp_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ y, const __nv_bfloat16* __restrict__ dy, int n) {
    exp_bwd(dx, y, dy, n);
}

// clipcu: hot
extern "C" __global__ void log_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    log_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void log_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int n) {
    log_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void log_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int n) {
    log_fwd(out, x, n);
}

// clipcu: hot
extern "C" __global__ void log_bwd_f32(float* __restrict__ dx, const float* __restrict__ x, const float* __restrict__ dy, int n) {
    log_bwd(dx, x, dy, n);
}
// clipcu: hot
extern "C" __global__ void log_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ x, const __half* __restrict__ dy, int n) {
    log_bwd(dx, x, dy, n);
}
// clipcu: hot
extern "C" __global__ void log_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ dy, int n) {
    log_bwd(dx, x, dy, n);
}

// clipcu: hot
extern "C" __global__ void sigmoid_fwd_f32(float* __restrict__ out, const float* __restrict__ x, int n) {
    sigmoid_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void sigmoid_fwd_f16(__half* __restrict__ out, const __half* __restrict__ x, int n) {
    sigmoid_fwd(out, x, n);
}
// clipcu: hot
extern "C" __global__ void sigmoid_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x, int n) {
    sigmoid_fwd(out, x, n);
}

// clipcu: hot
extern "C" __global__ void sigmoid_bwd_f32(float* __restrict__ dx, const float* __restrict__ y, const float* __restrict__ dy, int n) {
    sigmoid_bwd(dx, y, dy, n);
}
// clipcu: hot
extern "C" __global__ void sigmoid_bwd_f16(__half* __restrict__ dx, const __half* __restrict__ y, const __half* __restrict__ dy, int n) {
    sigmoid_bwd(dx, y, dy, n);
}
// clipcu: hot
extern "C" __global__ void sigmoid_bwd_bf16(__nv_bfloat16* __restrict__ dx, const __nv_bfloat16* __restrict__ y, const __nv_bfloat16* __restrict__ dy, int n) {
    sigmoid_bwd(dx, y, dy, n);
}

// Binary ops with broadcasting of a trailing block. The index arithmetic is 64-bit: n itself fits
// an int (the launcher checks), but i + blockDim·gridDim may not near the top of the range.
template <class T, class F>
__device__ __forceinline__ void binary_repeat(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b,
                                              int n, int na, int nb, F f) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32<T>(f(to_f32(a[na == n ? i : i % na]), to_f32(b[nb == n ? i : i % nb])));
}

struct MulF { __device__ float operator()(float x, float y) const { return x * y; } };
struct SubF { __device__ float operator()(float x, float y) const { return x - y; } };
struct DivF { __device__ float operator()(float x, float y) const { return x / y; } };

// clipcu: hot
extern "C" __global__ void mul_fwd_f32(float* __restrict__ out, const float* __restrict__ a, const float* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, MulF());
}
// clipcu: hot
extern "C" __global__ void mul_fwd_f16(__half* __restrict__ out, const __half* __restrict__ a, const __half* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, MulF());
}
// clipcu: hot
extern "C" __global__ void mul_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, MulF());
}

// clipcu: hot
extern "C" __global__ void sub_fwd_f32(float* __restrict__ out, const float* __restrict__ a, const float* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, SubF());
}
// clipcu: hot
extern "C" __global__ void sub_fwd_f16(__half* __restrict__ out, const __half* __restrict__ a, const __half* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, SubF());
}
// clipcu: hot
extern "C" __global__ void sub_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, SubF());
}

// clipcu: hot
extern "C" __global__ void div_fwd_f32(float* __restrict__ out, const float* __restrict__ a, const float* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, DivF());
}
// clipcu: hot
extern "C" __global__ void div_fwd_f16(__half* __restrict__ out, const __half* __restrict__ a, const __half* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, DivF());
}
// clipcu: hot
extern "C" __global__ void div_fwd_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b, int n, int na, int nb) {
    binary_repeat(out, a, b, n, na, nb, DivF());
}

// g·(−a/b²) in the CPU's order (−a / (b·b), then the product with g), so the two agree bit for
// bit in f32; g has the full output shape n.
template <class T>
__device__ __forceinline__ void div_bwd_b(T* __restrict__ out, const T* __restrict__ g, const T* __restrict__ a,
                                          const T* __restrict__ b, int n, int na, int nb) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = to_f32(a[na == n ? i : i % na]), y = to_f32(b[nb == n ? i : i % nb]);
        out[i] = from_f32<T>(to_f32(g[i]) * (-x / (y * y)));
    }
}

// clipcu: hot
extern "C" __global__ void div_bwd_b_f32(float* __restrict__ out, const float* __restrict__ g, const float* __restrict__ a, const float* __restrict__ b, int n, int na, int nb) {
    div_bwd_b(out, g, a, b, n, na, nb);
}
// clipcu: hot
extern "C" __global__ void div_bwd_b_f16(__half* __restrict__ out, const __half* __restrict__ g, const __half* __restrict__ a, const __half* __restrict__ b, int n, int na, int nb) {
    div_bwd_b(out, g, a, b, n, na, nb);
}
// clipcu: hot
extern "C" __global__ void div_bwd_b_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ g, const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b, int n, int na, int nb) {
    div_bwd_b(out, g, a, b, n, na, nb);
}
