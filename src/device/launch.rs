//! The geometry of a kernel launch, shared by the Cuda and Emu devices: the launchers in
//! `ops/<op>/gpu.rs` compute it once, and either device runs the kernel with it.

/// Grid, block and dynamic shared memory of one launch (as in `cuLaunchKernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    /// Bytes of dynamic shared memory (`dynamic_smem<T>()` in the kernel).
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// One thread per element: a 1-D grid of `ceil(n / threads)` blocks of `threads`.
    /// `n = 0` still launches one block (kernels guard with `i < n`).
    pub fn for_elements(n: usize, threads: u32) -> LaunchConfig {
        let threads = threads.max(1);
        let blocks = n.div_ceil(threads as usize).max(1);
        LaunchConfig {
            grid: (u32::try_from(blocks).unwrap_or(u32::MAX), 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }

    /// One warp per row: blocks of (32, 8) threads handle 8 rows, `ceil(rows / 8)` blocks (the
    /// row kernels: LayerNorm, softmax, L2 normalize). `rows = 0` still launches one block.
    pub fn warp_per_row(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid: (
                u32::try_from(rows.div_ceil(8).max(1)).unwrap_or(u32::MAX),
                1,
                1,
            ),
            block: (32, 8, 1),
            shared_bytes: 0,
        }
    }
}
