//! Primitives without operands: `iota` and `eye`. They exist so that large regular arrays
//! (index ramps, tangent bases) stay generators in a program instead of stored constants.
//! Their outputs depend on no input, so their derivative is declared zero and they are never
//! transposed.

use std::fmt;

use ndarray::ArrayD;

use super::{Dependence, Primal, Rules, Tangent, UnitRule, arity, not_linear, one};
use crate::error::{Error, Result};
use crate::storage::{Aval, DType, Data, pool};
use crate::tensor::Tensor;
use crate::unit::Unit;

/// Arrays generated from their parameters alone.
///
/// ```
/// use brainstate::primitives::{Creation, Prim};
/// use brainstate::DType;
/// let eye = Creation::Eye { rows: 2, cols: 3, offset: 1, dtype: DType::F64 };
/// assert_eq!(Prim::from(eye).to_string(), "eye[rows=2 cols=3 offset=1 dtype=f64]");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Creation {
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

impl fmt::Display for Creation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Creation::Iota { shape, axis, dtype } => write!(
                f,
                "{name}[shape={} axis={axis} dtype={dtype}]",
                super::tuple(shape)
            ),
            Creation::Eye {
                rows,
                cols,
                offset,
                dtype,
            } => write!(
                f,
                "{name}[rows={rows} cols={cols} offset={offset} dtype={dtype}]"
            ),
        }
    }
}

impl Rules for Creation {
    fn name(&self) -> &'static str {
        match self {
            Creation::Iota { .. } => "iota",
            Creation::Eye { .. } => "eye",
        }
    }

    fn infer(&self, ins: &[Aval]) -> Result<Vec<Aval>> {
        arity(self.name(), ins, 0)?;
        Ok(one(match self {
            Creation::Iota { shape, dtype, axis } => {
                if *axis >= shape.len() {
                    return Err(Error::shape(
                        "iota",
                        format!("axis {axis} out of range for shape {shape:?}"),
                    ));
                }
                Aval::new(shape, *dtype)
            }
            Creation::Eye {
                rows, cols, dtype, ..
            } => Aval::new(&[*rows, *cols], *dtype),
        }))
    }

    fn eval(&self, _ins: &[&Data]) -> Result<Vec<Data>> {
        Ok(one(match self {
            Creation::Iota { shape, axis, dtype } => {
                Data::F64(ArrayD::from_shape_fn(shape.as_slice(), |idx| {
                    idx[*axis] as f64
                }))
                .into_dtype(*dtype)
            }
            Creation::Eye {
                rows,
                cols,
                offset,
                dtype,
            } => {
                let mut buffer = pool::take(rows * cols);
                buffer.resize(rows * cols, 0.0);
                let mut eye =
                    ArrayD::from_shape_vec(vec![*rows, *cols], buffer).expect("rows x cols");
                for r in 0..*rows {
                    let c = r as i64 + offset;
                    if (0..*cols as i64).contains(&c) {
                        eye[[r, c as usize]] = 1.0;
                    }
                }
                Data::F64(eye).into_dtype(*dtype)
            }
        }))
    }

    fn jvp(
        &self,
        _x: &[Tensor],
        _t: &[Tangent],
        outs: &[Tensor],
        batch: &[usize],
    ) -> Result<Vec<Tangent>> {
        // Declared zero: the output depends on no input.
        match self {
            Creation::Iota { .. } | Creation::Eye { .. } => {
                Ok(one(Tangent::zero(batch, &outs[0].aval()?)))
            }
        }
    }

    fn transpose(&self, _cts: &[Tensor], _x: &[Primal], _batch: &[usize]) -> Result<Vec<Tangent>> {
        match self {
            Creation::Iota { .. } | Creation::Eye { .. } => Err(not_linear(self.name())),
        }
    }

    fn units(&self, units: &[Option<Unit>], _inputs: &[&Tensor]) -> Result<UnitRule> {
        match self {
            Creation::Iota { .. } | Creation::Eye { .. } => {
                Ok(super::Units::new(self.name(), units).keep(None))
            }
        }
    }

    fn dependence(&self, _ins: &[Aval]) -> Dependence {
        match self {
            Creation::Iota { .. } | Creation::Eye { .. } => Dependence::None,
        }
    }
}
