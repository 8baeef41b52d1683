//! Build script. The CUDA kernels in `kernels/*.cu` are compiled here to PTX (nvcc) and to C++
//! against the emulator (g++) once the CUDA backend lands; until then there are no kernel sources
//! and this script only tells cargo when to re-run.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
}
