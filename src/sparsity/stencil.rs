//! Hessians read from the stencils of their products.
//!
//! The Hessian-vector products of many sparse problems (chains, grids, banded couplings) take
//! the seed `s` through products with primal values, sums and shifts only, so that
//! `(H s)[k] = sum_d a_d[k] s[k + d]` over a few offsets `d`. The coefficient arrays `a_d` are
//! then the Hessian's entries, `H[k, k + d] = a_d[k]`, and they are cheaper to compute than
//! the products: one array of the variable's shape per offset, and no work per direction.
//! [`coefficients`] finds them by replaying the products' program on symbolic seeds; at the
//! first operation of another form it gives up, and the caller computes the colored products.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::primitives::{BinaryOp, Elementwise, Prim, Program, Structural, UnaryOp};
use crate::storage::{Aval, DType};
use crate::tensor::Tensor;
use crate::trace::{self, Tracing};

/// Where a term reads the seeds: the differentiated leaf, and the offset along each axis.
pub(crate) type Offset = (usize, Vec<isize>);

/// The terms of a [`Linear`] value: a coefficient per offset (`None` for one).
type Terms = BTreeMap<Offset, Option<Tensor>>;

/// The coefficients of a products program that is a stencil of its seeds.
pub(crate) struct Stencil {
    /// The offsets read, sorted: the order of each leaf's coefficient arrays.
    pub offsets: Vec<Offset>,
    /// `inputs -> own outputs ++ coefficients`: for each differentiated leaf `i` and each
    /// offset `(j, d)`, the array (of leaf `i`'s shape) `a` with `H_ij[k, k + d] = a[k]`.
    pub program: Program,
}

/// A value linear in the seeds, `value[c, k] = sum_t coef_t[k] * seed_t[c, k + offset_t]`
/// (zero where `k + offset_t` is outside the seed's leaf), `c` over the directions and `k`
/// over `shape`. A coefficient broadcasts to `shape`; `None` is one.
#[derive(Clone)]
struct Linear {
    shape: Vec<usize>,
    dtype: DType,
    terms: Terms,
}

#[derive(Clone)]
enum Value {
    Known(Tensor),
    Linear(Linear),
}

/// The stencil of `products`, a program from the function's `n_inputs` inputs and then one
/// seed per differentiated leaf (`[directions] ++ leaf shape`) to `n_outputs` own outputs
/// and then one product per leaf (as [`crate::autodiff::hessian_products`] makes it). `None`
/// when an operation on the seeds is not a product with known values, a sum or a shift.
pub(crate) fn coefficients(
    products: &Program,
    n_inputs: usize,
    n_outputs: usize,
) -> Result<Option<Stencil>> {
    let replay = Replay {
        tracing: Tracing::new(),
    };
    let mut env: Vec<Option<Value>> = vec![None; products.avals.len()];
    for (k, &v) in products.inputs.iter().enumerate() {
        let aval = products.aval(v);
        env[v.index()] = Some(match k.checked_sub(n_inputs) {
            None => Value::Known(replay.tracing.input(aval)),
            Some(leaf) => {
                let shape = aval.shape[1..].to_vec();
                let own = (leaf, vec![0; shape.len()]);
                Value::Linear(Linear {
                    shape,
                    dtype: aval.dtype,
                    terms: BTreeMap::from([(own, None)]),
                })
            }
        });
    }
    for (v, data) in &products.consts {
        env[v.index()] = Some(Value::Known(Tensor::from_shared(data.clone())));
    }
    for eqn in &products.eqns {
        let ins: Vec<Value> = eqn
            .inputs
            .iter()
            .map(|v| env[v.index()].clone().expect("defined before use"))
            .collect();
        let known: Option<Vec<&Tensor>> = ins
            .iter()
            .map(|value| match value {
                Value::Known(t) => Some(t),
                Value::Linear(_) => None,
            })
            .collect();
        if let Some(known) = known {
            let outs = trace::with_source(eqn.source, || {
                Tensor::apply_all(eqn.prim.clone(), &known, eqn.outputs.len())
            });
            for (&v, out) in eqn.outputs.iter().zip(outs) {
                env[v.index()] = Some(Value::Known(out));
            }
            continue;
        }
        let [out] = eqn.outputs[..] else {
            return Ok(None);
        };
        match replay.linear(&eqn.prim, &ins, products.aval(out))? {
            Some(linear) => env[out.index()] = Some(Value::Linear(linear)),
            None => return Ok(None),
        }
    }
    let value = |k: usize| env[products.outputs[k].index()].clone().expect("defined");
    let mut own = Vec::with_capacity(n_outputs);
    for k in 0..n_outputs {
        match value(k) {
            Value::Known(t) => own.push(t),
            Value::Linear(_) => return Ok(None),
        }
    }
    // A product that reads no seed is zero: it has no terms.
    let leaves: Vec<(Vec<usize>, Terms)> = (n_outputs..products.outputs.len())
        .map(|k| {
            let aval = products.aval(products.outputs[k]);
            let terms = match value(k) {
                Value::Linear(linear) => linear.terms,
                Value::Known(_) => Terms::new(),
            };
            (aval.shape[1..].to_vec(), terms)
        })
        .collect();
    let mut offsets: Vec<Offset> = leaves
        .iter()
        .flat_map(|(_, terms)| terms.keys().cloned())
        .collect();
    offsets.sort();
    offsets.dedup();
    if offsets.is_empty() {
        // A zero Hessian still has a coefficient array per leaf: they carry its dtype.
        offsets.push((
            0,
            vec![0; leaves.first().map_or(0, |(shape, _)| shape.len())],
        ));
    }
    let dtype = products.aval(products.outputs[n_outputs]).dtype;
    let mut results = own;
    for (shape, terms) in &leaves {
        for offset in &offsets {
            let coef = match terms.get(offset) {
                Some(coef) => coef.clone(),
                None => Some(Tensor::scalar_of(0.0, dtype)),
            };
            results.push(replay.full(coef, shape, dtype)?);
        }
    }
    let program = replay.tracing.finish(&results)?;
    Ok(Some(Stencil { offsets, program }))
}

/// The replay's trace, where the coefficients are computed.
struct Replay {
    tracing: Tracing,
}

impl Replay {
    /// The result of `prim` on operands of which some are linear in the seeds, if it is
    /// linear in them again (of aval `out`).
    fn linear(&self, prim: &Prim, ins: &[Value], out: &Aval) -> Result<Option<Linear>> {
        use Value::{Known, Linear as Lin};
        let same_shape = |a: &Linear| out.shape[1..] == a.shape[..] && out.dtype == a.dtype;
        Ok(match (prim, ins) {
            (Prim::Elementwise(Elementwise::Unary(UnaryOp::Neg)), [Lin(a)]) if same_shape(a) => {
                Some(a.map(|c| -or_one(c, a.dtype)))
            }
            (Prim::Elementwise(Elementwise::Binary(op)), [Lin(a), Lin(b)])
                if matches!(op, BinaryOp::Add | BinaryOp::Sub)
                    && same_shape(a)
                    && same_shape(b) =>
            {
                let minus = *op == BinaryOp::Sub;
                let mut sum = a.clone();
                for (offset, coef) in &b.terms {
                    let coef = or_one(coef.clone(), a.dtype);
                    let term = match sum.terms.remove(offset) {
                        None if minus => -coef,
                        None => coef,
                        Some(mine) => {
                            let mine = or_one(mine, a.dtype);
                            if minus { mine - coef } else { mine + coef }
                        }
                    };
                    sum.terms.insert(offset.clone(), Some(term));
                }
                Some(sum)
            }
            (Prim::Elementwise(Elementwise::Binary(BinaryOp::Mul)), [Lin(a), Known(p)])
            | (Prim::Elementwise(Elementwise::Binary(BinaryOp::Mul)), [Known(p), Lin(a)])
                if same_shape(a) =>
            {
                let Some(p) = per_element(p, out)? else {
                    return Ok(None);
                };
                Some(a.map(|c| c.map_or_else(|| p.clone(), |c| c * &p)))
            }
            (Prim::Elementwise(Elementwise::Binary(BinaryOp::Div)), [Lin(a), Known(p)])
                if same_shape(a) =>
            {
                let Some(p) = per_element(p, out)? else {
                    return Ok(None);
                };
                Some(a.map(|c| or_one(c, a.dtype) / &p))
            }
            (Prim::Structural(Structural::Slice { start, stop, step }), [Lin(a)])
                if step.iter().all(|&s| s == 1) && start[0] == 0 && stop[0] == out.shape[0] =>
            {
                let slice = Prim::Structural(Structural::Slice {
                    start: start[1..].to_vec(),
                    stop: stop[1..].to_vec(),
                    step: step[1..].to_vec(),
                });
                let shift = start[1..].iter().map(|&s| s as isize);
                self.shifted(a, &out.shape[1..], shift.collect(), slice)?
            }
            (Prim::Structural(Structural::Pad { lo, hi, interior }), [Lin(a)])
                if interior.iter().all(|&i| i == 0) && lo[0] == 0 && hi[0] == 0 =>
            {
                let pad = Prim::Structural(Structural::Pad {
                    lo: lo[1..].to_vec(),
                    hi: hi[1..].to_vec(),
                    interior: interior[1..].to_vec(),
                });
                let shift = lo[1..].iter().map(|&l| -(l as isize));
                self.shifted(a, &out.shape[1..], shift.collect(), pad)?
            }
            _ => None,
        })
    }

    /// `a` under a slice or pad `prim` (of the non-direction axes) to `shape`: each term's
    /// coefficient goes through `prim` and its offset moves by `shift`.
    fn shifted(
        &self,
        a: &Linear,
        shape: &[usize],
        shift: Vec<isize>,
        prim: Prim,
    ) -> Result<Option<Linear>> {
        let mut terms = BTreeMap::new();
        for ((leaf, offset), coef) in &a.terms {
            let offset = offset.iter().zip(&shift).map(|(o, s)| o + s).collect();
            // A number is the same number after a slice; a pad needs its zeros.
            let moved = match coef {
                Some(c)
                    if c.ndim()? == 0
                        && matches!(prim, Prim::Structural(Structural::Slice { .. })) =>
                {
                    Some(c.clone())
                }
                None if matches!(prim, Prim::Structural(Structural::Slice { .. })) => None,
                _ => {
                    let full = self.full(coef.clone(), &a.shape, a.dtype)?;
                    Some(Tensor::apply(prim.clone(), &[&full]))
                }
            };
            terms.insert((*leaf, offset), moved);
        }
        Ok(Some(Linear {
            shape: shape.to_vec(),
            dtype: a.dtype,
            terms,
        }))
    }

    /// A coefficient as a traced array of `shape`: broadcast, and recorded rather than
    /// computed now (a large constant would be computed at plan time and stored).
    fn full(&self, coef: Option<Tensor>, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let coef = or_one(coef, dtype);
        let coef = match coef.is_traced() {
            true => coef,
            false => self.tracing.constant((**coef.data()?).clone()),
        };
        Ok(match coef.shape()? == shape {
            true => coef,
            false => coef.broadcast_to(shape),
        })
    }
}

impl Linear {
    fn map(&self, f: impl Fn(Option<Tensor>) -> Tensor) -> Linear {
        let terms = self
            .terms
            .iter()
            .map(|(offset, coef)| (offset.clone(), Some(f(coef.clone()))))
            .collect();
        Linear {
            shape: self.shape.clone(),
            dtype: self.dtype,
            terms,
        }
    }
}

/// A coefficient as a tensor: one (a number of `dtype`) where it is `None`.
fn or_one(coef: Option<Tensor>, dtype: DType) -> Tensor {
    coef.unwrap_or_else(|| Tensor::scalar_of(1.0, dtype))
}

/// A known operand `p` of an elementwise operation with a linear one (`[directions] ++
/// shape`, the shape of `out`), as a coefficient: without the direction axis. `None` when it
/// varies along that axis.
fn per_element(p: &Tensor, out: &Aval) -> Result<Option<Tensor>> {
    let shape = p.shape()?;
    if p.dtype()? != out.dtype {
        return Ok(None);
    }
    Ok(match shape.len() == out.shape.len() {
        false => Some(p.clone()),
        true if shape[0] == 1 => Some(p.reshape_exact(&shape[1..])),
        true => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::{Output, hessian_products};
    use crate::exec::Plan;
    use crate::{Tensor, make_program};

    /// The stencil of `f`'s Hessian-vector products at `x` (with `directions` seeds), if any.
    fn stencil_of(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, directions: usize) -> Option<Stencil> {
        let program = make_program(f, x).unwrap();
        let wanted = [Output::Primal(0), Output::Product { wrt: 0 }];
        let products = hessian_products(&program, &[0], directions).unwrap();
        coefficients(&products.select(&wanted), 1, 1).unwrap()
    }

    #[test]
    fn products_of_a_chain_are_a_stencil_of_neighbours_with_the_hessians_diagonals() {
        // f = sum x[k+1] x[k]^2: H[k, k] = 2 x[k+1], H[k, k+1] = H[k+1, k] = 2 x[k].
        let f = |x: &Tensor| (x.slice_along(0, 1.., 1) * x.slice_along(0, ..-1, 1).powi(2)).sum();
        let x = Tensor::from([0.5, -1.0, 2.0, 3.0, -0.25]);
        let stencil = stencil_of(f, &x, 3).expect("a stencil");
        let offsets: Vec<Offset> = [-1, 0, 1].iter().map(|&d| (0, vec![d])).collect();
        assert_eq!(stencil.offsets, offsets);
        let out = Plan::new(stencil.program)
            .run(&[x.data().unwrap().clone()], false)
            .unwrap();
        let coefficient = |t: usize| {
            Tensor::from_shared(out[1 + t].clone())
                .to_vec::<f64>()
                .unwrap()
        };
        let xs = x.to_vec::<f64>().unwrap();
        let n = xs.len();
        for k in 0..n {
            // Where k + d is outside the variable, the coefficient is never read.
            if k > 0 {
                assert_eq!(coefficient(0)[k], 2.0 * xs[k - 1], "H[{k}, {k} - 1]");
            }
            let diagonal = if k + 1 < n { 2.0 * xs[k + 1] } else { 0.0 };
            assert_eq!(coefficient(1)[k], diagonal, "H[{k}, {k}]");
            if k + 1 < n {
                assert_eq!(coefficient(2)[k], 2.0 * xs[k], "H[{k}, {k} + 1]");
            }
        }
    }

    #[test]
    fn reversals_and_sums_over_the_variable_are_no_stencil() {
        let x = Tensor::linspace(-1.0, 1.0, 6);
        assert!(stencil_of(|x: &Tensor| (x * x.flip(&[0])).sum(), &x, 2).is_none());
        assert!(stencil_of(|x: &Tensor| x.sum().powi(2), &x, 1).is_none());
        // A diagonal Hessian is a stencil of one offset, whatever the number of directions.
        let diagonal = stencil_of(|x: &Tensor| x.powi(3).sum(), &x, 4).expect("a stencil");
        assert_eq!(diagonal.offsets, vec![(0, vec![0])]);
    }
}
