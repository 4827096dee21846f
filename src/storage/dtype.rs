//! Element types and their promotion rules.

use std::fmt;

/// The element type of a tensor.
///
/// Promotion follows NumPy/JAX: `bool < i64 < f32 < f64`, and a complex dtype wide enough
/// for both (`f64` with `c64` gives `c128`). A Rust scalar combined with a tensor takes the
/// tensor's dtype (it is "weakly typed"), so `x_f32 * 2.0` stays `f32`.
///
/// ```
/// use brainstate::{DType, Tensor};
/// let x = Tensor::from([1.0f32, 2.0]);
/// assert_eq!(x.dtype().unwrap(), DType::F32);
/// assert_eq!((&x * 2.0).dtype().unwrap(), DType::F32); // weakly typed scalar
/// assert_eq!((&x + Tensor::from([1.0])).dtype().unwrap(), DType::F64); // promoted
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Booleans, for masks.
    Bool,
    /// 64-bit integers, for indices.
    I64,
    /// 32-bit floats.
    F32,
    /// 64-bit floats, the default.
    F64,
    /// Complex numbers of two 32-bit floats.
    C64,
    /// Complex numbers of two 64-bit floats.
    C128,
}

impl DType {
    /// Whether this is a real floating-point dtype.
    ///
    /// ```
    /// use brainstate::DType;
    /// assert!(DType::F32.is_float() && !DType::C64.is_float() && !DType::I64.is_float());
    /// ```
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Whether this is a complex dtype.
    ///
    /// ```
    /// use brainstate::DType;
    /// assert!(DType::C128.is_complex() && !DType::F64.is_complex());
    /// ```
    pub fn is_complex(self) -> bool {
        matches!(self, DType::C64 | DType::C128)
    }

    /// Whether this is a floating-point or complex dtype: the dtypes that can be differentiated.
    ///
    /// ```
    /// use brainstate::DType;
    /// assert!(DType::F64.is_inexact() && DType::C64.is_inexact() && !DType::I64.is_inexact());
    /// ```
    pub fn is_inexact(self) -> bool {
        self.is_float() || self.is_complex()
    }

    /// The real dtype of the parts of a complex dtype (the dtype itself otherwise).
    ///
    /// ```
    /// use brainstate::DType;
    /// assert_eq!(DType::C128.real(), DType::F64);
    /// assert_eq!(DType::F32.real(), DType::F32);
    /// ```
    pub fn real(self) -> DType {
        match self {
            DType::C64 => DType::F32,
            DType::C128 => DType::F64,
            other => other,
        }
    }

    /// The complex dtype whose parts have this (real) dtype's precision.
    ///
    /// ```
    /// use brainstate::DType;
    /// assert_eq!(DType::F32.complex(), DType::C64);
    /// assert_eq!(DType::F64.complex(), DType::C128);
    /// ```
    pub fn complex(self) -> DType {
        match self {
            DType::F32 | DType::C64 => DType::C64,
            _ => DType::C128,
        }
    }

    /// The smallest dtype that holds both (NumPy promotion).
    ///
    /// ```
    /// use brainstate::DType;
    /// assert_eq!(DType::I64.promote(DType::F32), DType::F32);
    /// assert_eq!(DType::F64.promote(DType::C64), DType::C128);
    /// ```
    pub fn promote(self, other: DType) -> DType {
        if self.is_complex() || other.is_complex() {
            self.real().max(other.real()).max(DType::F32).complex()
        } else {
            self.max(other)
        }
    }

    /// The size of one element in bytes.
    ///
    /// ```
    /// use brainstate::DType;
    /// assert_eq!((DType::F64.size_bytes(), DType::C128.size_bytes(), DType::Bool.size_bytes()), (8, 16, 1));
    /// ```
    pub fn size_bytes(self) -> usize {
        match self {
            DType::Bool => 1,
            DType::F32 => 4,
            DType::I64 | DType::F64 | DType::C64 => 8,
            DType::C128 => 16,
        }
    }

    /// The short name used in printed programs: `bool`, `i64`, `f32`, `f64`, `c64`, `c128`.
    ///
    /// ```
    /// use brainstate::DType;
    /// assert_eq!(DType::C128.name(), "c128");
    /// assert_eq!(DType::F64.to_string(), "f64");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::I64 => "i64",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::C64 => "c64",
            DType::C128 => "c128",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
