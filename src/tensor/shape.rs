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
    /// assert_eq!((0..=isize::MAX).resolve(3), (0, 3)); // no bound overflows
    /// ```
    fn resolve(&self, len: usize) -> (usize, usize);
}

impl<R: RangeBounds<isize>> AxisRange for R {
    fn resolve(&self, len: usize) -> (usize, usize) {
        // In i128, where no bound of an isize range can overflow.
        let n = len as i128;
        let from_end = |i: isize| if i < 0 { i as i128 + n } else { i as i128 };
        let clamp = |i: i128| i.clamp(0, n) as usize;
        let start = match self.start_bound() {
            Bound::Included(&i) => clamp(from_end(i)),
            Bound::Excluded(&i) => clamp(from_end(i) + 1),
            Bound::Unbounded => 0,
        };
        let stop = match self.end_bound() {
            Bound::Included(&i) => clamp(from_end(i) + 1),
            Bound::Excluded(&i) => clamp(from_end(i)),
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
            let own = self.shape()?;
            let cannot =
                || Error::shape("reshape", format!("cannot reshape {own:?} into {shape:?}"));
            let Some(known) = shape
                .iter()
                .filter(|&&d| d >= 0)
                .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
            else {
                return Err(cannot());
            };
            let inferred = shape.iter().filter(|&&d| d < 0).count();
            let resolved: Vec<usize> = match inferred {
                0 => shape.iter().map(|&d| d as usize).collect(),
                1 if shape.iter().all(|&d| d >= -1) && known > 0 && numel % known == 0 => shape
                    .iter()
                    .map(|&d| if d < 0 { numel / known } else { d as usize })
                    .collect(),
                _ => return Err(cannot()),
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
        let identity = perm.iter().enumerate().all(|(i, &p)| i == p);
        if identity && self.ndim().is_ok_and(|n| n == perm.len()) {
            return self.clone();
        }
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
    /// assert_eq!(x.slice_along(0, 1.., usize::MAX).to_vec::<f64>().unwrap(), vec![1.0]);
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
            // A step past the range takes its first element, as in Python.
            let step = step.min((hi - lo).max(1));
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

impl Tensor {
    /// Removes every axis of size 1 (NumPy's `squeeze()`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// assert_eq!(Tensor::zeros(&[1, 3, 1]).squeeze().shape().unwrap(), [3]);
    /// assert_eq!(Tensor::zeros(&[1, 1]).squeeze().shape().unwrap(), [] as [usize; 0]);
    /// ```
    #[track_caller]
    pub fn squeeze(&self) -> Tensor {
        Tensor::attempt(|| {
            let kept: Vec<usize> = self.shape()?.iter().copied().filter(|&d| d != 1).collect();
            Ok(self.reshape_exact(&kept))
        })
    }

    /// Removes the given axes, each of which must have size 1.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::zeros(&[1, 3, 1]);
    /// assert_eq!(x.squeeze_axes(&[-1]).shape().unwrap(), [1, 3]);
    /// let err = x.squeeze_axes(&[1]).shape().unwrap_err();
    /// assert_eq!(err.to_string(), "squeeze: axis 1 has size 3 in shape [1, 3, 1], not 1");
    /// ```
    #[track_caller]
    pub fn squeeze_axes(&self, axes: &[isize]) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?;
            let axes = axes_index("squeeze", axes, shape.len())?;
            if let Some(&a) = axes.iter().find(|&&a| shape[a] != 1) {
                return Err(Error::shape(
                    "squeeze",
                    format!("axis {a} has size {} in shape {shape:?}, not 1", shape[a]),
                ));
            }
            let kept: Vec<usize> = (0..shape.len())
                .filter(|i| !axes.contains(i))
                .map(|i| shape[i])
                .collect();
            Ok(self.reshape_exact(&kept))
        })
    }

    /// The elements in reverse order along each of `axes` (NumPy's `flip`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    /// assert_eq!(x.flip(&[-1]).to_vec::<f64>().unwrap(), vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    /// assert_eq!(x.flip(&[0, 1]).to_vec::<f64>().unwrap(), vec![6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
    /// ```
    #[track_caller]
    pub fn flip(&self, axes: &[isize]) -> Tensor {
        Tensor::attempt(|| {
            let axes = axes_index("flip", axes, self.ndim()?)?;
            if axes.is_empty() {
                return Ok(self.clone());
            }
            Ok(Tensor::apply(Structural::Rev(axes), &[self]))
        })
    }

    /// The elements at `indices` along `axis` (NumPy's `take`): the result's shape is this
    /// tensor's with `axis` replaced by the shape of `indices`. The indices are a constant
    /// integer tensor (not a traced one); negative ones count from the end.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    /// let y = x.take(&Tensor::from([2_i64, 0, -1]), 1);
    /// assert_eq!(y.to_vec::<f64>().unwrap(), vec![3.0, 1.0, 3.0, 6.0, 4.0, 6.0]);
    /// let err = x.take(&Tensor::from([3_i64]), 1).shape().unwrap_err();
    /// assert_eq!(err.to_string(), "take: index 3 is out of range for axis 1 of shape [2, 3]");
    /// ```
    #[track_caller]
    pub fn take(&self, indices: &Tensor, axis: isize) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?;
            let axis = axis_index("take", axis, shape.len())?;
            let (indices, index_shape) = constant_indices("take", indices, axis, shape)?;
            let gathered = Tensor::apply(Structural::Gather { axis, indices }, &[self]);
            let out: Vec<usize> = shape[..axis]
                .iter()
                .chain(&index_shape)
                .chain(&shape[axis + 1..])
                .copied()
                .collect();
            Ok(gathered.reshape_exact(&out))
        })
    }

    /// The elements at `indices` along `axis`, index by index (NumPy's `take_along_axis`):
    /// `out[i, j] = x[i, indices[i, j]]` for `axis = 1`. `indices` has this tensor's rank and,
    /// on the other axes, its sizes or 1 (broadcast); it is a constant integer tensor.
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let log_p = Tensor::from([[-0.1, -2.0, -3.0], [-1.5, -0.3, -2.5]]);
    /// let labels = Tensor::from([[0_i64], [1]]);
    /// let picked = log_p.take_along_axis(&labels, 1);
    /// assert_eq!(picked.to_vec::<f64>().unwrap(), vec![-0.1, -0.3]);
    /// ```
    #[track_caller]
    pub fn take_along_axis(&self, indices: &Tensor, axis: isize) -> Tensor {
        Tensor::attempt(|| {
            let op = "take_along_axis";
            let shape = self.shape()?.to_vec();
            let axis = axis_index(op, axis, shape.len())?;
            let index_shape = indices.shape()?.to_vec();
            let fits = index_shape.len() == shape.len()
                && (0..shape.len()).all(|i| i == axis || [1, shape[i]].contains(&index_shape[i]));
            if !fits {
                return Err(Error::mismatch(op, &shape, &index_shape));
            }
            // The other axes first, flattened to rows; `axis` last.
            let mut perm: Vec<usize> = (0..shape.len()).filter(|&i| i != axis).collect();
            perm.push(axis);
            let rows: Vec<usize> = perm[..perm.len() - 1].iter().map(|&i| shape[i]).collect();
            let (n, k) = (shape[axis], index_shape[axis]);
            let (local, _) = constant_indices(op, indices, axis, &shape)?;
            let local = ndarray::ArrayD::from_shape_vec(index_shape.clone(), local)
                .map_err(|e| Error::shape(op, e.to_string()))?
                .permuted_axes(perm.clone());
            let broadcast: Vec<usize> = rows.iter().copied().chain([k]).collect();
            let local = local
                .broadcast(broadcast.as_slice())
                .ok_or_else(|| Error::mismatch(op, &shape, &index_shape))?;
            // Row r, position j reads element r * n + indices[r, j] of the flattened rows.
            let mut flat = Vec::with_capacity(local.len());
            for (r, row) in local.rows().into_iter().enumerate() {
                flat.extend(row.iter().map(|&i| r * n + i));
            }
            let numel: usize = rows.iter().product::<usize>() * n;
            let gathered = Tensor::apply(
                Structural::Gather {
                    axis: 0,
                    indices: flat,
                },
                &[&self.permute(&perm).reshape_exact(&[numel])],
            );
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            Ok(gathered.reshape_exact(&broadcast).permute(&inverse))
        })
    }

    /// Zeros added before (`lo`) and after (`hi`) the elements of `axis`.
    #[track_caller]
    pub(crate) fn pad_axis(&self, axis: usize, lo: usize, hi: usize) -> Tensor {
        Tensor::attempt(|| {
            let ndim = self.ndim()?;
            let (mut los, mut his) = (vec![0; ndim], vec![0; ndim]);
            los[axis] = lo;
            his[axis] = hi;
            let pad = Structural::Pad {
                lo: los,
                hi: his,
                interior: vec![0; ndim],
            };
            Ok(Tensor::apply(pad, &[self]))
        })
    }
}

/// The values of a constant integer index tensor for `axis` of `shape` (negative ones counting
/// from the end), row-major, with the index tensor's shape.
fn constant_indices(
    op: &str,
    indices: &Tensor,
    axis: usize,
    shape: &[usize],
) -> Result<(Vec<usize>, Vec<usize>)> {
    let dtype = indices.dtype()?;
    if dtype != crate::storage::DType::I64 {
        return Err(Error::dtype(op, "needs integer (i64) indices", dtype));
    }
    if indices.is_traced() {
        return Err(Error::Trace(format!(
            "{op}: the indices must be a constant tensor, not one computed from traced values"
        )));
    }
    let len = shape[axis] as i64;
    let values = indices
        .to_vec::<i64>()?
        .into_iter()
        .map(|i| {
            let resolved = if i < 0 { i + len } else { i };
            if (0..len).contains(&resolved) {
                Ok(resolved as usize)
            } else {
                Err(Error::shape(
                    op,
                    format!("index {i} is out of range for axis {axis} of shape {shape:?}"),
                ))
            }
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok((values, indices.shape()?.to_vec()))
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
