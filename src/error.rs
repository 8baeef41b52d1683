//! One error type for the whole crate. Every failure on user input is an `Err` that names the op
//! (or file, or field) and what was expected: shapes are printed as `[2, 3]`.

use crate::tensor::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit the op's rule.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A dtype the op (or backend) does not handle.
    #[error("{op}: dtype {got} is not supported here (expected {expected})")]
    DType {
        op: &'static str,
        got: DType,
        expected: &'static str,
    },
    /// Tensors on different devices, or an op not available on a device.
    #[error("{op}: {msg}")]
    Device { op: &'static str, msg: String },
    /// A backend that is not compiled in or not present on this machine.
    #[error("device {device} is unavailable: {reason}")]
    BackendUnavailable { device: String, reason: String },
    /// Misuse of the autograd graph (backward twice, non-scalar loss, ...).
    #[error("graph: {0}")]
    Graph(String),
    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file whose contents are not what was expected.
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
    /// Anything else, with its own message.
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    pub fn format(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }
}

/// `bail_shape!(op, "a {:?} vs b {:?}", ..)` returns a shape error from the current function.
#[macro_export]
macro_rules! bail_shape {
    ($op:expr, $($arg:tt)*) => {
        return Err($crate::Error::shape($op, format!($($arg)*)))
    };
}
