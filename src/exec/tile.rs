//! Running a fused group: one pass over its iteration space in tiles of [`TILE`] elements,
//! each equation a tight loop over a tile held in a register.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::fuse::{Dst, Group, Src, TileOp, View};
use crate::error::{Error, Result};
use crate::ir::Var;
use crate::primitives::{BinaryOp, UnaryOp};
use crate::simd::multiversion;
use crate::storage::{Data, pool};

/// Elements per tile: the registers of a group stay in the first-level cache.
const TILE: usize = 512;

/// Groups of at least this many elements per thread run on the thread pool: below it, the
/// cost of waking threads exceeds the work shared.
const PARALLEL_MIN: usize = 1 << 16;

thread_local! {
    /// The registers of the group running on this thread, kept between runs.
    static REGISTERS: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
}

impl Group {
    /// Runs the group on the values computed so far (`env`, by variable); returns its outputs
    /// in order. Large groups are split into ranges of columns run on the thread pool.
    pub fn run(&self, env: &[Option<Arc<Data>>]) -> Result<Vec<Data>> {
        let numel: usize = self.shape.iter().product();
        // Operands in standard layout are read in place, others (rarely any) from a copy.
        let mut copies: Vec<ndarray::ArrayD<f64>> = Vec::new();
        for view in &self.views {
            let array = buffer(env, view.var)?;
            if !array.is_standard_layout() {
                copies.push(array.as_standard_layout().into_owned());
            }
        }
        let mut copied = copies.iter();
        let slices = self
            .views
            .iter()
            .map(|view| {
                let array = buffer(env, view.var)?;
                Ok(match array.as_slice() {
                    Some(values) => values,
                    None => copied.next().and_then(|c| c.as_slice()).expect("a copy"),
                })
            })
            .collect::<Result<Vec<&[f64]>>>()?;
        let mut outputs: Vec<Vec<f64>> = self
            .outputs
            .iter()
            // Every element is stored by the tile loop.
            .map(|_| pool::take_to_overwrite(numel))
            .collect();
        if numel > 0 {
            let (rows, cols) = self.blocks(numel);
            let parts = (numel / PARALLEL_MIN).clamp(1, rayon::current_num_threads());
            if parts == 1 {
                // Every row of every output, in one list (few allocations: small groups run
                // often).
                let mut targets: Vec<&mut [f64]> = outputs
                    .iter_mut()
                    .flat_map(|output| output.chunks_mut(cols))
                    .collect();
                self.run_columns(&slices, rows, cols, 0..cols, &mut targets);
            } else {
                // Ranges of whole tiles of columns, one per thread, each writing its columns
                // of every row of every output.
                let width = cols.div_ceil(parts).next_multiple_of(TILE);
                let ranges: Vec<Range<usize>> = (0..cols)
                    .step_by(width)
                    .map(|c| c..cols.min(c + width))
                    .collect();
                let mut pieces: Vec<Vec<&mut [f64]>> = ranges
                    .iter()
                    .map(|_| Vec::with_capacity(outputs.len() * rows))
                    .collect();
                for row in outputs
                    .iter_mut()
                    .flat_map(|output| output.chunks_mut(cols))
                {
                    for (piece, part) in pieces.iter_mut().zip(row.chunks_mut(width)) {
                        piece.push(part);
                    }
                }
                ranges
                    .into_iter()
                    .zip(pieces)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .for_each(|(range, mut targets)| {
                        self.run_columns(&slices, rows, cols, range, &mut targets)
                    });
            }
        }
        Ok(outputs
            .into_iter()
            .map(|values| {
                Data::F64(
                    ndarray::ArrayD::from_shape_vec(self.out_shape.as_slice(), values)
                        .expect("one value per element"),
                )
            })
            .collect())
    }

    /// The iteration space as `rows x cols`, walked a tile of columns at a time down every
    /// row. That is the last axis against the others when an operand is repeated along the
    /// rows (a broadcast over leading axes): its tile is then read from memory once and from
    /// the cache for the other rows. Otherwise it is one row read in order.
    pub(super) fn blocks(&self, numel: usize) -> (usize, usize) {
        let rank = self.shape.len();
        let cols = self.shape[rank - 1];
        let repeated = self.views.iter().any(|v| {
            v.strides[rank - 1] != 0
                && (0..rank - 1).any(|d| v.strides[d] == 0 && self.shape[d] > 1)
        });
        if repeated && cols >= TILE {
            (numel / cols, cols)
        } else {
            (1, numel)
        }
    }

    /// Runs the tiles of columns `range` of every row of the `rows x cols` iteration space,
    /// writing output `k`'s row `r` into `targets[k * rows + r]` (of `range.len()` values),
    /// in this thread's registers.
    fn run_columns(
        &self,
        slices: &[&[f64]],
        rows: usize,
        cols: usize,
        range: Range<usize>,
        targets: &mut [&mut [f64]],
    ) {
        let Range { start, end } = range;
        let tile = TILE.min(end - start).max(1);
        // The multi-index of a tile's first element (the same in every view: all have the
        // group's shape), and scratch space to walk a tile across rows.
        let rank = self.shape.len();
        let (mut stack, mut heap) = ([0usize; 16], Vec::new());
        let (start_at, coords) = if 2 * rank <= stack.len() {
            stack[..2 * rank].split_at_mut(rank)
        } else {
            heap.resize(2 * rank, 0);
            heap.split_at_mut(rank)
        };
        REGISTERS.with(|registers| {
            let mut registers = registers.borrow_mut();
            if registers.len() < self.registers {
                registers.resize_with(self.registers, Vec::new);
            }
            for r in registers.iter_mut().take(self.registers) {
                if r.len() < tile {
                    r.resize(tile, 0.0);
                }
            }
            // What each register holds this tile. On the stack for the usual few registers:
            // small groups run often.
            let (mut few, mut many) = ([Held::Own; 16], Vec::new());
            let held: &mut [Held] = if self.registers <= few.len() {
                &mut few[..self.registers]
            } else {
                many.resize(self.registers, Held::Own);
                &mut many
            };
            let loads = self.ops.iter().any(|op| matches!(op, TileOp::Load { .. }));
            for (column, row) in (start..end)
                .step_by(tile)
                .flat_map(|c| (0..rows).map(move |r| (c, r)))
            {
                let len = tile.min(end - column);
                let first = row * cols + column;
                let at = column - start;
                if loads {
                    coordinates(&self.shape, first, start_at);
                }
                for op in &self.ops {
                    let dst = match *op {
                        TileOp::Load { view, dst } => {
                            let into = &mut registers[dst][..len];
                            held[dst] =
                                load(&self.views[view], slices[view], start_at, into, coords);
                            continue;
                        }
                        TileOp::Unary { dst, .. }
                        | TileOp::PowI { dst, .. }
                        | TileOp::Binary { dst, .. } => dst,
                    };
                    // A repeated run meets only a tile, in a binary operation; anywhere else
                    // it is spread over its register first.
                    let is_tile = |src: Src| match src {
                        Src::Register(r) => matches!(held[r], Held::Own | Held::InPlace(_)),
                        Src::Direct(_) | Src::Output(_) => true,
                    };
                    let spread = match *op {
                        TileOp::Unary { src, .. } | TileOp::PowI { src, .. } => [Some(src), None],
                        TileOp::Binary { a, b, .. } => {
                            [(!is_tile(b)).then_some(a), (!is_tile(a)).then_some(b)]
                        }
                        TileOp::Load { .. } => unreachable!("handled above"),
                    };
                    for src in spread.into_iter().flatten() {
                        if let Src::Register(r) = src {
                            if let Held::Repeated(run) = held[r] {
                                for row in registers[r][..len].chunks_exact_mut(run.len()) {
                                    row.copy_from_slice(run);
                                }
                                held[r] = Held::Own;
                            }
                        }
                    }
                    // Only registers stand for uniform tiles.
                    let uniform_of = |src: Src| match src {
                        Src::Register(r) => match held[r] {
                            Held::Uniform(value) => Some(value),
                            Held::Own | Held::InPlace(_) | Held::Repeated(_) => None,
                        },
                        Src::Direct(_) | Src::Output(_) => None,
                    };
                    // Uniform operands give a uniform result, computed once by the same
                    // kernel (so to the bit as the tile would be).
                    let once = |kernel: &dyn Fn(&mut [f64])| {
                        let mut result = [0.0];
                        kernel(&mut result);
                        result[0]
                    };
                    let uniform = match *op {
                        TileOp::Unary { op, src, .. } => {
                            uniform_of(src).map(|x| once(&|out| unary(op, &[x], out)))
                        }
                        TileOp::PowI { n, src, .. } => {
                            uniform_of(src).map(|x| once(&|out| powi(n, &[x], out)))
                        }
                        TileOp::Binary { op, a, b, .. } => match (uniform_of(a), uniform_of(b)) {
                            (Some(x), Some(y)) => Some(once(&|out| binary(op, &[x], &[y], out))),
                            _ => None,
                        },
                        TileOp::Load { .. } => unreachable!("handled above"),
                    };
                    if let (Some(value), Dst::Register(r)) = (uniform, dst) {
                        held[r] = Held::Uniform(value);
                        continue;
                    }
                    // The result's tile is taken out while the operands are read: the planner
                    // never gives an operand the result's place.
                    let mut place = match dst {
                        Dst::Register(r) => Place::Register(r, std::mem::take(&mut registers[r])),
                        Dst::Output(k) => {
                            Place::Output(k, std::mem::take(&mut targets[k * rows + row]))
                        }
                    };
                    let out = match &mut place {
                        Place::Register(_, values) => &mut values[..len],
                        Place::Output(_, values) => &mut values[at..at + len],
                    };
                    // A tile of an operand: a register (or what it stands for), a slice of a
                    // buffer read in order, or an output's tile.
                    let read = |src: Src| match src {
                        Src::Register(r) => match held[r] {
                            Held::Own => Operand::Tile(&registers[r][..len]),
                            Held::InPlace(values) => Operand::Tile(values),
                            Held::Uniform(value) => Operand::Uniform(value),
                            Held::Repeated(run) => Operand::Repeated(run),
                        },
                        Src::Direct(v) => {
                            let first = self.views[v].offset as usize + first;
                            Operand::Tile(&slices[v][first..first + len])
                        }
                        Src::Output(k) => Operand::Tile(&targets[k * rows + row][at..at + len]),
                    };
                    if let Some(value) = uniform {
                        out.fill(value);
                    } else {
                        match *op {
                            TileOp::Unary { op, src, .. } => unary(op, read(src).tile(), out),
                            TileOp::PowI { n, src, .. } => powi(n, read(src).tile(), out),
                            TileOp::Binary { op, a, b, .. } => match (read(a), read(b)) {
                                (Operand::Uniform(x), y) => {
                                    binary_scalar(op, y.tile(), x, true, out)
                                }
                                (x, Operand::Uniform(y)) => {
                                    binary_scalar(op, x.tile(), y, false, out)
                                }
                                (Operand::Repeated(x), y) => {
                                    binary_repeated(op, y.tile(), x, true, out)
                                }
                                (x, Operand::Repeated(y)) => {
                                    binary_repeated(op, x.tile(), y, false, out)
                                }
                                (x, y) => binary(op, x.tile(), y.tile(), out),
                            },
                            TileOp::Load { .. } => unreachable!("handled above"),
                        }
                    }
                    match place {
                        Place::Register(r, values) => {
                            registers[r] = values;
                            held[r] = Held::Own;
                        }
                        Place::Output(k, values) => targets[k * rows + row] = values,
                    }
                }
            }
        });
    }
}

/// What a register holds for the current tile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Held<'a> {
    /// Its own values.
    Own,
    /// Nothing: it stands for this run of a buffer, read in place.
    InPlace(&'a [f64]),
    /// Nothing: every element of the tile is this value.
    Uniform(f64),
    /// Nothing: every row of the tile is this run of a buffer (a vector broadcast over the
    /// rows of a batch).
    Repeated(&'a [f64]),
}

/// An operand's tile.
#[derive(Clone, Copy)]
enum Operand<'a> {
    Tile(&'a [f64]),
    Uniform(f64),
    Repeated(&'a [f64]),
}

impl<'a> Operand<'a> {
    /// The tile's values: uniform and repeated operands only meet their own kernels.
    fn tile(self) -> &'a [f64] {
        match self {
            Operand::Tile(values) => values,
            Operand::Uniform(_) | Operand::Repeated(_) => {
                unreachable!("uniform and repeated operands meet tiles in their own kernels")
            }
        }
    }
}

/// A result's place while it is computed, taken out of where it is kept: register `r`, or
/// a row of output `k`.
enum Place<'a> {
    Register(usize, Vec<f64>),
    Output(usize, &'a mut [f64]),
}

/// The `f64` array of a variable.
fn buffer(env: &[Option<Arc<Data>>], var: Var) -> Result<&ndarray::ArrayD<f64>> {
    match env[var.index()].as_deref() {
        Some(Data::F64(a)) => Ok(a),
        Some(other) => Err(Error::dtype("fused loop", "an f64 operand", other.dtype())),
        None => Err(Error::Trace(
            "internal: a fused loop reads an undefined value".into(),
        )),
    }
}

/// The multi-index of linear index `index` of `shape` (row-major), into `coords`.
pub(super) fn coordinates(shape: &[usize], mut index: usize, coords: &mut [usize]) {
    for d in (0..shape.len()).rev() {
        coords[d] = index % shape[d];
        index /= shape[d];
    }
}

/// Reads `dst.len()` elements of `view` from multi-index `start` on: in place when they are
/// one valid run of its buffer in order, as one number when they all read one element, as
/// one run when every row of the tile reads it, otherwise into `dst` (`coords` is scratch
/// space of the view's rank).
pub(super) fn load<'a>(
    view: &View,
    data: &'a [f64],
    start: &[usize],
    dst: &mut [f64],
    coords: &mut [usize],
) -> Held<'a> {
    let inner = view.shape.len() - 1;
    let width = view.shape[inner];
    coords.copy_from_slice(start);
    let stride = view.strides[inner];
    let (a, b) = view.valid[inner];
    let (j, len) = (coords[inner], dst.len());
    let row_valid = |coords: &[usize]| {
        (0..inner).all(|d| view.valid[d].0 <= coords[d] && coords[d] < view.valid[d].1)
    };
    // One element throughout (a scalar broadcast, whatever the rows).
    let one_element = (0..=inner).all(|d| {
        (view.strides[d] == 0 || view.shape[d] == 1) && view.valid[d] == (0, view.shape[d])
    });
    if one_element {
        return Held::Uniform(data[view.offset as usize]);
    }
    // A run of at least this many elements repeated along the tile is read row by row.
    const SHORTEST_REPEATED: usize = 16;
    let repeated_rows =
        (0..inner).all(|d| view.strides[d] == 0 && view.valid[d] == (0, view.shape[d]));
    if stride == 1
        && (a, b) == (0, width)
        && j == 0
        && len > width
        && len % width == 0
        && width >= SHORTEST_REPEATED
        && repeated_rows
    {
        let base = view.offset as usize;
        return Held::Repeated(&data[base..base + width]);
    }
    if matches!(stride, 0 | 1) && a <= j && j + len <= b && row_valid(coords) {
        let base = (view.offset + j as isize * stride + outer_offset(view, coords)) as usize;
        return match stride {
            0 => Held::Uniform(data[base]),
            _ => Held::InPlace(&data[base..base + len]),
        };
    }
    let mut filled = 0;
    while filled < dst.len() {
        let j = coords[inner];
        let count = (width - j).min(dst.len() - filled);
        let out = &mut dst[filled..filled + count];
        if !row_valid(coords) {
            out.fill(0.0);
        } else {
            let lo = a.clamp(j, j + count);
            let hi = b.clamp(lo, j + count);
            out[..lo - j].fill(0.0);
            out[hi - j..].fill(0.0);
            let base = view.offset + lo as isize * stride + outer_offset(view, coords);
            let read = &mut out[lo - j..hi - j];
            match stride {
                0 => read.fill(data[base as usize]),
                1 => read.copy_from_slice(&data[base as usize..base as usize + read.len()]),
                s => {
                    for (k, x) in read.iter_mut().enumerate() {
                        *x = data[(base + k as isize * s) as usize];
                    }
                }
            }
        }
        filled += count;
        // The next row.
        coords[inner] = 0;
        for d in (0..inner).rev() {
            coords[d] += 1;
            if coords[d] < view.shape[d] {
                break;
            }
            coords[d] = 0;
        }
    }
    Held::Own
}

/// The offset in `view`'s buffer of the row at `coords` (every axis but the last).
fn outer_offset(view: &View, coords: &[usize]) -> isize {
    let inner = coords.len() - 1;
    coords[..inner]
        .iter()
        .zip(&view.strides)
        .map(|(&c, &s)| c as isize * s)
        .sum()
}

/// `out[i] = f(x[i])`, monomorphised per `f` so that simple ones vectorise.
#[inline(always)]
fn map1(x: &[f64], out: &mut [f64], f: impl Fn(f64) -> f64) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f(v);
    }
}

/// `out[i] = f(x[i], y[i])`.
#[inline(always)]
fn map2(x: &[f64], y: &[f64], out: &mut [f64], f: impl Fn(f64, f64) -> f64) {
    for (o, (&a, &b)) in out.iter_mut().zip(x.iter().zip(y)) {
        *o = f(a, b);
    }
}

multiversion! {
    pub(super) fn unary(op: UnaryOp, x: &[f64], out: &mut [f64]) {
        // A loop per common activation, with the operation known inside it: tanh (branch
        // free) vectorises, and no element pays a dispatch on the operation.
        match op {
            UnaryOp::Neg => map1(x, out, |v| -v),
            UnaryOp::Tanh => map1(x, out, |v| UnaryOp::Tanh.apply(v)),
            UnaryOp::Exp => map1(x, out, |v| UnaryOp::Exp.apply(v)),
            _ => map1(x, out, |v| op.apply(v)),
        }
    }
}

multiversion! {
    pub(super) fn powi(n: i32, x: &[f64], out: &mut [f64]) {
        match n {
            2 => map1(x, out, |v| v * v),
            3 => map1(x, out, |v| v * v * v),
            -1 => map1(x, out, |v| 1.0 / v),
            _ => map1(x, out, |v| v.powi(n)),
        }
    }
}

/// `out[i] = x[i] op y[i]`, with a loop per common operation.
#[inline(always)]
fn apply2(op: BinaryOp, x: &[f64], y: &[f64], out: &mut [f64]) {
    match op {
        BinaryOp::Add => map2(x, y, out, |a, b| a + b),
        BinaryOp::Sub => map2(x, y, out, |a, b| a - b),
        BinaryOp::Mul => map2(x, y, out, |a, b| a * b),
        BinaryOp::Div => map2(x, y, out, |a, b| a / b),
        _ => map2(x, y, out, |a, b| op.apply(a, b)),
    }
}

multiversion! {
    pub(super) fn binary(op: BinaryOp, x: &[f64], y: &[f64], out: &mut [f64]) {
        apply2(op, x, y, out)
    }
}

multiversion! {
    /// `out[i] = x[i] op s`, or `s op x[i]` when `scalar_first`: one operand the same for
    /// every element (a time step, say), read from a register rather than a filled buffer.
    pub(super) fn binary_scalar(
        op: BinaryOp,
        x: &[f64],
        s: f64,
        scalar_first: bool,
        out: &mut [f64],
    ) {
        match (op, scalar_first) {
            (BinaryOp::Add, _) => map1(x, out, |a| a + s),
            (BinaryOp::Mul, _) => map1(x, out, |a| a * s),
            (BinaryOp::Sub, false) => map1(x, out, |a| a - s),
            (BinaryOp::Sub, true) => map1(x, out, |a| s - a),
            (BinaryOp::Div, false) => map1(x, out, |a| a / s),
            (_, false) => map1(x, out, |a| op.apply(a, s)),
            (_, true) => map1(x, out, |a| op.apply(s, a)),
        }
    }
}

multiversion! {
    /// `out = x op y` where `y` repeats along `x` (`out[i] = x[i] op y[i % y.len()]`), or
    /// `y op x` when `repeated_first`: a vector broadcast over the rows of a batch (a state
    /// against its tangents), read row by row rather than gathered into a buffer.
    pub(super) fn binary_repeated(
        op: BinaryOp,
        x: &[f64],
        y: &[f64],
        repeated_first: bool,
        out: &mut [f64],
    ) {
        let period = y.len();
        for (out, x) in out.chunks_exact_mut(period).zip(x.chunks_exact(period)) {
            if repeated_first {
                apply2(op, y, x, out);
            } else {
                apply2(op, x, y, out);
            }
        }
    }
}
