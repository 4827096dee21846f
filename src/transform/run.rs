//! Running a compiled plan: gathering its inputs (arguments and the states' current values),
//! running it (or inlining it into an enclosing trace), and splitting its outputs by role.
//! Written states are handed on only by [`Outputs::commit`], once the caller's whole result
//! has been built, so a failed call changes no state.

use std::sync::Arc;

use super::compile::{Compiled, Executable};
use crate::autodiff::jvp_program;
use crate::error::Result;
use crate::primitives::Tangent;
use crate::state;
use crate::storage::Data;
use crate::tensor::Tensor;
use crate::trace::{self, TracedState};
use crate::tree::TreeDef;

/// One call's outputs, split by role.
pub(crate) struct Outputs {
    pub value: Vec<Tensor>,
    pub aux: Vec<Tensor>,
    /// The derivative blocks, indexed by [`Compiled::blocks`].
    pub blocks: Vec<Tensor>,
    /// New values of the states the function wrote, checked but not yet assigned.
    writes: Vec<(Arc<dyn TracedState>, Vec<Tensor>)>,
}

impl Outputs {
    /// Hands the written values on to their states (see [`state::commit`]).
    pub fn commit(self) {
        state::commit(self.writes);
    }
}

/// Runs a compiled plan on argument leaves and the states' current values.
pub(crate) fn run(compiled: &Compiled, leaves: Vec<Tensor>, debug_nan: bool) -> Result<Outputs> {
    let mut inputs = leaves;
    for (state, _) in &compiled.state_inputs {
        // Inside another trace, reading registers the state there too.
        inputs.extend(trace::read_state(state).unwrap_or_else(|| state.leaves()));
    }
    let (outputs, blocks) = if inputs.iter().any(Tensor::is_traced) {
        // Inside another transform's trace: inline the derivative program there.
        let zeros = inputs
            .iter()
            .map(|t| Ok(Tangent::zero(&[], &t.aval()?)))
            .collect::<Result<Vec<_>>>()?;
        let mut outputs = jvp_program(&compiled.whole, &inputs, &zeros, &[])?.0;
        let blocks = outputs.split_off(compiled.whole.outputs.len() - compiled.blocks.len());
        (outputs, blocks)
    } else {
        let data: Vec<Arc<Data>> = inputs
            .iter()
            .map(|t| t.data().cloned())
            .collect::<Result<_>>()?;
        let (outputs, blocks) = execute(&compiled.exec, compiled.blocks.len(), &data, debug_nan)?;
        let tensors = |data: Vec<Arc<Data>>| data.into_iter().map(Tensor::from_shared).collect();
        (tensors(outputs), tensors(blocks))
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
        writes,
    })
}

/// Values computed by a plan.
type Values = Vec<Arc<Data>>;

/// Runs an executable: the function's own outputs, and the blocks (in the compiled order).
fn execute(
    exec: &Executable,
    n_blocks: usize,
    inputs: &[Arc<Data>],
    debug_nan: bool,
) -> Result<(Values, Values)> {
    match exec {
        Executable::Whole(plan) => {
            let mut outputs = plan.run(inputs, debug_nan)?;
            let blocks = outputs.split_off(outputs.len() - n_blocks);
            Ok((outputs, blocks))
        }
        Executable::Swept {
            primal,
            n_outputs,
            sweeps,
            zeros,
        } => {
            let mut outputs = primal.run(inputs, debug_nan)?;
            let residuals = outputs.split_off(*n_outputs);
            let mut blocks = Vec::with_capacity(n_blocks);
            for (sweep, _) in sweeps {
                blocks.extend(sweep.run(&residuals, debug_nan)?.into_iter().map(Arc::new));
            }
            for (_, aval) in zeros {
                blocks.push(Arc::new(Data::zeros(&aval.shape, aval.dtype)));
            }
            Ok((outputs, blocks))
        }
    }
}
