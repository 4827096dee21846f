//! `faer` matrices and columns (feature `faer`).

use faer::{Col, ColRef, Mat, MatRef};

use crate::error::Result;
use crate::storage::Element;
use crate::tensor::Tensor;

impl Tensor {
    /// The values of a 2-d tensor as a `faer` matrix, cast to `T`; an error naming the shape
    /// for another rank.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let f = |x: &Tensor| (x.powi(2) * Tensor::from([1.0, 3.0])).sum();
    /// let h = hessian(f).call(&Tensor::from([0.5, 0.5])).unwrap().flat_matrix().unwrap();
    /// let m = h.to_faer::<f64>().unwrap();
    /// let values = m.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    /// assert_eq!(values, vec![2.0, 6.0]);
    /// let err = Tensor::zeros(&[4]).to_faer::<f64>().unwrap_err();
    /// assert_eq!(err.to_string(), "to_faer: needs a 2-d tensor, got shape [4]");
    /// ```
    pub fn to_faer<T: Element>(&self) -> Result<Mat<T>> {
        let cols = self.expect_rank("to_faer", 2)?[1];
        let rows = self.shape()?[0];
        let values = self.to_vec::<T>()?;
        Ok(Mat::from_fn(rows, cols, |i, j| values[i * cols + j]))
    }

    /// The values of a 1-d tensor as a `faer` column, cast to `T`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let c = Tensor::from([1.0, 2.0]).to_faer_col::<f64>().unwrap();
    /// assert_eq!((c.nrows(), c[1]), (2, 2.0));
    /// assert!(Tensor::zeros(&[1, 2]).to_faer_col::<f64>().is_err());
    /// ```
    pub fn to_faer_col<T: Element>(&self) -> Result<Col<T>> {
        let n = self.expect_rank("to_faer_col", 1)?[0];
        let values = self.to_vec::<T>()?;
        Ok(Col::from_fn(n, |i| values[i]))
    }

    /// A 2-d tensor with the values of a `faer` matrix (or a view of one).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let m = faer::mat![[1.0, 2.0], [3.0, 4.0]];
    /// let t = Tensor::from_faer(m.as_ref());
    /// assert_eq!(t.to_vec::<f64>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    /// ```
    pub fn from_faer<T: Element>(matrix: MatRef<'_, T>) -> Tensor {
        let (rows, cols) = (matrix.nrows(), matrix.ncols());
        let values: Vec<T> = (0..rows)
            .flat_map(|i| (0..cols).map(move |j| matrix[(i, j)]))
            .collect();
        Tensor::from_vec(values, &[rows, cols]).expect("rows * cols values")
    }

    /// A 1-d tensor with the values of a `faer` column (or a view of one).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let c = faer::col![1.0, 2.0, 3.0];
    /// assert_eq!(Tensor::from_faer_col(c.as_ref()).shape().unwrap(), [3]);
    /// ```
    pub fn from_faer_col<T: Element>(column: ColRef<'_, T>) -> Tensor {
        Tensor::from((0..column.nrows()).map(|i| column[i]).collect::<Vec<T>>())
    }
}
