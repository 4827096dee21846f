//! Cumulative sums and products along an axis.
//!
//! Both are Hillis-Steele scans: at step `d = 1, 2, 4, ...` each element is combined with the
//! one `d` places before it, so `n` elements take `ceil(log2 n)` steps of slices, pads and
//! elementwise operations. Being compositions of primitives, they need no derivative rules of
//! their own, and the products' derivatives are exact even where elements are zero.

use super::shape::axis_index;
use super::{Tensor, concatenate};
use crate::error::Error;
use crate::storage::DType;
use crate::unit::Unit;

impl Tensor {
    /// Cumulative sum along `axis`: `out[i] = x[0] + ... + x[i]` (NumPy's `cumsum`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    /// assert_eq!(x.cumsum(1).to_vec::<f64>().unwrap(), vec![1.0, 3.0, 6.0, 4.0, 9.0, 15.0]);
    /// assert_eq!(x.cumsum(0).to_vec::<f64>().unwrap(), vec![1.0, 2.0, 3.0, 5.0, 7.0, 9.0]);
    /// ```
    #[track_caller]
    pub fn cumsum(&self, axis: isize) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?;
            let axis = axis_index("cumsum", axis, shape.len())?;
            let n = shape[axis];
            let mut y = match self.dtype()? {
                DType::Bool => self.cast(DType::I64),
                _ => self.clone(),
            };
            let mut d = 1;
            while d < n {
                let earlier = y.slice_along(axis as isize, ..(n - d) as isize, 1);
                y = &y + earlier.pad_axis(axis, d, 0);
                d *= 2;
            }
            Ok(y)
        })
    }

    /// Cumulative product along `axis`: `out[i] = x[0] * ... * x[i]` (NumPy's `cumprod`).
    /// A quantity must be dimensionless (each element would have another unit).
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let x = Tensor::from([2.0, 0.0, 3.0]);
    /// assert_eq!(x.cumprod(0).to_vec::<f64>().unwrap(), vec![2.0, 0.0, 0.0]);
    /// // Exact derivatives through the zero: d/dx1 of the sum is x0 + x0 x2 = 8.
    /// let g = grad(|x: &Tensor| x.cumprod(0).sum()).call(&x).unwrap();
    /// assert_eq!(g.tensor().unwrap().to_vec::<f64>().unwrap(), vec![1.0, 8.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn cumprod(&self, axis: isize) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?.to_vec();
            let axis = axis_index("cumprod", axis, shape.len())?;
            let n = shape[axis];
            let mut y = match (self.dtype()?, self.unit()) {
                (DType::Bool, _) => self.cast(DType::I64),
                (_, Some(unit)) if !unit.is_dimensionless() => {
                    return Err(Error::Units {
                        op: "cumprod".into(),
                        msg: format!("needs a dimensionless operand, got {unit}"),
                    });
                }
                (_, Some(_)) => self.value_in(Unit::ONE)?,
                (_, None) => self.clone(),
            };
            let mut d = 1;
            while d < n {
                let mut ones_shape = shape.clone();
                ones_shape[axis] = d;
                let ones = Tensor::scalar_of(1.0, y.dtype()?).broadcast_to(&ones_shape);
                let earlier = y.slice_along(axis as isize, ..(n - d) as isize, 1);
                y = &y * concatenate(&[ones, earlier], axis as isize);
                d *= 2;
            }
            Ok(y)
        })
    }
}
