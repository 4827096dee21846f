//! Concrete storage: one `ndarray` array per dtype.

// `Element` is sealed through a supertrait whose methods name the crate-private `Data`.
#![allow(private_interfaces)]

use ndarray::{ArrayD, IxDyn};
use num_complex::{Complex32, Complex64};

use self::sealed::Storage as _;
use super::DType;

/// The values of a concrete tensor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    Bool(ArrayD<bool>),
    I64(ArrayD<i64>),
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    C64(ArrayD<Complex32>),
    C128(ArrayD<Complex64>),
}

/// Applies `$body` to the array inside a `Data`, whatever its dtype.
macro_rules! with_array {
    ($data:expr, $a:ident => $body:expr) => {
        match $data {
            Data::Bool($a) => $body,
            Data::I64($a) => $body,
            Data::F32($a) => $body,
            Data::F64($a) => $body,
            Data::C64($a) => $body,
            Data::C128($a) => $body,
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
            Data::C64(_) => DType::C64,
            Data::C128(_) => DType::C128,
        }
    }

    pub fn shape(&self) -> &[usize] {
        with_array!(self, a => a.shape())
    }

    /// Zeros of `shape` and `dtype`. Large ones come from the allocator as zeroed pages, which
    /// the system provides lazily, so an array that stays mostly zero costs little.
    pub fn zeros(shape: &[usize], dtype: DType) -> Data {
        fn zeros<T: Element + Default>(shape: &[usize]) -> Data {
            Data::from(ArrayD::from_elem(shape, T::default()))
        }
        match dtype {
            DType::Bool => zeros::<bool>(shape),
            DType::I64 => zeros::<i64>(shape),
            DType::F32 => zeros::<f32>(shape),
            DType::F64 => zeros::<f64>(shape),
            DType::C64 => zeros::<Complex32>(shape),
            DType::C128 => zeros::<Complex64>(shape),
        }
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

    /// The same values in row-major order, as `shape` (of as many elements): the buffer moves
    /// without a copy when the array is in standard layout.
    pub(crate) fn into_shape(self, shape: &[usize]) -> Data {
        with_array!(self, a => {
            let a = if a.is_standard_layout() { a } else { a.as_standard_layout().into_owned() };
            Data::from(a.into_shape_with_order(IxDyn(shape)).expect("as many elements"))
        })
    }

    /// The array with its axes permuted, in the same buffer: element `i` of the result is
    /// element `i[perm^-1]` of `self`, read through permuted strides (not standard layout).
    pub(crate) fn into_permuted(self, perm: &[usize]) -> Data {
        with_array!(self, a => Data::from(a.permuted_axes(IxDyn(perm))))
    }

    /// Casts to `dtype` with `as` semantics (floats truncate toward zero into integers;
    /// non-zero is `true`; a complex number cast to a real dtype keeps its real part).
    pub fn cast(&self, dtype: DType) -> Data {
        if self.dtype() == dtype {
            return self.clone();
        }
        fn convert<S: Element, T: Element>(a: &ArrayD<S>) -> ArrayD<T> {
            a.mapv(|v| T::from_complex(v.to_complex()))
        }
        match dtype {
            DType::Bool => Data::Bool(with_array!(self, a => convert(a))),
            DType::I64 => Data::I64(with_array!(self, a => convert(a))),
            DType::F32 => Data::F32(with_array!(self, a => convert(a))),
            DType::F64 => Data::F64(with_array!(self, a => convert(a))),
            DType::C64 => Data::C64(with_array!(self, a => convert(a))),
            DType::C128 => Data::C128(with_array!(self, a => convert(a))),
        }
    }

    /// The values as complex numbers, in row-major order.
    pub fn to_complex_vec(&self) -> Vec<Complex64> {
        with_array!(self, a => a.iter().map(|v| v.to_complex()).collect())
    }

    /// Whether every value is finite (always true for integers and booleans).
    pub fn all_finite(&self) -> bool {
        match self {
            Data::F32(a) => a.iter().all(|v| v.is_finite()),
            Data::F64(a) => a.iter().all(|v| v.is_finite()),
            Data::C64(a) => a.iter().all(|v| v.is_finite()),
            Data::C128(a) => a.iter().all(|v| v.is_finite()),
            _ => true,
        }
    }
}

mod sealed {
    use super::{ArrayD, Complex64, Data};

    /// Moving arrays in and out of [`Data`]; private, so that only this crate adds elements.
    pub trait Storage: Sized {
        fn wrap(array: ArrayD<Self>) -> Data;
        /// The array, cast to this type.
        fn unwrap(data: &Data) -> ArrayD<Self>;
        /// The value as a complex number.
        fn to_complex(self) -> Complex64;
        /// A value of this type from a complex number (see [`Data::cast`]).
        fn from_complex(c: Complex64) -> Self;
    }
}

/// A Rust element type that a tensor can hold: `f64`, `f32`, `i64`, `bool`,
/// `num_complex::Complex64` or `num_complex::Complex32`.
///
/// ```
/// use brainstate::{DType, Element, Tensor};
/// assert_eq!(<f32 as Element>::DTYPE, DType::F32);
/// assert_eq!(Tensor::from([1_i64, 2]).to_vec::<f64>().unwrap(), vec![1.0, 2.0]);
/// ```
pub trait Element: sealed::Storage + Copy + 'static {
    /// The dtype of tensors made of this type.
    ///
    /// ```
    /// use brainstate::{Complex64, DType, Element};
    /// assert_eq!(<bool as Element>::DTYPE, DType::Bool);
    /// assert_eq!(<Complex64 as Element>::DTYPE, DType::C128);
    /// ```
    const DTYPE: DType;
    /// The value as `f64` (`true` is 1; the real part of a complex number).
    ///
    /// ```
    /// use brainstate::{Complex64, Element};
    /// assert_eq!(true.to_f64(), 1.0);
    /// assert_eq!(Complex64::new(2.0, 3.0).to_f64(), 2.0);
    /// ```
    fn to_f64(self) -> f64 {
        self.to_complex().re
    }
}

macro_rules! element {
    ($t:ty, $variant:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
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
            fn to_complex(self) -> Complex64 {
                $to(self)
            }
            fn from_complex(c: Complex64) -> Self {
                $from(c)
            }
        }
    };
}
element!(
    bool,
    Bool,
    |v: bool| Complex64::new(if v { 1.0 } else { 0.0 }, 0.0),
    |c: Complex64| c.re != 0.0 || c.im != 0.0
);
element!(
    i64,
    I64,
    |v: i64| Complex64::new(v as f64, 0.0),
    |c: Complex64| c.re as i64
);
element!(
    f32,
    F32,
    |v: f32| Complex64::new(v as f64, 0.0),
    |c: Complex64| c.re as f32
);
element!(f64, F64, |v: f64| Complex64::new(v, 0.0), |c: Complex64| c
    .re);
element!(
    Complex32,
    C64,
    |v: Complex32| Complex64::new(v.re as f64, v.im as f64),
    |c: Complex64| Complex32::new(c.re as f32, c.im as f32)
);
element!(Complex64, C128, |v: Complex64| v, |c: Complex64| c);

impl<T: Element> From<ArrayD<T>> for Data {
    fn from(array: ArrayD<T>) -> Data {
        T::wrap(array)
    }
}
