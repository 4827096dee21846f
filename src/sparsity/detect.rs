//! Hessian sparsity detection by propagating index sets through a program.
//!
//! One forward pass carries, for every element of every value, the set of differentiated
//! input elements it depends on through nonzero first derivatives; every primitive whose
//! second derivative may be nonzero adds the products of its operands' sets to one shared
//! set of Hessian entries. For a scalar `f`,
//! `d2f = sum_k fbar_k sum_{p,q} d2 phi_k / du_p du_q  grad u_p grad u_q^T`, so the union of
//! those products over every element of every primitive holds every nonzero of the Hessian,
//! for every input (SparseConnectivityTracer's shared Hessian mode). Linear and piecewise
//! linear primitives (sums, slices, maximum, select) only move the first-order sets.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::ir::Var;
use crate::ir::passes::dead_code;
use crate::primitives::{Dependence, Loop, Prim, Program, broadcast_shapes};
use crate::storage::{Aval, Data};

/// Index sets, one per element of a value: element `e` depends on the differentiated input
/// elements `indices[start..start + len]`, `(start, len) = spans[e]` (sorted, distinct).
/// Elements with equal sets often share one span.
#[derive(Debug)]
pub(super) enum Sets {
    /// No element depends on any input.
    Empty,
    /// Spans of one list of indices.
    Rows {
        spans: Vec<(u32, u32)>,
        indices: Vec<u32>,
    },
}

impl Sets {
    fn get(&self, e: usize) -> &[u32] {
        match self {
            Sets::Empty => &[],
            Sets::Rows { spans, indices } => {
                let (start, len) = spans[e];
                &indices[start as usize..start as usize + len as usize]
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Sets::Empty => true,
            Sets::Rows { indices, .. } => indices.is_empty(),
        }
    }

    /// Element `e` depends on input element `first + e`.
    fn identity(first: usize, len: usize) -> Sets {
        Sets::Rows {
            spans: (0..len as u32).map(|e| (e, 1)).collect(),
            indices: (first as u32..(first + len) as u32).collect(),
        }
    }

    /// Builds sets element by element: `each(e, sources)` gives the sets whose union is
    /// element `e`'s. A source given twice counts once, and elements that are the union of
    /// the same sources share one span: every row of a batch depends on the same parameters,
    /// and costs one union, not one each.
    fn build<'a>(len: usize, mut each: impl FnMut(usize, &mut Vec<&'a [u32]>)) -> Result<Sets> {
        let mut spans = Vec::with_capacity(len);
        let mut indices = Vec::new();
        let mut sources: Vec<&'a [u32]> = Vec::new();
        let mut built: Seen<u64> = Seen::default();
        let mut key: Vec<u64> = Vec::new();
        for e in 0..len {
            sources.clear();
            each(e, &mut sources);
            sources.retain(|s| !s.is_empty());
            if sources.len() > 1 {
                sources.sort_unstable_by_key(|s| (s.as_ptr(), s.len()));
                sources.dedup_by_key(|s| (s.as_ptr(), s.len()));
            }
            let total: usize = sources.iter().map(|s| s.len()).sum();
            // Short unions are cheaper to make again than to look up.
            let shared = total >= Seen::<u64>::LEAST;
            if shared {
                key.clear();
                key.extend(
                    sources
                        .iter()
                        .flat_map(|s| [s.as_ptr() as u64, s.len() as u64]),
                );
                if let Some(span) = built.find(&[&key]) {
                    spans.push(span);
                    continue;
                }
            }
            let start = indices.len();
            for s in &sources {
                indices.extend_from_slice(s);
            }
            // Each source is sorted and distinct already.
            if sources.len() > 1 {
                sort_distinct(&mut indices, start);
            }
            let end = u32::try_from(indices.len()).map_err(|_| too_dense())?;
            let span = (start as u32, end - start as u32);
            if shared {
                built.remember(&[&key], span);
            }
            spans.push(span);
        }
        Ok(if indices.is_empty() {
            Sets::Empty
        } else {
            Sets::Rows { spans, indices }
        })
    }
}

/// Sorts `indices[start..]` and keeps each index once.
fn sort_distinct(indices: &mut Vec<u32>, start: usize) {
    let row = &mut indices[start..];
    if row.len() > 1 {
        row.sort_unstable();
        let mut kept = 1;
        for i in 1..row.len() {
            if row[i] != row[kept - 1] {
                row[kept] = row[i];
                kept += 1;
            }
        }
        indices.truncate(start + kept);
    }
}

fn too_dense() -> Error {
    Error::Options("hessian_sparsity: the index sets outgrew their budget".into())
}

/// Keys met before, each with its answer: a key is one or two lists, found by a hash of its
/// contents. Only the latest key of each hash is kept, so a collision costs a recomputation,
/// never a wrong answer (contents are compared).
struct Seen<T> {
    slots: HashMap<u64, Slot>,
    lists: Vec<T>,
}

/// Where a key's lists start in [`Seen::lists`], their lengths, and its answer.
#[derive(Clone, Copy)]
struct Slot {
    start: usize,
    lens: [usize; 2],
    answer: (u32, u32),
}

impl<T> Default for Seen<T> {
    fn default() -> Self {
        Seen {
            slots: HashMap::new(),
            lists: Vec::new(),
        }
    }
}

impl<T: Copy + Eq + Into<u64>> Seen<T> {
    /// Keys shorter than this are cheaper to recompute than to look up.
    const LEAST: usize = 16;

    fn hash(key: &[&[T]]) -> u64 {
        let mix = |h: u64, x: u64| (h.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
        key.iter().fold(0, |h, list| {
            let h = list.iter().fold(h, |h, &x| mix(h, x.into()));
            mix(h, list.len() as u64)
        })
    }

    /// The answer recorded for `key` (at most two lists), if it was met before.
    fn find(&self, key: &[&[T]]) -> Option<(u32, u32)> {
        let slot = self.slots.get(&Self::hash(key))?;
        let mut at = slot.start;
        for (list, &len) in key.iter().zip(&slot.lens) {
            if self.lists.get(at..at + len)? != *list {
                return None;
            }
            at += len;
        }
        Some(slot.answer)
    }

    /// Records `key` (at most two lists) and its answer.
    fn remember(&mut self, key: &[&[T]], answer: (u32, u32)) {
        let mut slot = Slot {
            start: self.lists.len(),
            lens: [0; 2],
            answer,
        };
        for (list, len) in key.iter().zip(&mut slot.lens) {
            self.lists.extend_from_slice(list);
            *len = list.len();
        }
        self.slots.insert(Self::hash(key), slot);
    }
}

/// The Hessian entries found so far, as `(row << 32) | col` keys with `row <= col` and
/// `row < n`, kept distinct by periodic sorting; detection stops when they outgrow `limit`.
struct Entries {
    keys: Vec<u64>,
    n: usize,
    sorted: usize,
    limit: usize,
    /// Large products already added.
    added: Seen<u32>,
}

impl Entries {
    fn new(n: usize, limit: usize) -> Entries {
        Entries {
            keys: Vec::new(),
            n,
            sorted: 0,
            limit,
            added: Seen::default(),
        }
    }

    /// Adds every `(p, q)` for `p` in `a` and `q` in `b`; `false` once over the limit.
    fn product(&mut self, a: &[u32], b: &[u32]) -> bool {
        // `a x b` holds at least `|a| |b| / 2` distinct entries: stop before storing them
        // when those alone are over the limit.
        if a.len().saturating_mul(b.len()) / 2 > self.limit {
            return false;
        }
        if a.len() * b.len() >= Seen::<u32>::LEAST * Seen::<u32>::LEAST {
            if self.added.find(&[a, b]).is_some() {
                return self.sorted <= self.limit;
            }
            self.added.remember(&[a, b], (0, 0));
        }
        for &p in a {
            for &q in b {
                let (lo, hi) = if p <= q { (p, q) } else { (q, p) };
                self.keys.push((u64::from(lo) << 32) | u64::from(hi));
            }
        }
        // Kept distinct often enough that the limit stops a dense pattern early.
        if self.keys.len() > 2 * self.sorted.max(self.limit.min(1 << 20)).max(1 << 12) {
            self.compact();
        }
        self.sorted <= self.limit
    }

    /// Sorts and deduplicates the keys: bucketed by row when there are at least an eighth as
    /// many as rows (a counting sort, then each row's few columns), else compared whole.
    fn compact(&mut self) {
        if self.keys.len() < self.n / 8 {
            self.keys.sort_unstable();
            self.keys.dedup();
        } else {
            let mut start = vec![0usize; self.n + 1];
            for &key in &self.keys {
                start[(key >> 32) as usize + 1] += 1;
            }
            for row in 0..self.n {
                start[row + 1] += start[row];
            }
            let mut fill = start.clone();
            let mut cols = vec![0u32; self.keys.len()];
            for &key in &self.keys {
                let row = &mut fill[(key >> 32) as usize];
                cols[*row] = key as u32;
                *row += 1;
            }
            self.keys.clear();
            for (row, ends) in start.windows(2).enumerate() {
                let cols = &mut cols[ends[0]..ends[1]];
                cols.sort_unstable();
                let row = (row as u64) << 32;
                for (i, &col) in cols.iter().enumerate() {
                    if i == 0 || col != cols[i - 1] {
                        self.keys.push(row | u64::from(col));
                    }
                }
            }
        }
        self.sorted = self.keys.len();
    }
}

/// The upper triangle (`row <= col`) of the Hessian pattern of output 0 of `program` with
/// respect to the inputs `wrt` (flattened one after the other), sorted by row then column;
/// `None` when it would have more than `limit` entries (then treat it as dense).
pub(super) fn upper_pattern(
    program: &Program,
    wrt: &[usize],
    limit: usize,
) -> Result<Option<Vec<(u32, u32)>>> {
    let n: usize = wrt
        .iter()
        .map(|&i| program.aval(program.inputs[i]).numel())
        .sum();
    if u32::try_from(n).is_err() {
        return Ok(None);
    }
    // Only the value differentiated matters: what feeds other outputs adds nothing.
    let mut scalar = program.clone();
    scalar.outputs.truncate(1);
    let program = dead_code(scalar);

    let inputs: Vec<Arc<Sets>> = program
        .inputs
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let len = program.aval(v).numel();
            Arc::new(if wrt.contains(&k) {
                let offset = wrt
                    .iter()
                    .take_while(|&&i| i != k)
                    .map(|&i| program.aval(program.inputs[i]).numel())
                    .sum::<usize>();
                Sets::identity(offset, len)
            } else {
                Sets::Empty
            })
        })
        .collect();
    let mut entries = Entries::new(n, limit);
    if run_program(&program, inputs, false, &mut entries)?.is_none() {
        return Ok(None);
    }
    entries.compact();
    if entries.sorted > limit {
        return Ok(None);
    }
    Ok(Some(
        entries
            .keys
            .iter()
            .map(|&k| ((k >> 32) as u32, k as u32))
            .collect(),
    ))
}

/// Which values' sets the detection reads: those that equations with second derivatives (or
/// loops) read, and what they are computed from. The final reductions of a loss are never
/// read, so their (large) sets are never built.
fn demand(program: &Program) -> HashMap<Var, bool> {
    let mut needed: HashMap<Var, bool> = HashMap::new();
    for eqn in program.eqns.iter().rev() {
        let avals: Vec<Aval> = eqn
            .inputs
            .iter()
            .map(|&v| program.aval(v).clone())
            .collect();
        let curved = match eqn.prim.dependence(&avals) {
            Dependence::Elementwise { second, .. } => !second.is_empty(),
            Dependence::MatMul | Dependence::Body => true,
            Dependence::None
            | Dependence::Gather
            | Dependence::Reduce(_)
            | Dependence::Scatter(_) => false,
        };
        if curved || eqn.outputs.iter().any(|v| needed.contains_key(v)) {
            for &v in &eqn.inputs {
                needed.insert(v, true);
            }
        }
    }
    needed
}

/// Propagates the inputs' sets through `program`, adding its Hessian entries, and returns the
/// outputs' sets (`None` once the entries outgrow their limit). With `all`, every value's
/// sets are built (a loop body's outputs are read by the next step); otherwise only those
/// that [`demand`] finds read.
fn run_program(
    program: &Program,
    inputs: Vec<Arc<Sets>>,
    all: bool,
    entries: &mut Entries,
) -> Result<Option<Vec<Arc<Sets>>>> {
    let needed = if all { HashMap::new() } else { demand(program) };
    let mut sets: HashMap<Var, Arc<Sets>> = HashMap::new();
    for (&v, own) in program.inputs.iter().zip(inputs) {
        sets.insert(v, own);
    }
    for (v, _) in &program.consts {
        sets.insert(*v, Arc::new(Sets::Empty));
    }
    for eqn in &program.eqns {
        let avals: Vec<Aval> = eqn
            .inputs
            .iter()
            .map(|&v| program.aval(v).clone())
            .collect();
        let ins: Vec<Arc<Sets>> = eqn.inputs.iter().map(|v| sets[v].clone()).collect();
        if let Prim::Loop(l) = &eqn.prim {
            let Some(outs) = through_loop(l, &ins, entries)? else {
                return Ok(None);
            };
            for (&v, out) in eqn.outputs.iter().zip(outs) {
                sets.insert(v, out);
            }
            continue;
        }
        let out = program.aval(eqn.outputs[0]);
        let reads = all || eqn.outputs.iter().any(|v| needed.contains_key(v));
        let Some(result) = propagate(&eqn.prim, &avals, &ins, out, reads, entries)? else {
            return Ok(None);
        };
        for &v in &eqn.outputs {
            sets.insert(v, result.clone());
        }
    }
    Ok(Some(
        program
            .outputs
            .iter()
            .map(|v| {
                sets.get(v)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Sets::Empty))
            })
            .collect(),
    ))
}

/// A loop: the body's dependence iterated over the carry to a fixed point (each carry's sets
/// the union of its sets at every step so far), with each per-step input's sets the union over
/// the steps. At most `length` passes reach every step's sets; each pass adds the body's
/// Hessian entries at the sets it sees, which hold every step's. Conservative: a step's value
/// depends on no more than the union.
fn through_loop(
    l: &Loop,
    ins: &[Arc<Sets>],
    entries: &mut Entries,
) -> Result<Option<Vec<Arc<Sets>>>> {
    let (nc, nh) = (l.consts, l.carry);
    let body = &*l.body;
    let in_avals = body.input_avals();
    let steps = l.length;
    let per_step: Vec<Arc<Sets>> = (nc + nh..in_avals.len())
        .map(|i| {
            let len = in_avals[i].numel();
            if ins[i].is_empty() {
                return Ok(Arc::new(Sets::Empty));
            }
            Ok(Arc::new(Sets::build(len, |e, sources| {
                for t in 0..steps {
                    sources.push(ins[i].get(t * len + e));
                }
            })?))
        })
        .collect::<Result<_>>()?;
    let mut carry: Vec<Arc<Sets>> = ins[nc..nc + nh].to_vec();
    let empty = Arc::new(Sets::Empty);
    let mut ys: Vec<Arc<Sets>> = vec![empty; l.n_ys()];
    for _ in 0..steps {
        let mut inputs: Vec<Arc<Sets>> = ins[..nc].to_vec();
        inputs.extend(carry.iter().cloned());
        inputs.extend(per_step.iter().cloned());
        let Some(outs) = run_program(body, inputs, true, entries)? else {
            return Ok(None);
        };
        ys = outs[nh..].to_vec();
        let mut grew = false;
        for (k, out) in outs.iter().take(nh).enumerate() {
            let len = in_avals[nc + k].numel();
            let merged = union(&carry[k], out, len)?;
            grew |= (0..len).any(|e| merged.get(e).len() != carry[k].get(e).len());
            carry[k] = Arc::new(merged);
        }
        if !grew {
            break;
        }
    }
    let out_avals = body.output_avals();
    let mut outputs = carry;
    for (y, aval) in ys.iter().zip(&out_avals[nh..]) {
        let len = aval.numel();
        outputs.push(if y.is_empty() {
            Arc::new(Sets::Empty)
        } else {
            Arc::new(Sets::build(steps * len, |e, sources| {
                sources.push(y.get(e % len))
            })?)
        });
    }
    Ok(Some(outputs))
}

/// The element-wise union of two sets of `len` elements.
fn union(a: &Sets, b: &Sets, len: usize) -> Result<Sets> {
    Sets::build(len, |e, sources| {
        sources.push(a.get(e));
        sources.push(b.get(e));
    })
}

/// One equation: the output's sets (empty when nothing reads them) and its Hessian entries.
/// `None` when the entries outgrow their limit.
fn propagate(
    prim: &Prim,
    avals: &[Aval],
    ins: &[Arc<Sets>],
    out: &Aval,
    reads: bool,
    entries: &mut Entries,
) -> Result<Option<Arc<Sets>>> {
    let len = out.numel();
    let empty = || Ok(Some(Arc::new(Sets::Empty)));
    match prim.dependence(avals) {
        Dependence::None => empty(),
        Dependence::Elementwise { first, second } => {
            let maps: Vec<Vec<u32>> = avals
                .iter()
                .map(|a| broadcast_map(&a.shape, &out.shape))
                .collect::<Result<_>>()?;
            let at = |p: usize, e: usize| ins[p].get(maps[p][e] as usize);
            for &(p, q) in &second {
                if ins[p].is_empty() || ins[q].is_empty() {
                    continue;
                }
                for e in 0..len {
                    if !entries.product(at(p, e), at(q, e)) {
                        return Ok(None);
                    }
                }
            }
            let moving: Vec<usize> = (0..ins.len())
                .filter(|&p| first[p] && !ins[p].is_empty())
                .collect();
            match moving.as_slice() {
                _ if !reads => empty(),
                [] => empty(),
                // One operand of the output's shape: its sets, shared.
                [p] if avals[*p].shape == out.shape => Ok(Some(ins[*p].clone())),
                _ => Ok(Some(Arc::new(Sets::build(len, |e, sources| {
                    for &p in &moving {
                        sources.push(at(p, e));
                    }
                })?))),
            }
        }
        Dependence::Gather if !reads => empty(),
        Dependence::Gather => {
            let map = gather_map(prim, avals)?;
            Ok(Some(Arc::new(Sets::build(len, |e, sources| {
                if let Some((p, i)) = map[e] {
                    sources.push(ins[p].get(i));
                }
            })?)))
        }
        Dependence::Scatter(_) if !reads => empty(),
        Dependence::Scatter(gather) => {
            // The gather reads each input element from one output element: invert it.
            let map = gather_map(&gather, std::slice::from_ref(out))?;
            let mut members: Vec<Vec<u32>> = vec![Vec::new(); len];
            for (i, source) in map.iter().enumerate() {
                if let Some((_, o)) = source {
                    members[*o].push(i as u32);
                }
            }
            Ok(Some(Arc::new(Sets::build(len, |e, sources| {
                for &i in &members[e] {
                    sources.push(ins[0].get(i as usize));
                }
            })?)))
        }
        Dependence::Reduce(_) if !reads => empty(),
        Dependence::Reduce(axes) => {
            let x = &avals[0];
            let kept = crate::primitives::keepdims_shape(&x.shape, &axes);
            // Each input element's output element, through the kept shape.
            let map = broadcast_map(&kept, &x.shape)?;
            let mut members: Vec<Vec<u32>> = vec![Vec::new(); len];
            for (i, &o) in map.iter().enumerate() {
                members[o as usize].push(i as u32);
            }
            Ok(Some(Arc::new(Sets::build(len, |e, sources| {
                for &i in &members[e] {
                    sources.push(ins[0].get(i as usize));
                }
            })?)))
        }
        Dependence::MatMul => matmul(avals, ins, out, reads, entries),
        // Loops are followed through their body by `run_program`.
        Dependence::Body => Err(Error::Trace(
            "internal: a loop reached the single-equation rule of sparsity detection".into(),
        )),
    }
}

/// `out[.., i, j] = sum_k a[.., i, k] b[.., k, j]`: the output depends on row `i` of `a` and
/// column `j` of `b`; the second derivative pairs `a[.., i, k]` with `b[.., k, j]`, so the
/// entries are `(union_i a[.., i, k]) x (union_j b[.., k, j])` for each `k` (exact, since
/// products distribute over unions).
fn matmul(
    avals: &[Aval],
    ins: &[Arc<Sets>],
    out: &Aval,
    reads: bool,
    entries: &mut Entries,
) -> Result<Option<Arc<Sets>>> {
    let (a, b) = (&avals[0], &avals[1]);
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, kk, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch = broadcast_shapes("matmul", &a.shape[..ra - 2], &b.shape[..rb - 2])?;
    let a_batch = broadcast_map(&a.shape[..ra - 2], &batch)?;
    let b_batch = broadcast_map(&b.shape[..rb - 2], &batch)?;
    let count = a_batch.len();
    if !ins[0].is_empty() && !ins[1].is_empty() {
        // Column k of each batch of a and row k of each batch of b, as sets.
        let a_cols = Sets::build(a.numel() / m.max(1), |c, sources| {
            let (ta, k) = (c / kk, c % kk);
            sources.extend((0..m).map(|i| ins[0].get((ta * m + i) * kk + k)));
        })?;
        let b_rows = Sets::build(b.numel() / n.max(1), |r, sources| {
            sources.extend((0..n).map(|j| ins[1].get(r * n + j)));
        })?;
        for t in 0..count {
            let (ta, tb) = (a_batch[t] as usize, b_batch[t] as usize);
            for k in 0..kk {
                if !entries.product(a_cols.get(ta * kk + k), b_rows.get(tb * kk + k)) {
                    return Ok(None);
                }
            }
        }
    }
    if !reads || (ins[0].is_empty() && ins[1].is_empty()) {
        return Ok(Some(Arc::new(Sets::Empty)));
    }
    // Rows of a and columns of b, each once.
    let rows = Sets::build(a.numel() / kk.max(1), |r, sources| {
        sources.extend((0..kk).map(|k| ins[0].get(r * kk + k)));
    })?;
    let cols = Sets::build(b.numel() / kk.max(1), |c, sources| {
        let (tb, j) = (c / n, c % n);
        sources.extend((0..kk).map(|k| ins[1].get((tb * kk + k) * n + j)));
    })?;
    Ok(Some(Arc::new(Sets::build(out.numel(), |e, sources| {
        let (t, ij) = (e / (m * n), e % (m * n));
        let (i, j) = (ij / n, ij % n);
        sources.push(rows.get(a_batch[t] as usize * m + i));
        sources.push(cols.get(b_batch[t] as usize * n + j));
    })?)))
}

/// For each element of an array of shape `to`, the element of an array of shape `from`
/// broadcast to it (NumPy rules).
fn broadcast_map(from: &[usize], to: &[usize]) -> Result<Vec<u32>> {
    let len: usize = to.iter().product();
    let lead = to
        .len()
        .checked_sub(from.len())
        .ok_or_else(|| Error::shape("broadcast", "a shape of higher rank than its target"))?;
    // The stride of each axis of `to` in `from`: zero where `from` repeats one element.
    let mut strides = vec![0usize; to.len()];
    let mut stride = 1;
    for (axis, &size) in from.iter().enumerate().rev() {
        let target = to[lead + axis];
        if size != target && size != 1 {
            return Err(Error::shape(
                "broadcast",
                format!("shape {from:?} does not broadcast to {to:?}"),
            ));
        }
        if size == target {
            strides[lead + axis] = stride;
        }
        stride *= size;
    }
    if from == to {
        return Ok((0..len as u32).collect());
    }
    // Row by row of the last axis, an odometer over the others.
    let (last, last_stride) = (
        to.last().copied().unwrap_or(1),
        strides.last().copied().unwrap_or(0),
    );
    let mut map = Vec::with_capacity(len);
    let mut index = vec![0usize; to.len().saturating_sub(1)];
    let mut base = 0usize;
    while map.len() < len {
        map.extend((0..last).map(|j| (base + j * last_stride) as u32));
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            base += strides[axis];
            if index[axis] < to[axis] {
                break;
            }
            base -= strides[axis] * index[axis];
            index[axis] = 0;
        }
    }
    Ok(map)
}

/// For each output element of a structural primitive, the operand and element it is, if
/// any: found by running the primitive on element indices (offset by one, so that padding,
/// which is zero, reads as none).
fn gather_map(prim: &Prim, avals: &[Aval]) -> Result<Vec<Option<(usize, usize)>>> {
    let mut starts = Vec::with_capacity(avals.len());
    let mut next = 1i64;
    let indices = avals
        .iter()
        .map(|a| {
            starts.push(next);
            let values: Vec<i64> = (next..next + a.numel() as i64).collect();
            next += a.numel() as i64;
            ArrayD::from_shape_vec(a.shape.as_slice(), values)
                .map(Data::I64)
                .map_err(|_| Error::shape(prim.name(), "index array"))
        })
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Data> = indices.iter().collect();
    let Some(Data::I64(out)) = prim.eval(&refs)?.pop() else {
        return Err(Error::shape(prim.name(), "index map"));
    };
    Ok(out
        .iter()
        .map(|&code| {
            (code > 0).then(|| {
                let p = starts.partition_point(|&s| s <= code) - 1;
                (p, (code - starts[p]) as usize)
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::Structural;

    #[test]
    fn broadcast_maps_agree_with_the_broadcast_primitive() {
        let cases: [(&[usize], &[usize]); 7] = [
            (&[], &[]),
            (&[], &[3, 2]),
            (&[4], &[4]),
            (&[1, 3], &[2, 4, 3]),
            (&[2, 1, 3], &[2, 4, 3]),
            (&[2, 1], &[3, 2, 5]),
            (&[3, 0], &[2, 3, 0]),
        ];
        for (from, to) in cases {
            let total: usize = from.iter().product();
            let index = ArrayD::from_shape_vec(from, (0..total as i64).collect()).unwrap();
            let prim = Prim::from(Structural::Broadcast(to.to_vec()));
            let Some(Data::I64(expected)) = prim.eval(&[&Data::I64(index)]).unwrap().pop() else {
                panic!("broadcast gives indices");
            };
            let expected: Vec<u32> = expected.iter().map(|&i| i as u32).collect();
            assert_eq!(
                broadcast_map(from, to).unwrap(),
                expected,
                "{from:?} -> {to:?}"
            );
        }
        assert!(broadcast_map(&[2], &[3]).is_err());
        assert!(broadcast_map(&[2, 2], &[2]).is_err());
    }

    #[test]
    fn compaction_sorts_and_dedups_by_row_or_whole() {
        for (n, count) in [(64, 1000), (4096, 20)] {
            let mut state = 12345u64;
            let mut entries = Entries::new(n, usize::MAX);
            let mut expected = Vec::new();
            for k in 0..count {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let (a, b) = (
                    (state >> 33) as u32 % n as u32,
                    (state >> 13) as u32 % n as u32,
                );
                let (lo, hi) = (a.min(b), a.max(b));
                let key = (u64::from(lo) << 32) | u64::from(hi);
                // Every third key twice.
                entries
                    .keys
                    .extend(std::iter::repeat_n(key, 1 + (k % 3 == 0) as usize));
                expected.push(key);
            }
            entries.compact();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(entries.keys, expected);
            assert_eq!(entries.sorted, expected.len());
        }
    }
}
