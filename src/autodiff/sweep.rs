//! Forward mode split for sweeps, as `jax.linearize` splits a JVP.
//!
//! A dense Jacobian (or, of a gradient program, a Hessian) by forward mode pushes the identity
//! basis of each differentiated input through the program. Done in one pass, every
//! intermediate carries the whole basis as a batch axis: the memory of the pass grows with the
//! number of inputs. Here the work is split instead:
//! - a *primal* program computes the outputs and the residuals: the values the tangent
//!   computation needs, which do not depend on any direction;
//! - for each differentiated input, a *linear* program maps a chunk of directions of that
//!   input (a seed of shape `[chunk] ++ input shape`) and the residuals to the tangents of the
//!   outputs. It is run once per chunk of the input's basis, so memory is bounded by the chunk.
//!
//! Inputs that do not influence an output leave symbolic zeros, so each input's linear program
//! holds only the work that input needs.

use std::collections::{HashMap, HashSet};

use super::Output;
use super::jvp::{Mode, jvp_program_sets};
use crate::error::{Error, Result};
use crate::ir::Var;
use crate::ir::passes::clean;
use crate::primitives::{Prim, Program, Structural, Tangent};
use crate::storage::Aval;
use crate::tensor::Tensor;
use crate::trace::Tracing;

/// A program split for sweeps over the bases of its differentiated inputs.
pub(crate) struct Sweeps {
    /// `inputs -> outputs ++ residuals`: the outputs described by `outputs`, then the
    /// residuals every linear program takes first.
    pub primal: Program,
    /// What the primal program's first outputs are.
    pub outputs: Vec<Output>,
    /// One per differentiated input, in `wrt` order.
    pub columns: Vec<Columns>,
    /// Hessian blocks `(i, j)` that no sweep computes, each with its image `(j, i)`, a
    /// computed block: the block is the image with its two groups of axes swapped (see
    /// [`super::hessian_sweeps`]).
    pub mirrors: Vec<(Output, Output)>,
}

/// The linear program of one differentiated input.
pub(crate) struct Columns {
    /// The input's shape and dtype: the seed of a chunk of `chunk` directions has shape
    /// `[chunk] ++ input shape`.
    pub input: Aval,
    /// Directions per run of `program`.
    pub chunk: usize,
    /// How many chunks run at once, side by side on the threads (1: one after the other).
    pub side_by_side: usize,
    /// `residuals ++ [seed] -> tangent blocks`, each of shape `[chunk] ++ block shape`.
    pub program: Program,
    /// What each output of `program` is: `d out / d input` as [`Output::Jacobian`].
    pub blocks: Vec<Output>,
    /// The blocks that are zero whatever the input (the output does not depend on it), with
    /// their shapes (`block shape ++ input shape`) and dtypes.
    pub zeros: Vec<(Output, Aval)>,
}

/// The sweeps computing `d out_o / d x_k` for `o` in `of` and `k` in `wrt` by forward mode,
/// `chunks[k]` directions of input `wrt[k]` at a time.
pub(crate) fn forward_sweeps(
    program: &Program,
    wrt: &[usize],
    of: &[usize],
    chunks: &[usize],
) -> Result<Sweeps> {
    let tracing = Tracing::new();
    let in_avals = program.input_avals();
    let inputs: Vec<Tensor> = in_avals.iter().map(|a| tracing.input(a)).collect();
    let batches: Vec<[usize; 1]> = chunks.iter().map(|&c| [c]).collect();
    let mut sets = Vec::with_capacity(wrt.len());
    for (k, &i) in wrt.iter().enumerate() {
        let mut tangents: Vec<Tangent> = in_avals
            .iter()
            .map(|a| Tangent::zero(&batches[k], a))
            .collect();
        let seed = Aval::new(
            &super::concat_dims(&batches[k], &in_avals[i].shape),
            in_avals[i].dtype,
        );
        tangents[i] = Tangent::Value(tracing.input(&seed));
        sets.push((tangents, &batches[k][..]));
    }
    let (outs, touts) = jvp_program_sets(program, &inputs, &sets, Mode::Forward)?;

    // One program with every output: the originals, then each input's nonzero blocks.
    let mut results = outs;
    let n_outputs = results.len();
    let mut groups = Vec::with_capacity(wrt.len());
    for (k, touts) in touts.iter().enumerate() {
        let (mut blocks, mut zeros, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for (o, &out) in of.iter().enumerate() {
            let output = Output::Jacobian { out: o, wrt: k };
            match &touts[out] {
                Tangent::Zero(zero) => {
                    let shape = super::concat_dims(&zero.shape[1..], &in_avals[wrt[k]].shape);
                    zeros.push((output, Aval::new(&shape, zero.dtype)));
                }
                Tangent::Value(t) => {
                    positions.push(results.len());
                    results.push(t.clone());
                    blocks.push(output);
                }
            }
        }
        groups.push((blocks, zeros, positions));
    }
    let full = tracing.finish(&results)?;
    let n_primal_inputs = in_avals.len();
    let split = split_at_seeds(full, n_primal_inputs, n_outputs)?;
    let columns = groups
        .into_iter()
        .enumerate()
        .map(|(k, (blocks, zeros, positions))| {
            Ok(Columns {
                input: in_avals[wrt[k]].clone(),
                chunk: chunks[k],
                side_by_side: 1,
                program: split.linear(&[n_primal_inputs + k], &positions)?,
                blocks,
                zeros,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Sweeps {
        primal: split.primal,
        outputs: (0..n_outputs).map(Output::Primal).collect(),
        columns,
        mirrors: Vec::new(),
    })
}

impl Sweeps {
    /// Keeps only the `wanted` outputs of the primal program (each one it has), in that
    /// order, before the residuals.
    pub fn select_outputs(&mut self, wanted: &[Output]) {
        let n = self.outputs.len();
        let residuals = self.primal.outputs.split_off(n);
        let mut kept: Vec<Var> = wanted
            .iter()
            .map(|w| {
                let k = self
                    .outputs
                    .iter()
                    .position(|o| o == w)
                    .expect("an output it has");
                self.primal.outputs[k]
            })
            .collect();
        kept.extend(residuals);
        self.primal.outputs = kept;
        self.outputs = wanted.to_vec();
        self.primal = clean(std::mem::take(&mut self.primal));
    }
}

/// A program whose inputs are primal inputs then seeds, split into its primal part and the
/// linear part that depends on the seeds.
pub(super) struct Split {
    pub primal: Program,
    /// The original program, and the residuals: non-seed variables the linear part reads.
    full: Program,
    residuals: Vec<Var>,
    linear: HashSet<Var>,
}

pub(super) fn split_at_seeds(
    full: Program,
    n_primal_inputs: usize,
    n_outputs: usize,
) -> Result<Split> {
    let mut linear: HashSet<Var> = full.inputs[n_primal_inputs..].iter().copied().collect();
    for eqn in &full.eqns {
        if eqn.inputs.iter().any(|v| linear.contains(v)) {
            linear.extend(eqn.outputs.iter().copied());
        }
    }
    let consts: HashSet<Var> = full.consts.iter().map(|(v, _)| *v).collect();
    // Transposes and reshapes of the primal inputs (and of those) are computed again by the
    // linear part rather than passed to it: a residual is a copy made per call, where a
    // matrix product reads a transpose through strides (logreg: X^T, 512 x 64, about 10% of
    // a call). Each such view maps to the input it is a view of.
    let mut views: HashMap<Var, Var> = HashMap::new();
    let roots = |v: &Var, views: &HashMap<Var, Var>| *views.get(v).unwrap_or(v);
    for eqn in &full.eqns {
        let view = matches!(
            eqn.prim,
            Prim::Structural(Structural::Transpose(_) | Structural::Reshape(_))
        );
        if view && !linear.contains(&eqn.outputs[0]) {
            let root = roots(&eqn.inputs[0], &views);
            if full.inputs[..n_primal_inputs].contains(&root) {
                views.insert(eqn.outputs[0], root);
            }
        }
    }
    let mut residuals = Vec::new();
    let mut seen = HashSet::new();
    let mut need = |v: Var, residuals: &mut Vec<Var>| {
        let v = roots(&v, &views);
        if !linear.contains(&v) && !consts.contains(&v) && seen.insert(v) {
            residuals.push(v);
        }
    };
    for eqn in full.eqns.iter().filter(|e| linear.contains(&e.outputs[0])) {
        for &v in &eqn.inputs {
            need(v, &mut residuals);
        }
    }
    for &v in &full.outputs[n_outputs..] {
        need(v, &mut residuals);
    }
    let mut primal = Program {
        avals: full.avals.clone(),
        inputs: full.inputs[..n_primal_inputs].to_vec(),
        consts: full.consts.clone(),
        eqns: full
            .eqns
            .iter()
            .filter(|e| !linear.contains(&e.outputs[0]))
            .cloned()
            .collect(),
        outputs: full.outputs[..n_outputs].to_vec(),
        notes: Vec::new(),
    };
    primal.outputs.extend(&residuals);
    linear.extend(views.keys());
    Ok(Split {
        primal: clean(primal),
        full,
        residuals,
        linear,
    })
}

impl Split {
    /// The linear program `residuals ++ seeds -> the outputs at positions`, for the seed
    /// inputs at `seed_inputs`.
    pub fn linear(&self, seed_inputs: &[usize], positions: &[usize]) -> Result<Program> {
        let full = &self.full;
        let mut program = Program {
            avals: full.avals.clone(),
            inputs: self.residuals.clone(),
            consts: full.consts.clone(),
            eqns: full
                .eqns
                .iter()
                .filter(|e| self.linear.contains(&e.outputs[0]))
                .cloned()
                .collect(),
            outputs: positions.iter().map(|&p| full.outputs[p]).collect(),
            notes: Vec::new(),
        };
        program
            .inputs
            .extend(seed_inputs.iter().map(|&i| full.inputs[i]));
        let program = crate::ir::passes::dead_code(program);
        // Every variable the kept equations read must now be defined: these seeds'
        // equations never read another seed.
        let mut defined: HashSet<Var> = program.inputs.iter().copied().collect();
        defined.extend(program.consts.iter().map(|(v, _)| *v));
        for eqn in &program.eqns {
            if let Some(v) = eqn.inputs.iter().find(|v| !defined.contains(v)) {
                return Err(Error::Trace(format!(
                    "internal: the linear part of seeds {seed_inputs:?} reads an undefined variable {v:?}"
                )));
            }
            defined.extend(eqn.outputs.iter().copied());
        }
        Ok(clean(program))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DType;

    #[test]
    fn transposes_of_primal_inputs_are_computed_by_the_sweeps_not_passed_to_them() {
        // logreg's loss: its gradient multiplies by the transpose of the input `x`.
        let tracing = Tracing::new();
        let x = tracing.input(&Aval::new(&[6, 3], DType::F64));
        let w = tracing.input(&Aval::new(&[3], DType::F64));
        let loss = x.matmul(&w).logaddexp(0.0).sum();
        let program = tracing.finish(&[loss]).unwrap();
        let sweeps = super::super::hessian_sweeps(&program, &[1], &[0], &[3], true).unwrap();
        let residuals = &sweeps.primal.outputs[sweeps.outputs.len()..];
        let shapes: Vec<&[usize]> = (residuals.iter())
            .map(|&v| sweeps.primal.aval(v).shape.as_slice())
            .collect();
        assert!(shapes.contains(&[6, 3].as_slice()), "{shapes:?}");
        assert!(!shapes.contains(&[3, 6].as_slice()), "{shapes:?}");
        let linear = &sweeps.columns[0].program;
        let transposes = (linear.eqns.iter())
            .filter(|e| matches!(e.prim, Prim::Structural(Structural::Transpose(_))));
        assert_eq!(transposes.count(), 1, "{linear}");
    }
}
