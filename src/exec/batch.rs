//! Batches shared among the threads.
//!
//! A program that treats the rows of a batch alike and apart (elementwise work, products with
//! shared weights, sums over the rows) gives the same results when each thread runs it on
//! rows of its own and the sums over rows are added up afterwards. For a small model's loss
//! (a few hundred rows through layers of tens of units), that is one fork per call where
//! sharing each of its small operations among the threads would cost a wake-up per
//! operation. [`BatchSplit::new`] follows the batch axis through the program, equation by
//! equation, and gives up at the first that mixes rows (a slice of the batch, a gather, a
//! loop over it); the parts are programs of their own, traced again for their rows.

use std::sync::Arc;

use rayon::prelude::*;

use super::Plan;
use crate::error::{Error, Result};
use crate::primitives::{BinaryOp, Elementwise, Prim, Program, ReduceOp, Structural, UnaryOp};
use crate::storage::{Aval, Data};
use crate::tensor::Tensor;
use crate::trace::Tracing;

/// Where a value's rows of the batch are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rows {
    /// The value does not depend on the rows: each part computes all of it.
    Shared,
    /// Split along this axis: each part holds its own rows.
    Along(usize),
    /// A sum over the rows: each part holds the sum over its rows.
    Partial,
}

/// A program run as parts of its batch side by side.
#[derive(Debug)]
pub(crate) struct BatchSplit {
    /// One plan per part, for rows `bounds[p]..bounds[p + 1]`.
    parts: Vec<Plan>,
    bounds: Vec<usize>,
    /// The batch axis of each input that is split.
    inputs: Vec<Option<usize>>,
    /// How the parts' values of each output make the whole.
    outputs: Vec<Rows>,
}

/// Fewest rows per part: fewer leave each operation too little work for its fixed costs.
const PART_ROWS: usize = 32;

/// Least work (elements computed, multiply-adds of products) for a split, as for a product's
/// parts: less gains less than the fork costs, a sleeping thread's wake-up and a wait for a
/// half whose core is busy (hvp_mlp_1089, 1.5 million: 0.14 ms on one thread, 0.11-0.21 ms
/// in two parts on a 2-core VM).
const LEAST_WORK: usize = 1 << 21;

/// The elements a program computes, and the multiply-adds of its products.
fn work(program: &Program) -> usize {
    (program.eqns.iter())
        .map(|eqn| {
            let out = program.aval(eqn.outputs[0]).numel();
            match eqn.prim {
                Prim::MatMul(_) => {
                    let a = &program.aval(eqn.inputs[0]).shape;
                    out.saturating_mul(a.last().copied().unwrap_or(1))
                }
                _ => out,
            }
        })
        .fold(0, usize::saturating_add)
}

impl BatchSplit {
    /// `program` split into `parts` parts of the leading axis of its inputs and constants of
    /// `batch` rows, if every equation keeps the rows apart.
    fn with_batch(program: &Program, batch: usize, parts: usize) -> Option<BatchSplit> {
        let inputs: Vec<Option<usize>> = (program.inputs.iter())
            .map(|&v| (program.aval(v).shape.first() == Some(&batch)).then_some(0))
            .collect();
        let followed = follow(program, &inputs, batch)?;
        let bounds: Vec<usize> = (0..=parts).map(|p| p * batch / parts).collect();
        let plans = (0..parts)
            .into_par_iter()
            .map(|p| part(program, &followed, bounds[p]..bounds[p + 1]).map(Plan::new))
            .collect::<Option<Vec<Plan>>>()?;
        let rows = &followed.rows;
        Some(BatchSplit {
            parts: plans,
            bounds,
            inputs,
            outputs: program.outputs.iter().map(|v| rows[v.index()]).collect(),
        })
    }

    /// `program` split among the threads along the leading axis of some of its inputs and
    /// constants (the longest that every equation keeps apart), when there are threads to
    /// share, rows enough for each and work enough for a fork.
    pub fn new(program: &Program) -> Option<BatchSplit> {
        let threads = rayon::current_num_threads();
        if threads < 2 || work(program) < LEAST_WORK {
            return None;
        }
        let consts = program.consts.iter().map(|(v, _)| v);
        let mut batches: Vec<usize> = (program.inputs.iter().chain(consts))
            .filter_map(|&v| program.aval(v).shape.first().copied())
            .filter(|&b| b >= 2 * PART_ROWS)
            .collect();
        batches.sort_unstable_by(|a, b| b.cmp(a));
        batches.dedup();
        batches.into_iter().take(3).find_map(|batch| {
            let parts = threads.min(batch / PART_ROWS);
            BatchSplit::with_batch(program, batch, parts)
        })
    }

    /// How many parts run side by side.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// The rows of the batch.
    pub fn rows(&self) -> usize {
        self.bounds.last().copied().unwrap_or(0)
    }

    /// Runs the parts side by side on their rows of the inputs and puts their outputs
    /// together: rows joined, sums added.
    pub fn run(&self, inputs: &[Arc<Data>]) -> Result<Vec<Arc<Data>>> {
        let results: Vec<Vec<Arc<Data>>> = (0..self.parts.len())
            .into_par_iter()
            .map(|p| {
                let rows = self.bounds[p]..self.bounds[p + 1];
                let mine = (inputs.iter().zip(&self.inputs))
                    .map(|(x, axis)| match axis {
                        Some(axis) => rows_of(x, *axis, rows.clone()).map(Arc::new),
                        None => Ok(x.clone()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.parts[p].run(&mine, false)
            })
            .collect::<Result<_>>()?;
        (self.outputs.iter().enumerate())
            .map(|(k, rows)| {
                let values: Vec<&Data> = results.iter().map(|r| &*r[k]).collect();
                Ok(match rows {
                    Rows::Shared => results[0][k].clone(),
                    Rows::Along(axis) => Arc::new(one(Structural::Concat(*axis), &values)?),
                    Rows::Partial => {
                        let add = Prim::from(Elementwise::Binary(BinaryOp::Add));
                        let mut sum = values[0].clone();
                        for value in &values[1..] {
                            sum = one(add.clone(), &[&sum, value])?;
                        }
                        Arc::new(sum)
                    }
                })
            })
            .collect()
    }
}

/// The one result of `prim` on `ins`.
fn one(prim: impl Into<Prim>, ins: &[&Data]) -> Result<Data> {
    (prim.into().eval(ins)?.pop()).ok_or_else(|| Error::shape("batch", "a result"))
}

/// Rows `rows` of `x` along `axis`.
fn rows_of(x: &Data, axis: usize, rows: std::ops::Range<usize>) -> Result<Data> {
    let shape = x.shape();
    let mut start = vec![0; shape.len()];
    let mut stop = shape.to_vec();
    (start[axis], stop[axis]) = (rows.start, rows.end);
    let step = vec![1; shape.len()];
    one(Structural::Slice { start, stop, step }, &[x])
}

/// The batch followed through a program.
struct Followed {
    /// Where the rows of every value are, by variable index.
    rows: Vec<Rows>,
    /// For each equation, the axis along which each shared operand spanning the rows is cut
    /// to a part's rows.
    cuts: Vec<Vec<Option<usize>>>,
}

/// The rows of every value of `program`, given those of its inputs (`Some(axis)`: split
/// along `axis`; constants of `batch` leading rows are split along them); `None` at the
/// first equation that mixes rows.
fn follow(program: &Program, inputs: &[Option<usize>], batch: usize) -> Option<Followed> {
    let mut rows = vec![Rows::Shared; program.avals.len()];
    let mut cuts = Vec::with_capacity(program.eqns.len());
    for (&v, axis) in program.inputs.iter().zip(inputs) {
        rows[v.index()] = axis.map_or(Rows::Shared, Rows::Along);
    }
    for (v, data) in &program.consts {
        if data.shape().first() == Some(&batch) {
            rows[v.index()] = Rows::Along(0);
        }
    }
    for eqn in &program.eqns {
        let ins: Vec<Rows> = eqn.inputs.iter().map(|v| rows[v.index()]).collect();
        let avals: Vec<&Aval> = eqn.inputs.iter().map(|&v| program.aval(v)).collect();
        let out = program.aval(eqn.outputs[0]);
        let (result, cut) = if ins.iter().all(|&r| r == Rows::Shared) {
            (Rows::Shared, vec![None; ins.len()])
        } else {
            rule(&eqn.prim, &ins, &avals, out, batch)?
        };
        for &v in &eqn.outputs {
            rows[v.index()] = result;
        }
        cuts.push(cut);
    }
    Some(Followed { rows, cuts })
}

/// The rows of an equation's result from those of its operands (not all shared), and, for
/// each operand, the axis along which a shared one must be cut to the part's rows.
fn rule(
    prim: &Prim,
    ins: &[Rows],
    avals: &[&Aval],
    out: &Aval,
    batch: usize,
) -> Option<(Rows, Vec<Option<usize>>)> {
    let no_cuts = vec![None; ins.len()];
    let partial = ins.contains(&Rows::Partial);
    match prim {
        Prim::Elementwise(op) if partial => {
            // Sums over rows add up after linear operations only.
            let shared = |i: usize| ins[i] == Rows::Shared;
            let linear = match op {
                Elementwise::Unary(UnaryOp::Neg) | Elementwise::Convert(_) => true,
                Elementwise::Binary(BinaryOp::Add | BinaryOp::Sub) => !ins.contains(&Rows::Shared),
                Elementwise::Binary(BinaryOp::Mul) => shared(0) || shared(1),
                Elementwise::Binary(BinaryOp::Div) => shared(1),
                _ => false,
            };
            let no_rows = !ins.iter().any(|r| matches!(r, Rows::Along(_)));
            (linear && no_rows).then_some((Rows::Partial, no_cuts))
        }
        Prim::Elementwise(_) => {
            // Operands align at their last axes (NumPy broadcasting).
            let rank = out.shape.len();
            let mut axis = None;
            for (r, a) in ins.iter().zip(avals) {
                if let Rows::Along(k) = *r {
                    let aligned = k + rank - a.shape.len();
                    if axis.is_some_and(|x| x != aligned) || a.shape[k] != batch {
                        return None;
                    }
                    axis = Some(aligned);
                }
            }
            let axis = axis?;
            // A shared operand spanning the rows is cut to the part's.
            let cuts = (ins.iter().zip(avals))
                .map(|(r, a)| {
                    let own = (axis + a.shape.len()).checked_sub(rank)?;
                    (*r == Rows::Shared && a.shape[own] != 1).then_some(own)
                })
                .collect();
            Some((Rows::Along(axis), cuts))
        }
        Prim::MatMul(_) => matmul(ins, avals, out, batch),
        Prim::Reduce(reduce) => match ins[0] {
            Rows::Along(k) if reduce.axes.contains(&k) => {
                (reduce.op == ReduceOp::Sum).then_some((Rows::Partial, no_cuts))
            }
            Rows::Along(k) => {
                let before = reduce.axes.iter().filter(|&&a| a < k).count();
                Some((Rows::Along(k - before), no_cuts))
            }
            Rows::Partial => (reduce.op == ReduceOp::Sum).then_some((Rows::Partial, no_cuts)),
            Rows::Shared => Some((Rows::Shared, no_cuts)),
        },
        Prim::Structural(op) => {
            let Rows::Along(k) = ins[0] else {
                // Sums over rows add up after moves and copies of their elements.
                let moves = matches!(
                    op,
                    Structural::Transpose(_) | Structural::Reshape(_) | Structural::Broadcast(_)
                );
                return (moves && ins.len() == 1).then_some((Rows::Partial, no_cuts));
            };
            let shape = &avals[0].shape;
            let axis = match op {
                Structural::Transpose(perm) => perm.iter().position(|&a| a == k)?,
                Structural::Broadcast(_) => k + out.shape.len() - shape.len(),
                Structural::Reshape(_) => {
                    // The rows stay an axis of their own: as many elements before and after.
                    let before: usize = shape[..k].iter().product();
                    let mut seen = 1;
                    let j = (out.shape.iter()).position(|&d| {
                        let here = seen == before && d == batch;
                        seen *= d;
                        here
                    })?;
                    let after = |s: &[usize]| s.iter().product::<usize>();
                    (after(&shape[k + 1..]) == after(&out.shape[j + 1..])).then_some(j)?
                }
                _ => return None,
            };
            (out.shape[axis] == batch).then_some((Rows::Along(axis), no_cuts))
        }
        Prim::Creation(_) | Prim::Loop(_) => None,
    }
}

/// The rows of a matrix product `[.., m, k] @ [.., k, n]`.
fn matmul(
    ins: &[Rows],
    avals: &[&Aval],
    out: &Aval,
    batch: usize,
) -> Option<(Rows, Vec<Option<usize>>)> {
    let (ra, rb, rank) = (avals[0].shape.len(), avals[1].shape.len(), out.shape.len());
    let cut_none = vec![None, None];
    match (ins[0], ins[1]) {
        (Rows::Partial, Rows::Shared) | (Rows::Shared, Rows::Partial) => {
            Some((Rows::Partial, cut_none))
        }
        // Rows of a against shared columns, and the other way round.
        (Rows::Along(x), Rows::Shared) if x == ra - 2 => Some((Rows::Along(rank - 2), cut_none)),
        (Rows::Shared, Rows::Along(y)) if y == rb - 1 => Some((Rows::Along(rank - 1), cut_none)),
        // Rows summed over by the product: a sum per part, the shared operand cut.
        (Rows::Along(x), Rows::Shared) if x == ra - 1 => {
            Some((Rows::Partial, vec![None, Some(rb - 2)]))
        }
        (Rows::Shared, Rows::Along(y)) if y == rb - 2 => {
            Some((Rows::Partial, vec![Some(ra - 1), None]))
        }
        (Rows::Along(x), Rows::Along(y)) if x == ra - 1 && y == rb - 2 => {
            Some((Rows::Partial, cut_none))
        }
        // Rows along a batch axis of the product.
        (a, b) => {
            let aligned = |r: Rows, own: usize| match r {
                Rows::Along(k) if k + 2 < own => Some(Some(k + rank - own)),
                Rows::Shared => Some(None),
                _ => None,
            };
            let (xa, xb) = (aligned(a, ra)?, aligned(b, rb)?);
            let axis = match (xa, xb) {
                (Some(x), Some(y)) if x == y => x,
                (Some(x), None) | (None, Some(x)) => x,
                _ => return None,
            };
            // A shared operand's batch axis spanning the rows is cut.
            let cut = |r: Rows, own: usize, shape: &[usize]| {
                let at = (axis + own).checked_sub(rank)?;
                (r == Rows::Shared && at + 2 < own && shape[at] != 1).then_some(at)
            };
            let cuts = vec![cut(a, ra, &avals[0].shape), cut(b, rb, &avals[1].shape)];
            (out.shape[axis] == batch).then_some((Rows::Along(axis), cuts))
        }
    }
}

/// The program of the part of `program` with rows `part`: traced again, each equation on its
/// operands' rows of the part (shared operands that span the rows cut to them), the shapes
/// its parameters name along the rows shortened.
fn part(program: &Program, followed: &Followed, part: std::ops::Range<usize>) -> Option<Program> {
    let rows = &followed.rows;
    let tracing = Tracing::new();
    let len = part.end - part.start;
    let mut env: Vec<Option<Tensor>> = vec![None; program.avals.len()];
    for &v in &program.inputs {
        let mut aval = program.aval(v).clone();
        if let Rows::Along(axis) = rows[v.index()] {
            aval.shape[axis] = len;
        }
        env[v.index()] = Some(tracing.input(&aval));
    }
    for (v, data) in &program.consts {
        let mine = match rows[v.index()] {
            Rows::Along(axis) => rows_of(data, axis, part.clone()).ok()?,
            _ => (**data).clone(),
        };
        env[v.index()] = Some(tracing.constant(mine));
    }
    for (eqn, cuts) in program.eqns.iter().zip(&followed.cuts) {
        let operands: Vec<Tensor> = (eqn.inputs.iter().zip(cuts))
            .map(|(v, cut)| {
                let t = env[v.index()].clone().expect("defined before use");
                match cut {
                    Some(axis) => {
                        t.slice_along(*axis as isize, part.start as isize..part.end as isize, 1)
                    }
                    None => t,
                }
            })
            .collect();
        let prim = match (&eqn.prim, rows[eqn.outputs[0].index()]) {
            (Prim::Structural(Structural::Reshape(shape)), Rows::Along(axis)) => {
                let mut shape = shape.clone();
                shape[axis] = len;
                Prim::from(Structural::Reshape(shape))
            }
            (Prim::Structural(Structural::Broadcast(shape)), Rows::Along(axis)) => {
                let mut shape = shape.clone();
                shape[axis] = len;
                Prim::from(Structural::Broadcast(shape))
            }
            (prim, _) => prim.clone(),
        };
        let refs: Vec<&Tensor> = operands.iter().collect();
        let outs = tracing.emit(prim, &refs).ok()?;
        for (&v, t) in eqn.outputs.iter().zip(outs) {
            env[v.index()] = Some(t);
        }
    }
    let outputs: Vec<Tensor> = (program.outputs.iter())
        .map(|v| env[v.index()].clone().expect("defined"))
        .collect();
    tracing.finish(&outputs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tensor, hvp, jacrev, make_program};

    fn matrix(rows: usize, cols: usize, scale: f64) -> Tensor {
        let values = (0..rows * cols).map(|k| scale * (0.37 * k as f64 + 0.1).sin());
        Tensor::from_vec(values.collect::<Vec<f64>>(), &[rows, cols]).unwrap()
    }

    fn data(t: &Tensor) -> Arc<Data> {
        t.data().unwrap().clone()
    }

    /// The outputs of `program` on `inputs`, whole and in `parts` parts of `batch` rows.
    fn whole_and_split(program: &Program, inputs: &[Tensor], batch: usize, parts: usize) {
        let inputs: Vec<Arc<Data>> = inputs.iter().map(data).collect();
        let whole = Plan::new(program.clone()).run(&inputs, false).unwrap();
        let split = BatchSplit::with_batch(program, batch, parts).expect("splits");
        assert_eq!(split.parts(), parts);
        let got = split.run(&inputs).unwrap();
        assert_eq!(got.len(), whole.len());
        for (g, w) in got.iter().zip(&whole) {
            let (Data::F64(g), Data::F64(w)) = (&**g, &**w) else {
                panic!("f64 outputs");
            };
            assert_eq!(g.shape(), w.shape());
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_batch_mean_loss_and_its_derivatives_add_up_over_parts() {
        // Rows through a layer (products with shared weights, a shared bias), the mean over
        // rows and a product over them (sums per part), a value per row (sums over the other
        // axis, a reshape: joined), and a constant spanning the rows (each part's rows).
        let weights = matrix(4, 3, 0.5);
        let per_row = matrix(10, 1, 1.0);
        let f = |x: &Tensor, w: &Tensor| {
            let h = (x.matmul(w) + 0.1).tanh();
            let loss = ((h.clone() * &per_row).powi(2)).mean();
            let per_row_sum = h.sum_axes(&[1], true).reshape(&[-1]).exp();
            (loss, h.transpose().matmul(&h), per_row_sum)
        };
        let x = matrix(10, 4, 1.0);
        let program = make_program(f, (&x, &weights)).unwrap();
        for parts in [2, 3] {
            whole_and_split(&program, &[x.clone(), weights.clone()], 10, parts);
        }
    }

    #[test]
    fn programs_that_mix_rows_are_not_split() {
        let x = matrix(8, 3, 1.0);
        let mixes = [
            make_program(|x: &Tensor| x.matmul(&x.transpose()).sum(), &x).unwrap(),
            make_program(|x: &Tensor| x.slice_along(0, 1.., 1).sum(), &x).unwrap(),
            make_program(|x: &Tensor| x.reshape(&[-1]).powi(2).sum(), &x).unwrap(),
            make_program(|x: &Tensor| (x.sum() + x).powi(2).sum(), &x).unwrap(),
        ];
        for program in &mixes {
            assert!(BatchSplit::with_batch(program, 8, 2).is_none(), "{program}");
        }
    }

    #[test]
    fn a_jacobian_of_rows_runs_in_parts_of_the_basis_too() {
        // The cotangent basis spans the rows on its own axes: each part reads its columns.
        let (x, w) = (matrix(128, 8, 1.0), matrix(8, 8, 0.3));
        let f = |x: &Tensor, w: &Tensor| (x.matmul(w).tanh() * 2.0).sin();
        let text = jacrev(f).program((&x, &w)).unwrap().to_string();
        if rayon::current_num_threads() > 1 {
            assert!(text.contains("parts of its batch of 128 rows"), "{text}");
        }
        let flat = |node: crate::Node| {
            (node.leaves().iter())
                .flat_map(|t| t.to_vec::<f64>().unwrap())
                .collect::<Vec<_>>()
        };
        let split = flat(jacrev(f).call((&x, &w)).unwrap());
        let whole = flat(jacrev(f).debug_nan(true).call((&x, &w)).unwrap());
        assert_eq!(split, whole);
    }

    #[test]
    fn an_hvp_of_a_batch_mean_loss_runs_in_parts() {
        let x = matrix(4096, 16, 1.0);
        let loss = |w: &Tensor| (x.matmul(w).tanh().powi(2)).mean();
        let w = matrix(16, 16, 0.3);
        let v = matrix(16, 16, 1.0);
        let h = hvp(loss);
        let text = h.program(&w).unwrap().to_string();
        if rayon::current_num_threads() > 1 {
            assert!(text.contains("parts of its batch of 4096 rows"), "{text}");
        }
        let split = h
            .call(&w, &v)
            .unwrap()
            .tensor()
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        // `debug_nan` runs the program whole.
        let whole = hvp(loss).debug_nan(true).call(&w, &v).unwrap();
        let whole = whole.tensor().unwrap().to_vec::<f64>().unwrap();
        for (a, b) in split.iter().zip(&whole) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
