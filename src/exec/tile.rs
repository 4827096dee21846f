//! Running a fused group: one pass over its iteration space in tiles of [`TILE`] elements,
//! each equation a tight loop over a tile held in a register.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::fuse::{Dst, Group, Kind, SLOTS, Src, TileOp, View};
use crate::error::{Error, Result};
use crate::ir::Var;
use crate::primitives::{BinaryOp, UnaryOp};
use crate::simd::multiversion;
use crate::storage::{Data, pool};

/// Elements per tile: the registers of a group stay in the first-level cache.
const TILE: usize = 512;

/// Groups of at least this many elements per thread run on the thread pool: below it, the
/// cost of waking threads exceeds the work shared.
pub(super) const PARALLEL_MIN: usize = 1 << 16;

/// Elements a blocked run ([`Group::run_blocked`]) computes before handing them on: a few
/// tiles, whose outputs stay in a core's second-level cache.
const BLOCK: usize = 8 * TILE;

thread_local! {
    /// The registers of the group running on this thread, kept between runs.
    static REGISTERS: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
    /// The steps of the tile running on this thread, their storage kept between runs.
    static STEPS: RefCell<Vec<Step>> = const { RefCell::new(Vec::new()) };
}

impl Group {
    /// Runs the group on the values computed so far (`env`, by variable); returns its outputs
    /// in order. Large groups are split into ranges of columns run on the thread pool.
    pub fn run(&self, env: &[Option<Arc<Data>>]) -> Result<Vec<Data>> {
        let numel: usize = self.shape.iter().product();
        let mut outputs: Vec<Vec<f64>> = self
            .outputs
            .iter()
            // Every element is stored by the tile loop.
            .map(|_| pool::take_to_overwrite(numel))
            .collect();
        self.with_operands(env, |slices| {
            if numel == 0 {
                return;
            }
            let (rows, cols) = self.blocks(numel);
            if let Some(ranges) = self.split(numel, cols) {
                // Each range writes its columns of every row of every output.
                let width = ranges[0].len();
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
                        self.run_columns(slices, rows, cols, range, &mut targets)
                    });
            } else {
                // Every row of every output, in one list (few allocations: small groups run
                // often).
                let mut targets: Vec<&mut [f64]> = outputs
                    .iter_mut()
                    .flat_map(|output| output.chunks_mut(cols))
                    .collect();
                self.run_columns(slices, rows, cols, 0..cols, &mut targets);
            }
        })?;
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

    /// Runs the group a block of elements at a time, handing each block's outputs (in
    /// order) to `consume` instead of storing them: for outputs read once, by whatever reads
    /// them while they are in the cache. The elements are split into ranges as [`Group::run`]
    /// splits them for the thread pool; `split` makes a state for each range, which
    /// `consume` receives with each block of the range, in order: when this returns `Ok`,
    /// every element has been handed on once. For a group that walks its elements in one row
    /// (an error otherwise).
    pub fn run_blocked<P: Send>(
        &self,
        env: &[Option<Arc<Data>>],
        split: impl FnOnce(&[Range<usize>]) -> Vec<P>,
        consume: impl Fn(&mut P, Range<usize>, &[&[f64]]) + Sync,
    ) -> Result<()> {
        let numel: usize = self.shape.iter().product();
        let (rows, cols) = self.blocks(numel);
        if rows != 1 {
            return Err(Error::Trace(
                "internal: a blocked run of a group walking several rows".into(),
            ));
        }
        let ranges = self.ranges(numel, cols);
        let states = split(&ranges);
        if states.len() != ranges.len() {
            return Err(Error::Trace(format!(
                "internal: {} states for {} ranges of a blocked run",
                states.len(),
                ranges.len()
            )));
        }
        self.with_operands(env, |slices| {
            let run_range = |(range, mut state): (Range<usize>, P)| {
                let mut blocks: Vec<Vec<f64>> = vec![vec![0.0; BLOCK]; self.outputs.len()];
                for first in range.clone().step_by(BLOCK) {
                    let block = first..range.end.min(first + BLOCK);
                    let mut targets: Vec<&mut [f64]> =
                        blocks.iter_mut().map(|b| &mut b[..block.len()]).collect();
                    self.run_columns(slices, 1, cols, block.clone(), &mut targets);
                    let outputs: Vec<&[f64]> = targets.iter().map(|t| &**t).collect();
                    consume(&mut state, block, &outputs);
                }
            };
            let work: Vec<(Range<usize>, P)> = ranges.into_iter().zip(states).collect();
            if work.len() == 1 {
                work.into_iter().for_each(run_range);
            } else {
                work.into_par_iter().for_each(run_range);
            }
        })
    }

    /// Calls `f` with the buffers of the group's views, read in place when in standard
    /// layout, else (rarely) from a copy.
    fn with_operands<R>(
        &self,
        env: &[Option<Arc<Data>>],
        f: impl FnOnce(&[&[f64]]) -> R,
    ) -> Result<R> {
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
        Ok(f(&slices))
    }

    /// The ranges of columns run side by side: one per thread for large groups (whole tiles
    /// each), else all of them.
    fn ranges(&self, numel: usize, cols: usize) -> Vec<Range<usize>> {
        self.split(numel, cols)
            .unwrap_or_else(|| std::iter::once(0..cols).collect())
    }

    /// The ranges of [`Group::ranges`] when there are several; `None` (and no allocation:
    /// small groups run often) when the columns run as one range.
    fn split(&self, numel: usize, cols: usize) -> Option<Vec<Range<usize>>> {
        let parts = (numel / PARALLEL_MIN).clamp(1, rayon::current_num_threads());
        let width = cols.div_ceil(parts).next_multiple_of(TILE).max(1);
        (cols > width).then(|| {
            (0..cols)
                .step_by(width)
                .map(|c| c..cols.min(c + width))
                .collect()
        })
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
        // The loads come first (see `fuse::chain`), then the arithmetic.
        let loads = self
            .ops
            .iter()
            .take_while(|op| matches!(op, TileOp::Load { .. }))
            .count();
        let (load_ops, arithmetic) = self.ops.split_at(loads);
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
            // Where each register's values are this tile: its own buffer, or for a load what
            // the load stands for. On the stack for the usual few registers: small groups run
            // often.
            let own = |r: &mut Vec<f64>| Operand::Values(r.as_mut_ptr());
            let (mut few, mut many) = ([Operand::Number(0.0); 16], Vec::new());
            let places: &mut [Operand] = if self.registers <= few.len() {
                &mut few[..self.registers]
            } else {
                many.resize(self.registers, Operand::Number(0.0));
                &mut many
            };
            for (place, register) in places.iter_mut().zip(registers.iter_mut()) {
                *place = own(register);
            }
            let mut steps = STEPS.with(|steps| std::mem::take(&mut *steps.borrow_mut()));
            for (column, row) in (start..end)
                .step_by(tile)
                .flat_map(|c| (0..rows).map(move |r| (c, r)))
            {
                let len = tile.min(end - column);
                let first = row * cols + column;
                let at = column - start;
                if loads > 0 {
                    coordinates(&self.shape, first, start_at);
                }
                for op in load_ops {
                    let TileOp::Load { view, dst } = *op else {
                        unreachable!("the loads come first")
                    };
                    let into = &mut registers[dst][..len];
                    places[dst] =
                        match load(&self.views[view], slices[view], start_at, into, coords) {
                            Held::Own => own(&mut registers[dst]),
                            Held::InPlace(values) => Operand::Values(values.as_ptr().cast_mut()),
                            Held::Uniform(value) => Operand::Number(value),
                            Held::Repeated(run) => repeated(run, &mut registers[dst][..len]),
                        };
                }
                let output = |k: usize, targets: &mut [&mut [f64]]| {
                    targets[k * rows + row][at..at + len].as_mut_ptr()
                };
                steps.clear();
                for op in arithmetic {
                    let mut operand = |src: Src| match src {
                        Src::Register(r) => places[r],
                        Src::Direct(v) => {
                            let first = self.views[v].offset as usize + first;
                            Operand::Values(slices[v][first..first + len].as_ptr().cast_mut())
                        }
                        Src::Output(k) => Operand::Values(output(k, targets)),
                        Src::Slot(s) => Operand::Slot(s),
                    };
                    let kind = op.kind().expect("the loads come first");
                    let [Some(a), b] = op.sources() else {
                        unreachable!("an operation reads an operand")
                    };
                    // A unary operation's second operand is never read.
                    let (a, b) = (operand(a), b.map_or(Operand::Number(0.0), &mut operand));
                    let dst = match op.dst() {
                        Dst::Register(r) => places[r],
                        Dst::Output(k) => Operand::Values(output(k, targets)),
                        Dst::Slot(s) => Operand::Slot(s),
                    };
                    steps.push(Step { kind, a, b, dst });
                }
                // SAFETY: every pointer is to `len` values: a register's (this thread's, not
                // resized while the tile runs), a slice of an input buffer (read only), or a
                // row of an output of this range; and the planner never gives an operation's
                // result the place of one of its operands.
                unsafe { compute(&steps, len) };
            }
            // Back for the next run, without the pointers of this one.
            steps.clear();
            STEPS.with(|kept| *kept.borrow_mut() = steps);
        });
    }
}

/// The operand of a run repeated along a tile (which starts a repetition): read in place when
/// its length is a multiple of a chunk's, from one chunk's worth of repetitions when it
/// divides it, otherwise from a copy spread over the tile (`scratch`, the register's space).
fn repeated(run: &[f64], scratch: &mut [f64]) -> Operand {
    let period = run.len();
    if period.is_multiple_of(CHUNK) {
        return Operand::Repeated(run.as_ptr(), period);
    }
    let spread = if CHUNK.is_multiple_of(period) {
        &mut scratch[..CHUNK]
    } else {
        &mut *scratch
    };
    for part in spread.chunks_exact_mut(period) {
        part.copy_from_slice(run);
    }
    match spread.len() {
        CHUNK => Operand::Repeated(spread.as_ptr(), CHUNK),
        _ => Operand::Values(spread.as_mut_ptr()),
    }
}

/// Where an operand of one tile is, or where its result goes.
#[derive(Clone, Copy, Debug)]
enum Operand {
    /// The tile's values, from here on.
    Values(*mut f64),
    /// The same number throughout.
    Number(f64),
    /// These values over and over, from the tile's start: value `i` is `i % period` of them
    /// (a multiple of a chunk's length, so that a chunk reads them in one piece).
    Repeated(*const f64, usize),
    /// A result held in registers while a chain runs (see `fuse::Dst::Slot`).
    Slot(usize),
}

/// One operation of a tile, on its operands' places.
#[derive(Clone, Copy, Debug)]
struct Step {
    kind: Kind,
    a: Operand,
    b: Operand,
    dst: Operand,
}

/// The values of a chunk of [`in_chunks`] with AVX-512: four of its 32 registers, so that
/// the slots and a step's two operands stay in registers.
const CHUNK: usize = 32;

/// Runs `steps` over `len` values: each chain (a run of cheap steps that holds results in
/// slots) a chunk at a time through all of its steps, every other step over all values by
/// its own loop (a chunk at a time, it would pay for a dispatch per chunk and save no store).
///
/// # Safety
/// Every `Values` place of `steps` is valid for `len` values; a step's result is not one of
/// its operands.
unsafe fn compute(steps: &[Step], len: usize) {
    let mut rest = steps;
    while !rest.is_empty() {
        let cheap = rest
            .iter()
            .take_while(|s| s.kind.in_chunks())
            .count()
            .max(1);
        let (now, later) = rest.split_at(cheap);
        let passing = now.iter().any(|s| matches!(s.dst, Operand::Slot(_)));
        // SAFETY: as the caller promises.
        unsafe {
            match passing {
                true => in_chunks(now, len),
                false => now.iter().for_each(|step| whole(step, len)),
            }
        }
        rest = later;
    }
}

/// Runs `step` over `len` values by the loop of its operation.
///
/// # Safety
/// As for [`compute`]; its result goes to a place (only chains hold results in slots).
unsafe fn whole(step: &Step, len: usize) {
    let Operand::Values(out) = step.dst else {
        unreachable!("only chains hold results in slots")
    };
    // SAFETY: as the caller promises: `len` values at each place, the result's apart from
    // the operands'.
    let values = |place: Operand| match place {
        Operand::Values(p) => Some(unsafe { std::slice::from_raw_parts(p.cast_const(), len) }),
        _ => None,
    };
    // A run repeated along the whole tile.
    let run = |place: Operand| match place {
        Operand::Repeated(p, period) if len.is_multiple_of(period) => {
            Some(unsafe { std::slice::from_raw_parts(p, period) })
        }
        _ => None,
    };
    let (x, y) = (values(step.a), values(step.b));
    let out = unsafe { std::slice::from_raw_parts_mut(out, len) };
    match (step.kind, x, y) {
        (Kind::Unary(op), Some(x), _) => unary(op, x, out),
        (Kind::PowI(n), Some(x), _) => powi(n, x, out),
        (Kind::Binary(op), Some(x), Some(y)) => binary(op, x, y, out),
        (Kind::Binary(op), Some(x), None) => match (step.b, run(step.b)) {
            (Operand::Number(s), _) => binary_scalar(op, x, s, false, out),
            (_, Some(run)) => binary_repeated(op, x, run, false, out),
            // SAFETY: as above.
            _ => unsafe { spread(step, len) },
        },
        (Kind::Binary(op), None, Some(y)) => match (step.a, run(step.a)) {
            (Operand::Number(s), _) => binary_scalar(op, y, s, true, out),
            (_, Some(run)) => binary_repeated(op, y, run, true, out),
            // SAFETY: as above.
            _ => unsafe { spread(step, len) },
        },
        // SAFETY: as above.
        _ => unsafe { spread(step, len) },
    }
}

/// [`whole`] for the rare step with an operand that none of its loops reads as it is (both
/// numbers, say, or a run that does not divide the tile): such operands are spread over the
/// tile first.
///
/// # Safety
/// As for [`whole`], with `len` at most [`TILE`].
unsafe fn spread(step: &Step, len: usize) {
    let mut scratch = [[0.0; TILE]; 2];
    let [for_a, for_b] = &mut scratch;
    let spread = |place: Operand, into: &mut [f64; TILE]| {
        let into = &mut into[..len];
        match place {
            Operand::Values(_) => return place,
            Operand::Number(s) => into.fill(s),
            // SAFETY: a repeated run's values are valid, `period` of them.
            Operand::Repeated(p, period) => {
                for (i, v) in into.iter_mut().enumerate() {
                    *v = unsafe { *p.add(i % period) };
                }
            }
            Operand::Slot(_) => unreachable!("only chains hold results in slots"),
        }
        Operand::Values(into.as_mut_ptr())
    };
    let b = match step.kind {
        Kind::Binary(_) => spread(step.b, for_b),
        _ => step.b,
    };
    let spread = Step {
        a: spread(step.a, for_a),
        b,
        ..*step
    };
    // SAFETY: as the caller promises; the operands are now values, which `whole` reads.
    unsafe { whole(&spread, len) }
}

/// Runs the chain `steps` over `len` values, a chunk at a time through every step, in chunks
/// of four of AVX-512's registers: the planner makes chains only on such processors (see
/// `simd::wide_vectors`).
///
/// # Safety
/// As for [`compute`].
unsafe fn in_chunks(steps: &[Step], len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(steps: &[Step], len: usize) {
            // SAFETY: as the caller promises.
            unsafe { chunks::<CHUNK>(steps, len) }
        }
        if crate::simd::wide_vectors() {
            // SAFETY: the processor has the features, and the caller keeps the promises.
            return unsafe { avx512(steps, len) };
        }
    }
    unreachable!(
        "a chain of {} steps over {len} values without wide vector registers",
        steps.len()
    )
}

/// [`in_chunks`] with chunks of `N` values.
///
/// # Safety
/// As for [`compute`].
#[inline(always)]
unsafe fn chunks<const N: usize>(steps: &[Step], len: usize) {
    let mut at = 0;
    while at + N <= len {
        // SAFETY: as the caller promises, for values `at..at + N` of `len`.
        unsafe { chunk::<N>(steps, at) };
        at += N;
    }
    // The rest a few at a time: every value alone would pay the dispatch on each step.
    while at + 4 <= len {
        // SAFETY: as above.
        unsafe { chunk::<4>(steps, at) };
        at += 4;
    }
    while at < len {
        // SAFETY: as above, for value `at`.
        unsafe { chunk::<1>(steps, at) };
        at += 1;
    }
}

/// Values `at..at + N` through every step, the results held in slots kept in local arrays,
/// one per slot (the compiler keeps them in vector registers).
///
/// # Safety
/// As for [`compute`], with `at + N` values valid at every place.
#[inline(always)]
unsafe fn chunk<const N: usize>(steps: &[Step], at: usize) {
    const { assert!(SLOTS == 4) };
    let (mut s0, mut s1, mut s2, mut s3) = ([0.0; N], [0.0; N], [0.0; N], [0.0; N]);
    for step in steps {
        // SAFETY: the caller's promise covers values `at..at + N` of every place.
        let read =
            |place: Operand, s0: [f64; N], s1: [f64; N], s2: [f64; N], s3: [f64; N]| match place {
                Operand::Values(p) => unsafe { p.add(at).cast::<[f64; N]>().read() },
                Operand::Number(value) => [value; N],
                Operand::Repeated(p, period) => unsafe {
                    p.add(at % period).cast::<[f64; N]>().read()
                },
                Operand::Slot(0) => s0,
                Operand::Slot(1) => s1,
                Operand::Slot(2) => s2,
                Operand::Slot(_) => s3,
            };
        let mut x = read(step.a, s0, s1, s2, s3);
        // A loop per operation, with the operation known inside it: chains hold only these
        // (see `TileOp::in_chunks`), and nothing else runs here, so that no call makes the
        // compiler store the slots around it.
        match step.kind {
            Kind::Binary(op) => {
                let y = read(step.b, s0, s1, s2, s3);
                match op {
                    BinaryOp::Add => (0..N).for_each(|j| x[j] += y[j]),
                    BinaryOp::Sub => (0..N).for_each(|j| x[j] -= y[j]),
                    BinaryOp::Mul => (0..N).for_each(|j| x[j] *= y[j]),
                    BinaryOp::Div => (0..N).for_each(|j| x[j] /= y[j]),
                    _ => unreachable!("chains hold cheap operations only"),
                }
            }
            Kind::Unary(UnaryOp::Neg) => (0..N).for_each(|j| x[j] = -x[j]),
            Kind::Unary(_) => unreachable!("chains hold cheap operations only"),
            Kind::PowI(n) => match n {
                2 => (0..N).for_each(|j| x[j] *= x[j]),
                3 => (0..N).for_each(|j| x[j] = x[j] * x[j] * x[j]),
                -1 => (0..N).for_each(|j| x[j] = 1.0 / x[j]),
                _ => unreachable!("chains hold cheap operations only"),
            },
        }
        match step.dst {
            // SAFETY: as above; no operand of this step is read after this.
            Operand::Values(p) => unsafe { p.add(at).cast::<[f64; N]>().write(x) },
            Operand::Slot(0) => s0 = x,
            Operand::Slot(1) => s1 = x,
            Operand::Slot(2) => s2 = x,
            Operand::Slot(_) => s3 = x,
            Operand::Number(_) | Operand::Repeated(..) => unreachable!("results go to a place"),
        }
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
    if let Some(held) = across_rows(view, data, start, len) {
        return held;
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

/// A tile of `len` elements from multi-index `start` that spans several rows, when it reads
/// its view without a copy: the tile lies in one block of the trailing axes it spans (the
/// axes before them are fixed in it), and over those axes the view is its buffer in order
/// (read in place), one run repeated row after row (a vector broadcast over a batch's rows),
/// or one element.
fn across_rows<'a>(view: &View, data: &'a [f64], start: &[usize], len: usize) -> Option<Held<'a>> {
    // A run shorter than this repeated along the tile is copied: a tile of such short rows
    // reads faster from one buffer.
    const SHORTEST_REPEATED: usize = 16;
    let inner = view.shape.len() - 1;
    // The first axis the tile spans: the tile ends inside the block of axes `first..` that
    // it starts in.
    let (mut at, mut block) = (0, 1);
    let first = (0..=inner).rev().find(|&d| {
        at += start[d] * block;
        block *= view.shape[d];
        at + len <= block
    })?;
    let spanned = first..inner + 1;
    let whole = |d: usize| view.valid[d] == (0, view.shape[d]);
    let fixed_valid = (0..first).all(|d| view.valid[d].0 <= start[d] && start[d] < view.valid[d].1);
    if first == inner || !fixed_valid || !spanned.clone().all(whole) {
        return None;
    }
    let base = view.offset
        + (start.iter().zip(&view.strides))
            .map(|(&c, &s)| c as isize * s)
            .sum::<isize>();
    let strides = &view.strides;
    let width = view.shape[inner];
    if spanned.clone().all(|d| strides[d] == 0) {
        return Some(Held::Uniform(data[base as usize]));
    }
    let in_order = strides[inner] == 1
        && (first..inner).all(|d| strides[d] == strides[d + 1] * view.shape[d + 1] as isize);
    if in_order {
        return Some(Held::InPlace(&data[base as usize..base as usize + len]));
    }
    let repeated = strides[inner] == 1
        && start[inner] == 0
        && len.is_multiple_of(width)
        && width >= SHORTEST_REPEATED
        && (first..inner).all(|d| strides[d] == 0);
    repeated.then(|| Held::Repeated(&data[base as usize..base as usize + width]))
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
