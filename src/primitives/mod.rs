//! The primitive set and its rules.
//!
//! Every traced program is made of these primitives; every user-level operation is either one
//! of them or a composition of them. Each primitive family lives in one file holding, side by
//! side, its shape/dtype inference, its reference kernel, its JVP rule and (for the linear
//! primitives) its transpose rule. The rules are written with tensor operations, so a
//! derivative program is a program again and can be differentiated once more.
//!
//! Rule conventions, shared by every family:
//! - tangents and cotangents carry a leading *batch* of directions (`batch`, possibly empty):
//!   a tangent of an input of shape `s` has shape `batch ++ s`; so `k` directions, or the
//!   whole identity basis, go through one pass;
//! - a missing tangent or cotangent (`None`) is a symbolic zero, which rules skip;
//! - elementwise rules receive tangents already padded to the output's rank, and cotangents
//!   returned for a broadcast operand are summed back to its shape by the driver
//!   (`autodiff`), so no rule repeats that bookkeeping.

mod creation;
mod elementwise;
mod matmul;
mod reduce;
mod structural;

use std::fmt;

pub(crate) use self::elementwise::eval_in_place;
pub use self::elementwise::{BinaryOp, CmpOp, UnaryOp};
pub use self::reduce::ReduceOp;
pub(crate) use self::reduce::keepdims_shape;
use crate::error::{Error, Result};
use crate::tensor::{Aval, DType, Data, Tensor};
use crate::unit::Unit;

/// A primitive operation with its static parameters.
///
/// ```
/// use brainstate::primitives::Prim;
/// use brainstate::{make_program, Tensor};
/// assert_eq!(Prim::PowI(3).to_string(), "integer_pow[y=3]");
/// let p = make_program(|x: &Tensor| x.powi(3).sum(), &Tensor::from([1.0, 2.0])).unwrap();
/// assert!(p.to_string().contains("integer_pow[y=3]"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Prim {
    /// Elementwise function of one operand.
    Unary(UnaryOp),
    /// Elementwise function of two operands, with NumPy broadcasting.
    Binary(BinaryOp),
    /// Elementwise comparison, giving `bool`.
    Compare(CmpOp),
    /// `select(cond, on_true, on_false)`, elementwise with broadcasting.
    Select,
    /// Conversion to another dtype.
    Convert(DType),
    /// `x^n` for an integer `n`.
    PowI(i32),
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
    /// Concatenation of all inputs along `axis`.
    Concat(usize),
    /// Reduction over the given (sorted, distinct) axes, which are removed.
    Reduce(ReduceOp, Vec<usize>),
    /// Matrix product over the last two axes, broadcasting the leading ones.
    MatMul,
    /// `0, 1, 2, ...` along `axis` of an array of `shape`.
    Iota {
        /// Shape of the result.
        shape: Vec<usize>,
        /// Axis that counts.
        axis: usize,
        /// Element type.
        dtype: DType,
    },
    /// `rows x cols` matrix with ones where `col - row == offset`: a slice of the identity,
    /// generated at run time so that tangent bases are never stored as constants.
    Eye {
        /// Number of rows.
        rows: usize,
        /// Number of columns.
        cols: usize,
        /// Diagonal offset.
        offset: i64,
        /// Element type.
        dtype: DType,
    },
}

/// The primitive families, one file each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Elementwise,
    Structural,
    Reduce,
    MatMul,
    Creation,
}

impl Prim {
    /// Shape and dtype of the result, or an error naming the operation and the shapes.
    pub(crate) fn infer(&self, ins: &[Aval]) -> Result<Aval> {
        let arity = match self {
            Prim::Unary(_) | Prim::Convert(_) | Prim::PowI(_) => Some(1),
            Prim::Binary(_) | Prim::Compare(_) | Prim::MatMul => Some(2),
            Prim::Select => Some(3),
            Prim::Broadcast(_) | Prim::Reshape(_) | Prim::Transpose(_) => Some(1),
            Prim::Slice { .. } | Prim::Pad { .. } | Prim::Reduce(..) => Some(1),
            Prim::Iota { .. } | Prim::Eye { .. } => Some(0),
            Prim::Concat(_) => None,
        };
        if let Some(n) = arity {
            if ins.len() != n {
                return Err(Error::shape(
                    &self.name(),
                    format!("takes {n} operands, got {}", ins.len()),
                ));
            }
        }
        match (self.family(), self) {
            (Family::Elementwise, _) => elementwise::infer(self, ins),
            (Family::Structural, _) => structural::infer(self, ins),
            (_, Prim::Reduce(op, axes)) => reduce::infer(*op, axes, &ins[0]),
            (_, Prim::MatMul) => matmul::infer(&ins[0], &ins[1]),
            _ => creation::infer(self),
        }
    }

    /// The reference kernel. Inputs have passed [`Prim::infer`].
    pub(crate) fn eval(&self, ins: &[&Data]) -> Result<Data> {
        match (self.family(), self) {
            (Family::Elementwise, _) => elementwise::eval(self, ins),
            (Family::Structural, _) => structural::eval(self, ins),
            (_, Prim::Reduce(op, axes)) => Ok(reduce::eval(*op, axes, ins[0])),
            (_, Prim::MatMul) => matmul::eval(ins[0], ins[1]),
            _ => Ok(creation::eval(self)),
        }
    }

    /// The file, and so the rule set, a primitive belongs to.
    fn family(&self) -> Family {
        match self {
            Prim::Unary(_)
            | Prim::Binary(_)
            | Prim::Compare(_)
            | Prim::Select
            | Prim::Convert(_)
            | Prim::PowI(_) => Family::Elementwise,
            Prim::Broadcast(_)
            | Prim::Reshape(_)
            | Prim::Transpose(_)
            | Prim::Slice { .. }
            | Prim::Pad { .. }
            | Prim::Concat(_) => Family::Structural,
            Prim::Reduce(..) => Family::Reduce,
            Prim::MatMul => Family::MatMul,
            Prim::Iota { .. } | Prim::Eye { .. } => Family::Creation,
        }
    }

    /// Whether the primitive maps elements to elements (so tangents are rank-padded for it).
    pub(crate) fn is_elementwise(&self) -> bool {
        self.family() == Family::Elementwise
    }

    /// The tangent of the output, given the primal inputs and output and the input tangents
    /// (at least one present; shapes `batch ++ input shape`).
    pub(crate) fn jvp(
        &self,
        primals: &[Tensor],
        tangents: &[Option<Tensor>],
        out: &Tensor,
        batch: &[usize],
    ) -> Option<Tensor> {
        match (self.family(), self) {
            (Family::Elementwise, _) => elementwise::jvp(self, primals, tangents, out, batch),
            (Family::Structural, _) => structural::jvp(self, primals, tangents, batch),
            (_, Prim::Reduce(op, axes)) => {
                reduce::jvp(*op, axes, &primals[0], tangents[0].as_ref()?, out, batch)
            }
            (_, Prim::MatMul) => matmul::jvp(primals, tangents, out, batch),
            _ => None,
        }
    }

    /// Cotangents of the inputs that are linear (`primals[i]` is `None`), given the cotangent
    /// of the output (shape `batch ++ output shape`). Only linear primitives have this rule.
    pub(crate) fn transpose(
        &self,
        ct: &Tensor,
        primals: &[Option<Tensor>],
        in_avals: &[Aval],
        batch: &[usize],
    ) -> Result<Vec<Option<Tensor>>> {
        match self {
            Prim::Unary(UnaryOp::Neg | UnaryOp::Conj | UnaryOp::Real | UnaryOp::Imag)
            | Prim::Binary(
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Complex,
            )
            | Prim::Select
            | Prim::Convert(_) => elementwise::transpose(self, ct, primals, in_avals),
            _ if self.family() == Family::Structural => {
                Ok(structural::transpose(self, ct, in_avals, batch))
            }
            Prim::Reduce(ReduceOp::Sum, axes) => Ok(vec![Some(reduce::transpose_sum(
                ct,
                axes,
                &in_avals[0],
                batch,
            ))]),
            Prim::MatMul => matmul::transpose(ct, primals),
            _ => Err(self.not_linear()),
        }
    }

    pub(crate) fn not_linear(&self) -> Error {
        Error::Trace(format!(
            "`{}` is not linear in its tangent operand, so it has no transpose rule \
             (a JVP rule applied it to a tangent)",
            self.name()
        ))
    }

    /// The unit rule: the factor each operand's values are multiplied by before the primitive
    /// sees them, and the unit of the result (`None`: dimensionless). Operands without a unit
    /// are dimensionless. Errors name the operation and the units.
    pub(crate) fn unit_rule(
        &self,
        units: &[Option<Unit>],
        inputs: &[&Tensor],
    ) -> Result<(Vec<f64>, Option<Unit>)> {
        let name = self.name();
        let unit = |i: usize| units[i].unwrap_or(Unit::ONE);
        let unchanged = vec![1.0; units.len()];
        // Operands of one dimension are expressed in the unit of the first one that has a unit.
        let common = |operands: &[usize]| -> Result<(Vec<f64>, Unit)> {
            let target = operands.iter().find_map(|&i| units[i]).unwrap_or(Unit::ONE);
            let mut factors = unchanged.clone();
            for &i in operands {
                factors[i] = unit(i).factor_to(&target, &name)?;
            }
            Ok((factors, target))
        };
        // Transcendental functions take dimensionless values, with any scale folded in.
        let dimensionless = |i: usize| -> Result<f64> {
            if unit(i).is_dimensionless() {
                Ok(unit(i).scale())
            } else {
                Err(Error::Units {
                    op: name.clone(),
                    msg: format!("needs a dimensionless argument, got {}", unit(i)),
                })
            }
        };
        Ok(match self {
            Prim::Unary(UnaryOp::Sqrt) => (unchanged, Some(unit(0).sqrt())),
            Prim::Unary(UnaryOp::Sign) => (unchanged, None),
            Prim::Unary(
                UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Log1p
                | UnaryOp::Expm1
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Tan
                | UnaryOp::Tanh
                | UnaryOp::Logistic,
            ) => (vec![dimensionless(0)?], None),
            Prim::Unary(_)
            | Prim::Convert(_)
            | Prim::Broadcast(_)
            | Prim::Reshape(_)
            | Prim::Transpose(_)
            | Prim::Slice { .. }
            | Prim::Pad { .. }
            | Prim::Reduce(..) => (unchanged, units[0]),
            Prim::PowI(n) => (unchanged, Some(unit(0).powi(*n))),
            Prim::Binary(BinaryOp::Mul) | Prim::MatMul => (unchanged, Some(unit(0) * unit(1))),
            Prim::Binary(BinaryOp::Div) => (unchanged, Some(unit(0) / unit(1))),
            Prim::Binary(BinaryOp::Pow) if unit(0).is_dimensionless() => {
                (vec![dimensionless(0)?, dimensionless(1)?], None)
            }
            Prim::Binary(BinaryOp::Pow) => {
                // A quantity's power needs a known, dimensionless exponent.
                let exponent = dimensionless(1)
                    .and_then(|scale| Ok(inputs[1].item()? * scale))
                    .map_err(|_| Error::Units {
                        op: name.clone(),
                        msg: format!("the power of a quantity in {} needs a constant dimensionless scalar exponent", unit(0)),
                    })?;
                (unchanged, Some(unit(0).powf(exponent)?))
            }
            Prim::Binary(BinaryOp::Atan2) | Prim::Compare(_) => (common(&[0, 1])?.0, None),
            Prim::Binary(_) => {
                let (factors, target) = common(&[0, 1])?;
                (factors, Some(target))
            }
            Prim::Select => {
                let (factors, target) = common(&[1, 2])?;
                (factors, Some(target))
            }
            Prim::Concat(_) => {
                let all: Vec<usize> = (0..units.len()).collect();
                let (factors, target) = common(&all)?;
                (factors, Some(target))
            }
            Prim::Iota { .. } | Prim::Eye { .. } => (unchanged, None),
        })
    }

    /// The name as printed in programs, without parameters.
    pub fn name(&self) -> String {
        match self {
            Prim::Unary(op) => op.name().to_string(),
            Prim::Binary(op) => op.name().to_string(),
            Prim::Compare(op) => op.name().to_string(),
            Prim::Select => "select".into(),
            Prim::Convert(_) => "convert".into(),
            Prim::PowI(_) => "integer_pow".into(),
            Prim::Broadcast(_) => "broadcast".into(),
            Prim::Reshape(_) => "reshape".into(),
            Prim::Transpose(_) => "transpose".into(),
            Prim::Slice { .. } => "slice".into(),
            Prim::Pad { .. } => "pad".into(),
            Prim::Concat(_) => "concatenate".into(),
            Prim::Reduce(op, _) => op.name().to_string(),
            Prim::MatMul => "matmul".into(),
            Prim::Iota { .. } => "iota".into(),
            Prim::Eye { .. } => "eye".into(),
        }
    }
}

/// `(1,2,3)`-style list for printed parameters.
fn tuple(values: &[usize]) -> String {
    let items: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    if items.len() == 1 {
        format!("({},)", items[0])
    } else {
        format!("({})", items.join(","))
    }
}

impl fmt::Display for Prim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Prim::Convert(d) => write!(f, "{name}[dtype={d}]"),
            Prim::PowI(n) => write!(f, "{name}[y={n}]"),
            Prim::Broadcast(s) | Prim::Reshape(s) => write!(f, "{name}[shape={}]", tuple(s)),
            Prim::Transpose(p) => write!(f, "{name}[perm={}]", tuple(p)),
            Prim::Slice { start, stop, step } => write!(
                f,
                "{name}[start={} stop={} step={}]",
                tuple(start),
                tuple(stop),
                tuple(step)
            ),
            Prim::Pad { lo, hi, interior } => write!(
                f,
                "{name}[lo={} hi={} interior={}]",
                tuple(lo),
                tuple(hi),
                tuple(interior)
            ),
            Prim::Concat(axis) => write!(f, "{name}[axis={axis}]"),
            Prim::Reduce(_, axes) => write!(f, "{name}[axes={}]", tuple(axes)),
            Prim::Iota { shape, axis, dtype } => {
                write!(
                    f,
                    "{name}[shape={} axis={axis} dtype={dtype}]",
                    tuple(shape)
                )
            }
            Prim::Eye {
                rows,
                cols,
                offset,
                dtype,
            } => write!(
                f,
                "{name}[rows={rows} cols={cols} offset={offset} dtype={dtype}]"
            ),
            _ => f.write_str(&name),
        }
    }
}

/// NumPy broadcasting of two shapes.
pub(crate) fn broadcast_shapes(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::mismatch(op, a, b)),
        };
    }
    Ok(out)
}

/// A zero of shape `batch ++ aval.shape`: a broadcast scalar, cheap in a program.
pub(crate) fn zeros(batch: &[usize], aval: &Aval) -> Tensor {
    let shape: Vec<usize> = batch.iter().chain(&aval.shape).copied().collect();
    Tensor::scalar_of(0.0, aval.dtype).broadcast_to(&shape)
}

/// `[a, b, ...] ++ [c, ...]`.
pub(crate) fn concat_dims(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter().chain(b).copied().collect()
}
