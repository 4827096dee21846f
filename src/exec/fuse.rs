//! Fusion: grouping a program's elementwise equations into loops over tiles.
//!
//! A *group* is a set of elementwise `f64` equations of one output shape that run together as
//! one loop over tiles of a few hundred elements: each equation is one pass over a tile held in
//! a small register, so only the group's outputs that something else reads are written to
//! memory. The structural equations that only move elements (broadcast, slice, pad, transpose,
//! reshape) are not run at all when only groups read them: they become *views*, strided reads
//! (with zero padding) of the buffers they come from.
//!
//! Groups grow in program order. An equation joins the open group of its operands' shape;
//! a group closes when anything outside it reads one of its values, and it runs then. So every
//! value a group reads from outside was computed before it runs, and every outside reader of
//! a group runs after it.

use std::collections::{HashMap, HashSet};

use crate::ir::Var;
use crate::primitives::{BinaryOp, Elementwise, Prim, Program, Structural, UnaryOp};
use crate::storage::{Aval, DType};

/// A strided, zero-padded read of a buffer: element `i` (a multi-index over `shape`) reads
/// `buffer[offset + sum_d i[d] * strides[d]]` when `valid[d].0 <= i[d] < valid[d].1` for every
/// axis `d`, and is zero otherwise.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct View {
    /// The variable whose (contiguous, row-major) buffer is read.
    pub var: Var,
    pub shape: Vec<usize>,
    pub offset: isize,
    pub strides: Vec<isize>,
    pub valid: Vec<(usize, usize)>,
}

impl View {
    /// The whole buffer of `var`, read in order.
    fn of(var: Var, shape: &[usize]) -> View {
        let mut strides = vec![0isize; shape.len()];
        let mut step = 1isize;
        for d in (0..shape.len()).rev() {
            strides[d] = step;
            step *= shape[d] as isize;
        }
        View {
            var,
            shape: shape.to_vec(),
            offset: 0,
            strides,
            valid: shape.iter().map(|&n| (0, n)).collect(),
        }
    }

    /// Whether every element is read, in row-major order from `offset`: a plain region of the
    /// buffer, which any reshape can regroup.
    fn is_plain(&self) -> bool {
        let mut step = 1isize;
        for d in (0..self.shape.len()).rev() {
            let n = self.shape[d];
            if self.valid[d] != (0, n) || (n > 1 && self.strides[d] != step) {
                return false;
            }
            step *= n as isize;
        }
        true
    }

    /// The view broadcast to `shape` (NumPy rules, axes aligned on the right).
    pub fn broadcast(&self, shape: &[usize]) -> View {
        let lead = shape.len() - self.shape.len();
        let mut out = View {
            var: self.var,
            shape: shape.to_vec(),
            offset: self.offset,
            strides: vec![0; shape.len()],
            valid: shape.iter().map(|&n| (0, n)).collect(),
        };
        for d in 0..self.shape.len() {
            let (n, target) = (self.shape[d], shape[lead + d]);
            if n == target {
                out.strides[lead + d] = self.strides[d];
                out.valid[lead + d] = self.valid[d];
            } else {
                // A size-1 axis repeated: its one element, or padding throughout.
                let read = self.valid[d] == (0, 1);
                out.valid[lead + d] = if read { (0, target) } else { (0, 0) };
            }
        }
        out
    }

    /// The view of `structural(self)`, when the structural primitive is a strided, padded
    /// read too (`None` for concatenation, interior padding, or a reshape of a view that is
    /// not a plain region).
    fn then(&self, op: &Structural) -> Option<View> {
        let mut v = self.clone();
        match op {
            Structural::Broadcast(shape) => Some(self.broadcast(shape)),
            Structural::Reshape(shape) => self.is_plain().then(|| View {
                offset: self.offset,
                ..View::of(self.var, shape)
            }),
            Structural::Transpose(perm) => {
                v.shape = perm.iter().map(|&p| self.shape[p]).collect();
                v.strides = perm.iter().map(|&p| self.strides[p]).collect();
                v.valid = perm.iter().map(|&p| self.valid[p]).collect();
                Some(v)
            }
            Structural::Slice { start, stop, step } => {
                for d in 0..v.shape.len() {
                    let (s, k) = (start[d], step[d]);
                    let len = (stop[d] - s).div_ceil(k);
                    v.offset += s as isize * self.strides[d];
                    v.strides[d] = self.strides[d] * k as isize;
                    // Coordinates i with lo <= s + i k < hi.
                    let (lo, hi) = self.valid[d];
                    let first = lo.saturating_sub(s).div_ceil(k);
                    let end = hi.saturating_sub(s).div_ceil(k);
                    v.valid[d] = (first.min(len), end.min(len).max(first.min(len)));
                    v.shape[d] = len;
                }
                Some(v)
            }
            Structural::Pad { lo, hi, interior } => {
                for d in 0..v.shape.len() {
                    if interior[d] != 0 && self.shape[d] > 1 {
                        return None;
                    }
                    v.offset -= lo[d] as isize * self.strides[d];
                    let (a, b) = self.valid[d];
                    v.valid[d] = (a + lo[d], b + lo[d]);
                    v.shape[d] = self.shape[d] + lo[d] + hi[d];
                }
                Some(v)
            }
            Structural::Rev(axes) => {
                for &d in axes {
                    // Coordinate i reads coordinate n - 1 - i.
                    let n = self.shape[d];
                    v.offset += (n as isize - 1) * self.strides[d];
                    v.strides[d] = -self.strides[d];
                    let (a, b) = self.valid[d];
                    v.valid[d] = (n - b, n - a);
                }
                Some(v)
            }
            Structural::Concat(_) | Structural::Gather { .. } | Structural::ScatterAdd { .. } => {
                None
            }
        }
    }
}

/// Where an operand of a tile's computation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    /// A register holding a tile.
    Register(usize),
    /// Input view `view`, read in place: it reads its buffer in order, so a tile of it is a
    /// slice of the buffer.
    Direct(usize),
    /// The tile of output `k`, already computed.
    Output(usize),
    /// A result held in the processor's registers, never stored (see [`Dst::Slot`]).
    Slot(usize),
}

/// Where a tile's result goes: a register, or straight into the tile of an output (a value
/// read after the group is written once, not computed in a register and copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dst {
    Register(usize),
    Output(usize),
    /// Into slot `s` of [`SLOTS`], for later operations of its chain, the only ones that read
    /// it: it stays in the processor's registers instead of being stored and loaded again.
    Slot(usize),
}

/// Results a chain holds in the processor's registers at once. A chunk of values takes four
/// of AVX-512's 32 vector registers: the slots, and a step's two operands, take 24.
pub(super) const SLOTS: usize = 4;

impl From<Dst> for Src {
    fn from(dst: Dst) -> Src {
        match dst {
            Dst::Register(r) => Src::Register(r),
            Dst::Output(k) => Src::Output(k),
            Dst::Slot(s) => Src::Slot(s),
        }
    }
}

/// One step of a tile's computation, on registers holding a tile each.
#[derive(Clone, Debug)]
pub(crate) enum TileOp {
    /// Reads input view `view` into `dst`.
    Load {
        view: usize,
        dst: usize,
    },
    Unary {
        op: UnaryOp,
        src: Src,
        dst: Dst,
    },
    PowI {
        n: i32,
        src: Src,
        dst: Dst,
    },
    Binary {
        op: BinaryOp,
        a: Src,
        b: Src,
        dst: Dst,
    },
}

/// A fused group: equations of one shape run together over tiles.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    /// The iteration space (axes merged where every read allows).
    pub shape: Vec<usize>,
    /// The shape of the values written.
    pub out_shape: Vec<usize>,
    /// The buffers read, through views of `shape`.
    pub views: Vec<View>,
    /// The values written, one buffer each, in store order.
    pub outputs: Vec<Var>,
    pub ops: Vec<TileOp>,
    pub registers: usize,
}

/// One step of a fused plan.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// An equation run by its primitive's kernel.
    Eqn(usize),
    /// A fused group.
    Group(Group),
}

/// Whether an equation can be computed inside a group: elementwise arithmetic on `f64`.
fn fusible(prim: &Prim, ins: &[&Aval], out: &Aval) -> bool {
    let f64s = ins.iter().all(|a| a.dtype == DType::F64) && out.dtype == DType::F64;
    f64s && match prim {
        Prim::Elementwise(Elementwise::Unary(op)) => !matches!(
            op,
            UnaryOp::Conj | UnaryOp::Real | UnaryOp::Imag | UnaryOp::StopGradient
        ),
        Prim::Elementwise(Elementwise::Binary(op)) => *op != BinaryOp::Complex,
        Prim::Elementwise(Elementwise::PowI(_)) => true,
        Prim::Elementwise(
            Elementwise::Convert(_) | Elementwise::Compare(_) | Elementwise::Select,
        )
        | Prim::Structural(_)
        | Prim::Reduce(_)
        | Prim::MatMul(_)
        | Prim::Creation(_)
        | Prim::Loop(_) => false,
    }
}

/// The plan of `program` as steps: fused groups, and the other equations.
pub(crate) fn fuse(program: &Program) -> Vec<Step> {
    let eqns = &program.eqns;
    let aval = |v: Var| program.aval(v);
    // Who reads each variable.
    let mut readers: HashMap<Var, Vec<usize>> = HashMap::new();
    for (i, eqn) in eqns.iter().enumerate() {
        for &v in &eqn.inputs {
            readers.entry(v).or_default().push(i);
        }
    }
    let outputs: HashSet<Var> = program.outputs.iter().copied().collect();
    let fused: Vec<bool> = eqns
        .iter()
        .map(|e| {
            let ins: Vec<&Aval> = e.inputs.iter().map(|&v| aval(v)).collect();
            e.outputs.len() == 1 && fusible(&e.prim, &ins, aval(e.outputs[0]))
        })
        .collect();

    // Structural equations whose every reader is fused (or another such view) become views,
    // when they compose into a strided read of the buffer they come from. One that does not
    // compose is run, and the views it justified are checked again.
    let mut unviewable = vec![false; eqns.len()];
    let (is_view, views) = loop {
        let mut is_view = vec![false; eqns.len()];
        for i in (0..eqns.len()).rev() {
            let eqn = &eqns[i];
            if !matches!(eqn.prim, Prim::Structural(_)) || unviewable[i] {
                continue;
            }
            let out = eqn.outputs[0];
            let all_fused = readers
                .get(&out)
                .is_some_and(|rs| rs.iter().all(|&r| fused[r] || is_view[r]));
            is_view[i] = aval(out).dtype == DType::F64 && all_fused && !outputs.contains(&out);
        }
        let mut views: HashMap<Var, View> = HashMap::new();
        let mut failed = false;
        for (i, eqn) in eqns.iter().enumerate() {
            let (true, Prim::Structural(op)) = (is_view[i], &eqn.prim) else {
                continue;
            };
            let input = eqn.inputs[0];
            let base = views
                .get(&input)
                .cloned()
                .unwrap_or_else(|| View::of(input, &aval(input).shape));
            match base.then(op) {
                Some(view) => {
                    views.insert(eqn.outputs[0], view);
                }
                None => {
                    unviewable[i] = true;
                    failed = true;
                }
            }
        }
        if !failed {
            break (is_view, views);
        }
    };

    // The buffer behind each operand: a view's source, or the value itself.
    let source = |v: &Var| views.get(v).map_or(*v, |view| view.var);
    let mut steps = Vec::new();
    // Open groups by id (a closed or merged group is `None`), and the group of each value.
    let mut groups: Vec<Option<(Vec<usize>, Vec<usize>)>> = Vec::new();
    let mut member: HashMap<Var, usize> = HashMap::new();
    let close = |id: usize,
                 groups: &mut Vec<Option<(Vec<usize>, Vec<usize>)>>,
                 member: &mut HashMap<Var, usize>,
                 steps: &mut Vec<Step>| {
        if let Some((_, members)) = groups[id].take() {
            member.retain(|_, g| *g != id);
            steps.push(Step::Group(build(
                program, &members, &views, &readers, &outputs,
            )));
        }
    };
    for (i, eqn) in eqns.iter().enumerate() {
        if is_view[i] {
            continue;
        }
        let shape = &aval(eqn.outputs[0]).shape;
        // Groups whose values this equation reads from memory close first: those read
        // through a view, those of another shape, and all of them if it is not fused.
        let mut joining = Vec::new();
        let mut closing = Vec::new();
        for v in &eqn.inputs {
            let Some(&g) = member.get(&source(v)) else {
                continue;
            };
            let direct = !views.contains_key(v);
            let same_shape = groups[g].as_ref().is_some_and(|(s, _)| s == shape);
            if fused[i] && direct && same_shape {
                joining.push(g);
            } else {
                closing.push(g);
            }
        }
        closing.sort_unstable();
        closing.dedup();
        for &g in &closing {
            close(g, &mut groups, &mut member, &mut steps);
        }
        if !fused[i] {
            steps.push(Step::Eqn(i));
            continue;
        }
        // Join the open groups it reads (merging them), or open a new one.
        joining.retain(|g| groups[*g].is_some());
        joining.sort_unstable();
        joining.dedup();
        // With no operand in a group, it joins an open group of its shape anyway: one loop
        // over the same space instead of two (open groups have no outside readers yet, so
        // they run no earlier for it).
        let same_shape = || {
            (0..groups.len())
                .rev()
                .find(|&g| groups[g].as_ref().is_some_and(|(s, _)| s == shape))
        };
        let id = match joining.first().copied().or_else(same_shape) {
            Some(id) => id,
            None => {
                groups.push(Some((shape.clone(), Vec::new())));
                groups.len() - 1
            }
        };
        for &other in &joining[joining.len().min(1)..] {
            if let Some((_, moved)) = groups[other].take() {
                for g in member.values_mut() {
                    if *g == other {
                        *g = id;
                    }
                }
                if let Some((_, members)) = groups[id].as_mut() {
                    members.extend(moved);
                }
            }
        }
        if let Some((_, members)) = groups[id].as_mut() {
            members.push(i);
        }
        member.insert(eqn.outputs[0], id);
    }
    for id in 0..groups.len() {
        close(id, &mut groups, &mut member, &mut steps);
    }
    steps
}

/// The group of the fused equations `members`.
fn build(
    program: &Program,
    members: &[usize],
    views: &HashMap<Var, View>,
    readers: &HashMap<Var, Vec<usize>>,
    outputs: &HashSet<Var>,
) -> Group {
    let mut members = members.to_vec();
    members.sort_unstable();
    let eqns = &program.eqns;
    let shape = program.aval(eqns[members[0]].outputs[0]).shape.clone();
    let inside: HashSet<usize> = members.iter().copied().collect();
    // A value is stored when something outside the group (or the caller) reads it.
    let stored = |v: Var| {
        outputs.contains(&v)
            || readers
                .get(&v)
                .is_some_and(|rs| rs.iter().any(|r| !inside.contains(r)))
    };

    // Last use of each value within the group, to reuse registers.
    let mut last: HashMap<Var, usize> = HashMap::new();
    for (k, &e) in members.iter().enumerate() {
        for &v in &eqns[e].inputs {
            last.insert(v, k);
        }
    }

    let mut group = Group {
        shape: shape.clone(),
        out_shape: shape.clone(),
        views: Vec::new(),
        outputs: Vec::new(),
        ops: Vec::new(),
        registers: 0,
    };
    let mut free: Vec<usize> = Vec::new();
    let mut loaded: HashSet<usize> = HashSet::new();
    // Where each value computed or loaded so far is, while the group still reads it.
    let mut location: HashMap<Var, Src> = HashMap::new();
    let allocate = |free: &mut Vec<usize>, group: &mut Group| {
        free.pop().unwrap_or_else(|| {
            group.registers += 1;
            group.registers - 1
        })
    };
    for (k, &e) in members.iter().enumerate() {
        let eqn = &eqns[e];
        let mut operands = Vec::with_capacity(eqn.inputs.len());
        for &v in &eqn.inputs {
            if let Some(&src) = location.get(&v) {
                operands.push(src);
                continue;
            }
            // A read from memory: through the value's view, broadcast to the group's shape.
            let view = views
                .get(&v)
                .cloned()
                .unwrap_or_else(|| View::of(v, &program.aval(v).shape))
                .broadcast(&shape);
            let index = match group.views.iter().position(|w| *w == view) {
                Some(index) => index,
                None => {
                    group.views.push(view);
                    group.views.len() - 1
                }
            };
            // A register of its own for the whole group, so that every load can run before
            // the arithmetic (see `chain`).
            group.registers += 1;
            let r = group.registers - 1;
            loaded.insert(r);
            group.ops.push(TileOp::Load {
                view: index,
                dst: r,
            });
            location.insert(v, Src::Register(r));
            operands.push(Src::Register(r));
        }
        // A value read after the group is computed into its output; any other into a
        // register that is not an operand's (operands read for the last time free theirs
        // afterwards).
        let out = eqn.outputs[0];
        let dst = if stored(out) {
            group.outputs.push(out);
            Dst::Output(group.outputs.len() - 1)
        } else {
            Dst::Register(allocate(&mut free, &mut group))
        };
        for &v in &eqn.inputs {
            if last.get(&v) == Some(&k)
                && let Some(Src::Register(r)) = location.remove(&v)
                && !free.contains(&r)
                && !loaded.contains(&r)
            {
                free.push(r);
            }
        }
        group.ops.push(match &eqn.prim {
            Prim::Elementwise(Elementwise::Unary(op)) => TileOp::Unary {
                op: *op,
                src: operands[0],
                dst,
            },
            Prim::Elementwise(Elementwise::PowI(n)) => TileOp::PowI {
                n: *n,
                src: operands[0],
                dst,
            },
            Prim::Elementwise(Elementwise::Binary(op)) => TileOp::Binary {
                op: *op,
                a: operands[0],
                b: operands[1],
                dst,
            },
            other => unreachable!("only fusible equations are grouped, got {other}"),
        });
        match dst {
            _ if last.contains_key(&out) => {
                location.insert(out, dst.into());
            }
            Dst::Register(r) => free.push(r),
            Dst::Output(_) | Dst::Slot(_) => {}
        }
    }
    coalesce(&mut group);
    read_in_place(&mut group);
    chain(&mut group);
    group
}

/// Puts the loads first, then (on processors with wide vector registers) holds in slots
/// ([`Dst::Slot`]) the results that only later operations of their chain read. A chain is a
/// run of operations that go a chunk at a time ([`TileOp::in_chunks`]): it runs a few vectors
/// at a time through every operation, and the results it holds are never stored. Loads write
/// registers of their own (see `build`), so running them first changes nothing.
fn chain(group: &mut Group) {
    let (mut ops, mut arithmetic): (Vec<TileOp>, Vec<TileOp>) = std::mem::take(&mut group.ops)
        .into_iter()
        .partition(|op| matches!(op, TileOp::Load { .. }));
    if crate::simd::wide_vectors() {
        let mut start = 0;
        while start < arithmetic.len() {
            let len = arithmetic[start..]
                .iter()
                .take_while(|op| op.in_chunks())
                .count();
            hold_in_slots(&mut arithmetic, start..start + len);
            start += len.max(1);
        }
    }
    ops.extend(arithmetic);
    group.ops = ops;
}

/// Gives each result of the chain `ops[run]` whose every reader is a later operation of the
/// chain a free slot, from its operation to its last reader (a register is written again
/// only after its value's last read, see `build`).
fn hold_in_slots(ops: &mut [TileOp], run: std::ops::Range<usize>) {
    let reads = |op: &TileOp, r: usize| op.sources().contains(&Some(Src::Register(r)));
    // The last reader of the value that operation `i` writes to register `r`.
    let last_reader = |ops: &[TileOp], i: usize, r: usize| {
        (i + 1..ops.len())
            .take_while(|&j| j == i + 1 || ops[j - 1].dst() != Dst::Register(r))
            .filter(|&j| reads(&ops[j], r))
            .last()
    };
    let mut free: Vec<usize> = (0..SLOTS).rev().collect();
    // The values held: their register, slot and last reader.
    let mut held: Vec<(usize, usize, usize)> = Vec::with_capacity(SLOTS);
    for i in run.clone() {
        for &(r, s, _) in &held {
            ops[i].replace_source(Src::Register(r), Src::Slot(s));
        }
        held.retain(|&(_, s, last)| {
            let live = last > i;
            if !live {
                free.push(s);
            }
            live
        });
        let Dst::Register(r) = ops[i].dst() else {
            continue;
        };
        let (Some(last), Some(&s)) = (last_reader(ops, i, r), free.last()) else {
            continue;
        };
        if last < run.end {
            free.pop();
            ops[i].set_dst(Dst::Slot(s));
            held.push((r, s, last));
        }
    }
}

/// What an operation of a group's arithmetic computes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Unary(UnaryOp),
    PowI(i32),
    Binary(BinaryOp),
}

impl Kind {
    /// Whether the operation runs a chunk at a time with its neighbours (see `chain`):
    /// arithmetic that compiles to a few instructions. Others (`tanh`, `exp`, ...) run over a
    /// whole tile by their own loop, which holds their constants in registers throughout.
    pub(super) fn in_chunks(self) -> bool {
        match self {
            Kind::Unary(op) => op == UnaryOp::Neg,
            Kind::PowI(n) => matches!(n, 2 | 3 | -1),
            Kind::Binary(op) => {
                matches!(
                    op,
                    BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div
                )
            }
        }
    }
}

impl TileOp {
    /// What the operation computes (nothing for a load).
    pub(super) fn kind(&self) -> Option<Kind> {
        match *self {
            TileOp::Load { .. } => None,
            TileOp::Unary { op, .. } => Some(Kind::Unary(op)),
            TileOp::PowI { n, .. } => Some(Kind::PowI(n)),
            TileOp::Binary { op, .. } => Some(Kind::Binary(op)),
        }
    }

    /// Whether the operation runs a chunk at a time (see [`Kind::in_chunks`]).
    pub(super) fn in_chunks(&self) -> bool {
        self.kind().is_some_and(Kind::in_chunks)
    }

    /// The operands read (none for a load, which reads a view).
    pub(super) fn sources(&self) -> [Option<Src>; 2] {
        match *self {
            TileOp::Load { .. } => [None, None],
            TileOp::Unary { src, .. } | TileOp::PowI { src, .. } => [Some(src), None],
            TileOp::Binary { a, b, .. } => [Some(a), Some(b)],
        }
    }

    /// Where the result goes (a load's register too).
    pub(super) fn dst(&self) -> Dst {
        match *self {
            TileOp::Load { dst, .. } => Dst::Register(dst),
            TileOp::Unary { dst, .. } | TileOp::PowI { dst, .. } | TileOp::Binary { dst, .. } => {
                dst
            }
        }
    }

    fn set_dst(&mut self, to: Dst) {
        match self {
            TileOp::Load { .. } => unreachable!("loads write their own register"),
            TileOp::Unary { dst, .. } | TileOp::PowI { dst, .. } | TileOp::Binary { dst, .. } => {
                *dst = to
            }
        }
    }

    fn replace_source(&mut self, from: Src, to: Src) {
        let swap = |src: &mut Src| {
            if *src == from {
                *src = to;
            }
        };
        match self {
            TileOp::Load { .. } => {}
            TileOp::Unary { src, .. } | TileOp::PowI { src, .. } => swap(src),
            TileOp::Binary { a, b, .. } => {
                swap(a);
                swap(b);
            }
        }
    }
}

/// Loads of views that read their buffer in order are dropped: their uses read the buffer.
fn read_in_place(group: &mut Group) {
    let plain: Vec<bool> = group.views.iter().map(View::is_plain).collect();
    let mut ops = Vec::with_capacity(group.ops.len());
    // For each register, the view it stands for while no other value is written to it.
    let mut standing: HashMap<usize, usize> = HashMap::new();
    let resolve = |src: Src, standing: &HashMap<usize, usize>| match src {
        Src::Register(r) => standing.get(&r).map_or(src, |&v| Src::Direct(v)),
        other => other,
    };
    for op in std::mem::take(&mut group.ops) {
        let (op, written) = match op {
            TileOp::Load { view, dst } if plain[view] => {
                standing.insert(dst, view);
                continue;
            }
            TileOp::Load { dst, .. } => (op, Dst::Register(dst)),
            TileOp::Unary { op, src, dst } => (
                TileOp::Unary {
                    op,
                    src: resolve(src, &standing),
                    dst,
                },
                dst,
            ),
            TileOp::PowI { n, src, dst } => (
                TileOp::PowI {
                    n,
                    src: resolve(src, &standing),
                    dst,
                },
                dst,
            ),
            TileOp::Binary { op, a, b, dst } => (
                TileOp::Binary {
                    op,
                    a: resolve(a, &standing),
                    b: resolve(b, &standing),
                    dst,
                },
                dst,
            ),
        };
        if let Dst::Register(r) = written {
            standing.remove(&r);
        }
        ops.push(op);
    }
    group.ops = ops;
}

/// Merges neighbouring axes that every view reads as one (`stride[d] = stride[d + 1] *
/// shape[d + 1]`, no padding), and drops axes of size one: fewer, longer rows to walk.
fn coalesce(group: &mut Group) {
    let mut d = 0;
    while d + 1 < group.shape.len() {
        let inner = group.shape[d + 1];
        let mergeable = group.views.iter().all(|v| {
            v.strides[d] == v.strides[d + 1] * inner as isize
                && v.valid[d] == (0, group.shape[d])
                && v.valid[d + 1] == (0, inner)
        });
        if mergeable {
            group.shape[d] *= inner;
            group.shape.remove(d + 1);
            for v in &mut group.views {
                v.strides[d] = v.strides[d + 1];
                v.strides.remove(d + 1);
                v.valid[d] = (0, group.shape[d]);
                v.valid.remove(d + 1);
                v.shape = group.shape.clone();
            }
        } else {
            d += 1;
        }
    }
    if group.shape.is_empty() {
        group.shape.push(1);
        for v in &mut group.views {
            v.shape = vec![1];
            v.strides.push(0);
            v.valid.push((0, 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::exec::Plan;
    use crate::exec::tile::Held;
    use crate::storage::Data;
    use crate::tensor::Tensor;
    use crate::{Tensor as T, make_program};

    /// Runs a plan fused and equation by equation; the two must agree exactly.
    fn agree(plan: &Plan, inputs: &[Tensor]) -> Vec<Vec<f64>> {
        let data: Vec<Arc<Data>> = inputs.iter().map(|t| t.data().unwrap().clone()).collect();
        let fused = plan.run(&data, false).unwrap();
        let reference = plan.run(&data, true).unwrap();
        let values = |outs: Vec<Arc<Data>>| -> Vec<Vec<f64>> {
            outs.iter()
                .map(|d| Tensor::from_shared(d.clone()).to_vec::<f64>().unwrap())
                .collect()
        };
        let (fused, reference) = (values(fused), values(reference));
        assert_eq!(fused, reference);
        fused
    }

    fn groups(plan: &Plan) -> Vec<&Group> {
        plan.steps
            .iter()
            .filter_map(|(s, _)| match s {
                Step::Group(g) => Some(g),
                Step::Eqn(_) => None,
            })
            .collect()
    }

    #[test]
    fn operands_not_in_standard_layout_are_read_from_a_copy() {
        let f = |x: &T, y: &T| (x.exp() + y) * 2.0;
        let x = T::from_vec((0..6).map(|k| k as f64 * 0.1).collect(), &[3, 2]).unwrap();
        let plan = Plan::new(make_program(f, (&x, &x)).unwrap());
        assert!(plan.steps.iter().all(|(s, _)| matches!(s, Step::Group(_))));
        // The same values, column-major.
        let columns = ndarray::Array::from_shape_fn((2, 3), |(j, i)| (2 * i + j) as f64 * 0.1);
        let transposed = Arc::new(Data::F64(columns.reversed_axes().into_dyn()));
        let standard = x.data().unwrap().clone();
        let run = |a: &Arc<Data>, b: &Arc<Data>| {
            let out = plan.run(&[a.clone(), b.clone()], false).unwrap();
            Tensor::from_shared(out[0].clone()).to_vec::<f64>().unwrap()
        };
        let want = run(&standard, &standard);
        assert_eq!(run(&transposed, &standard), want);
        assert_eq!(run(&standard, &transposed), want);
        assert_eq!(run(&transposed, &transposed), want);
    }

    #[test]
    fn structural_reads_become_views_of_one_loop() {
        // Slices, pads (from the sum's transpose), broadcasts and transposes around arithmetic.
        let f = |x: &T, y: &T| {
            let a = x.slice_along(1, 1.., 1) * x.slice_along(1, ..-1, 1).exp();
            let b = (a.transpose() + y).tanh().powi(2);
            b.transpose() * 3.0 - &a
        };
        let x = T::from_vec((0..12).map(|k| k as f64 * 0.1).collect(), &[3, 4]).unwrap();
        let y = T::from([0.5, -0.5, 1.0]);
        let plan = Plan::new(make_program(f, (&x, &y)).unwrap());
        let out = agree(&plan, &[x.clone(), y.clone()]);
        assert_eq!(out[0], f(&x, &y).to_vec::<f64>().unwrap());
        // Everything but nothing structural runs alone.
        assert!(
            plan.steps.iter().all(|(s, _)| matches!(s, Step::Group(_))),
            "{:?}",
            plan.steps
        );
    }

    /// Checks that every result held in a slot comes from a chain's operation, and that its
    /// readers follow it in the same chain.
    fn held_in_slots_only_within_chains(ops: &[&TileOp]) {
        for (i, op) in ops.iter().enumerate() {
            let Dst::Slot(s) = op.dst() else { continue };
            assert!(op.in_chunks(), "{op:?}");
            let mut read = false;
            for next in &ops[i + 1..] {
                if next.sources().contains(&Some(Src::Slot(s))) {
                    assert!(next.in_chunks(), "{next:?} reads slot {s}");
                    read = true;
                }
                if !next.in_chunks() || next.dst() == Dst::Slot(s) {
                    break;
                }
            }
            assert!(read, "{op:?} has no reader");
        }
    }

    #[test]
    fn chains_of_cheap_operations_agree_with_one_operation_at_a_time() {
        // Chains of products, sums, quotients, negations and squares between transcendental
        // functions (which run over whole tiles), reading numbers, a bias of 16 and one of 48
        // repeated over a batch, and an output read in the middle of a chain; 1003 values a
        // row, so that chunks of 32, 4 and 1 all run.
        let f = |x: &T, b: &T, c: &T| {
            let y = ((x * b + c) * 0.5 - x / 3.0).powi(2) + x;
            let z = (-(&y * 1.5) + b).tanh() * &y / (c * c + 1.0);
            (y, (&z - x * 2.0).exp() + z.powi(3) - c)
        };
        for (rows, width) in [(1, 1003), (40, 16), (10, 48)] {
            let n = rows * width;
            let x = T::from_vec(
                (0..n).map(|k| (k as f64 * 0.37).sin()).collect(),
                &[rows, width],
            )
            .unwrap();
            let b =
                T::from_vec((0..width).map(|k| 0.1 * k as f64 - 0.7).collect(), &[width]).unwrap();
            let c = T::from_vec((0..width).map(|k| (k as f64).cos()).collect(), &[width]).unwrap();
            let plan = Plan::new(make_program(f, (&x, &b, &c)).unwrap());
            let ops: Vec<&TileOp> = groups(&plan).iter().flat_map(|g| &g.ops).collect();
            held_in_slots_only_within_chains(&ops);
            let passed = ops.iter().any(|op| matches!(op.dst(), Dst::Slot(_)));
            assert_eq!(passed, crate::simd::wide_vectors());
            let out = agree(&plan, &[x.clone(), b.clone(), c.clone()]);
            let (want0, want1) = f(&x, &b, &c);
            assert_eq!(out[0], want0.to_vec::<f64>().unwrap());
            assert_eq!(out[1], want1.to_vec::<f64>().unwrap());
        }
    }

    #[test]
    fn large_groups_split_across_threads_agree_with_one_pass() {
        // Enough elements for several ranges of tiles, and a length that is not a multiple of
        // the tile, with shifted slices and a pad so that ranges start inside rows.
        let n = 3 * (1 << 16) + 77;
        let g = crate::grad(|x: &T| {
            let shifted = x.slice_along(0, 1.., 1) - x.slice_along(0, ..-1, 1).powi(2);
            (shifted.powi(2) * 100.0).sum() + (1.0 - x).powi(2).sum()
        });
        let x = T::from_vec((0..n).map(|k| (k as f64 * 1e-3).sin()).collect(), &[n]).unwrap();
        let plan = Plan::new(g.program(&x).unwrap());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| agree(&plan, std::slice::from_ref(&x)));
    }

    #[test]
    fn operands_repeated_along_rows_are_walked_in_blocks_of_columns() {
        // A [3, n] group reading shifted [n] vectors: walked a tile of columns down the three
        // rows at a time, on several threads, with ranges that end inside a tile.
        let n = (1 << 16) + 77;
        let f = |x: &T, y: &T| {
            let (head, tail) = (x.slice_along(0, ..-1, 1), x.slice_along(0, 1.., 1));
            (y.slice_along(1, 1.., 1) * head.sin() + tail).tanh() * 2.0
        };
        let x = T::from_vec((0..n).map(|k| (k as f64 * 1e-3).sin()).collect(), &[n]).unwrap();
        let y = T::from_vec(
            (0..3 * n).map(|k| (k as f64 * 7e-4).cos()).collect(),
            &[3, n],
        )
        .unwrap();
        let plan = Plan::new(make_program(f, (&x, &y)).unwrap());
        let rows = groups(&plan).into_iter().find(|g| g.shape.len() == 2);
        assert_eq!(rows.unwrap().blocks(3 * (n - 1)), (3, n - 1));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let out = pool.install(|| agree(&plan, &[x.clone(), y.clone()]));
        assert_eq!(out[0], f(&x, &y).to_vec::<f64>().unwrap());
    }

    #[test]
    fn padding_and_strided_slices_read_zeros_and_steps() {
        // The transpose of a strided slice is an interior pad: it stays an equation.
        let g = crate::grad(|x: &T| {
            let strided = x.slice_along(0, .., 2).powi(2).sum();
            let shifted = (x.slice_along(0, 1.., 1) * x.slice_along(0, ..-1, 1))
                .sin()
                .sum();
            strided + shifted + x.slice_along(0, 1.., 3).exp().sum()
        });
        let x = T::linspace(-1.0, 1.0, 9);
        let plan = g.program(&x).unwrap();
        let plan = Plan::new(plan);
        agree(&plan, std::slice::from_ref(&x));
    }

    #[test]
    fn a_value_read_outside_its_group_closes_the_group_first() {
        // b needs the sum of a, so a's group runs, then the sum, then b's group.
        let f = |x: &T| {
            let a = x.exp();
            let s = a.sum();
            (&a * s + x).sin()
        };
        let x = T::from([0.1, 0.2, 0.3]);
        let plan = Plan::new(make_program(f, &x).unwrap());
        agree(&plan, std::slice::from_ref(&x));
        let kinds: Vec<&str> = plan
            .steps
            .iter()
            .map(|(s, _)| match s {
                Step::Group(_) => "group",
                Step::Eqn(_) => "eqn",
            })
            .collect();
        assert_eq!(kinds, ["group", "eqn", "group"]);
        assert_eq!(
            groups(&plan)[0].outputs.len(),
            1,
            "a is stored for the sum and for b"
        );
    }

    #[test]
    fn independent_equations_of_one_shape_share_a_loop() {
        let f = |x: &T, y: &T| (x.exp(), y.sin(), x * y);
        let (x, y) = (T::from([1.0, 2.0]), T::from([3.0, 4.0]));
        let plan = Plan::new(make_program(f, (&x, &y)).unwrap());
        assert_eq!(groups(&plan).len(), 1);
        agree(&plan, &[x, y]);
    }

    #[test]
    fn views_compose_like_the_kernels() {
        let x = Data::F64(
            ndarray::Array::from_shape_fn((3, 4), |(i, j)| (10 * i + j) as f64).into_dyn(),
        );
        let shape = [3, 4];
        let ops = [
            Structural::Slice {
                start: vec![1, 0],
                stop: vec![3, 4],
                step: vec![1, 2],
            },
            Structural::Transpose(vec![1, 0]),
            Structural::Pad {
                lo: vec![1, 0],
                hi: vec![0, 2],
                interior: vec![0, 0],
            },
            Structural::Broadcast(vec![2, 3, 4]),
        ];
        // Each op alone, and the first three composed, read as the kernels compute.
        let read = |view: &View| -> Vec<f64> {
            let Data::F64(a) = &x else { unreachable!() };
            let data = a.as_slice().unwrap();
            let n: usize = view.shape.iter().product();
            let mut out = vec![0.0; n];
            let (start, mut coords) = (vec![0; view.shape.len()], vec![0; view.shape.len()]);
            match super::super::tile::load(view, data, &start, &mut out, &mut coords) {
                Held::InPlace(values) => values.to_vec(),
                Held::Uniform(value) => vec![value; n],
                Held::Repeated(run) => run.repeat(n / run.len()),
                Held::Own => out,
            }
        };
        let var = Program::default().new_var(Aval::new(&shape, DType::F64));
        let mut view = View::of(var, &shape);
        let mut expected = x.clone();
        for op in &ops[..3] {
            view = view.then(op).unwrap();
            expected = Prim::from(op.clone())
                .eval(&[&expected])
                .unwrap()
                .pop()
                .unwrap();
            let Data::F64(e) = &expected else {
                unreachable!()
            };
            assert_eq!(read(&view), e.iter().copied().collect::<Vec<_>>(), "{op}");
        }
        let Some(broadcast) = View::of(var, &shape).then(&ops[3]) else {
            panic!()
        };
        assert_eq!(read(&broadcast).len(), 24);
        // Interior padding and concatenation are not views.
        let interior = Structural::Pad {
            lo: vec![0, 0],
            hi: vec![0, 0],
            interior: vec![0, 1],
        };
        assert!(View::of(var, &shape).then(&interior).is_none());
        assert!(View::of(var, &shape).then(&Structural::Concat(0)).is_none());
    }

    #[test]
    fn tiles_of_a_view_that_are_a_valid_run_of_its_buffer_are_read_in_place() {
        // A [2, 10] buffer shifted right by one column (a pad of one zero).
        let data: Vec<f64> = (0..20).map(|k| k as f64 + 1.0).collect();
        let var = Program::default().new_var(Aval::new(&[2, 10], DType::F64));
        let shifted = View::of(var, &[2, 10])
            .then(&Structural::Slice {
                start: vec![0, 0],
                stop: vec![2, 9],
                step: vec![1, 1],
            })
            .and_then(|v| {
                v.then(&Structural::Pad {
                    lo: vec![0, 1],
                    hi: vec![0, 0],
                    interior: vec![0, 0],
                })
            })
            .unwrap();
        let load = |view: &View, start: usize, len: usize| {
            let mut out = vec![f64::NAN; len];
            let (mut at, mut coords) = (vec![0; view.shape.len()], vec![0; view.shape.len()]);
            super::super::tile::coordinates(&view.shape, start, &mut at);
            let in_place = match super::super::tile::load(view, &data, &at, &mut out, &mut coords) {
                Held::InPlace(values) => Some(values.to_vec()),
                Held::Uniform(value) => Some(vec![value; len]),
                Held::Repeated(run) => Some(run.repeat(len / run.len())),
                Held::Own => None,
            };
            (in_place, out)
        };
        // Columns 2..6 of row 1 read buffer elements 11..15 in place.
        let view = &shifted;
        assert_eq!(load(view, 12, 4).0, Some(vec![12.0, 13.0, 14.0, 15.0]));
        // A tile with the padded column, or across rows, is copied, zeros included.
        assert_eq!(load(view, 0, 3), (None, vec![0.0, 1.0, 2.0]));
        assert_eq!(load(view, 8, 4), (None, vec![8.0, 9.0, 0.0, 11.0]));
        // Column 4 repeated along each row: a tile within a row is one number.
        let column = View::of(var, &[2, 10])
            .then(&Structural::Slice {
                start: vec![0, 4],
                stop: vec![2, 5],
                step: vec![1, 1],
            })
            .unwrap()
            .broadcast(&[2, 4]);
        assert_eq!(load(&column, 5, 2).0, Some(vec![15.0, 15.0]));
        assert_eq!(load(&column, 2, 4), (None, vec![5.0, 5.0, 15.0, 15.0]));
        // A run of 16 repeated along the rows: whole rows of it are one run.
        let run: Vec<f64> = (0..16).map(|k| k as f64).collect();
        let var = Program::default().new_var(Aval::new(&[16], DType::F64));
        let rows = View::of(var, &[16]).broadcast(&[4, 16]);
        let mut coords = [0; 4];
        let (start, scratch) = coords.split_at_mut(2);
        let mut out = vec![0.0; 48];
        let held = super::super::tile::load(&rows, &run, start, &mut out, scratch);
        assert_eq!(held, Held::Repeated(&run[..]));
        // One element over rows of one: a number, across rows too.
        let one = View::of(var, &[16])
            .then(&Structural::Slice {
                start: vec![5],
                stop: vec![6],
                step: vec![1],
            })
            .unwrap()
            .broadcast(&[3, 1]);
        let held = super::super::tile::load(&one, &run, start, &mut out[..3], scratch);
        assert_eq!(held, Held::Uniform(5.0));
        // From inside a row it is copied.
        super::super::tile::coordinates(&[4, 16], 8, start);
        let held = super::super::tile::load(&rows, &run, start, &mut out[..16], scratch);
        assert_eq!(held, Held::Own);
        assert_eq!(out[..16], [&run[8..], &run[..8]].concat()[..]);
    }

    /// Tiles of several rows of a [3, 4, 16] iteration space: a [4, 16] matrix broadcast over
    /// the first axis is read in place, a [3, 1, 16] batch of vectors broadcast over the
    /// middle axis is each vector repeated, a [3, 1, 1] one a number; each against the copy
    /// `load` makes when the tile crosses the block of the axes it spans.
    #[test]
    fn tiles_across_rows_of_broadcast_operands_are_read_without_copies() {
        let data: Vec<f64> = (0..64).map(|k| k as f64).collect();
        let shape = [3, 4, 16];
        let view = |from: &[usize]| {
            let var = Program::default().new_var(Aval::new(from, DType::F64));
            View::of(var, from).broadcast(&shape)
        };
        let read = |view: &View, first: usize, len: usize| {
            let mut out = vec![f64::NAN; len];
            let (mut at, mut coords) = ([0; 3], [0; 3]);
            super::super::tile::coordinates(&shape, first, &mut at);
            let held = super::super::tile::load(view, &data, &at, &mut out, &mut coords);
            let values = match held {
                Held::InPlace(values) => values.to_vec(),
                Held::Uniform(value) => vec![value; len],
                Held::Repeated(run) => run.repeat(len / run.len()),
                Held::Own => out,
            };
            (held, values)
        };
        let expect = |view: &View, first: usize, len: usize| -> Vec<f64> {
            (first..first + len)
                .map(|k| {
                    let mut at = [0; 3];
                    super::super::tile::coordinates(&shape, k, &mut at);
                    let offset: isize = (at.iter().zip(&view.strides))
                        .map(|(&c, &s)| c as isize * s)
                        .sum();
                    data[(view.offset + offset) as usize]
                })
                .collect()
        };
        let (matrix, vectors, numbers) = (view(&[4, 16]), view(&[3, 1, 16]), view(&[3, 1, 1]));
        for (view, first, len, kind) in [
            (&matrix, 64, 64, "in place"),
            (&matrix, 80, 32, "in place"),
            (&vectors, 64, 64, "repeated"),
            (&vectors, 128, 32, "repeated"),
            (&numbers, 64, 64, "uniform"),
            (&matrix, 48, 32, "copied"),
            (&vectors, 56, 16, "copied"),
        ] {
            let (held, values) = read(view, first, len);
            let got = match held {
                Held::InPlace(_) => "in place",
                Held::Repeated(_) => "repeated",
                Held::Uniform(_) => "uniform",
                Held::Own => "copied",
            };
            assert_eq!(got, kind, "{:?} from {first}", view.strides);
            assert_eq!(
                values,
                expect(view, first, len),
                "{:?} from {first}",
                view.strides
            );
        }
    }

    #[test]
    fn vectors_repeated_along_a_batch_meet_every_kind_of_operand() {
        // A bias of 16 broadcast over 40 rows, against a tile, a number, another bias and
        // inside a transcendental function.
        let f = |x: &T, b: &T, c: &T| {
            let y = (x + b).tanh() * b + b.exp() - (b * c) * 2.0;
            (&y * c, b * 3.0 + x - b + (b - &y))
        };
        let x = T::from_vec(
            (0..640).map(|k| (k as f64 * 0.37).sin()).collect(),
            &[40, 16],
        )
        .unwrap();
        let b = T::from_vec((0..16).map(|k| 0.1 * k as f64 - 0.7).collect(), &[16]).unwrap();
        let c = T::from_vec((0..16).map(|k| (k as f64).cos()).collect(), &[16]).unwrap();
        let plan = Plan::new(make_program(f, (&x, &b, &c)).unwrap());
        let out = agree(&plan, &[x.clone(), b.clone(), c.clone()]);
        let (want0, want1) = f(&x, &b, &c);
        assert_eq!(out[0], want0.to_vec::<f64>().unwrap());
        assert_eq!(out[1], want1.to_vec::<f64>().unwrap());
    }

    #[test]
    fn chains_hold_several_results_at_once_and_keep_the_rest_in_registers() {
        // Six products of x, each read twice, far apart: more results alive at once than
        // there are slots. With 700 values a row, the last chunks of a tile are short ones.
        let f = |x: &T, b: &T| {
            let p: Vec<T> = (1..=6).map(|k| x * (k as f64) + b).collect();
            let sum = p.iter().fold(x.clone(), |acc, v| acc * v);
            p.iter().rev().fold(sum, |acc, v| acc - v * 0.5)
        };
        let x = T::from_vec(
            (0..1400).map(|k| (k as f64 * 0.37).sin()).collect(),
            &[2, 700],
        )
        .unwrap();
        let b = T::from_vec((0..700).map(|k| 0.01 * k as f64).collect(), &[700]).unwrap();
        let plan = Plan::new(make_program(f, (&x, &b)).unwrap());
        let ops: Vec<&TileOp> = groups(&plan).iter().flat_map(|g| &g.ops).collect();
        held_in_slots_only_within_chains(&ops);
        let slots: HashSet<usize> = ops
            .iter()
            .filter_map(|op| match op.dst() {
                Dst::Slot(s) => Some(s),
                _ => None,
            })
            .collect();
        let in_registers = ops
            .iter()
            .any(|op| op.kind().is_some() && matches!(op.dst(), Dst::Register(_)));
        if crate::simd::wide_vectors() {
            assert_eq!(slots.len(), SLOTS, "{ops:?}");
            assert!(in_registers, "{ops:?}");
        }
        let out = agree(&plan, &[x.clone(), b.clone()]);
        assert_eq!(out[0], f(&x, &b).to_vec::<f64>().unwrap());
    }

    #[test]
    fn operations_without_a_loop_for_their_operands_read_them_spread_over_the_tile() {
        // The larger of x and a row of 16 repeated over 3 rows (read as repetitions of 32
        // values, which 48 is not a whole number of), and of two numbers broadcast.
        let f = |x: &T, b: &T, s: &T, t: &T| {
            let shape = [3, 16];
            x.maximum(b) * s.broadcast_to(&shape).maximum(t.broadcast_to(&shape))
        };
        let x = T::from_vec((0..48).map(|k| (k as f64 * 0.37).sin()).collect(), &[3, 16]).unwrap();
        let b = T::from_vec((0..16).map(|k| 0.06 * k as f64 - 0.5).collect(), &[16]).unwrap();
        let (s, t) = (
            T::from(vec![-0.5]).reshape(&[]),
            T::from(vec![1.5]).reshape(&[]),
        );
        let plan = Plan::new(make_program(f, (&x, &b, &s, &t)).unwrap());
        let out = agree(&plan, &[x.clone(), b.clone(), s.clone(), t.clone()]);
        assert_eq!(out[0], f(&x, &b, &s, &t).to_vec::<f64>().unwrap());
    }

    #[test]
    fn a_value_read_after_its_group_is_computed_into_its_output_and_read_from_there() {
        let f = |x: &T| {
            let a = x.exp();
            (a.clone(), (&a * x).sin())
        };
        let x = T::from_vec((0..1500).map(|k| k as f64 * 1e-3).collect(), &[1500]).unwrap();
        let plan = Plan::new(make_program(f, &x).unwrap());
        let group = groups(&plan)[0];
        assert!(group.ops.iter().any(|op| matches!(
            op,
            TileOp::Binary {
                a: Src::Output(0),
                dst: Dst::Slot(_) | Dst::Register(_),
                ..
            }
        )));
        let out = agree(&plan, std::slice::from_ref(&x));
        assert_eq!(out[0], x.exp().to_vec::<f64>().unwrap());
        assert_eq!(out[1], f(&x).1.to_vec::<f64>().unwrap());
    }
}
