//! Allocator tuning for the binaries. They install mimalloc as the global allocator (see
//! Cargo.toml: reuse of large buffers across ops); the library never does, so as not to choose
//! an allocator for its users.

/// Never hand freed memory back to the OS: a training step frees and reallocates the same large
/// buffers every step, and each fresh page costs a fault and a kernel zeroing (a fifth of a step's
/// time otherwise). Only has an effect when mimalloc is the global allocator.
pub fn keep_freed_memory() {
    // mi_option_purge_delay (mimalloc.h): -1 disables purging.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an allocator option is allowed at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
