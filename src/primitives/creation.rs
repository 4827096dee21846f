//! Primitives without operands: `iota` and `eye`. Their outputs are constants, so they have no
//! derivative rules; they exist so that large regular arrays (index ramps, tangent bases) stay
//! generators in a program instead of stored constants.

use ndarray::ArrayD;

use super::Prim;
use crate::error::Result;
use crate::tensor::{Aval, Data};

pub(super) fn infer(prim: &Prim) -> Result<Aval> {
    Ok(match prim {
        Prim::Iota { shape, dtype, axis } => {
            if *axis >= shape.len() {
                return Err(crate::Error::shape(
                    "iota",
                    format!("axis {axis} out of range for shape {shape:?}"),
                ));
            }
            Aval::new(shape, *dtype)
        }
        Prim::Eye {
            rows, cols, dtype, ..
        } => Aval::new(&[*rows, *cols], *dtype),
        _ => unreachable!("not a creation primitive: {prim}"),
    })
}

pub(super) fn eval(prim: &Prim) -> Data {
    match prim {
        Prim::Iota { shape, axis, dtype } => {
            Data::F64(ArrayD::from_shape_fn(shape.as_slice(), |idx| {
                idx[*axis] as f64
            }))
            .into_dtype(*dtype)
        }
        Prim::Eye {
            rows,
            cols,
            offset,
            dtype,
        } => {
            let mut buffer = crate::exec::pool::take(rows * cols);
            buffer.resize(rows * cols, 0.0);
            let mut eye = ArrayD::from_shape_vec(vec![*rows, *cols], buffer).expect("rows x cols");
            for r in 0..*rows {
                let c = r as i64 + offset;
                if (0..*cols as i64).contains(&c) {
                    eye[[r, c as usize]] = 1.0;
                }
            }
            Data::F64(eye).into_dtype(*dtype)
        }
        _ => unreachable!("not a creation primitive: {prim}"),
    }
}
