//! Reading a Hessian's entries out of its compressed products.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ndarray::{ArrayD, ArrayViewD};
use num_complex::{Complex32, Complex64};
use num_traits::Zero;
use rayon::prelude::*;

use super::{Compression, Reading, SparsityPattern};
use crate::error::{Error, Result};
use crate::exec::Plan;
use crate::simd;
use crate::storage::{DType, Data, Element, Slot, pool};

/// Gathers of at least this many entries, and dense blocks of new pages of at least this many
/// elements, run on the thread pool.
const PARALLEL_MIN: usize = 1 << 16;

/// Entries that a stencil's decompression writes past the caches, in bytes: more than a
/// core may count on keeping of the last-level cache.
const STREAM_MIN_BYTES: usize = 8 << 20;

impl Compression {
    /// The compressed products `B` (`[colors, n]`, row-major) from one product per
    /// differentiated leaf (`[colors] ++ leaf shape` each): the one product itself when there
    /// is one leaf, else its rows gathered.
    fn gathered<'a, T: Copy>(
        &self,
        products: &[ArrayViewD<'a, T>],
        colors: usize,
    ) -> Result<Cow<'a, [T]>> {
        let sizes = self.pattern.sizes();
        let mut flats = Vec::with_capacity(products.len());
        for (product, &len) in products.iter().zip(sizes) {
            let flat = product
                .to_slice()
                .ok_or_else(|| Error::shape("sparse hessian", "a product out of layout"))?;
            if flat.len() != colors * len {
                return Err(Error::shape(
                    "sparse hessian",
                    format!(
                        "a product of {} values for {} colors of {len} variables",
                        flat.len(),
                        colors
                    ),
                ));
            }
            flats.push(flat);
        }
        if let [flat] = flats[..] {
            return Ok(Cow::Borrowed(flat));
        }
        let n: usize = sizes.iter().sum();
        let mut b = Vec::with_capacity(colors * n);
        for c in 0..colors {
            for (flat, &len) in flats.iter().zip(sizes) {
                b.extend_from_slice(&flat[c * len..(c + 1) * len]);
            }
        }
        Ok(Cow::Owned(b))
    }

    /// The values of the pattern's entries, in its order.
    fn entries<T: Copy + Zero + Send + Sync + 'static>(
        &self,
        products: &[ArrayViewD<T>],
    ) -> Result<Vec<T>> {
        match &self.reading {
            Reading::Colors {
                colors, sources, ..
            } => self.gather(products, *colors, sources),
            Reading::Stencil {
                offsets,
                terms,
                partial,
            } => self.read_stencil(products, offsets.len(), terms, partial),
        }
    }

    /// The entries from compressed products, each from its source (on every thread when
    /// there are many: a gather is bound by memory latency, which threads overlap).
    fn gather<T: Copy + Send + Sync + 'static>(
        &self,
        products: &[ArrayViewD<T>],
        colors: usize,
        sources: &[u32],
    ) -> Result<Vec<T>> {
        let gathered = self.gathered(products, colors)?;
        // A slice held by value: the gather loads no bounds from memory per entry.
        let b: &[T] = &gathered;
        let read = move |&s: &u32| b[s as usize];
        let mut values = pool::take(sources.len());
        if sources.len() < PARALLEL_MIN {
            values.extend(sources.iter().map(read));
        } else {
            let sources = sources.par_iter().with_min_len(PARALLEL_MIN / 2);
            sources.map(read).collect_into_vec(&mut values);
        }
        Ok(values)
    }

    /// The entries from a stencil's coefficients (`offsets` arrays per leaf), row after row:
    /// each row reads its own element of each array, so every array is read in order. A run
    /// of rows with one entry per offset interleaves the arrays; other rows (`partial`)
    /// read each entry's array from `terms`.
    fn read_stencil<T: Copy + Zero + Send + Sync + 'static>(
        &self,
        coefficients: &[ArrayViewD<T>],
        offsets: usize,
        terms: &[u16],
        partial: &[usize],
    ) -> Result<Vec<T>> {
        let sizes = self.pattern.sizes();
        let arrays = coefficients
            .iter()
            .enumerate()
            .map(|(a, c)| {
                let len = sizes.get(a / offsets.max(1)).copied();
                c.to_slice().filter(|s| Some(s.len()) == len)
            })
            .collect::<Option<Vec<&[T]>>>()
            .filter(|arrays| arrays.len() == sizes.len() * offsets);
        let Some(arrays) = arrays else {
            return Err(Error::shape(
                "sparse hessian",
                format!("coefficients out of layout for {offsets} offsets of leaves of {sizes:?}"),
            ));
        };
        let starts = self.pattern.starts();
        let fill = |rows: Range<usize>, out: &mut [MaybeUninit<T>]| {
            let base = self.pattern.row_start[rows.start];
            for (leaf, (&start, &size)) in starts.iter().zip(sizes).enumerate() {
                let mine = rows.start.max(start)..rows.end.min(start + size);
                if !mine.is_empty() {
                    let arrays = &arrays[leaf * offsets..(leaf + 1) * offsets];
                    let entries = self.pattern.row_start[mine.start] - base
                        ..self.pattern.row_start[mine.end] - base;
                    self.read_rows(terms, partial, arrays, start, mine, &mut out[entries]);
                }
            }
        };
        let (rows, nnz) = (self.pattern.size(), terms.len());
        let mut values: Vec<T> = pool::take(nnz);
        let out = &mut values.spare_capacity_mut()[..nnz];
        if nnz < PARALLEL_MIN {
            fill(0..rows, out);
        } else {
            // Blocks of rows of about PARALLEL_MIN / 2 entries, each writing its own entries.
            let per_block = (rows * (PARALLEL_MIN / 2) / nnz).max(1);
            let blocks = (0..rows)
                .step_by(per_block)
                .map(|first| first..(first + per_block).min(rows));
            self.rows_apart(out, blocks)
                .into_par_iter()
                .for_each(|(rows, out)| fill(rows, out));
        }
        // SAFETY: the rows 0..n hold the entries 0..nnz, and `fill` wrote every entry of
        // every row it was given (a block of rows each, covering 0..n).
        unsafe { values.set_len(nnz) };
        Ok(values)
    }

    /// Writes the entries of `rows`, rows of one leaf, into `out`, from that leaf's
    /// coefficient `arrays` (one per offset), whose element 0 is row `first`: a run of rows
    /// with one entry per offset interleaves the arrays; the rows of `partial` read each
    /// entry's array from `terms`.
    fn read_rows<T: Copy + Zero, S: Slot<T>>(
        &self,
        terms: &[u16],
        partial: &[usize],
        arrays: &[&[T]],
        first: usize,
        rows: Range<usize>,
        out: &mut [S],
    ) {
        let row_start = &self.pattern.row_start;
        let base = row_start[rows.start];
        let entries = |a: usize, b: usize| row_start[a] - base..row_start[b] - base;
        let mut next_partial = partial.partition_point(|&p| p < rows.start);
        let mut r = rows.start;
        while r < rows.end {
            let k = r - first;
            if partial.get(next_partial) == Some(&r) {
                for (slot, &t) in out[entries(r, r + 1)]
                    .iter_mut()
                    .zip(&terms[row_start[r]..])
                {
                    slot.set(arrays.get(t as usize).map_or(T::zero(), |a| a[k]));
                }
                next_partial += 1;
                r += 1;
                continue;
            }
            let end = (rows.end).min(partial.get(next_partial).copied().unwrap_or(usize::MAX));
            interleave(arrays, k..k + (end - r), &mut out[entries(r, end)]);
            r = end;
        }
    }

    /// `out`, the entries of every row in order, cut into the entries of each of `ranges`
    /// (consecutive ranges of rows from row 0), for each range to write its own.
    fn rows_apart<'a, S>(
        &self,
        out: &'a mut [S],
        ranges: impl Iterator<Item = Range<usize>>,
    ) -> Vec<(Range<usize>, &'a mut [S])> {
        let row_start = &self.pattern.row_start;
        let mut rest = out;
        ranges
            .map(|rows| {
                let len = row_start[rows.end] - row_start[rows.start];
                let (mine, after) = std::mem::take(&mut rest).split_at_mut(len);
                rest = after;
                (rows, mine)
            })
            .collect()
    }

    /// The pattern's entries, for a stencil of one leaf whose coefficients are the outputs
    /// of `plan` from `n_outputs` on and all come from its last group: each block of rows is
    /// read into the entries while the group's values are in the cache, and the coefficient
    /// arrays are never stored whole (see [`Plan::run_streaming`]). Returns the plan's own
    /// outputs with the entries (as [`Compression::decompress`] recovers them), or `None`
    /// (nothing run) when the plan is not of that form.
    pub(crate) fn stream_entries(
        &self,
        plan: &Plan,
        inputs: &[Arc<Data>],
        n_outputs: usize,
    ) -> Result<Option<Recovered>> {
        let Reading::Stencil {
            offsets,
            terms,
            partial,
        } = &self.reading
        else {
            return Ok(None);
        };
        let streamed = plan.streamed_outputs(n_outputs).map(|p| p.len());
        if self.pattern.sizes().len() != 1 || streamed != Some(offsets.len()) {
            return Ok(None);
        }
        let row_start = &self.pattern.row_start;
        let mut values: Vec<f64> = pool::take(terms.len());
        // Each range of rows writes its own entries, a block of rows at a time: straight into
        // them, or when they are far larger than the caches, into a buffer of the range's
        // from which they are streamed out (see `simd::stream`).
        let out = &mut values.spare_capacity_mut()[..terms.len()];
        let split = move |ranges: &[Range<usize>]| {
            // `out` moves in whole: the parts borrow from it beyond this call.
            let whole = out;
            let parts = self.rows_apart(whole, ranges.iter().cloned());
            parts
                .into_iter()
                .map(|(_, mine)| (mine, Vec::new()))
                .collect()
        };
        let streams = terms.len() * size_of::<f64>() >= STREAM_MIN_BYTES;
        let consume = |(out, staged): &mut (&mut [MaybeUninit<f64>], Vec<f64>),
                       rows: Range<usize>,
                       arrays: &[&[f64]]| {
            let len = row_start[rows.end] - row_start[rows.start];
            let (mine, rest) = std::mem::take(out).split_at_mut(len);
            if streams {
                staged.resize(len, 0.0);
                self.read_rows(terms, partial, arrays, rows.start, rows, &mut staged[..]);
                simd::stream(staged, mine);
                simd::stream_fence();
            } else {
                self.read_rows(terms, partial, arrays, rows.start, rows, mine);
            }
            *out = rest;
        };
        let own = plan.run_streaming(inputs, n_outputs, split, consume)?;
        // SAFETY: the group's ranges cover its elements, the leaf's rows 0..n, whose entries
        // are 0..nnz; each range was given its rows' entries, and every block of it wrote
        // every entry of its rows.
        unsafe { values.set_len(terms.len()) };
        let entries = ArrayD::from_shape_vec(vec![values.len()], values).expect("nnz values");
        Ok(Some((own, vec![Data::F64(entries)])))
    }

    /// The dense blocks `H[i][j]` (shape `leaf i ++ leaf j`, row-major over `i` then `j`),
    /// zero outside the pattern. `reuse` is an earlier result of this compression that nobody
    /// else holds, or blocks from [`map_beside`]: zero outside the pattern too, so writing the
    /// pattern's entries into it is all a call needs, without new pages or zeroing.
    fn dense<T: Copy + Default + Zero + Send + Sync + 'static>(
        &self,
        products: &[ArrayViewD<T>],
        shapes: &[Vec<usize>],
        reuse: Vec<ArrayD<T>>,
    ) -> Result<Vec<ArrayD<T>>> {
        let values = self.entries(products)?;
        let fits = reuse.len() == shapes.len().pow(2)
            && (reuse.iter().enumerate())
                .all(|(b, a)| a.shape() == block_shape(shapes, b) && a.is_standard_layout());
        let mut out = match fits {
            true => reuse,
            false => zero_blocks(shapes)?,
        };
        // On every thread when the blocks are large and their pages new: the first write to
        // each page faults it in, which threads overlap. Memory the allocator had (a previous
        // call's result, say) is mapped and zeroed already: setting a few entries per row
        // then takes less than waking a thread (rosen_n1024: 0.11 ms one thread, 0.21 ms two).
        let large = out.iter().map(ArrayD::len).sum::<usize>() >= PARALLEL_MIN;
        let new_pages = large && out.iter().any(|b| !b.as_slice().is_some_and(pool::mapped));
        let pieces = pieces(&mut out, self.pattern.sizes());
        let write = |piece| write_piece(&self.pattern, piece, |e| values[e]);
        match new_pages {
            true => pieces.into_par_iter().for_each(write),
            false => pieces.into_iter().for_each(write),
        }
        Ok(out)
    }

    /// The diagonal, one array per leaf (of the leaf's shape); zero where the pattern has no
    /// diagonal entry.
    fn diagonal<T: Copy + Default + Zero + Send + Sync + 'static>(
        &self,
        products: &[ArrayViewD<T>],
        shapes: &[Vec<usize>],
    ) -> Result<Vec<ArrayD<T>>> {
        let n = self.pattern.size();
        let pattern = &self.pattern;
        // Where entry (v, v), at `slot` in its row, is: a compressed value for a coloring, an
        // entry for a stencil.
        let values = match &self.reading {
            Reading::Colors { colors, .. } => self.gathered(products, *colors)?,
            Reading::Stencil { .. } => Cow::Owned(self.entries(products)?),
        };
        let at = |v: usize, slot: usize| match &self.reading {
            Reading::Colors { color, .. } => color[v] * n + v,
            Reading::Stencil { .. } => pattern.row_start[v] + slot,
        };
        let mut start = 0;
        shapes
            .iter()
            .zip(self.pattern.sizes())
            .map(|(shape, &len)| {
                let values = (start..start + len)
                    .map(|v| match pattern.row(v).binary_search(&v) {
                        Ok(slot) => values[at(v, slot)],
                        Err(_) => T::default(),
                    })
                    .collect();
                start += len;
                ArrayD::from_shape_vec(shape.as_slice(), values)
                    .map_err(|_| Error::shape("hessian diagonal", "a leaf's shape"))
            })
            .collect()
    }

    /// Recovers the Hessian from the products of the plan (for a coloring, one compressed
    /// product per differentiated leaf, shapes `[colors] ++ shapes[i]`; for a stencil, the
    /// coefficient arrays of each leaf, shapes `shapes[i]`): the dense blocks, the pattern's
    /// entries (one 1-D array), or the diagonal per leaf. Dense blocks are written into
    /// `reuse` when it is this compression's earlier dense result (see [`Compression::dense`]).
    pub(crate) fn decompress(
        &self,
        products: &[Arc<Data>],
        shapes: &[Vec<usize>],
        into: Recover,
        reuse: Vec<Data>,
    ) -> Result<Vec<Data>> {
        macro_rules! typed {
            ($variant:ident) => {{
                let arrays = products
                    .iter()
                    .map(|p| match &**p {
                        Data::$variant(a) => Ok(a),
                        other => Err(Error::dtype(
                            "sparse hessian",
                            "products of one dtype",
                            other.dtype(),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let arrays: Vec<_> = arrays.iter().map(|a| a.as_standard_layout()).collect();
                let refs: Vec<ArrayViewD<_>> = arrays.iter().map(|a| a.view()).collect();
                Ok(match into {
                    Recover::Dense => {
                        let reuse = reuse.into_iter().filter_map(|d| match d {
                            Data::$variant(a) => Some(a),
                            _ => None,
                        });
                        let blocks = self.dense(&refs, shapes, reuse.collect())?;
                        blocks.into_iter().map(Data::$variant).collect()
                    }
                    Recover::Entries => {
                        let values = self.entries(&refs)?;
                        let len = values.len();
                        vec![Data::$variant(
                            ArrayD::from_shape_vec(vec![len], values).expect("nnz values"),
                        )]
                    }
                    Recover::Diagonal => self
                        .diagonal(&refs, shapes)?
                        .into_iter()
                        .map(Data::$variant)
                        .collect(),
                })
            }};
        }
        match products.first().map(|p| p.dtype()) {
            Some(crate::DType::F64) | None => typed!(F64),
            Some(crate::DType::F32) => typed!(F32),
            Some(crate::DType::C128) => typed!(C128),
            Some(crate::DType::C64) => typed!(C64),
            Some(dtype @ (crate::DType::Bool | crate::DType::I64)) => Err(Error::dtype(
                "sparse hessian",
                "floating-point or complex products",
                dtype,
            )),
        }
    }
}

/// The shape of dense block `b` of leaves of `shapes`: `leaf i ++ leaf j`, `b = i k + j`.
fn block_shape(shapes: &[Vec<usize>], b: usize) -> Vec<usize> {
    let k = shapes.len();
    [shapes[b / k].as_slice(), &shapes[b % k]].concat()
}

/// Zero dense blocks for leaves of `shapes`, as new pages that the system maps and zeroes as
/// they are first written.
fn zero_blocks<T: Clone + Default>(shapes: &[Vec<usize>]) -> Result<Vec<ArrayD<T>>> {
    (0..shapes.len().pow(2))
        .map(|b| {
            let shape = block_shape(shapes, b);
            let len = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let len = len.ok_or_else(|| Error::shape("hessian", "a block's size overflows"))?;
            let values = crate::memory::try_filled("hessian", len, T::default())?;
            ArrayD::from_shape_vec(shape, values)
                .map_err(|_| Error::shape("sparse hessian", "a block's shape"))
        })
        .collect()
}

/// Rows of dense blocks written as one piece of work.
const PIECE_ROWS: usize = 64;

/// A piece of the dense blocks: the block, the first of its rows, and those rows.
type Piece<'a, T> = (usize, usize, &'a mut [T]);

/// The rows of dense blocks `out` (over leaves of `sizes` values) in pieces of [`PIECE_ROWS`].
fn pieces<'a, T>(out: &'a mut [ArrayD<T>], sizes: &[usize]) -> Vec<Piece<'a, T>> {
    let k = sizes.len();
    let mut pieces = Vec::new();
    for (b, block) in out.iter_mut().enumerate() {
        let width = sizes[b % k].max(1);
        let Some(block) = block.as_slice_mut() else {
            unreachable!("internal: dense blocks are in standard layout")
        };
        let rows = block.chunks_mut(width * PIECE_ROWS).enumerate();
        pieces.extend(rows.map(|(p, rows)| (b, p * PIECE_ROWS, rows)));
    }
    pieces
}

/// Writes `value(e)` at the pattern's entries `e` that fall in `piece`.
fn write_piece<T: Copy>(
    pattern: &SparsityPattern,
    (b, first, rows): Piece<'_, T>,
    value: impl Fn(usize) -> T,
) {
    let (sizes, starts) = (pattern.sizes(), pattern.starts());
    let k = sizes.len();
    let (i, j) = (b / k, b % k);
    let columns = starts[j]..starts[j] + sizes[j];
    for (a, row) in rows.chunks_mut(sizes[j].max(1)).enumerate() {
        let r = starts[i] + first + a;
        for e in pattern.row_start[r]..pattern.row_start[r + 1] {
            let c = pattern.cols[e];
            if columns.contains(&c) {
                row[c - columns.start] = value(e);
            }
        }
    }
}

/// Zero dense blocks of a Hessian over leaves of `shapes`, their pages mapped by another
/// thread while this one runs `detect` and then `build` on the pattern detected (`None` when
/// there is none): a large Hessian's pages (one per row of a band) take longer to map than
/// its pattern and plan take to find and build; [`Compression::dense`] then writes a call's
/// entries into them. Until the pattern is known, the other thread maps the pages of the
/// diagonal, which is in a Hessian's pattern as a rule; then those of the pattern's
/// entries, and this thread helps it once `build` is done, when `wanted` says its result uses
/// the blocks (else both stop). The blocks are `None` when they cannot be allocated or are
/// not wanted.
pub(crate) fn map_beside<R>(
    shapes: &[Vec<usize>],
    dtype: DType,
    detect: impl FnOnce() -> Result<Option<SparsityPattern>>,
    build: impl FnOnce(&Arc<SparsityPattern>) -> R,
    wanted: impl FnOnce(&R) -> bool,
) -> Result<Option<(R, Option<Vec<Data>>)>> {
    fn map<T: Element + Copy + Default + Zero + Send + Sync, R>(
        shapes: &[Vec<usize>],
        detect: impl FnOnce() -> Result<Option<SparsityPattern>>,
        build: impl FnOnce(&Arc<SparsityPattern>) -> R,
        wanted: impl FnOnce(&R) -> bool,
    ) -> Result<Option<(R, Option<Vec<Data>>)>> {
        let Ok(mut blocks) = zero_blocks::<T>(shapes) else {
            return unmapped(detect, build);
        };
        let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        let detected = AtomicBool::new(false);
        // Jobs of the pool, whose threads are started already (a new thread takes up to half
        // a millisecond to start here); when they are all busy, this thread maps every page
        // after `build`.
        let pattern = rayon::in_place_scope(|scope| {
            scope.spawn(|_| map_diagonals(&mut blocks, &sizes, &detected));
            let pattern = detect();
            detected.store(true, Ordering::Relaxed);
            pattern
        })?;
        let Some(pattern) = pattern else {
            return Ok(None);
        };
        let pattern = Arc::new(pattern);
        let claims = Mutex::new(pieces(&mut blocks, &sizes).into_iter());
        let claim = || claims.lock().unwrap_or_else(PoisonError::into_inner);
        let map = || loop {
            // The lock is held while claiming only, not while writing.
            let next = claim().next();
            let Some(piece) = next else { break };
            write_piece(&pattern, piece, |_| T::zero());
        };
        let (result, used) = rayon::in_place_scope(|scope| {
            scope.spawn(|_| map());
            let result = build(&pattern);
            let used = wanted(&result);
            match used {
                true => map(),
                false => claim().by_ref().for_each(drop),
            }
            (result, used)
        });
        drop(claims);
        let blocks = used.then(|| blocks.into_iter().map(Data::from).collect());
        Ok(Some((result, blocks)))
    }
    match dtype {
        DType::F64 => map::<f64, R>(shapes, detect, build, wanted),
        DType::F32 => map::<f32, R>(shapes, detect, build, wanted),
        DType::C128 => map::<Complex64, R>(shapes, detect, build, wanted),
        DType::C64 => map::<Complex32, R>(shapes, detect, build, wanted),
        DType::Bool | DType::I64 => unmapped(detect, build),
    }
}

/// [`map_beside`] without blocks: `build` on the pattern `detect` finds.
pub(crate) fn unmapped<R>(
    detect: impl FnOnce() -> Result<Option<SparsityPattern>>,
    build: impl FnOnce(&Arc<SparsityPattern>) -> R,
) -> Result<Option<(R, Option<Vec<Data>>)>> {
    Ok(detect()?.map(|pattern| (build(&Arc::new(pattern)), None)))
}

/// Writes zeros on the diagonals of the diagonal blocks (over leaves of `sizes` values), row
/// after row, until `stop`: mapping their pages, most of a banded Hessian's.
fn map_diagonals<T: Zero + Copy>(blocks: &mut [ArrayD<T>], sizes: &[usize], stop: &AtomicBool) {
    let k = sizes.len();
    for (i, &n) in sizes.iter().enumerate() {
        let Some(block) = blocks[i * k + i].as_slice_mut() else {
            continue;
        };
        for r in 0..n {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            block[r * n + r] = T::zero();
        }
    }
}

/// A plan's own outputs, and the Hessian recovered from its products (as
/// [`Compression::decompress`] recovers it).
pub(crate) type Recovered = (Vec<Arc<Data>>, Vec<Data>);

/// What [`Compression::decompress`] recovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recover {
    /// The dense blocks.
    Dense,
    /// The pattern's entries.
    Entries,
    /// The diagonal.
    Diagonal,
}

/// Rows `ks` of `arrays` side by side: `out[j * arrays.len() + t] = arrays[t][ks.start + j]`.
/// Written out for the common numbers of arrays, so the loop does not index `arrays`.
fn interleave<T: Copy, S: Slot<T>>(arrays: &[&[T]], ks: Range<usize>, out: &mut [S]) {
    match arrays {
        [a] => {
            for (o, &x) in out.iter_mut().zip(&a[ks]) {
                o.set(x);
            }
        }
        [a, b] => {
            let pairs = a[ks.clone()].iter().zip(&b[ks]);
            for (o, (&x, &y)) in out.chunks_exact_mut(2).zip(pairs) {
                o[0].set(x);
                o[1].set(y);
            }
        }
        [a, b, c] => {
            let triples = a[ks.clone()].iter().zip(&b[ks.clone()]).zip(&c[ks]);
            for (o, ((&x, &y), &z)) in out.chunks_exact_mut(3).zip(triples) {
                o[0].set(x);
                o[1].set(y);
                o[2].set(z);
            }
        }
        _ => {
            for (o, k) in out.chunks_exact_mut(arrays.len().max(1)).zip(ks) {
                for (slot, a) in o.iter_mut().zip(arrays) {
                    slot.set(a[k]);
                }
            }
        }
    }
}
