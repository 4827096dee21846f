//! Shape operations: reshaping, broadcasting, permuting, slicing, indexing, joining; and the
//! axis helpers every user-level operation shares.

use std::ops::{Bound, RangeBounds};

use super::Tensor;
use crate::error::{Error, Result};
use crate::primitives::Structural;

/// Resolves a possibly negative axis.
pub(super) fn axis_index(op: &str, axis: isize, ndim: usize) -> Result<usize> {
    let resolved = if axis < 0 { axis + ndim as isize } else { axis };
    if (0..ndim as isize).contains(&resolved) {
        Ok(resolved as usize)
    } else {
        Err(Error::shape(
            op,
            format!("axis {axis} is out of range for {ndim} dimensions"),
        ))
    }
}

/// Resolves a list of possibly negative axes to a sorted, distinct list.
pub(super) fn axes_index(op: &str, axes: &[isize], ndim: usize) -> Result<Vec<usize>> {
    let mut out = axes
        .iter()
        .map(|&a| axis_index(op, a, ndim))
        .collect::<Result<Vec<_>>>()?;
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::shape(op, format!("repeated axis in {axes:?}")));
    }
    Ok(out)
}

/// A range of indices along one axis, as Python slices take them: negative bounds count from
/// the end, and bounds past the ends are clamped. Implemented for Rust ranges of `isize`
/// (`1..`, `..-1`, `2..5`, `..`).
///
/// ```
/// use brainstate::Tensor;
/// let x = Tensor::from([0.0, 1.0, 2.0, 3.0]);
/// assert_eq!(x.slice_along(0, -2.., 1).to_vec::<f64>().unwrap(), vec![2.0, 3.0]);
/// assert_eq!(x.slice_along(0, 1..=2, 1).to_vec::<f64>().unwrap(), vec![1.0, 2.0]);
/// ```
pub trait AxisRange {
    /// `(start, stop)` within `0..=len`.
    ///
    /// ```
    /// use brainstate::AxisRange;
    /// assert_eq!((1..-1).resolve(5), (1, 4));
    /// assert_eq!((-2..).resolve(5), (3, 5));
    /// assert_eq!((2..100).resolve(5), (2, 5)); // clamped, as in Python
    /// ```
    fn resolve(&self, len: usize) -> (usize, usize);
}

impl<R: RangeBounds<isize>> AxisRange for R {
    fn resolve(&self, len: usize) -> (usize, usize) {
        let n = len as isize;
        let clamp = |i: isize| (if i < 0 { i + n } else { i }).clamp(0, n) as usize;
        let start = match self.start_bound() {
            Bound::Included(&i) => clamp(i),
            Bound::Excluded(&i) => clamp(i + 1),
            Bound::Unbounded => 0,
        };
        let stop = match self.end_bound() {
            Bound::Included(&i) => clamp(if i == -1 { n } else { i + 1 }),
            Bound::Excluded(&i) => clamp(i),
            Bound::Unbounded => len,
        };
        (start, stop.max(start))
    }
}

impl Tensor {
    /// The same elements in another shape; one entry may be `-1`, inferred from the rest.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::arange(0.0, 6.0, 1.0).reshape(&[2, -1]);
    /// assert_eq!(x.shape().unwrap(), [2, 3]);
    /// assert!(Tensor::zeros(&[5]).reshape(&[2, -1]).error().is_some());
    /// ```
    #[track_caller]
    pub fn reshape(&self, shape: &[isize]) -> Tensor {
        Tensor::attempt(|| {
            let numel = self.numel()?;
            let known: usize = shape
                .iter()
                .filter(|&&d| d >= 0)
                .map(|&d| d as usize)
                .product();
            let inferred = shape.iter().filter(|&&d| d < 0).count();
            let resolved: Vec<usize> = match inferred {
                0 => shape.iter().map(|&d| d as usize).collect(),
                1 if shape.iter().all(|&d| d >= -1) && known > 0 && numel % known == 0 => shape
                    .iter()
                    .map(|&d| if d < 0 { numel / known } else { d as usize })
                    .collect(),
                _ => {
                    return Err(Error::shape(
                        "reshape",
                        format!("cannot reshape {:?} into {shape:?}", self.shape()?),
                    ));
                }
            };
            Ok(self.reshape_exact(&resolved))
        })
    }

    #[track_caller]
    pub(crate) fn reshape_exact(&self, shape: &[usize]) -> Tensor {
        if self.shape().is_ok_and(|own| own == shape) {
            return self.clone();
        }
        Tensor::apply(Structural::Reshape(shape.to_vec()), &[self])
    }

    /// Broadcasts to `shape` with NumPy's rules.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([1.0, 2.0]).broadcast_to(&[2, 2]);
    /// assert_eq!(x.to_vec::<f64>().unwrap(), vec![1.0, 2.0, 1.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn broadcast_to(&self, shape: &[usize]) -> Tensor {
        if self.shape().is_ok_and(|own| own == shape) {
            return self.clone();
        }
        Tensor::apply(Structural::Broadcast(shape.to_vec()), &[self])
    }

    /// Reverses the order of the axes (NumPy's `.T`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let t = Tensor::from([[1.0, 2.0], [3.0, 4.0]]).transpose();
    /// assert_eq!(t.to_vec::<f64>().unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn transpose(&self) -> Tensor {
        Tensor::attempt(|| {
            let perm: Vec<usize> = (0..self.ndim()?).rev().collect();
            Ok(self.permute(&perm))
        })
    }

    /// Reorders the axes: axis `i` of the result is axis `perm[i]` of this tensor.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::zeros(&[2, 3, 4]).permute(&[2, 0, 1]).shape().unwrap(), [4, 2, 3]);
    /// ```
    #[track_caller]
    pub fn permute(&self, perm: &[usize]) -> Tensor {
        Tensor::apply(Structural::Transpose(perm.to_vec()), &[self])
    }

    /// Inserts an axis of size 1 at `axis`.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([1.0, 2.0]);
    /// assert_eq!(x.expand_dims(0).shape().unwrap(), [1, 2]);
    /// assert_eq!(x.expand_dims(-1).shape().unwrap(), [2, 1]);
    /// ```
    #[track_caller]
    pub fn expand_dims(&self, axis: isize) -> Tensor {
        Tensor::attempt(|| {
            let mut shape = self.shape()?.to_vec();
            shape.insert(axis_index("expand_dims", axis, shape.len() + 1)?, 1);
            Ok(self.reshape_exact(&shape))
        })
    }

    /// Elements `range` along `axis`, every `step`-th one (Python's `x[..., a:b:step, ...]`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([0.0, 1.0, 2.0, 3.0, 4.0]);
    /// assert_eq!(x.slice_along(0, 1..-1, 1).to_vec::<f64>().unwrap(), vec![1.0, 2.0, 3.0]);
    /// assert_eq!(x.slice_along(0, .., 2).to_vec::<f64>().unwrap(), vec![0.0, 2.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn slice_along(&self, axis: isize, range: impl AxisRange, step: usize) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?;
            let axis = axis_index("slice", axis, shape.len())?;
            if step == 0 {
                return Err(Error::shape("slice", "step must be at least 1"));
            }
            let (lo, hi) = range.resolve(shape[axis]);
            let mut start = vec![0; shape.len()];
            let mut stop = shape.to_vec();
            let mut steps = vec![1; shape.len()];
            start[axis] = lo;
            stop[axis] = hi;
            steps[axis] = step;
            let slice = Structural::Slice {
                start,
                stop,
                step: steps,
            };
            Ok(Tensor::apply(slice, &[self]))
        })
    }

    /// The sub-tensor at `index` along `axis`, which is removed (Python's `x[..., i, ...]`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0], [3.0, 4.0]]);
    /// assert_eq!(x.index(0, -1).to_vec::<f64>().unwrap(), vec![3.0, 4.0]);
    /// assert_eq!(x.index(1, 0).to_vec::<f64>().unwrap(), vec![1.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn index(&self, axis: isize, index: isize) -> Tensor {
        Tensor::attempt(|| {
            let mut shape = self.shape()?.to_vec();
            let axis = axis_index("index", axis, shape.len())?;
            let len = shape[axis] as isize;
            let i = if index < 0 { index + len } else { index };
            if !(0..len).contains(&i) {
                return Err(Error::shape(
                    "index",
                    format!("index {index} is out of range for axis {axis} of shape {shape:?}"),
                ));
            }
            shape.remove(axis);
            Ok(self
                .slice_along(axis as isize, i..i + 1, 1)
                .reshape_exact(&shape))
        })
    }
}

/// Joins tensors along an existing axis.
///
/// ```
/// use brainstate::{concatenate, Tensor};
/// let x = concatenate(&[Tensor::from([1.0]), Tensor::from([2.0, 3.0])], 0);
/// assert_eq!(x.shape().unwrap(), [3]);
/// ```
#[track_caller]
pub fn concatenate(tensors: &[Tensor], axis: isize) -> Tensor {
    Tensor::attempt(|| {
        let first = tensors
            .first()
            .ok_or_else(|| Error::shape("concatenate", "needs at least one tensor"))?;
        let mut dtype = first.dtype()?;
        for t in tensors {
            dtype = dtype.promote(t.dtype()?);
        }
        let axis = axis_index("concatenate", axis, first.ndim()?)?;
        let cast: Vec<Tensor> = tensors.iter().map(|t| t.cast(dtype)).collect();
        let refs: Vec<&Tensor> = cast.iter().collect();
        Ok(Tensor::apply(Structural::Concat(axis), &refs))
    })
}

/// Joins tensors of one shape along a new axis.
///
/// ```
/// use brainstate::{stack, Tensor};
/// let x = stack(&[Tensor::from([1.0, 2.0]), Tensor::from([3.0, 4.0])], 0);
/// assert_eq!(x.shape().unwrap(), [2, 2]);
/// ```
#[track_caller]
pub fn stack(tensors: &[Tensor], axis: isize) -> Tensor {
    let expanded: Vec<Tensor> = tensors.iter().map(|t| t.expand_dims(axis)).collect();
    concatenate(&expanded, axis)
}
