//! Program simplification: constant folding here, and the structural passes of
//! [`crate::ir::passes`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::ir::passes::clean;
use crate::ir::{Eqn, Var};
use crate::primitives::{BinaryOp, Elementwise, Loop, Prim, Program, Structural, UnaryOp};
use crate::storage::{Aval, DType, Data};

/// Largest output (in elements) that constant folding computes ahead of time. Larger constant
/// subprograms, like tangent bases, stay generators that run with the program.
const FOLD_LIMIT: usize = 4096;

/// Folds small constants, turns large constants of one repeated value into broadcasts, merges
/// equal scalar constants and folds products with them, folds negations into the sums that
/// read them, moves loop-invariant work out of loops, turns products that only regroup an
/// operand (by a tangent basis) into reshapes and transposes, moves sums of matrix products
/// out of loop bodies (the loops sum them a block of steps at a time), takes per-step outputs
/// that restate a per-step input from its stack, moves pads of large and of small values onto
/// what they are computed from, merges duplicates, composes chains of transposes and of
/// reshapes, drops dead code and renumbers variables.
pub(crate) fn simplify(program: Program) -> Program {
    let program = uniform_constants(fold_constants(program));
    let program = fold_scalar_factors(merge_scalar_constants(program));
    let program = super::hoist::hoist_invariants(fold_negations(program));
    let program = super::one_hot::regroup_selecting_products(program);
    let program = super::accumulate::move_accumulations(program);
    let program = super::hoist::restate_stacked_inputs(program);
    clean(compose_structural(sink_pads(program)))
}

/// Constants of one element, equal to the bit and of one dtype and shape, merged into one:
/// common subexpression elimination then merges the equations that read them. Derivative
/// rules make the same factor (the 2 of a square) once per rule that needs it.
fn merge_scalar_constants(mut program: Program) -> Program {
    let mut first: HashMap<(Aval, [u64; 2]), Var> = HashMap::new();
    let mut rename: HashMap<Var, Var> = HashMap::new();
    program.consts.retain(|(v, data)| {
        let Some(bits) = element_bits(data) else {
            return true;
        };
        let key = (program.avals[v.index()].clone(), bits);
        match first.get(&key) {
            Some(&earlier) => {
                rename.insert(*v, earlier);
                false
            }
            None => {
                first.insert(key, *v);
                true
            }
        }
    });
    for v in program
        .eqns
        .iter_mut()
        .flat_map(|e| &mut e.inputs)
        .chain(&mut program.outputs)
    {
        *v = *rename.get(v).unwrap_or(v);
    }
    program
}

/// The bits of the one element of `data`, if it has one.
fn element_bits(data: &Data) -> Option<[u64; 2]> {
    let bits = match data {
        Data::Bool(a) => [u64::from(*a.first()?), 0],
        Data::I64(a) => [*a.first()? as u64, 0],
        Data::F32(a) => [u64::from(a.first()?.to_bits()), 0],
        Data::F64(a) => [a.first()?.to_bits(), 0],
        Data::C64(a) => a
            .first()
            .map(|z| [z.re.to_bits().into(), z.im.to_bits().into()])?,
        Data::C128(a) => a.first().map(|z| [z.re.to_bits(), z.im.to_bits()])?,
    };
    (data.shape().iter().product::<usize>() == 1).then_some(bits)
}

/// Products of `f64` values with scalar constants simplified, to the bit (but for the sign of
/// a NaN), here and in loop bodies: `x * 1` is `x` and `x + x` is `x * 2`; a negation moves
/// into the factor, as `(-x) * c` and `-(x * c)` are `x * -c`; and `(x * 2^k) * c` is
/// `x * (2^k c)` for `k >= 0` and `|c| >= 1` (scaling by such a power of two is exact, and
/// overflows only where the whole product does). Derivative rules chain such factors (the 2
/// of a square, the -1 of a difference, the ones of a sum's cotangent), each a pass over the
/// values.
fn fold_scalar_factors(mut program: Program) -> Program {
    let is = |eqn: &Eqn<Prim>, op: Elementwise| eqn.prim == Prim::Elementwise(op);
    // The value of each scalar constant (finite, `f64`) or its broadcast.
    let mut scalar: HashMap<Var, f64> = HashMap::new();
    // Constants by value, for the factors made here.
    let mut constant: HashMap<u64, Var> = HashMap::new();
    for (v, data) in &program.consts {
        if let Data::F64(a) = &**data
            && let [c] = a.as_slice().unwrap_or_default()
            && c.is_finite()
            && program.aval(*v).shape.is_empty()
        {
            scalar.insert(*v, *c);
            constant.insert(c.to_bits(), *v);
        }
    }
    // `y = x * c` and `y = -x`, by `y`.
    let mut scaled: HashMap<Var, (Var, f64)> = HashMap::new();
    let mut negated: HashMap<Var, Var> = HashMap::new();
    let mut rename: HashMap<Var, Var> = HashMap::new();
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for mut eqn in std::mem::take(&mut program.eqns) {
        for v in &mut eqn.inputs {
            *v = *rename.get(v).unwrap_or(v);
        }
        let Some(&y) = eqn.outputs.first() else {
            eqns.push(eqn);
            continue;
        };
        let real = program.aval(y).dtype == DType::F64;
        // The product `x * c` that `eqn` computes, before simplification, where `x` has the
        // result's shape.
        let product = match *eqn.inputs.as_slice() {
            [x] if real && is(&eqn, Elementwise::Unary(UnaryOp::Neg)) => {
                scaled.get(&x).map(|&(x, c)| (x, -c))
            }
            // `x + x` is `x * 2`, to the bit.
            [a, b] if real && a == b && is(&eqn, Elementwise::Binary(BinaryOp::Add)) => {
                Some((a, 2.0))
            }
            [a, b] if real && is(&eqn, Elementwise::Binary(BinaryOp::Mul)) => {
                match (scalar.get(&a), scalar.get(&b)) {
                    (_, Some(&c)) => Some((a, c)),
                    (Some(&c), None) => Some((b, c)),
                    (None, None) => None,
                }
            }
            _ => None,
        }
        .filter(|(x, _)| program.aval(*x).shape == program.aval(y).shape);
        match (&eqn.prim, product) {
            (_, Some((x, c))) => {
                let (x, c) = if let Some(&source) = negated.get(&x) {
                    (source, -c)
                } else if let Some(&(source, c0)) = scaled.get(&x)
                    && c0 >= 1.0
                    && c0.to_bits() & ((1 << 52) - 1) == 0
                    && c.abs() >= 1.0
                    && (c0 * c).is_finite()
                {
                    (source, c0 * c)
                } else {
                    (x, c)
                };
                if c == 1.0 {
                    rename.insert(y, x);
                    continue;
                }
                let factor = *constant.entry(c.to_bits()).or_insert_with(|| {
                    let v = program.new_var(Aval::new(&[], DType::F64));
                    program
                        .consts
                        .push((v, Arc::new(Data::scalar(c, DType::F64))));
                    v
                });
                scalar.insert(factor, c);
                eqn.prim = Prim::Elementwise(Elementwise::Binary(BinaryOp::Mul));
                eqn.inputs = vec![x, factor];
                scaled.insert(y, (x, c));
            }
            (Prim::Structural(Structural::Broadcast(_)), None) => {
                if let Some(&c) = scalar.get(&eqn.inputs[0]) {
                    scalar.insert(y, c);
                }
            }
            (Prim::Elementwise(Elementwise::Unary(UnaryOp::Neg)), None) if real => {
                negated.insert(y, eqn.inputs[0]);
            }
            (Prim::Loop(the_loop), None) => eqn.prim = in_body(the_loop, fold_scalar_factors),
            _ => {}
        }
        eqns.push(eqn);
    }
    for v in &mut program.outputs {
        *v = *rename.get(v).unwrap_or(v);
    }
    program.eqns = eqns;
    program
}

/// `the_loop` with `pass` applied to its body (which is then cleaned).
pub(super) fn in_body(the_loop: &Loop, pass: fn(Program) -> Program) -> Prim {
    let mut changed = the_loop.clone();
    changed.body = Arc::new(clean(pass((*the_loop.body).clone())));
    Prim::Loop(changed)
}

/// Negations folded into the sums and differences that read them, here and in loop bodies:
/// `a + (-b)` is `a - b`, `(-a) + b` is `b - a`, `a - (-b)` is `a + b` and `-(-a)` is `a`,
/// to the bit, for floating-point values. Derivatives negate values that a sum then reads
/// (the tangent of `r - s`, or of a leak `-r`); a negation read nowhere else then drops out,
/// and with it a pass over its values, at every step of a loop.
fn fold_negations(mut program: Program) -> Program {
    let mut negated: HashMap<Var, Var> = HashMap::new();
    let mut rename: HashMap<Var, Var> = HashMap::new();
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for mut eqn in std::mem::take(&mut program.eqns) {
        for v in &mut eqn.inputs {
            *v = *rename.get(v).unwrap_or(v);
        }
        let inexact = eqn
            .outputs
            .first()
            .is_some_and(|&v| program.aval(v).dtype.is_inexact());
        let of = |v: &Var| negated.get(v).copied();
        match (&eqn.prim, eqn.inputs.as_slice()) {
            (Prim::Elementwise(Elementwise::Unary(UnaryOp::Neg)), [x]) if inexact => match of(x) {
                Some(source) => {
                    rename.insert(eqn.outputs[0], source);
                    continue;
                }
                None => {
                    negated.insert(eqn.outputs[0], *x);
                }
            },
            (
                Prim::Elementwise(Elementwise::Binary(op @ (BinaryOp::Add | BinaryOp::Sub))),
                &[a, b],
            ) if inexact => {
                let folded = match (op, of(&a), of(&b)) {
                    (BinaryOp::Add, _, Some(b)) => Some((BinaryOp::Sub, [a, b])),
                    (BinaryOp::Add, Some(a), None) => Some((BinaryOp::Sub, [b, a])),
                    (BinaryOp::Sub, _, Some(b)) => Some((BinaryOp::Add, [a, b])),
                    _ => None,
                };
                if let Some((op, inputs)) = folded {
                    eqn.prim = Prim::Elementwise(Elementwise::Binary(op));
                    eqn.inputs = inputs.to_vec();
                }
            }
            (Prim::Loop(the_loop), _) => eqn.prim = in_body(the_loop, fold_negations),
            _ => {}
        }
        eqns.push(eqn);
    }
    for v in &mut program.outputs {
        *v = *rename.get(v).unwrap_or(v);
    }
    program.eqns = eqns;
    program
}

/// Zero padding moved through the arithmetic that keeps zeros (`+`, `-`, `*`, negation,
/// positive integer powers) and computes the value padded, down to the values that
/// arithmetic reads: `pad(a * b)` is `pad(a) * pad(b)`, as zeros times zeros are zeros.
/// Reverse-mode derivatives pad the cotangents of slices back to their source's shape and
/// add them up (`x[1:]` and `x[:-1]` in a stencil); with the pads on the values read they
/// are views, and the arithmetic and the sum run as one loop over the padded shape, instead
/// of one loop storing each unpadded cotangent and another reading them back.
///
/// It pays for values beyond the caches ([`SINK_MIN`] elements), whose stores and reloads
/// cost more than arithmetic, and for values of at most a tile ([`SINK_SMALL_MAX`]), where
/// it turns a loop, a pad and another loop (or a pad the result keeps, as a Hessian's
/// stencil coefficients) into one loop: a step costs more there than the little arithmetic
/// it may repeat. Where the value padded is read elsewhere too (or padded in two ways), its
/// arithmetic runs twice. The equations added are bounded by the program's size. Padded
/// elements may come out as `-0.0` (from a negation) where the pad wrote `0.0`: equal as
/// numbers.
fn sink_pads(mut program: Program) -> Program {
    let original = std::mem::take(&mut program.eqns);
    let mut sink = PadSink {
        producer: original
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.outputs.iter().map(move |&v| (v, i)))
            .collect(),
        original: &original,
        budget: 4 * original.len(),
        rename: HashMap::new(),
        padded: HashMap::new(),
        broadcast: HashMap::new(),
        eqns: Vec::with_capacity(original.len()),
        program: &mut program,
    };
    for eqn in &original {
        let input = eqn.inputs.first().map(|&v| sink.renamed(v));
        match (&eqn.prim, input) {
            (Prim::Structural(Structural::Pad { lo, hi, interior }), Some(input))
                if interior.iter().all(|&i| i == 0)
                    && sinks(sink.program.aval(eqn.outputs[0]).numel())
                    && sink.keeps_zeros(input) =>
            {
                let padded = sink.padded(input, lo, hi);
                sink.rename.insert(eqn.outputs[0], padded);
            }
            _ => {
                let mut eqn = eqn.clone();
                for v in &mut eqn.inputs {
                    *v = sink.renamed(*v);
                }
                sink.eqns.push(eqn);
            }
        }
    }
    let (eqns, rename) = (sink.eqns, sink.rename);
    for v in &mut program.outputs {
        *v = *rename.get(v).unwrap_or(v);
    }
    program.eqns = eqns;
    program
}

/// Whether `prim` keeps zeros (zeros in give zeros out), so a pad commutes with it: linear
/// arithmetic, products and positive integer powers.
fn keeps_zeros(prim: &Prim) -> bool {
    matches!(
        prim,
        Prim::Elementwise(Elementwise::Binary(
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul
        )) | Prim::Elementwise(Elementwise::Unary(UnaryOp::Neg))
    ) || matches!(prim, Prim::Elementwise(Elementwise::PowI(n)) if *n >= 1)
}

/// Smallest padded value (in elements) whose pad [`sink_pads`] moves: a few times the
/// second-level cache of a core, in `f64`.
const SINK_MIN: usize = 1 << 18;

/// Largest padded value (in elements) whose pad [`sink_pads`] moves for want of a step: one
/// tile of a fused loop (rosen_n16's Hessian: 3.58 -> 2.92 µs a call, four steps to one).
const SINK_SMALL_MAX: usize = 512;

/// Whether [`sink_pads`] moves a pad to a value of `numel` elements.
fn sinks(numel: usize) -> bool {
    numel <= SINK_SMALL_MAX || numel >= SINK_MIN
}

/// The state of [`sink_pads`]: the equations emitted so far, and the padded values made.
struct PadSink<'a> {
    program: &'a mut Program,
    original: &'a [crate::primitives::Eqn],
    /// The equation of the original program computing each value.
    producer: HashMap<Var, usize>,
    /// Values replaced by their padded computation.
    rename: HashMap<Var, Var>,
    /// Values already padded, by value and `(lo, hi)`.
    padded: HashMap<(Var, Vec<usize>, Vec<usize>), Var>,
    /// Values already broadcast, by value and shape.
    broadcast: HashMap<(Var, Vec<usize>), Var>,
    eqns: Vec<crate::primitives::Eqn>,
    /// Equations that may still be added.
    budget: usize,
}

impl PadSink<'_> {
    fn renamed(&self, v: Var) -> Var {
        *self.rename.get(&v).unwrap_or(&v)
    }

    /// Whether `v` is computed by arithmetic that keeps zeros, on `f64` (and budget is left
    /// to copy it).
    fn keeps_zeros(&self, v: Var) -> bool {
        let Some(&i) = self.producer.get(&v) else {
            return false;
        };
        let eqn = &self.original[i];
        let f64s = eqn
            .inputs
            .iter()
            .chain(&eqn.outputs)
            .all(|&u| self.program.aval(u).dtype == DType::F64);
        self.budget > 0 && f64s && keeps_zeros(&eqn.prim) && eqn.outputs.len() == 1
    }

    /// A new equation computing one new value of `aval`.
    fn emit(
        &mut self,
        prim: Prim,
        inputs: Vec<Var>,
        aval: Aval,
        source: Option<&'static std::panic::Location<'static>>,
    ) -> Var {
        let out = self.program.new_var(aval);
        self.budget = self.budget.saturating_sub(1);
        self.eqns.push(crate::primitives::Eqn {
            prim,
            inputs,
            outputs: vec![out],
            source,
        });
        out
    }

    /// `pad(v)` (zeros `lo` before and `hi` after each axis), computed from padded operands
    /// when `v` is arithmetic that keeps zeros.
    fn padded(&mut self, v: Var, lo: &[usize], hi: &[usize]) -> Var {
        let key = (v, lo.to_vec(), hi.to_vec());
        if let Some(&done) = self.padded.get(&key) {
            return done;
        }
        let aval = self.program.aval(v).clone();
        let shape: Vec<usize> = (0..aval.shape.len())
            .map(|d| aval.shape[d] + lo[d] + hi[d])
            .collect();
        let out = if self.keeps_zeros(v) {
            let eqn = &self.original[self.producer[&v]];
            let (prim, source, operands) = (eqn.prim.clone(), eqn.source, eqn.inputs.clone());
            // A product's factor of one element scales the padded zeros to zeros: it stays a
            // number, which a fused loop holds in a register, when the other factor (of more
            // elements) is padded.
            let product = prim == Prim::from(BinaryOp::Mul) && aval.numel() > 1;
            let inputs = operands
                .into_iter()
                .map(|u| {
                    let u = self.renamed(u);
                    if product && self.program.aval(u).numel() == 1 {
                        return u;
                    }
                    let u = self.broadcast(u, &aval.shape);
                    self.padded(u, lo, hi)
                })
                .collect();
            self.emit(prim, inputs, Aval::new(&shape, DType::F64), source)
        } else {
            let pad = Structural::Pad {
                lo: lo.to_vec(),
                hi: hi.to_vec(),
                interior: vec![0; lo.len()],
            };
            self.emit(pad.into(), vec![v], Aval::new(&shape, aval.dtype), None)
        };
        self.padded.insert(key, out);
        out
    }

    /// `v` broadcast to `shape` (itself when it has that shape).
    fn broadcast(&mut self, v: Var, shape: &[usize]) -> Var {
        let aval = self.program.aval(v).clone();
        if aval.shape == shape {
            return v;
        }
        let key = (v, shape.to_vec());
        if let Some(&done) = self.broadcast.get(&key) {
            return done;
        }
        let prim = Structural::Broadcast(shape.to_vec()).into();
        let out = self.emit(prim, vec![v], Aval::new(shape, aval.dtype), None);
        self.broadcast.insert(key, out);
        out
    }
}

/// A transpose of a transpose is one transpose, a reshape of a reshape one reshape, and
/// either is nothing when it gives back its source's shape and order. Derived programs are
/// full of such pairs: a loop's per-step tangents move their axis of steps to the front for
/// the loop and back for the next one, and rules reshape to apply a matrix product and back.
fn compose_structural(mut program: Program) -> Program {
    // For a transpose's or reshape's output: its source before the chain, and the permutation
    // from it (transposes) or nothing (reshapes).
    let mut chain: HashMap<Var, (Var, Option<Vec<usize>>)> = HashMap::new();
    let mut rename: HashMap<Var, Var> = HashMap::new();
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for mut eqn in std::mem::take(&mut program.eqns) {
        for v in &mut eqn.inputs {
            *v = *rename.get(v).unwrap_or(v);
        }
        let out = eqn.outputs[0];
        if let Prim::Structural(Structural::Transpose(perm)) = &eqn.prim {
            let shape = &program.aval(eqn.inputs[0]).shape;
            if moves_only_unit_axes(perm, shape) {
                let to = program.aval(out).shape.clone();
                eqn.prim = Prim::Structural(Structural::Reshape(to));
            }
        }
        match &eqn.prim {
            Prim::Structural(Structural::Transpose(perm)) => {
                let (source, before) = match chain.get(&eqn.inputs[0]) {
                    Some((source, Some(first))) => {
                        (*source, perm.iter().map(|&p| first[p]).collect::<Vec<_>>())
                    }
                    _ => (eqn.inputs[0], perm.clone()),
                };
                if before.iter().enumerate().all(|(i, &p)| i == p) {
                    rename.insert(out, source);
                    continue;
                }
                eqn.inputs[0] = source;
                eqn.prim = Prim::Structural(Structural::Transpose(before.clone()));
                chain.insert(out, (source, Some(before)));
            }
            Prim::Structural(Structural::Reshape(shape)) => {
                let source = match chain.get(&eqn.inputs[0]) {
                    Some((source, None)) => *source,
                    _ => eqn.inputs[0],
                };
                if program.aval(source).shape == *shape {
                    rename.insert(out, source);
                    continue;
                }
                eqn.inputs[0] = source;
                chain.insert(out, (source, None));
            }
            _ => {}
        }
        eqns.push(eqn);
    }
    for v in &mut program.outputs {
        *v = *rename.get(v).unwrap_or(v);
    }
    program.eqns = eqns;
    program
}

/// Whether permuting the axes of `shape` by `perm` keeps the order of the axes longer than
/// one, so that it moves no element and is a reshape (`[n, 1] -> [1, n]`, say).
pub(super) fn moves_only_unit_axes(perm: &[usize], shape: &[usize]) -> bool {
    let long: Vec<usize> = perm.iter().copied().filter(|&p| shape[p] != 1).collect();
    long.windows(2).all(|w| w[0] < w[1])
}

/// Evaluates, once, the equations whose inputs are all constants and whose outputs are small.
fn fold_constants(mut program: Program) -> Program {
    let mut known: HashMap<Var, Arc<Data>> = program.consts.iter().cloned().collect();
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for eqn in std::mem::take(&mut program.eqns) {
        // Creation primitives stay generators: a tangent basis is never stored as a constant.
        // Loops run with the program: however small their results, their steps may be many.
        let creates = matches!(eqn.prim, Prim::Creation(_) | Prim::Loop(_));
        let foldable = !creates
            && eqn
                .outputs
                .iter()
                .all(|&v| program.aval(v).numel() <= FOLD_LIMIT)
            && eqn.inputs.iter().all(|v| known.contains_key(v));
        if foldable {
            let ins: Vec<&Data> = eqn.inputs.iter().map(|v| &*known[v]).collect();
            if let Ok(outs) = eqn.prim.eval(&ins) {
                for (&v, data) in eqn.outputs.iter().zip(outs) {
                    let data = Arc::new(data);
                    program.consts.push((v, data.clone()));
                    known.insert(v, data);
                }
                continue;
            }
        }
        eqns.push(eqn);
    }
    program.eqns = eqns;
    program
}

/// A constant larger than folding makes, whose elements are all equal, read only by
/// elementwise equations and the index maps that fused loops read as views (broadcasts,
/// slices, pads, reshapes, transposes), becomes the broadcast of its value: fused loops read
/// it as one number, not as a buffer from memory. Derivatives make such constants: the
/// cotangent of a sum is a vector of ones, which the derivative scales.
fn uniform_constants(mut program: Program) -> Program {
    let elementwise = super::plan::read_only_by(&program, |prim| {
        matches!(
            prim,
            Prim::Elementwise(_)
                | Prim::Structural(
                    Structural::Broadcast(_)
                        | Structural::Slice { .. }
                        | Structural::Pad { .. }
                        | Structural::Reshape(_)
                        | Structural::Transpose(_)
                )
        )
    });
    let mut broadcasts = Vec::new();
    for k in 0..program.consts.len() {
        let (var, data) = program.consts[k].clone();
        let Data::F64(values) = &*data else { continue };
        let Some(&value) = values.first() else {
            continue;
        };
        // Equal to the bit: a sign of zero or a NaN payload is kept.
        let uniform = || values.iter().all(|x| x.to_bits() == value.to_bits());
        if values.len() <= FOLD_LIMIT || !elementwise.contains(&var) || !uniform() {
            continue;
        }
        let scalar = program.new_var(Aval::new(&[], DType::F64));
        program.consts[k] = (scalar, Arc::new(Data::F64(ndarray::arr0(value).into_dyn())));
        broadcasts.push(Eqn {
            prim: Structural::Broadcast(values.shape().to_vec()).into(),
            inputs: vec![scalar],
            outputs: vec![var],
            source: None,
        });
    }
    broadcasts.append(&mut program.eqns);
    program.eqns = broadcasts;
    program
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::fuse::Step;
    use crate::ir::Eqn;
    use crate::primitives::{BinaryOp, Creation, UnaryOp};
    use crate::storage::{Aval, DType};

    /// `x + f(c)` for a constant `c` of `n` elements, with `f` = exp.
    fn program_on_constant(n: usize) -> Program {
        let mut p = Program::default();
        let aval = Aval::new(&[n], DType::F64);
        let x = p.new_var(aval.clone());
        p.inputs.push(x);
        let c = p.new_var(aval.clone());
        p.consts
            .push((c, Arc::new(Data::F64(ndarray::Array::ones(n).into_dyn()))));
        let e = p.new_var(aval.clone());
        let y = p.new_var(aval);
        let eqn = |prim: Prim, inputs: Vec<Var>, out: Var| Eqn {
            prim,
            inputs,
            outputs: vec![out],
            source: None,
        };
        p.eqns.push(eqn(UnaryOp::Exp.into(), vec![c], e));
        p.eqns.push(eqn(BinaryOp::Add.into(), vec![x, e], y));
        p.outputs.push(y);
        p
    }

    #[test]
    fn small_constant_subprograms_fold_into_constants() {
        let p = simplify(program_on_constant(3));
        assert_eq!(p.len(), 1, "{p}");
        assert!(p.to_string().contains("add"), "{p}");
        let e = std::f64::consts::E;
        assert_eq!(
            *p.consts[0].1,
            Data::F64(ndarray::arr1(&[e, e, e]).into_dyn())
        );
    }

    #[test]
    fn large_constants_and_generators_stay_in_the_program() {
        // The constant of ones becomes the broadcast of a one: `exp` runs on it each call.
        let p = simplify(program_on_constant(FOLD_LIMIT + 1));
        assert_eq!(p.len(), 3, "{p}");
        assert!(p.to_string().contains("broadcast"), "{p}");
        assert_eq!(
            *p.consts[0].1,
            Data::F64(ndarray::arr0(1.0).into_dyn()),
            "{p}"
        );
        let mut p = Program::default();
        let eye = p.new_var(Aval::new(&[2, 2], DType::F64));
        p.eqns.push(Eqn {
            prim: Creation::Eye {
                rows: 2,
                cols: 2,
                offset: 0,
                dtype: DType::F64,
            }
            .into(),
            inputs: vec![],
            outputs: vec![eye],
            source: None,
        });
        p.outputs.push(eye);
        assert_eq!(simplify(p).len(), 1);
    }

    #[test]
    fn large_uniform_constants_read_elementwise_or_as_views_become_broadcasts() {
        let n = FOLD_LIMIT + 1;
        let constant =
            |values: Vec<f64>| Arc::new(Data::F64(ndarray::Array::from(values).into_dyn()));
        // x + c, pad(c), and c @ x (a product reads the buffer itself).
        let program = |c: Arc<Data>, prim: Prim| {
            let mut p = Program::default();
            let aval = Aval::new(&[n], DType::F64);
            let x = p.new_var(aval.clone());
            p.inputs.push(x);
            let c_var = p.new_var(aval.clone());
            p.consts.push((c_var, c));
            let (inputs, aval) = match prim {
                Prim::MatMul(_) => (vec![x, c_var], Aval::new(&[], DType::F64)),
                Prim::Structural(_) => (vec![c_var], Aval::new(&[n + 1], DType::F64)),
                _ => (vec![x, c_var], aval),
            };
            let y = p.new_var(aval);
            p.eqns.push(Eqn {
                prim,
                inputs,
                outputs: vec![y],
                source: None,
            });
            p.outputs.push(y);
            uniform_constants(p)
        };
        let pad = Structural::Pad {
            lo: vec![1],
            hi: vec![0],
            interior: vec![0],
        };
        for prim in [BinaryOp::Add.into(), pad.into()] {
            let p = program(constant(vec![0.5; n]), prim);
            assert_eq!(p.len(), 2, "{p}");
            assert_eq!(*p.consts[0].1, Data::F64(ndarray::arr0(0.5).into_dyn()));
        }
        // Not uniform (a zero of the other sign), or read by a product: kept as it is.
        let mut signed = vec![0.0; n];
        signed[7] = -0.0;
        for p in [
            program(constant(signed), BinaryOp::Add.into()),
            program(constant(vec![0.5; n]), crate::primitives::MatMul.into()),
        ] {
            assert_eq!(p.len(), 1, "{p}");
            assert_eq!(p.consts[0].1.shape(), &[n]);
        }
    }

    #[test]
    fn negations_fold_into_the_sums_that_read_them() {
        use crate::{Tensor, make_program};
        let f = |x: &Tensor| {
            let y = x.exp();
            let (nx, ny) = (-x, -&y);
            // a + (-b), (-a) + b, a - (-b), -(-a); -y is read elsewhere too and stays
            (&y + &nx) * (&nx + &y) * (&y - &nx) * (-&nx) + ny.sum()
        };
        let x = Tensor::from_vec(vec![-1.5, 0.0, 0.25, 2.0], &[4]).unwrap();
        let p = simplify(make_program(f, &x).unwrap());
        let text = p.to_string();
        assert_eq!(text.matches("neg").count(), 1, "{text}");
        let plan = crate::exec::Plan::new(p);
        let out = plan.run(&[x.data().unwrap().clone()], false).unwrap();
        let got = Tensor::from_shared(out[0].clone()).to_vec::<f64>().unwrap();
        assert_eq!(got, f(&x).to_vec::<f64>().unwrap());
    }

    #[test]
    fn equal_scalar_constants_merge_and_so_do_their_readers() {
        use crate::{Tensor, make_program};
        // Two 2s, and a 0 and a -0 (not equal to the bit).
        let f = |x: &Tensor| (x * 2.0) * (x * 2.0) + (x + 0.0) * (x + -0.0);
        let x = Tensor::from([-1.5, 0.0, 2.0]);
        let p = simplify(make_program(f, &x).unwrap());
        let text = p.to_string();
        assert_eq!(p.consts.len(), 3, "{text}");
        assert_eq!(text.matches("add").count(), 3, "{text}");
        assert_eq!(text.matches("mul").count(), 3, "{text}");
    }

    #[test]
    fn products_with_scalar_constants_fold_to_the_bit() {
        use crate::{Tensor, make_program, stack};
        let f = |x: &Tensor| {
            stack(
                &[
                    x * 1.0,               // x
                    -x * 3.0,              // x * -3
                    -(x * 3.0),            // x * -3 again
                    x * 2.0 * 100.0,       // x * 200
                    x * 0.5 * 100.0,       // kept: x * 0.5 may round (a subnormal x)
                    x * 3.0 * 2.0,         // kept: 3 is no power of two
                    x * 2.0 * 0.5,         // kept: x * 2 may overflow where x would not
                    (x * 3.0).exp() * 1.0, // exp(x * 3)
                    -(x + x),              // x * -2
                ],
                0,
            )
        };
        let x = Tensor::from([
            1e-310,
            -0.0,
            1.7e308,
            -1e308,
            f64::INFINITY,
            0.3,
            -2.5,
            f64::NAN,
        ]);
        let p = simplify(make_program(f, &x).unwrap());
        let text = p.to_string();
        assert_eq!(text.matches("neg").count(), 0, "{text}");
        assert_eq!(text.matches("mul").count(), 9, "{text}");
        assert_eq!(text.matches("add").count(), 0, "{text}");
        let plan = crate::exec::Plan::new(p);
        let out = plan.run(&[x.data().unwrap().clone()], false).unwrap();
        let got = Tensor::from_shared(out[0].clone()).to_vec::<f64>().unwrap();
        let want = f(&x).to_vec::<f64>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            // Equal to the bit, but for the sign of a NaN: `(-x) * c` keeps the negated NaN's.
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{got:?} {want:?}"
            );
        }
    }

    #[test]
    fn chains_of_transposes_and_reshapes_compose() {
        use crate::{Tensor, make_program};
        let f = |x: &Tensor| {
            let back = x.permute(&[1, 2, 0]).permute(&[2, 0, 1]); // the identity
            let turned = x.permute(&[1, 0, 2]).permute(&[0, 2, 1]); // one transpose
            let flat = x.reshape(&[6, 4]).reshape(&[24]).reshape(&[2, 3, 4]); // x again
            (back + flat).exp() + turned.sum()
        };
        let x = Tensor::from_vec((0..24).map(f64::from).collect(), &[2, 3, 4]).unwrap();
        let p = simplify(make_program(f, &x).unwrap());
        let text = p.to_string();
        assert_eq!(text.matches("transpose").count(), 1, "{text}");
        assert!(text.contains("transpose[perm=(1,2,0)]"), "{text}");
        assert!(!text.contains("reshape"), "{text}");
        let plan = crate::exec::Plan::new(p);
        let out = plan.run(&[x.data().unwrap().clone()], false).unwrap();
        let got = Tensor::from_shared(out[0].clone()).to_vec::<f64>().unwrap();
        assert_eq!(got, f(&x).to_vec::<f64>().unwrap());
    }

    #[test]
    fn pads_of_arithmetic_that_keeps_zeros_move_onto_the_values_it_reads() {
        use crate::{Tensor, grad};
        // Rosenbrock's gradient pads the cotangents of x[1:] and x[:-1] back to x's shape.
        let g = grad(|x: &Tensor| {
            let (head, tail) = (x.slice_along(0, ..-1, 1), x.slice_along(0, 1.., 1));
            ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
        });
        // How many pads read arithmetic that keeps zeros, of how many pads.
        let pads_of_arithmetic = |p: &Program| {
            let producer: HashMap<Var, &Prim> = p
                .eqns
                .iter()
                .flat_map(|e| e.outputs.iter().map(move |&v| (v, &e.prim)))
                .collect();
            let pads: Vec<_> = p
                .eqns
                .iter()
                .filter(|e| matches!(e.prim, Prim::Structural(Structural::Pad { .. })))
                .collect();
            let sinkable = pads.iter().filter(|pad| {
                producer
                    .get(&pad.inputs[0])
                    .is_some_and(|prim| keeps_zeros(prim))
            });
            (sinkable.count(), pads.len())
        };
        // Values between a tile and the caches stay as they are.
        let middle = simplify(g.program(&Tensor::linspace(-1.0, 1.5, 1000)).unwrap());
        assert_eq!(pads_of_arithmetic(&middle), (2, 2), "{middle}");
        // Small and large ones: every pad reads a value that does not keep zeros, so
        // nothing is computed unpadded just to be padded.
        for n in [7, SINK_SMALL_MAX, SINK_MIN + 3] {
            let p = simplify(g.program(&Tensor::linspace(-1.0, 1.5, n)).unwrap());
            let (sinkable, pads) = pads_of_arithmetic(&p);
            assert!(sinkable == 0 && pads > 0, "{p}");
        }
        // A small one: the gradient is one loop (the value's terms another, and their sum).
        let x = Tensor::linspace(-1.0, 1.5, 7);
        let small = crate::exec::Plan::new(g.program(&x).unwrap());
        let steps: Vec<String> = small
            .steps
            .iter()
            .map(|(step, _)| match step {
                Step::Group(g) => format!("group {:?}", g.shape),
                Step::Eqn(i) => small.program.eqns[*i].prim.to_string(),
            })
            .collect();
        assert_eq!(steps, ["group [6]", "reduce_sum[axes=(0,)]", "group [7]"]);
        // The gradient, against its closed form.
        for n in [7, SINK_MIN + 3] {
            let x = Tensor::linspace(-1.0, 1.5, n);
            let plan = crate::exec::Plan::new(g.program(&x).unwrap());
            let out = plan.run(&[x.data().unwrap().clone()], false).unwrap();
            // The function's value, then its gradient.
            let got = Tensor::from_shared(out[1].clone()).to_vec::<f64>().unwrap();
            let x = x.to_vec::<f64>().unwrap();
            for i in 0..n {
                let mut want = 0.0;
                if i + 1 < n {
                    want += -400.0 * x[i] * (x[i + 1] - x[i] * x[i]) - 2.0 * (1.0 - x[i]);
                }
                if i > 0 {
                    want += 200.0 * (x[i] - x[i - 1] * x[i - 1]);
                }
                assert!((got[i] - want).abs() <= 1e-12 * want.abs().max(1.0), "{i}");
            }
        }
    }

    #[test]
    fn pads_sink_past_factors_of_one_element_which_stay_numbers() {
        // pad(x * c) for a number c: pad(x) * c, with c read as it is (not broadcast, padded).
        let n = SINK_MIN;
        let mut p = Program::default();
        let x = p.new_var(Aval::new(&[n], DType::F64));
        p.inputs.push(x);
        let c = p.new_var(Aval::new(&[], DType::F64));
        p.consts
            .push((c, Arc::new(Data::F64(ndarray::arr0(3.0).into_dyn()))));
        let product = p.new_var(Aval::new(&[n], DType::F64));
        let padded = p.new_var(Aval::new(&[n + 2], DType::F64));
        p.eqns.push(Eqn {
            prim: BinaryOp::Mul.into(),
            inputs: vec![x, c],
            outputs: vec![product],
            source: None,
        });
        let pad = Structural::Pad {
            lo: vec![1],
            hi: vec![1],
            interior: vec![0],
        };
        p.eqns.push(Eqn {
            prim: pad.clone().into(),
            inputs: vec![product],
            outputs: vec![padded],
            source: None,
        });
        p.outputs.push(padded);
        let p = clean(sink_pads(p));
        let prims: Vec<&Prim> = p.eqns.iter().map(|e| &e.prim).collect();
        assert_eq!(prims, [&pad.into(), &BinaryOp::Mul.into()], "{p}");
        assert_eq!(p.eqns[1].inputs[1], p.consts[0].0, "{p}");
    }

    #[test]
    fn a_padded_product_of_two_numbers_pads_one_of_them() {
        // pad(x * y) for x, y of one element each: one factor must carry the padding.
        use crate::{Tensor, make_program};
        let f = |x: &Tensor, y: &Tensor| (x * y).pad_axis(0, 1, 2);
        let (x, y) = (Tensor::from([3.0]), Tensor::from([-2.0]));
        let p = simplify(make_program(f, (&x, &y)).unwrap());
        let plan = crate::exec::Plan::new(p);
        let inputs = [x.data().unwrap().clone(), y.data().unwrap().clone()];
        let out = plan.run(&inputs, false).unwrap();
        let got = Tensor::from_shared(out[0].clone()).to_vec::<f64>().unwrap();
        assert_eq!(got, [0.0, -6.0, 0.0, 0.0]);
    }

    #[test]
    fn a_transpose_moving_only_axes_of_one_is_a_reshape() {
        use crate::{Tensor, make_program};
        let f = |x: &Tensor| {
            let column = x.reshape(&[4, 3, 1]).permute(&[0, 2, 1]); // [4, 1, 3]: a reshape
            let turned = x.permute(&[1, 0]); // a real transpose
            column.sum() * 2.0 + turned.exp().sum()
        };
        assert!(super::moves_only_unit_axes(&[0, 2, 1], &[4, 3, 1]));
        assert!(!super::moves_only_unit_axes(&[1, 0], &[4, 3]));
        let x = Tensor::from_vec((0..12).map(|k| f64::from(k) * 0.1).collect(), &[4, 3]).unwrap();
        let p = simplify(make_program(f, &x).unwrap());
        let text = p.to_string();
        assert_eq!(text.matches("transpose").count(), 1, "{text}");
        let plan = crate::exec::Plan::new(p);
        let out = plan.run(&[x.data().unwrap().clone()], false).unwrap();
        let got = Tensor::from_shared(out[0].clone()).item().unwrap();
        assert!((got - f(&x).item().unwrap()).abs() < 1e-12);
    }

    #[test]
    fn simplify_merges_repeated_work() {
        use crate::{Tensor, make_program};
        let p = make_program(|x: &Tensor| x.sin() * x.sin(), &Tensor::from([1.0])).unwrap();
        assert_eq!(p.len(), 2, "{p}");
    }
}
