//! Differentiation as program-to-program transforms.
//!
//! - Forward mode ([`jvp_program`]) replays a program, pushing a tangent through every equation
//!   with the primitive's JVP rule. Tangents carry a leading batch of directions, so the whole
//!   identity basis goes through in one pass.
//! - Reverse mode ([`vjp_program`]) is linearise-then-transpose.
//! - [`jacfwd_program`], [`jacrev_program`] and [`hessian_program`] (forward over reverse)
//!   build dense Jacobian and Hessian programs from these, and say what each output of the
//!   program they build is ([`Derivative`]).
//!
//! Every derived program is an ordinary program: it is cleaned of dead and repeated work here,
//! then simplified, planned and run like any other, and can be differentiated again.

mod directional;
mod jvp;
mod loops;
mod sweep;
mod transpose;

use std::collections::{HashMap, HashSet};

pub(crate) use self::directional::{hessian_products, hvp_program, jvp_program_of, vjp_split};
pub(crate) use self::jvp::jvp_program;
pub(crate) use self::sweep::Sweeps;
pub(crate) use self::transpose::vjp_program;
use crate::error::Result;
use crate::ir::passes::clean;
use crate::primitives::{Creation, Program, Tangent, concat_dims};
use crate::storage::Aval;
use crate::tensor::Tensor;
use crate::trace::Tracing;

/// What one output of a derivative program is. `out` indexes the differentiated outputs and
/// `wrt` the differentiated inputs, in the order the transform was asked for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Output {
    /// Output `k` of the original program.
    Primal(usize),
    /// `d out / d wrt`, of shape `out shape ++ wrt shape`.
    Jacobian { out: usize, wrt: usize },
    /// `d2 out / d wrt.0 d wrt.1`, of shape `out shape ++ wrt.0 shape ++ wrt.1 shape`.
    Hessian { out: usize, wrt: (usize, usize) },
    /// A directional derivative of `out`: `sum_i d out / d wrt_i t_i` for the given
    /// tangents `t` (a JVP), of shape `out shape`.
    Tangent { out: usize },
    /// The cotangent of `wrt`: `sum_o c_o d out_o / d wrt` for the given cotangents `c`
    /// (a VJP), of shape `wrt shape`.
    Cotangent { wrt: usize },
    /// Block `wrt` of a Hessian-vector product of output 0, `sum_j H[wrt][j] v_j`, of shape
    /// `wrt shape`; with a batch of vectors, of shape `[batch] ++ wrt shape`.
    Product { wrt: usize },
}

/// A derivative program, with what each of its outputs is.
pub(crate) struct Derivative {
    pub program: Program,
    pub outputs: Vec<Output>,
}

impl Derivative {
    /// The positions of the Jacobian outputs (the gradients, in a gradient program) and, for
    /// each, its `(out, wrt)`.
    pub(super) fn jacobians(&self) -> (Vec<usize>, Vec<(usize, usize)>) {
        self.outputs
            .iter()
            .enumerate()
            .filter_map(|(k, output)| match *output {
                Output::Jacobian { out, wrt } => Some((k, (out, wrt))),
                _ => None,
            })
            .unzip()
    }

    /// The program with only the `wanted` outputs, in that order (each must be one it has).
    pub fn select(mut self, wanted: &[Output]) -> Program {
        let position: HashMap<Output, usize> = self
            .outputs
            .iter()
            .enumerate()
            .map(|(i, &o)| (o, i))
            .collect();
        self.program.outputs = wanted
            .iter()
            .map(|o| self.program.outputs[position[o]])
            .collect();
        clean(self.program)
    }
}

/// Every `(out, wrt)` pair, in row-major order.
fn pairs(of: usize, wrt: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..of).flat_map(move |o| (0..wrt).map(move |i| (o, i)))
}

/// Rows `offset..offset + len` of the `total x len` slice of the identity, shaped
/// `[total] ++ shape`: one block of the standard basis, generated at run time.
fn basis(tracing: &Tracing, aval: &Aval, total: usize, offset: usize) -> Result<Tensor> {
    let eye = Creation::Eye {
        rows: total,
        cols: aval.numel(),
        offset: -(offset as i64),
        dtype: aval.dtype,
    };
    let mut eye = tracing.emit(eye.into(), &[])?;
    Ok(eye
        .swap_remove(0)
        .reshape_exact(&concat_dims(&[total], &aval.shape)))
}

/// Rows `offset..offset + len` of `t` along its first axis (all of it when that is everything).
fn rows(t: &Tensor, offset: usize, len: usize) -> Tensor {
    if offset == 0 && t.shape().is_ok_and(|s| s.first() == Some(&len)) {
        t.clone()
    } else {
        t.slice_along(0, offset as isize..(offset + len) as isize, 1)
    }
}

/// The program `x -> outputs ++ [d out_o / d x_i for o in of, for i in wrt]`, by reverse mode.
pub(crate) fn jacrev_program(program: &Program, wrt: &[usize], of: &[usize]) -> Result<Derivative> {
    let tracing = Tracing::new();
    let in_avals = program.input_avals();
    let out_avals = program.output_avals();
    let inputs: Vec<Tensor> = in_avals.iter().map(|a| tracing.input(a)).collect();
    let sizes: Vec<usize> = of.iter().map(|&o| out_avals[o].numel()).collect();
    let starts = crate::primitives::starts(sizes.iter().copied());
    let total: usize = sizes.iter().sum();
    // A single scalar output needs no batch of cotangents: its seed is just 1.
    let scalar = of.len() == 1 && out_avals[of[0]].shape.is_empty();
    let batch = if scalar { vec![] } else { vec![total] };
    let seeds = |_: &[Tensor]| -> Result<Vec<(usize, Tensor)>> {
        of.iter()
            .enumerate()
            .map(|(k, &o)| {
                let seed = if scalar {
                    Tensor::scalar_of(1.0, out_avals[o].dtype)
                } else {
                    basis(&tracing, &out_avals[o], total, starts[k])?
                };
                Ok((o, seed))
            })
            .collect()
    };
    let (outs, cts) = vjp_program(&tracing, program, &inputs, wrt, seeds, &batch)?;
    let mut results = outs;
    let mut outputs: Vec<Output> = (0..results.len()).map(Output::Primal).collect();
    for (k, i) in pairs(of.len(), wrt.len()) {
        let block = if scalar {
            cts[i].clone()
        } else {
            rows(&cts[i], starts[k], sizes[k])
        };
        let shape = concat_dims(&out_avals[of[k]].shape, &in_avals[wrt[i]].shape);
        results.push(block.reshape_exact(&shape));
        outputs.push(Output::Jacobian { out: k, wrt: i });
    }
    Ok(Derivative {
        program: clean(tracing.finish(&results)?),
        outputs,
    })
}

/// The program `x -> outputs ++ [d out_o / d x_i for o in of, for i in wrt]`, by forward mode
/// with the whole basis of all `wrt` inputs in one batch.
pub(crate) fn jacfwd_program(program: &Program, wrt: &[usize], of: &[usize]) -> Result<Derivative> {
    let tracing = Tracing::new();
    let in_avals = program.input_avals();
    let out_avals = program.output_avals();
    let inputs: Vec<Tensor> = in_avals.iter().map(|a| tracing.input(a)).collect();
    let sizes: Vec<usize> = wrt.iter().map(|&i| in_avals[i].numel()).collect();
    let starts = crate::primitives::starts(sizes.iter().copied());
    let total: usize = sizes.iter().sum();
    let mut tangents: Vec<Tangent> = in_avals
        .iter()
        .map(|a| Tangent::zero(&[total], a))
        .collect();
    for (k, &i) in wrt.iter().enumerate() {
        tangents[i] = Tangent::Value(basis(&tracing, &in_avals[i], total, starts[k])?);
    }
    let (outs, touts) = jvp_program(program, &inputs, &tangents, &[total])?;
    let mut results = outs;
    let mut outputs: Vec<Output> = (0..results.len()).map(Output::Primal).collect();
    for (k, i) in pairs(of.len(), wrt.len()) {
        let (out, input) = (&out_avals[of[k]].shape, &in_avals[wrt[i]].shape);
        let t = touts[of[k]].instantiate();
        // [n_i] ++ out_shape -> in_shape ++ out_shape -> out_shape ++ in_shape
        let block = rows(&t, starts[i], sizes[i]).reshape_exact(&concat_dims(input, out));
        let (ri, ro) = (input.len(), out.len());
        results.push(if ri == 0 || ro == 0 {
            block.reshape_exact(&concat_dims(out, input))
        } else {
            let perm: Vec<usize> = (ri..ri + ro).chain(0..ri).collect();
            block.permute(&perm)
        });
        outputs.push(Output::Jacobian { out: k, wrt: i });
    }
    Ok(Derivative {
        program: clean(tracing.finish(&results)?),
        outputs,
    })
}

/// A forward Jacobian of a gradient program's Jacobian outputs, described in terms of the
/// original program: the Jacobian of gradient `blocks[out]` (the gradient of output `o` with
/// respect to input `i`) with respect to input `j` is the Hessian block `(o, (i, j))`.
fn second_order(blocks: &[(usize, usize)], output: Output) -> Output {
    match output {
        Output::Jacobian { out, wrt: j } => {
            let (o, i) = blocks[out];
            Output::Hessian {
                out: o,
                wrt: (i, j),
            }
        }
        other => other,
    }
}

/// The program `x -> outputs ++ gradients ++ Hessians`: forward mode over reverse mode.
pub(crate) fn hessian_program(
    program: &Program,
    wrt: &[usize],
    of: &[usize],
) -> Result<Derivative> {
    let grad = jacrev_program(program, wrt, of)?;
    // The forward pass differentiates the gradient program's Jacobian outputs.
    let (positions, blocks) = grad.jacobians();
    let forward = jacfwd_program(&grad.program, wrt, &positions)?;
    let outputs = forward
        .outputs
        .iter()
        .map(|&output| match output {
            Output::Primal(k) => grad.outputs[k],
            other => second_order(&blocks, other),
        })
        .collect();
    Ok(Derivative {
        program: forward.program,
        outputs,
    })
}

/// The Hessian by forward over reverse, split for sweeps: the gradient program's outputs
/// (the original outputs and the gradients, described by [`Sweeps::outputs`]) and one linear
/// program per differentiated input `wrt[j]`, run on `chunks[j]` directions at a time, whose
/// outputs are the columns of the blocks [`Output::Hessian`] `{ out, wrt: (i, j) }`.
///
/// With `symmetric` (a real or holomorphic Hessian), the sweep of `wrt[j]` leaves out the
/// blocks `(i, j)` of the inputs `wrt[i]` that the program reads before `wrt[j]`, which
/// [`Sweeps::mirrors`] lists: they are the blocks `(j, i)` of the sweep of `wrt[i]` with their
/// two groups of axes swapped. With them goes the work only they needed: a later layer's
/// sweep no longer runs reverse mode back through the earlier layers.
pub(crate) fn hessian_sweeps(
    program: &Program,
    wrt: &[usize],
    of: &[usize],
    chunks: &[usize],
    symmetric: bool,
) -> Result<Sweeps> {
    let grad = jacrev_program(program, wrt, of)?;
    let (positions, blocks) = grad.jacobians();
    let mut sweeps = sweep::forward_sweeps(&grad.program, wrt, &positions, chunks)?;
    let second = |output: Output| second_order(&blocks, output);
    for columns in &mut sweeps.columns {
        columns.blocks = columns.blocks.iter().map(|&b| second(b)).collect();
        for (block, _) in &mut columns.zeros {
            *block = second(*block);
        }
    }
    if symmetric {
        // Inputs in the order the program first reads them.
        let first_read: Vec<(usize, usize)> = (wrt.iter().enumerate())
            .map(|(k, &i)| {
                let v = program.inputs[i];
                let at = program.eqns.iter().position(|e| e.inputs.contains(&v));
                (at.unwrap_or(usize::MAX), k)
            })
            .collect();
        let computed: HashSet<Output> = (sweeps.columns.iter())
            .flat_map(|c| c.blocks.iter().copied())
            .collect();
        // The block's image, when the block is mirrored.
        let image = |block: &Output| match *block {
            Output::Hessian { out, wrt: (i, j) } if first_read[i] < first_read[j] => {
                let image = Output::Hessian { out, wrt: (j, i) };
                computed.contains(&image).then_some(image)
            }
            _ => None,
        };
        for columns in &mut sweeps.columns {
            let (mut blocks, mut outputs) = (Vec::new(), Vec::new());
            for (&block, &v) in columns.blocks.iter().zip(&columns.program.outputs) {
                match image(&block) {
                    Some(image) => sweeps.mirrors.push((block, image)),
                    None => {
                        blocks.push(block);
                        outputs.push(v);
                    }
                }
            }
            if blocks.len() < columns.blocks.len() {
                (columns.blocks, columns.program.outputs) = (blocks, outputs);
                columns.program = clean(std::mem::take(&mut columns.program));
            }
        }
    }
    sweeps.outputs = sweeps
        .outputs
        .iter()
        .map(|&output| match output {
            Output::Primal(k) => grad.outputs[k],
            other => other,
        })
        .collect();
    Ok(sweeps)
}

/// Jacobians by forward mode, split for sweeps (see [`hessian_sweeps`]); the columns' blocks
/// are [`Output::Jacobian`] `{ out, wrt: j }`.
pub(crate) fn jacfwd_sweeps(
    program: &Program,
    wrt: &[usize],
    of: &[usize],
    chunks: &[usize],
) -> Result<Sweeps> {
    sweep::forward_sweeps(program, wrt, of, chunks)
}
