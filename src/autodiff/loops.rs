//! Loops under differentiation: the JVP, linearisation and transpose of `scan`, as JAX's
//! `_scan_jvp`, `_scan_partial_eval` and `_scan_transpose`.
//!
//! A loop's rules are rules about its body, which is a program: differentiating it needs the
//! drivers of this layer, so the loop equation is handled here rather than by its `Rules`
//! (which only say so). Each entry point is called from one place: [`jvp`] by forward mode
//! for every loop equation, [`linearize`] by reverse mode's forward pass, [`transpose`] by
//! reverse mode's backward pass.
//!
//! - **Forward mode** ([`jvp`]): the JVP of a loop is a loop over its body's JVP, carrying the
//!   tangents of the carry next to the carry (with the batch of directions in front of each);
//!   which carries have nonzero tangents is a fixed point over the body. The primal outputs
//!   come from the original loop, replayed as it is; the JVP loop recomputes the primal carry
//!   and returns tangents only, so a forward sweep (which splits primal from linear work) finds
//!   the whole JVP loop on its linear side and never stores a step's values.
//! - **Linearisation** ([`linearize`]): reverse mode needs the step's values in reverse order.
//!   The body's linearisation is split, by dependence on the tangent inputs, into a *known*
//!   body (the primal step, which also returns the step's *residuals*: values the tangent
//!   computation reads) and a *linear* body (the tangent step, over the residuals). The known
//!   loop stacks the residuals of every step; the linear loop reads them as per-step inputs.
//!   Values that do not change between steps are not stacked: constants are passed as
//!   constants, per-step inputs as the original stacked inputs, and values computed from
//!   constants alone are recomputed in the linear body. A loop with `remat` (a checkpointed
//!   loop) stores only each step's incoming carry and recomputes the whole primal step in the
//!   linear body instead.
//! - **Transposition** ([`transpose`]): a linear loop transposes to a loop running the other
//!   way over the transpose of its body, carrying the carry's cotangent backwards and summing
//!   the constants' cotangents in accumulators.

use super::jvp::{Mode, jvp_program_sets};
use super::transpose::transpose_eqn;
use crate::error::{Error, Result};
use crate::ir::Var;
use crate::ir::passes::clean;
use crate::primitives::{Loop, Prim, Primal, Program, Tangent, concat_dims, not_linear};
use crate::storage::Aval;
use crate::tensor::Tensor;
use crate::trace::{self, Tracing};

/// Which inputs of a loop are constants, carries and per-step inputs.
fn ranges(l: &Loop) -> [std::ops::Range<usize>; 3] {
    let (nc, nh) = (l.consts, l.carry);
    [0..nc, nc..nc + nh, nc + nh..l.body.inputs.len()]
}

/// `t` (shape `batch ++ [T] ++ s`) with the steps' axis first: `[T] ++ batch ++ s`.
fn steps_first(t: &Tensor, nb: usize) -> Tensor {
    if nb == 0 {
        return t.clone();
    }
    Tensor::attempt(|| {
        let rank = t.ndim()?;
        let perm: Vec<usize> = std::iter::once(nb)
            .chain(0..nb)
            .chain(nb + 1..rank)
            .collect();
        Ok(t.permute(&perm))
    })
}

/// The inverse of [`steps_first`]: `[T] ++ batch ++ s` to `batch ++ [T] ++ s`.
fn steps_after_batch(t: &Tensor, nb: usize) -> Tensor {
    if nb == 0 {
        return t.clone();
    }
    Tensor::attempt(|| {
        let rank = t.ndim()?;
        let perm: Vec<usize> = (1..=nb)
            .chain(std::iter::once(0))
            .chain(nb + 1..rank)
            .collect();
        Ok(t.permute(&perm))
    })
}

/// Zeros of `batch ++ aval.shape`.
fn zeros(batch: &[usize], aval: &Aval) -> Tensor {
    Tangent::zero(batch, aval).instantiate()
}

/// Grows the set of carries with nonzero tangents until the body adds none: `trace(nz)`
/// differentiates the body with nonzero tangents on the inputs flagged in `nz` and returns
/// its result and which body outputs have nonzero tangents.
fn fixed_point<T>(
    l: &Loop,
    mut nz: Vec<bool>,
    mut trace: impl FnMut(&[bool]) -> Result<(T, Vec<bool>)>,
) -> Result<(T, Vec<bool>, Vec<bool>)> {
    let nc = l.consts;
    loop {
        let (result, nz_out) = trace(&nz)?;
        let mut grew = false;
        for k in 0..l.carry {
            if nz_out[k] && !nz[nc + k] {
                nz[nc + k] = true;
                grew = true;
            }
        }
        if !grew {
            return Ok((result, nz, nz_out));
        }
    }
}

/// A new input of `tracing` for each input of the body flagged in `which`, as the body's
/// value (`batch` empty) or as its tangent with `batch` directions.
fn inputs_for(
    tracing: &Tracing,
    avals: &[Aval],
    which: impl Iterator<Item = usize>,
    batch: &[usize],
) -> Vec<(usize, Tensor)> {
    which
        .map(|i| {
            let aval = Aval::new(&concat_dims(batch, &avals[i].shape), avals[i].dtype);
            (i, tracing.input(&aval))
        })
        .collect()
}

/// The body's JVP: inputs `c ++ dc ++ h ++ dh ++ x ++ dx` (tangents for the inputs flagged in
/// `nz`, with `batch` directions each), outputs `h' ++ dh' ++ dy` (tangents of the carries
/// flagged in `nz`, then of the per-step outputs whose tangents are nonzero). Also returns
/// which body outputs have nonzero tangents.
fn jvp_body(l: &Loop, nz: &[bool], batch: &[usize]) -> Result<(Program, Vec<bool>)> {
    let tracing = Tracing::new();
    let avals = l.body.input_avals();
    let n = avals.len();
    let mut primals: Vec<Option<Tensor>> = vec![None; n];
    let mut tangents: Vec<Tangent> = avals.iter().map(|a| Tangent::zero(batch, a)).collect();
    for range in ranges(l) {
        for (i, x) in inputs_for(&tracing, &avals, range.clone(), &[]) {
            primals[i] = Some(x);
        }
        for (i, t) in inputs_for(&tracing, &avals, range.filter(|&i| nz[i]), batch) {
            tangents[i] = Tangent::Value(t);
        }
    }
    let primals: Vec<Tensor> = primals.into_iter().flatten().collect();
    let (outs, mut touts) =
        jvp_program_sets(&l.body, &primals, &[(tangents, batch)], Mode::Forward)?;
    let touts = touts.swap_remove(0);
    let nz_out: Vec<bool> = touts.iter().map(|t| !t.is_zero()).collect();
    let nh = l.carry;
    let mut results: Vec<Tensor> = outs[..nh].to_vec();
    for k in 0..nh {
        if nz[l.consts + k] {
            results.push(touts[k].instantiate());
        }
    }
    results.extend(touts[nh..].iter().filter_map(|t| t.value().cloned()));
    Ok((clean(tracing.finish(&results)?), nz_out))
}

/// Forward mode: the tangents of a loop's outputs (`batch` directions each), by a loop over
/// the body's JVP that carries the tangents next to the carry.
pub(super) fn jvp(l: &Loop, x: &[Tensor], t: &[Tangent], batch: &[usize]) -> Result<Vec<Tangent>> {
    let nz_in: Vec<bool> = t.iter().map(|t| !t.is_zero()).collect();
    let (body, nz, nz_out) = fixed_point(l, nz_in, |nz| jvp_body(l, nz, batch))?;
    let avals = l.body.input_avals();
    let nb = batch.len();
    let [consts, carry, xs] = ranges(l);
    let mut inputs: Vec<Tensor> = Vec::new();
    let tangent = |i: usize| match &t[i] {
        Tangent::Value(v) => v.clone(),
        Tangent::Zero(_) => zeros(batch, &avals[i]),
    };
    inputs.extend(x[consts.clone()].iter().cloned());
    inputs.extend(consts.clone().filter(|&i| nz[i]).map(tangent));
    inputs.extend(x[carry.clone()].iter().cloned());
    inputs.extend(carry.clone().filter(|&i| nz[i]).map(tangent));
    inputs.extend(x[xs.clone()].iter().cloned());
    inputs.extend(
        xs.clone()
            .filter(|&i| nz[i])
            .map(|i| steps_first(&tangent(i), nb)),
    );
    let n_dc = consts.filter(|&i| nz[i]).count();
    let carried: Vec<usize> = carry.filter(|&i| nz[i]).map(|i| i - l.consts).collect();
    let jvp_loop = Loop {
        body: std::sync::Arc::new(body),
        consts: l.consts + n_dc,
        carry: l.carry + carried.len(),
        length: l.length,
        reverse: l.reverse,
        remat: l.remat,
        linear: Vec::new(),
        units: None,
        progress: l.progress.as_ref().map(|p| p.for_pass("scan jvp")),
        sums: 0,
    };
    let n_out = jvp_loop.body.outputs.len();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let outs = Tensor::apply_all(Prim::Loop(jvp_loop), &refs, n_out);
    let out_avals = l.body.output_avals();
    let mut tangents = Vec::with_capacity(out_avals.len());
    for (k, aval) in out_avals[..l.carry].iter().enumerate() {
        tangents.push(match carried.iter().position(|&c| c == k) {
            Some(p) => Tangent::Value(outs[l.carry + p].clone()),
            None => Tangent::zero(batch, aval),
        });
    }
    let mut next = l.carry + carried.len();
    for (j, aval) in out_avals[l.carry..].iter().enumerate() {
        tangents.push(if nz_out[l.carry + j] {
            next += 1;
            Tangent::Value(steps_after_batch(&outs[next - 1], nb))
        } else {
            Tangent::zero(batch, &stacked(aval, l.length))
        });
    }
    Ok(tangents)
}

/// The aval of `length` stacked values of `aval`.
fn stacked(aval: &Aval, length: usize) -> Aval {
    Aval::new(&concat_dims(&[length], &aval.shape), aval.dtype)
}

/// Where a value of the linearised body comes from, for the linear body that reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A constant of the program: it stays one.
    Const,
    /// The loop's constant `k`: passed to the linear loop as a constant.
    Invariant(usize),
    /// The loop's per-step input `k`: passed as the same stacked input.
    Step(usize),
    /// The carry (or, remat aside, a value computed from it): stacked by the known loop.
    Varying,
    /// Computed from constants alone: recomputed in the linear body.
    Hoistable,
}

/// Reverse mode's forward pass over a loop whose inputs have tangents `t` (with `batch`
/// directions, normally none): a known loop computing the outputs and each step's residuals,
/// and a linear loop over the residuals computing the tangents. Returns the outputs and their
/// tangents.
pub(super) fn linearize(
    l: &Loop,
    x: &[Tensor],
    t: &[Tangent],
    batch: &[usize],
) -> Result<(Vec<Tensor>, Vec<Tangent>)> {
    let nz_in: Vec<bool> = t.iter().map(|t| !t.is_zero()).collect();
    let (lin, nz, nz_out) = fixed_point(l, nz_in, |nz| linearized_body(l, nz, batch))?;
    let n_in = l.body.inputs.len();
    let (nc, nh) = (l.consts, l.carry);
    let ny = l.n_ys();
    let full = &lin.program;

    // Which values depend on the tangents.
    let mut linear = vec![false; full.avals.len()];
    for v in &full.inputs[n_in..] {
        linear[v.index()] = true;
    }
    let mut origin: Vec<Option<Origin>> = vec![None; full.avals.len()];
    for (v, _) in &full.consts {
        origin[v.index()] = Some(Origin::Const);
    }
    for (i, v) in full.inputs[..n_in].iter().enumerate() {
        origin[v.index()] = Some(if i < nc {
            Origin::Invariant(i)
        } else if i < nc + nh {
            Origin::Varying
        } else {
            Origin::Step(i - nc - nh)
        });
    }
    let mut defined_by: Vec<Option<usize>> = vec![None; full.avals.len()];
    for (e, eqn) in full.eqns.iter().enumerate() {
        let is_linear = eqn.inputs.iter().any(|v| linear[v.index()]);
        let constant = eqn.inputs.iter().all(|v| {
            matches!(
                origin[v.index()],
                Some(Origin::Const | Origin::Invariant(_) | Origin::Hoistable)
            )
        });
        for v in &eqn.outputs {
            linear[v.index()] = is_linear;
            defined_by[v.index()] = Some(e);
            if !is_linear {
                origin[v.index()] = Some(if constant {
                    Origin::Hoistable
                } else {
                    Origin::Varying
                });
            }
        }
    }

    // What the linear body reads of the known values: each is a constant, an input, a
    // recomputed value or a residual.
    let mut recompute = vec![false; full.eqns.len()];
    let mut residuals: Vec<Var> = Vec::new();
    let mut invariants: Vec<usize> = Vec::new();
    let mut steps: Vec<usize> = Vec::new();
    let mut seen = vec![false; full.avals.len()];
    let mut pending: Vec<Var> = Vec::new();
    for eqn in full.eqns.iter().filter(|e| linear[e.outputs[0].index()]) {
        pending.extend(eqn.inputs.iter().filter(|v| !linear[v.index()]));
    }
    pending.extend(
        full.outputs[nh + ny..]
            .iter()
            .filter(|v| !linear[v.index()]),
    );
    while let Some(v) = pending.pop() {
        if std::mem::replace(&mut seen[v.index()], true) {
            continue;
        }
        let origin = origin[v.index()].ok_or_else(|| {
            Error::Trace("internal: a linearised loop body reads an undefined value".into())
        })?;
        match origin {
            Origin::Const => {}
            Origin::Invariant(k) => invariants.push(k),
            Origin::Step(k) => steps.push(k),
            Origin::Hoistable | Origin::Varying => match defined_by[v.index()] {
                Some(e) if origin == Origin::Hoistable || l.remat => {
                    recompute[e] = true;
                    pending.extend(full.eqns[e].inputs.iter().copied());
                }
                _ => residuals.push(v),
            },
        }
    }
    invariants.sort_unstable();
    steps.sort_unstable();

    // The known body: the primal step, then the residuals.
    let mut known = full.clone();
    known.inputs.truncate(n_in);
    known.eqns.retain(|e| !linear[e.outputs[0].index()]);
    known.outputs.truncate(nh + ny);
    known.outputs.extend(&residuals);
    let known = clean(known);

    // The linear body: constants `c_k ++ dc`, carry `dh`, per-step inputs `x_k ++ r ++ dx`.
    let tangent_inputs = &full.inputs[n_in..];
    let tangent_of = |range: std::ops::Range<usize>| -> Vec<Var> {
        let before = (0..range.start).filter(|&i| nz[i]).count();
        let count = range.filter(|&i| nz[i]).count();
        tangent_inputs[before..before + count].to_vec()
    };
    let [consts, carry, xs] = ranges(l);
    let mut body = full.clone();
    body.inputs = invariants.iter().map(|&k| full.inputs[k]).collect();
    body.inputs.extend(tangent_of(consts.clone()));
    let n_consts = body.inputs.len();
    body.inputs.extend(tangent_of(carry.clone()));
    let n_carry = body.inputs.len() - n_consts;
    body.inputs
        .extend(steps.iter().map(|&k| full.inputs[nc + nh + k]));
    body.inputs.extend(&residuals);
    body.inputs.extend(tangent_of(xs.clone()));
    body.eqns = full
        .eqns
        .iter()
        .enumerate()
        .filter(|(e, eqn)| linear[eqn.outputs[0].index()] || recompute[*e])
        .map(|(_, eqn)| eqn.clone())
        .collect();
    body.outputs = full.outputs[nh + ny..].to_vec();
    let mut mask = vec![false; invariants.len()];
    mask.resize(n_consts, true);
    mask.resize(n_consts + n_carry, true);
    mask.resize(n_consts + n_carry + steps.len() + residuals.len(), false);
    mask.resize(body.inputs.len(), true);
    let body = clean(body);

    // The known loop, then the linear loop over its residuals.
    let known_loop = Loop {
        body: std::sync::Arc::new(known),
        linear: Vec::new(),
        units: None,
        ..l.clone()
    };
    let refs: Vec<&Tensor> = x.iter().collect();
    let n_known = known_loop.body.outputs.len();
    let mut outs = Tensor::apply_all(Prim::Loop(known_loop), &refs, n_known);
    let stacked_residuals = outs.split_off(nh + ny);

    let avals = l.body.input_avals();
    let nb = batch.len();
    let tangent = |i: usize| match &t[i] {
        Tangent::Value(v) => v.clone(),
        Tangent::Zero(_) => zeros(batch, &avals[i]),
    };
    let mut inputs: Vec<Tensor> = invariants.iter().map(|&k| x[k].clone()).collect();
    inputs.extend(consts.filter(|&i| nz[i]).map(tangent));
    inputs.extend(carry.clone().filter(|&i| nz[i]).map(tangent));
    inputs.extend(steps.iter().map(|&k| x[nc + nh + k].clone()));
    inputs.extend(stacked_residuals);
    inputs.extend(xs.filter(|&i| nz[i]).map(|i| steps_first(&tangent(i), nb)));
    let linear_loop = Loop {
        body: std::sync::Arc::new(body),
        consts: n_consts,
        carry: n_carry,
        linear: mask,
        units: None,
        // Reports as the tangent loop; its transpose reports as the reverse pass.
        progress: l.progress.as_ref().map(|p| p.for_pass("scan jvp")),
        ..l.clone()
    };
    let n_lin = linear_loop.body.outputs.len();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let touts = Tensor::apply_all(Prim::Loop(linear_loop), &refs, n_lin);

    let out_avals = l.body.output_avals();
    let carried: Vec<usize> = carry.filter(|&i| nz[i]).map(|i| i - nc).collect();
    let mut tangents = Vec::with_capacity(nh + ny);
    for (k, aval) in out_avals[..nh].iter().enumerate() {
        tangents.push(match carried.iter().position(|&c| c == k) {
            Some(p) => Tangent::Value(touts[p].clone()),
            None => Tangent::zero(batch, aval),
        });
    }
    let mut next = carried.len();
    for (j, aval) in out_avals[nh..].iter().enumerate() {
        tangents.push(if nz_out[nh + j] {
            next += 1;
            Tangent::Value(steps_after_batch(&touts[next - 1], nb))
        } else {
            Tangent::zero(batch, &stacked(aval, l.length))
        });
    }
    Ok((outs, tangents))
}

/// The linearised body: inputs `c ++ h ++ x` then the tangents flagged in `nz`; outputs
/// `h' ++ y` then the tangents of the carries flagged in `nz` and the nonzero tangents of
/// `y`.
struct Linearized {
    program: Program,
}

fn linearized_body(l: &Loop, nz: &[bool], batch: &[usize]) -> Result<(Linearized, Vec<bool>)> {
    let tracing = Tracing::new();
    let avals = l.body.input_avals();
    let n = avals.len();
    let primals: Vec<Tensor> = inputs_for(&tracing, &avals, 0..n, &[])
        .into_iter()
        .map(|(_, x)| x)
        .collect();
    let mut tangents: Vec<Tangent> = avals.iter().map(|a| Tangent::zero(batch, a)).collect();
    for (i, t) in inputs_for(&tracing, &avals, (0..n).filter(|&i| nz[i]), batch) {
        tangents[i] = Tangent::Value(t);
    }
    let (outs, mut touts) =
        jvp_program_sets(&l.body, &primals, &[(tangents, batch)], Mode::Linearize)?;
    let touts = touts.swap_remove(0);
    let nz_out: Vec<bool> = touts.iter().map(|t| !t.is_zero()).collect();
    let nh = l.carry;
    let mut results = outs;
    for k in 0..nh {
        if nz[l.consts + k] {
            results.push(touts[k].instantiate());
        }
    }
    results.extend(touts[nh..].iter().filter_map(|t| t.value().cloned()));
    let program = clean(tracing.finish(&results)?);
    Ok((Linearized { program }, nz_out))
}

/// Reverse mode: the cotangents of a linear loop's inputs (`batch ++` each input's shape), given
/// those of its outputs (`None`: zero), by a loop running the other way over the transpose of
/// its body.
pub(super) fn transpose(
    l: &Loop,
    cts: &[Option<Tensor>],
    x: &[Primal],
    batch: &[usize],
) -> Result<Vec<Tangent>> {
    let (nc, nh) = (l.consts, l.carry);
    let n_in = l.body.inputs.len();
    let lin: Vec<bool> = (0..n_in).map(|i| l.is_linear(i)).collect();
    if (nc..nc + nh).any(|i| !lin[i]) {
        return Err(Error::Trace(
            "internal: transposing a loop whose carry is not linear".into(),
        ));
    }
    for (i, primal) in x.iter().enumerate() {
        if matches!(primal, Primal::Linear(_)) && !lin[i] {
            return Err(not_linear("scan"));
        }
    }
    let avals = l.body.input_avals();
    let out_avals = l.body.output_avals();
    let [consts, carry, xs] = ranges(l);
    let known_consts: Vec<usize> = consts.clone().filter(|&i| !lin[i]).collect();
    let linear_consts: Vec<usize> = consts.filter(|&i| lin[i]).collect();
    let known_xs: Vec<usize> = xs.clone().filter(|&i| !lin[i]).collect();
    let linear_xs: Vec<usize> = xs.filter(|&i| lin[i]).collect();
    let ys_with_ct: Vec<usize> = (0..l.n_ys()).filter(|&j| cts[nh + j].is_some()).collect();
    let nb = batch.len();

    // The body: constants `known c`, carry `ct_h ++ acc_c`, per-step inputs `known x ++ ct_y`;
    // outputs carry `ct_h (before the step) ++ acc_c + ct_c`, per-step `ct_x`.
    let tracing = Tracing::new();
    let with_batch = |a: &Aval| Aval::new(&concat_dims(batch, &a.shape), a.dtype);
    let mut known: Vec<Option<Tensor>> = vec![None; n_in];
    for &i in &known_consts {
        known[i] = Some(tracing.input(&avals[i]));
    }
    let ct_h: Vec<Tensor> = carry
        .clone()
        .map(|i| tracing.input(&with_batch(&avals[i])))
        .collect();
    let acc: Vec<Tensor> = linear_consts
        .iter()
        .map(|&i| tracing.input(&with_batch(&avals[i])))
        .collect();
    for &i in &known_xs {
        known[i] = Some(tracing.input(&avals[i]));
    }
    let mut out_cts: Vec<Option<Tensor>> = ct_h.iter().cloned().map(Some).collect();
    out_cts.resize(out_avals.len(), None);
    for &j in &ys_with_ct {
        out_cts[nh + j] = Some(tracing.input(&with_batch(&out_avals[nh + j])));
    }
    let in_cts = transpose_program(&l.body, &known, &out_cts, batch)?;
    let mut results: Vec<Tensor> = carry.clone().map(|i| in_cts[i].instantiate()).collect();
    for (a, &i) in acc.iter().zip(&linear_consts) {
        results.push(match &in_cts[i] {
            Tangent::Value(ct) => a + ct,
            Tangent::Zero(_) => a.clone(),
        });
    }
    results.extend(linear_xs.iter().map(|&i| in_cts[i].instantiate()));
    let body = clean(tracing.finish(&results)?);

    let known_of = |i: usize| -> Result<Tensor> {
        x[i].known()
            .cloned()
            .ok_or_else(|| Error::Trace("internal: a loop's known input is linear".into()))
    };
    let mut inputs: Vec<Tensor> = known_consts
        .iter()
        .map(|&i| known_of(i))
        .collect::<Result<_>>()?;
    for (k, i) in carry.enumerate() {
        inputs.push(match &cts[k] {
            Some(ct) => ct.clone(),
            None => zeros(batch, &avals[i]),
        });
    }
    inputs.extend(linear_consts.iter().map(|&i| zeros(batch, &avals[i])));
    for &i in &known_xs {
        inputs.push(known_of(i)?);
    }
    for &j in &ys_with_ct {
        let ct = cts[nh + j].as_ref().expect("listed with a cotangent");
        inputs.push(steps_first(ct, nb));
    }
    let transposed = Loop {
        body: std::sync::Arc::new(body),
        consts: known_consts.len(),
        carry: nh + linear_consts.len(),
        length: l.length,
        reverse: !l.reverse,
        remat: l.remat,
        linear: Vec::new(),
        units: None,
        progress: l.progress.as_ref().map(|p| p.for_pass("scan transpose")),
        sums: 0,
    };
    let n_out = transposed.body.outputs.len();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let outs = Tensor::apply_all(Prim::Loop(transposed), &refs, n_out);

    let mut result: Vec<Tangent> = (0..n_in)
        .map(|i| {
            let aval = if i < nc + nh {
                avals[i].clone()
            } else {
                stacked(&avals[i], l.length)
            };
            Tangent::zero(batch, &aval)
        })
        .collect();
    let wanted = |i: usize| matches!(x[i], Primal::Linear(_));
    for k in 0..nh {
        if wanted(nc + k) {
            result[nc + k] = Tangent::Value(outs[k].clone());
        }
    }
    for (p, &i) in linear_consts.iter().enumerate() {
        if wanted(i) {
            result[i] = Tangent::Value(outs[nh + p].clone());
        }
    }
    for (p, &i) in linear_xs.iter().enumerate() {
        if wanted(i) {
            let ct = &outs[nh + linear_consts.len() + p];
            result[i] = Tangent::Value(steps_after_batch(ct, nb));
        }
    }
    Ok(result)
}

/// The transpose of a program linear in the inputs whose value in `known` is `None`, traced in
/// the innermost frame: the known part is replayed on the known values, then the linear
/// equations are walked backwards from the outputs' cotangents `cts` (`None`: zero) with the
/// transpose rules. Returns each input's cotangent (zero for the known inputs).
pub(super) fn transpose_program(
    program: &Program,
    known: &[Option<Tensor>],
    cts: &[Option<Tensor>],
    batch: &[usize],
) -> Result<Vec<Tangent>> {
    let n = program.avals.len();
    let mut value: Vec<Option<Tensor>> = vec![None; n];
    let mut linear = vec![false; n];
    for (&v, x) in program.inputs.iter().zip(known) {
        match x {
            Some(x) => value[v.index()] = Some(x.clone()),
            None => linear[v.index()] = true,
        }
    }
    for (v, data) in &program.consts {
        value[v.index()] = Some(Tensor::from_shared(data.clone()));
    }
    for eqn in &program.eqns {
        if eqn.inputs.iter().any(|v| linear[v.index()]) {
            for v in &eqn.outputs {
                linear[v.index()] = true;
            }
            continue;
        }
        let ins: Vec<Tensor> = eqn
            .inputs
            .iter()
            .map(|v| value[v.index()].clone().expect("defined before use"))
            .collect();
        let refs: Vec<&Tensor> = ins.iter().collect();
        let outs = trace::with_source(eqn.source, || {
            Tensor::apply_all(eqn.prim.clone(), &refs, eqn.outputs.len())
        });
        for (v, out) in eqn.outputs.iter().zip(outs) {
            value[v.index()] = Some(out);
        }
    }

    let mut ct: Vec<Option<Tensor>> = vec![None; n];
    let accumulate = |ct: &mut Vec<Option<Tensor>>, v: Var, c: Tensor| {
        ct[v.index()] = Some(match ct[v.index()].take() {
            Some(prev) => prev + c,
            None => c,
        });
    };
    for (&v, c) in program.outputs.iter().zip(cts) {
        if let (Some(c), true) = (c, linear[v.index()]) {
            accumulate(&mut ct, v, c.clone());
        }
    }
    for eqn in program.eqns.iter().rev() {
        if !eqn.outputs.iter().any(|v| ct[v.index()].is_some()) {
            continue;
        }
        let out_cts: Vec<Tangent> = eqn
            .outputs
            .iter()
            .map(|&v| Tangent::or_zero(ct[v.index()].take(), batch, program.aval(v)))
            .collect();
        let ins: Vec<Primal> = eqn
            .inputs
            .iter()
            .map(|&v| {
                if linear[v.index()] {
                    Primal::Linear(program.aval(v).clone())
                } else {
                    Primal::Known(value[v.index()].clone().expect("defined before use"))
                }
            })
            .collect();
        let in_cts = trace::with_source(eqn.source, || {
            transpose_eqn(&eqn.prim, &out_cts, &ins, batch)
        })?;
        for ((&v, c), x) in eqn.inputs.iter().zip(in_cts).zip(&ins) {
            if let (Tangent::Value(c), Primal::Linear(_)) = (c, x) {
                accumulate(&mut ct, v, c);
            }
        }
    }
    Ok(program
        .inputs
        .iter()
        .map(|&v| Tangent::or_zero(ct[v.index()].take(), batch, program.aval(v)))
        .collect())
}
