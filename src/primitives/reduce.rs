//! Reductions over a set of axes: sum (linear), max and min.

use std::fmt;

use ndarray::{ArrayD, Axis};

use super::sum::{Summand, sum_axes};
use super::{
    Dependence, Primal, Rules, Tangent, UnitRule, Units, arity, concat_dims, cotangents,
    not_linear, one, tuple,
};
use crate::error::{Error, Result};
use crate::storage::{Aval, DType, Data};
use crate::tensor::Tensor;
use crate::unit::Unit;

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

/// A reduction over the given (sorted, distinct) axes, which are removed.
///
/// ```
/// use brainstate::primitives::{Prim, Reduce, ReduceOp};
/// let sum = Prim::from(Reduce { op: ReduceOp::Sum, axes: vec![0, 2] });
/// assert_eq!(sum.to_string(), "reduce_sum[axes=(0,2)]");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reduce {
    /// How elements combine.
    pub op: ReduceOp,
    /// The reduced axes.
    pub axes: Vec<usize>,
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

impl Reduce {
    /// A sum over `axes`.
    pub(crate) fn sum(axes: Vec<usize>) -> Reduce {
        Reduce {
            op: ReduceOp::Sum,
            axes,
        }
    }
}

/// The shape with the reduced axes kept as size 1.
///
/// ```
/// assert_eq!(brainstate::primitives::keepdims_shape(&[2, 3, 4], &[1]), vec![2, 1, 4]);
/// ```
pub fn keepdims_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    (0..shape.len())
        .map(|i| if axes.contains(&i) { 1 } else { shape[i] })
        .collect()
}

impl fmt::Display for Reduce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[axes={}]", self.name(), tuple(&self.axes))
    }
}

impl Rules for Reduce {
    fn name(&self) -> &'static str {
        self.op.name()
    }

    fn infer(&self, ins: &[Aval]) -> Result<Vec<Aval>> {
        let (name, op, axes) = (self.name(), self.op, &self.axes);
        arity(name, ins, 1)?;
        let x = &ins[0];
        if x.dtype == DType::Bool || (op != ReduceOp::Sum && x.dtype.is_complex()) {
            return Err(Error::dtype(
                name,
                "needs a numeric operand (and an ordered one for max and min)",
                x.dtype,
            ));
        }
        if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&a| a >= x.shape.len()) {
            return Err(Error::shape(
                name,
                format!(
                    "axes {axes:?} must be distinct, increasing and within shape {:?}",
                    x.shape
                ),
            ));
        }
        if op != ReduceOp::Sum && axes.iter().any(|&a| x.shape[a] == 0) {
            return Err(Error::shape(
                name,
                format!("cannot reduce an empty axis of shape {:?}", x.shape),
            ));
        }
        let shape: Vec<usize> = (0..x.shape.len())
            .filter(|i| !axes.contains(i))
            .map(|i| x.shape[i])
            .collect();
        Ok(one(Aval::new(&shape, x.dtype)))
    }

    fn eval(&self, ins: &[&Data]) -> Result<Vec<Data>> {
        Ok(one(eval(self.op, &self.axes, ins[0])))
    }

    fn jvp(
        &self,
        x: &[Tensor],
        t: &[Tangent],
        outs: &[Tensor],
        batch: &[usize],
    ) -> Result<Vec<Tangent>> {
        let Some(t) = t[0].value() else {
            return Ok(one(Tangent::zero(batch, &outs[0].aval()?)));
        };
        let batched_axes: Vec<usize> = self.axes.iter().map(|a| a + batch.len()).collect();
        let sum = |v: &Tensor, axes: Vec<usize>| Tensor::apply(Reduce::sum(axes), &[v]);
        let tangent = match self.op {
            ReduceOp::Sum => sum(t, batched_axes),
            ReduceOp::Max | ReduceOp::Min => {
                // The tangent of the extremum is the mean tangent of the elements attaining it.
                let x = &x[0];
                let extremum = outs[0].reshape_exact(&keepdims_shape(x.shape()?, &self.axes));
                let mask = x.eq(&extremum).cast(x.dtype()?);
                let count = sum(&mask, self.axes.clone());
                sum(&(t * &mask), batched_axes) / count
            }
        };
        Ok(one(Tangent::Value(tangent)))
    }

    fn transpose(&self, cts: &[Tensor], x: &[Primal], batch: &[usize]) -> Result<Vec<Tangent>> {
        match self.op {
            ReduceOp::Sum => {
                // The output cotangent spread back over the reduced axes.
                let shape = x[0].aval()?.shape;
                let kept = concat_dims(batch, &keepdims_shape(&shape, &self.axes));
                let full = concat_dims(batch, &shape);
                cotangents(x, batch, &|_| {
                    cts[0].reshape_exact(&kept).broadcast_to(&full)
                })
            }
            ReduceOp::Max | ReduceOp::Min => Err(not_linear(self.name())),
        }
    }

    fn units(&self, units: &[Option<Unit>], _inputs: &[&Tensor]) -> Result<UnitRule> {
        Ok(Units::new(self.name(), units).same_as_first())
    }

    fn dependence(&self, _ins: &[Aval]) -> Dependence {
        match self.op {
            ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min => Dependence::Reduce(self.axes.clone()),
        }
    }
}

fn reduce_array<T>(a: &ArrayD<T>, axes: &[usize], op: ReduceOp) -> ArrayD<T>
where
    T: Summand + PartialOrd,
{
    if op == ReduceOp::Sum {
        return sum_axes(a, axes);
    }
    let mut out = std::borrow::Cow::Borrowed(a);
    for &axis in axes.iter().rev() {
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
        out = std::borrow::Cow::Owned(acc);
    }
    out.into_owned()
}

/// `v != v`: true only for a floating-point NaN.
#[allow(clippy::eq_op)]
fn is_nan<T: PartialEq>(v: T) -> bool {
    v != v
}

fn eval(op: ReduceOp, axes: &[usize], x: &Data) -> Data {
    match x {
        Data::F64(a) => Data::F64(reduce_array(a, axes, op)),
        Data::F32(a) => Data::F32(reduce_array(a, axes, op)),
        Data::I64(a) => Data::I64(reduce_array(a, axes, op)),
        // Only sums are defined on complex numbers (infer checks).
        Data::C128(a) => Data::C128(sum_axes(a, axes)),
        Data::C64(a) => Data::C64(sum_axes(a, axes)),
        Data::Bool(_) => unreachable!("dtype checked by infer"),
    }
}
