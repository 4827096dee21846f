//! User-level operations. Each is one primitive or a composition of primitives, so none needs
//! derivative rules of its own. Operations never panic: a failure (a shape mismatch, a bad
//! axis) yields a failed tensor carrying the error. They are `#[track_caller]` so that
//! recorded equations, and `debug_nan` reports, point at the user's line.

use std::ops::{Add, Div, Mul, Neg, Sub};

use num_complex::Complex64;

use super::Tensor;
use super::shape::axes_index;
use crate::error::Error;
use crate::primitives::{
    BinaryOp, CmpOp, Creation, Elementwise, MatMul, Reduce, ReduceOp, UnaryOp,
};
use crate::storage::{Aval, DType};
use crate::unit::Unit;

/// A value that can stand on the other side of an operation with a tensor: a tensor, or a
/// Rust number, which takes the tensor's dtype (JAX's weak typing) when that is a float.
///
/// ```
/// use brainstate::{DType, Tensor};
/// let x = Tensor::from([1.0f32, 2.0]);
/// assert_eq!((&x * 2.0).dtype().unwrap(), DType::F32); // the scalar takes the tensor's dtype
/// assert_eq!((&x + &x).to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
/// ```
pub trait Operand {
    /// The operand as a tensor, next to `like`.
    ///
    /// ```
    /// use brainstate::{DType, Operand, Tensor};
    /// let ints = Tensor::from([1_i64, 2]);
    /// assert_eq!(3_i64.to_tensor(&ints).dtype().unwrap(), DType::I64);
    /// assert_eq!(0.5_f64.to_tensor(&ints).dtype().unwrap(), DType::F64);
    /// ```
    fn to_tensor(&self, like: &Tensor) -> Tensor;
}

impl Operand for Tensor {
    fn to_tensor(&self, _: &Tensor) -> Tensor {
        self.clone()
    }
}

impl Operand for &Tensor {
    fn to_tensor(&self, _: &Tensor) -> Tensor {
        (*self).clone()
    }
}

macro_rules! weak_scalar {
    ($($t:ty => $int:expr),*) => {$(
        impl Operand for $t {
            fn to_tensor(&self, like: &Tensor) -> Tensor {
                // Next to a failed tensor, the operand is that failure.
                let Ok(dtype) = like.dtype() else {
                    return like.clone();
                };
                let dtype = match dtype {
                    d if d.is_inexact() => d,
                    DType::I64 | DType::Bool if $int => DType::I64,
                    _ => DType::F64,
                };
                Tensor::scalar_of(*self as f64, dtype)
            }
        }
    )*};
}
weak_scalar!(f64 => false, f32 => false, i64 => true, i32 => true);

impl Operand for Complex64 {
    /// A complex scalar takes the precision of a floating-point tensor next to it.
    fn to_tensor(&self, like: &Tensor) -> Tensor {
        let Ok(dtype) = like.dtype() else {
            return like.clone();
        };
        let dtype = match dtype {
            d if d.is_inexact() => d.complex(),
            _ => DType::C128,
        };
        Tensor::from(*self).cast(dtype)
    }
}

impl Tensor {
    #[track_caller]
    fn unary(&self, op: UnaryOp) -> Tensor {
        Tensor::apply(op, &[&self.cast_float()])
    }

    #[track_caller]
    fn binary(&self, op: BinaryOp, other: &Tensor) -> Tensor {
        Tensor::attempt(|| {
            let mut dtype = self.dtype()?.promote(other.dtype()?);
            let needs_float = matches!(op, BinaryOp::Div | BinaryOp::Pow);
            if needs_float && !dtype.is_inexact() {
                dtype = DType::F64;
            } else if dtype == DType::Bool {
                dtype = DType::I64;
            }
            Ok(Tensor::apply(op, &[&self.cast(dtype), &other.cast(dtype)]))
        })
    }

    #[track_caller]
    fn compare(&self, op: CmpOp, other: &Tensor) -> Tensor {
        Tensor::attempt(|| {
            let dtype = self.dtype()?.promote(other.dtype()?);
            Ok(Tensor::apply(op, &[&self.cast(dtype), &other.cast(dtype)]))
        })
    }

    /// The same values as `dtype` (no-op when the dtype already matches).
    ///
    /// ```
    /// use brainstate::{DType, Tensor};
    /// let x = Tensor::from([1.7, -2.5]).cast(DType::I64);
    /// assert_eq!(x.dtype().unwrap(), DType::I64);
    /// assert_eq!(x.to_vec::<i64>().unwrap(), vec![1, -2]);
    /// ```
    #[track_caller]
    pub fn cast(&self, dtype: DType) -> Tensor {
        match self.dtype() {
            Ok(own) if own != dtype => Tensor::apply(Elementwise::Convert(dtype), &[self]),
            _ => self.clone(),
        }
    }

    /// `e^x`
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([0.0, 1.0]).exp().to_vec::<f64>().unwrap();
    /// assert_eq!(y[0], 1.0);
    /// assert!((y[1] - std::f64::consts::E).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn exp(&self) -> Tensor {
        self.unary(UnaryOp::Exp)
    }
    /// Natural logarithm.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([1.0, std::f64::consts::E]).log().to_vec::<f64>().unwrap();
    /// assert!(y[0].abs() < 1e-12 && (y[1] - 1.0).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn log(&self) -> Tensor {
        self.unary(UnaryOp::Log)
    }
    /// `log(1 + x)`, accurate near 0.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::scalar(1e-20).log1p().item().unwrap();
    /// assert!((y - 1e-20).abs() < 1e-32); // `(1.0 + x).log()` would give 0
    /// ```
    #[track_caller]
    pub fn log1p(&self) -> Tensor {
        self.unary(UnaryOp::Log1p)
    }
    /// `e^x - 1`, accurate near 0.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::scalar(1e-20).expm1().item().unwrap();
    /// assert!((y - 1e-20).abs() < 1e-32); // `x.exp() - 1.0` would give 0
    /// ```
    #[track_caller]
    pub fn expm1(&self) -> Tensor {
        self.unary(UnaryOp::Expm1)
    }
    /// Square root.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([4.0, 9.0]).sqrt().to_vec::<f64>().unwrap(), vec![2.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn sqrt(&self) -> Tensor {
        self.unary(UnaryOp::Sqrt)
    }
    /// Sine.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([0.0, std::f64::consts::FRAC_PI_2]).sin().to_vec::<f64>().unwrap();
    /// assert!(y[0].abs() < 1e-12 && (y[1] - 1.0).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn sin(&self) -> Tensor {
        self.unary(UnaryOp::Sin)
    }
    /// Cosine.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([0.0, std::f64::consts::PI]).cos().to_vec::<f64>().unwrap();
    /// assert!((y[0] - 1.0).abs() < 1e-12 && (y[1] + 1.0).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn cos(&self) -> Tensor {
        self.unary(UnaryOp::Cos)
    }
    /// Tangent.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::scalar(std::f64::consts::FRAC_PI_4).tan().item().unwrap();
    /// assert!((y - 1.0).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn tan(&self) -> Tensor {
        self.unary(UnaryOp::Tan)
    }
    /// Hyperbolic tangent.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([0.0, 20.0]).tanh().to_vec::<f64>().unwrap();
    /// assert!(y[0].abs() < 1e-12 && (y[1] - 1.0).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn tanh(&self) -> Tensor {
        self.unary(UnaryOp::Tanh)
    }
    /// The logistic function `1 / (1 + e^-x)`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([0.0, 2.0]).sigmoid().to_vec::<f64>().unwrap();
    /// assert_eq!(y[0], 0.5);
    /// assert!((y[1] - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn sigmoid(&self) -> Tensor {
        self.unary(UnaryOp::Logistic)
    }
    /// The error function, `2/sqrt(pi)` times the integral of `e^(-t^2)` from 0 to `x` (real
    /// dtypes).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([0.0, 1.0, -2.0]).erf().to_vec::<f64>().unwrap();
    /// assert_eq!(y[0], 0.0);
    /// assert!((y[1] - 0.8427007929497149).abs() < 1e-15);
    /// assert!((y[2] + 0.9953222650189527).abs() < 1e-15);
    /// ```
    #[track_caller]
    pub fn erf(&self) -> Tensor {
        self.unary(UnaryOp::Erf)
    }
    /// The complex conjugate (the identity on real tensors).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// use brainstate::Complex64;
    /// let z = Tensor::from(vec![Complex64::new(1.0, 2.0)]);
    /// assert_eq!(z.conj().to_vec::<Complex64>().unwrap(), vec![Complex64::new(1.0, -2.0)]);
    /// ```
    #[track_caller]
    pub fn conj(&self) -> Tensor {
        self.unary(UnaryOp::Conj)
    }
    /// The real part, as a real dtype (`c128` gives `f64`).
    ///
    /// ```
    /// use brainstate::{Complex64, DType, Tensor};
    /// let z = Tensor::from(vec![Complex64::new(1.0, 2.0)]);
    /// assert_eq!(z.real().dtype().unwrap(), DType::F64);
    /// assert_eq!(z.real().to_vec::<f64>().unwrap(), vec![1.0]);
    /// ```
    #[track_caller]
    pub fn real(&self) -> Tensor {
        self.unary(UnaryOp::Real)
    }
    /// The imaginary part, as a real dtype (zeros for a real tensor).
    ///
    /// ```
    /// use brainstate::{Complex64, Tensor};
    /// let z = Tensor::from(vec![Complex64::new(1.0, 2.0)]);
    /// assert_eq!(z.imag().to_vec::<f64>().unwrap(), vec![2.0]);
    /// assert_eq!(Tensor::from([3.0]).imag().to_vec::<f64>().unwrap(), vec![0.0]);
    /// ```
    #[track_caller]
    pub fn imag(&self) -> Tensor {
        self.unary(UnaryOp::Imag)
    }
    /// The argument of each complex number, in `(-pi, pi]` (`atan2(imag, real)`).
    ///
    /// ```
    /// use brainstate::{Complex64, Tensor};
    /// let z = Tensor::from(vec![Complex64::new(0.0, 2.0), Complex64::new(-1.0, 0.0)]);
    /// let a = z.angle().to_vec::<f64>().unwrap();
    /// assert!((a[0] - std::f64::consts::FRAC_PI_2).abs() < 1e-12);
    /// assert!((a[1] - std::f64::consts::PI).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn angle(&self) -> Tensor {
        let (im, re) = (self.imag(), self.real());
        Tensor::apply(BinaryOp::Atan2, &[&im, &re])
    }
    /// The complex tensor `re + i im` from real parts (broadcast).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// use brainstate::Complex64;
    /// let z = Tensor::complex(&Tensor::from([1.0, 2.0]), &Tensor::scalar(0.5));
    /// assert_eq!(z.to_vec::<Complex64>().unwrap()[1], Complex64::new(2.0, 0.5));
    /// ```
    #[track_caller]
    pub fn complex(re: &Tensor, im: &Tensor) -> Tensor {
        Tensor::attempt(|| {
            let (re, im) = (re.cast_float(), im.cast_float());
            let dtype = re.dtype()?.promote(im.dtype()?);
            Ok(Tensor::apply(
                BinaryOp::Complex,
                &[&re.cast(dtype), &im.cast(dtype)],
            ))
        })
    }

    /// `|x|` (keeps integer dtypes; real for complex).
    ///
    /// ```
    /// use brainstate::{DType, Tensor};
    /// assert_eq!(Tensor::from([-1.5, 2.0]).abs().to_vec::<f64>().unwrap(), vec![1.5, 2.0]);
    /// assert_eq!(Tensor::from([-3_i64]).abs().dtype().unwrap(), DType::I64);
    /// ```
    #[track_caller]
    pub fn abs(&self) -> Tensor {
        Tensor::apply(UnaryOp::Abs, &[self])
    }
    /// `-1`, `0` or `1` by the sign of each element (keeps integer dtypes).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let s = Tensor::from([-2.0, 0.0, 3.0]).sign();
    /// assert_eq!(s.to_vec::<f64>().unwrap(), vec![-1.0, 0.0, 1.0]);
    /// ```
    #[track_caller]
    pub fn sign(&self) -> Tensor {
        Tensor::apply(UnaryOp::Sign, &[self])
    }
    /// The same value, treated as a constant by differentiation.
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// // Only the first factor is differentiated: d/dx (x * c) with c = x held constant.
    /// let g = grad(|x: &Tensor| (x * x.stop_gradient()).sum());
    /// let g = g.call(&Tensor::from([3.0])).unwrap();
    /// assert_eq!(g.tensor().unwrap().to_vec::<f64>().unwrap(), vec![3.0]);
    /// ```
    #[track_caller]
    pub fn stop_gradient(&self) -> Tensor {
        Tensor::apply(UnaryOp::StopGradient, &[self])
    }
    /// `x^n` for an integer `n`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([2.0, 3.0]).powi(3).to_vec::<f64>().unwrap(), vec![8.0, 27.0]);
    /// ```
    #[track_caller]
    pub fn powi(&self, n: i32) -> Tensor {
        let x = self.cast_float();
        // The trivial powers, which derivative rules produce, need no equation.
        match n {
            0 => {
                Tensor::attempt(|| Ok(Tensor::scalar_of(1.0, x.dtype()?).broadcast_to(x.shape()?)))
            }
            1 => x,
            _ => Tensor::apply(Elementwise::PowI(n), &[&x]),
        }
    }
    /// `x^p` for a real `p`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([4.0, 9.0]).powf(0.5).to_vec::<f64>().unwrap();
    /// assert!((y[0] - 2.0).abs() < 1e-12 && (y[1] - 3.0).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn powf(&self, p: f64) -> Tensor {
        self.pow(&p)
    }
    /// `x^y` elementwise.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([2.0, 3.0]).pow(&Tensor::from([3.0, 2.0])).to_vec::<f64>().unwrap();
    /// assert!((y[0] - 8.0).abs() < 1e-12 && (y[1] - 9.0).abs() < 1e-12);
    /// ```
    #[track_caller]
    pub fn pow(&self, y: &impl Operand) -> Tensor {
        self.binary(BinaryOp::Pow, &y.to_tensor(self))
    }
    /// Elementwise maximum (NaN-propagating).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([1.0, 5.0]).maximum(3.0);
    /// assert_eq!(y.to_vec::<f64>().unwrap(), vec![3.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn maximum(&self, other: impl Operand) -> Tensor {
        self.binary(BinaryOp::Max, &other.to_tensor(self))
    }
    /// Elementwise minimum (NaN-propagating).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([1.0, 5.0]).minimum(&Tensor::from([2.0, 4.0]));
    /// assert_eq!(y.to_vec::<f64>().unwrap(), vec![1.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn minimum(&self, other: impl Operand) -> Tensor {
        self.binary(BinaryOp::Min, &other.to_tensor(self))
    }
    /// `max(x, 0)`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([-1.0, 2.0]).relu().to_vec::<f64>().unwrap(), vec![0.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn relu(&self) -> Tensor {
        self.maximum(0.0)
    }
    /// Each element limited to `[lo, hi]`: `minimum(maximum(x, lo), hi)` (NumPy's `clip`).
    /// At a bound, the derivative is split between `x` and the bound, as for `maximum`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([-2.0, 0.5, 3.0]).clip(-1.0, 1.0);
    /// assert_eq!(y.to_vec::<f64>().unwrap(), vec![-1.0, 0.5, 1.0]);
    /// ```
    #[track_caller]
    pub fn clip(&self, lo: impl Operand, hi: impl Operand) -> Tensor {
        self.maximum(lo).minimum(hi)
    }
    /// `log(e^x + e^y)`, computed stably.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::scalar(1000.0).logaddexp(1000.0).item().unwrap(); // no overflow
    /// assert!((y - 1000.0 - 2f64.ln()).abs() < 1e-9);
    /// ```
    #[track_caller]
    pub fn logaddexp(&self, other: impl Operand) -> Tensor {
        let other = other.to_tensor(self);
        let max = self.maximum(&other);
        let gap = (self - &other).abs();
        max + (-gap).exp().log1p()
    }

    /// `x == y` elementwise, as `bool`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let m = Tensor::from([1.0, 2.0]).eq(2.0);
    /// assert_eq!(m.to_vec::<bool>().unwrap(), vec![false, true]);
    /// ```
    #[track_caller]
    pub fn eq(&self, other: impl Operand) -> Tensor {
        self.compare(CmpOp::Eq, &other.to_tensor(self))
    }
    /// `x != y` elementwise, as `bool`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let m = Tensor::from([1.0, 2.0]).ne(2.0);
    /// assert_eq!(m.to_vec::<bool>().unwrap(), vec![true, false]);
    /// ```
    #[track_caller]
    pub fn ne(&self, other: impl Operand) -> Tensor {
        self.compare(CmpOp::Ne, &other.to_tensor(self))
    }
    /// `x < y` elementwise, as `bool`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let m = Tensor::from([1.0, 2.0, 3.0]).lt(2.0);
    /// assert_eq!(m.to_vec::<bool>().unwrap(), vec![true, false, false]);
    /// ```
    #[track_caller]
    pub fn lt(&self, other: impl Operand) -> Tensor {
        self.compare(CmpOp::Lt, &other.to_tensor(self))
    }
    /// `x <= y` elementwise, as `bool`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let m = Tensor::from([1.0, 2.0, 3.0]).le(2.0);
    /// assert_eq!(m.to_vec::<bool>().unwrap(), vec![true, true, false]);
    /// ```
    #[track_caller]
    pub fn le(&self, other: impl Operand) -> Tensor {
        self.compare(CmpOp::Le, &other.to_tensor(self))
    }
    /// `x > y` elementwise, as `bool`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let m = Tensor::from([1.0, 2.0, 3.0]).gt(2.0);
    /// assert_eq!(m.to_vec::<bool>().unwrap(), vec![false, false, true]);
    /// ```
    #[track_caller]
    pub fn gt(&self, other: impl Operand) -> Tensor {
        self.compare(CmpOp::Gt, &other.to_tensor(self))
    }
    /// `x >= y` elementwise, as `bool`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let m = Tensor::from([1.0, 2.0, 3.0]).ge(2.0);
    /// assert_eq!(m.to_vec::<bool>().unwrap(), vec![false, true, true]);
    /// ```
    #[track_caller]
    pub fn ge(&self, other: impl Operand) -> Tensor {
        self.compare(CmpOp::Ge, &other.to_tensor(self))
    }

    /// `on_true` where this `bool` tensor is true, else `on_false` (see [`where_`]).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([true, false]).select(1.0, -1.0);
    /// assert_eq!(y.to_vec::<f64>().unwrap(), vec![1.0, -1.0]);
    /// ```
    #[track_caller]
    pub fn select(&self, on_true: impl Operand, on_false: impl Operand) -> Tensor {
        let on_true = on_true.to_tensor(&on_false.to_tensor(self));
        let on_false = on_false.to_tensor(&on_true);
        Tensor::attempt(|| {
            let dtype = on_true.dtype()?.promote(on_false.dtype()?);
            Ok(Tensor::apply(
                Elementwise::Select,
                &[self, &on_true.cast(dtype), &on_false.cast(dtype)],
            ))
        })
    }

    #[track_caller]
    fn reduce(&self, op: ReduceOp, axes: Option<&[isize]>, keepdims: bool) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?;
            let axes = match axes {
                Some(axes) => axes_index(op.name(), axes, shape.len())?,
                None => (0..shape.len()).collect(),
            };
            let x = if self.dtype()? == DType::Bool {
                self.cast(DType::I64)
            } else {
                self.clone()
            };
            let kept = crate::primitives::keepdims_shape(shape, &axes);
            let out = Tensor::apply(Reduce { op, axes }, &[&x]);
            Ok(if keepdims {
                out.reshape_exact(&kept)
            } else {
                out
            })
        })
    }

    /// Sum of all elements.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([[1.0, 2.0], [3.0, 4.0]]).sum().item().unwrap(), 10.0);
    /// ```
    #[track_caller]
    pub fn sum(&self) -> Tensor {
        self.reduce(ReduceOp::Sum, None, false)
    }
    /// Sum over `axes` (negative counts from the end), keeping them as size 1 if `keepdims`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0], [3.0, 4.0]]);
    /// assert_eq!(x.sum_axes(&[0], false).to_vec::<f64>().unwrap(), vec![4.0, 6.0]);
    /// assert_eq!(x.sum_axes(&[-1], true).shape().unwrap(), &[2, 1]);
    /// ```
    #[track_caller]
    pub fn sum_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        self.reduce(ReduceOp::Sum, Some(axes), keepdims)
    }
    /// Largest element.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([[1.0, 4.0], [3.0, 2.0]]).max().item().unwrap(), 4.0);
    /// ```
    #[track_caller]
    pub fn max(&self) -> Tensor {
        self.reduce(ReduceOp::Max, None, false)
    }
    /// Largest element over `axes`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 4.0], [3.0, 2.0]]);
    /// assert_eq!(x.max_axes(&[1], false).to_vec::<f64>().unwrap(), vec![4.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn max_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        self.reduce(ReduceOp::Max, Some(axes), keepdims)
    }
    /// Smallest element.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([[1.0, 4.0], [3.0, 2.0]]).min().item().unwrap(), 1.0);
    /// ```
    #[track_caller]
    pub fn min(&self) -> Tensor {
        self.reduce(ReduceOp::Min, None, false)
    }
    /// Smallest element over `axes`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 4.0], [3.0, 2.0]]).min_axes(&[0], true);
    /// assert_eq!((x.shape().unwrap(), x.to_vec::<f64>().unwrap()), (&[1, 2][..], vec![1.0, 2.0]));
    /// ```
    #[track_caller]
    pub fn min_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        self.reduce(ReduceOp::Min, Some(axes), keepdims)
    }
    /// Mean of all elements.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([[1.0, 2.0], [3.0, 4.0]]).mean().item().unwrap(), 2.5);
    /// assert_eq!(Tensor::from([1_i64, 2]).mean().item().unwrap(), 1.5); // integers give floats
    /// ```
    #[track_caller]
    pub fn mean(&self) -> Tensor {
        Tensor::attempt(|| Ok(self.cast_float().sum() / self.numel()? as f64))
    }
    /// Mean over `axes`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0], [3.0, 4.0]]);
    /// assert_eq!(x.mean_axes(&[0], false).to_vec::<f64>().unwrap(), vec![2.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn mean_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?;
            let n: usize = axes_index("mean", axes, shape.len())?
                .iter()
                .map(|&a| shape[a])
                .product();
            Ok(self.cast_float().sum_axes(axes, keepdims) / n as f64)
        })
    }
    /// `log(sum(exp(x)))` over all elements, computed stably.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::from([1000.0, 1000.0]).logsumexp().item().unwrap(); // no overflow
    /// assert!((y - 1000.0 - 2f64.ln()).abs() < 1e-9);
    /// ```
    #[track_caller]
    pub fn logsumexp(&self) -> Tensor {
        Tensor::attempt(|| {
            let all: Vec<isize> = (0..self.ndim()? as isize).collect();
            Ok(self.logsumexp_axes(&all, false))
        })
    }
    /// `log(sum(exp(x)))` over `axes`, computed stably.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let y = Tensor::zeros(&[2, 3]).logsumexp_axes(&[1], false);
    /// assert_eq!(y.shape().unwrap(), &[2]);
    /// assert!(y.to_vec::<f64>().unwrap().iter().all(|v| (v - 3f64.ln()).abs() < 1e-12));
    /// ```
    #[track_caller]
    pub fn logsumexp_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?;
            let resolved = axes_index("logsumexp", axes, shape.len())?;
            let shift = self.max_axes(axes, true).stop_gradient();
            let lse = (self - &shift).exp().sum_axes(axes, true).log() + shift;
            if keepdims {
                return Ok(lse);
            }
            let kept: Vec<usize> = (0..shape.len())
                .filter(|i| !resolved.contains(i))
                .map(|i| shape[i])
                .collect();
            Ok(lse.reshape_exact(&kept))
        })
    }
    /// `exp(x) / sum(exp(x))` along `axis`, computed stably.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let p = Tensor::from([1.0, 2.0, 3.0]).softmax(0).to_vec::<f64>().unwrap();
    /// assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p[0] < p[1] && p[1] < p[2]);
    /// ```
    #[track_caller]
    pub fn softmax(&self, axis: isize) -> Tensor {
        let shifted = self - self.max_axes(&[axis], true).stop_gradient();
        let e = shifted.exp();
        &e / e.sum_axes(&[axis], true)
    }

    /// `log(softmax(x))` along `axis`, computed stably as `x - logsumexp(x)`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([1.0, 2.0, 1000.0]);
    /// let log_p = x.log_softmax(0).to_vec::<f64>().unwrap(); // no overflow
    /// assert!(log_p[2].abs() < 1e-12 && (log_p[0] + 999.0).abs() < 1e-9);
    /// ```
    #[track_caller]
    pub fn log_softmax(&self, axis: isize) -> Tensor {
        self - self.logsumexp_axes(&[axis], true)
    }

    /// The tensor itself when floating-point or complex, else cast to `f64`.
    pub(crate) fn cast_float(&self) -> Tensor {
        match self.dtype() {
            Ok(dtype) if !dtype.is_inexact() => self.cast(DType::F64),
            _ => self.clone(),
        }
    }

    /// Matrix product with NumPy's `matmul` rules: 1-d operands are vectors, leading axes of
    /// higher-rank operands are batch axes and broadcast.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let a = Tensor::from([[1.0, 2.0], [3.0, 4.0]]);
    /// let v = Tensor::from([1.0, 1.0]);
    /// assert_eq!(a.matmul(&v).to_vec::<f64>().unwrap(), vec![3.0, 7.0]);
    /// ```
    #[track_caller]
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        Tensor::attempt(|| {
            let (a, b) = (self.cast_float(), other.cast_float());
            let dtype = a.dtype()?.promote(b.dtype()?);
            let (a, b) = (a.cast(dtype), b.cast(dtype));
            let (sa, sb) = (a.shape()?, b.shape()?);
            let (ra, rb) = (sa.len(), sb.len());
            if ra == 0 || rb == 0 {
                return Err(Error::mismatch("matmul", sa, sb));
            }
            // Vectors stand as a row (on the left) or a column (on the right).
            let a2 = if ra == 1 {
                a.reshape_exact(&[1, sa[0]])
            } else {
                a.clone()
            };
            let b2 = if rb == 1 {
                b.reshape_exact(&[sb[0], 1])
            } else {
                b.clone()
            };
            let out = Tensor::apply(MatMul, &[&a2, &b2]);
            if ra > 1 && rb > 1 {
                return Ok(out);
            }
            // Drop the axes that stood in for vectors.
            let mut shape = out.shape()?.to_vec();
            let r = shape.len();
            if rb == 1 && r >= 1 {
                shape.remove(r - 1);
            }
            if ra == 1 && r >= 2 {
                shape.remove(r - 2);
            }
            Ok(out.reshape_exact(&shape))
        })
    }
    /// Dot product of vectors, or matrix product (as [`Tensor::matmul`]).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let d = Tensor::from([1.0, 2.0, 3.0]).dot(&Tensor::from([4.0, 5.0, 6.0]));
    /// assert_eq!(d.item().unwrap(), 32.0);
    /// ```
    #[track_caller]
    pub fn dot(&self, other: &Tensor) -> Tensor {
        self.matmul(other)
    }

    /// `n` evenly spaced `f64` values from `start` to `stop` inclusive.
    ///
    /// ```
    /// let x = brainstate::Tensor::linspace(-1.0, 1.0, 5);
    /// assert_eq!(x.to_vec::<f64>().unwrap(), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
    /// ```
    pub fn linspace(start: f64, stop: f64, n: usize) -> Tensor {
        let aval = Aval::new(&[n], DType::F64);
        if let Err(e) = crate::memory::check_results("linspace", &[aval]) {
            return Tensor::failed(e);
        }
        let step = if n > 1 {
            (stop - start) / (n - 1) as f64
        } else {
            0.0
        };
        let values: Vec<f64> = (0..n)
            .map(|i| {
                if i + 1 == n && n > 1 {
                    stop
                } else {
                    start + step * i as f64
                }
            })
            .collect();
        Tensor::from(values)
    }

    /// `start, start + step, ...` below `stop` (Python's `arange`), as `f64`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::arange(0.0, 1.0, 0.25);
    /// assert_eq!(x.to_vec::<f64>().unwrap(), vec![0.0, 0.25, 0.5, 0.75]);
    /// ```
    pub fn arange(start: f64, stop: f64, step: f64) -> Tensor {
        if step == 0.0 || !step.is_finite() {
            return Tensor::failed(Error::shape(
                "arange",
                format!("step must be finite and non-zero, got {step}"),
            ));
        }
        if !start.is_finite() || !stop.is_finite() {
            return Tensor::failed(Error::shape(
                "arange",
                format!("start and stop must be finite, got {start} and {stop}"),
            ));
        }
        let count = ((stop - start) / step).ceil().max(0.0);
        // `as` would saturate a count too large for usize (start, stop and step are finite, so
        // the count is not NaN).
        if count >= usize::MAX as f64 {
            return Tensor::failed(Error::shape(
                "arange",
                format!("{start} to {stop} by {step} has too many elements ({count})"),
            ));
        }
        let n = count as usize;
        if let Err(e) = crate::memory::check_results("arange", &[Aval::new(&[n], DType::F64)]) {
            return Tensor::failed(e);
        }
        Tensor::from(
            (0..n)
                .map(|i| start + step * i as f64)
                .collect::<Vec<f64>>(),
        )
    }

    /// An `f64` tensor of `shape` filled with `value`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::full(&[2], 7.0).to_vec::<f64>().unwrap(), vec![7.0, 7.0]);
    /// ```
    pub fn full(shape: &[usize], value: f64) -> Tensor {
        Tensor::scalar(value).broadcast_to(shape)
    }

    /// Zeros of `shape` (`f64`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let z = Tensor::zeros(&[2, 3]);
    /// assert_eq!((z.shape().unwrap(), z.sum().item().unwrap()), (&[2, 3][..], 0.0));
    /// ```
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// Ones of `shape` (`f64`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::ones(&[3]).sum().item().unwrap(), 3.0);
    /// ```
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// The `n x n` identity matrix (`f64`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::eye(2).to_vec::<f64>().unwrap(), vec![1.0, 0.0, 0.0, 1.0]);
    /// ```
    pub fn eye(n: usize) -> Tensor {
        Tensor::apply(
            Creation::Eye {
                rows: n,
                cols: n,
                offset: 0,
                dtype: DType::F64,
            },
            &[],
        )
    }

    /// Zeros with this tensor's shape, dtype and unit.
    ///
    /// ```
    /// use brainstate::{DType, Tensor};
    /// let z = Tensor::from([1_i64, 2]).zeros_like();
    /// assert_eq!((z.dtype().unwrap(), z.to_vec::<i64>().unwrap()), (DType::I64, vec![0, 0]));
    /// assert!((Tensor::zeros(&[2]) + Tensor::zeros(&[3])).zeros_like().error().is_some());
    /// ```
    #[track_caller]
    pub fn zeros_like(&self) -> Tensor {
        Tensor::attempt(|| {
            let zeros = Tensor::scalar_of(0.0, self.dtype()?).broadcast_to(self.shape()?);
            Ok(zeros.with_unit(self.unit()))
        })
    }
}

/// `on_true` where `cond` is true, else `on_false`, elementwise with broadcasting.
///
/// ```
/// use brainstate::{where_, Tensor};
/// let x = Tensor::from([-1.0, 2.0]);
/// let y = where_(&x.gt(0.0), &x, &Tensor::scalar(0.0));
/// assert_eq!(y.to_vec::<f64>().unwrap(), vec![0.0, 2.0]);
/// ```
#[track_caller]
pub fn where_(cond: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Tensor {
    cond.select(on_true, on_false)
}

// Arithmetic operators for every pairing of `Tensor`, `&Tensor` and Rust scalars.
macro_rules! binary_operator {
    ($trait:ident, $method:ident, $op:expr) => {
        impl<R: Operand> $trait<R> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: R) -> Tensor {
                self.binary($op, &rhs.to_tensor(self))
            }
        }
        impl<R: Operand> $trait<R> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: R) -> Tensor {
                (&self).binary($op, &rhs.to_tensor(&self))
            }
        }
        binary_operator!(@scalar $trait, $method, $op, f64, i64);
    };
    (@scalar $trait:ident, $method:ident, $op:expr, $($t:ty),*) => {$(
        impl $trait<&Tensor> for $t {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: &Tensor) -> Tensor {
                self.to_tensor(rhs).binary($op, rhs)
            }
        }
        impl $trait<Tensor> for $t {
            type Output = Tensor;
            #[track_caller]
            fn $method(self, rhs: Tensor) -> Tensor {
                self.to_tensor(&rhs).binary($op, &rhs)
            }
        }
    )*};
}
binary_operator!(Add, add, BinaryOp::Add);
binary_operator!(Sub, sub, BinaryOp::Sub);
binary_operator!(Mul, mul, BinaryOp::Mul);
binary_operator!(Div, div, BinaryOp::Div);

impl Mul<Unit> for Tensor {
    type Output = Tensor;
    /// Attaches a unit (or multiplies an existing one).
    fn mul(self, unit: Unit) -> Tensor {
        &self * unit
    }
}

impl Mul<Unit> for &Tensor {
    type Output = Tensor;
    fn mul(self, unit: Unit) -> Tensor {
        match self.unit().map_or(Ok(unit), |u| u.checked_mul(&unit)) {
            Ok(unit) => self.with_unit(Some(unit)),
            Err(e) => Tensor::failed(e),
        }
    }
}

impl Div<Unit> for Tensor {
    type Output = Tensor;
    /// Divides the unit (`x / ms` counts `x` per millisecond).
    fn div(self, unit: Unit) -> Tensor {
        &self / unit
    }
}

impl Div<Unit> for &Tensor {
    type Output = Tensor;
    fn div(self, unit: Unit) -> Tensor {
        match unit.checked_powi(-1) {
            Ok(inverse) => self * inverse,
            Err(e) => Tensor::failed(e),
        }
    }
}

impl Mul<Unit> for f64 {
    type Output = Tensor;
    /// A scalar quantity: `-65.0 * mV`.
    fn mul(self, unit: Unit) -> Tensor {
        Tensor::scalar(self) * unit
    }
}

impl Div<Unit> for f64 {
    type Output = Tensor;
    /// A scalar quantity in the inverse unit: `1.0 / ms`.
    fn div(self, unit: Unit) -> Tensor {
        Tensor::scalar(self) / unit
    }
}

impl Neg for &Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        Tensor::apply(UnaryOp::Neg, &[self])
    }
}

impl Neg for Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        -&self
    }
}
