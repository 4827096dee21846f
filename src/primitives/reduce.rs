//! Reductions over a set of axes: sum (linear), max and min.

use ndarray::{ArrayD, Axis};

use super::{Prim, concat_dims};
use crate::error::{Error, Result};
use crate::tensor::{Aval, DType, Data, Tensor};

/// How a reduction combines elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Largest element (NaN-propagating).
    Max,
    /// Smallest element (NaN-propagating).
    Min,
}

impl ReduceOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "reduce_sum",
            ReduceOp::Max => "reduce_max",
            ReduceOp::Min => "reduce_min",
        }
    }
}

/// The shape with the reduced axes kept as size 1.
pub(crate) fn keepdims_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    (0..shape.len())
        .map(|i| if axes.contains(&i) { 1 } else { shape[i] })
        .collect()
}

pub(super) fn infer(op: ReduceOp, axes: &[usize], x: &Aval) -> Result<Aval> {
    if x.dtype == DType::Bool || (op != ReduceOp::Sum && x.dtype.is_complex()) {
        return Err(Error::dtype(
            op.name(),
            "needs a numeric operand (and an ordered one for max and min)",
            x.dtype,
        ));
    }
    if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&a| a >= x.shape.len()) {
        return Err(Error::shape(
            op.name(),
            format!(
                "axes {axes:?} must be distinct, increasing and within shape {:?}",
                x.shape
            ),
        ));
    }
    if op != ReduceOp::Sum && axes.iter().any(|&a| x.shape[a] == 0) {
        return Err(Error::shape(
            op.name(),
            format!("cannot reduce an empty axis of shape {:?}", x.shape),
        ));
    }
    let shape: Vec<usize> = (0..x.shape.len())
        .filter(|i| !axes.contains(i))
        .map(|i| x.shape[i])
        .collect();
    Ok(Aval::new(&shape, x.dtype))
}

fn reduce_array<T>(a: &ArrayD<T>, axes: &[usize], op: ReduceOp) -> ArrayD<T>
where
    T: Copy + PartialOrd + num_traits::Zero + std::ops::Add<Output = T>,
{
    let mut out = a.clone();
    for &axis in axes.iter().rev() {
        out = match op {
            ReduceOp::Sum => sum_axis(&out, axis),
            ReduceOp::Max | ReduceOp::Min => {
                let mut acc = out.index_axis(Axis(axis), 0).to_owned();
                for lane in out.axis_iter(Axis(axis)).skip(1) {
                    ndarray::Zip::from(&mut acc).and(&lane).for_each(|acc, &v| {
                        let better = if op == ReduceOp::Max {
                            v > *acc
                        } else {
                            v < *acc
                        };
                        // A NaN, once met, stays (as in NumPy).
                        if !is_nan(*acc) && (better || is_nan(v)) {
                            *acc = v;
                        }
                    });
                }
                acc
            }
        };
    }
    out
}

/// Sum along one axis, with fixed-rank iteration where possible (much faster than dynamic).
fn sum_axis<T>(a: &ArrayD<T>, axis: usize) -> ArrayD<T>
where
    T: Copy + num_traits::Zero + std::ops::Add<Output = T>,
{
    macro_rules! fixed_rank {
        ($dim:ty) => {
            a.view()
                .into_dimensionality::<$dim>()
                .expect("rank")
                .sum_axis(Axis(axis))
                .into_dyn()
        };
    }
    match a.ndim() {
        1 => fixed_rank!(ndarray::Ix1),
        2 => fixed_rank!(ndarray::Ix2),
        3 => fixed_rank!(ndarray::Ix3),
        4 => fixed_rank!(ndarray::Ix4),
        _ => a.sum_axis(Axis(axis)),
    }
}

/// `v != v`: true only for a floating-point NaN.
#[allow(clippy::eq_op)]
fn is_nan<T: PartialEq>(v: T) -> bool {
    v != v
}

pub(super) fn eval(op: ReduceOp, axes: &[usize], x: &Data) -> Data {
    match x {
        Data::F64(a) => Data::F64(reduce_array(a, axes, op)),
        Data::F32(a) => Data::F32(reduce_array(a, axes, op)),
        Data::I64(a) => Data::I64(reduce_array(a, axes, op)),
        // Only sums are defined on complex numbers (infer checks).
        Data::C128(a) => Data::C128(
            axes.iter()
                .rev()
                .fold(a.clone(), |acc, &axis| sum_axis(&acc, axis)),
        ),
        Data::C64(a) => Data::C64(
            axes.iter()
                .rev()
                .fold(a.clone(), |acc, &axis| sum_axis(&acc, axis)),
        ),
        Data::Bool(_) => unreachable!("dtype checked by infer"),
    }
}

pub(super) fn jvp(
    op: ReduceOp,
    axes: &[usize],
    x: &Tensor,
    t: &Tensor,
    out: &Tensor,
    batch: &[usize],
) -> Option<Tensor> {
    let batched_axes: Vec<usize> = axes.iter().map(|a| a + batch.len()).collect();
    let sum = |v: &Tensor, axes: Vec<usize>| Tensor::apply(Prim::Reduce(ReduceOp::Sum, axes), &[v]);
    match op {
        ReduceOp::Sum => Some(sum(t, batched_axes)),
        ReduceOp::Max | ReduceOp::Min => {
            // The tangent of the extremum is the mean tangent of the elements attaining it.
            let extremum = out.reshape_exact(&keepdims_shape(x.shape(), axes));
            let mask = x.eq(&extremum).cast(x.dtype());
            let count = sum(&mask, axes.to_vec());
            Some(sum(&(t * &mask), batched_axes) / count)
        }
    }
}

/// Cotangent of a sum: the output cotangent spread back over the reduced axes.
pub(super) fn transpose_sum(ct: &Tensor, axes: &[usize], x: &Aval, batch: &[usize]) -> Tensor {
    ct.reshape_exact(&concat_dims(batch, &keepdims_shape(&x.shape, axes)))
        .broadcast_to(&concat_dims(batch, &x.shape))
}
