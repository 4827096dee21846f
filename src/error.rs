//! The library's one error type.
//!
//! Every variant names what went wrong and where: the operation, the shapes or dtypes involved,
//! the argument or option at fault. Errors are cheap to clone because a failed operation stores
//! its error inside the resulting tensor (see [`Tensor`](crate::Tensor)) and every later use of
//! that tensor hands the same error on.
//!
//! ```
//! use brainstate::{Error, Tensor};
//! let y = Tensor::from([1.0, 2.0]).reshape(&[3]) + 1.0; // no `?` needed on the way
//! let err = y.item().unwrap_err();
//! assert!(matches!(err, Error::ShapeMismatch { ref op, .. } if op == "reshape"));
//! assert_eq!(err.to_string(), "reshape: incompatible shapes [2] and [3]");
//! ```

use crate::storage::DType;

/// Everything that can go wrong in this library.
///
/// ```
/// use brainstate::{Error, Tensor};
/// let bad = Tensor::from([1.0, 2.0]) + Tensor::from([1.0, 2.0, 3.0]);
/// let err = bad.to_vec::<f64>().unwrap_err();
/// assert!(matches!(&err, Error::ShapeMismatch { op, .. } if op == "add"));
/// assert_eq!(err.to_string(), "add: incompatible shapes [2] and [3]");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Two operands whose shapes do not fit together.
    #[error("{op}: incompatible shapes {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation.
        op: String,
        /// Shape of the first operand.
        lhs: Vec<usize>,
        /// Shape of the second operand.
        rhs: Vec<usize>,
    },
    /// An operation given a shape, axis or index it cannot use.
    #[error("{op}: {msg}")]
    Shape {
        /// The operation.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// An operation or transform given a dtype it cannot use.
    #[error("{op}: {msg} (got {dtype})")]
    DType {
        /// The operation or transform.
        op: String,
        /// What is required.
        msg: String,
        /// The dtype that was given.
        dtype: DType,
    },
    /// Quantities whose units do not fit the operation.
    #[error("{op}: {msg}")]
    Units {
        /// The operation.
        op: String,
        /// What is wrong, naming the units.
        msg: String,
    },
    /// An invalid `argnums`, or an option that conflicts with the function.
    #[error("{0}")]
    Options(String),
    /// A call whose arguments or outputs do not have the structure expected.
    #[error("structure mismatch: {0}")]
    Structure(String),
    /// A NaN or infinity found by `debug_nan`.
    #[error(
        "debug_nan: `{primitive}` produced a non-finite value (inputs {input_shapes:?}){}",
        source_hint.as_ref().map(|s| format!(", from {s}")).unwrap_or_default()
    )]
    NonFinite {
        /// The primitive and its parameters, as printed in programs.
        primitive: String,
        /// Shapes of the primitive's inputs.
        input_shapes: Vec<Vec<usize>>,
        /// Where in the user's source the primitive (or the operation it differentiates) was
        /// written.
        source_hint: Option<String>,
    },
    /// A computation that needs more memory than the limit allows (see [`crate::memory`]).
    #[error(
        "{op}: needs {} ({needed} bytes), more than the memory limit of {}: {msg}",
        human_bytes(*needed),
        human_bytes(*limit)
    )]
    Memory {
        /// The operation or transform.
        op: String,
        /// The bytes it needs.
        needed: usize,
        /// The limit in force.
        limit: usize,
        /// What takes the memory, and what to use instead.
        msg: String,
    },
    /// The function panicked while it was being traced.
    #[error("the function panicked while being traced: {0}")]
    Panic(String),
    /// Misuse of traced values, such as a traced tensor that escaped its transform.
    #[error("tracing: {0}")]
    Trace(String),
    /// A file that could not be written or read.
    #[error("{op}: {path}: {msg}")]
    Io {
        /// The operation.
        op: String,
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
}

impl Error {
    pub(crate) fn shape(op: &str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op: op.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn mismatch(op: &str, lhs: &[usize], rhs: &[usize]) -> Self {
        Error::ShapeMismatch {
            op: op.to_string(),
            lhs: lhs.to_vec(),
            rhs: rhs.to_vec(),
        }
    }

    pub(crate) fn dtype(op: &str, msg: impl Into<String>, dtype: DType) -> Self {
        Error::DType {
            op: op.to_string(),
            msg: msg.into(),
            dtype,
        }
    }
}

/// `Result` with this library's [`Error`].
///
/// ```
/// use brainstate::Tensor;
/// fn total(x: &Tensor) -> brainstate::Result<f64> {
///     x.sum().item()
/// }
/// assert_eq!(total(&Tensor::from([1.0, 2.0])).unwrap(), 3.0);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A size in bytes for people (`1.5 GiB`), for messages; public as [`crate::memory::human`].
pub(crate) fn human_bytes(bytes: usize) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
