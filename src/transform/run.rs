//! Running a compiled plan: gathering its inputs (arguments and the states' current values),
//! running it (or inlining it into an enclosing trace), and splitting its outputs by role.
//! Written states are handed on only by [`Outputs::commit`], once the caller's whole result
//! has been built, so a failed call changes no state.

use std::sync::Arc;

use rayon::prelude::*;

use super::compile::{Compiled, Executable};
use crate::autodiff::{Output, jvp_program};
use crate::error::{Error, Result};
use crate::exec::Sweep;
use crate::primitives::Tangent;
use crate::sparsity::Recover;
use crate::state;
use crate::storage::{Data, pool};
use crate::tensor::Tensor;
use crate::trace::{self, TracedState};
use crate::tree::TreeDef;

/// One call's outputs, split by role.
pub(crate) struct Outputs {
    pub value: Vec<Tensor>,
    pub aux: Vec<Tensor>,
    /// The derivative blocks, indexed by [`Compiled::blocks`] (for a sparse Hessian, its
    /// entries).
    pub blocks: Vec<Tensor>,
    /// What a pullback needs of the call (`vjp`).
    pub residuals: Vec<Arc<Data>>,
    /// New values of the states the function wrote, checked but not yet assigned.
    writes: Vec<(Arc<dyn TracedState>, Vec<Tensor>)>,
}

impl Outputs {
    /// Hands the written values on to their states (see [`state::commit`]); the caller holds
    /// their call locks.
    pub fn commit(self) {
        state::commit_held(self.writes);
    }
}

/// How a call runs.
pub(crate) struct Settings {
    /// Check every primitive's results for NaNs and infinities.
    pub debug_nan: bool,
    /// The bytes the call may allocate.
    pub memory_limit: usize,
}

/// Runs a compiled plan on argument leaves, the states' current values, and the call's
/// vectors (tangents of `jvp`, vectors of `hvp`).
pub(crate) fn run(
    compiled: &Compiled,
    leaves: Vec<Tensor>,
    vectors: Vec<Tensor>,
    settings: &Settings,
) -> Result<Outputs> {
    let mut inputs = leaves;
    for (state, _) in &compiled.state_inputs {
        // Inside another trace, reading registers the state there too.
        inputs.extend(trace::read_traced(state).unwrap_or_else(|| state.leaves()));
    }
    inputs.extend(vectors);
    let (outputs, blocks, residuals) = if inputs.iter().any(Tensor::is_traced) {
        if settings.debug_nan {
            // The enclosing call checks too, at every level.
            trace::request_debug_nan();
        }
        let (outputs, blocks) = inline(compiled, &inputs)?;
        (outputs, blocks, Vec::new())
    } else {
        let data: Vec<Arc<Data>> = inputs
            .iter()
            .map(|t| t.data().cloned())
            .collect::<Result<_>>()?;
        // The limit may have changed since the plan was built: checked before each run.
        crate::memory::check(
            compiled.name,
            compiled.needed,
            settings.memory_limit,
            || compiled.needed_note.clone(),
        )?;
        let run = execute(compiled, &data, settings)?;
        let tensors = |data: Vec<Arc<Data>>| data.into_iter().map(Tensor::from_shared).collect();
        (tensors(run.outputs), tensors(run.blocks), run.residuals)
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
    for (state, n) in &compiled.writes {
        let leaves: Vec<Tensor> = outputs.by_ref().take(*n).collect();
        state.check(&leaves)?;
        writes.push((state.clone(), leaves));
    }
    for t in blocks.iter().chain(&value).chain(&aux) {
        t.aval()?;
    }
    Ok(Outputs {
        value,
        aux,
        blocks,
        residuals,
        writes,
    })
}

/// What running an executable gives: the function's own outputs, the blocks (in the
/// compiled order) and the residuals kept for a pullback.
struct Run {
    outputs: Vec<Arc<Data>>,
    blocks: Vec<Arc<Data>>,
    residuals: Vec<Arc<Data>>,
}

/// Runs a compiled transform's executable on concrete inputs.
fn execute(compiled: &Compiled, inputs: &[Arc<Data>], settings: &Settings) -> Result<Run> {
    let debug_nan = settings.debug_nan;
    let n_blocks = compiled.blocks.len();
    let shared = |data: Vec<Data>| data.into_iter().map(Arc::new);
    Ok(match &compiled.exec {
        Executable::Whole { plan, split } => {
            // `debug_nan` names the equation of the program as traced: run it whole.
            let mut outputs = match split {
                Some(split) if !debug_nan => split.run(inputs)?,
                _ => plan.run(inputs, debug_nan)?,
            };
            let blocks = outputs.split_off(outputs.len() - n_blocks);
            Run {
                outputs,
                blocks,
                residuals: Vec::new(),
            }
        }
        Executable::Swept {
            primal,
            n_outputs,
            sweeps,
            zeros,
            mirrors,
            together,
        } => {
            let mut outputs = primal.run(inputs, debug_nan)?;
            let residuals = outputs.split_off(*n_outputs);
            let run = |(sweep, _): &(Sweep, Vec<Output>)| sweep.run(&residuals, debug_nan);
            let swept: Vec<Vec<Data>> = match together {
                true => sweeps.par_iter().map(run).collect::<Result<_>>()?,
                false => sweeps.iter().map(run).collect::<Result<_>>()?,
            };
            let mut blocks = Vec::with_capacity(n_blocks);
            for run in swept {
                blocks.extend(shared(run));
            }
            pool::recycle_all(residuals);
            for (_, a) in zeros {
                blocks.push(Arc::new(crate::memory::zeros("sweep", &a.shape, a.dtype)?));
            }
            for mirror in mirrors {
                blocks.push(Arc::new(mirror.image(&blocks[mirror.of])?));
            }
            Run {
                outputs,
                blocks,
                residuals: Vec::new(),
            }
        }
        Executable::Compressed {
            plan,
            n_outputs,
            compression,
            into,
            last,
        } => {
            // The entries of a stencil are read as its coefficients are computed, block by
            // block; `debug_nan` checks equation by equation, so runs the plan as it is.
            let streamed = match (into, debug_nan) {
                (Recover::Entries, false) => {
                    compression.stream_entries(plan, inputs, *n_outputs)?
                }
                _ => None,
            };
            let (outputs, blocks) = match streamed {
                Some(streamed) => streamed,
                None => {
                    let mut outputs = plan.run(inputs, debug_nan)?;
                    let products = outputs.split_off(*n_outputs);
                    let shapes: Vec<Vec<usize>> =
                        compiled.wrt_avals.iter().map(|a| a.shape.clone()).collect();
                    let reuse = last.take_unshared();
                    let blocks = compression.decompress(&products, &shapes, *into, reuse)?;
                    pool::recycle_all(products);
                    (outputs, blocks)
                }
            };
            let blocks: Vec<Arc<Data>> = shared(blocks).collect();
            if *into == Recover::Dense {
                last.keep(&blocks, settings.memory_limit);
            }
            Run {
                outputs,
                blocks,
                residuals: Vec::new(),
            }
        }
        Executable::Pattern(_) => Run {
            outputs: Vec::new(),
            blocks: Vec::new(),
            residuals: Vec::new(),
        },
        Executable::Vjp {
            primal, n_outputs, ..
        } => {
            let mut outputs = primal.run(inputs, debug_nan)?;
            let residuals = outputs.split_off(*n_outputs);
            Run {
                outputs,
                blocks: Vec::new(),
                residuals,
            }
        }
    })
}

/// Inside another transform's trace: the derivative program inlined there. The function's
/// own outputs, then the blocks.
fn inline(compiled: &Compiled, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let whole = match &compiled.exec {
        Executable::Whole { .. } | Executable::Swept { .. } => compiled.whole()?,
        Executable::Compressed { into, .. } if *into == Recover::Dense => compiled.whole()?,
        Executable::Compressed { .. } | Executable::Pattern(_) | Executable::Vjp { .. } => {
            return Err(Error::Trace(
                "sparse Hessians, Hessian diagonals, sparsity patterns and pullbacks cannot be \
                 computed inside another transform's trace (use hessian, hvp or jvp there)"
                    .into(),
            ));
        }
    };
    let zeros = inputs
        .iter()
        .map(|t| Ok(Tangent::zero(&[], &t.aval()?)))
        .collect::<Result<Vec<_>>>()?;
    let mut outputs = jvp_program(whole, inputs, &zeros, &[])?.0;
    let blocks = outputs.split_off(whole.outputs.len() - compiled.blocks.len());
    Ok((outputs, blocks))
}

#[cfg(test)]
mod tests {
    use crate::storage::Data;
    use crate::{Tensor, hessian};

    #[test]
    fn a_dense_hessian_from_sparsity_is_written_into_the_last_one_once_it_is_dropped() {
        let rosen = |x: &Tensor| {
            let (head, tail) = (x.slice_along(0, ..-1, 1), x.slice_along(0, 1.., 1));
            ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
        };
        let x = Tensor::linspace(-1.0, 1.0, 64);
        let h = hessian(rosen);
        let address = |x: &Tensor| {
            let result = h.call(x).unwrap();
            match &**result.tensor().unwrap().data().unwrap() {
                Data::F64(a) => (a.as_ptr() as usize, result),
                _ => unreachable!("an f64 Hessian"),
            }
        };
        let (first, held) = address(&x);
        // Held: the next call's result is new memory.
        let (second, _) = address(&x);
        assert_ne!(first, second);
        drop(held);
        // Dropped (the second result at once): each call writes into the one before.
        let (third, _) = address(&x);
        assert_eq!(third, second);
        assert_eq!(address(&x).0, third);
    }

    /// A large dense Hessian from sparsity (1100 x 1100, 9.7 MB) has its pages mapped while
    /// its plan is built only when the plan is built for a call: not to print its program.
    #[test]
    fn pages_are_mapped_ahead_only_for_a_call() {
        use crate::transform::compile::Executable;
        use crate::transform::function::{Args, signature};
        let f = |x: &Tensor| (x.slice_along(0, 1.., 1) * x.slice_along(0, ..-1, 1)).sum();
        let x = Tensor::linspace(-1.0, 1.0, 1100);
        let (signature, _) = signature(&(&x).flatten_args()).unwrap();
        let kept = |for_a_call: bool| {
            let h = hessian(f);
            let compiled = h.compiled(&signature, for_a_call).unwrap();
            let Executable::Compressed { last, .. } = &compiled.exec else {
                panic!("a Hessian from its sparsity")
            };
            last.take_unshared().len()
        };
        assert_eq!(kept(true), 1);
        assert_eq!(kept(false), 0);
        // Printing the program leaves the first call to map its pages; its result is right.
        let h = hessian(f);
        assert!(h.program(&x).is_ok());
        let hessian = h.call(&x).unwrap();
        let hessian = hessian.tensor().unwrap().to_vec::<f64>().unwrap();
        let expected = |i: usize, j: usize| f64::from(u8::from(i.abs_diff(j) == 1));
        assert!((hessian.iter().enumerate()).all(|(k, &v)| v == expected(k / 1100, k % 1100)));
    }

    #[test]
    fn a_cleared_cache_lets_go_of_the_results_it_keeps() {
        let h = hessian(|x: &Tensor| (x.slice_along(0, 1.., 1) * x.slice_along(0, ..-1, 1)).sum());
        let result = h.call(&Tensor::linspace(-1.0, 1.0, 64)).unwrap();
        let held = |result: &crate::tree::Node| {
            std::sync::Arc::strong_count(result.tensor().unwrap().data().unwrap())
        };
        // The caller's and the plan's, kept for the next call.
        assert_eq!(held(&result), 2);
        h.clear_cache();
        assert_eq!(held(&result), 1);
        assert_eq!(h.cached_plans(), 0);
    }
}
