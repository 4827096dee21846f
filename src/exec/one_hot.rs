//! Products that only move elements become reshapes and transposes.
//!
//! A dense sweep over one chunk pushes the identity basis of an input through the program,
//! and the first thing it meets is often a matrix product: `X @ basis` in a linear model.
//! Such a product selects elements of its other operand in an order of its own; when every
//! element is selected once, in order along the product's axes, it is that operand with its
//! axes regrouped, which fused loops read as a view: no copy, where the product cost a full
//! `m x k x n` multiply.
//!
//! The known operand's values are found by evaluating, at plan time, the generators,
//! constants and structural equations it is computed from (up to [`KNOWN_LIMIT`] elements).
//! Selections that are not a plain regrouping (repeated, dropped or zero rows) stay products:
//! measured, gathers and their strided reads cost as much as the small products they replace.
//! Loop bodies select at run time instead (see `flat_body`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::ir::Var;
use crate::primitives::{Eqn, Prim, Program, Structural, broadcast_indices};
use crate::storage::Data;
use num_complex::Complex64;

/// Largest operand (in elements) evaluated at plan time to look for one-hot structure.
const KNOWN_LIMIT: usize = 1 << 18;

/// `program` with its products that only regroup the axes of an operand (see the module
/// documentation) replaced by reshapes and transposes.
pub(super) fn regroup_selecting_products(mut program: Program) -> Program {
    let original = std::mem::take(&mut program.eqns);
    let mut values = Known {
        values: (program.consts.iter())
            .map(|(v, data)| (*v, Some(data.clone())))
            .collect(),
        producer: (original.iter().enumerate())
            .flat_map(|(i, e)| e.outputs.iter().map(move |&v| (v, i)))
            .collect(),
    };
    let mut eqns = Vec::with_capacity(original.len());
    for eqn in &original {
        let rewritten = match eqn.prim {
            // The second operand is evaluated only when the first does not select.
            Prim::MatMul(_) => (values.get(eqn.inputs[0], &program, &original))
                .and_then(|known| select_rows(&mut program, &known, eqn))
                .or_else(|| {
                    (values.get(eqn.inputs[1], &program, &original))
                        .and_then(|known| select_columns(&mut program, &known, eqn))
                }),
            _ => None,
        };
        match rewritten {
            Some(replacement) => eqns.extend(replacement),
            None => eqns.push(eqn.clone()),
        }
    }
    program.eqns = eqns;
    program
}

/// Values known at plan time, evaluated on demand.
struct Known {
    /// Each value looked up: `None` when it is not known (or too large).
    values: HashMap<Var, Option<Arc<Data>>>,
    /// The equation of the original program computing each value.
    producer: HashMap<Var, usize>,
}

impl Known {
    /// The value of `v` when a constant, or computed from constants by generators and
    /// structural equations, within [`KNOWN_LIMIT`] elements.
    fn get(&mut self, v: Var, program: &Program, eqns: &[Eqn]) -> Option<Arc<Data>> {
        if let Some(known) = self.values.get(&v) {
            return known.clone();
        }
        let value = self.evaluate(v, program, eqns);
        self.values.insert(v, value.clone());
        value
    }

    fn evaluate(&mut self, v: Var, program: &Program, eqns: &[Eqn]) -> Option<Arc<Data>> {
        let eqn = &eqns[*self.producer.get(&v)?];
        let movable = matches!(eqn.prim, Prim::Creation(_) | Prim::Structural(_));
        if !movable || eqn.outputs.len() != 1 || program.aval(v).numel() > KNOWN_LIMIT {
            return None;
        }
        let ins = eqn
            .inputs
            .iter()
            .map(|&u| self.get(u, program, eqns))
            .collect::<Option<Vec<_>>>()?;
        let ins: Vec<&Data> = ins.iter().map(|d| &**d).collect();
        let out = eqn.prim.eval(&ins).ok()?.pop()?;
        Some(Arc::new(out))
    }
}

/// For each matrix of `m` (shape `[batch.., r, c]`, batch flattened) and each of its `r`
/// rows, the column of the row's single one, `None` for a row of zeros; `None` when any row
/// holds anything else. With `columns`, the same of the columns of each matrix.
fn one_hot(m: &Data, columns: bool) -> Option<Vec<Option<usize>>> {
    let shape = m.shape();
    let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let values = m.to_complex_vec();
    let (lines, along) = if columns { (c, r) } else { (r, c) };
    let (zero, one) = (Complex64::new(0.0, 0.0), Complex64::new(1.0, 0.0));
    let mut hot = Vec::with_capacity(values.len() / along.max(1));
    for matrix in values.chunks(r * c) {
        for line in 0..lines {
            let mut found = None;
            for k in 0..along {
                let value = if columns {
                    matrix[k * c + line]
                } else {
                    matrix[line * c + k]
                };
                if value == one && found.is_none() {
                    found = Some(k);
                } else if value != zero {
                    return None;
                }
            }
            hot.push(found);
        }
    }
    Some(hot)
}

/// Whether line `i` of a selection picks element `i` of what it selects from, for every `i`
/// of all of them: each element once, in order.
fn in_order(picks: impl Iterator<Item = Option<usize>>, from: usize) -> bool {
    let mut count = 0;
    for (i, pick) in picks.enumerate() {
        if pick != Some(i) {
            return false;
        }
        count += 1;
    }
    count == from
}

/// Structural equations computing one value from another, ending in a given variable.
struct Chain<'a> {
    program: &'a mut Program,
    eqns: Vec<Eqn>,
    source: Option<&'static std::panic::Location<'static>>,
}

impl Chain<'_> {
    /// `prim` of `input`; `None` when the equation would be ill-formed (never, for the
    /// rewrites here).
    fn then(&mut self, prim: Structural, input: Var) -> Option<Var> {
        let prim = Prim::Structural(prim);
        let aval = prim
            .infer(&[self.program.aval(input).clone()])
            .ok()?
            .pop()?;
        let out = self.program.new_var(aval);
        self.eqns.push(Eqn {
            prim,
            inputs: vec![input],
            outputs: vec![out],
            source: self.source,
        });
        Some(out)
    }

    fn reshape(&mut self, v: Var, shape: &[usize]) -> Option<Var> {
        if self.program.aval(v).shape == shape {
            return Some(v);
        }
        self.then(Structural::Reshape(shape.to_vec()), v)
    }

    /// The equations built, with `last` reshaped into `out`.
    fn finish(mut self, last: Var, out: Var) -> Vec<Eqn> {
        let reshape = Structural::Reshape(self.program.aval(out).shape.clone());
        self.eqns.push(Eqn {
            prim: Prim::Structural(reshape),
            inputs: vec![last],
            outputs: vec![out],
            source: self.source,
        });
        self.eqns
    }
}

/// The batch shapes of a product's operands and result, and its `m x k` by `k x n` sizes.
struct Sizes {
    a_batch: Vec<usize>,
    b_batch: Vec<usize>,
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
}

impl Sizes {
    /// The sizes of product `eqn` of `program`.
    fn of(program: &Program, eqn: &Eqn) -> Sizes {
        let (a, b) = (program.aval(eqn.inputs[0]), program.aval(eqn.inputs[1]));
        let out = program.aval(eqn.outputs[0]);
        let (ra, rb, ro) = (a.shape.len(), b.shape.len(), out.shape.len());
        Sizes {
            a_batch: a.shape[..ra - 2].to_vec(),
            b_batch: b.shape[..rb - 2].to_vec(),
            batch: out.shape[..ro - 2].to_vec(),
            m: a.shape[ra - 2],
            k: a.shape[ra - 1],
            n: b.shape[rb - 1],
        }
    }
}

/// `a @ b` with `a` known: row `i` of result matrix `β` is the row of `b`'s matrix `β` that
/// row `i` of `a`'s selects. When that is row `β * m + i` of `b`'s rows laid end to end, for
/// every row, the result is `b` reshaped.
fn select_rows(program: &mut Program, a_value: &Data, eqn: &Eqn) -> Option<Vec<Eqn>> {
    let (s, b) = (Sizes::of(program, eqn), eqn.inputs[1]);
    let hot = one_hot(a_value, false)?;
    let (from_a, from_b) = (
        broadcast_indices(&s.a_batch, &s.batch),
        broadcast_indices(&s.b_batch, &s.batch),
    );
    let picks = from_a.iter().zip(&from_b).flat_map(|(&ia, &ib)| {
        let hot = &hot;
        (0..s.m).map(move |i| hot[ia * s.m + i].map(|j| ib * s.k + j))
    });
    let b_rows = s.b_batch.iter().product::<usize>() * s.k;
    if !in_order(picks, b_rows) {
        return None;
    }
    let chain = Chain {
        program,
        eqns: Vec::new(),
        source: eqn.source,
    };
    Some(chain.finish(b, eqn.outputs[0]))
}

/// `a @ b` with `b` known: column `j` of result matrix `β` is the column of `a`'s matrix `β`
/// that column `j` of `b`'s selects. When `a` is one matrix and that is column `β * n + j`
/// of it, for every column, the result is `a` with its rows and columns regrouped: a
/// transpose (`X @ I` is `X` seen with its columns as the batch).
fn select_columns(program: &mut Program, b_value: &Data, eqn: &Eqn) -> Option<Vec<Eqn>> {
    let (s, a) = (Sizes::of(program, eqn), eqn.inputs[0]);
    let hot = one_hot(b_value, true)?;
    if s.a_batch.iter().product::<usize>() != 1 {
        return None;
    }
    let from_b = broadcast_indices(&s.b_batch, &s.batch);
    let picks = from_b.iter().flat_map(|&ib| {
        let hot = &hot;
        (0..s.n).map(move |j| hot[ib * s.n + j])
    });
    if !in_order(picks, s.k) {
        return None;
    }
    let batch: usize = s.batch.iter().product();
    let mut chain = Chain {
        program,
        eqns: Vec::new(),
        source: eqn.source,
    };
    let last = if batch == 1 {
        a
    } else if s.n == 1 {
        let columns = chain.reshape(a, &[s.m, batch])?;
        chain.then(Structural::Transpose(vec![1, 0]), columns)?
    } else {
        let split = chain.reshape(a, &[s.m, batch, s.n])?;
        chain.then(Structural::Transpose(vec![1, 0, 2]), split)?
    };
    Some(chain.finish(last, eqn.outputs[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::{Creation, MatMul};
    use crate::storage::{Aval, DType};

    /// `reshape(x, [1, 5, 4]) @ reshape(eye(4, offset), [4, 4, 1])`: with offset 0, `x`'s
    /// columns as a batch.
    fn product_with_basis(offset: i64) -> Program {
        let mut p = Program::default();
        let x = p.new_var(Aval::new(&[5, 4], DType::F64));
        p.inputs.push(x);
        let eye = Creation::Eye {
            rows: 4,
            cols: 4,
            offset,
            dtype: DType::F64,
        };
        let eye = p.push(eye, &[]);
        let basis = p.push(Structural::Reshape(vec![4, 4, 1]), &[eye]);
        let x3 = p.push(Structural::Reshape(vec![1, 5, 4]), &[x]);
        let out = p.push(MatMul, &[x3, basis]);
        p.outputs.push(out);
        p
    }

    fn run(program: Program, x: &ndarray::Array2<f64>) -> ndarray::ArrayD<f64> {
        let plan = super::super::Plan::new(program);
        let x = Arc::new(Data::F64(x.clone().into_dyn()));
        match &*plan.run(&[x], false).unwrap()[0] {
            Data::F64(a) => a.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_product_with_the_identity_basis_is_a_transpose() {
        let x = ndarray::Array2::from_shape_fn((5, 4), |(i, j)| (i * 4 + j) as f64 - 3.5);
        let simplified = crate::exec::simplify(product_with_basis(0));
        let text = simplified.to_string();
        assert!(!text.contains("matmul"), "{text}");
        let want = ndarray::Array3::from_shape_fn((4, 5, 1), |(d, r, _)| x[[r, d]]);
        assert_eq!(run(product_with_basis(0), &x), want.into_dyn());
        // A shifted basis (a row of zeros, the rest out of order) stays a product.
        let shifted = crate::exec::simplify(product_with_basis(1)).to_string();
        assert!(shifted.contains("matmul"), "{shifted}");
        let got = run(product_with_basis(1), &x);
        for d in 0..4 {
            for r in 0..5 {
                let want = if d < 3 { x[[r, d + 1]] } else { 0.0 };
                assert_eq!(got[[d, r, 0]], want);
            }
        }
    }

    #[test]
    fn a_known_operand_that_does_not_select_leaves_the_basis_to_be_read() {
        // `x @ I` with `x` a constant: `x` is known but selects nothing, the basis does.
        let x = ndarray::Array2::from_shape_fn((5, 4), |(i, j)| (i * 4 + j) as f64 - 3.5);
        let mut program = product_with_basis(0);
        let input = program.inputs.pop().unwrap();
        let constant = Arc::new(Data::F64(x.clone().into_dyn()));
        program.consts.push((input, constant));
        let text = crate::exec::simplify(program.clone()).to_string();
        assert!(!text.contains("matmul"), "{text}");
        let plan = super::super::Plan::new(program);
        let Data::F64(got) = &*plan.run(&[], false).unwrap()[0] else {
            panic!("f64 out");
        };
        let want = ndarray::Array3::from_shape_fn((4, 5, 1), |(d, r, _)| x[[r, d]]);
        assert_eq!(got, &want.into_dyn());
    }

    #[test]
    fn selections_are_read_from_single_ones_amid_zeros() {
        let m = |values: Vec<f64>| {
            Data::F64(ndarray::ArrayD::from_shape_vec(vec![2, 2], values).unwrap())
        };
        assert_eq!(
            one_hot(&m(vec![0.0, 1.0, 0.0, 0.0]), false),
            Some(vec![Some(1), None])
        );
        assert_eq!(
            one_hot(&m(vec![0.0, 1.0, 1.0, 0.0]), true),
            Some(vec![Some(1), Some(0)])
        );
        assert_eq!(one_hot(&m(vec![1.0, 1.0, 0.0, 0.0]), false), None);
        assert_eq!(one_hot(&m(vec![2.0, 0.0, 0.0, 1.0]), false), None);
        assert!(in_order([Some(0), Some(1)].into_iter(), 2));
        assert!(!in_order([Some(1), Some(0)].into_iter(), 2));
        assert!(!in_order([Some(0)].into_iter(), 2));
    }
}
