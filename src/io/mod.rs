//! Reading and writing tensors: safetensors; atomic writes and what a killed writer leaves.

pub mod safetensors;

pub use self::safetensors::{
    link_atomic, load, save, stale_temp_files, write_atomic, RawTensor, SafeTensorsFile,
};

use std::path::Path;

/// Whether `a` and `b` name the same existing file: the same device and inode, so also through
/// symbolic links, `..`, different spellings and hard links. False when either does not exist
/// (a file that does not exist yet cannot be another path's input).
pub fn same_file(a: impl AsRef<Path>, b: impl AsRef<Path>) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a.as_ref()), std::fs::metadata(b.as_ref())) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        match (a.as_ref().canonicalize(), b.as_ref().canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}
