//! What a call of a transform allocates, known before it runs: the dense blocks it returns
//! and its plans' intermediates at their peak. Checked against the memory limit when the plan
//! is built (the blocks before differentiating, the whole after planning) and before each run,
//! so that a call too large for the machine is an error naming the bytes, the shapes and what
//! to use instead, never an abort.

use super::Kind;
use super::compile::Executable;
use super::mode::Evaluation;
use crate::error::Result;
use crate::exec::Sweep;
use crate::memory;
use crate::primitives::Program;
use crate::sparsity::Recover;
use crate::storage::Aval;

/// Bytes a sparsity pattern takes per upper-triangle entry while it is detected, stored and
/// used (keys, both triangles' columns, values and where each value is read from).
pub(crate) const PATTERN_ENTRY_BYTES: usize = 64;

/// The dense blocks a transform returns for a traced `program` differentiated over the inputs
/// `wrt` at the outputs `of`: `out ++ in_i ++ in_j` for Hessians, `out ++ in_i` for
/// Jacobians; none for the products, patterns and sparse forms.
pub(crate) fn dense_blocks(
    op: &str,
    kind: Kind,
    evaluation: Evaluation,
    program: &Program,
    wrt: &[usize],
    of: &[usize],
) -> Result<(usize, Vec<Aval>)> {
    if evaluation != Evaluation::Dense {
        return Ok((0, Vec::new()));
    }
    let ins: Vec<&Aval> = wrt
        .iter()
        .map(|&i| program.aval(program.inputs[i]))
        .collect();
    let mut blocks = Vec::new();
    for &o in of {
        let out = program.aval(program.outputs[o]);
        for a in &ins {
            let rows = [out.shape.as_slice(), &a.shape].concat();
            match kind {
                Kind::Hessian => {
                    for b in &ins {
                        blocks.push(Aval::new(&[rows.as_slice(), &b.shape].concat(), out.dtype));
                    }
                }
                Kind::Grad | Kind::JacRev | Kind::JacFwd => {
                    blocks.push(Aval::new(&rows, out.dtype));
                }
            }
        }
    }
    Ok((memory::avals_bytes(op, &blocks)?, blocks))
}

/// The bytes a run of `exec` allocates at most: its plans' intermediates at their peak and
/// the results it assembles outside them.
pub(crate) fn executable_bytes(exec: &Executable, wrt: &[Aval]) -> usize {
    let dense_hessian = || {
        wrt.iter()
            .flat_map(|a| wrt.iter().map(move |b| (a, b)))
            .map(|(a, b)| {
                let shape = [a.shape.as_slice(), &b.shape].concat();
                memory::array_bytes("hessian", &shape, a.dtype).unwrap_or(usize::MAX)
            })
            .fold(0usize, usize::saturating_add)
    };
    match exec {
        Executable::Whole { plan, .. } => plan.peak_bytes(),
        Executable::Swept {
            primal,
            sweeps,
            zeros,
            mirrors,
            together,
            ..
        } => {
            // Each computed block's bytes, in order; a mirror image takes as many.
            let mut computed = Vec::new();
            for (sweep, _) in sweeps {
                let n = sweep.input.numel();
                for out in sweep.plan.program.output_avals() {
                    let per_direction = memory::array_bytes("sweep", &out.shape[1..], out.dtype)
                        .unwrap_or(usize::MAX);
                    computed.push(per_direction.saturating_mul(n));
                }
            }
            let running = sweeps.iter().map(|(sweep, _)| sweep_bytes(sweep));
            let sweep_peak = match together {
                true => running.fold(0, usize::saturating_add),
                false => running.max().unwrap_or(0),
            };
            let zeros = memory::avals_bytes(
                "sweep",
                &zeros.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(),
            )
            .unwrap_or(usize::MAX);
            let blocks = (computed.iter())
                .chain(mirrors.iter().map(|m| &computed[m.of]))
                .fold(0usize, |sum, &b| sum.saturating_add(b));
            primal
                .peak_bytes()
                .saturating_add(blocks)
                .saturating_add(zeros)
                .saturating_add(sweep_peak)
        }
        Executable::Compressed {
            plan,
            compression,
            into,
            ..
        } => {
            let results = match into {
                Recover::Dense => dense_hessian(),
                Recover::Entries => compression
                    .pattern
                    .nnz()
                    .saturating_mul(PATTERN_ENTRY_BYTES / 2),
                Recover::Diagonal => 0,
            };
            plan.peak_bytes().saturating_add(results)
        }
        Executable::Pattern(_) => 0,
        Executable::Vjp {
            primal, pullback, ..
        } => primal.peak_bytes().saturating_add(pullback.peak_bytes()),
    }
}

/// What to use instead of a computation that does not fit.
pub(crate) fn advice(kind: Kind, evaluation: Evaluation) -> &'static str {
    match (kind, evaluation) {
        (Kind::Hessian, Evaluation::Dense) => {
            "compute less than the dense Hessian: hessian(f).sparse() (its nonzero entries), \
             .diagonal(), or hvp(f) (Hessian-vector products); .chunk_size(k) bounds the \
             intermediates of its sweeps; or raise the limit with .memory_limit(bytes)"
        }
        (Kind::JacFwd | Kind::JacRev, Evaluation::Dense) => {
            "compute products with the Jacobian instead: jvp(f) or vjp(f); .chunk_size(k) \
             bounds the intermediates of jacfwd's sweeps; or raise the limit with \
             .memory_limit(bytes)"
        }
        (_, Evaluation::Sparse | Evaluation::Diagonal | Evaluation::Pattern) => {
            "the Hessian's sparsity pattern is too dense for this size: use hvp(f) \
             (Hessian-vector products), or raise the limit with .memory_limit(bytes)"
        }
        _ => {
            "compute on smaller inputs, use .chunk_size(k) where forward mode runs in \
             sweeps, or raise the limit with .memory_limit(bytes)"
        }
    }
}

/// Shapes for a message: `f64[200000,200000], ...` (the first few).
pub(crate) fn shapes(avals: &[Aval]) -> String {
    let mut listed: Vec<String> = avals.iter().take(4).map(ToString::to_string).collect();
    if avals.len() > 4 {
        listed.push(format!("and {} more", avals.len() - 4));
    }
    listed.join(", ")
}

/// The most bytes a sweep's chunks hold at once while it runs: a chunk's intermediates and
/// seed, times the chunks run side by side.
pub(crate) fn sweep_bytes(sweep: &Sweep) -> usize {
    let n = sweep.input.numel();
    let seed =
        memory::array_bytes("sweep", &[sweep.chunk, n], sweep.input.dtype).unwrap_or(usize::MAX);
    let chunk = sweep.plan.peak_bytes().saturating_add(seed);
    chunk.saturating_mul(sweep.side_by_side)
}
