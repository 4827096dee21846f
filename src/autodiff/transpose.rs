//! Reverse mode, as in JAX: linearise, then transpose.
//!
//! A forward pass with placeholder tangents records the linear part of the derivative next to
//! the primal computation; walking the linear equations backwards with the transpose rules of
//! the (few) linear primitives gives the cotangents. So only linear primitives need a second
//! rule, and the two modes cannot disagree.

use std::collections::{HashMap, HashSet};

use super::jvp::linearize_program;
use super::loops;
use crate::error::Result;
use crate::ir::Var;
use crate::primitives::{Prim, Primal, Program, Reduce, Tangent, concat_dims};
use crate::storage::Aval;
use crate::tensor::Tensor;
use crate::trace::{self, Tracing};

/// Reverse mode in the current frame: the outputs of `program` on `primals`, and the
/// cotangents (shape `batch ++ input shape`) of the inputs `wrt`, given the seeds that `seeds`
/// returns from the outputs: `(output index, its cotangent)`.
pub(crate) fn vjp_program(
    tracing: &Tracing,
    program: &Program,
    primals: &[Tensor],
    wrt: &[usize],
    seeds: impl FnOnce(&[Tensor]) -> Result<Vec<(usize, Tensor)>>,
    batch: &[usize],
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let start = tracing.len();
    let in_avals = program.input_avals();
    let mut tangents: Vec<Tangent> = in_avals.iter().map(|a| Tangent::zero(&[], a)).collect();
    let mut placeholders = Vec::with_capacity(wrt.len());
    for &i in wrt {
        let placeholder = tracing.placeholder(&in_avals[i]);
        tangents[i] = Tangent::Value(placeholder.clone());
        placeholders.push(tracing.var_of(&placeholder)?);
    }
    let (outs, touts) = linearize_program(program, primals, &tangents)?;

    // The linear equations are those that depend on a placeholder.
    let eqns = tracing.eqns_since(start);
    let mut linear: HashSet<Var> = placeholders.iter().copied().collect();
    for eqn in &eqns {
        if eqn.inputs.iter().any(|v| linear.contains(v)) {
            linear.extend(eqn.outputs.iter().copied());
        }
    }

    let mut cts: HashMap<Var, Tensor> = HashMap::new();
    let accumulate = |cts: &mut HashMap<Var, Tensor>, var: Var, ct: Tensor| {
        let sum = match cts.remove(&var) {
            Some(prev) => prev + ct,
            None => ct,
        };
        cts.insert(var, sum);
    };
    for (o, seed) in seeds(&outs)? {
        if let Some(t) = touts[o].value() {
            let var = tracing.var_of(t)?;
            if linear.contains(&var) {
                accumulate(&mut cts, var, seed);
            }
        }
    }
    for eqn in eqns.iter().rev() {
        if !eqn.outputs.iter().any(|v| cts.contains_key(v)) {
            continue;
        }
        // Outputs without a cotangent have zero ones (only multi-output primitives).
        let out_cts = eqn
            .outputs
            .iter()
            .map(|v| match cts.remove(v) {
                Some(ct) => Ok(Tangent::Value(ct)),
                None => Ok(Tangent::zero(batch, &tracing.tensor(*v).aval()?)),
            })
            .collect::<Result<Vec<_>>>()?;
        let ins = eqn
            .inputs
            .iter()
            .map(|&v| {
                let x = tracing.tensor(v);
                Ok(if linear.contains(&v) {
                    Primal::Linear(x.aval()?)
                } else {
                    Primal::Known(x)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let in_cts = trace::with_source(eqn.source, || {
            transpose_eqn(&eqn.prim, &out_cts, &ins, batch)
        })?;
        for ((&v, ct), x) in eqn.inputs.iter().zip(in_cts).zip(&ins) {
            if let (Tangent::Value(ct), Primal::Linear(_)) = (ct, x) {
                accumulate(&mut cts, v, ct);
            }
        }
    }
    let in_cts = placeholders
        .iter()
        .zip(wrt)
        .map(|(var, &i)| {
            cts.remove(var)
                .unwrap_or_else(|| Tangent::zero(batch, &in_avals[i]).instantiate())
        })
        .collect();
    Ok((outs, in_cts))
}

/// One transpose rule application; cotangents of broadcast operands are summed back to the
/// operand's shape here, once for all rules. A loop is transposed by `loops::transpose`, which
/// keeps zero cotangents symbolic (its stacked outputs can be large); other rules get them
/// as zeros.
pub(super) fn transpose_eqn(
    prim: &Prim,
    cts: &[Tangent],
    primals: &[Primal],
    batch: &[usize],
) -> Result<Vec<Tangent>> {
    for ct in cts.iter().filter_map(Tangent::value) {
        ct.aval()?;
    }
    if let Prim::Loop(l) = prim {
        let cts: Vec<Option<Tensor>> = cts.iter().map(|c| c.value().cloned()).collect();
        return loops::transpose(l, &cts, primals, batch);
    }
    let cts: Vec<Tensor> = cts.iter().map(Tangent::instantiate).collect();
    let in_cts = prim.transpose(&cts, primals, batch)?;
    in_cts
        .into_iter()
        .zip(primals)
        .map(|(ct, x)| {
            Ok(match ct {
                Tangent::Value(ct) => Tangent::Value(unbroadcast(&ct, batch, &x.aval()?)),
                zero => zero,
            })
        })
        .collect()
}

/// Sums `ct` over the axes along which an operand of abstract value `aval` was broadcast.
fn unbroadcast(ct: &Tensor, batch: &[usize], aval: &Aval) -> Tensor {
    Tensor::attempt(|| {
        let shape = &aval.shape;
        let full = concat_dims(batch, shape);
        let own = ct.shape()?;
        if own == full.as_slice() {
            return Ok(ct.clone());
        }
        let nb = batch.len();
        let lead = own.len() - nb - shape.len();
        let mut axes: Vec<usize> = (nb..nb + lead).collect();
        for (j, &d) in shape.iter().enumerate() {
            if d == 1 && own[nb + lead + j] != 1 {
                axes.push(nb + lead + j);
            }
        }
        Ok(Tensor::apply(Reduce::sum(axes), &[ct]).reshape_exact(&full))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DType;

    fn aval(shape: &[usize]) -> Aval {
        Aval::new(shape, DType::F64)
    }

    #[test]
    fn unbroadcast_sums_leading_and_stretched_axes() {
        let ct = Tensor::from_vec((1..=12).map(f64::from).collect(), &[2, 3, 2]).unwrap();
        // An operand of shape [3, 1] was broadcast along the leading axis and its last one.
        let summed = unbroadcast(&ct, &[], &aval(&[3, 1]));
        assert_eq!(summed.shape().unwrap(), [3, 1]);
        assert_eq!(
            summed.to_vec::<f64>().unwrap(),
            vec![1.0 + 2.0 + 7.0 + 8.0, 26.0, 34.0]
        );
    }

    #[test]
    fn unbroadcast_keeps_the_batch_axes() {
        let ct = Tensor::from_vec((1..=6).map(f64::from).collect(), &[2, 3]).unwrap();
        // A batch of 2 cotangents for a scalar operand.
        let summed = unbroadcast(&ct, &[2], &aval(&[]));
        assert_eq!(summed.to_vec::<f64>().unwrap(), vec![6.0, 15.0]);
        // Nothing to sum: the same tensor comes back.
        let same = unbroadcast(&ct, &[2], &aval(&[3]));
        assert_eq!(same.to_vec::<f64>().unwrap(), ct.to_vec::<f64>().unwrap());
    }

    #[test]
    fn unbroadcast_hands_a_failure_on() {
        let bad = Tensor::zeros(&[2]) + Tensor::zeros(&[3]);
        assert!(unbroadcast(&bad, &[], &aval(&[2])).error().is_some());
    }
}
