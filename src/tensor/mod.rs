//! Tensors: the values users compute with, eagerly or inside a traced function.
//!
//! A [`Tensor`] is one of three things, and user code never needs to know which:
//! - *concrete*: an `ndarray` array (shared, never copied on clone);
//! - *traced*: a variable of the program being traced (see [`crate::make_program`]);
//! - *failed*: the error of the operation that should have produced it. Operations on a failed
//!   tensor fail the same way, so `(a + b) * c` needs no `?` and a shape mismatch still reaches
//!   the caller as an [`Error`] when the data is read or the transform returns.
//!
//! A tensor may also carry a physical [`Unit`]: its values are then counted in that unit (see
//! [`crate::unit`]).
//!
//! ```
//! use brainstate::{grad, Tensor};
//! let x = Tensor::from([1.0, 2.0]); // concrete
//! let bad = &x + Tensor::from([1.0, 2.0, 3.0]); // failed: the error travels with the tensor
//! assert!((bad * 2.0).to_vec::<f64>().is_err());
//! // traced: inside a transform, the same code records a program
//! let g = grad(|x: &Tensor| x.powi(2).sum()).call(&x).unwrap();
//! assert_eq!(g.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 4.0]);
//! ```

mod linalg;
mod ops;
mod reductions;
mod scan;
mod shape;

use std::fmt;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};

pub use self::linalg::einsum;
pub use self::ops::{Operand, where_};
pub use self::shape::{AxisRange, concatenate, stack};
use crate::error::{Error, Result};
use crate::ir::Var;
use crate::primitives::Prim;
use crate::storage::{Aval, DType, Data, Element, with_array};
use crate::trace;
use crate::unit::Unit;

/// An n-dimensional array of `f64` (default), `f32`, `i64`, `bool` or complex numbers (`c64`,
/// `c128`), that can be computed with eagerly or traced into a program by a transform.
///
/// ```
/// use brainstate::Tensor;
/// let x = Tensor::from([[1.0, 2.0], [3.0, 4.0]]);
/// let y = (&x * 2.0 + 1.0).sum();
/// assert_eq!(y.item().unwrap(), 24.0);
/// assert_eq!(x.shape().unwrap(), &[2, 2]);
/// ```
#[derive(Clone)]
pub struct Tensor {
    repr: Repr,
    /// The physical unit the values are counted in; `None` for a plain (dimensionless) tensor.
    unit: Option<Unit>,
}

#[derive(Clone)]
pub(crate) enum Repr {
    Concrete(Arc<Data>),
    Traced(Arc<Tracer>),
    Failed(Arc<Error>),
}

/// A variable of the program being traced by trace frame `frame`.
pub(crate) struct Tracer {
    pub frame: u64,
    pub var: Var,
    pub aval: Aval,
}

impl Tensor {
    pub(crate) fn from_data(data: Data) -> Tensor {
        Tensor::from_shared(Arc::new(data))
    }

    pub(crate) fn from_shared(data: Arc<Data>) -> Tensor {
        Tensor {
            repr: Repr::Concrete(data),
            unit: None,
        }
    }

    pub(crate) fn traced(frame: u64, var: Var, aval: Aval) -> Tensor {
        Tensor {
            repr: Repr::Traced(Arc::new(Tracer { frame, var, aval })),
            unit: None,
        }
    }

    pub(crate) fn failed(error: Error) -> Tensor {
        Tensor {
            repr: Repr::Failed(Arc::new(error)),
            unit: None,
        }
    }

    pub(crate) fn repr(&self) -> &Repr {
        &self.repr
    }

    /// A zero-dimensional `f64` tensor.
    ///
    /// ```
    /// let x = brainstate::Tensor::scalar(3.0);
    /// assert_eq!(x.shape().unwrap(), &[] as &[usize]);
    /// ```
    pub fn scalar(value: f64) -> Tensor {
        Tensor::from_data(Data::scalar(value, DType::F64))
    }

    /// A zero-dimensional tensor of `dtype` holding `value` (cast).
    ///
    /// ```
    /// use brainstate::{DType, Tensor};
    /// let x = Tensor::scalar_of(2.7, DType::I64);
    /// assert_eq!((x.dtype().unwrap(), x.item().unwrap()), (DType::I64, 2.0));
    /// ```
    pub fn scalar_of(value: f64, dtype: DType) -> Tensor {
        Tensor::from_data(Data::scalar(value, dtype))
    }

    /// A tensor of `shape` from row-major `values`; an error if the sizes differ.
    ///
    /// ```
    /// let x = brainstate::Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    /// assert_eq!(x.shape().unwrap(), [2, 3]);
    /// ```
    pub fn from_vec<T: Element>(values: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let len = values.len();
        let array = ArrayD::from_shape_vec(shape.to_vec(), values).map_err(|_| {
            Error::shape(
                "from_vec",
                format!("{len} values cannot have shape {shape:?}"),
            )
        })?;
        Ok(Tensor::from_data(T::wrap(array)))
    }

    /// A tensor that shares nothing with `array` (it is moved in).
    ///
    /// ```
    /// let a = ndarray::array![[1.0, 2.0], [3.0, 4.0]];
    /// let x = brainstate::Tensor::from_ndarray(a);
    /// assert_eq!(x.shape().unwrap(), [2, 2]);
    /// ```
    pub fn from_ndarray<T: Element, D: ndarray::Dimension>(array: ndarray::Array<T, D>) -> Tensor {
        Tensor::from_data(T::wrap(array.into_dyn()))
    }

    /// The shape and dtype; for a failed tensor, its error.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::zeros(&[3]).aval().unwrap().to_string(), "f64[3]");
    /// assert!((Tensor::zeros(&[2]) + Tensor::zeros(&[3])).aval().is_err());
    /// ```
    pub fn aval(&self) -> Result<Aval> {
        Ok(Aval::new(self.shape()?, self.dtype()?))
    }

    /// The dimensions; for a failed tensor, its error (a failed tensor has no shape).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3]).shape().unwrap(), [2, 3]);
    /// let bad = Tensor::zeros(&[2]) + Tensor::zeros(&[3]);
    /// assert!(bad.shape().unwrap_err().to_string().contains("[2] and [3]"));
    /// ```
    pub fn shape(&self) -> Result<&[usize]> {
        match &self.repr {
            Repr::Concrete(d) => Ok(d.shape()),
            Repr::Traced(t) => Ok(&t.aval.shape),
            Repr::Failed(e) => Err((**e).clone()),
        }
    }

    /// The number of dimensions.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3]).ndim().unwrap(), 2);
    /// assert_eq!(Tensor::scalar(1.0).ndim().unwrap(), 0);
    /// ```
    pub fn ndim(&self) -> Result<usize> {
        Ok(self.shape()?.len())
    }

    /// The number of elements.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3]).numel().unwrap(), 6);
    /// assert_eq!(Tensor::scalar(1.0).numel().unwrap(), 1);
    /// ```
    pub fn numel(&self) -> Result<usize> {
        Ok(self.shape()?.iter().product())
    }

    /// The element type; for a failed tensor, its error.
    ///
    /// ```
    /// use brainstate::{DType, Tensor};
    /// assert_eq!(Tensor::from([1.0f32]).dtype().unwrap(), DType::F32);
    /// assert_eq!(Tensor::from([true]).dtype().unwrap(), DType::Bool);
    /// ```
    pub fn dtype(&self) -> Result<DType> {
        match &self.repr {
            Repr::Concrete(d) => Ok(d.dtype()),
            Repr::Traced(t) => Ok(t.aval.dtype),
            Repr::Failed(e) => Err((**e).clone()),
        }
    }

    /// The error that produced this tensor, if an operation failed.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let bad = Tensor::from([1.0, 2.0]) + Tensor::from([1.0, 2.0, 3.0]);
    /// assert!(bad.error().unwrap().to_string().contains("[2] and [3]"));
    /// ```
    pub fn error(&self) -> Option<&Error> {
        match &self.repr {
            Repr::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether this tensor is a variable of a program being traced.
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// assert!(!Tensor::scalar(1.0).is_traced());
    /// let g = grad(|x: &Tensor| {
    ///     assert!(x.is_traced()); // a panic here would make `call` fail
    ///     x.sum()
    /// });
    /// assert!(g.call(&Tensor::from([1.0])).is_ok());
    /// ```
    pub fn is_traced(&self) -> bool {
        matches!(self.repr, Repr::Traced(_))
    }

    /// The tensor `build` makes, or a failed tensor carrying its error. User-level operations
    /// read their operands' shapes and dtypes inside `build`, where each read is a `Result`:
    /// so an operation on a failed tensor hands the first error on and never computes with a
    /// made-up shape.
    ///
    /// Equations recorded inside `build` are attributed to the caller's call, as if the
    /// operation were one primitive.
    #[track_caller]
    pub(crate) fn attempt(build: impl FnOnce() -> Result<Tensor>) -> Tensor {
        trace::with_caller(std::panic::Location::caller(), build)
            .unwrap_or_else(|e| Tensor::failed(trace::record_error(e)))
    }

    /// The concrete values, or the error saying why there are none.
    pub(crate) fn data(&self) -> Result<&Arc<Data>> {
        match &self.repr {
            Repr::Concrete(d) => Ok(d),
            Repr::Traced(t) => Err(Error::Trace(format!(
                "the value of a traced tensor ({}) is not known while tracing; \
                 compute with it, and read values from the transform's result",
                t.aval
            ))),
            Repr::Failed(e) => Err((**e).clone()),
        }
    }

    /// The values in row-major order, cast to `T`.
    ///
    /// ```
    /// let x = brainstate::Tensor::from([1.5, 2.5]);
    /// assert_eq!(x.to_vec::<f64>().unwrap(), vec![1.5, 2.5]);
    /// ```
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let array = T::unwrap(self.data()?);
        if !array.is_standard_layout() {
            return Ok(array.iter().copied().collect());
        }
        let len = array.len();
        match array.into_raw_vec_and_offset() {
            (values, Some(0) | None) if values.len() == len => Ok(values),
            (values, offset) => {
                let start = offset.unwrap_or(0);
                Ok(values[start..start + len].to_vec())
            }
        }
    }

    /// The values as an `ndarray` array, cast to `T`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let a = Tensor::from([[1_i64, 2]]).to_ndarray::<f64>().unwrap();
    /// assert_eq!(a, ndarray::array![[1.0, 2.0]].into_dyn());
    /// ```
    pub fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>> {
        Ok(T::unwrap(self.data()?))
    }

    /// The single value of a one-element real tensor, as `f64`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([1.0, 2.0]).sum().item().unwrap(), 3.0);
    /// assert!(Tensor::from([1.0, 2.0]).item().is_err());
    /// ```
    pub fn item(&self) -> Result<f64> {
        let dtype = self.dtype()?;
        if dtype.is_complex() {
            return Err(Error::dtype(
                "item",
                "needs a real tensor (use item_complex)",
                dtype,
            ));
        }
        Ok(self.item_complex()?.re)
    }

    /// The single value of a one-element tensor, as a complex number.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// use brainstate::Complex64;
    /// let z = Tensor::from(Complex64::new(1.0, 2.0));
    /// assert_eq!(z.item_complex().unwrap(), Complex64::new(1.0, 2.0));
    /// ```
    pub fn item_complex(&self) -> Result<num_complex::Complex64> {
        let data = self.data()?;
        match data.to_complex_vec().as_slice() {
            [v] => Ok(*v),
            _ => Err(Error::shape(
                "item",
                format!("needs exactly one element, got shape {:?}", data.shape()),
            )),
        }
    }

    /// The physical unit the values are counted in (`None` for a plain tensor).
    ///
    /// ```
    /// use brainstate::{units::ms, Tensor};
    /// assert_eq!((Tensor::scalar(1.0) * ms).unit(), Some(ms));
    /// assert_eq!(Tensor::scalar(1.0).unit(), None);
    /// ```
    pub fn unit(&self) -> Option<Unit> {
        self.unit
    }

    /// The same values counted in `unit` (a dimensionless unit of scale 1 gives a plain
    /// tensor). Also written `tensor * unit`.
    ///
    /// ```
    /// use brainstate::{units::mV, Tensor, Unit};
    /// assert_eq!(Tensor::scalar(2.0).with_unit(Some(mV)).unit(), Some(mV));
    /// assert_eq!(Tensor::scalar(2.0).with_unit(Some(Unit::ONE)).unit(), None);
    /// ```
    pub fn with_unit(&self, unit: Option<Unit>) -> Tensor {
        Tensor {
            repr: self.repr.clone(),
            unit: unit.filter(|u| *u != Unit::ONE),
        }
    }

    /// The values without their unit (the numbers as counted in it).
    ///
    /// ```
    /// use brainstate::{units::ms, Tensor};
    /// let m = (Tensor::scalar(3.0) * ms).mantissa();
    /// assert_eq!((m.unit(), m.item().unwrap()), (None, 3.0));
    /// ```
    pub fn mantissa(&self) -> Tensor {
        self.with_unit(None)
    }

    /// The values counted in `unit`, as a plain tensor; an error if the dimensions differ.
    ///
    /// ```
    /// use brainstate::units::{ms, second};
    /// use brainstate::Tensor;
    /// let t = Tensor::from([1.5, 2.0]) * second;
    /// assert_eq!(t.value_in(ms).unwrap().to_vec::<f64>().unwrap(), vec![1500.0, 2000.0]);
    /// assert!(t.value_in(brainstate::units::mV).is_err());
    /// ```
    #[track_caller]
    pub fn value_in(&self, unit: Unit) -> Result<Tensor> {
        self.aval()?;
        let factor = self
            .unit
            .unwrap_or(Unit::ONE)
            .factor_to(&unit, "value_in")?;
        let plain = self.mantissa();
        Ok(if factor == 1.0 { plain } else { plain * factor })
    }

    /// The same quantity counted in `unit`; a failed tensor if the dimensions differ.
    ///
    /// ```
    /// use brainstate::units::{ms, second};
    /// use brainstate::Tensor;
    /// let t = (Tensor::scalar(1.5) * second).to_unit(ms);
    /// assert_eq!((t.unit(), t.mantissa().item().unwrap()), (Some(ms), 1500.0));
    /// ```
    #[track_caller]
    pub fn to_unit(&self, unit: Unit) -> Tensor {
        match self.value_in(unit) {
            Ok(values) => values.with_unit(Some(unit)),
            Err(e) => Tensor::failed(e),
        }
    }

    /// Applies `prim` to `inputs`: records it when tracing, computes it otherwise.
    #[track_caller]
    pub(crate) fn apply(prim: impl Into<Prim>, inputs: &[&Tensor]) -> Tensor {
        let mut outs = trace::apply(prim.into(), inputs);
        outs.swap_remove(0)
    }

    /// Applies a primitive with `n` results (each a failed tensor if the primitive fails).
    #[track_caller]
    pub(crate) fn apply_all(prim: impl Into<Prim>, inputs: &[&Tensor], n: usize) -> Vec<Tensor> {
        let mut outs = trace::apply(prim.into(), inputs);
        if outs.len() < n {
            let failed = outs[0].clone();
            outs.resize(n, failed);
        }
        outs
    }
}

impl<T: Element> From<T> for Tensor {
    fn from(value: T) -> Tensor {
        Tensor::from_data(T::wrap(ndarray::arr0(value).into_dyn()))
    }
}

impl<T: Element> From<Vec<T>> for Tensor {
    fn from(values: Vec<T>) -> Tensor {
        let n = values.len();
        Tensor::from_data(T::wrap(
            ArrayD::from_shape_vec(IxDyn(&[n]), values).expect("1-d"),
        ))
    }
}

impl<T: Element> From<&[T]> for Tensor {
    fn from(values: &[T]) -> Tensor {
        Tensor::from(values.to_vec())
    }
}

impl<T: Element, const N: usize> From<[T; N]> for Tensor {
    fn from(values: [T; N]) -> Tensor {
        Tensor::from(values.to_vec())
    }
}

impl<T: Element, const N: usize, const M: usize> From<[[T; N]; M]> for Tensor {
    fn from(rows: [[T; N]; M]) -> Tensor {
        let values: Vec<T> = rows.iter().flatten().copied().collect();
        Tensor::from_data(T::wrap(
            ArrayD::from_shape_vec(IxDyn(&[M, N]), values).expect("M x N values"),
        ))
    }
}

impl<T: Element, D: ndarray::Dimension> From<ndarray::Array<T, D>> for Tensor {
    fn from(array: ndarray::Array<T, D>) -> Tensor {
        Tensor::from_ndarray(array)
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Concrete(d) => {
                with_array!(&**d, a => write!(f, "{a}"))?;
                if let Some(unit) = self.unit {
                    write!(f, " {unit}")?;
                }
                write!(f, " ({})", Aval::new(d.shape(), d.dtype()))
            }
            Repr::Traced(t) => match self.unit {
                Some(unit) => write!(f, "Traced<{}> {unit}", t.aval),
                None => write!(f, "Traced<{}>", t.aval),
            },
            Repr::Failed(e) => write!(f, "Failed({e})"),
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({self})")
    }
}
