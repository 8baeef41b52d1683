//! CPU GEMM through the `gemm` crate (packed AVX2/AVX-512 micro-kernels, rayon over tiles). The
//! crate takes arbitrary row/column strides, so transposed operands cost nothing.

use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many multiply-adds a single GEMM runs on one thread: splitting it costs more than
/// it saves. Batched calls of small matrices are then spread over the batch instead.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// `c = beta·c + a·b` for one row-major problem: `a` is [m,k] (stored [k,m] if `ta`), `b` is [k,n]
/// (stored [n,k] if `tb`), `c` is [m,n]. `accumulate = false` overwrites `c` (beta = 0).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    debug_assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // (column stride, row stride) of each operand as the gemm crate wants them.
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    let par = if threads > 1 && m * n * k >= PARALLEL_MIN_FLOPS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the slices hold at least the m·k, k·n and m·n elements the strides address.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// `c = a·b` (overwriting `c`) for row-major operands with explicit row strides (leading
/// dimensions): a [m, k] rows `lda` apart, b [k, n] rows `ldb` apart, c [m, n] rows `ldc` apart.
/// Lets a GEMM read a block of columns of a larger matrix in place. One thread.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        lda >= k && ldb >= n && ldc >= n,
        "sgemm_strided: leading dims"
    );
    assert!(
        a.len() >= (m - 1) * lda + k
            && (k == 0 || b.len() >= (k - 1) * ldb + n)
            && c.len() >= (m - 1) * ldc + n,
        "sgemm_strided: operand sizes"
    );
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    // SAFETY: the asserts above bound every element the strides address.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            c.as_mut_ptr(),
            ldc,
            a.as_ptr(),
            (lda, 1),
            b.as_ptr(),
            (ldb, 1),
            1.0,
        )
    }
}

/// `dst[i, j] = beta·Σ_e lhs[i, e]·rhs[e, j]` (overwriting dst) with every operand given by
/// pointer and (row, column) strides, on one thread: for callers whose tasks write disjoint
/// parts of one output in parallel, or read an operand transposed in place.
///
/// # Safety
/// Every element the strides address for `i < m`, `j < n`, `e < k` must be inside its buffer,
/// and `dst`'s must be writable by this call alone.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0f32,
        beta,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// `batch` independent problems; `a_step`/`b_step` are the element offsets between consecutive
/// operands (0 for an operand shared by the whole batch). Large problems use all threads inside
/// each GEMM; small ones are spread over the batch.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_batched(
    ta: bool,
    tb: bool,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_step: usize,
    b: &[f32],
    b_step: usize,
    c: &mut [f32],
) {
    if m * n == 0 {
        return; // an empty product: nothing to write (and no chunk of size 0 to split into)
    }
    if k == 0 {
        c[..batch * m * n].fill(0.0); // a sum over nothing
        return;
    }
    let threads = rayon::current_num_threads();
    if batch == 1 || m * n * k >= PARALLEL_MIN_FLOPS * 4 {
        for i in 0..batch {
            sgemm(
                ta,
                tb,
                m,
                n,
                k,
                &a[i * a_step..],
                &b[i * b_step..],
                &mut c[i * m * n..(i + 1) * m * n],
                false,
                threads,
            );
        }
    } else {
        c.par_chunks_mut(m * n).enumerate().for_each(|(i, ci)| {
            sgemm(
                ta,
                tb,
                m,
                n,
                k,
                &a[i * a_step..],
                &b[i * b_step..],
                ci,
                false,
                1,
            );
        });
    }
}
