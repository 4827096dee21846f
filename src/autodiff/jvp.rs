//! Forward mode: replaying a program and pushing tangents through every equation with the
//! primitives' JVP rules.

use super::loops;
use crate::error::Result;
use crate::ir::Var;
use crate::primitives::{Prim, Program, Tangent, concat_dims};
use crate::storage::Aval;
use crate::tensor::Tensor;
use crate::trace;

/// How a JVP is used: pushed forward as it is, or linearised for reverse mode (which
/// transposes the part that depends on the tangents, and so needs it apart from the primal
/// computation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forward mode: a loop's JVP is one loop carrying primal and tangent values together.
    Forward,
    /// Reverse mode's forward pass: a loop's JVP is a known loop that stores what the tangent
    /// computation needs and a linear loop over it (see `loops::linearize`).
    Linearize,
}

/// Replays `program` on `primals` (in the innermost frame when they are traced), with input
/// `tangents` of `batch` directions each. Returns the outputs and their tangents.
pub(crate) fn jvp_program(
    program: &Program,
    primals: &[Tensor],
    tangents: &[Tangent],
    batch: &[usize],
) -> Result<(Vec<Tensor>, Vec<Tangent>)> {
    let sets = [(tangents.to_vec(), batch)];
    let (outs, mut touts) = jvp_program_sets(program, primals, &sets, Mode::Forward)?;
    Ok((outs, touts.swap_remove(0)))
}

/// [`jvp_program`] for reverse mode's forward pass: the tangent computation is kept apart
/// from the primal one, loops included.
pub(crate) fn linearize_program(
    program: &Program,
    primals: &[Tensor],
    tangents: &[Tangent],
) -> Result<(Vec<Tensor>, Vec<Tangent>)> {
    let sets = [(tangents.to_vec(), &[][..])];
    let (outs, mut touts) = jvp_program_sets(program, primals, &sets, Mode::Linearize)?;
    Ok((outs, touts.swap_remove(0)))
}

/// [`jvp_program`] for several sets of input tangents (each with its own batch) at once: the
/// primal computation is replayed once, and each equation's JVP rule applied once per set.
/// Returns the outputs and, per set, their tangents.
pub(crate) fn jvp_program_sets(
    program: &Program,
    primals: &[Tensor],
    sets: &[(Vec<Tangent>, &[usize])],
    mode: Mode,
) -> Result<(Vec<Tensor>, Vec<Vec<Tangent>>)> {
    let n = program.avals.len();
    let mut primal: Vec<Option<Tensor>> = vec![None; n];
    let mut tangent: Vec<Vec<Option<Tangent>>> = vec![vec![None; n]; sets.len()];
    for (&v, x) in program.inputs.iter().zip(primals) {
        primal[v.index()] = Some(x.clone());
    }
    for (s, (tangents, _)) in sets.iter().enumerate() {
        for (&v, t) in program.inputs.iter().zip(tangents) {
            tangent[s][v.index()] = Some(t.clone());
        }
    }
    let zero = |v: Var, batch: &[usize]| Tangent::zero(batch, program.aval(v));
    for (v, data) in &program.consts {
        primal[v.index()] = Some(Tensor::from_shared(data.clone()));
        for (s, (_, batch)) in sets.iter().enumerate() {
            tangent[s][v.index()] = Some(zero(*v, batch));
        }
    }
    for eqn in &program.eqns {
        let ins: Vec<Tensor> = eqn.inputs.iter().map(|v| defined(&primal, *v)).collect();
        trace::with_source(eqn.source, || -> Result<()> {
            if let (Prim::Loop(l), Mode::Linearize, [(_, batch)]) = (&eqn.prim, mode, sets) {
                let ts: Vec<Tangent> = eqn
                    .inputs
                    .iter()
                    .map(|v| defined(&tangent[0], *v))
                    .collect();
                if !ts.iter().all(Tangent::is_zero) {
                    let (outs, touts) = loops::linearize(l, &ins, &ts, batch)?;
                    for ((&v, out), t) in eqn.outputs.iter().zip(outs).zip(touts) {
                        primal[v.index()] = Some(out);
                        tangent[0][v.index()] = Some(t);
                    }
                    return Ok(());
                }
            }
            let refs: Vec<&Tensor> = ins.iter().collect();
            let outs = Tensor::apply_all(eqn.prim.clone(), &refs, eqn.outputs.len());
            let out_avals: Vec<&Aval> = eqn.outputs.iter().map(|&v| program.aval(v)).collect();
            for (s, (_, batch)) in sets.iter().enumerate() {
                let ts: Vec<Tangent> = eqn
                    .inputs
                    .iter()
                    .map(|v| defined(&tangent[s], *v))
                    .collect();
                let touts = if ts.iter().all(Tangent::is_zero) {
                    eqn.outputs.iter().map(|&v| zero(v, batch)).collect()
                } else {
                    jvp_eqn(&eqn.prim, &ins, &ts, &outs, &out_avals, batch)?
                };
                for (&v, t) in eqn.outputs.iter().zip(touts) {
                    tangent[s][v.index()] = Some(t);
                }
            }
            for (&v, out) in eqn.outputs.iter().zip(outs) {
                primal[v.index()] = Some(out);
            }
            Ok(())
        })?;
    }
    let outs = program
        .outputs
        .iter()
        .map(|v| defined(&primal, *v))
        .collect();
    let touts = tangent
        .iter()
        .map(|table| program.outputs.iter().map(|v| defined(table, *v)).collect())
        .collect();
    Ok((outs, touts))
}

/// One JVP rule application, after padding tangents of elementwise primitives to the output's
/// rank (so that every rule can rely on right-aligned broadcasting).
fn jvp_eqn(
    prim: &Prim,
    primals: &[Tensor],
    tangents: &[Tangent],
    outs: &[Tensor],
    out_avals: &[&Aval],
    batch: &[usize],
) -> Result<Vec<Tangent>> {
    // A failed operand fails the tangents too; rules may then assume well-formed shapes.
    let failed = primals
        .iter()
        .chain(tangents.iter().filter_map(Tangent::value))
        .chain(outs)
        .find(|t| t.error().is_some());
    if let Some(failed) = failed {
        return Ok(vec![Tangent::Value(failed.clone()); out_avals.len()]);
    }
    if let Prim::Loop(l) = prim {
        return loops::jvp(l, primals, tangents, batch);
    }
    if !prim.is_elementwise() {
        return prim.jvp(primals, tangents, outs, batch);
    }
    let rank = out_avals[0].shape.len();
    let padded = tangents
        .iter()
        .zip(primals)
        .map(|(t, x)| {
            let own = x.shape()?;
            let shape = concat_dims(&concat_dims(batch, &vec![1; rank - own.len()]), own);
            Ok(match t {
                Tangent::Zero(aval) => Tangent::Zero(Aval::new(&shape, aval.dtype)),
                Tangent::Value(t) => Tangent::Value(t.reshape_exact(&shape)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    prim.jvp(primals, &padded, outs, batch)
}

/// The value of a variable a program has defined.
fn defined<T: Clone>(table: &[Option<T>], var: Var) -> T {
    table[var.index()]
        .clone()
        .expect("programs define variables before use")
}
