//! Loop bodies of small `f64` values, run on flat buffers.
//!
//! A plan runs each equation through the generic machinery: operands gathered into a list,
//! an array allocated with its shape and strides, its storage shared by reference count.
//! For the small values of a typical loop body (a state of a few neurons, a tangent batch of a
//! few hundred values) that bookkeeping costs more than the arithmetic, and a loop pays it at
//! every step. Here the body is laid out once per run instead: every value it computes gets
//! a buffer of its own, reused at every step; a reshape is the same buffer under another name;
//! per-step inputs are read in place from the stacked array; elementwise operations, sums and
//! matrix products write straight into their buffers. Anything else runs through its
//! primitive's kernel on copies, so any body of `f64` values runs here.

use std::borrow::Cow;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use crate::error::{Error, Result};
use crate::ir::Var;
use crate::primitives::matmul::{add_transposed_product, matmul_into};
use crate::primitives::{
    BinaryOp, Elementwise, Loop, Prim, Program, Reduce, ReduceOp, Structural, UnaryOp,
    broadcast_indices,
};
use crate::storage::{DType, Data, pool};

/// Largest body (all its values, in elements) run on flat buffers: small enough to stay in
/// the caches, where per-equation overheads dominate.
const MAX_ELEMENTS: usize = 1 << 16;

/// Where a value of the body lives.
#[derive(Clone, Copy, Debug)]
enum Home {
    /// Input `k` of the body (`consts ++ carry ++ xs`).
    Input(usize),
    /// A constant of the body program.
    Const(usize),
    /// Buffer `k`, written by one operation per step.
    Buffer(usize),
}

/// An operand of an elementwise operation, as the output's shape reads it.
#[derive(Debug)]
enum Read {
    /// Element for element.
    Same(Var),
    /// One value for every element.
    Scalar(Var),
    /// The operand's values repeated along the output's leading axes (its shape is the end
    /// of the output's): element `i` reads element `i % len`.
    Repeated(Var),
    /// Broadcast: element `i` of the output reads element `indices[i]`.
    Indexed(Var, Vec<u32>),
}

impl Read {
    fn new(program: &Program, v: Var, out_shape: &[usize]) -> Read {
        let shape = &program.aval(v).shape;
        let n: usize = shape.iter().product();
        if shape.as_slice() == out_shape {
            Read::Same(v)
        } else if n == 1 {
            Read::Scalar(v)
        } else if n > 0
            && out_shape.ends_with(&shape[shape.iter().take_while(|&&d| d == 1).count()..])
        {
            Read::Repeated(v)
        } else {
            Read::Indexed(
                v,
                broadcast_indices(shape, out_shape)
                    .into_iter()
                    .map(|i| i as u32)
                    .collect(),
            )
        }
    }
}

/// One operation of a step.
#[derive(Debug)]
enum Op {
    Unary(UnaryOp, Read, usize),
    PowI(i32, Read, usize),
    Binary(BinaryOp, Read, Read, usize),
    /// A sum over the middle axes of `[outer, len, inner]` (pairwise, as the kernel's).
    Sum {
        x: Var,
        len: usize,
        inner: usize,
        out: usize,
    },
    MatMul(Var, Var, usize),
    /// Equation `eqn` of the body through its primitive's kernel.
    Generic(usize, usize),
}

/// A loop body laid out on flat buffers.
#[derive(Debug)]
pub(super) struct FlatBody {
    program: Program,
    homes: Vec<Home>,
    ops: Vec<Op>,
    buffer_lens: Vec<usize>,
    /// For each buffer, the per-step output it is written into directly (its row of the
    /// stacked array at each step), if any.
    stacked: Vec<Option<usize>>,
    /// For each carry, the buffer it is computed into when it can take that buffer's array
    /// at the end of a step (leaving its old one, which the next step overwrites), rather
    /// than copy its values: a buffer no other carry or stacked output lives in.
    carried: Vec<Option<usize>>,
    /// For each operation that adds a matrix product to another value, where the product is
    /// read by this sum alone: the product's operation and the other value. When the product
    /// selects, the sum applies it (see [`Selection::add_to`]).
    added: Vec<Option<(usize, Var)>>,
    /// The most elements an indexed operand reads (the size of the scratch buffers).
    scratch: usize,
}

impl FlatBody {
    /// The layout of `program` (a simplified loop body carrying `carry` values, whose first
    /// `stacked` per-step outputs are stacked and the others are factors of sums), or `None`
    /// when it holds values of other dtypes than `f64`, nested loops, or more than
    /// [`MAX_ELEMENTS`] elements.
    pub fn new(program: &Program, carry: usize, stacked: usize) -> Option<FlatBody> {
        let all_f64 = program.avals.iter().all(|a| a.dtype == DType::F64);
        let total: usize = program.avals.iter().map(|a| a.numel()).sum();
        let nested = program
            .eqns
            .iter()
            .any(|e| matches!(e.prim, Prim::Loop(_)) || e.outputs.len() != 1);
        if !all_f64 || nested || total > MAX_ELEMENTS {
            return None;
        }
        let mut homes = vec![Home::Buffer(usize::MAX); program.avals.len()];
        for (k, &v) in program.inputs.iter().enumerate() {
            homes[v.index()] = Home::Input(k);
        }
        for (k, (v, _)) in program.consts.iter().enumerate() {
            homes[v.index()] = Home::Const(k);
        }
        let mut ops = Vec::with_capacity(program.eqns.len());
        let mut buffer_lens = Vec::new();
        let mut scratch = 0;
        let mut product_of = vec![None; program.avals.len()];
        for (i, eqn) in program.eqns.iter().enumerate() {
            let out = eqn.outputs[0];
            let out_shape = program.aval(out).shape.clone();
            if let Prim::Structural(Structural::Reshape(_)) = eqn.prim {
                homes[out.index()] = homes[eqn.inputs[0].index()];
                continue;
            }
            let buffer = buffer_lens.len();
            buffer_lens.push(program.aval(out).numel());
            homes[out.index()] = Home::Buffer(buffer);
            let read = |k: usize| Read::new(program, eqn.inputs[k], &out_shape);
            let op = match &eqn.prim {
                Prim::Elementwise(Elementwise::Unary(op)) => Op::Unary(*op, read(0), buffer),
                Prim::Elementwise(Elementwise::PowI(n)) => Op::PowI(*n, read(0), buffer),
                Prim::Elementwise(Elementwise::Binary(op)) => {
                    Op::Binary(*op, read(0), read(1), buffer)
                }
                Prim::Reduce(Reduce {
                    op: ReduceOp::Sum,
                    axes,
                }) if is_block(axes) => {
                    let shape = &program.aval(eqn.inputs[0]).shape;
                    let (first, last) = (axes[0], axes[axes.len() - 1] + 1);
                    Op::Sum {
                        x: eqn.inputs[0],
                        len: shape[first..last].iter().product(),
                        inner: shape[last..].iter().product(),
                        out: buffer,
                    }
                }
                Prim::MatMul(_) => {
                    product_of[out.index()] = Some(ops.len());
                    Op::MatMul(eqn.inputs[0], eqn.inputs[1], buffer)
                }
                _ => Op::Generic(i, buffer),
            };
            if matches!(op, Op::Unary(..) | Op::PowI(..) | Op::Binary(..)) {
                scratch = scratch.max(out_shape.iter().product());
            }
            ops.push(op);
        }
        // A per-step output computed here is written straight into its row of the stacked
        // array, rather than into a buffer copied there after the step.
        let stacked_ys = &program.outputs[carry..carry + stacked];
        let mut stacked = vec![None; buffer_lens.len()];
        for (j, y) in stacked_ys.iter().enumerate() {
            if let Home::Buffer(k) = homes[y.index()] {
                stacked[k].get_or_insert(j);
            }
        }
        let carries = &program.outputs[..carry];
        let buffer_of = |y: &Var| match homes[y.index()] {
            Home::Buffer(k) if stacked[k].is_none() => Some(k),
            _ => None,
        };
        let carried = carries
            .iter()
            .map(|y| {
                buffer_of(y)
                    .filter(|&k| carries.iter().filter(|z| buffer_of(z) == Some(k)).count() == 1)
            })
            .collect();
        let mut uses = vec![0usize; program.avals.len()];
        for v in program
            .eqns
            .iter()
            .flat_map(|e| &e.inputs)
            .chain(&program.outputs)
        {
            uses[v.index()] += 1;
        }
        let added = ops
            .iter()
            .map(|op| {
                let Op::Binary(BinaryOp::Add, Read::Same(x), Read::Same(y), _) = op else {
                    return None;
                };
                let alone = |v: &Var| product_of[v.index()].filter(|_| uses[v.index()] == 1);
                (alone(x).map(|p| (p, *y))).or_else(|| alone(y).map(|p| (p, *x)))
            })
            .collect();
        Some(FlatBody {
            program: program.clone(),
            homes,
            ops,
            buffer_lens,
            stacked,
            carried,
            added,
            scratch,
        })
    }

    /// Runs the steps of `l` (whose body this is) on its operands (`consts ++ init ++ xs`):
    /// the final carry, the stacked outputs, then the sums.
    pub fn run(&self, l: &Loop, mut ins: Vec<Arc<Data>>) -> Result<Vec<Data>> {
        let (nc, nh, ns) = (l.consts, l.carry, l.n_stacked());
        let program = &self.program;
        let out_avals = program.output_avals();
        let x_lens: Vec<usize> = program.input_avals()[nc + nh..]
            .iter()
            .map(|a| a.numel())
            .collect();
        let row_lens: Vec<usize> = out_avals[nh..nh + ns].iter().map(|a| a.numel()).collect();
        let factors = &program.outputs[nh + ns..];
        // A per-step input that is a factor of a sum is read in place, a block of steps at a
        // time: it lends its array to no output.
        let in_place = |x: usize| {
            let i = nc + nh + x;
            (factors.iter()).any(|f| matches!(self.homes[f.index()], Home::Input(k) if k == i))
        };
        let lendable: Vec<usize> = (x_lens.iter().enumerate())
            .map(|(x, &len)| if in_place(x) { 0 } else { len })
            .collect();
        let (lent, borrowers) = lend(&mut ins[nc + nh..], &lendable, &row_lens, l.length);
        let mut rows_out: Vec<Vec<f64>> = borrowers
            .iter()
            .zip(&x_lens)
            .map(|(j, &len)| vec![0.0; if j.is_some() { len } else { 0 }])
            .collect();
        let standard = ins
            .iter()
            .map(|d| row_major(d))
            .collect::<Result<Vec<_>>>()?;
        let own_consts = program
            .consts
            .iter()
            .map(|(_, d)| row_major(d))
            .collect::<Result<Vec<_>>>()?;
        let consts: Vec<&[f64]> = own_consts.iter().map(|c| &c[..]).collect();
        let mut carry: Vec<Vec<f64>> = standard[nc..nc + nh].iter().map(|c| c.to_vec()).collect();
        let mut next = carry.clone();
        let mut buffers: Vec<Vec<f64>> = self.buffer_lens.iter().map(|&n| vec![0.0; n]).collect();
        let mut scratch = (vec![0.0; self.scratch], vec![0.0; self.scratch]);
        let (mut ys, new): (Vec<Vec<f64>>, Vec<bool>) = row_lens
            .iter()
            .zip(lent)
            .map(|(len, lent)| match lent {
                Some(values) => (values, false),
                None => pool::take_to_fill(l.length * len),
            })
            .unzip();
        let selections = self.selections(&standard[..nc], &consts);
        let runs = self.runs(&selections);
        let mut sums: Vec<Summed> = factors
            .chunks_exact(2)
            .map(|pair| Summed::new(self, pair, nc + nh, &standard))
            .collect();
        let unmapped = pool::Unmapped::of(ys.iter().zip(new).filter(|y| y.1).map(|y| &y.0[..]));
        unmapped.fill_while_mapping(l.reverse, || -> Result<()> {
            for t in 0..l.length {
                let row = l.index(t);
                for ((out, j), &len) in rows_out.iter_mut().zip(&borrowers).zip(&x_lens) {
                    if let Some(j) = *j {
                        out.copy_from_slice(&ys[j][row * len..(row + 1) * len]);
                    }
                }
                let inputs: Vec<&[f64]> = (0..program.inputs.len())
                    .map(|k| {
                        if k < nc {
                            &standard[k][..]
                        } else if k < nc + nh {
                            &carry[k - nc][..]
                        } else if borrowers[k - nc - nh].is_some() {
                            &rows_out[k - nc - nh][..]
                        } else {
                            let len = x_lens[k - nc - nh];
                            &standard[k][row * len..(row + 1) * len]
                        }
                    })
                    .collect();
                for (op, run) in self.ops.iter().zip(&runs) {
                    if !matches!(run, Run::Skip) {
                        let store = (&mut buffers, &mut ys);
                        self.apply(op, run, &inputs, &consts, store, row, &mut scratch)?;
                    }
                }
                for (j, y) in program.outputs[nh..nh + ns].iter().enumerate() {
                    if !self.is_stacked(*y, j) {
                        // Another output's row, a buffer or an operand: copied into this row.
                        let mut stack = std::mem::take(&mut ys[j]);
                        let value = Step::new(self, &inputs, &consts, &buffers, &ys, row).value(*y);
                        stack[row * value.len()..(row + 1) * value.len()].copy_from_slice(value);
                        ys[j] = stack;
                    }
                }
                // A carry passed on unchanged (an accumulation moved out of the loop, say)
                // keeps its values; the others are copied out before any is replaced, as one
                // may be another's input.
                let moves = |k: usize| program.outputs[k] != program.inputs[nc + k];
                let step = Step::new(self, &inputs, &consts, &buffers, &ys, row);
                let block = row - row % SUM_BLOCK;
                let block_ends = match l.reverse {
                    false => row + 1 == (block + SUM_BLOCK).min(l.length),
                    true => row == block,
                };
                for sum in &mut sums {
                    sum.keep(&step, row - block);
                    if block_ends {
                        sum.add_block(block, (block + SUM_BLOCK).min(l.length));
                    }
                }
                for k in (0..nh).filter(|&k| moves(k) && self.carried[k].is_none()) {
                    next[k].copy_from_slice(step.value(program.outputs[k]));
                }
                for k in (0..nh).filter(|&k| moves(k)) {
                    match self.carried[k] {
                        Some(buffer) => std::mem::swap(&mut carry[k], &mut buffers[buffer]),
                        None => std::mem::swap(&mut carry[k], &mut next[k]),
                    }
                }
                if let Some(tracker) = &l.progress {
                    tracker.report(t + 1);
                }
            }
            Ok(())
        })?;
        let shaped = |values: Vec<f64>, shape: Vec<usize>| {
            ArrayD::from_shape_vec(shape, values)
                .map(Data::F64)
                .map_err(|e| Error::shape("scan", e.to_string()))
        };
        let stacked = ys.into_iter().zip(&out_avals[nh..]).map(|(values, aval)| {
            let shape = std::iter::once(l.length).chain(aval.shape.iter().copied());
            shaped(values, shape.collect())
        });
        let finals = carry.into_iter().zip(&out_avals);
        let sums: Vec<_> = (sums.into_iter())
            .map(|sum| shaped(sum.total, sum.shape.to_vec()))
            .collect();
        // The operands the loop read last (the stack of a per-step input, say) go back to the
        // pool, for the next run.
        drop(standard);
        pool::recycle_all(ins);
        finals
            .map(|(values, aval)| shaped(values, aval.shape.clone()))
            .chain(stacked)
            .chain(sums)
            .collect()
    }

    /// For each operation, the selection its product makes when it is a product by a constant
    /// (of the body, or of the loop: `loop_consts`) of single ones amid zeros.
    fn selections(&self, loop_consts: &[Cow<[f64]>], consts: &[&[f64]]) -> Vec<Option<Selection>> {
        let selection = |op: &Op| {
            let Op::MatMul(a, b, _) = op else {
                return None;
            };
            let fixed = match self.homes[a.index()] {
                Home::Input(k) if k < loop_consts.len() => &loop_consts[k][..],
                Home::Const(k) => consts[k],
                _ => return None,
            };
            Selection::of(fixed, self.program.aval(*a), self.program.aval(*b))
        };
        self.ops.iter().map(selection).collect()
    }

    /// How each operation runs, given the selections the products make.
    fn runs<'s>(&self, selections: &'s [Option<Selection>]) -> Vec<Run<'s>> {
        let mut runs: Vec<Run> = (self.ops.iter().zip(selections))
            .map(|(op, selection)| match (op, selection) {
                (Op::MatMul(_, b, _), Some(selection)) => Run::Select(selection, *b),
                _ => Run::Compute,
            })
            .collect();
        for (i, added) in self.added.iter().enumerate() {
            if let Some((product, other)) = *added
                && let Run::Select(selection, b) = runs[product]
            {
                runs[i] = Run::AddSelected(other, selection, b);
                runs[product] = Run::Skip;
            }
        }
        runs
    }

    /// Whether per-step output `j`, value `y`, is written straight into its stacked array.
    fn is_stacked(&self, y: Var, j: usize) -> bool {
        matches!(self.homes[y.index()], Home::Buffer(k) if self.stacked[k] == Some(j))
    }

    /// Runs one operation of a step, into its buffer (or its row of a stacked output).
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        op: &Op,
        run: &Run,
        inputs: &[&[f64]],
        consts: &[&[f64]],
        (buffers, ys): (&mut Vec<Vec<f64>>, &mut Vec<Vec<f64>>),
        row: usize,
        scratch: &mut (Vec<f64>, Vec<f64>),
    ) -> Result<()> {
        let target = match op {
            Op::Unary(.., o) | Op::PowI(.., o) | Op::Binary(.., o) => *o,
            Op::Sum { out, .. } | Op::MatMul(.., out) | Op::Generic(_, out) => *out,
        };
        // Values are written once (the body is in SSA form): no operand is the output, so
        // its storage can leave while the operation reads the rest.
        let (home, range) = match self.stacked[target] {
            Some(j) => {
                let len = self.buffer_lens[target];
                (&mut ys[j], row * len..(row + 1) * len)
            }
            None => {
                let len = buffers[target].len();
                (&mut buffers[target], 0..len)
            }
        };
        let mut storage = std::mem::take(home);
        let out = &mut storage[range];
        let step = Step::new(self, inputs, consts, buffers, ys, row);
        let done = match *run {
            Run::Select(selection, b) => {
                selection.apply(step.value(b), out);
                Ok(())
            }
            Run::AddSelected(other, selection, b) => {
                selection.add_to(step.value(other), step.value(b), out);
                Ok(())
            }
            Run::Compute | Run::Skip => self.compute(op, &step, scratch, out),
        };
        match self.stacked[target] {
            Some(j) => ys[j] = storage,
            None => buffers[target] = storage,
        }
        done
    }

    fn compute(
        &self,
        op: &Op,
        step: &Step<'_>,
        (s0, s1): &mut (Vec<f64>, Vec<f64>),
        out: &mut [f64],
    ) -> Result<()> {
        let value = |v: Var| step.value(v);
        let n = out.len();
        match op {
            Op::Unary(u, x, _) => super::tile::unary(*u, operand(x, &value, s0, n), out),
            Op::PowI(p, x, _) => super::tile::powi(*p, operand(x, &value, s0, n), out),
            Op::Binary(b, x, y, _) => match (x, y) {
                // One operand read in place, the other from a register or row by row.
                (Read::Same(x), Read::Scalar(s)) | (Read::Scalar(s), Read::Same(x)) => {
                    let scalar_first = matches!(op, Op::Binary(_, Read::Scalar(_), ..));
                    super::tile::binary_scalar(*b, value(*x), value(*s)[0], scalar_first, out)
                }
                (Read::Same(x), Read::Repeated(r)) | (Read::Repeated(r), Read::Same(x)) => {
                    let repeated_first = matches!(op, Op::Binary(_, Read::Repeated(_), ..));
                    super::tile::binary_repeated(*b, value(*x), value(*r), repeated_first, out)
                }
                _ => {
                    let (x, y) = (operand(x, &value, s0, n), operand(y, &value, s1, n));
                    super::tile::binary(*b, x, y, out);
                }
            },
            Op::Sum { x, len, inner, .. } => {
                crate::primitives::sum::sum_middle(value(*x), *len, *inner, out);
            }
            Op::MatMul(a, b, _) => {
                let view = |v: Var| {
                    ArrayViewD::from_shape(self.program.aval(v).shape.as_slice(), value(v))
                        .map_err(|e| Error::shape("matmul", e.to_string()))
                };
                matmul_into(view(*a)?, view(*b)?, out);
            }
            Op::Generic(i, _) => {
                let eqn = &self.program.eqns[*i];
                let operands = eqn
                    .inputs
                    .iter()
                    .map(|&v| {
                        let shape = self.program.aval(v).shape.as_slice();
                        ArrayD::from_shape_vec(shape, value(v).to_vec())
                            .map(Data::F64)
                            .map_err(|e| Error::shape("scan", e.to_string()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&Data> = operands.iter().collect();
                match eqn.prim.eval(&refs)?.pop() {
                    Some(Data::F64(result)) => copy_out(out, result),
                    other => {
                        return Err(Error::dtype(
                            "scan",
                            "runs bodies of f64 values, but an equation gave",
                            other.map_or(DType::Bool, |d| d.dtype()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The `n` values an elementwise operand gives the output: its own, or (broadcast) copied
/// into `scratch`.
fn operand<'a>(
    read: &Read,
    value: &impl Fn(Var) -> &'a [f64],
    scratch: &'a mut [f64],
    n: usize,
) -> &'a [f64] {
    match read {
        Read::Same(v) => value(*v),
        Read::Scalar(v) => {
            scratch[..n].fill(value(*v)[0]);
            &scratch[..n]
        }
        Read::Repeated(v) => {
            for (s, &x) in scratch[..n].iter_mut().zip(value(*v).iter().cycle()) {
                *s = x;
            }
            &scratch[..n]
        }
        Read::Indexed(v, indices) => {
            let from = value(*v);
            for (s, &i) in scratch.iter_mut().zip(indices) {
                *s = from[i as usize];
            }
            &scratch[..n]
        }
    }
}

/// How an operation runs at every step of one run of the loop.
#[derive(Clone, Copy)]
enum Run<'s> {
    /// Through its kernel.
    Compute,
    /// A product of a selecting constant and `b`: a copy.
    Select(&'s Selection, Var),
    /// The sum of a value and a selecting product that only this sum reads: the value, with
    /// the selected rows of `b` added.
    AddSelected(Var, &'s Selection, Var),
    /// A selecting product that the sum reading it applies.
    Skip,
}

/// A product `a @ b` whose `a` stays the same at every step (a constant of the loop) and
/// selects: each row of each of its matrices holds a single one, or nothing, amid zeros (the
/// tangent basis a sweep hands a loop, typically). Each row of the result is then a row of
/// `b`'s matching matrix, or zeros: a copy instead of a product.
#[derive(Debug)]
struct Selection {
    /// For each row of the result that is not zeros: where it starts, and where the row of
    /// `b` it copies starts.
    picks: Vec<(usize, usize)>,
    /// The length of a row (the columns of `b`).
    n: usize,
}

impl Selection {
    /// The selection `a` (of values `fixed`) makes in `a @ b`, if it is one: every matrix of
    /// the result's batch is one of `a`, and `b` has one matrix or one per matrix of `a`.
    fn of(fixed: &[f64], a: &crate::storage::Aval, b: &crate::storage::Aval) -> Option<Selection> {
        let (ra, rb) = (a.shape.len(), b.shape.len());
        let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
        let (ca, cb): (usize, usize) = (
            a.shape[..ra - 2].iter().product(),
            b.shape[..rb - 2].iter().product(),
        );
        if !(cb == 1 || cb == ca) || ra < rb || fixed.len() != ca * m * k {
            return None;
        }
        // The size of each matrix of `b` when `b` has one per matrix of `a`.
        let b_stride = if cb == 1 { 0 } else { k * n };
        let mut picks = Vec::new();
        for (r, row) in fixed.chunks_exact(k.max(1)).enumerate() {
            let mut one = None;
            for (j, &v) in row.iter().enumerate() {
                if v == 1.0 && one.is_none() {
                    one = Some(j);
                } else if v != 0.0 {
                    return None;
                }
            }
            if let Some(j) = one {
                picks.push((r * n, r / m * b_stride + j * n));
            }
        }
        Some(Selection { picks, n })
    }

    /// `out = a @ b`.
    fn apply(&self, b: &[f64], out: &mut [f64]) {
        out.fill(0.0);
        let n = self.n;
        for &(to, from) in &self.picks {
            out[to..to + n].copy_from_slice(&b[from..from + n]);
        }
    }

    /// `out = other + a @ b`, as the sum of `other` and the product would give it: where a
    /// row of the product is zeros, `other + 0.0` (which turns -0.0 into 0.0), elsewhere the
    /// sum with the row of `b`, in one rounding.
    fn add_to(&self, other: &[f64], b: &[f64], out: &mut [f64]) {
        for (o, &x) in out.iter_mut().zip(other) {
            *o = x + 0.0;
        }
        let n = self.n;
        for &(to, from) in &self.picks {
            let sums = out[to..to + n].iter_mut().zip(&other[to..to + n]);
            for ((o, &x), &y) in sums.zip(&b[from..from + n]) {
                *o = x + y;
            }
        }
    }
}

/// The steps whose products a sum of a loop adds at a time: the factors of a block stay in
/// the caches, and the block is a product large enough for the matrix kernel.
const SUM_BLOCK: usize = 32;

/// A sum of products `A_t^T @ B_t` over the steps ([`Loop::sums`]), added a block of steps at
/// a time.
struct Summed<'a> {
    factors: [Factor<'a>; 2],
    /// The values of each factor at a step.
    lens: [usize; 2],
    /// The sum's shape, `[x, y]`, and its values so far.
    shape: [usize; 2],
    total: Vec<f64>,
}

/// Where the values of a factor of a sum are, for the steps of a block.
enum Factor<'a> {
    /// A per-step input: its rows of the stacked input.
    InPlace(&'a [f64]),
    /// Computed by the body: copied into a row of these at each step.
    Kept(Var, Vec<f64>),
}

impl<'a> Summed<'a> {
    /// The sum of the factors `pair` (`[k, x]` and `[k, y]`) of `body`, whose inputs from
    /// `first_x` on are per-step inputs (their stacks among the loop's `operands`).
    fn new(
        body: &FlatBody,
        pair: &[Var],
        first_x: usize,
        operands: &'a [Cow<'a, [f64]>],
    ) -> Summed<'a> {
        let factor = |v: Var| match body.homes[v.index()] {
            Home::Input(k) if k >= first_x => Factor::InPlace(&operands[k][..]),
            _ => Factor::Kept(v, vec![0.0; SUM_BLOCK * body.program.aval(v).numel()]),
        };
        let (a, b) = (body.program.aval(pair[0]), body.program.aval(pair[1]));
        let shape = [a.shape[1], b.shape[1]];
        Summed {
            factors: [factor(pair[0]), factor(pair[1])],
            lens: [a.numel(), b.numel()],
            shape,
            total: vec![0.0; shape[0] * shape[1]],
        }
    }

    /// Keeps what the body computed for the factors at this step, `at` steps into its block.
    fn keep(&mut self, step: &Step<'_>, at: usize) {
        for (factor, &len) in self.factors.iter_mut().zip(&self.lens) {
            if let Factor::Kept(v, kept) = factor {
                kept[at * len..(at + 1) * len].copy_from_slice(step.value(*v));
            }
        }
    }

    /// Adds the products of the steps `from..to` (a block).
    fn add_block(&mut self, from: usize, to: usize) {
        let [a, b] = [0, 1].map(|side| {
            let len = self.lens[side];
            match &self.factors[side] {
                Factor::InPlace(stack) => &stack[from * len..to * len],
                Factor::Kept(_, kept) => &kept[..(to - from) * len],
            }
        });
        add_transposed_product(a, b, self.shape, &mut self.total);
    }
}

/// Per-step inputs (`xs`, of rows of `x_lens` values) that nothing else holds lend their
/// arrays to per-step outputs of rows as long (of `row_lens` values): the arrays by output,
/// and the output each input lent its array to. Each step then copies its row of the input
/// out before writing the output's row there. (The accumulation of a reverse loop, say,
/// stacks factors as large as the second-order factors it reads.)
fn lend(
    xs: &mut [Arc<Data>],
    x_lens: &[usize],
    row_lens: &[usize],
    steps: usize,
) -> (Vec<Option<Vec<f64>>>, Vec<Option<usize>>) {
    let mut lent: Vec<Option<Vec<f64>>> = vec![None; row_lens.len()];
    let mut borrowers = vec![None; x_lens.len()];
    for (x, &len) in x_lens.iter().enumerate() {
        let free = (0..lent.len()).find(|&j| lent[j].is_none() && row_lens[j] == len);
        if let (Some(j), true) = (free, len > 0) {
            lent[j] = take_unique(&mut xs[x], steps * len);
            borrowers[x] = lent[j].is_some().then_some(j);
        }
    }
    (lent, borrowers)
}

/// The `len` values of `data` in row-major order, taken from it (a placeholder of one value
/// is left) when nothing else holds it.
fn take_unique(data: &mut Arc<Data>, len: usize) -> Option<Vec<f64>> {
    let Data::F64(array) = Arc::get_mut(data)? else {
        return None;
    };
    if !array.is_standard_layout() || array.len() != len {
        return None;
    }
    let (mut values, offset) = std::mem::take(array).into_raw_vec_and_offset();
    values.drain(..offset.unwrap_or(0));
    values.truncate(len);
    Some(values)
}

/// The values of an `f64` array in row-major order: in place when it is in standard layout.
fn row_major(data: &Data) -> Result<Cow<'_, [f64]>> {
    match data {
        Data::F64(a) => Ok(a
            .as_slice()
            .map_or_else(|| Cow::Owned(a.iter().copied().collect()), Cow::Borrowed)),
        other => Err(Error::dtype(
            "scan",
            "runs bodies of f64 values, not",
            other.dtype(),
        )),
    }
}

/// The values one step reads: the loop's operands, the body's constants, and what the step
/// has computed so far.
struct Step<'a> {
    body: &'a FlatBody,
    inputs: &'a [&'a [f64]],
    consts: &'a [&'a [f64]],
    buffers: &'a [Vec<f64>],
    ys: &'a [Vec<f64>],
    row: usize,
}

impl<'a> Step<'a> {
    fn new(
        body: &'a FlatBody,
        inputs: &'a [&'a [f64]],
        consts: &'a [&'a [f64]],
        buffers: &'a [Vec<f64>],
        ys: &'a [Vec<f64>],
        row: usize,
    ) -> Step<'a> {
        Step {
            body,
            inputs,
            consts,
            buffers,
            ys,
            row,
        }
    }

    /// The values of `v` in this step.
    fn value(&self, v: Var) -> &'a [f64] {
        match self.body.homes[v.index()] {
            Home::Input(k) => self.inputs[k],
            Home::Const(k) => self.consts[k],
            Home::Buffer(k) => match self.body.stacked[k] {
                Some(j) => {
                    let len = self.body.buffer_lens[k];
                    &self.ys[j][self.row * len..(self.row + 1) * len]
                }
                None => &self.buffers[k],
            },
        }
    }
}

/// Copies a result into a step's buffer and gives its storage back to the pool.
fn copy_out(out: &mut [f64], result: ArrayD<f64>) {
    match result.as_slice() {
        Some(values) => out.copy_from_slice(values),
        None => {
            for (o, v) in out.iter_mut().zip(result.iter()) {
                *o = *v;
            }
        }
    }
    pool::recycle(Data::F64(result));
}

/// Whether sorted, distinct `axes` are one block of neighbouring axes.
fn is_block(axes: &[usize]) -> bool {
    !axes.is_empty() && axes.windows(2).all(|w| w[1] == w[0] + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::loops::run_steps;
    use crate::storage::Aval;

    fn data(shape: &[usize], f: impl Fn(usize) -> f64) -> Arc<Data> {
        let n = shape.iter().product();
        let values = (0..n).map(f).collect();
        Arc::new(Data::F64(ArrayD::from_shape_vec(shape, values).unwrap()))
    }

    /// A body with every kind of operation: broadcast and scalar operands, a reshape, a
    /// unary function, a power, a sum, matrix products (one by a selecting constant, run as a
    /// copy) and a transpose (through its kernel).
    fn body() -> Program {
        let mut p = Program::default();
        let var = |p: &mut Program, shape: &[usize]| p.new_var(Aval::new(shape, DType::F64));
        let (c, w, e, h, kept, x) = (
            var(&mut p, &[3]),
            var(&mut p, &[3, 1]),
            var(&mut p, &[2, 2]),
            var(&mut p, &[2, 3]),
            var(&mut p, &[2]),
            var(&mut p, &[3]),
        );
        p.inputs = vec![c, w, e, h, kept, x];
        let two = var(&mut p, &[]);
        p.consts.push((two, data(&[], |_| 0.5)));
        // Vectors repeated along a batch and scalars, on either side.
        let a = p.push(BinaryOp::Mul, &[h, c]);
        let b = p.push(BinaryOp::Sub, &[x, a]);
        let s = p.push(BinaryOp::Sub, &[two, b]);
        let s = p.push(BinaryOp::Mul, &[s, two]);
        let r = p.push(Structural::Reshape(vec![6]), &[s]);
        let t = p.push(UnaryOp::Tanh, &[r]);
        let q = p.push(Elementwise::PowI(2), &[t]);
        let back = p.push(Structural::Reshape(vec![2, 3]), &[t]);
        let sq = p.push(Structural::Reshape(vec![2, 3]), &[q]);
        let sum = p.push(Reduce::sum(vec![1]), &[sq]);
        let m = p.push(crate::primitives::MatMul, &[back, w]);
        let turned = p.push(Structural::Transpose(vec![1, 0]), &[back]);
        let selected = p.push(crate::primitives::MatMul, &[e, m]);
        // A selecting product that only a sum reads: the sum applies it.
        let product = p.push(crate::primitives::MatMul, &[e, m]);
        let plus = p.push(BinaryOp::Add, &[m, product]);
        // The second carry passes unchanged. The last two per-step outputs are copied into
        // their rows: a value stacked already, and a per-step input.
        p.outputs = vec![back, kept, sum, m, turned, selected, plus, sum, x];
        p
    }

    #[test]
    fn a_flat_body_runs_as_its_plan_does() {
        let program = body();
        let flat = FlatBody::new(&program, 2, 7).expect("a small f64 body");
        assert!(flat.ops.iter().any(|op| matches!(op, Op::Generic(..))));
        assert_eq!(flat.added.iter().flatten().count(), 1);
        let plan = super::super::Plan::new(program.clone());
        for reverse in [false, true] {
            let mut l = Loop::new(program.clone(), 3, 2, 4);
            l.reverse = reverse;
            let ins = [
                data(&[3], |i| 0.3 * i as f64 - 0.2),
                data(&[3, 1], |i| 1.0 - 0.4 * i as f64),
                data(&[2, 2], |i| if i == 1 { 1.0 } else { 0.0 }),
                data(&[2, 3], |i| 0.1 * i as f64),
                data(&[2], |i| 2.0 + i as f64),
                data(&[4, 3], |i| (0.7 * i as f64).sin()),
            ];
            let want = run_steps(&l, &ins, &mut |inputs| plan.run(inputs, false)).unwrap();
            // Bit for bit: the same kernels, in the same order; with the per-step input held
            // elsewhere too, and held by the loop alone (its array then holds the per-step
            // output that restates it, the only one of rows as long).
            let mut alone = ins.to_vec();
            alone[5] = data(&[4, 3], |i| (0.7 * i as f64).sin());
            for ins in [ins.to_vec(), alone] {
                let got = flat.run(&l, ins).unwrap();
                assert_eq!(got.len(), 9);
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g, w);
                }
            }
        }
    }

    #[test]
    fn a_per_step_input_held_by_the_loop_alone_lends_its_array_to_an_output() {
        let program = body();
        let flat = FlatBody::new(&program, 2, 7).expect("a small f64 body");
        let l = Loop::new(program, 3, 2, 4);
        let mut ins = vec![
            data(&[3], |_| 0.5),
            data(&[3, 1], |_| 1.0),
            data(&[2, 2], |i| (i % 3 == 0) as u8 as f64),
            data(&[2, 3], |i| i as f64),
            data(&[2], |i| i as f64),
            data(&[4, 3], |i| i as f64),
        ];
        fn f64s(d: &Data) -> &ArrayD<f64> {
            match d {
                Data::F64(a) => a,
                _ => unreachable!("f64 values"),
            }
        }
        let values = f64s(&ins[5]).clone();
        let out = flat.run(&l, ins.clone()).unwrap();
        assert_ne!(
            f64s(&out[8]).as_ptr(),
            f64s(&ins[5]).as_ptr(),
            "shared: copied"
        );
        assert_eq!(f64s(&out[8]), values);
        ins[5] = Arc::new(Data::F64(values.clone()));
        let at = f64s(&ins[5]).as_ptr();
        let out = flat.run(&l, ins).unwrap();
        assert_eq!(f64s(&out[8]).as_ptr(), at, "held by the loop alone: lent");
        assert_eq!(f64s(&out[8]), values);
    }

    #[test]
    fn a_loop_of_no_steps_gives_its_initial_carry_and_empty_stacks() {
        let program = body();
        let flat = FlatBody::new(&program, 2, 7).expect("a small f64 body");
        let l = Loop::new(program, 3, 2, 0);
        let ins = [
            data(&[3], |_| 1.0),
            data(&[3, 1], |_| 1.0),
            data(&[2, 2], |_| 0.0),
            data(&[2, 3], |i| i as f64),
            data(&[2], |i| i as f64),
            data(&[0, 3], |_| 0.0),
        ];
        let out = flat.run(&l, ins.to_vec()).unwrap();
        assert_eq!(out[0], *ins[3]);
        assert_eq!(out[1], *ins[4]);
        assert_eq!(out[2].shape(), &[0, 2]);
        assert!(out[2..].iter().all(|y| y.shape()[0] == 0));
    }

    #[test]
    fn sums_of_products_over_the_steps_agree_with_stacked_factors() {
        // A carry, a stacked output, and two sums: of a computed value and a per-step input
        // (read in place), and of two computed values.
        let mut p = Program::default();
        let var = |p: &mut Program, shape: &[usize]| p.new_var(Aval::new(shape, DType::F64));
        let (h, x) = (var(&mut p, &[1, 3]), var(&mut p, &[1, 4]));
        p.inputs = vec![h, x];
        let next = p.push(UnaryOp::Sin, &[h]);
        let y = p.push(UnaryOp::Cos, &[next]);
        let squared = p.push(BinaryOp::Mul, &[x, x]);
        let shifted = p.push(BinaryOp::Add, &[next, h]);
        p.outputs = vec![next, y, next, x, squared, shifted];
        let flat = FlatBody::new(&p, 1, 1).expect("a small f64 body");
        let plan = super::super::Plan::new(p.clone());
        // No steps, fewer than a block, and blocks with a partial one.
        for (length, reverse) in [(0, false), (5, true), (70, false), (70, true)] {
            let mut l = Loop::new(p.clone(), 0, 1, length);
            (l.reverse, l.sums) = (reverse, 2);
            let ins = [
                data(&[1, 3], |i| 0.3 + 0.2 * i as f64),
                data(&[length, 1, 4], |i| (0.7 * i as f64).cos()),
            ];
            let want = run_steps(&l, &ins, &mut |inputs| plan.run(inputs, false)).unwrap();
            let got = flat.run(&l, ins.to_vec()).unwrap();
            let shapes: Vec<&[usize]> = got.iter().map(|d| d.shape()).collect();
            assert_eq!(shapes, [&[1, 3][..], &[length, 1, 3], &[3, 4], &[4, 3]]);
            assert_eq!(got[..2], want[..2]);
            for (g, w) in got[2..].iter().zip(&want[2..]) {
                let (Data::F64(g), Data::F64(w)) = (g, w) else {
                    panic!("f64 sums");
                };
                assert!(
                    g.iter()
                        .zip(w)
                        .all(|(g, w)| (g - w).abs() <= 1e-13 * (1.0 + w.abs()))
                );
                assert!(length == 0 || g.iter().any(|&v| v != 0.0));
            }
        }
    }

    #[test]
    fn only_matrices_of_single_ones_amid_zeros_select() {
        let aval = |shape: &[usize]| Aval::new(shape, DType::F64);
        let (a, b) = (aval(&[2, 2, 3]), aval(&[3, 2]));
        let one_hot = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let selection = Selection::of(&one_hot, &a, &b).expect("rows of single ones");
        let b_values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [f64::NAN; 8];
        selection.apply(&b_values, &mut out);
        assert_eq!(out, [3.0, 4.0, 0.0, 0.0, 1.0, 2.0, 5.0, 6.0]);
        // Added to another value: the sums of that value and the product, bit for bit.
        let other = [-0.0, 0.25, -0.0, 0.5, 1e-17, -1.0, 0.125, -6.0];
        let mut sum = [f64::NAN; 8];
        selection.add_to(&other, &b_values, &mut sum);
        let want: Vec<u64> = out
            .iter()
            .zip(&other)
            .map(|(x, y)| (x + y).to_bits())
            .collect();
        assert_eq!(sum.map(f64::to_bits).to_vec(), want);
        // a column per matrix of `a`: each matrix selects from its own
        let batched = Selection::of(&one_hot, &a, &aval(&[2, 3, 1])).expect("a batch of b");
        let mut out = [f64::NAN; 4];
        batched.apply(&b_values, &mut out);
        assert_eq!(out, [2.0, 0.0, 4.0, 6.0]);
        let mut two = one_hot;
        two[1] = 2.0;
        assert!(Selection::of(&two, &a, &b).is_none());
        let mut twice = one_hot;
        twice[2] = 1.0;
        assert!(Selection::of(&twice, &a, &b).is_none());
    }

    #[test]
    fn bodies_of_other_dtypes_or_too_large_run_through_their_plan() {
        let mut p = Program::default();
        let x = p.new_var(Aval::new(&[MAX_ELEMENTS + 1], DType::F64));
        p.inputs.push(x);
        p.outputs.push(x);
        assert!(FlatBody::new(&p, 0, 0).is_none());
        let mut p = Program::default();
        let x = p.new_var(Aval::new(&[3], DType::F32));
        p.inputs.push(x);
        p.outputs.push(x);
        assert!(FlatBody::new(&p, 0, 0).is_none());
    }
}
