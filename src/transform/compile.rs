//! Building a transform's derivative program for one signature.
//!
//! The differentiated variable is the joint vector `W = (grad_states leaves, argnums leaves)`;
//! one derivative program computes every block over `W`, and each case of the specification
//! picks its part (see [`super::blocks`]).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::footprint;
use super::function::{Function, Signature, Split, trace_function};
use super::mode::Evaluation;
use super::{Argnums, Kind};
use crate::autodiff::{
    Output, Sweeps, hessian_products, hessian_program, hessian_sweeps, hvp_program, jacfwd_program,
    jacfwd_sweeps, jacrev_program, jvp_program_of, vjp_split,
};
use crate::error::{Error, Result};
use crate::exec::{BatchSplit, Mirror, Plan, Sweep};
use crate::memory;
use crate::primitives::{Prim, Program};
use crate::sparsity::{
    Coloring, Compression, Reading, Recover, SparsityPattern, hessian_pattern, map_beside, stencil,
    unmapped,
};
use crate::state::GradStates;
use crate::storage::{Aval, Data};
use crate::tensor::Tensor;
use crate::trace::TracedState;
use crate::tree::TreeDef;
use crate::unit::Unit;

/// What a transform differentiates, beyond the function itself.
pub(crate) struct Spec<'a> {
    pub kind: Kind,
    pub evaluation: Evaluation,
    /// Whether a call returns the function's value.
    pub value: bool,
    /// The differentiated arguments, if any.
    pub argnums: Option<&'a Argnums>,
    pub grad_states: Option<&'a GradStates>,
    pub holomorphic: bool,
    pub check_states: bool,
    /// Directions per sweep of a forward-mode derivative; `None` chooses by memory.
    pub chunk_size: Option<usize>,
    /// The memory limit in bytes that a call must fit.
    pub memory_limit: usize,
    /// Whether the plan is built for a call about to run it (not to print its program or to
    /// inline it into another trace): only then are the pages of a large dense Hessian from
    /// sparsity mapped while the plan is built (see [`dense_hessian`]).
    pub for_a_call: bool,
}

/// How a compiled transform computes a call's outputs.
pub(crate) enum Executable {
    /// One plan: the function's outputs (value, aux, written states), then the blocks. The
    /// plan takes the argument leaves and the states' leaves, then any vectors of the call
    /// (tangents for `jvp`, vectors for `hvp`). With a split, the threads share its batch.
    Whole {
        plan: Plan,
        split: Option<BatchSplit>,
    },
    /// A primal plan computing the function's outputs, then the residuals that the sweeps
    /// read; each sweep's outputs are the blocks listed with it. Blocks that are zero whatever
    /// the inputs are not computed.
    Swept {
        primal: Plan,
        n_outputs: usize,
        sweeps: Vec<(Sweep, Vec<Output>)>,
        zeros: Vec<(Output, Aval)>,
        /// Blocks no sweep computes, after the zeros: mirror images of computed ones.
        mirrors: Vec<Mirror>,
        /// Whether the sweeps run side by side (their chunks fit the sweeps' memory budget
        /// together), rather than one after the other.
        together: bool,
    },
    /// One plan computing the function's outputs, then Hessian-vector products with the
    /// coloring's seeds (one `[colors] ++ shape` product per differentiated leaf), from which
    /// the Hessian's entries are read.
    Compressed {
        plan: Plan,
        n_outputs: usize,
        compression: Arc<Compression>,
        into: Recover,
        /// The last call's dense blocks, for the next call to write into (rosen_n4096's
        /// 134 MB faulted a page per row on every call).
        last: memory::Kept,
    },
    /// A Hessian's sparsity pattern: nothing to run.
    Pattern(Arc<SparsityPattern>),
    /// The primal plan (the function's outputs, then residuals) and the pullback
    /// (residuals, then one cotangent per value leaf, to one cotangent per differentiated
    /// leaf).
    Vjp {
        primal: Plan,
        n_outputs: usize,
        pullback: Arc<Plan>,
    },
}

/// Everything a call needs that does not depend on the values of its inputs.
pub(crate) struct Compiled {
    pub exec: Executable,
    /// How the derivative is obtained as one program, for printing and for inlining into an
    /// enclosing trace (built when first asked for).
    derivation: Derivation,
    whole: OnceLock<Result<Program>>,
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
    /// Where each derivative block is among a call's blocks.
    pub blocks: HashMap<Output, usize>,
    /// Shapes and dtypes of the differentiated leaves, in the order of `W`.
    pub wrt_avals: Vec<Aval>,
    /// Shapes and dtypes of the function's value leaves.
    pub value_avals: Vec<Aval>,
    /// The transform's name in error messages.
    pub name: &'static str,
    /// Whether a transform inlined in the function asked for `debug_nan`.
    pub debug_nan: bool,
    /// States read on other threads while the function was traced, whose values may be
    /// constants of the plan, with their versions then: the plan is stale once one changes.
    pub watched: Vec<(Arc<dyn TracedState>, u64)>,
    /// The bytes a call allocates at most (see [`footprint`]).
    pub needed: usize,
    /// What takes those bytes, and what to use instead, for an error.
    pub needed_note: String,
}

/// The traced function and what is differentiated: enough to derive the whole program.
struct Derivation {
    kind: Kind,
    evaluation: Evaluation,
    program: Program,
    wrt: Vec<usize>,
    of: Vec<usize>,
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

    /// Whether a state read on another thread while the function was traced has changed
    /// since: its value may be a constant of the plan, which then never fits again.
    pub fn is_stale(&self) -> bool {
        self.watched
            .iter()
            .any(|(s, version)| s.version() != *version)
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
    let name = spec.name();
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
    // States read on other threads: a differentiated one would lose the derivatives through
    // what was computed there; the others make the plan stale when they change.
    for (s, _) in &traced.foreign_reads {
        if grad_states.iter().any(|g| g.id() == s.id()) {
            return Err(Error::Trace(format!(
                "{name}: {} is differentiated, but it was read on another thread while the \
                 function was traced; tracing is per thread, so a value computed there is a \
                 constant and derivatives through it would be lost. Read states in the \
                 function itself and pass values to other threads (or avoid reading this state \
                 from other threads during the first call)",
                s.describe()
            )));
        }
    }
    let watched = traced.foreign_reads.clone();
    if let Some((s, _)) = watched.first() {
        log::warn!(
            "{name}: {} (and {} other states) read on another thread while the function was \
             traced; the plan is rebuilt whenever they change. Read states in the function \
             itself and pass values to helper threads",
            s.describe(),
            watched.len() - 1
        );
    }
    let writes = traced
        .states
        .iter()
        .filter_map(|slot| Some((slot.state.clone(), slot.written.as_ref()?.len())))
        .collect();

    wrt_units.extend(arg_wrt.iter().map(|&i| signature.units[i]));
    let wrt: Vec<usize> = state_wrt.iter().chain(&arg_wrt).copied().collect();
    let of: Vec<usize> = (0..traced.n_value).collect();
    let in_avals = program.input_avals();
    let wrt_avals: Vec<Aval> = wrt.iter().map(|&i| in_avals[i].clone()).collect();
    let value_avals = out_avals[..traced.n_value].to_vec();
    let evaluation = spec.evaluation;
    if matches!(
        evaluation,
        Evaluation::Hvp | Evaluation::Diagonal | Evaluation::Sparse | Evaluation::Pattern
    ) && (of.len() != 1 || !value_avals[0].shape.is_empty())
    {
        let shapes: Vec<_> = value_avals.iter().map(|a| a.shape.clone()).collect();
        return Err(Error::shape(
            spec.name(),
            format!("the function must return one scalar, got outputs of shapes {shapes:?}"),
        ));
    }
    if matches!(evaluation, Evaluation::Sparse | Evaluation::Diagonal) && spec.kind != Kind::Hessian
    {
        return Err(Error::Options(format!(
            "{name}: sparse() and diagonal() apply to hessian transforms"
        )));
    }
    let (block_bytes, dense) =
        footprint::dense_blocks(name, spec.kind, evaluation, &program, &wrt, &of)?;
    let advice = footprint::advice(spec.kind, evaluation);
    memory::check(name, block_bytes, spec.memory_limit, || {
        format!(
            "its blocks {} alone take {}; {advice}",
            footprint::shapes(&dense),
            memory::human(block_bytes)
        )
    })?;
    let start = Instant::now();
    let (exec, blocks) = executable(spec, &program, &wrt, &of)?;
    let needed = footprint::executable_bytes(&exec, &wrt_avals).max(block_bytes);
    let needed_note = if dense.is_empty() {
        format!(
            "its plan's intermediates at their peak, over inputs {}; {advice}",
            footprint::shapes(&wrt_avals)
        )
    } else {
        format!(
            "its blocks {} take {} and its intermediates the rest; {advice}",
            footprint::shapes(&dense),
            memory::human(block_bytes)
        )
    };
    memory::check(name, needed, spec.memory_limit, || needed_note.clone())?;
    log::debug!(
        "{name}: differentiated over {} input leaves, simplified and planned in {:.2?} \
         ({} equations)",
        wrt.len(),
        start.elapsed(),
        exec.equations(),
    );
    Ok(Compiled {
        exec,
        derivation: Derivation {
            kind: spec.kind,
            evaluation,
            program,
            wrt,
            of,
        },
        whole: OnceLock::new(),
        value_def: traced.value_def,
        aux_def: traced.aux_def,
        arg_defs: defs.to_vec(),
        state_inputs,
        output_units: traced.output_units,
        wrt_units,
        writes,
        n_state_leaves: state_wrt.len(),
        blocks,
        wrt_avals,
        value_avals,
        name,
        debug_nan: traced.debug_nan,
        watched,
        needed,
        needed_note,
    })
}

/// Value outputs of at most this many elements are replaced by zeros when a transform does
/// not return the value; larger ones are computed (a constant would hold their memory).
const PLACEHOLDER_MAX: usize = 4096;

/// The plan of `program`, whose first `n_value` outputs are the function's value. When the
/// transform does not return the value, small value outputs become zeros, and the work only
/// they need (the final sum of a loss, say) is dropped from the plan.
fn plan(spec: &Spec, mut program: Program, n_value: usize) -> Plan {
    if !spec.value {
        for k in 0..n_value {
            let aval = program.aval(program.outputs[k]).clone();
            if aval.numel() <= PLACEHOLDER_MAX {
                let zeros = Arc::new(Data::zeros(&aval.shape, aval.dtype));
                let placeholder = program.new_var(aval);
                program.consts.push((placeholder, zeros));
                program.outputs[k] = placeholder;
            }
        }
    }
    Plan::new(program)
}

/// The executable of one program: its plan, and the plan in parts of a batch when the
/// threads can share its rows (see [`BatchSplit`]).
fn whole(spec: &Spec, program: Program, n_value: usize) -> Executable {
    let plan = plan(spec, program, n_value);
    let split = BatchSplit::new(&plan.program);
    Executable::Whole { plan, split }
}

/// Blocks numbered in the order given.
fn numbered(order: impl IntoIterator<Item = Output>) -> HashMap<Output, usize> {
    order.into_iter().enumerate().map(|(i, o)| (o, i)).collect()
}

/// The executable of a transform, and where each of its blocks is among a call's blocks.
fn executable(
    spec: &Spec,
    program: &Program,
    wrt: &[usize],
    of: &[usize],
) -> Result<(Executable, HashMap<Output, usize>)> {
    let n_outputs = program.outputs.len();
    let own: Vec<Output> = (0..n_outputs).map(Output::Primal).collect();
    let products = || (0..wrt.len()).map(|i| Output::Product { wrt: i });
    Ok(match spec.evaluation {
        Evaluation::Vjp => {
            let split = vjp_split(program, wrt, of)?;
            let exec = Executable::Vjp {
                primal: plan(spec, split.primal, of.len()),
                n_outputs: split.n_outputs,
                pullback: Arc::new(Plan::new(split.pullback)),
            };
            (
                exec,
                numbered((0..wrt.len()).map(|i| Output::Cotangent { wrt: i })),
            )
        }
        Evaluation::Jvp => {
            let derivative = jvp_program_of(program, wrt, of)?;
            let tangents: Vec<Output> = (0..of.len()).map(|o| Output::Tangent { out: o }).collect();
            let wanted: Vec<Output> = own.iter().chain(&tangents).copied().collect();
            (
                whole(spec, derivative.select(&wanted), of.len()),
                numbered(tangents),
            )
        }
        Evaluation::Hvp => {
            let derivative = hvp_program(program, wrt)?;
            let wanted: Vec<Output> = own.iter().copied().chain(products()).collect();
            (
                whole(spec, derivative.select(&wanted), of.len()),
                numbered(products()),
            )
        }
        Evaluation::Pattern => {
            let pattern = full_pattern(spec, program, wrt)?;
            (Executable::Pattern(Arc::new(pattern)), HashMap::new())
        }
        Evaluation::Sparse => {
            let coloring = Coloring::new(Arc::new(full_pattern(spec, program, wrt)?))?;
            compressed(spec, program, wrt, coloring, Recover::Entries)?
        }
        Evaluation::Diagonal => {
            let coloring = Coloring::new(Arc::new(full_pattern(spec, program, wrt)?))?;
            compressed(spec, program, wrt, coloring, Recover::Diagonal)?
        }
        Evaluation::Dense => match spec.kind {
            Kind::Grad | Kind::JacRev => {
                let (derivative, blocks) = whole_derivative(spec.kind, program, wrt, of)?;
                (whole(spec, derivative, of.len()), blocks)
            }
            Kind::JacFwd => forward(spec, program, wrt, of)?,
            Kind::Hessian => dense_hessian(spec, program, wrt, of)?,
        },
    })
}

/// A dense Hessian: from its compressed products when its pattern, detected at plan time, is
/// sparse enough, else by sweeps. The Hessian of a program that multiplies matrices is dense
/// as a rule, and detecting that takes about as long as building the sweeps (mlp_1089: 2.4
/// and 3.5 ms): with a second thread, the sweeps are built beside the detection, and dropped
/// when the pattern is sparse enough. Other programs (elementwise, banded) are detected
/// alone: their sweeps, often larger than their compressed products, would only be thrown
/// away.
fn dense_hessian(
    spec: &Spec,
    program: &Program,
    wrt: &[usize],
    of: &[usize],
) -> Result<(Executable, HashMap<Output, usize>)> {
    let sweeps = || forward(spec, program, wrt, of);
    let (detected, dense) = if multiplies_matrices(program) && rayon::current_num_threads() > 1 {
        let (pattern, dense) = rayon::join(|| sparse_candidate(spec, program, wrt, of), sweeps);
        (Some(pattern?), Some(dense))
    } else {
        (None, None)
    };
    let otherwise = || dense.unwrap_or_else(sweeps);
    if let Some(None) = detected {
        return otherwise();
    }
    let detect = || detected.map_or_else(|| sparse_candidate(spec, program, wrt, of), Ok);
    let from_products = |pattern: &Arc<SparsityPattern>| match sparse_enough(pattern.clone())? {
        Some(coloring) => compressed(spec, program, wrt, coloring, Recover::Dense).map(Some),
        None => Ok(None),
    };
    let leaves: Vec<&Aval> = wrt
        .iter()
        .map(|&i| program.aval(program.inputs[i]))
        .collect();
    let n: usize = leaves.iter().map(|aval| aval.numel()).sum();
    let entries = n.saturating_mul(n);
    let bytes = entries.saturating_mul(leaves[0].dtype.size_bytes());
    let built = if spec.for_a_call
        && entries >= MAP_BESIDE_MIN
        && memory::Kept::would_keep(bytes, spec.memory_limit)
    {
        // The pages of a large result (one per row of a band) take longer to map than its
        // plan takes to build (rosen_n4096: 4113 page faults, about 8 ms of one thread,
        // against about 2 ms): another thread maps them while this one detects the pattern,
        // colors it and builds the plan, and the first call writes into them.
        let shapes: Vec<Vec<usize>> = leaves.iter().map(|aval| aval.shape.clone()).collect();
        map_beside(&shapes, leaves[0].dtype, detect, from_products, |built| {
            matches!(built, Ok(Some(_)))
        })?
    } else {
        unmapped(detect, from_products)?
    };
    let Some((built, zeros)) = built else {
        return otherwise();
    };
    let Some((exec, order)) = built? else {
        return otherwise();
    };
    if let (Executable::Compressed { last, .. }, Some(zeros)) = (&exec, zeros) {
        last.keep(
            &zeros.into_iter().map(Arc::new).collect::<Vec<_>>(),
            spec.memory_limit,
        );
    }
    Ok((exec, order))
}

/// Dense Hessians from sparsity of at least this many entries have their pages mapped while
/// their plan is built (rosen_n1024's 8 MiB and more).
const MAP_BESIDE_MIN: usize = 1 << 20;

/// Whether `program` (or a loop's body in it) multiplies matrices.
fn multiplies_matrices(program: &Program) -> bool {
    program.eqns.iter().any(|e| match &e.prim {
        Prim::MatMul(_) => true,
        Prim::Loop(l) => multiplies_matrices(&l.body),
        _ => false,
    })
}

/// At most this many directions over several inputs run as one pass over all of them.
const ONE_PASS_DIRECTIONS: usize = PROBE_CHUNK;

/// A dense forward-mode derivative (`jacfwd`, or a Hessian as forward over reverse): in one
/// pass over the directions of all inputs when several inputs have few directions in all, so
/// that the work every pass repeats (a loop's thousands of steps, say) runs once rather than
/// once per input; otherwise one sweep per input.
fn forward(
    spec: &Spec,
    program: &Program,
    wrt: &[usize],
    of: &[usize],
) -> Result<(Executable, HashMap<Output, usize>)> {
    let in_avals = program.input_avals();
    let directions: usize = wrt.iter().map(|&i| in_avals[i].numel()).sum();
    if wrt.len() > 1 && spec.chunk_size.is_none() && directions <= ONE_PASS_DIRECTIONS {
        let (derivative, blocks) = whole_derivative(spec.kind, program, wrt, of)?;
        return Ok((whole(spec, derivative, of.len()), blocks));
    }
    let (exec, order) = swept(spec, sweeps(spec, program, wrt, of)?, of.len());
    Ok((exec, numbered(order)))
}

/// The most upper-triangle entries of a sparsity pattern that fit the spec's memory limit.
fn pattern_entries(spec: &Spec) -> usize {
    spec.memory_limit / footprint::PATTERN_ENTRY_BYTES
}

/// The Hessian pattern, however dense, or an error when it has more entries than the memory
/// limit holds.
fn full_pattern(spec: &Spec, program: &Program, wrt: &[usize]) -> Result<SparsityPattern> {
    let most = pattern_entries(spec);
    hessian_pattern(program, wrt, Some(most))?.ok_or_else(|| Error::Memory {
        op: spec.name().to_string(),
        needed: most
            .saturating_add(1)
            .saturating_mul(footprint::PATTERN_ENTRY_BYTES),
        limit: spec.memory_limit,
        msg: format!(
            "the Hessian's sparsity pattern over inputs {} has more than {most} entries; {}",
            footprint::shapes(
                &wrt.iter()
                    .map(|&i| program.aval(program.inputs[i]).clone())
                    .collect::<Vec<_>>()
            ),
            footprint::advice(spec.kind, spec.evaluation)
        ),
    })
}

/// The pattern of a scalar function's Hessian, when it may be sparse enough for
/// [`sparse_enough`]: detection stops as soon as it has too many entries.
fn sparse_candidate(
    spec: &Spec,
    program: &Program,
    wrt: &[usize],
    of: &[usize],
) -> Result<Option<SparsityPattern>> {
    let scalar = of.len() == 1 && program.aval(program.outputs[of[0]]).shape.is_empty();
    let n: usize = wrt
        .iter()
        .map(|&i| program.aval(program.inputs[i]).numel())
        .sum();
    if !scalar || n < 8 {
        return Ok(None);
    }
    // With more than n^2 / 8 entries in the upper triangle, some row has more than n / 4
    // entries, and a coloring needs more colors than that: stop detecting there.
    let most = (n.saturating_mul(n) / 8).min(pattern_entries(spec));
    hessian_pattern(program, wrt, Some(most))
}

/// A dense Hessian is computed from its sparsity when its pattern takes at most a quarter as
/// many colors (Hessian-vector products) as it has columns.
fn sparse_enough(pattern: Arc<SparsityPattern>) -> Result<Option<Coloring>> {
    let n = pattern.size();
    let coloring = Coloring::new(pattern)?;
    Ok((coloring.colors * 4 <= n).then_some(coloring))
}

/// The executable computing a Hessian from compressed products: from the coefficients of
/// their stencil where they have one with at most twice as many offsets as colors (see
/// [`crate::sparsity::stencil`]), else from one Hessian-vector product per color.
fn compressed(
    spec: &Spec,
    program: &Program,
    wrt: &[usize],
    coloring: Coloring,
    into: Recover,
) -> Result<(Executable, HashMap<Output, usize>)> {
    let colors = coloring.colors;
    let derivative = hessian_products(program, wrt, colors)?;
    let own: Vec<Output> = (0..program.outputs.len()).map(Output::Primal).collect();
    let products = (0..wrt.len()).map(|i| Output::Product { wrt: i });
    let wanted: Vec<Output> = own.iter().copied().chain(products).collect();
    let products = derivative.select(&wanted);
    let n_inputs = program.inputs.len();
    // Each coefficient array of a stencil costs less than a product with a seed.
    let stencil = stencil::coefficients(&products, n_inputs, own.len())?
        .filter(|s| s.offsets.len() <= 2 * colors && s.offsets.len() < Reading::NO_TERM as usize);
    let (derivative, compression) = match stencil {
        Some(stencil) => (stencil.program, coloring.stencil(stencil.offsets)),
        None => {
            let in_avals = program.input_avals();
            let seeds = wrt.iter().enumerate().map(|(k, &i)| {
                let seed = coloring.seed(k, &in_avals[i].shape, in_avals[i].dtype);
                Arc::new(seed)
            });
            let program = bind_inputs(products, n_inputs, seeds);
            (program, coloring.products()?)
        }
    };
    let blocks = match into {
        Recover::Dense => numbered((0..wrt.len()).flat_map(|i| {
            (0..wrt.len()).map(move |j| Output::Hessian {
                out: 0,
                wrt: (i, j),
            })
        })),
        Recover::Diagonal => numbered((0..wrt.len()).map(|i| Output::Product { wrt: i })),
        Recover::Entries => HashMap::new(),
    };
    let exec = Executable::Compressed {
        // One value output: compressed Hessians are of scalar functions.
        plan: plan(spec, derivative, 1),
        n_outputs: own.len(),
        compression: Arc::new(compression),
        into,
        last: memory::Kept::default(),
    };
    Ok((exec, blocks))
}

/// `program` with its inputs from position `first` on bound to constants.
fn bind_inputs(
    mut program: Program,
    first: usize,
    values: impl Iterator<Item = Arc<Data>>,
) -> Program {
    let bound = program.inputs.split_off(first);
    program.consts.extend(bound.into_iter().zip(values));
    program
}

impl Spec<'_> {
    /// The transform's name in error messages.
    pub fn name(&self) -> &'static str {
        match self.evaluation {
            Evaluation::Dense => self.kind.name(),
            Evaluation::Hvp => "hvp",
            Evaluation::Diagonal => "hessian diagonal",
            Evaluation::Sparse => "sparse hessian",
            Evaluation::Pattern => "hessian_sparsity",
            Evaluation::Jvp => "jvp",
            Evaluation::Vjp => "vjp",
        }
    }
}

impl Executable {
    /// The number of equations of its plans.
    pub fn equations(&self) -> usize {
        match self {
            Executable::Whole { plan, .. } | Executable::Compressed { plan, .. } => {
                plan.program.len()
            }
            Executable::Swept { primal, sweeps, .. } => {
                primal.program.len()
                    + sweeps
                        .iter()
                        .map(|(s, _)| s.plan.program.len())
                        .sum::<usize>()
            }
            Executable::Pattern(_) => 0,
            Executable::Vjp {
                primal, pullback, ..
            } => primal.program.len() + pullback.program.len(),
        }
    }
}

impl Compiled {
    /// How the executable computes the derivative, when not as one program.
    pub fn notes(&self) -> Vec<String> {
        match &self.exec {
            Executable::Swept {
                sweeps,
                mirrors,
                together,
                ..
            } => {
                let mut notes: Vec<String> = (sweeps.iter().enumerate())
                    .map(|(k, (sweep, _))| {
                        let at_once = match sweep.side_by_side {
                            1 => String::new(),
                            n => format!(", {n} side by side"),
                        };
                        format!(
                            "runs in sweeps: variable {k} ({} directions) in chunks of {}{at_once}",
                            sweep.input.numel(),
                            sweep.chunk
                        )
                    })
                    .collect();
                if *together {
                    notes.push(
                        "runs its sweeps side by side, their chunks shared by the threads".into(),
                    );
                }
                if !mirrors.is_empty() {
                    notes.push(format!(
                        "takes {} blocks from their mirror images (the Hessian is symmetric): \
                         a variable's sweep computes the blocks of the variables read after it",
                        mirrors.len()
                    ));
                }
                notes
            }
            Executable::Compressed { compression, .. } => {
                let nnz = compression.pattern.nnz();
                vec![match &compression.reading {
                    Reading::Colors { colors, .. } => format!(
                        "computed from its sparsity: a star coloring of {nnz} entries takes \
                         {colors} colors, so {colors} Hessian-vector products per call, then \
                         each entry is read from one"
                    ),
                    Reading::Stencil { offsets, .. } => format!(
                        "computed from its sparsity: its Hessian-vector products are a stencil \
                         of {} offset(s), so its {nnz} entries are read from {} coefficient \
                         arrays per call",
                        offsets.len(),
                        offsets.len() * compression.pattern.block_shapes().len()
                    ),
                }]
            }
            Executable::Whole { split, .. } => (split.iter())
                .map(|split| {
                    format!(
                        "runs in {} parts of its batch of {} rows side by side, one per thread",
                        split.parts(),
                        split.rows()
                    )
                })
                .collect(),
            Executable::Pattern(_) | Executable::Vjp { .. } => Vec::new(),
        }
    }

    /// The derivative as one program: the function's outputs, then every block (for `hvp`
    /// and `jvp`, after the call's vectors as inputs).
    pub fn whole(&self) -> Result<&Program> {
        let d = &self.derivation;
        self.whole
            .get_or_init(|| match d.evaluation {
                Evaluation::Dense
                | Evaluation::Sparse
                | Evaluation::Diagonal
                | Evaluation::Pattern => Ok(whole_derivative(d.kind, &d.program, &d.wrt, &d.of)?.0),
                Evaluation::Hvp | Evaluation::Jvp => match &self.exec {
                    Executable::Whole { plan, .. } => Ok(plan.program.clone()),
                    _ => Err(Error::Trace(
                        "internal: a directional plan in one program".into(),
                    )),
                },
                Evaluation::Vjp => Ok(whole_derivative(Kind::JacRev, &d.program, &d.wrt, &d.of)?.0),
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The derivative of `program` as one program: its outputs, then the blocks `kind` asks for,
/// with where each block is among them (after the program's own outputs).
fn whole_derivative(
    kind: Kind,
    program: &Program,
    wrt: &[usize],
    of: &[usize],
) -> Result<(Program, HashMap<Output, usize>)> {
    let derivative = match kind {
        Kind::Grad | Kind::JacRev => jacrev_program(program, wrt, of)?,
        Kind::JacFwd => jacfwd_program(program, wrt, of)?,
        Kind::Hessian => hessian_program(program, wrt, of)?,
    };
    let mut wanted: Vec<Output> = (0..program.outputs.len()).map(Output::Primal).collect();
    let mut blocks = HashMap::new();
    for &output in &derivative.outputs {
        let asked = matches!(
            (kind, output),
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
    Ok((derivative.select(&wanted), blocks))
}

/// Bytes the intermediates of one sweep may take at once, when the chunk size is chosen by
/// memory: through loops, which run step after step, chunks are as large as this allows, to
/// share each step's fixed costs among many directions; otherwise it bounds the chunks run
/// side by side.
const SWEEP_BYTES: usize = 32 << 20;

/// Bytes the intermediates of one chunk of a sweep without loops may take, when the chunk
/// size is chosen by memory: about a core's own cache, so that a chunk's values are still in
/// cache when the next operation reads them. Such chunks run side by side, one per thread.
const CHUNK_BYTES: usize = 2 << 20;

/// Directions tried per sweep when measuring a sweep's memory per direction.
const PROBE_CHUNK: usize = 32;

/// The forward-mode derivative of `program` split for sweeps, with each input's chunk size
/// given by the spec or chosen by memory: a sweep through loops in chunks whose intermediates
/// fit [`SWEEP_BYTES`] (shared among the threads when all directions fit), any other as
/// [`cached_chunks`] says.
fn sweeps(spec: &Spec, program: &Program, wrt: &[usize], of: &[usize]) -> Result<Sweeps> {
    let in_avals = program.input_avals();
    let sizes: Vec<usize> = wrt.iter().map(|&i| in_avals[i].numel().max(1)).collect();
    // Second derivatives commute for real and for holomorphic functions.
    let symmetric = spec.holomorphic || wrt.iter().all(|&i| !in_avals[i].dtype.is_complex());
    let build = |chunks: &[usize]| match spec.kind {
        Kind::Hessian => hessian_sweeps(program, wrt, of, chunks, symmetric),
        _ => jacfwd_sweeps(program, wrt, of, chunks),
    };
    // Of the gradient program's outputs, the primal part keeps the function's own.
    let own: Vec<Output> = (0..program.outputs.len()).map(Output::Primal).collect();
    let build = |chunks: &[usize]| -> Result<Sweeps> {
        let mut sweeps = build(chunks)?;
        sweeps.select_outputs(&own);
        Ok(sweeps)
    };
    if let Some(k) = spec.chunk_size {
        let chunks: Vec<usize> = sizes.iter().map(|&n| n.min(k.max(1))).collect();
        return build(&chunks);
    }
    // A sweep that runs loops (step after step, on one thread) shares directions that all fit
    // among the threads, its chunks side by side: the chunk and how many run at once.
    let threads = rayon::current_num_threads();
    let loops = (program.eqns.iter()).any(|e| matches!(e.prim, Prim::Loop(_)));
    let shared = |n: usize| {
        let parts = threads.min(n / SIDE_BY_SIDE_DIRECTIONS);
        (loops && parts > 1).then(|| (n.div_ceil(parts), parts))
    };
    // Probed with the chunk it would share, so that the probe is the sweep when it fits.
    let probe: Vec<usize> = (sizes.iter())
        .map(|&n| shared(n).map_or(n.min(PROBE_CHUNK), |(chunk, _)| chunk))
        .collect();
    let probed = build(&probe)?;
    let (chunks, side_by_side): (Vec<usize>, Vec<usize>) = probed
        .columns
        .iter()
        .zip(&sizes)
        .zip(&probe)
        .map(|((columns, &n), &tried)| {
            let per_direction = Plan::new(columns.program.clone()).peak_bytes() / tried;
            if !loops {
                return cached_chunks(n, per_direction, threads);
            }
            let fits = (SWEEP_BYTES / per_direction.max(1)).clamp(1, n);
            match shared(n) {
                Some(split) if fits == n => split,
                _ => (even_chunk(n, fits), 1),
            }
        })
        .unzip();
    let mut sweeps = if chunks == probe {
        probed
    } else {
        build(&chunks)?
    };
    for (columns, parts) in sweeps.columns.iter_mut().zip(side_by_side) {
        columns.side_by_side = parts;
    }
    Ok(sweeps)
}

/// The chunk size and how many chunks run side by side, for a sweep without loops of `n`
/// directions of `per_direction` bytes each: chunks that fit [`CHUNK_BYTES`], one per thread
/// while the chunks together fit [`SWEEP_BYTES`]. Directions that fit one chunk run as one,
/// on the calling thread: split between two, mlp_177's first-layer sweep took 0.19-0.32 ms
/// against 0.23 ms on one, as waking the other thread and waiting for the slower half cost as
/// much as the half saves.
fn cached_chunks(n: usize, per_direction: usize, threads: usize) -> (usize, usize) {
    let per_direction = per_direction.max(1);
    let chunk = even_chunk(n, CHUNK_BYTES / per_direction);
    let at_once = (SWEEP_BYTES / chunk.saturating_mul(per_direction)).clamp(1, threads.max(1));
    (chunk, at_once.min(n.div_ceil(chunk)))
}

/// The chunk size that splits `n` directions into as few chunks of at most `most` as it can,
/// of equal sizes (but the last), so that the last chunk is not mostly empty directions.
fn even_chunk(n: usize, most: usize) -> usize {
    n.div_ceil(n.div_ceil(most.max(1)))
}

/// The fewest directions per chunk when a sweep's directions are split among the threads:
/// fewer would leave each step of a loop too little work for its fixed costs.
const SIDE_BY_SIDE_DIRECTIONS: usize = 16;

/// The executable of a split derivative (of a function with `n_value` value outputs), and
/// the order of its blocks.
fn swept(spec: &Spec, sweeps: Sweeps, n_value: usize) -> (Executable, Vec<Output>) {
    let mut order = Vec::new();
    let mut zeros = Vec::new();
    let mut runs = Vec::new();
    let shapes: Vec<Vec<usize>> = (sweeps.columns.iter())
        .map(|c| c.input.shape.clone())
        .collect();
    for columns in sweeps.columns {
        order.extend(&columns.blocks);
        let sweep = Sweep::new(
            columns.program,
            columns.input,
            columns.chunk,
            columns.side_by_side,
        );
        runs.push((sweep, columns.blocks));
        zeros.extend(columns.zeros);
    }
    let mirrors: Vec<Mirror> = (sweeps.mirrors.iter())
        .map(|&(_, image)| {
            let Output::Hessian { wrt: (j, i), .. } = image else {
                unreachable!("internal: only Hessian blocks are mirrored")
            };
            Mirror {
                of: (order.iter().position(|&o| o == image))
                    .expect("internal: a mirror's image is a computed block"),
                first: shapes[j].clone(),
                second: shapes[i].clone(),
            }
        })
        .collect();
    order.extend(zeros.iter().map(|(o, _)| *o));
    order.extend(sweeps.mirrors.iter().map(|&(block, _)| block));
    // Side by side, the threads wake once per call rather than once per sweep, and small
    // sweeps fill the threads' idle time: when the chunks are many enough to share evenly
    // (mlp_1089: 32.4 -> 27.0 ms; mlp_177's four sweeps, one chunk each, are not) and fit
    // the sweeps' memory budget together. Never on one thread, where the pool's thread would
    // only take the work from the calling one, waking up for it on every call (mlp_177 on one
    // thread: 0.378 -> 0.260 ms).
    let running: usize = (runs.iter())
        .map(|(sweep, _)| footprint::sweep_bytes(sweep))
        .fold(0, usize::saturating_add);
    let chunks: usize = (runs.iter())
        .map(|(sweep, _)| sweep.input.numel().div_ceil(sweep.chunk.max(1)))
        .sum();
    let threads = rayon::current_num_threads();
    let exec = Executable::Swept {
        primal: plan(spec, sweeps.primal, n_value),
        n_outputs: sweeps.outputs.len(),
        together: threads > 1 && runs.len() > 1 && chunks >= 4 * threads && running <= SWEEP_BYTES,
        sweeps: runs,
        zeros,
        mirrors,
    };
    (exec, order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_without_loops_run_cache_sized_chunks_side_by_side_within_the_sweep_budget() {
        // mlp_1089's first sweep: 512 directions of about 226 KiB each.
        assert_eq!(cached_chunks(512, 231_432, 2), (9, 2));
        // All directions in one chunk: one run.
        assert_eq!(cached_chunks(64, 12_288, 2), (64, 1));
        // Directions larger than the cache: one at a time on each thread, while two fit the
        // sweep's budget together.
        assert_eq!(cached_chunks(10, 4 << 20, 2), (1, 2));
        assert_eq!(cached_chunks(10, 20 << 20, 2), (1, 1));
        // Equal chunks: 512 directions in at most 166 at a time are four chunks of 128.
        assert_eq!(even_chunk(512, 166), 128);
        assert_eq!(even_chunk(7, 100), 7);
    }
}
