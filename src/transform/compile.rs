//! Building a transform's derivative program for one signature, running it, and arranging the
//! resulting blocks into trees.
//!
//! The differentiated variable is the joint vector `W = (grad_states leaves, argnums leaves)`;
//! one derivative program computes every block over `W`, and each case of the specification
//! picks its part: the state-state blocks (`var_grads`), the argument-argument blocks
//! (`arg_grads`), or, through `joint`, the mixed ones too.

use std::sync::Arc;

use super::function::{Function, Signature, Split, trace_function};
use super::{Argnums, Kind};
use crate::autodiff::{hessian_program, jacfwd_program, jacrev_program, jvp_program};
use crate::error::{Error, Result};
use crate::exec::{Plan, simplify};
use crate::state::{GradStates, StateCore};
use crate::tensor::{Aval, Data, Tensor};
use crate::trace;
use crate::tree::{Node, TreeDef};
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
    pub state_inputs: Vec<(Arc<StateCore>, Vec<LeafType>)>,
    /// Units of the function's outputs: value leaves, aux leaves, written state leaves.
    pub output_units: Vec<Option<Unit>>,
    /// Units of the differentiated leaves, in the order of `W`.
    pub wrt_units: Vec<Option<Unit>>,
    /// States the function writes, in output order, with their structure and leaf count.
    pub writes: Vec<(Arc<StateCore>, TreeDef, usize)>,
    /// Differentiated leaves: how many belong to grad states (they come first in `W`).
    pub n_state_leaves: usize,
    /// Differentiated leaves belonging to arguments.
    pub n_arg_leaves: usize,
}

/// Shape, dtype and unit of a leaf: what a plan depends on.
pub(crate) type LeafType = (Aval, Option<Unit>);

fn leaf_types(leaves: &[Tensor]) -> Result<Vec<LeafType>> {
    leaves.iter().map(|t| Ok((t.aval()?, t.unit()))).collect()
}

impl Compiled {
    /// Whether the states this plan reads still have the shapes, dtypes and units it was
    /// built for.
    pub fn fits_states(&self) -> bool {
        self.state_inputs
            .iter()
            .all(|(s, types)| leaf_types(&s.leaves().1).as_ref() == Ok(types))
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
        if grad_states[..k].iter().any(|t| Arc::ptr_eq(s, t)) {
            return Err(Error::Options(format!(
                "{name}: grad_states lists {} twice",
                s.describe()
            )));
        }
    }
    // brainstate passes the states to JAX ahead of the arguments, so their dtypes are checked first.
    for s in &grad_states {
        for leaf in s.leaves().1 {
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
    let traced = trace_function(f, signature, name, split)?;
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
    let mut state_inputs: Vec<(Arc<StateCore>, Vec<LeafType>)> = Vec::new();
    for slot in &traced.states {
        if let Some(read) = &slot.read {
            state_inputs.push((slot.state.clone(), leaf_types(read)?));
        }
    }
    // Then the grad states never read (zero blocks), or an error under check_states.
    let mut state_wrt = Vec::new();
    let mut wrt_units = Vec::new();
    for s in &grad_states {
        let pos = match state_inputs.iter().position(|(t, _)| Arc::ptr_eq(s, t)) {
            Some(pos) => pos,
            None if spec.check_states => {
                return Err(Error::Options(format!(
                    "{name}: {} is in grad_states but the function never reads it \
                     (check_states(false) gives it zero blocks instead)",
                    s.describe()
                )));
            }
            None => {
                let current = leaf_types(&s.leaves().1)?;
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
        .filter_map(|slot| {
            let (def, leaves) = slot.written.as_ref()?;
            Some((slot.state.clone(), def.clone(), leaves.len()))
        })
        .collect();

    wrt_units.extend(arg_wrt.iter().map(|&i| signature.units[i]));
    let wrt: Vec<usize> = state_wrt.iter().chain(&arg_wrt).copied().collect();
    let of: Vec<usize> = (0..traced.n_value).collect();
    let mut derived = match spec.kind {
        Kind::Grad | Kind::JacRev => jacrev_program(&program, &wrt, &of)?,
        Kind::JacFwd => jacfwd_program(&program, &wrt, &of)?,
        Kind::Hessian => hessian_program(&program, &wrt, &of)?,
    };
    // Keep the function's own outputs (value, aux, written states) and the blocks, which come last.
    let n_blocks = match spec.kind {
        Kind::Hessian => of.len() * wrt.len() * wrt.len(),
        _ => of.len() * wrt.len(),
    };
    let total = derived.outputs.len();
    let mut outputs = derived.outputs[..program.outputs.len()].to_vec();
    outputs.extend_from_slice(&derived.outputs[total - n_blocks..]);
    derived.outputs = outputs;
    Ok(Compiled {
        plan: Plan::new(simplify(derived)),
        value_def: traced.value_def,
        aux_def: traced.aux_def,
        arg_defs: defs.to_vec(),
        state_inputs,
        output_units: traced.output_units,
        wrt_units,
        writes,
        n_state_leaves: state_wrt.len(),
        n_arg_leaves: arg_wrt.len(),
    })
}

/// One call's outputs, split by role.
pub(crate) struct Outputs {
    pub value: Vec<Tensor>,
    pub aux: Vec<Tensor>,
    pub blocks: Vec<Tensor>,
}

/// Runs a compiled plan on argument leaves and the states' current values, then assigns the
/// written states (only once everything has succeeded).
pub(crate) fn run(compiled: &Compiled, leaves: Vec<Tensor>, debug_nan: bool) -> Result<Outputs> {
    let mut inputs = leaves;
    for (state, _) in &compiled.state_inputs {
        // Inside another trace, reading registers the state there too.
        let (_, current) = trace::read_state(state).unwrap_or_else(|| state.leaves());
        inputs.extend(current);
    }
    let program = &compiled.plan.program;
    let outputs: Vec<Tensor> = if inputs.iter().any(Tensor::is_traced) {
        // Inside another transform's trace: inline the derivative program there.
        jvp_program(program, &inputs, &vec![None; inputs.len()], &[]).0
    } else {
        let data: Vec<Arc<Data>> = inputs
            .iter()
            .map(|t| t.data().cloned())
            .collect::<Result<_>>()?;
        compiled
            .plan
            .run(&data, debug_nan)?
            .into_iter()
            .map(Tensor::from_shared)
            .collect()
    };
    let n_value = compiled.value_def.num_leaves();
    let n_aux = compiled.aux_def.as_ref().map_or(0, TreeDef::num_leaves);
    // The function's own outputs keep the units they had when traced.
    let units = compiled
        .output_units
        .iter()
        .copied()
        .chain(std::iter::repeat(None));
    let mut outputs = outputs.into_iter().zip(units).map(|(t, u)| t.with_unit(u));
    let value: Vec<Tensor> = outputs.by_ref().take(n_value).collect();
    let aux: Vec<Tensor> = outputs.by_ref().take(n_aux).collect();
    let mut writes = Vec::new();
    for (state, def, n) in &compiled.writes {
        let leaves: Vec<Tensor> = outputs.by_ref().take(*n).collect();
        state.check_write(def, &leaves)?;
        writes.push((state, def, leaves));
    }
    let blocks: Vec<Tensor> = outputs.collect();
    if let Some(e) = blocks
        .iter()
        .chain(&value)
        .chain(&aux)
        .find_map(Tensor::error)
    {
        return Err(e.clone());
    }
    for (state, def, leaves) in writes {
        if !trace::write_state(state, def, &leaves) {
            state.assign(leaves);
        }
    }
    Ok(Outputs { value, aux, blocks })
}

/// Which differentiated variables a block index runs over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    States,
    Args,
}

/// Derivative blocks of one call, with what is needed to arrange them into trees.
pub(crate) struct Blocks<'a> {
    pub kind: Kind,
    pub compiled: &'a Compiled,
    pub argnums: &'a Argnums,
    pub grad_states: Option<&'a GradStates>,
    pub unit_aware: bool,
    pub blocks: &'a [Tensor],
}

impl Blocks<'_> {
    /// The blocks over `rows` (and `cols`, for Hessians) as trees: output tree / `rows` tree
    /// (/ `cols` tree). Argument trees follow `argnums` (no tuple level for an integer); state
    /// trees follow `grad_states`.
    pub fn part(&self, rows: Part, cols: Part) -> Node {
        let w = self.compiled.n_state_leaves + self.compiled.n_arg_leaves;
        let states_def = self.grad_states.map(GradStates::def);
        let tree = |part: Part, leaf: &mut dyn FnMut() -> Node| -> Node {
            match (part, self.argnums) {
                (Part::States, _) => states_def.as_ref().expect("grad_states given").build(leaf),
                (Part::Args, Argnums::One(a)) => self.compiled.arg_defs[*a].build(leaf),
                (Part::Args, Argnums::Many(v)) => Node::Tuple(
                    v.iter()
                        .map(|&a| self.compiled.arg_defs[a].build(leaf))
                        .collect(),
                ),
            }
        };
        // With unit_aware, d^k out / d w_p (d w_q) carries unit(out) / (unit(w_p) unit(w_q)).
        let block = |o: usize, index: usize, wrt: &[usize]| -> Node {
            let tensor = &self.blocks[index];
            if !self.unit_aware {
                return Node::Leaf(tensor.clone());
            }
            let one = Unit::ONE;
            let unit = wrt
                .iter()
                .fold(self.compiled.output_units[o].unwrap_or(one), |u, &p| {
                    u / self.compiled.wrt_units[p].unwrap_or(one)
                });
            Node::Leaf(if unit.is_dimensionless() {
                if unit.scale() == 1.0 {
                    tensor.clone()
                } else {
                    tensor * unit.scale()
                }
            } else {
                tensor.with_unit(Some(unit))
            })
        };
        let start = |part: Part| {
            if part == Part::States {
                0
            } else {
                self.compiled.n_state_leaves
            }
        };
        let for_output = |o: usize| -> Node {
            let mut p = start(rows);
            tree(rows, &mut || {
                let row = p;
                p += 1;
                if self.kind != Kind::Hessian {
                    return block(o, o * w + row, &[row]);
                }
                let mut q = start(cols);
                tree(cols, &mut || {
                    let col = q;
                    q += 1;
                    block(o, (o * w + row) * w + col, &[row, col])
                })
            })
        };
        if self.kind == Kind::Grad {
            return for_output(0);
        }
        let mut o = 0;
        self.compiled.value_def.build(&mut || {
            let node = for_output(o);
            o += 1;
            node
        })
    }
}
