//! Sums of matrix products leave the body of their loop: a carry that only adds up matrix
//! products of per-step values, `acc' = acc + A_t @ B_t (+ other terms)`, outputs the factors
//! `A_t` and `B_t` instead, and the loop sums their products itself (see [`Loop::sums`]),
//! a block of steps at a time, with the steps of the block in the contraction of one product:
//! `sum_t A_t @ B_t = [A_1 .. A_K] @ [B_1; ..; B_K] + ...`.
//!
//! Reverse mode builds such loops: the transpose of a loop sums the cotangents of its
//! constants step by step, and the cotangent of a weight `W` read as `W @ r` is an outer
//! product per step (with a batch of tangent directions, a batch of them). Summed in the body,
//! every step reads and writes the whole accumulator, one outer product at a time; a block of
//! steps is one product that the matrix kernel runs at full speed, on factors still in the
//! caches.
//!
//! Loops that do not run on flat buffers stack the factors of all steps and sum them at the
//! end, so their memory grows with the number of steps: a loop whose factors would exceed
//! [`STACK_LIMIT`] keeps summing in its body.

use crate::ir::passes::clean;
use crate::ir::{Eqn, Var};
use crate::primitives::{BinaryOp, Elementwise, Loop, Prim, Program, Structural};
use crate::storage::Aval;

/// The most bytes the stacked factors of one loop may take.
const STACK_LIMIT: usize = 64 << 20;

/// `program` with the sums of matrix products of its loops moved out of their bodies.
pub(super) fn move_accumulations(mut program: Program) -> Program {
    if !program.eqns.iter().any(|e| matches!(e.prim, Prim::Loop(_))) {
        return program;
    }
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for eqn in std::mem::take(&mut program.eqns) {
        let Prim::Loop(the_loop) = &eqn.prim else {
            eqns.push(eqn);
            continue;
        };
        let Some(moved) = Moved::find(the_loop) else {
            eqns.push(eqn);
            continue;
        };
        let n_out = eqn.outputs.len();
        let mut outputs = eqn.outputs.clone();
        // The moved carries now leave the loop partly summed; the sum ends after it.
        let mut finals = Vec::new();
        for acc in &moved.accumulators {
            let partial = program.new_var(program.aval(outputs[acc.carry]).clone());
            finals.push((partial, std::mem::replace(&mut outputs[acc.carry], partial)));
        }
        // One output per pair of factors: `A^T @ B` over the steps (`[x, y]`).
        let sums: Vec<Var> = moved.body.outputs[n_out..]
            .chunks_exact(2)
            .map(|pair| {
                let (a, b) = (moved.body.aval(pair[0]), moved.body.aval(pair[1]));
                program.new_var(Aval::new(&[a.shape[1], b.shape[1]], a.dtype))
            })
            .collect();
        outputs.extend(&sums);
        let mut rewritten = the_loop.clone();
        rewritten.sums = sums.len();
        rewritten.units = the_loop.units.as_ref().map(|units| {
            let (ins, outs) = &**units;
            let mut outs = outs.clone();
            outs.resize(outputs.len(), None);
            std::sync::Arc::new((ins.clone(), outs))
        });
        rewritten.body = std::sync::Arc::new(moved.body);
        eqns.push(Eqn {
            prim: Prim::Loop(rewritten),
            inputs: eqn.inputs.clone(),
            outputs,
            source: eqn.source,
        });
        let mut after = Builder {
            program: &mut program,
            eqns: &mut eqns,
            source: eqn.source,
        };
        let mut sums = sums.into_iter();
        for (acc, (partial, output)) in moved.accumulators.iter().zip(finals) {
            let mut sum = partial;
            for (k, term) in acc.terms.iter().enumerate() {
                let product = sums.next().expect("a sum per term");
                let product = term.laid_out(&mut after, product);
                let last = k + 1 == acc.terms.len();
                sum = after.add(sum, product, last.then_some(output));
            }
        }
    }
    program.eqns = eqns;
    program
}

/// A loop's body rewritten: the carries that summed matrix products keep only their other
/// terms, and the factors of the moved products follow the body's outputs, two per product.
struct Moved {
    body: Program,
    accumulators: Vec<Accumulator>,
}

/// A carry whose matrix products the loop sums outside its body.
struct Accumulator {
    carry: usize,
    terms: Vec<Term>,
}

/// A product `A_t @ B_t` summed over the steps, whose factors the body outputs as `A_t` with
/// its contracted axis first and flattened to `[k, x]`, and `B_t` likewise as `[k, y]`: the
/// sum is `A^T @ B` over the stacked factors (`[x, y]`), then laid out as the accumulator.
struct Term {
    /// The accumulator's shape, `batch ++ [m, n]`.
    shape: Vec<usize>,
    /// Where the batch is, when it is `B`'s: `x = m` and `y = batch * n`, so the sum is
    /// `[m, batch, n]` and its first two axes swap. (When it is `A`'s, `x = batch * m`,
    /// `y = n`, and the sum is already in order.)
    batch_of_b: Option<(usize, usize, usize)>,
}

impl Moved {
    /// The body of `l` with its sums of matrix products moved out, or `None` when it has
    /// none (or they would stack too many bytes).
    fn find(l: &Loop) -> Option<Moved> {
        let body = &*l.body;
        let mut uses = vec![0usize; body.avals.len()];
        for eqn in &body.eqns {
            for v in &eqn.inputs {
                uses[v.index()] += 1;
            }
        }
        for v in &body.outputs {
            uses[v.index()] += 1;
        }
        let mut defined_by: Vec<Option<&Eqn<Prim>>> = vec![None; body.avals.len()];
        for eqn in &body.eqns {
            for v in &eqn.outputs {
                defined_by[v.index()] = Some(eqn);
            }
        }
        let found: Vec<(usize, Vec<Var>, Vec<Var>)> = (0..l.carry)
            .filter_map(|k| {
                let (products, rest) = sum_of(body, &uses, &defined_by, l.consts + k, k)?;
                (!products.is_empty()).then_some((k, products, rest))
            })
            .collect();
        if found.is_empty() {
            return None;
        }
        let mut new = body.clone();
        let mut eqns = std::mem::take(&mut new.eqns);
        let mut build = Builder {
            program: &mut new,
            eqns: &mut eqns,
            source: None,
        };
        let (mut factors, mut accumulators, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        for (k, products, mut rest) in found {
            let mut terms = Vec::new();
            for v in products {
                let matmul = defined_by[v.index()].expect("a product");
                match Term::of(body, v, matmul) {
                    Some(term) => {
                        let (a, b) = (matmul.inputs[0], matmul.inputs[1]);
                        factors.push(build.axis_first_flat(a, body.aval(a).shape.len() - 1));
                        factors.push(build.axis_first_flat(b, body.aval(b).shape.len() - 2));
                        bytes += [a, b]
                            .iter()
                            .map(|&u| {
                                let aval = body.aval(u);
                                aval.numel() * aval.dtype.size_bytes()
                            })
                            .sum::<usize>();
                        terms.push(term);
                    }
                    None => rest.push(v),
                }
            }
            if terms.is_empty() {
                continue;
            }
            let mut sum = body.inputs[l.consts + k];
            for v in rest {
                sum = build.add(sum, v, None);
            }
            build.program.outputs[k] = sum;
            accumulators.push(Accumulator { carry: k, terms });
        }
        if accumulators.is_empty() {
            return None;
        }
        if bytes.saturating_mul(l.length) > STACK_LIMIT {
            return None;
        }
        new.eqns = eqns;
        new.outputs.extend(factors);
        Some(Moved {
            body: clean(new),
            accumulators,
        })
    }
}

/// When body output `k` is input `carry` plus other values, added up by `add`s that nothing
/// else reads: the matrix products among those values that nothing else reads, then the other
/// values. `None` when the carry is not such a sum.
fn sum_of(
    body: &Program,
    uses: &[usize],
    defined_by: &[Option<&Eqn<Prim>>],
    carry: usize,
    k: usize,
) -> Option<(Vec<Var>, Vec<Var>)> {
    let acc = body.inputs[carry];
    let root = body.outputs[k];
    let aval = body.aval(acc);
    if uses[acc.index()] != 1 || uses[root.index()] != 1 || root == acc {
        return None;
    }
    let (mut products, mut rest, mut found) = (Vec::new(), Vec::new(), false);
    let mut pending = vec![root];
    while let Some(v) = pending.pop() {
        if v == acc {
            found = true;
            continue;
        }
        let eqn = defined_by[v.index()].filter(|_| uses[v.index()] == 1 && body.aval(v) == aval);
        match eqn.map(|e| (&e.prim, e)) {
            Some((Prim::Elementwise(Elementwise::Binary(BinaryOp::Add)), e))
                if e.inputs.iter().all(|&u| body.aval(u) == aval) =>
            {
                pending.extend(&e.inputs);
            }
            Some((Prim::MatMul(_), _)) => products.push(v),
            _ => rest.push(v),
        }
    }
    found.then_some((products, rest))
}

/// Appends equations to a program.
struct Builder<'a> {
    program: &'a mut Program,
    eqns: &'a mut Vec<Eqn<Prim>>,
    source: Option<&'static std::panic::Location<'static>>,
}

impl Builder<'_> {
    /// `prim(inputs)` into `output` (a new variable of `aval` when `None`).
    fn push(&mut self, prim: Prim, inputs: Vec<Var>, aval: Aval, output: Option<Var>) -> Var {
        let out = output.unwrap_or_else(|| self.program.new_var(aval));
        self.eqns.push(Eqn {
            prim,
            inputs,
            outputs: vec![out],
            source: self.source,
        });
        out
    }

    fn add(&mut self, a: Var, b: Var, output: Option<Var>) -> Var {
        let aval = self.program.aval(a).clone();
        let add = Prim::Elementwise(Elementwise::Binary(BinaryOp::Add));
        self.push(add, vec![a, b], aval, output)
    }

    fn reshape(&mut self, v: Var, shape: &[usize]) -> Var {
        let aval = Aval::new(shape, self.program.aval(v).dtype);
        let prim = Prim::Structural(Structural::Reshape(shape.to_vec()));
        self.push(prim, vec![v], aval, None)
    }

    fn transpose(&mut self, v: Var, perm: &[usize]) -> Var {
        let from = self.program.aval(v);
        let shape: Vec<usize> = perm.iter().map(|&p| from.shape[p]).collect();
        let aval = Aval::new(&shape, from.dtype);
        let prim = Prim::Structural(Structural::Transpose(perm.to_vec()));
        self.push(prim, vec![v], aval, None)
    }

    /// `v` with `axis` first and the other axes flattened: `[shape[axis], rest]`.
    fn axis_first_flat(&mut self, v: Var, axis: usize) -> Var {
        let shape = self.program.aval(v).shape.clone();
        let d = shape[axis];
        let rest = shape.iter().product::<usize>() / d.max(1);
        let moved = if d == 1 || axis == 0 {
            v
        } else {
            let mut perm = vec![axis];
            perm.extend((0..shape.len()).filter(|&i| i != axis));
            self.transpose(v, &perm)
        };
        self.reshape(moved, &[d, rest])
    }
}

impl Term {
    /// The term of the product `v` (defined by `matmul`), when one of its factors has no
    /// batch: then the batch of the other folds into the rows or columns of one product.
    fn of(body: &Program, v: Var, matmul: &Eqn<Prim>) -> Option<Term> {
        let (a, b) = (body.aval(matmul.inputs[0]), body.aval(matmul.inputs[1]));
        let batch = |s: &[usize]| s[..s.len() - 2].iter().product::<usize>();
        let shape = body.aval(v).shape.clone();
        let batch_of_b = if batch(&a.shape) != 1 {
            (batch(&b.shape) == 1).then_some(None)?
        } else if batch(&b.shape) != 1 {
            Some((
                a.shape[a.shape.len() - 2],
                batch(&b.shape),
                shape[shape.len() - 1],
            ))
        } else {
            None
        };
        Some(Term { shape, batch_of_b })
    }

    /// The sum over the steps (`[x, y]`, a sum of the loop) laid out as the accumulator.
    fn laid_out(&self, build: &mut Builder, product: Var) -> Var {
        match self.batch_of_b {
            None => build.reshape(product, &self.shape),
            Some((m, batch, n)) => {
                let split = build.reshape(product, &[m, batch, n]);
                let swapped = build.transpose(split, &[1, 0, 2]);
                build.reshape(swapped, &self.shape)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Program, Scan, Tensor, make_program};

    /// Values `sin(0.37 k + offset)` in `shape`.
    fn filled(shape: &[usize], offset: f64) -> Tensor {
        let n = shape.iter().product();
        let values = (0..n).map(|k| (0.37 * k as f64 + offset).sin()).collect();
        Tensor::from_vec(values, shape).unwrap()
    }

    /// A loop summing `a_t @ b_t` over the steps of `a` and `b` into an accumulator of
    /// `shape` (and `sin(a_t @ b_t)`, when `extra`), planned (see [`planned`]).
    fn sum_of_products(a: &Tensor, b: &Tensor, shape: &[usize], extra: bool) -> Program {
        let f = |a: &Tensor, b: &Tensor| {
            let body = |acc: &Tensor, (x, y): &(Tensor, Tensor)| {
                let product = x.matmul(y);
                let extra = if extra { Some(product.sin()) } else { None };
                let sum = acc + product;
                (extra.map_or(sum.clone(), |e| sum + e), ())
            };
            let init = Tensor::zeros(shape);
            let xs = (a.clone(), b.clone());
            Scan::new().scan(body, &init, &xs).unwrap().0
        };
        planned(f, a, b)
    }

    /// `f` planned, after checking that the plan computes what `f` does run as written.
    fn planned(f: impl Fn(&Tensor, &Tensor) -> Tensor, a: &Tensor, b: &Tensor) -> Program {
        let plan = crate::exec::Plan::new(make_program(&f, (a, b)).unwrap());
        let ins = [a.data().unwrap().clone(), b.data().unwrap().clone()];
        let want = f(a, b).to_vec::<f64>().unwrap();
        // On flat buffers, and (checking each value) through the body's plan.
        for checked in [false, true] {
            let planned = Tensor::from_shared(plan.run(&ins, checked).unwrap()[0].clone());
            let got = planned.to_vec::<f64>().unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                    "{got:?} != {want:?}"
                );
            }
        }
        plan.program
    }

    /// The body of the first loop of a program, printed.
    fn body_text(program: &Program) -> String {
        let text = program.to_string();
        let body = text.lines().skip_while(|l| !l.contains("jaxpr="));
        body.take_while(|l| !l.trim_start().starts_with(']'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_sum_of_products_with_a_batch_on_either_side_leaves_the_body() {
        // The batch on the left (the cotangent of `W` with a batch of tangents, times `r`),
        // on the right, on neither; contractions of one and of several entries.
        let cases: [(&[usize], &[usize], &[usize]); 4] = [
            (&[7, 4, 3, 1], &[7, 1, 1, 5], &[4, 3, 5]),
            (&[7, 1, 3, 2], &[7, 4, 2, 5], &[4, 3, 5]),
            (&[7, 3, 2], &[7, 2, 5], &[3, 5]),
            (&[7, 2, 4, 3, 2], &[7, 2, 5], &[2, 4, 3, 5]),
        ];
        for (a, b, acc) in cases {
            let planned = sum_of_products(&filled(a, 0.1), &filled(b, 0.7), acc, false);
            let body = body_text(&planned);
            assert!(!body.contains("matmul"), "{planned}");
            assert!(planned.to_string().contains("sums=1"), "{planned}");
        }
    }

    #[test]
    fn other_terms_of_the_sum_stay_in_the_loop() {
        let (a, b) = (filled(&[6, 4, 3, 1], 0.2), filled(&[6, 1, 1, 5], 0.4));
        let planned = sum_of_products(&a, &b, &[4, 3, 5], true);
        // `sin(a_t @ b_t)` reads the product, which therefore stays, with the sine.
        let body = body_text(&planned);
        assert!(body.contains("matmul") && body.contains("sin"), "{planned}");
    }

    #[test]
    fn products_move_out_and_other_terms_stay() {
        let f = |a: &Tensor, b: &Tensor| {
            let body = |acc: &Tensor, (x, y): &(Tensor, Tensor)| {
                (acc + x.matmul(y) + (x.matmul(&y.sin()).cos()), ())
            };
            let xs = (a.clone(), b.clone());
            Scan::new()
                .scan(body, &Tensor::zeros(&[4, 3, 5]), &xs)
                .unwrap()
                .0
        };
        let (a, b) = (filled(&[6, 4, 3, 1], 0.2), filled(&[6, 1, 1, 5], 0.4));
        let program = planned(f, &a, &b);
        // One product summed by the loop; the one under the cosine stays in its body.
        let body = body_text(&program);
        assert_eq!(body.matches("matmul").count(), 1, "{program}");
        assert!(body.contains("cos"), "{program}");
    }

    #[test]
    fn products_batched_on_both_sides_stay_in_the_loop() {
        let (a, b) = (filled(&[5, 4, 3, 2], 0.3), filled(&[5, 4, 2, 6], 0.9));
        let planned = sum_of_products(&a, &b, &[4, 3, 6], false);
        assert!(body_text(&planned).contains("matmul"), "{planned}");
    }

    #[test]
    fn a_loop_whose_factors_would_stack_too_many_bytes_sums_in_place() {
        // Factors of 200 values a step: moved for a few steps, not past the limit.
        let program = |length: usize| {
            let f = |a: &Tensor, b: &Tensor| {
                let body =
                    |(acc, c): &(Tensor, Tensor), _: &()| ((acc + a.matmul(&(b * c)), c + 1.0), ());
                let init = (Tensor::zeros(&[100, 100]), Tensor::scalar(0.0));
                Scan::new()
                    .length(length)
                    .scan(body, &init, &())
                    .unwrap()
                    .0
                    .0
            };
            let (a, b) = (filled(&[100, 1], 0.1), filled(&[1, 100], 0.2));
            make_program(f, (&a, &b)).unwrap()
        };
        let in_loop = |p: Program| body_text(&super::move_accumulations(p)).contains("matmul");
        assert!(!in_loop(program(10)));
        assert!(in_loop(program(super::STACK_LIMIT / (8 * 200) + 1)));
    }
}
