//! Conversions of tensors to and from other crates' arrays: `ndarray` arrays of a static rank
//! always; with the features of the same names, `nalgebra` and `faer` matrices and NumPy's
//! `.npy`/`.npz` files. A conversion to a matrix or vector of a tensor of another rank is an
//! error naming its shape.

#[cfg(feature = "faer")]
mod faer;
#[cfg(feature = "nalgebra")]
mod nalgebra;
#[cfg(feature = "npy")]
mod npy;

use ndarray::{Array1, Array2, Ix1, Ix2};

use crate::error::{Error, Result};
use crate::storage::Element;
use crate::tensor::Tensor;

impl Tensor {
    /// The values as a 1-d `ndarray` array, cast to `T`; an error for another rank.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let v = Tensor::from([1.0, 2.0]).to_ndarray1::<f64>().unwrap();
    /// assert_eq!(v, ndarray::array![1.0, 2.0]);
    /// let err = Tensor::zeros(&[2, 2]).to_ndarray1::<f64>().unwrap_err();
    /// assert_eq!(err.to_string(), "to_ndarray1: needs a 1-d tensor, got shape [2, 2]");
    /// ```
    pub fn to_ndarray1<T: Element>(&self) -> Result<Array1<T>> {
        self.expect_rank("to_ndarray1", 1)?;
        Ok(self
            .to_ndarray::<T>()?
            .into_dimensionality::<Ix1>()
            .expect("rank 1"))
    }

    /// The values as a 2-d `ndarray` array, cast to `T`; an error for another rank.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.powi(3).sum()).call(&Tensor::from([1.0, 2.0])).unwrap();
    /// let m = h.flat_matrix().unwrap().to_ndarray2::<f64>().unwrap();
    /// assert_eq!(m, ndarray::array![[6.0, 0.0], [0.0, 12.0]]);
    /// ```
    pub fn to_ndarray2<T: Element>(&self) -> Result<Array2<T>> {
        self.expect_rank("to_ndarray2", 2)?;
        Ok(self
            .to_ndarray::<T>()?
            .into_dimensionality::<Ix2>()
            .expect("rank 2"))
    }

    /// The shape, if it has `rank` dimensions; else an error naming `op` and the shape.
    pub(crate) fn expect_rank(&self, op: &str, rank: usize) -> Result<&[usize]> {
        let shape = self.shape()?;
        if shape.len() == rank {
            Ok(shape)
        } else {
            Err(Error::shape(
                op,
                format!("needs a {rank}-d tensor, got shape {shape:?}"),
            ))
        }
    }
}
