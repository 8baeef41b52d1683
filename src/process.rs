//! Process-wide settings for the binaries (the library never changes them for its users).

/// Let a closed stdout end the process quietly, as it does any Unix tool: `clipcu kernels | head`
/// or `| grep -q` closes the pipe early, and Rust's default (SIGPIPE ignored, so `println!`
/// panics on the write error) would turn that into a panic with exit 101. With the default
/// disposition restored the process ends by SIGPIPE, like `cat`. Nothing on other platforms.
pub fn end_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
