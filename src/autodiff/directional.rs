//! Directional derivatives: JVPs, VJPs with a reusable pullback, Hessian-vector products,
//! and compressed Hessians (products with a few seed vectors at once).
//!
//! Each costs a small constant times one evaluation of the function (or of its gradient),
//! never a dense Jacobian or Hessian.

use super::jvp::jvp_program;
use super::sweep::split_at_seeds;
use super::{Derivative, Output, jacrev_program, vjp_program};
use crate::error::Result;
use crate::ir::passes::clean;
use crate::primitives::{Program, Tangent};
use crate::storage::Aval;
use crate::tensor::Tensor;
use crate::trace::Tracing;

/// The program `(inputs ++ tangents) -> outputs ++ [Output::Tangent { out } for out in of]`:
/// the derivative of the outputs `of` along one tangent per input `wrt` (shaped like it).
pub(crate) fn jvp_program_of(program: &Program, wrt: &[usize], of: &[usize]) -> Result<Derivative> {
    let tracing = Tracing::new();
    let in_avals = program.input_avals();
    let inputs: Vec<Tensor> = in_avals.iter().map(|a| tracing.input(a)).collect();
    let mut tangents: Vec<Tangent> = in_avals.iter().map(|a| Tangent::zero(&[], a)).collect();
    for &i in wrt {
        tangents[i] = Tangent::Value(tracing.input(&in_avals[i]));
    }
    let (outs, touts) = jvp_program(program, &inputs, &tangents, &[])?;
    let mut results = outs;
    let mut outputs: Vec<Output> = (0..results.len()).map(Output::Primal).collect();
    for (k, &o) in of.iter().enumerate() {
        results.push(touts[o].instantiate());
        outputs.push(Output::Tangent { out: k });
    }
    Ok(Derivative {
        program: clean(tracing.finish(&results)?),
        outputs,
    })
}

/// Hessian-vector products of output 0 (a scalar): the program
/// `(inputs ++ vectors) -> gradient program outputs ++ [Output::Product { wrt: i }]`, with one
/// vector per input `wrt` (shaped like it). Forward over reverse: one gradient and its
/// derivative along the vector.
pub(crate) fn hvp_program(program: &Program, wrt: &[usize]) -> Result<Derivative> {
    let grad = jacrev_program(program, wrt, &[0])?;
    let (gradients, _) = grad.jacobians();
    let forward = jvp_program_of(&grad.program, wrt, &gradients)?;
    Ok(relabel(forward, &grad, |out| Output::Product { wrt: out }))
}

/// Hessian-vector products of output 0 with `directions` seeds at once: the program
/// `inputs ++ seeds -> gradient program outputs ++ [Output::Product { wrt: i }]`, with one
/// seed input per differentiated input `wrt[k]` (shape `[directions] ++ its shape`) and each
/// product of shape `[directions] ++ shape of input wrt[i]`. The seeds are inputs so that a
/// caller can read the products' structure before binding them to constants.
pub(crate) fn hessian_products(
    program: &Program,
    wrt: &[usize],
    directions: usize,
) -> Result<Derivative> {
    let grad = jacrev_program(program, wrt, &[0])?;
    let (gradients, _) = grad.jacobians();
    let tracing = Tracing::new();
    let in_avals = grad.program.input_avals();
    let inputs: Vec<Tensor> = in_avals.iter().map(|a| tracing.input(a)).collect();
    let batch = [directions];
    let mut tangents: Vec<Tangent> = in_avals.iter().map(|a| Tangent::zero(&batch, a)).collect();
    for &i in wrt {
        let seed = Aval {
            shape: [&batch[..], &in_avals[i].shape].concat(),
            dtype: in_avals[i].dtype,
        };
        tangents[i] = Tangent::Value(tracing.input(&seed));
    }
    let (outs, touts) = jvp_program(&grad.program, &inputs, &tangents, &batch)?;
    let mut results = outs;
    let mut outputs: Vec<Output> = (0..results.len()).map(Output::Primal).collect();
    for (k, &g) in gradients.iter().enumerate() {
        results.push(touts[g].instantiate());
        outputs.push(Output::Tangent { out: k });
    }
    let forward = Derivative {
        program: clean(tracing.finish(&results)?),
        outputs,
    };
    Ok(relabel(forward, &grad, |out| Output::Product { wrt: out }))
}

/// A reverse-mode derivative split at its cotangents: the primal program
/// `inputs -> outputs ++ residuals`, and the pullback
/// `residuals ++ [cotangent of out for out in of] -> [Output::Cotangent { wrt: i }]`.
pub(crate) struct Pullback {
    pub primal: Program,
    pub n_outputs: usize,
    pub pullback: Program,
}

/// The VJP of the outputs `of` with respect to the inputs `wrt`, split so that the pullback
/// runs on residuals, as often as needed, without recomputing the function.
pub(crate) fn vjp_split(program: &Program, wrt: &[usize], of: &[usize]) -> Result<Pullback> {
    let tracing = Tracing::new();
    let in_avals = program.input_avals();
    let out_avals = program.output_avals();
    let inputs: Vec<Tensor> = in_avals.iter().map(|a| tracing.input(a)).collect();
    let cotangents: Vec<Tensor> = of.iter().map(|&o| tracing.input(&out_avals[o])).collect();
    let seeds = |_: &[Tensor]| Ok(of.iter().copied().zip(cotangents.iter().cloned()).collect());
    let (outs, cts) = vjp_program(&tracing, program, &inputs, wrt, seeds, &[])?;
    let n_outputs = outs.len();
    let results: Vec<Tensor> = outs.into_iter().chain(cts).collect();
    let full = tracing.finish(&results)?;
    let split = split_at_seeds(full, in_avals.len(), n_outputs)?;
    let seed_inputs: Vec<usize> = (in_avals.len()..in_avals.len() + of.len()).collect();
    let positions: Vec<usize> = (n_outputs..n_outputs + wrt.len()).collect();
    let pullback = split.linear(&seed_inputs, &positions)?;
    Ok(Pullback {
        primal: split.primal,
        n_outputs,
        pullback,
    })
}

/// A forward derivative of a gradient program, its outputs described in terms of the
/// original program: primal outputs as the gradient program has them, tangents of the
/// gradient of input `i` as `tangent(i)`.
fn relabel(
    forward: Derivative,
    grad: &Derivative,
    tangent: impl Fn(usize) -> Output,
) -> Derivative {
    let (gradients, _) = grad.jacobians();
    let outputs = forward
        .outputs
        .iter()
        .map(|&output| match output {
            Output::Primal(k) => grad.outputs[k],
            Output::Tangent { out } => match grad.outputs[gradients[out]] {
                Output::Jacobian { wrt, .. } => tangent(wrt),
                other => other,
            },
            other => other,
        })
        .collect();
    Derivative {
        program: forward.program,
        outputs,
    }
}
