//! Abstract values: the shape and dtype of a value, all that tracing knows about it.

use std::fmt;

use super::DType;

/// The shape and dtype of a value: all that tracing knows about it.
///
/// ```
/// use brainstate::{Aval, DType, Tensor};
/// let aval = Tensor::from([[1.0f32, 2.0]]).aval().unwrap();
/// assert_eq!(aval, Aval { shape: vec![1, 2], dtype: DType::F32 });
/// assert_eq!(aval.to_string(), "f32[1,2]");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Aval {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The element type.
    pub dtype: DType,
}

impl Aval {
    pub(crate) fn new(shape: &[usize], dtype: DType) -> Self {
        Aval {
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// Number of elements (saturating at `usize::MAX` for a shape no array can have: every
    /// aval of a tensor or a program can exist, see [`crate::memory`]).
    ///
    /// ```
    /// use brainstate::{Aval, DType};
    /// assert_eq!(Aval { shape: vec![2, 3], dtype: DType::F64 }.numel(), 6);
    /// assert_eq!(Aval { shape: vec![usize::MAX, 2], dtype: DType::F64 }.numel(), usize::MAX);
    /// ```
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1, |n, &d| n.saturating_mul(d))
    }
}

impl fmt::Display for Aval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(","))
    }
}
