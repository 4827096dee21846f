//! Differentiation as program-to-program transforms.
//!
//! - Forward mode ([`jvp_program`]) replays a program, pushing a tangent through every equation
//!   with the primitive's JVP rule. Tangents carry a leading batch of directions, so the whole
//!   identity basis goes through in one pass.
//! - Reverse mode ([`vjp_program`]) is linearise-then-transpose, as in JAX: a forward pass with
//!   placeholder tangents records the linear part of the derivative next to the primal
//!   computation; walking the linear equations backwards with the transpose rules of the (few)
//!   linear primitives gives the cotangents. So only linear primitives need a second rule, and
//!   the two modes cannot disagree.
//! - [`jacfwd_program`], [`jacrev_program`] and [`hessian_program`] (forward over reverse)
//!   build dense Jacobian and Hessian programs from these.
//!
//! Every derived program is an ordinary program: it is simplified, planned and run like any
//! other, and can be differentiated again.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::exec::simplify;
use crate::ir::{Program, Var};
use crate::primitives::{Prim, ReduceOp, concat_dims, zeros};
use crate::tensor::{Aval, Tensor};
use crate::trace::{self, Tracing};

/// Replays `program` on `primals` (in the innermost frame when they are traced), with `tangents` (shape
/// `batch ++ input shape`, `None` for zero). Returns the outputs and their tangents.
pub(crate) fn jvp_program(
    program: &Program,
    primals: &[Tensor],
    tangents: &[Option<Tensor>],
    batch: &[usize],
) -> (Vec<Tensor>, Vec<Option<Tensor>>) {
    let n = program.avals.len();
    let mut primal: Vec<Option<Tensor>> = vec![None; n];
    let mut tangent: Vec<Option<Tensor>> = vec![None; n];
    for (i, &v) in program.inputs.iter().enumerate() {
        primal[v.index()] = Some(primals[i].clone());
        tangent[v.index()] = tangents[i].clone();
    }
    for (v, data) in &program.consts {
        primal[v.index()] = Some(Tensor::from_shared(data.clone()));
    }
    for eqn in &program.eqns {
        let ins: Vec<Tensor> = eqn
            .inputs
            .iter()
            .map(|v| {
                primal[v.index()]
                    .clone()
                    .expect("programs define variables before use")
            })
            .collect();
        let ts: Vec<Option<Tensor>> = eqn
            .inputs
            .iter()
            .map(|v| tangent[v.index()].clone())
            .collect();
        let (out, t) = trace::with_source(eqn.source, || {
            let refs: Vec<&Tensor> = ins.iter().collect();
            let out = Tensor::apply(eqn.prim.clone(), &refs);
            let t = if ts.iter().any(Option::is_some) {
                jvp_eqn(&eqn.prim, &ins, &ts, &out, batch)
            } else {
                None
            };
            (out, t)
        });
        primal[eqn.out.index()] = Some(out);
        tangent[eqn.out.index()] = t;
    }
    let outs = program
        .outputs
        .iter()
        .map(|v| primal[v.index()].clone().expect("defined"))
        .collect();
    let touts = program
        .outputs
        .iter()
        .map(|v| tangent[v.index()].clone())
        .collect();
    (outs, touts)
}

/// One JVP rule application, after padding tangents of elementwise primitives to the output's
/// rank (so that every rule can rely on right-aligned broadcasting).
fn jvp_eqn(
    prim: &Prim,
    primals: &[Tensor],
    tangents: &[Option<Tensor>],
    out: &Tensor,
    batch: &[usize],
) -> Option<Tensor> {
    // A failed operand fails the tangent too; rules may then assume well-formed shapes.
    let failed = primals
        .iter()
        .chain(tangents.iter().flatten())
        .chain([out])
        .find(|t| t.error().is_some());
    if let Some(failed) = failed {
        return Some(failed.clone());
    }
    if !prim.is_elementwise() {
        return prim.jvp(primals, tangents, out, batch);
    }
    let rank = out.ndim();
    let padded: Vec<Option<Tensor>> = tangents
        .iter()
        .zip(primals)
        .map(|(t, x)| {
            t.as_ref().map(|t| {
                let ones = vec![1; rank - x.ndim()];
                t.reshape_exact(&concat_dims(&concat_dims(batch, &ones), x.shape()))
            })
        })
        .collect();
    prim.jvp(primals, &padded, out, batch)
}

/// Reverse mode in the current frame: the outputs of `program` on `primals`, and the
/// cotangents (shape `batch ++ input shape`) of the inputs `wrt`, given the output cotangents
/// that `seeds` returns from the outputs.
pub(crate) fn vjp_program(
    tracing: &Tracing,
    program: &Program,
    primals: &[Tensor],
    wrt: &[usize],
    seeds: impl FnOnce(&[Tensor]) -> Result<Vec<Option<Tensor>>>,
    batch: &[usize],
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let start = tracing.len();
    let in_avals = program.input_avals();
    let placeholders: Vec<Tensor> = wrt
        .iter()
        .map(|&i| tracing.placeholder(&in_avals[i]))
        .collect();
    let mut tangents = vec![None; primals.len()];
    for (k, &i) in wrt.iter().enumerate() {
        tangents[i] = Some(placeholders[k].clone());
    }
    let (outs, touts) = jvp_program(program, primals, &tangents, &[]);

    // The linear equations are those that depend on a placeholder.
    let eqns = tracing.eqns_since(start);
    let mut linear: HashSet<Var> = placeholders
        .iter()
        .map(|p| tracing.var_of(p))
        .collect::<Result<_>>()?;
    for eqn in &eqns {
        if eqn.inputs.iter().any(|v| linear.contains(v)) {
            linear.insert(eqn.out);
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
    for (tout, seed) in touts.iter().zip(seeds(&outs)?) {
        if let (Some(t), Some(seed)) = (tout, seed) {
            let var = tracing.var_of(t)?;
            if linear.contains(&var) {
                accumulate(&mut cts, var, seed);
            }
        }
    }
    for eqn in eqns.iter().rev() {
        if !linear.contains(&eqn.out) {
            continue;
        }
        let Some(ct) = cts.remove(&eqn.out) else {
            continue;
        };
        let ins: Vec<Option<Tensor>> = eqn
            .inputs
            .iter()
            .map(|&v| (!linear.contains(&v)).then(|| tracing.tensor(v)))
            .collect();
        let avals: Vec<Aval> = eqn
            .inputs
            .iter()
            .map(|&v| tracing.tensor(v).aval())
            .collect::<Result<_>>()?;
        let in_cts = trace::with_source(eqn.source, || {
            transpose_eqn(&eqn.prim, &ct, &ins, &avals, batch)
        })?;
        for ((&v, ct), x) in eqn.inputs.iter().zip(in_cts).zip(&ins) {
            if let (Some(ct), None) = (ct, x) {
                accumulate(&mut cts, v, ct);
            }
        }
    }
    let in_cts = placeholders
        .iter()
        .zip(wrt)
        .map(|(p, &i)| {
            let var = tracing.var_of(p)?;
            Ok(cts
                .remove(&var)
                .unwrap_or_else(|| zeros(batch, &in_avals[i])))
        })
        .collect::<Result<_>>()?;
    Ok((outs, in_cts))
}

/// One transpose rule application; cotangents of broadcast operands are summed back to the
/// operand's shape here, once for all rules.
fn transpose_eqn(
    prim: &Prim,
    ct: &Tensor,
    primals: &[Option<Tensor>],
    in_avals: &[Aval],
    batch: &[usize],
) -> Result<Vec<Option<Tensor>>> {
    if let Some(e) = ct.error() {
        return Err(e.clone());
    }
    let cts = prim.transpose(ct, primals, in_avals, batch)?;
    Ok(cts
        .into_iter()
        .zip(in_avals)
        .map(|(ct, aval)| ct.map(|ct| unbroadcast(&ct, batch, &aval.shape)))
        .collect())
}

/// Sums `ct` over the axes along which an operand of `shape` was broadcast.
fn unbroadcast(ct: &Tensor, batch: &[usize], shape: &[usize]) -> Tensor {
    let full = concat_dims(batch, shape);
    if ct.shape() == full.as_slice() {
        return ct.clone();
    }
    let nb = batch.len();
    let lead = ct.ndim() - nb - shape.len();
    let mut axes: Vec<usize> = (nb..nb + lead).collect();
    for (j, &d) in shape.iter().enumerate() {
        if d == 1 && ct.shape()[nb + lead + j] != 1 {
            axes.push(nb + lead + j);
        }
    }
    Tensor::apply(Prim::Reduce(ReduceOp::Sum, axes), &[ct]).reshape_exact(&full)
}

/// Offsets of consecutive blocks of the given sizes.
fn offsets(sizes: &[usize]) -> Vec<usize> {
    sizes
        .iter()
        .scan(0, |acc, &s| {
            let o = *acc;
            *acc += s;
            Some(o)
        })
        .collect()
}

/// Rows `offset..offset + len` of the `total x len` slice of the identity, shaped `[total] ++ shape`:
/// one block of the standard basis, generated at run time.
fn basis(tracing: &Tracing, aval: &Aval, total: usize, offset: usize) -> Result<Tensor> {
    let eye = Prim::Eye {
        rows: total,
        cols: aval.numel(),
        offset: -(offset as i64),
        dtype: aval.dtype,
    };
    Ok(trace::emit(tracing, eye, &[])?.reshape_exact(&concat_dims(&[total], &aval.shape)))
}

/// Rows `offset..offset + len` of `t` along its first axis (all of it when that is everything).
fn rows(t: &Tensor, offset: usize, len: usize) -> Tensor {
    if t.error().is_some() || (offset == 0 && t.shape().first() == Some(&len)) {
        t.clone()
    } else {
        t.slice_along(0, offset as isize..(offset + len) as isize, 1)
    }
}

/// The program `x -> outputs ++ [d out_o / d x_i for o in of, for i in wrt]`, by reverse mode.
/// Each Jacobian block has shape `out_shape_o ++ in_shape_i`.
pub(crate) fn jacrev_program(program: &Program, wrt: &[usize], of: &[usize]) -> Result<Program> {
    let tracing = Tracing::new();
    let inputs: Vec<Tensor> = program
        .input_avals()
        .iter()
        .map(|a| tracing.input(a))
        .collect();
    let in_avals = program.input_avals();
    let out_avals = program.output_avals();
    let sizes: Vec<usize> = of.iter().map(|&o| out_avals[o].numel()).collect();
    let starts = offsets(&sizes);
    let total: usize = sizes.iter().sum();
    // A single scalar output needs no batch of cotangents: its seed is just 1.
    let scalar = of.len() == 1 && out_avals[of[0]].shape.is_empty();
    let batch = if scalar { vec![] } else { vec![total] };
    let seeds = |outs: &[Tensor]| -> Result<Vec<Option<Tensor>>> {
        let mut seeds = vec![None; outs.len()];
        for (k, &o) in of.iter().enumerate() {
            seeds[o] = Some(if scalar {
                Tensor::scalar_of(1.0, out_avals[o].dtype)
            } else {
                basis(&tracing, &out_avals[o], total, starts[k])?
            });
        }
        Ok(seeds)
    };
    let (outs, cts) = vjp_program(&tracing, program, &inputs, wrt, seeds, &batch)?;
    let mut results = outs;
    for (k, &o) in of.iter().enumerate() {
        for (ct, &i) in cts.iter().zip(wrt) {
            let block = if scalar {
                ct.clone()
            } else {
                rows(ct, starts[k], sizes[k])
            };
            results
                .push(block.reshape_exact(&concat_dims(&out_avals[o].shape, &in_avals[i].shape)));
        }
    }
    Ok(simplify(tracing.finish(&results)?))
}

/// The program `x -> outputs ++ [d out_o / d x_i for o in of, for i in wrt]`, by forward mode
/// with the whole basis of all `wrt` inputs in one batch.
pub(crate) fn jacfwd_program(program: &Program, wrt: &[usize], of: &[usize]) -> Result<Program> {
    let tracing = Tracing::new();
    let in_avals = program.input_avals();
    let out_avals = program.output_avals();
    let inputs: Vec<Tensor> = in_avals.iter().map(|a| tracing.input(a)).collect();
    let sizes: Vec<usize> = wrt.iter().map(|&i| in_avals[i].numel()).collect();
    let starts = offsets(&sizes);
    let total: usize = sizes.iter().sum();
    let mut tangents = vec![None; inputs.len()];
    for (k, &i) in wrt.iter().enumerate() {
        tangents[i] = Some(basis(&tracing, &in_avals[i], total, starts[k])?);
    }
    let (outs, touts) = jvp_program(program, &inputs, &tangents, &[total]);
    let mut results = outs;
    for &o in of {
        let out = &out_avals[o];
        let t = touts[o].clone().unwrap_or_else(|| zeros(&[total], out));
        for (k, &i) in wrt.iter().enumerate() {
            // [n_i] ++ out_shape -> in_shape ++ out_shape -> out_shape ++ in_shape
            let block = rows(&t, starts[k], sizes[k])
                .reshape_exact(&concat_dims(&in_avals[i].shape, &out.shape));
            let (ri, ro) = (in_avals[i].shape.len(), out.shape.len());
            let perm: Vec<usize> = (ri..ri + ro).chain(0..ri).collect();
            results.push(if ri == 0 || ro == 0 {
                block.reshape_exact(&concat_dims(&out.shape, &in_avals[i].shape))
            } else {
                block.permute(&perm)
            });
        }
    }
    Ok(simplify(tracing.finish(&results)?))
}

/// The program `x -> outputs ++ gradients ++ Hessians`: forward mode over reverse mode.
/// After the `n` outputs come the `|of| * |wrt|` Jacobian blocks `J[o][i]`, then the
/// `|of| * |wrt| * |wrt|` Hessian blocks `H[o][i][j]` of shape `out_o ++ in_i ++ in_j`, each
/// in row-major order of its indices.
pub(crate) fn hessian_program(program: &Program, wrt: &[usize], of: &[usize]) -> Result<Program> {
    let grad = jacrev_program(program, wrt, of)?;
    let n = program.outputs.len();
    let jacobians: Vec<usize> = (n..n + of.len() * wrt.len()).collect();
    jacfwd_program(&grad, wrt, &jacobians)
}
