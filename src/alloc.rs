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

/// A vector of `n` copies of `value`, or an error naming `what` and the bytes it would take when
/// the memory is not there: sizes that come from input (image dimensions, configs) go through
/// here so that a hostile size is an `Err`, never an abort.
pub fn try_filled<T: Clone>(n: usize, value: T, what: &str) -> crate::Result<Vec<T>> {
    let mut v = Vec::new();
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    v.try_reserve_exact(n).map_err(|_| {
        crate::Error::Msg(format!(
            "{what}: cannot allocate {bytes} bytes ({n} values)"
        ))
    })?;
    v.resize(n, value);
    Ok(v)
}

/// An empty vector with room for `n` values, or an error naming `what` (see [`try_filled`]).
pub fn try_with_capacity<T>(n: usize, what: &str) -> crate::Result<Vec<T>> {
    let mut v = Vec::new();
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    v.try_reserve_exact(n).map_err(|_| {
        crate::Error::Msg(format!(
            "{what}: cannot allocate {bytes} bytes ({n} values)"
        ))
    })?;
    Ok(v)
}
