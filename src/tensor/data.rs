//! Concrete storage: one `ndarray` array per dtype.

// `Element` is sealed through a supertrait whose methods name the crate-private `Data`.
#![allow(private_interfaces)]

use std::fmt;

use ndarray::ArrayD;

use crate::error::{Error, Result};

/// The element type of a tensor.
///
/// Promotion follows NumPy/JAX: `bool < i64 < f32 < f64`; a Rust scalar combined with a tensor
/// takes the tensor's dtype (it is "weakly typed"), so `x_f32 * 2.0` stays `f32`.
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
}

impl DType {
    /// Whether this is a floating-point dtype (the dtypes that can be differentiated).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// The smallest dtype that holds both (NumPy promotion).
    pub fn promote(self, other: DType) -> DType {
        self.max(other)
    }

    /// The short name used in printed programs: `bool`, `i64`, `f32`, `f64`.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::I64 => "i64",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The values of a concrete tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    Bool(ArrayD<bool>),
    I64(ArrayD<i64>),
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
}

/// Applies `$body` to the array inside a `Data`, whatever its dtype.
macro_rules! with_array {
    ($data:expr, $a:ident => $body:expr) => {
        match $data {
            Data::Bool($a) => $body,
            Data::I64($a) => $body,
            Data::F32($a) => $body,
            Data::F64($a) => $body,
        }
    };
}
pub(crate) use with_array;

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::Bool(_) => DType::Bool,
            Data::I64(_) => DType::I64,
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
        }
    }

    pub fn shape(&self) -> &[usize] {
        with_array!(self, a => a.shape())
    }

    /// A zero-dimensional array of `dtype` holding `value` (cast).
    pub fn scalar(value: f64, dtype: DType) -> Data {
        Data::F64(ndarray::arr0(value).into_dyn()).cast(dtype)
    }

    /// `self` as `dtype`, without a copy when it already is.
    pub fn into_dtype(self, dtype: DType) -> Data {
        if self.dtype() == dtype {
            self
        } else {
            self.cast(dtype)
        }
    }

    /// Casts to `dtype` with `as` semantics (floats truncate toward zero into integers;
    /// non-zero is `true`).
    pub fn cast(&self, dtype: DType) -> Data {
        if self.dtype() == dtype {
            return self.clone();
        }
        match dtype {
            DType::Bool => Data::Bool(with_array!(self, a => a.mapv(|v| v.to_f64() != 0.0))),
            DType::I64 => Data::I64(with_array!(self, a => a.mapv(|v| v.to_f64() as i64))),
            DType::F32 => Data::F32(with_array!(self, a => a.mapv(|v| v.to_f64() as f32))),
            DType::F64 => Data::F64(with_array!(self, a => a.mapv(|v| v.to_f64()))),
        }
    }

    /// The values as `f64`, in row-major order.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        with_array!(self, a => a.iter().map(|v| v.to_f64()).collect())
    }

    /// Whether every value is finite (always true for integers and booleans).
    pub fn all_finite(&self) -> bool {
        match self {
            Data::F32(a) => a.iter().all(|v| v.is_finite()),
            Data::F64(a) => a.iter().all(|v| v.is_finite()),
            _ => true,
        }
    }
}

mod sealed {
    use super::{ArrayD, Data};

    /// Moving arrays in and out of [`Data`]; private, so that only this crate adds elements.
    pub trait Storage: Sized {
        fn wrap(array: ArrayD<Self>) -> Data;
        /// The array, cast to this type.
        fn unwrap(data: &Data) -> ArrayD<Self>;
    }
}

/// A Rust element type that a tensor can hold: `f64`, `f32`, `i64` or `bool`.
pub trait Element: sealed::Storage + Copy + 'static {
    /// The dtype of tensors made of this type.
    const DTYPE: DType;
    /// The value as `f64` (`true` is 1).
    fn to_f64(self) -> f64;
}

macro_rules! element {
    ($t:ty, $variant:ident, $to_f64:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn to_f64(self) -> f64 {
                $to_f64(self)
            }
        }
        impl sealed::Storage for $t {
            fn wrap(array: ArrayD<Self>) -> Data {
                Data::$variant(array)
            }
            fn unwrap(data: &Data) -> ArrayD<Self> {
                match data.cast(DType::$variant) {
                    Data::$variant(a) => a,
                    _ => unreachable!("cast returns the requested dtype"),
                }
            }
        }
    };
}
element!(bool, Bool, |v: bool| if v { 1.0 } else { 0.0 });
element!(i64, I64, |v: i64| v as f64);
element!(f32, F32, |v: f32| v as f64);
element!(f64, F64, |v: f64| v);

/// Builds an array of `shape` from row-major `values`, with an error naming the sizes.
pub(crate) fn array_from_vec<T>(values: Vec<T>, shape: &[usize]) -> Result<ArrayD<T>> {
    let len = values.len();
    ArrayD::from_shape_vec(shape.to_vec(), values).map_err(|_| {
        Error::shape(
            "from_vec",
            format!("{len} values cannot have shape {shape:?}"),
        )
    })
}

impl<T: Element> From<ArrayD<T>> for Data {
    fn from(array: ArrayD<T>) -> Data {
        T::wrap(array)
    }
}
