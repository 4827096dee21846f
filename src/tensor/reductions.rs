//! Reductions built from the primitive ones: products, variances, standard deviations and
//! norms.
//!
//! A product is a tree of pairwise multiplications (`x0 x1`, `x2 x3`, ..., then the products of
//! those), as JAX's `reduce_prod` differentiates: every derivative is a product of the other
//! factors, exact even where some factors are zero (a quotient `prod / x` would divide by
//! zero), in `log2(n)` levels.

use super::Tensor;
use super::shape::axes_index;
use crate::error::{Error, Result};
use crate::storage::DType;

impl Tensor {
    /// Product of all elements.
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let x = Tensor::from([2.0, 0.0, 3.0]);
    /// assert_eq!(x.prod().item().unwrap(), 0.0);
    /// // Exact derivatives at a zero factor: d/dx1 = x0 x2 = 6.
    /// let g = grad(|x: &Tensor| x.prod()).call(&x).unwrap();
    /// assert_eq!(g.tensor().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 6.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn prod(&self) -> Tensor {
        Tensor::attempt(|| {
            let all: Vec<isize> = (0..self.ndim()? as isize).collect();
            Ok(self.prod_axes(&all, false))
        })
    }

    /// Product over `axes`, keeping them as size 1 if `keepdims`. A quantity in unit `u`
    /// gives `u^n` for `n` factors.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    /// assert_eq!(x.prod_axes(&[1], false).to_vec::<f64>().unwrap(), vec![6.0, 120.0]);
    /// assert_eq!(x.prod_axes(&[0], true).shape().unwrap(), [1, 3]);
    /// ```
    #[track_caller]
    pub fn prod_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?.to_vec();
            let axes = axes_index("prod", axes, shape.len())?;
            let kept: Vec<usize> = (0..shape.len()).filter(|i| !axes.contains(i)).collect();
            let n: usize = axes.iter().map(|&a| shape[a]).product();
            let x = match self.dtype()? {
                DType::Bool => self.cast(DType::I64),
                _ => self.mantissa(),
            };
            // The reduced axes last, as one axis of length n.
            let perm: Vec<usize> = kept.iter().chain(&axes).copied().collect();
            let rows: Vec<usize> = kept.iter().map(|&i| shape[i]).collect();
            let lined_up = x
                .permute(&perm)
                .reshape_exact(&[rows.as_slice(), &[n]].concat());
            let out = product_tree(&lined_up)?;
            let out_shape = if keepdims {
                crate::primitives::keepdims_shape(&shape, &axes)
            } else {
                rows
            };
            let power = i32::try_from(n).map_err(|_| Error::Units {
                op: "prod".into(),
                msg: format!("the unit of a product of {n} quantities overflows"),
            });
            let unit = match self.unit() {
                Some(u) => Some(u.checked_powi(power?)?),
                None => None,
            };
            Ok(out.reshape_exact(&out_shape).with_unit(unit))
        })
    }

    /// Variance of all elements, `mean(|x - mean(x)|^2)` (NumPy's `var` with `ddof=0`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([1.0, 2.0, 3.0, 4.0]).var().item().unwrap(), 1.25);
    /// ```
    #[track_caller]
    pub fn var(&self) -> Tensor {
        Tensor::attempt(|| {
            let all: Vec<isize> = (0..self.ndim()? as isize).collect();
            Ok(self.var_axes(&all, false))
        })
    }

    /// Variance over `axes` (with `ddof=0`); the unit is squared.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 3.0], [2.0, 2.0]]);
    /// assert_eq!(x.var_axes(&[1], false).to_vec::<f64>().unwrap(), vec![1.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn var_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        let x = self.cast_float();
        let centered = &x - x.mean_axes(axes, true);
        squared_magnitude(&centered).mean_axes(axes, keepdims)
    }

    /// Standard deviation of all elements, `sqrt(var(x))`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([1.0, 3.0]).std().item().unwrap(), 1.0);
    /// ```
    #[track_caller]
    pub fn std(&self) -> Tensor {
        self.var().sqrt()
    }

    /// Standard deviation over `axes`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 3.0], [2.0, 2.0]]);
    /// assert_eq!(x.std_axes(&[1], true).to_vec::<f64>().unwrap(), vec![1.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn std_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        self.var_axes(axes, keepdims).sqrt()
    }

    /// The Euclidean (Frobenius) norm of all elements, `sqrt(sum(|x|^2))`. Its derivative at
    /// `x = 0` is undefined (NaN), as in JAX.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::from([3.0, -4.0]).norm().item().unwrap(), 5.0);
    /// ```
    #[track_caller]
    pub fn norm(&self) -> Tensor {
        Tensor::attempt(|| {
            let all: Vec<isize> = (0..self.ndim()? as isize).collect();
            Ok(self.norm_axes(&all, false))
        })
    }

    /// The Euclidean norm over `axes`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let rows = Tensor::from([[3.0, 4.0], [0.0, 1.0]]).norm_axes(&[1], false);
    /// assert_eq!(rows.to_vec::<f64>().unwrap(), vec![5.0, 1.0]);
    /// ```
    #[track_caller]
    pub fn norm_axes(&self, axes: &[isize], keepdims: bool) -> Tensor {
        squared_magnitude(&self.cast_float())
            .sum_axes(axes, keepdims)
            .sqrt()
    }
}

/// `|x|^2` elementwise, real for complex `x` and smooth everywhere (unlike `|x|`).
#[track_caller]
fn squared_magnitude(x: &Tensor) -> Tensor {
    Tensor::attempt(|| {
        Ok(if x.dtype()?.is_complex() {
            (x * x.conj()).real()
        } else {
            x.powi(2)
        })
    })
}

/// The product along the last axis, by levels of pairwise products; that axis is removed.
fn product_tree(x: &Tensor) -> Result<Tensor> {
    let shape = x.shape()?.to_vec();
    let (rows, mut n) = (&shape[..shape.len() - 1], shape[shape.len() - 1]);
    if n == 0 {
        return Ok(Tensor::scalar_of(1.0, x.dtype()?).broadcast_to(rows));
    }
    let mut y = x.clone();
    while n > 1 {
        let pairs = (n / 2) as isize;
        let products = y.slice_along(-1, ..2 * pairs, 2) * y.slice_along(-1, 1..2 * pairs, 2);
        y = if n % 2 == 1 {
            // The odd one out waits for the next level.
            super::concatenate(&[products, y.slice_along(-1, -1.., 1)], -1)
        } else {
            products
        };
        n = n.div_ceil(2);
    }
    Ok(y.reshape_exact(rows))
}
