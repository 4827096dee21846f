//! Building a transform's derivative program for one signature.
//!
//! The differentiated variable is the joint vector `W = (grad_states leaves, argnums leaves)`;
//! one derivative program computes every block over `W`, and each case of the specification
//! picks its part (see [`super::blocks`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::function::{Function, Signature, Split, trace_function};
use super::{Argnums, Kind};
use crate::autodiff::{Output, hessian_program, jacfwd_program, jacrev_program};
use crate::error::{Error, Result};
use crate::exec::Plan;
use crate::state::GradStates;
use crate::storage::Aval;
use crate::tensor::Tensor;
use crate::trace::TracedState;
use crate::tree::TreeDef;
use crate::unit::Unit;

/// What a transform differentiates, beyond the function itself.
pub(crate) struct Spec<'a> {
    pub kind: Kind,
    /// The differentiated arguments, if any.
    pub argnums: Option<&'a Argnums>,
    pub grad_states: Option<&'a GradStates>,
    pub holomorphic: bool,
    pub check_states: bool,
}

/// Everything a call needs that does not depend on the values of its inputs.
pub(crate) struct Compiled {
    pub plan: Plan,
    pub value_def: TreeDef,
    pub aux_def: Option<TreeDef>,
    pub arg_defs: Vec<TreeDef>,
    /// States whose current values follow the argument leaves as inputs (those the function
    /// read, then grad states it did not read), with the leaf types the plan was built for.
    pub state_inputs: Vec<(Arc<dyn TracedState>, Vec<LeafType>)>,
    /// Units of the function's outputs: value leaves, aux leaves, written state leaves.
    pub output_units: Vec<Option<Unit>>,
    /// Units of the differentiated leaves, in the order of `W`.
    pub wrt_units: Vec<Option<Unit>>,
    /// States the function writes, in output order, with their leaf counts.
    pub writes: Vec<(Arc<dyn TracedState>, usize)>,
    /// Differentiated leaves: how many belong to grad states (they come first in `W`).
    pub n_state_leaves: usize,
    /// Where each derivative block is among the plan's outputs, after the function's own.
    pub blocks: HashMap<Output, usize>,
}

/// Shape, dtype and unit of a leaf: what a plan depends on.
pub(crate) type LeafType = (Aval, Option<Unit>);

fn leaf_types(leaves: &[Tensor]) -> Result<Vec<LeafType>> {
    leaves.iter().map(|t| Ok((t.aval()?, t.unit()))).collect()
}

impl Compiled {
    /// The structure of the aux data (empty when the function has none).
    pub fn aux_def(&self) -> &TreeDef {
        static NONE: TreeDef = TreeDef::Tuple(Vec::new());
        self.aux_def.as_ref().unwrap_or(&NONE)
    }

    /// Whether the states this plan reads still have the shapes, dtypes and units it was
    /// built for.
    pub fn fits_states(&self) -> bool {
        self.state_inputs
            .iter()
            .all(|(s, types)| leaf_types(&s.leaves()).as_ref() == Ok(types))
    }
}

/// The input dtype rules of `jax.hessian` (its `jacfwd` and `jacrev` checks), in its order.
fn check_differentiable(name: &str, what: &str, aval: &Aval, holomorphic: bool) -> Result<()> {
    let dtype = aval.dtype;
    let fail = |msg: &str| {
        Err(Error::dtype(
            name,
            format!("{msg} ({what}, shape {:?})", aval.shape),
            dtype,
        ))
    };
    if holomorphic && !dtype.is_complex() {
        return fail("holomorphic=true requires inputs with a complex dtype");
    }
    if !dtype.is_inexact() {
        return fail(
            "differentiated inputs must be floating point or complex; integer and boolean inputs cannot be differentiated",
        );
    }
    if !holomorphic && dtype.is_complex() {
        return fail(
            "real inputs are required; for a holomorphic function of complex inputs set holomorphic(true)",
        );
    }
    Ok(())
}

/// The output dtype rules: `jacrev` (so `grad` and `hessian`) needs real outputs, or complex
/// ones with `holomorphic`; `jacfwd` allows complex outputs of real inputs.
fn check_output(kind: Kind, aval: &Aval, holomorphic: bool) -> Result<()> {
    let name = kind.name();
    let dtype = aval.dtype;
    if holomorphic && !dtype.is_complex() {
        return Err(Error::dtype(
            name,
            "holomorphic=true requires outputs with a complex dtype",
            dtype,
        ));
    }
    if !dtype.is_inexact() {
        return Err(Error::dtype(
            name,
            "the function's output must be floating point or complex",
            dtype,
        ));
    }
    if !holomorphic && dtype.is_complex() && kind != Kind::JacFwd {
        return Err(Error::dtype(
            name,
            "real outputs are required; for a holomorphic function set holomorphic(true)",
            dtype,
        ));
    }
    Ok(())
}

/// Validates `argnums` against the function's arity; returns the indices.
fn check_argnums(name: &str, argnums: &Argnums, arity: usize) -> Result<Vec<usize>> {
    let indices = argnums.indices();
    if indices.is_empty() {
        return Err(Error::Options(format!(
            "{name}: argnums must name at least one argument"
        )));
    }
    for (k, &i) in indices.iter().enumerate() {
        if i >= arity {
            return Err(Error::Options(format!(
                "{name}: argnums {i} is out of range for a function of {arity} positional argument(s)"
            )));
        }
        if indices[..k].contains(&i) {
            return Err(Error::Options(format!(
                "{name}: argnums {indices:?} repeats argument {i}"
            )));
        }
    }
    Ok(indices)
}

/// Traces `f` for arguments of the given structures and avals and builds its derivative plan.
pub(crate) fn compile<F: Function<Sig>, Sig>(
    f: &F,
    split: fn(&F::Output) -> Split,
    spec: &Spec,
    signature: &Signature,
) -> Result<Compiled> {
    let (defs, avals) = (&signature.defs, &signature.avals);
    let name = spec.kind.name();
    let grad_states = spec.grad_states.map(GradStates::states).unwrap_or_default();
    for (k, s) in grad_states.iter().enumerate() {
        if grad_states[..k].iter().any(|t| t.id() == s.id()) {
            return Err(Error::Options(format!(
                "{name}: grad_states lists {} twice",
                s.describe()
            )));
        }
    }
    // brainstate passes the states to JAX ahead of the arguments, so their dtypes are checked first.
    for s in &grad_states {
        for leaf in s.leaves() {
            check_differentiable(name, &s.describe(), &leaf.aval()?, spec.holomorphic)?;
        }
    }

    // Differentiated argument leaves, in argnums order.
    let mut starts = vec![0];
    for d in defs {
        starts.push(starts[starts.len() - 1] + d.num_leaves());
    }
    let mut arg_wrt = Vec::new();
    if let Some(argnums) = spec.argnums {
        for a in check_argnums(name, argnums, F::ARITY)? {
            for (i, aval) in avals.iter().enumerate().take(starts[a + 1]).skip(starts[a]) {
                check_differentiable(name, &format!("argument {a}"), aval, spec.holomorphic)?;
                arg_wrt.push(i);
            }
        }
    }
    let start = Instant::now();
    let traced = trace_function(f, signature, name, split)?;
    log::debug!(
        "{name}: traced the function in {:.2?} ({} equations)",
        start.elapsed(),
        traced.program.len()
    );
    let mut program = traced.program;
    let out_avals = program.output_avals();
    for aval in &out_avals[..traced.n_value] {
        check_output(spec.kind, aval, spec.holomorphic)?;
    }
    if spec.kind == Kind::Grad && (traced.n_value != 1 || !out_avals[0].shape.is_empty()) {
        let shapes: Vec<_> = out_avals[..traced.n_value]
            .iter()
            .map(|a| a.shape.clone())
            .collect();
        return Err(Error::shape(
            "grad",
            format!(
                "the function must return one scalar, got outputs of shapes {shapes:?} (use jacrev for others)"
            ),
        ));
    }

    // State inputs follow the argument leaves: first those read, in first-read order.
    let mut state_inputs: Vec<(Arc<dyn TracedState>, Vec<LeafType>)> = Vec::new();
    for slot in &traced.states {
        if let Some(read) = &slot.read {
            state_inputs.push((slot.state.clone(), leaf_types(read)?));
        }
    }
    // Then the grad states never read (zero blocks), or an error under check_states.
    let mut state_wrt = Vec::new();
    let mut wrt_units = Vec::new();
    for s in &grad_states {
        let pos = match state_inputs.iter().position(|(t, _)| t.id() == s.id()) {
            Some(pos) => pos,
            None if spec.check_states => {
                return Err(Error::Options(format!(
                    "{name}: {} is in grad_states but the function never reads it \
                     (check_states(false) gives it zero blocks instead)",
                    s.describe()
                )));
            }
            None => {
                let current = leaf_types(&s.leaves())?;
                for (aval, _) in &current {
                    let var = program.new_var(aval.clone());
                    program.inputs.push(var);
                }
                state_inputs.push((s.clone(), current));
                state_inputs.len() - 1
            }
        };
        let first = avals.len()
            + state_inputs[..pos]
                .iter()
                .map(|(_, a)| a.len())
                .sum::<usize>();
        for (k, (_, unit)) in state_inputs[pos].1.iter().enumerate() {
            state_wrt.push(first + k);
            wrt_units.push(*unit);
        }
    }
    let writes = traced
        .states
        .iter()
        .filter_map(|slot| Some((slot.state.clone(), slot.written.as_ref()?.len())))
        .collect();

    wrt_units.extend(arg_wrt.iter().map(|&i| signature.units[i]));
    let wrt: Vec<usize> = state_wrt.iter().chain(&arg_wrt).copied().collect();
    let of: Vec<usize> = (0..traced.n_value).collect();
    let start = Instant::now();
    let derivative = match spec.kind {
        Kind::Grad | Kind::JacRev => jacrev_program(&program, &wrt, &of)?,
        Kind::JacFwd => jacfwd_program(&program, &wrt, &of)?,
        Kind::Hessian => hessian_program(&program, &wrt, &of)?,
    };
    log::debug!(
        "{name}: differentiated over {} input leaves in {:.2?} ({} equations)",
        wrt.len(),
        start.elapsed(),
        derivative.program.len()
    );
    // Keep the function's own outputs (value, aux, written states), then the blocks asked for.
    let mut wanted: Vec<Output> = (0..program.outputs.len()).map(Output::Primal).collect();
    let mut blocks = HashMap::new();
    for &output in &derivative.outputs {
        let asked = matches!(
            (spec.kind, output),
            (Kind::Hessian, Output::Hessian { .. })
                | (
                    Kind::Grad | Kind::JacRev | Kind::JacFwd,
                    Output::Jacobian { .. }
                )
        );
        if asked {
            blocks.insert(output, blocks.len());
            wanted.push(output);
        }
    }
    let start = Instant::now();
    let plan = Plan::new(derivative.select(&wanted));
    log::debug!(
        "{name}: simplified and planned in {:.2?} ({} equations)",
        start.elapsed(),
        plan.program.len()
    );
    Ok(Compiled {
        plan,
        value_def: traced.value_def,
        aux_def: traced.aux_def,
        arg_defs: defs.to_vec(),
        state_inputs,
        output_units: traced.output_units,
        wrt_units,
        writes,
        n_state_leaves: state_wrt.len(),
        blocks,
    })
}
