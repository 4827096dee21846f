//! Arithmetic linear in one large value, computed as one product by a small coefficient.
//!
//! A forward-mode tangent goes through the derivatives of the primal arithmetic at every
//! direction of its batch: `t * a`, then `-(...) * b / c`, then the sum of two such terms,
//! each a pass over `[directions] ++ shape` with factors of `shape` only. The whole chain is
//! `t * k`, with the coefficient `k = -a * b / c + ...` computed once over `shape`: one pass
//! over the batch instead of one per operation (the tangents of logreg's Hessian went through
//! ten operations per element).

use std::collections::HashMap;
use std::sync::Arc;

use crate::ir::{Eqn, Var};
use crate::primitives::{BinaryOp, Elementwise, Prim, Program, UnaryOp, broadcast_shapes};
use crate::storage::{Aval, DType, Data};

use super::simplify::in_body;

/// `program` with every value that is linear in one larger value `t`, through products and
/// quotients by smaller values, negations and sums of such values, computed as `t * k`
/// (here and in loop bodies). The coefficients `k` are computed at their own size, where
/// they stay smaller than `t`. A chain's first operation is kept as it is (it is such a
/// product already); the operations it made redundant are left for dead-code removal.
/// Regrouping the factors may change the last bits of a value, as any reassociation does.
pub(super) fn factor_coefficients(mut program: Program) -> Program {
    // `v = t * k`, by `v`.
    let mut linear: HashMap<Var, (Var, Var)> = HashMap::new();
    let mut ones: HashMap<DType, Var> = HashMap::new();
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for mut eqn in std::mem::take(&mut program.eqns) {
        if let Prim::Loop(the_loop) = &eqn.prim {
            eqn.prim = in_body(the_loop, factor_coefficients);
            eqns.push(eqn);
            continue;
        }
        let Some(form) = Form::of(&program, &eqn, &linear) else {
            eqns.push(eqn);
            continue;
        };
        let dtype = program.aval(eqn.outputs[0]).dtype;
        // The coefficient: an operation on the operands' coefficients (a plain `t` has none,
        // that is one) and the small operands, or the small operand of a first product.
        let known = |v: Var| linear.get(&v).map(|&(_, k)| k);
        let (prim, operands) = match form {
            Form::Scaled { large, small, op } => match known(large) {
                Some(k) => (Some(Elementwise::Binary(op)), vec![k, small]),
                None if op == BinaryOp::Mul => (None, vec![small]),
                None => {
                    let one = one(&mut program, &mut ones, dtype);
                    (Some(Elementwise::Binary(op)), vec![one, small])
                }
            },
            Form::Negated(x) => (Some(Elementwise::Unary(UnaryOp::Neg)), vec![linear[&x].1]),
            Form::Summed { op, a, b } => (
                Some(Elementwise::Binary(op)),
                vec![linear[&a].1, linear[&b].1],
            ),
        };
        let shape = operands.iter().try_fold(Vec::new(), |shape, &v| {
            broadcast_shapes("coefficient", &shape, &program.aval(v).shape)
        });
        // Only while it stays smaller than the values it scales.
        let numel = program.aval(eqn.outputs[0]).numel();
        let Some(shape) = shape.ok().filter(|s| s.iter().product::<usize>() < numel) else {
            eqns.push(eqn);
            continue;
        };
        let k = match prim {
            Some(prim) => emit(&mut program, &mut eqns, &eqn, prim, operands, &shape),
            None => operands[0],
        };
        let t = form.source(&linear);
        // The first operation of a chain is `t * k` or `t / k` already: kept to the bit.
        let first = matches!(form, Form::Scaled { large, .. } if !linear.contains_key(&large));
        if !first {
            eqn.prim = Prim::Elementwise(Elementwise::Binary(BinaryOp::Mul));
            eqn.inputs = vec![t, k];
        }
        linear.insert(eqn.outputs[0], (t, k));
        eqns.push(eqn);
    }
    program.eqns = eqns;
    program
}

/// How an equation's result is linear in a larger value.
#[derive(Clone, Copy)]
enum Form {
    /// `large * small`, `small * large` or `large / small`.
    Scaled {
        large: Var,
        small: Var,
        op: BinaryOp,
    },
    /// `-x` of a linear `x`.
    Negated(Var),
    /// `a + b` or `a - b` of two values linear in the same value.
    Summed { op: BinaryOp, a: Var, b: Var },
}

impl Form {
    /// How `eqn`'s result is linear in a larger value, given the values found linear so far.
    fn of(program: &Program, eqn: &Eqn<Prim>, linear: &HashMap<Var, (Var, Var)>) -> Option<Form> {
        let [y] = *eqn.outputs.as_slice() else {
            return None;
        };
        let out = program.aval(y);
        let Prim::Elementwise(op) = &eqn.prim else {
            return None;
        };
        let same_dtype = (eqn.inputs.iter()).all(|&v| program.aval(v).dtype == out.dtype);
        if !out.dtype.is_inexact() || !same_dtype {
            return None;
        }
        let large = |v: Var| program.aval(v).shape == out.shape;
        let small = |v: Var| program.aval(v).numel() < out.numel();
        let source = |v: Var| linear.get(&v).map(|&(t, _)| t);
        let scaled = |large, small, op| Some(Form::Scaled { large, small, op });
        match (op, eqn.inputs.as_slice()) {
            (Elementwise::Unary(UnaryOp::Neg), &[x]) if source(x).is_some() => {
                Some(Form::Negated(x))
            }
            (Elementwise::Binary(BinaryOp::Mul), &[a, b]) if large(a) && small(b) => {
                scaled(a, b, BinaryOp::Mul)
            }
            (Elementwise::Binary(BinaryOp::Mul), &[a, b]) if small(a) && large(b) => {
                scaled(b, a, BinaryOp::Mul)
            }
            (Elementwise::Binary(BinaryOp::Div), &[a, b]) if large(a) && small(b) => {
                scaled(a, b, BinaryOp::Div)
            }
            (Elementwise::Binary(op @ (BinaryOp::Add | BinaryOp::Sub)), &[a, b])
                if source(a).is_some() && source(a) == source(b) =>
            {
                Some(Form::Summed { op: *op, a, b })
            }
            _ => None,
        }
    }

    /// The value `t` the result is linear in.
    fn source(self, linear: &HashMap<Var, (Var, Var)>) -> Var {
        let of = |v: Var| linear.get(&v).map_or(v, |&(t, _)| t);
        match self {
            Form::Scaled { large, .. } => of(large),
            Form::Negated(x) | Form::Summed { a: x, .. } => of(x),
        }
    }
}

/// The constant one of `dtype`, made once per program.
fn one(program: &mut Program, ones: &mut HashMap<DType, Var>, dtype: DType) -> Var {
    *ones.entry(dtype).or_insert_with(|| {
        let one = program.new_var(Aval::new(&[], dtype));
        program
            .consts
            .push((one, Arc::new(Data::scalar(1.0, dtype))));
        one
    })
}

/// Appends `out = prim(inputs)` of `shape` (and the dtype of `like`'s result) to `eqns`, as
/// derived from the same source as `like`.
fn emit(
    program: &mut Program,
    eqns: &mut Vec<Eqn<Prim>>,
    like: &Eqn<Prim>,
    prim: Elementwise,
    inputs: Vec<Var>,
    shape: &[usize],
) -> Var {
    let dtype = program.aval(like.outputs[0]).dtype;
    let out = program.new_var(Aval::new(shape, dtype));
    eqns.push(Eqn {
        prim: Prim::Elementwise(prim),
        inputs,
        outputs: vec![out],
        source: like.source,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Plan;
    use crate::ir::passes::clean;
    use crate::{Tensor, make_program};

    /// The program of `f` at `(t, a, b)` with its linear arithmetic regrouped, its values
    /// there, and how many of its equations compute values of `t`'s shape.
    fn regrouped(
        f: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
        (t, a, b): (&Tensor, &Tensor, &Tensor),
    ) -> (Program, Vec<f64>, usize) {
        let program = clean(factor_coefficients(make_program(f, (t, a, b)).unwrap()));
        let large = (program.eqns.iter())
            .filter(|e| program.aval(e.outputs[0]).shape == t.shape().unwrap())
            .count();
        let inputs = [t, a, b].map(|x| x.data().unwrap().clone());
        let out = Plan::new(program.clone()).run(&inputs, false).unwrap();
        let values = Tensor::from_shared(out[0].clone()).to_vec::<f64>().unwrap();
        (program, values, large)
    }

    fn batch() -> (Tensor, Tensor, Tensor) {
        let t = (0..12).map(|k| (k as f64 * 0.7).sin()).collect();
        (
            Tensor::from_vec(t, &[4, 3]).unwrap(),
            Tensor::from([0.5, -1.25, 3.0]),
            Tensor::from([2.0, 0.75, -0.3]),
        )
    }

    #[test]
    fn arithmetic_linear_in_a_batch_is_one_product_by_a_coefficient_of_a_row() {
        // As logreg's tangents: products with, quotients by and negations of values of one
        // row, and a sum of two such terms, over a batch of rows.
        let f = |t: &Tensor, a: &Tensor, b: &Tensor| {
            let u = t * a;
            let v = -(&u * b) / a;
            -(&v * b + &u) * b
        };
        let (t, a, b) = batch();
        let (program, got, large) = regrouped(f, (&t, &a, &b));
        assert_eq!(large, 1, "{program}");
        let want = f(&t, &a, &b).to_vec::<f64>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-15 * w.abs().max(1.0),
                "{got:?} {want:?}"
            );
        }
    }

    #[test]
    fn chains_stop_at_other_arithmetic_and_at_coefficients_as_large_as_the_batch() {
        let (t, a, b) = batch();
        let column = Tensor::from_vec(vec![1.5, -2.0, 0.25, 4.0], &[4, 1]).unwrap();
        // `exp` is not linear: two chains of one product each.
        let (_, _, large) = regrouped(|t, a, b| (t * a).exp() * b, (&t, &a, &b));
        assert_eq!(large, 3);
        // A column times a row is as large as `t`: both products stay.
        let (_, _, large) = regrouped(|t, _, b| t * &column * b, (&t, &a, &b));
        assert_eq!(large, 2);
    }

    #[test]
    fn a_chain_of_one_operation_keeps_every_bit() {
        let (t, a, b) = batch();
        let f = |t: &Tensor, a: &Tensor, b: &Tensor| (t / a) + (t * b).exp();
        let program = make_program(f, (&t, &a, &b)).unwrap();
        let regrouped = clean(factor_coefficients(program.clone()));
        assert_eq!(regrouped.to_string(), clean(program).to_string());
    }
}
