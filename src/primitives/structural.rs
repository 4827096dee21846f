//! Structural primitives: broadcast, reshape, transpose, slice, pad, concatenate, reverse,
//! gather and scatter-add.
//!
//! All are linear, so each JVP applies the same primitive to the tangent (its parameters
//! shifted past the batch axes), and each transpose is another structural primitive: slice and
//! pad transpose to each other, as do gather (`out[.., k, ..] = x[.., indices[k], ..]`) and
//! scatter-add (`out[.., indices[k], ..] += x[.., k, ..]`); reverse is its own transpose.

use std::fmt;

use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, Axis, Ix1, Ix2, Ix3, Ix4, IxDyn, Slice};

use super::sum::scatter_add;
use super::{
    Dependence, Prim, Primal, Rules, Tangent, UnitRule, Units, arity, concat_dims, cotangents, one,
    tuple,
};
use crate::error::{Error, Result};
use crate::storage::{Aval, Data, Slot, pool, with_array};
use crate::tensor::Tensor;
use crate::unit::Unit;

/// The structural primitives: they move, repeat or drop elements without computing with them.
///
/// ```
/// use brainstate::primitives::{Prim, Structural};
/// let p = Prim::from(Structural::Transpose(vec![1, 0]));
/// assert_eq!(p.to_string(), "transpose[perm=(1,0)]");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Structural {
    /// Broadcast to a shape (NumPy rules).
    Broadcast(Vec<usize>),
    /// Same elements, another shape.
    Reshape(Vec<usize>),
    /// Permutation of the axes: output axis `i` is input axis `perm[i]`.
    Transpose(Vec<usize>),
    /// Strided slice: `start..stop` by `step` along every axis.
    Slice {
        /// First index per axis.
        start: Vec<usize>,
        /// One past the last index per axis.
        stop: Vec<usize>,
        /// Stride per axis (at least 1).
        step: Vec<usize>,
    },
    /// Zero padding: `lo` before, `hi` after and `interior` between the elements of each axis.
    Pad {
        /// Zeros before, per axis.
        lo: Vec<usize>,
        /// Zeros after, per axis.
        hi: Vec<usize>,
        /// Zeros between neighbouring elements, per axis.
        interior: Vec<usize>,
    },
    /// Concatenation of all inputs along an axis.
    Concat(usize),
    /// The order of the elements reversed along each of the given axes (sorted, distinct).
    Rev(Vec<usize>),
    /// The elements at constant `indices` along `axis`, in that order (repeats allowed):
    /// `out[.., k, ..] = x[.., indices[k], ..]`.
    Gather {
        /// The axis indexed.
        axis: usize,
        /// Positions along `axis`.
        indices: Vec<usize>,
    },
    /// The transpose of [`Structural::Gather`]: slices along `axis` added into zeros of length
    /// `size` at constant `indices`, `out[.., indices[k], ..] += x[.., k, ..]`.
    ScatterAdd {
        /// The axis indexed.
        axis: usize,
        /// Positions along `axis` of the result, one per slice of the operand.
        indices: Vec<usize>,
        /// Length of `axis` in the result.
        size: usize,
    },
}

/// A list of indices for printing: in full up to 8 entries, else the first ones and the count.
fn index_list(indices: &[usize]) -> String {
    const SHOWN: usize = 8;
    if indices.len() <= SHOWN {
        return tuple(indices);
    }
    let head: Vec<String> = indices[..SHOWN].iter().map(|i| i.to_string()).collect();
    format!("({},...; {} in all)", head.join(","), indices.len())
}

impl fmt::Display for Structural {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Structural::Broadcast(s) | Structural::Reshape(s) => {
                write!(f, "{name}[shape={}]", tuple(s))
            }
            Structural::Transpose(p) => write!(f, "{name}[perm={}]", tuple(p)),
            Structural::Slice { start, stop, step } => write!(
                f,
                "{name}[start={} stop={} step={}]",
                tuple(start),
                tuple(stop),
                tuple(step)
            ),
            Structural::Pad { lo, hi, interior } => write!(
                f,
                "{name}[lo={} hi={} interior={}]",
                tuple(lo),
                tuple(hi),
                tuple(interior)
            ),
            Structural::Concat(axis) => write!(f, "{name}[axis={axis}]"),
            Structural::Rev(axes) => write!(f, "{name}[axes={}]", tuple(axes)),
            Structural::Gather { axis, indices } => {
                write!(f, "{name}[axis={axis} indices={}]", index_list(indices))
            }
            Structural::ScatterAdd {
                axis,
                indices,
                size,
            } => write!(
                f,
                "{name}[axis={axis} indices={} size={size}]",
                index_list(indices)
            ),
        }
    }
}

impl Structural {
    /// This primitive acting on values with leading batch axes of sizes `batch`.
    fn batched(&self, batch: &[usize]) -> Structural {
        let nb = batch.len();
        let pad = |v: &[usize], fill: usize| concat_dims(&vec![fill; nb], v);
        match self {
            Structural::Broadcast(shape) => Structural::Broadcast(concat_dims(batch, shape)),
            Structural::Reshape(shape) => Structural::Reshape(concat_dims(batch, shape)),
            Structural::Transpose(perm) => {
                Structural::Transpose((0..nb).chain(perm.iter().map(|p| p + nb)).collect())
            }
            Structural::Slice { start, stop, step } => Structural::Slice {
                start: pad(start, 0),
                stop: concat_dims(batch, stop),
                step: pad(step, 1),
            },
            Structural::Pad { lo, hi, interior } => Structural::Pad {
                lo: pad(lo, 0),
                hi: pad(hi, 0),
                interior: pad(interior, 0),
            },
            Structural::Concat(axis) => Structural::Concat(axis + nb),
            Structural::Rev(axes) => Structural::Rev(axes.iter().map(|a| a + nb).collect()),
            Structural::Gather { axis, indices } => Structural::Gather {
                axis: axis + nb,
                indices: indices.clone(),
            },
            Structural::ScatterAdd {
                axis,
                indices,
                size,
            } => Structural::ScatterAdd {
                axis: axis + nb,
                indices: indices.clone(),
                size: *size,
            },
        }
    }

    /// Applies the primitive, batched, to `inputs`.
    fn apply_batched(&self, batch: &[usize], inputs: &[&Tensor]) -> Tensor {
        Tensor::apply(self.batched(batch), inputs)
    }
}

impl Rules for Structural {
    fn name(&self) -> &'static str {
        match self {
            Structural::Broadcast(_) => "broadcast",
            Structural::Reshape(_) => "reshape",
            Structural::Transpose(_) => "transpose",
            Structural::Slice { .. } => "slice",
            Structural::Pad { .. } => "pad",
            Structural::Concat(_) => "concatenate",
            Structural::Rev(_) => "rev",
            Structural::Gather { .. } => "gather",
            Structural::ScatterAdd { .. } => "scatter_add",
        }
    }

    fn infer(&self, ins: &[Aval]) -> Result<Vec<Aval>> {
        let op = self.name();
        match self {
            Structural::Concat(_) if ins.is_empty() => {
                return Err(Error::shape(op, "needs at least one operand"));
            }
            Structural::Concat(_) => {}
            Structural::Broadcast(_)
            | Structural::Reshape(_)
            | Structural::Transpose(_)
            | Structural::Slice { .. }
            | Structural::Pad { .. }
            | Structural::Rev(_)
            | Structural::Gather { .. }
            | Structural::ScatterAdd { .. } => arity(op, ins, 1)?,
        }
        let x = &ins[0];
        let rank_check = |n: usize, what: &str| {
            if n == x.shape.len() {
                Ok(())
            } else {
                Err(Error::shape(
                    op,
                    format!(
                        "{what} has {n} entries for an operand of shape {:?}",
                        x.shape
                    ),
                ))
            }
        };
        let shape = match self {
            Structural::Broadcast(shape) => {
                let fits = shape.len() >= x.shape.len()
                    && x.shape
                        .iter()
                        .zip(&shape[shape.len() - x.shape.len()..])
                        .all(|(&d, &s)| d == s || d == 1);
                if !fits {
                    return Err(Error::mismatch("broadcast_to", &x.shape, shape));
                }
                shape.clone()
            }
            Structural::Reshape(shape) => {
                let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if numel != Some(x.numel()) {
                    return Err(Error::mismatch("reshape", &x.shape, shape));
                }
                shape.clone()
            }
            Structural::Transpose(perm) => {
                rank_check(perm.len(), "the permutation")?;
                let mut seen = vec![false; perm.len()];
                for &p in perm {
                    if p >= perm.len() || std::mem::replace(&mut seen[p], true) {
                        return Err(Error::shape(op, format!("{perm:?} is not a permutation")));
                    }
                }
                perm.iter().map(|&p| x.shape[p]).collect()
            }
            Structural::Slice { start, stop, step } => {
                rank_check(start.len(), "start")?;
                rank_check(stop.len(), "stop")?;
                rank_check(step.len(), "step")?;
                let mut shape = Vec::new();
                for (i, &d) in x.shape.iter().enumerate() {
                    if start[i] > stop[i] || stop[i] > d || step[i] == 0 {
                        return Err(Error::shape(
                            op,
                            format!(
                                "range {}..{} step {} is invalid for axis {i} of shape {:?}",
                                start[i], stop[i], step[i], x.shape
                            ),
                        ));
                    }
                    shape.push((stop[i] - start[i]).div_ceil(step[i]));
                }
                shape
            }
            Structural::Pad { lo, hi, interior } => {
                rank_check(lo.len(), "lo")?;
                rank_check(hi.len(), "hi")?;
                rank_check(interior.len(), "interior")?;
                let padded = |i: usize| {
                    x.shape[i]
                        .saturating_sub(1)
                        .checked_mul(interior[i])?
                        .checked_add(x.shape[i])?
                        .checked_add(lo[i])?
                        .checked_add(hi[i])
                };
                (0..x.shape.len())
                    .map(|i| {
                        padded(i).ok_or_else(|| {
                            Error::shape(op, format!("the padded size of axis {i} overflows"))
                        })
                    })
                    .collect::<Result<Vec<usize>>>()?
            }
            Structural::Concat(axis) => {
                let first = ins
                    .first()
                    .ok_or_else(|| Error::shape(op, "needs at least one operand"))?;
                if *axis >= first.shape.len() {
                    return Err(Error::shape(
                        op,
                        format!("axis {axis} out of range for shape {:?}", first.shape),
                    ));
                }
                let mut shape = first.shape.clone();
                for other in &ins[1..] {
                    let fits = other.shape.len() == shape.len()
                        && (0..shape.len()).all(|i| i == *axis || other.shape[i] == shape[i]);
                    if !fits {
                        return Err(Error::mismatch(op, &first.shape, &other.shape));
                    }
                    if other.dtype != first.dtype {
                        return Err(Error::dtype(
                            op,
                            format!("operands must have one dtype, the first is {}", first.dtype),
                            other.dtype,
                        ));
                    }
                    shape[*axis] = shape[*axis]
                        .checked_add(other.shape[*axis])
                        .ok_or_else(|| Error::shape(op, "the joined size overflows"))?;
                }
                shape
            }
            Structural::Rev(axes) => {
                let increasing = axes.windows(2).all(|w| w[0] < w[1]);
                if !increasing || axes.iter().any(|&a| a >= x.shape.len()) {
                    return Err(Error::shape(
                        op,
                        format!(
                            "axes {axes:?} must be distinct, increasing and within shape {:?}",
                            x.shape
                        ),
                    ));
                }
                x.shape.clone()
            }
            Structural::Gather { axis, indices } => {
                let len = axis_len(op, &x.shape, *axis)?;
                check_indices(op, indices, len, *axis, &x.shape)?;
                let mut shape = x.shape.clone();
                shape[*axis] = indices.len();
                shape
            }
            Structural::ScatterAdd {
                axis,
                indices,
                size,
            } => {
                if x.dtype == crate::storage::DType::Bool {
                    return Err(Error::dtype(op, "needs a numeric operand", x.dtype));
                }
                if axis_len(op, &x.shape, *axis)? != indices.len() {
                    return Err(Error::shape(
                        op,
                        format!(
                            "{} indices for axis {axis} of shape {:?}",
                            indices.len(),
                            x.shape
                        ),
                    ));
                }
                let mut shape = x.shape.clone();
                shape[*axis] = *size;
                check_indices(op, indices, *size, *axis, &shape)?;
                shape
            }
        };
        Ok(one(Aval::new(&shape, x.dtype)))
    }

    fn eval(&self, ins: &[&Data]) -> Result<Vec<Data>> {
        let x = ins[0];
        Ok(one(match self {
            Structural::Broadcast(shape) => with_array!(x, a => Data::from(
                owned(a.broadcast(shape.as_slice()).expect("checked by infer"))
            )),
            Structural::Reshape(shape) => with_array!(x, a => Data::from(
                a.as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(IxDyn(shape))
                    .expect("checked by infer")
            )),
            Structural::Transpose(perm) => {
                with_array!(x, a => Data::from(owned(a.view().permuted_axes(IxDyn(perm)))))
            }
            Structural::Slice { start, stop, step } => with_array!(x, a => {
                let mut view = a.view();
                for i in 0..start.len() {
                    view.slice_axis_inplace(
                        Axis(i),
                        // Steps past the axis's length take its first element (and must
                        // not wrap to negative steps).
                        Slice::new(start[i] as isize, Some(stop[i] as isize), step[i].min(isize::MAX as usize) as isize),
                    );
                }
                Data::from(owned(view))
            }),
            Structural::Pad { lo, hi, interior } => with_array!(x, a => {
                let shape: Vec<usize> = (0..a.ndim())
                    .map(|i| lo[i] + hi[i] + a.shape()[i] + a.shape()[i].saturating_sub(1) * interior[i])
                    .collect();
                let mut buffer = pool::take(shape.iter().product());
                buffer.resize(buffer.capacity().min(shape.iter().product()), zero_like(a));
                let mut out = ArrayD::from_shape_vec(shape, buffer).expect("one value per element");
                let mut view = out.view_mut();
                for i in 0..a.ndim() {
                    let end = lo[i] + a.shape()[i] + a.shape()[i].saturating_sub(1) * interior[i];
                    view.slice_axis_inplace(
                        Axis(i),
                        Slice::new(lo[i] as isize, Some(end as isize), interior[i] as isize + 1),
                    );
                }
                view.assign(a);
                Data::from(out)
            }),
            Structural::Concat(axis) => {
                macro_rules! concat {
                    ($variant:ident) => {{
                        let views: Vec<_> = ins
                            .iter()
                            .map(|d| match d {
                                Data::$variant(a) => a.view(),
                                _ => unreachable!("dtypes checked by infer"),
                            })
                            .collect();
                        Data::$variant(
                            ndarray::concatenate(Axis(*axis), &views).expect("checked by infer"),
                        )
                    }};
                }
                match x {
                    Data::Bool(_) => concat!(Bool),
                    Data::I64(_) => concat!(I64),
                    Data::F32(_) => concat!(F32),
                    Data::F64(_) => concat!(F64),
                    Data::C64(_) => concat!(C64),
                    Data::C128(_) => concat!(C128),
                }
            }
            Structural::Rev(axes) => with_array!(x, a => {
                let mut view = a.view();
                for &axis in axes {
                    view.invert_axis(Axis(axis));
                }
                Data::from(owned(view))
            }),
            Structural::Gather { axis, indices } => {
                with_array!(x, a => Data::from(a.select(Axis(*axis), indices)))
            }
            Structural::ScatterAdd {
                axis,
                indices,
                size,
            } => {
                let (axis, size) = (Axis(*axis), *size);
                match x {
                    Data::I64(a) => Data::I64(scatter_add(a, axis, indices, size)),
                    Data::F32(a) => Data::F32(scatter_add(a, axis, indices, size)),
                    Data::F64(a) => Data::F64(scatter_add(a, axis, indices, size)),
                    Data::C64(a) => Data::C64(scatter_add(a, axis, indices, size)),
                    Data::C128(a) => Data::C128(scatter_add(a, axis, indices, size)),
                    Data::Bool(_) => unreachable!("dtype checked by infer"),
                }
            }
        }))
    }

    fn jvp(
        &self,
        x: &[Tensor],
        t: &[Tangent],
        _outs: &[Tensor],
        batch: &[usize],
    ) -> Result<Vec<Tangent>> {
        let tangent = match self {
            // Concatenation needs every piece: zero tangents become explicit zeros.
            Structural::Concat(_) => {
                let pieces: Vec<Tensor> = t.iter().map(Tangent::instantiate).collect();
                let refs: Vec<&Tensor> = pieces.iter().collect();
                self.apply_batched(batch, &refs)
            }
            Structural::Broadcast(shape) => {
                // Line the tangent's own axes up with the target's trailing axes.
                let own = x[0].shape()?;
                let lead = vec![1; shape.len() - own.len()];
                let padded = concat_dims(&concat_dims(batch, &lead), own);
                let t = t[0].instantiate().reshape_exact(&padded);
                self.apply_batched(batch, &[&t])
            }
            Structural::Reshape(_)
            | Structural::Transpose(_)
            | Structural::Slice { .. }
            | Structural::Pad { .. }
            | Structural::Rev(_)
            | Structural::Gather { .. }
            | Structural::ScatterAdd { .. } => self.apply_batched(batch, &[&t[0].instantiate()]),
        };
        Ok(one(Tangent::Value(tangent)))
    }

    fn transpose(&self, cts: &[Tensor], x: &[Primal], batch: &[usize]) -> Result<Vec<Tangent>> {
        let ct = &cts[0];
        let nb = batch.len();
        let own = x[0].aval()?.shape;
        let out = &ct.shape()?[nb..];
        match self {
            // The driver sums the cotangent back over the broadcast axes.
            Structural::Broadcast(_) => cotangents(x, batch, &|_| ct.clone()),
            Structural::Reshape(_) => {
                let shape = concat_dims(batch, &own);
                cotangents(x, batch, &|_| ct.reshape_exact(&shape))
            }
            Structural::Transpose(perm) => {
                let mut inverse = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inverse[p] = i;
                }
                let inverse = Structural::Transpose(inverse);
                cotangents(x, batch, &|_| inverse.apply_batched(batch, &[ct]))
            }
            Structural::Slice { start, step, .. } => {
                let (mut lo, mut hi) = (Vec::new(), Vec::new());
                for i in 0..own.len() {
                    if out[i] == 0 {
                        lo.push(own[i]);
                        hi.push(0);
                    } else {
                        let last = start[i] + (out[i] - 1) * step[i];
                        lo.push(start[i]);
                        hi.push(own[i] - last - 1);
                    }
                }
                let interior = step.iter().map(|s| s - 1).collect();
                let pad = Structural::Pad { lo, hi, interior };
                cotangents(x, batch, &|_| pad.apply_batched(batch, &[ct]))
            }
            Structural::Pad { lo, interior, .. } => {
                let step: Vec<usize> = interior.iter().map(|i| i + 1).collect();
                let stop = (0..own.len())
                    .map(|i| match own[i] {
                        0 => lo[i],
                        n => lo[i] + (n - 1) * step[i] + 1,
                    })
                    .collect();
                let slice = Structural::Slice {
                    start: lo.clone(),
                    stop,
                    step,
                };
                cotangents(x, batch, &|_| slice.apply_batched(batch, &[ct]))
            }
            Structural::Concat(axis) => {
                let shapes = x
                    .iter()
                    .map(|piece| Ok(piece.aval()?.shape))
                    .collect::<Result<Vec<_>>>()?;
                let starts = super::starts(shapes.iter().map(|s| s[*axis]));
                cotangents(x, batch, &|i| {
                    let mut start = vec![0; out.len()];
                    let mut stop = out.to_vec();
                    start[*axis] = starts[i];
                    stop[*axis] = starts[i] + shapes[i][*axis];
                    let step = vec![1; out.len()];
                    Structural::Slice { start, stop, step }.apply_batched(batch, &[ct])
                })
            }
            Structural::Rev(_) => cotangents(x, batch, &|_| self.apply_batched(batch, &[ct])),
            Structural::Gather { axis, indices } => {
                let scatter = Structural::ScatterAdd {
                    axis: *axis,
                    indices: indices.clone(),
                    size: own[*axis],
                };
                cotangents(x, batch, &|_| scatter.apply_batched(batch, &[ct]))
            }
            Structural::ScatterAdd { axis, indices, .. } => {
                let gather = Structural::Gather {
                    axis: *axis,
                    indices: indices.clone(),
                };
                cotangents(x, batch, &|_| gather.apply_batched(batch, &[ct]))
            }
        }
    }

    fn units(&self, units: &[Option<Unit>], _inputs: &[&Tensor]) -> Result<UnitRule> {
        let u = Units::new(self.name(), units);
        Ok(match self {
            Structural::Concat(_) => {
                let all: Vec<usize> = (0..units.len()).collect();
                let (factors, target) = u.common(&all)?;
                UnitRule {
                    factors,
                    outputs: vec![Some(target)],
                }
            }
            Structural::Broadcast(_)
            | Structural::Reshape(_)
            | Structural::Transpose(_)
            | Structural::Slice { .. }
            | Structural::Pad { .. }
            | Structural::Rev(_)
            | Structural::Gather { .. }
            | Structural::ScatterAdd { .. } => u.same_as_first(),
        })
    }

    fn dependence(&self, _ins: &[Aval]) -> Dependence {
        match self {
            Structural::Broadcast(_)
            | Structural::Reshape(_)
            | Structural::Transpose(_)
            | Structural::Slice { .. }
            | Structural::Pad { .. }
            | Structural::Concat(_)
            | Structural::Rev(_)
            | Structural::Gather { .. } => Dependence::Gather,
            Structural::ScatterAdd { axis, indices, .. } => {
                Dependence::Scatter(Box::new(Prim::from(Structural::Gather {
                    axis: *axis,
                    indices: indices.clone(),
                })))
            }
        }
    }
}

/// `x`'s elements, in order, read as a stack of `rows x cols` matrices, each transposed (to
/// `cols x rows`) by the transpose kernel.
pub(crate) fn transposed_matrices(x: &Data, rows: usize, cols: usize) -> Data {
    with_array!(x, a => {
        let a = a.as_standard_layout();
        let stacked = a.len() / (rows * cols).max(1);
        // One matrix alone takes the 2-d kernel, which copies in tiles.
        let (shape, perm): (&[usize], &[usize]) = match stacked {
            1 => (&[rows, cols], &[1, 0]),
            _ => (&[stacked, rows, cols], &[0, 2, 1]),
        };
        let view = a.view().into_shape_with_order(IxDyn(shape)).expect("as many elements");
        Data::from(owned(view.permuted_axes(IxDyn(perm))))
    })
}

/// A standard-layout copy of a view. Fixed-rank iteration is much faster than dynamic-rank,
/// and 2-d transposes are copied in blocks of 4 x 4.
fn owned<T: Copy + 'static>(view: ArrayViewD<'_, T>) -> ArrayD<T> {
    let shape = view.shape().to_vec();
    let collect = |values: &mut dyn Iterator<Item = T>| {
        let mut buffer = pool::take(shape.iter().product());
        buffer.extend(values);
        ArrayD::from_shape_vec(shape.as_slice(), buffer).expect("one value per element")
    };
    if let Some(values) = view.as_slice() {
        return collect(&mut values.iter().copied());
    }
    match view.ndim() {
        2 => {
            let v = view.into_dimensionality::<Ix2>().expect("rank 2");
            let (rows, cols) = v.dim();
            // Column-major (a transpose of a standard layout): copied in tiles.
            if v.strides()[0] == 1 && v.strides()[1] >= rows as isize && rows * cols > 0 {
                return transpose_tiled(v).into_dyn();
            }
            collect(&mut v.iter().copied())
        }
        1 => collect(
            &mut view
                .into_dimensionality::<Ix1>()
                .expect("rank 1")
                .iter()
                .copied(),
        ),
        3 => collect(
            &mut view
                .into_dimensionality::<Ix3>()
                .expect("rank 3")
                .iter()
                .copied(),
        ),
        4 => collect(
            &mut view
                .into_dimensionality::<Ix4>()
                .expect("rank 4")
                .iter()
                .copied(),
        ),
        _ => collect(&mut view.iter().copied()),
    }
}

/// A standard-layout copy of `v`, a transpose of a standard layout (unit row stride).
fn transpose_tiled<T: Copy + 'static>(v: ArrayView2<'_, T>) -> Array2<T> {
    let (rows, cols) = v.dim();
    let stride = v.strides()[1] as usize;
    // SAFETY: `v` is non-empty with unit row stride and a column stride of at least `rows`
    // (checked by the caller): its elements lie in the `(cols - 1) * stride + rows` values
    // from its first, which it borrows.
    let source = unsafe { std::slice::from_raw_parts(v.as_ptr(), (cols - 1) * stride + rows) };
    let mut out = pool::take(rows * cols);
    transpose_into(
        source,
        stride,
        rows,
        cols,
        &mut out.spare_capacity_mut()[..rows * cols],
        cols,
    );
    // SAFETY: `transpose_into` wrote every one of the rows * cols elements.
    unsafe { out.set_len(rows * cols) };
    Array2::from_shape_vec((rows, cols), out).expect("rows * cols values")
}

/// Writes `out[r * out_stride + c] = source[c * stride + r]` for `r < rows`, `c < cols`: a
/// matrix stored by columns (`stride` apart) copied into rows (`out_stride` apart), in
/// blocks of 4 x 4: four runs of four values read, four rows of four written, a stripe of
/// four output rows at a time so that writes go along the rows. About twice as fast as
/// 8 x 8 tiles copied value by value (logreg's `X^T`, 64 x 512: 20 -> 10 us).
pub(crate) fn transpose_into<T: Copy, S: Slot<T>>(
    source: &[T],
    stride: usize,
    rows: usize,
    cols: usize,
    out: &mut [S],
    out_stride: usize,
) {
    const B: usize = 4;
    if rows == 0 || cols == 0 {
        return;
    }
    let at = |r: usize, c: usize| source[c * stride + r];
    let full_cols = cols / B * B;
    let mut lines = out.chunks_mut(out_stride).map(|line| &mut line[..cols]);
    for r0 in (0..rows / B * B).step_by(B) {
        let mut out_rows: [_; B] = std::array::from_fn(|_| lines.next().expect("B rows"));
        for c0 in (0..full_cols).step_by(B) {
            let column = |c: usize| -> [T; B] {
                let run = &source[c * stride + r0..][..B];
                [run[0], run[1], run[2], run[3]]
            };
            let (a0, a1, a2, a3) = (column(c0), column(c0 + 1), column(c0 + 2), column(c0 + 3));
            for (k, row) in out_rows.iter_mut().enumerate() {
                for (slot, value) in row[c0..c0 + B].iter_mut().zip([a0[k], a1[k], a2[k], a3[k]]) {
                    slot.set(value);
                }
            }
        }
        for (row, r) in out_rows.iter_mut().zip(r0..) {
            for (c, slot) in row.iter_mut().enumerate().skip(full_cols) {
                slot.set(at(r, c));
            }
        }
    }
    for (row, r) in lines.zip(rows / B * B..rows) {
        for (c, slot) in row.iter_mut().enumerate() {
            slot.set(at(r, c));
        }
    }
}

/// The zero of an array's element type, found from the array itself.
fn zero_like<T: Default>(_: &ArrayD<T>) -> T {
    T::default()
}

/// The length of `axis` of `shape`, or an error naming both.
fn axis_len(op: &str, shape: &[usize], axis: usize) -> Result<usize> {
    shape.get(axis).copied().ok_or_else(|| {
        Error::shape(
            op,
            format!("axis {axis} is out of range for shape {shape:?}"),
        )
    })
}

/// Checks that every index is below `len`, the length of `axis` of `shape`.
fn check_indices(
    op: &str,
    indices: &[usize],
    len: usize,
    axis: usize,
    shape: &[usize],
) -> Result<()> {
    match indices.iter().find(|&&i| i >= len) {
        Some(i) => Err(Error::shape(
            op,
            format!("index {i} is out of range for axis {axis} of shape {shape:?}"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_copies_of_transposes_keep_every_element() {
        // Shapes that are multiples of the tile and shapes that are not.
        for (rows, cols) in [
            (64, 512),
            (512, 64),
            (13, 21),
            (7, 6),
            (4, 4),
            (3, 3),
            (1, 9),
            (9, 1),
        ] {
            let a = ndarray::Array::from_shape_fn((rows, cols), |(i, j)| (i * cols + j) as f64);
            let t = a.t().into_dyn();
            let copy = owned(t.clone());
            assert!(copy.is_standard_layout());
            assert_eq!(copy, t, "{rows} x {cols}");
            // The transpose of a slice: columns further apart than its rows.
            let part = a.slice(ndarray::s![.., ..cols.div_ceil(2)]);
            let t = part.t().into_dyn();
            assert_eq!(owned(t.clone()), t, "{rows} x {cols}, half");
            // Reversed rows: unit row stride, negative column stride, copied element by
            // element.
            let t = a.slice(ndarray::s![..;-1, ..]).reversed_axes().into_dyn();
            assert_eq!(owned(t.clone()), t, "{rows} x {cols}, reversed");
        }
    }
}
