//! Row-major GEMMs on column-major cuBLAS/cuBLASLt.
//!
//! Our tensors are row-major; cuBLAS is column-major. A row-major `C[m,n]` read as column-major is
//! `Cᵀ[n,m]`, and `Cᵀ = op(B)ᵀ·op(A)ᵀ`, so the row-major product is one column-major call with
//! the operands swapped: call-A = our B, call-B = our A, call `m,n = n,m`, each operand keeping
//! its own transpose flag and its row-major row length as leading dimension. No data moves.
//!
//! [`plan`] computes those call parameters (a pure function, tested on the CPU against
//! `ops::matmul::matmul` by `tests/cuda_device.rs` with a naive column-major executor);
//! [`CublasGemm::run_cublas`] and [`CublasGemm::run_lt`] hand them to the libraries.
//! Inputs f32, f16 or bf16; accumulation is always f32 (`CUBLAS_COMPUTE_32F`, or
//! `CUBLAS_COMPUTE_32F_FAST_TF32` when TF32 is allowed for f32 inputs); the output is f32 or the
//! input dtype.

use crate::{DType, Error, Result};

/// A batched row-major product `C[b] = op(A[b]) · op(B[b])`, `op(X)` = `X` or `Xᵀ`.
/// `A` is stored `[batch, m, k]` (`[batch, k, m]` if `ta`), `B` `[batch, k, n]` (`[batch, n, k]`
/// if `tb`), `C` `[batch, m, n]`, all contiguous; a shared operand is one matrix for every batch
/// entry (a `Linear` weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMajorGemm {
    pub ta: bool,
    pub tb: bool,
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_shared: bool,
    pub b_shared: bool,
}

/// The parameters of one column-major `cublasGemmStridedBatchedEx` / `cublasLtMatmul` call.
/// Operand "a" of the call is the row-major **B**, operand "b" the row-major **A**.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CublasGemm {
    /// `CUBLAS_OP_T` for call-A (= row-major `tb`).
    pub transa: bool,
    /// `CUBLAS_OP_T` for call-B (= row-major `ta`).
    pub transb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    /// Elements between consecutive batch entries (0 for a shared operand).
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub batch: i32,
}

impl CublasGemm {
    /// Nothing to compute (an empty output).
    pub fn is_empty(&self) -> bool {
        self.m == 0 || self.n == 0 || self.batch == 0
    }
    /// The output is all zeros (k = 0): the libraries need a valid `k ≥ 1`, so callers fill it.
    pub fn is_zero_fill(&self) -> bool {
        !self.is_empty() && self.k == 0
    }
}

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Device {
        op: "gemm",
        msg: format!("{what} = {v} exceeds cuBLAS's 32-bit limit"),
    })
}

/// The cuBLAS parameters of a row-major product. A shared B with an untransposed A folds the
/// batch into the rows (one big GEMM instead of `batch` small ones).
pub fn plan(g: &RowMajorGemm) -> Result<CublasGemm> {
    let (mut batch, mut m) = (g.batch, g.m);
    if g.b_shared && !g.ta && batch > 1 {
        // A is [batch·m, k] row-major and B is one matrix: a single product.
        m = batch
            .checked_mul(m)
            .ok_or_else(|| Error::shape("gemm", "batch·m overflows"))?;
        batch = 1;
    }
    let (n, k) = (g.n, g.k);
    // Leading dimensions are the stored row lengths; cuBLAS wants them ≥ 1 even for empty dims.
    let lda = if g.tb { k } else { n }.max(1);
    let ldb = if g.ta { m } else { k }.max(1);
    let ldc = n.max(1);
    let stride = |shared: bool, e: usize| if shared { 0 } else { e as i64 };
    Ok(CublasGemm {
        transa: g.tb,
        transb: g.ta,
        m: int("n", n)?,
        n: int("m", m)?,
        k: int("k", k)?,
        lda: int("leading dimension", lda)?,
        ldb: int("leading dimension", ldb)?,
        ldc: int("leading dimension", ldc)?,
        stride_a: stride(g.b_shared, k * n),
        stride_b: stride(g.a_shared, m * k),
        stride_c: (m * n) as i64,
        batch: int("batch", batch)?,
    })
}

/// Input/output dtypes a GEMM accepts: inputs of one dtype, output f32 or that dtype.
pub fn check_dtypes(input: DType, output: DType) -> Result<()> {
    if output == DType::F32 || output == input {
        Ok(())
    } else {
        Err(Error::DType {
            op: "gemm",
            got: output,
            expected: "an output of f32 or the input dtype",
        })
    }
}

fn device_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device {
        op: "gemm",
        msg: format!("{what} failed: {e:?}"),
    }
}

mod blas {
    use super::*;
    use cudarc::cublas::sys;

    pub(super) fn dtype(d: DType) -> sys::cudaDataType {
        match d {
            DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
            DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
            DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        }
    }
    pub(super) fn compute(input: DType, tf32: bool) -> sys::cublasComputeType_t {
        if input == DType::F32 && tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        }
    }
    pub(super) fn op(t: bool) -> sys::cublasOperation_t {
        if t {
            sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            sys::cublasOperation_t::CUBLAS_OP_N
        }
    }
}

mod lt {
    use super::*;
    use cudarc::cublaslt::{result, sys};
    use std::mem::size_of;

    pub(super) fn dtype(d: DType) -> sys::cudaDataType {
        match d {
            DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
            DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
            DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        }
    }
    pub(super) fn compute(input: DType, tf32: bool) -> sys::cublasComputeType_t {
        if input == DType::F32 && tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        }
    }

    /// Descriptors destroyed on drop (errors on destroy are ignored: nothing to do about them).
    pub(super) struct Layout(pub sys::cublasLtMatrixLayout_t);
    impl Drop for Layout {
        fn drop(&mut self) {
            unsafe {
                let _ = result::destroy_matrix_layout(self.0);
            }
        }
    }
    pub(super) struct Desc(pub sys::cublasLtMatmulDesc_t);
    impl Drop for Desc {
        fn drop(&mut self) {
            unsafe {
                let _ = result::destroy_matmul_desc(self.0);
            }
        }
    }
    pub(super) struct Pref(pub sys::cublasLtMatmulPreference_t);
    impl Drop for Pref {
        fn drop(&mut self) {
            unsafe {
                let _ = result::destroy_matmul_pref(self.0);
            }
        }
    }

    pub(super) fn layout(
        ty: DType,
        rows: i32,
        cols: i32,
        ld: i32,
        batch: i32,
        stride: i64,
    ) -> Result<Layout> {
        let l = Layout(
            result::create_matrix_layout(dtype(ty), rows as u64, cols as u64, ld as i64)
                .map_err(|e| device_err("cublasLtMatrixLayoutCreate", e))?,
        );
        if batch > 1 {
            unsafe {
                result::set_matrix_layout_attribute(
                    l.0,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    (&batch) as *const i32 as *const _,
                    size_of::<i32>(),
                )
                .map_err(|e| device_err("cublasLt batch count", e))?;
                result::set_matrix_layout_attribute(
                    l.0,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    (&stride) as *const i64 as *const _,
                    size_of::<i64>(),
                )
                .map_err(|e| device_err("cublasLt batch stride", e))?;
            }
        }
        Ok(l)
    }

    pub(super) fn set_desc<T>(
        d: &Desc,
        attr: sys::cublasLtMatmulDescAttributes_t,
        value: &T,
    ) -> Result<()> {
        unsafe {
            result::set_matmul_desc_attribute(
                d.0,
                attr,
                value as *const T as *const _,
                size_of::<T>(),
            )
        }
        .map_err(|e| device_err("cublasLtMatmulDescSetAttribute", e))
    }
}

/// Pointers and dtypes of one GEMM call: row-major `a`, `b` (device addresses of the first
/// element of each operand), output `c`.
#[derive(Debug, Clone, Copy)]
pub struct GemmArgs {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub input: DType,
    pub output: DType,
    /// Allow TF32 tensor-core math for f32 inputs (≈ 3e-4 relative error instead of ≈ 1e-6).
    pub tf32: bool,
}

/// The alignment in bytes (a power of two, at most 256) that every batch entry of an operand
/// starting at `addr`, `stride_bytes` apart, has: what `CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*`
/// must say so that cuBLASLt picks only algorithms that are safe for it.
pub fn lt_min_alignment(addr: u64, stride_bytes: u64, batch: i32) -> u32 {
    let mut bits = addr | 256;
    if batch > 1 {
        bits |= stride_bytes | 256;
    }
    1u32 << bits.trailing_zeros().min(8)
}

/// Whether cuBLASLt's bias epilogue may read a bias at `addr`; otherwise the GEMM goes to cuBLAS
/// and the bias is added by the broadcast-add kernel after it.
pub fn lt_bias_aligned(addr: u64) -> bool {
    addr.is_multiple_of(16)
}

/// A cuBLASLt handle (created and destroyed here: cudarc's `CudaBlasLT` panics when its
/// workspace cannot be allocated, and we keep our workspace in the caching allocator).
pub struct LtHandle(pub(crate) cudarc::cublaslt::sys::cublasLtHandle_t);
// SAFETY: a cuBLASLt handle may be used from any thread; the backend serialises its use.
unsafe impl Send for LtHandle {}
unsafe impl Sync for LtHandle {}

impl LtHandle {
    pub fn new() -> Result<LtHandle> {
        cudarc::cublaslt::result::create_handle()
            .map(LtHandle)
            .map_err(|e| device_err("cublasLtCreate", e))
    }
}

impl Drop for LtHandle {
    fn drop(&mut self) {
        unsafe {
            let _ = cudarc::cublaslt::result::destroy_handle(self.0);
        }
    }
}

impl CublasGemm {
    /// `C = op(A)·op(B)` through `cublasGemmStridedBatchedEx` on the handle's stream.
    ///
    /// # Safety
    /// The pointers must address device buffers of the sizes this plan implies, the handle's
    /// context must be current, and the handle's stream must order this call after the writes
    /// of `a`, `b` and before the reads of `c`.
    pub unsafe fn run_cublas(
        &self,
        handle: cudarc::cublas::sys::cublasHandle_t,
        args: &GemmArgs,
    ) -> Result<()> {
        check_dtypes(args.input, args.output)?;
        if self.is_empty() || self.is_zero_fill() {
            return Ok(());
        }
        let (alpha, beta) = (1f32, 0f32);
        cudarc::cublas::result::gemm_strided_batched_ex(
            handle,
            blas::op(self.transa),
            blas::op(self.transb),
            self.m,
            self.n,
            self.k,
            (&alpha) as *const f32 as *const _,
            args.b as *const _, // call-A = row-major B
            blas::dtype(args.input),
            self.lda,
            self.stride_a,
            args.a as *const _, // call-B = row-major A
            blas::dtype(args.input),
            self.ldb,
            self.stride_b,
            (&beta) as *const f32 as *const _,
            args.c as *mut _,
            blas::dtype(args.output),
            self.ldc,
            self.stride_c,
            self.batch,
            blas::compute(args.input, args.tf32),
            cudarc::cublas::sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(|e| device_err("cublasGemmStridedBatchedEx", e))
    }

    /// The same product through `cublasLtMatmul`, optionally adding `bias` (a device vector of
    /// the output dtype with one entry per output *column* of the row-major C, the same for
    /// every batch entry) in the epilogue: `C = op(A)·op(B) + 1·biasᵀ`.
    ///
    /// # Safety
    /// As [`CublasGemm::run_cublas`]; `workspace` must address `workspace_bytes` bytes.
    pub unsafe fn run_lt(
        &self,
        handle: &LtHandle,
        args: &GemmArgs,
        bias: Option<u64>,
        workspace: (u64, usize),
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<()> {
        use cudarc::cublaslt::{result, sys};
        check_dtypes(args.input, args.output)?;
        if self.is_empty() || self.is_zero_fill() {
            return Ok(());
        }
        let (ar, ac) = if self.transa {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (br, bc) = if self.transb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        let la = lt::layout(args.input, ar, ac, self.lda, self.batch, self.stride_a)?;
        let lb = lt::layout(args.input, br, bc, self.ldb, self.batch, self.stride_b)?;
        let lc = lt::layout(
            args.output,
            self.m,
            self.n,
            self.ldc,
            self.batch,
            self.stride_c,
        )?;
        let desc = lt::Desc(
            result::create_matmul_desc(
                lt::compute(args.input, args.tf32),
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(|e| device_err("cublasLtMatmulDescCreate", e))?,
        );
        // cublasOperation_t as the int32 the attribute takes: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let op = |t: bool| blas::op(t) as i32;
        use sys::cublasLtMatmulDescAttributes_t as A;
        lt::set_desc(&desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &op(self.transa))?;
        lt::set_desc(&desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &op(self.transb))?;
        if let Some(bias) = bias {
            lt::set_desc(
                &desc,
                A::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            )?;
            lt::set_desc(&desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
            lt::set_desc(&desc, A::CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &0i64)?;
        }
        let pref = lt::Pref(
            result::create_matmul_pref()
                .map_err(|e| device_err("cublasLtMatmulPreferenceCreate", e))?,
        );
        result::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            (&workspace.1) as *const usize as *const _,
            std::mem::size_of::<usize>(),
        )
        .map_err(|e| device_err("cublasLtMatmulPreferenceSetAttribute", e))?;
        // cuBLASLt's heuristics assume 256-byte-aligned operands unless told otherwise, and an
        // algorithm chosen for that faults (misaligned address, which kills the context) on a
        // view that starts mid-buffer: give each operand's real alignment.
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let (ie, oe) = (
            args.input.size_in_bytes() as u64,
            args.output.size_in_bytes() as u64,
        );
        for (attr, align) in [
            (
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                lt_min_alignment(args.b, self.stride_a as u64 * ie, self.batch),
            ),
            (
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                lt_min_alignment(args.a, self.stride_b as u64 * ie, self.batch),
            ),
            (
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                lt_min_alignment(args.c, self.stride_c as u64 * oe, self.batch),
            ),
            (
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                lt_min_alignment(args.c, self.stride_c as u64 * oe, self.batch),
            ),
        ] {
            result::set_matmul_pref_attribute(
                pref.0,
                attr,
                (&align) as *const u32 as *const _,
                std::mem::size_of::<u32>(),
            )
            .map_err(|e| device_err("cublasLtMatmulPreferenceSetAttribute", e))?;
        }
        let heuristic =
            result::get_matmul_algo_heuristic(handle.0, desc.0, la.0, lb.0, lc.0, lc.0, pref.0)
                .map_err(|e| {
                    device_err(
                        "cublasLtMatmulAlgoGetHeuristic (no algorithm for this case)",
                        e,
                    )
                })?;
        let (alpha, beta) = (1f32, 0f32);
        result::matmul(
            handle.0,
            desc.0,
            (&alpha) as *const f32 as *const _,
            (&beta) as *const f32 as *const _,
            args.b as *const _,
            la.0,
            args.a as *const _,
            lb.0,
            args.c as *const _,
            lc.0,
            args.c as *mut _,
            lc.0,
            &heuristic.algo,
            workspace.0 as *mut _,
            workspace.1,
            stream as *mut _,
        )
        .map_err(|e| device_err("cublasLtMatmul", e))
    }
}
