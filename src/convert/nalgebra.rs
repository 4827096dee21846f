//! `nalgebra` matrices and vectors (feature `nalgebra`).

use nalgebra::{DMatrix, DVector, Scalar};

use crate::error::Result;
use crate::storage::Element;
use crate::tensor::Tensor;

impl Tensor {
    /// The values of a 2-d tensor as an `nalgebra` matrix, cast to `T`; an error naming the
    /// shape for another rank.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let f = |x: &Tensor| (x.powi(2) * Tensor::from([1.0, 3.0])).sum();
    /// let h = hessian(f).call(&Tensor::from([0.5, 0.5])).unwrap().flat_matrix().unwrap();
    /// let eigen = h.to_dmatrix::<f64>().unwrap().symmetric_eigen();
    /// let mut values: Vec<f64> = eigen.eigenvalues.iter().copied().collect();
    /// values.sort_by(f64::total_cmp);
    /// assert_eq!(values, vec![2.0, 6.0]);
    /// let err = Tensor::zeros(&[2, 2, 2]).to_dmatrix::<f64>().unwrap_err();
    /// assert_eq!(err.to_string(), "to_dmatrix: needs a 2-d tensor, got shape [2, 2, 2]");
    /// ```
    pub fn to_dmatrix<T: Element + Scalar>(&self) -> Result<DMatrix<T>> {
        let (rows, cols) = match self.expect_rank("to_dmatrix", 2)? {
            &[rows, cols] => (rows, cols),
            _ => unreachable!("rank 2"),
        };
        Ok(DMatrix::from_row_iterator(rows, cols, self.to_vec::<T>()?))
    }

    /// The values of a 1-d tensor as an `nalgebra` vector, cast to `T`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let v = Tensor::from([1.0, 2.0]).to_dvector::<f64>().unwrap();
    /// assert_eq!(v, nalgebra::dvector![1.0, 2.0]);
    /// assert!(Tensor::scalar(1.0).to_dvector::<f64>().is_err());
    /// ```
    pub fn to_dvector<T: Element + Scalar>(&self) -> Result<DVector<T>> {
        self.expect_rank("to_dvector", 1)?;
        Ok(DVector::from_vec(self.to_vec::<T>()?))
    }

    /// A 2-d tensor with the values of an `nalgebra` matrix.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let m = nalgebra::dmatrix![1.0, 2.0; 3.0, 4.0];
    /// let t = Tensor::from_dmatrix(&m);
    /// assert_eq!(t.to_vec::<f64>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    /// assert_eq!(t.to_dmatrix::<f64>().unwrap(), m);
    /// ```
    pub fn from_dmatrix<T: Element + Scalar>(matrix: &DMatrix<T>) -> Tensor {
        let (rows, cols) = matrix.shape();
        let values: Vec<T> = (0..rows)
            .flat_map(|i| (0..cols).map(move |j| matrix[(i, j)]))
            .collect();
        Tensor::from_vec(values, &[rows, cols]).expect("rows * cols values")
    }

    /// A 1-d tensor with the values of an `nalgebra` vector.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let t = Tensor::from_dvector(&nalgebra::dvector![1.0, 2.0, 3.0]);
    /// assert_eq!(t.shape().unwrap(), [3]);
    /// ```
    pub fn from_dvector<T: Element + Scalar>(vector: &DVector<T>) -> Tensor {
        Tensor::from(vector.iter().copied().collect::<Vec<T>>())
    }
}
