//! Matrix product over the last two axes, broadcasting the leading (batch) axes.
//!
//! Bilinear: `d(A B) = dA B + A dB`, and each operand's transpose is a product with the other.

use std::fmt;

use ndarray::{ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, Axis, CowArray, IxDyn, ShapeBuilder};
use rayon::prelude::*;

use super::{
    Dependence, Primal, Rules, Tangent, UnitRule, Units, arity, broadcast_offset, broadcast_shapes,
    concat_dims, cotangents, not_linear, one,
};
use crate::error::{Error, Result};
use crate::simd::multiversion;
use crate::storage::{Aval, Data, pool};
use crate::tensor::Tensor;
use crate::unit::Unit;

/// The matrix product over the last two axes, with NumPy broadcasting of the leading ones.
///
/// ```
/// use brainstate::primitives::{MatMul, Prim};
/// assert_eq!(Prim::MatMul(MatMul).to_string(), "matmul");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatMul;

impl fmt::Display for MatMul {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Swaps the last two axes.
fn mt(x: &Tensor) -> Result<Tensor> {
    let r = x.ndim()?;
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    Ok(x.permute(&perm))
}

fn matmul(a: &Tensor, b: &Tensor) -> Tensor {
    Tensor::apply(MatMul, &[a, b])
}

impl Rules for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn infer(&self, ins: &[Aval]) -> Result<Vec<Aval>> {
        arity(self.name(), ins, 2)?;
        let (a, b) = (&ins[0], &ins[1]);

        if a.shape.len() < 2
            || b.shape.len() < 2
            || a.shape[a.shape.len() - 1] != b.shape[b.shape.len() - 2]
        {
            return Err(Error::mismatch("matmul", &a.shape, &b.shape));
        }
        if a.dtype != b.dtype || !a.dtype.is_inexact() {
            return Err(Error::dtype(
                "matmul",
                format!(
                    "needs two floating-point operands of one dtype, the first is {}",
                    a.dtype
                ),
                b.dtype,
            ));
        }
        let (ra, rb) = (a.shape.len(), b.shape.len());
        let mut shape = broadcast_shapes("matmul", &a.shape[..ra - 2], &b.shape[..rb - 2])?;
        shape.push(a.shape[ra - 2]);
        shape.push(b.shape[rb - 1]);
        Ok(one(Aval::new(&shape, a.dtype)))
    }

    fn eval(&self, ins: &[&Data]) -> Result<Vec<Data>> {
        let (a, b) = (ins[0], ins[1]);
        Ok(one(match (a, b) {
            (Data::F64(a), Data::F64(b)) => Data::F64(batched_matmul(a.view(), b.view())),
            (Data::F32(a), Data::F32(b)) => Data::F32(batched_matmul(a.view(), b.view())),
            (Data::C128(a), Data::C128(b)) => Data::C128(batched_matmul(a.view(), b.view())),
            (Data::C64(a), Data::C64(b)) => Data::C64(batched_matmul(a.view(), b.view())),
            _ => unreachable!("dtypes checked by infer"),
        }))
    }

    fn jvp(
        &self,
        x: &[Tensor],
        t: &[Tangent],
        outs: &[Tensor],
        batch: &[usize],
    ) -> Result<Vec<Tangent>> {
        // Pad operands and tangents to the output's rank (tangents after their batch axes) so
        // that the batch axes of the tangent never meet an operand's own leading axes.
        let out = outs[0].aval()?;
        let rank = batch.len() + out.shape.len();
        let primal = |x: &Tensor| -> Result<Tensor> {
            let own = x.shape()?;
            Ok(x.reshape_exact(&concat_dims(&vec![1; rank - own.len()], own)))
        };
        let tangent = |t: &Tensor, x: &Tensor| -> Result<Tensor> {
            let own = x.shape()?;
            let ones = vec![1; out.shape.len() - own.len()];
            Ok(t.reshape_exact(&concat_dims(&concat_dims(batch, &ones), own)))
        };
        let da = match t[0].value() {
            Some(ta) => Some(matmul(&tangent(ta, &x[0])?, &primal(&x[1])?)),
            None => None,
        };
        let db = match t[1].value() {
            Some(tb) => Some(matmul(&primal(&x[0])?, &tangent(tb, &x[1])?)),
            None => None,
        };
        let sum = match (da, db) {
            (Some(da), Some(db)) => Some(da + db),
            (da, db) => da.or(db),
        };
        Ok(one(Tangent::or_zero(sum, batch, &out)))
    }

    fn transpose(&self, cts: &[Tensor], x: &[Primal], batch: &[usize]) -> Result<Vec<Tangent>> {
        let ct = &cts[0];
        match (x[0].known(), x[1].known()) {
            (None, Some(b)) => {
                let bt = mt(b)?;
                cotangents(x, batch, &|_| matmul(ct, &bt))
            }
            (Some(a), None) => {
                let at = mt(a)?;
                cotangents(x, batch, &|_| matmul(&at, ct))
            }
            _ => Err(not_linear(self.name())),
        }
    }

    fn units(&self, units: &[Option<Unit>], _inputs: &[&Tensor]) -> Result<UnitRule> {
        let u = Units::new(self.name(), units);
        Ok(u.keep(Some(u.of(0).checked_mul(&u.of(1))?)))
    }

    fn dependence(&self, _ins: &[Aval]) -> Dependence {
        Dependence::MatMul
    }
}

/// `a @ b` over the last two axes, batch axes broadcast, into a pooled buffer (see
/// [`matmul_into`]).
pub(crate) fn batched_matmul<T>(a: ArrayViewD<'_, T>, b: ArrayViewD<'_, T>) -> ArrayD<T>
where
    T: ndarray::LinalgScalar + Send + Sync + PartialEq,
{
    let (ra, rb) = (a.ndim(), b.ndim());
    let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
    let batch = broadcast_shapes("matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])
        .expect("checked by infer");
    let shape = concat_dims(&batch, &[m, n]);
    if k == 1 && !(a.is_standard_layout() && b.is_standard_layout()) {
        return super::elementwise::zip(&a, &b, &shape, |x, y| x * y);
    }
    // `matmul_into` writes every value: a buffer from the pool is not zeroed first.
    let mut out = pool::take_to_overwrite_any(shape.iter().product());
    matmul_into(a, b, &mut out);
    ArrayD::from_shape_vec(shape, out).expect("count * m * n values")
}

/// `a @ b` over the last two axes, batch axes broadcast, written into `out` (row-major, of
/// as many elements as the result). The batch is folded into one matrix product where the
/// layouts allow it without copies: a batch of `a` against one `b` is one
/// `[batch * m, k] @ [k, n]` product, and one `a` against a batch of column vectors of `b`
/// is one `[m, k] @ [k, batch]` product written through strides; other batches take one
/// product each. Operands of any layout are read in place.
pub(crate) fn matmul_into<T>(a: ArrayViewD<'_, T>, b: ArrayViewD<'_, T>, out: &mut [T])
where
    T: ndarray::LinalgScalar + Send + Sync + PartialEq,
{
    let (ra, rb) = (a.ndim(), b.ndim());
    let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
    let (a_batch, b_batch) = (&a.shape()[..ra - 2], &b.shape()[..rb - 2]);
    let batch = broadcast_shapes("matmul", a_batch, b_batch).expect("checked by infer");
    let count: usize = batch.iter().product();
    let (ca, cb): (usize, usize) = (a_batch.iter().product(), b_batch.iter().product());
    if out.is_empty() || k == 0 {
        out.fill(T::zero());
        return;
    }
    let (sa, sb) = (strides(a.strides()), strides(b.strides()));
    if let (Some(a), Some(b)) = (a.as_slice(), b.as_slice()) {
        if k == 1 {
            // An outer product per batch element: a column of `m` values times a row of
            // `n`, written row after row, with no matrix kernel's packing overhead.
            for (i, out) in out.chunks_exact_mut(m * n).enumerate() {
                let ai = broadcast_offset(i, &batch, a_batch, &sa);
                let bi = broadcast_offset(i, &batch, b_batch, &sb);
                outer(&a[ai..ai + m], &b[bi..bi + n], out);
            }
            return;
        }
        if cb == 1 && ca == count {
            // [count * m, k] @ [k, n]
            let c = ArrayViewMut2::from_shape((count * m, n), out).expect("in bounds");
            product(view(a, count * m, k, (k, 1)), view(b, k, n, (n, 1)), c);
            return;
        }
        if ca == 1 && cb == count && count > 1 {
            // One `a` against a batch of one-hot matrices (a sweep's chunk of the identity
            // basis, as in `x @ dW`): each product is a column of `a` put into zeros. Only
            // for finite `a`, whose products with the zeros are zeros.
            if let Some(hot) =
                one_hot(b, k * n).filter(|_| a.iter().all(|&x| x * T::zero() == T::zero()))
            {
                out.fill(T::zero());
                for (out, hot) in out.chunks_exact_mut(m * n).zip(hot) {
                    if let Some(at) = hot {
                        let (row, column) = (at / n, at % n);
                        for r in 0..m {
                            out[r * n + column] = a[r * k + row];
                        }
                    }
                }
                return;
            }
        }
        if ca == 1 && cb == count && n == 1 {
            // [m, k] @ [k, count]: the columns of b, and of the result, are strided.
            let c = ArrayViewMut2::from_shape((m, count).strides((1, m)), out).expect("in bounds");
            product(view(a, m, k, (k, 1)), view(b, k, count, (1, k)), c);
            return;
        }
    }
    // One product per batch element, each operand read in place through its own strides (a
    // transposed operand is a column-major matrix to the kernel, not a copy).
    let (a, b) = (in_memory_order(&a), in_memory_order(&b));
    let (sa, sb) = (strides(a.strides()), strides(b.strides()));
    let (a_data, b_data) = (memory(&a), memory(&b));
    let small = Small::for_product(
        (m, k, n),
        (sa[ra - 2], sa[ra - 1]),
        (sb[rb - 2], sb[rb - 1]),
    )
    .filter(|_| is_real::<T>());
    let one_product = |(i, c): (usize, &mut [T])| {
        let a0 = broadcast_offset(i, &batch, a_batch, &sa);
        let b0 = broadcast_offset(i, &batch, b_batch, &sb);
        let (a, b) = (&a_data[a0..], &b_data[b0..]);
        if let Some(small) = small {
            small.run(a, b, c);
            return;
        }
        let c = ArrayViewMut2::from_shape((m, n), c).expect("in bounds");
        product(
            view(a, m, k, (sa[ra - 2], sa[ra - 1])),
            view(b, k, n, (sb[rb - 2], sb[rb - 1])),
            c,
        );
    };
    if count * m * k * n >= 2 * PARALLEL_MIN {
        out.par_chunks_mut(m * n).enumerate().for_each(one_product);
    } else {
        out.chunks_mut(m * n).enumerate().for_each(one_product);
    }
}

/// For the matrices of `len` values one after another in `b`: where each one's single one is
/// (`None` for a matrix of zeros), when every value is zero or one and no matrix has two
/// ones; else `None`, as soon as a value breaks that.
fn one_hot<T: ndarray::LinalgScalar + PartialEq>(
    b: &[T],
    len: usize,
) -> Option<Vec<Option<usize>>> {
    b.chunks_exact(len.max(1))
        .map(|item| {
            let mut hot = None;
            for (p, &v) in item.iter().enumerate() {
                if v == T::zero() {
                    continue;
                }
                if v != T::one() || hot.is_some() {
                    return None;
                }
                hot = Some(p);
            }
            Some(hot)
        })
        .collect()
}

/// `total += a^T @ b` for row-major `a` (`[rows, x]`), `b` (`[rows, y]`) and `total`
/// (`shape`, `[x, y]`): a block of the steps of a sum of products over a loop's steps.
pub(crate) fn add_transposed_product(a: &[f64], b: &[f64], shape: [usize; 2], total: &mut [f64]) {
    let [x, y] = shape;
    let rows = (a.len().checked_div(x)).unwrap_or_else(|| b.len() / y.max(1));
    if rows == 0 || total.is_empty() {
        return;
    }
    let a = view(a, rows, x, (x, 1));
    let b = view(b, rows, y, (y, 1));
    let c = ArrayViewMut2::from_shape((x, y), total).expect("x * y values");
    kernel(a.t(), b, c, true);
}

multiversion! {
    /// Writes the outer product of `column` and `row` into `out`, row after row.
    fn outer<T: ndarray::LinalgScalar>(column: &[T], row: &[T], out: &mut [T]) {
        for (dst, &x) in out.chunks_exact_mut(row.len().max(1)).zip(column) {
            for (d, &y) in dst.iter_mut().zip(row) {
                *d = x * y;
            }
        }
    }
}

/// Whether `T` is `f64` or `f32`, whose small products [`Small`] computes faster than the
/// matrix kernel (complex ones stay with the kernel's vectorised complex arithmetic).
fn is_real<T: 'static>() -> bool {
    use std::any::TypeId;
    [TypeId::of::<f64>(), TypeId::of::<f32>()].contains(&TypeId::of::<T>())
}

/// Products of a batch with at most this many multiply-adds each take [`Small`]: below it
/// the matrix kernel's fixed cost per call (about 0.3 µs) outweighs its faster inner loop.
const SMALL_PRODUCT: usize = 1 << 13;

/// One small product `c = a @ b` (`c` row-major, `m x n`) computed in registers: blocks of
/// four rows by [`LANES`] columns of `c` summed over `k` at once, reading rows of `b` where
/// they are contiguous. When only the columns of `a` are (a transposed operand) and `c` is a
/// column, it computes `c^T = b^T @ a^T` the same way. A sweep's tangent batch makes hundreds
/// of such products per call (`[8, 32] @ [32, 16]` in mlp_177), one matrix-kernel call each.
#[derive(Clone, Copy, Debug)]
struct Small {
    /// `m, k, n` of the product as computed (of the transposed one when `swapped`).
    shape: (usize, usize, usize),
    /// Strides of the left operand as computed (rows, columns).
    left: (usize, usize),
    /// Row stride of the right operand as computed (its columns are contiguous).
    right: usize,
    /// Whether the product computed is `b^T @ a^T`.
    swapped: bool,
}

impl Small {
    /// How to compute `a @ b` of `shape` with operands of strides `sa` and `sb`, when it is
    /// small and an operand's layout allows it.
    fn for_product(
        (m, k, n): (usize, usize, usize),
        sa: (usize, usize),
        sb: (usize, usize),
    ) -> Option<Small> {
        if m * k * n > SMALL_PRODUCT {
            return None;
        }
        let rows_of_b = sb.1 == 1 || n == 1;
        let columns_of_a = sa.0 == 1 || m == 1;
        // A column result of a transposed `a` is summed a vector of `m` at a time swapped,
        // one value at a time as it is.
        if rows_of_b && (n >= LANES || !(columns_of_a && n == 1)) {
            return Some(Small {
                shape: (m, k, n),
                left: sa,
                right: sb.0,
                swapped: false,
            });
        }
        (columns_of_a && n == 1).then_some(Small {
            shape: (1, k, m),
            left: (sb.1, sb.0),
            right: sa.1,
            swapped: true,
        })
    }

    /// `c = a @ b`, `a` and `b` read from their first elements through the strides given.
    fn run<T: ndarray::LinalgScalar>(&self, a: &[T], b: &[T], c: &mut [T]) {
        let (left, right) = if self.swapped { (b, a) } else { (a, b) };
        small_product(left, self.left, right, self.right, c, self.shape);
    }
}

/// Columns of `c` a block of [`Small`] sums at once: a vector register of `f64` with AVX-512.
const LANES: usize = 8;

multiversion! {
    /// `c = a @ b` for `c` row-major `m x n` and rows of `b` contiguous, `a` read through
    /// `sa` and rows of `b` `sb` apart: see [`Small`].
    fn small_product<T: ndarray::LinalgScalar>(
        a: &[T],
        sa: (usize, usize),
        b: &[T],
        sb: usize,
        c: &mut [T],
        shape: (usize, usize, usize),
    ) {
        let (m, _, n) = shape;
        let (rows, columns) = (m / 4 * 4, n / LANES * LANES);
        for j in (0..columns).step_by(LANES) {
            for i in (0..rows).step_by(4) {
                block::<T, 4, LANES>(a, sa, b, sb, c, shape, (i, j));
            }
            for i in rows..m {
                block::<T, 1, LANES>(a, sa, b, sb, c, shape, (i, j));
            }
        }
        for j in columns..n {
            for i in (0..rows).step_by(4) {
                block::<T, 4, 1>(a, sa, b, sb, c, shape, (i, j));
            }
            for i in rows..m {
                block::<T, 1, 1>(a, sa, b, sb, c, shape, (i, j));
            }
        }
    }
}

/// Rows `i..i + R` and columns `j..j + W` of `c = a @ b` (see [`small_product`]), summed in
/// `R x W` values that stay in registers.
#[inline(always)]
fn block<T: ndarray::LinalgScalar, const R: usize, const W: usize>(
    a: &[T],
    sa: (usize, usize),
    b: &[T],
    sb: usize,
    c: &mut [T],
    (_, k, n): (usize, usize, usize),
    (i, j): (usize, usize),
) {
    let mut sums = [[T::zero(); W]; R];
    for p in 0..k {
        let row: &[T; W] = (b[p * sb + j..][..W]).try_into().expect("W values");
        for (r, sums) in sums.iter_mut().enumerate() {
            let x = a[(i + r) * sa.0 + p * sa.1];
            for (sum, &y) in sums.iter_mut().zip(row) {
                *sum = *sum + x * y;
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        c[(i + r) * n + j..][..W].copy_from_slice(sums);
    }
}

/// `x` itself when its elements are one block of memory with non-negative strides (standard
/// layouts and their permutations, as plans hand operands over), else a standard copy.
fn in_memory_order<'a, T: Clone>(x: &ArrayViewD<'a, T>) -> CowArray<'a, T, IxDyn> {
    if x.strides().iter().all(|&s| s >= 0) && x.as_slice_memory_order().is_some() {
        CowArray::from(x.clone())
    } else {
        CowArray::from(x.as_standard_layout().into_owned())
    }
}

/// Non-negative strides (of an array [`in_memory_order`]) as offsets.
fn strides(strides: &[isize]) -> Vec<usize> {
    strides.iter().map(|&s| s as usize).collect()
}

/// The memory of an array [`in_memory_order`], from its first element.
fn memory<'a, T>(x: &'a CowArray<'_, T, IxDyn>) -> &'a [T] {
    x.as_slice_memory_order().expect("in memory order")
}

/// A `rows x cols` matrix read from `data` through `strides`.
fn view<T>(data: &[T], rows: usize, cols: usize, strides: (usize, usize)) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((rows, cols).strides(strides), data).expect("in bounds")
}

/// Products (and batches of products) are shared among the threads in parts of at least
/// this many multiply-adds (50-100 µs of work on the suite's machine): smaller parts gain
/// less than waking a thread (about 20 µs) and packing shared operands once more costs.
const PARALLEL_MIN: usize = 1 << 21;

/// `c = a @ b`; a matrix-vector product of short contiguous rows goes through
/// [`short_rows`], faster there than the matrix kernel.
fn product<T>(a: ArrayView2<T>, b: ArrayView2<T>, mut c: ArrayViewMut2<T>)
where
    T: ndarray::LinalgScalar + Send + Sync,
{
    if b.ncols() != 1 {
        let work = a.nrows() * a.ncols() * b.ncols();
        let parts = (work / PARALLEL_MIN).clamp(1, rayon::current_num_threads());
        split_product(a, b, c, parts);
        return;
    }
    if a.ncols() < SHORT_ROW {
        let (x, mut y) = (b.column(0), c.column_mut(0));
        if let (Some(rows), Some(x), Some(y)) = (a.as_slice(), x.as_slice(), y.as_slice_mut()) {
            short_rows(rows, x, y);
            return;
        }
    }
    kernel(a, b, c, false);
}

/// `c = a @ b` in `parts` products run side by side, each of a block of rows or columns of
/// `c` (whichever dimension is longer, so that each part keeps a long side for the kernel).
fn split_product<T>(a: ArrayView2<T>, b: ArrayView2<T>, c: ArrayViewMut2<T>, parts: usize)
where
    T: ndarray::LinalgScalar + Send + Sync,
{
    if parts < 2 {
        kernel(a, b, c, false);
        return;
    }
    let first = parts / 2;
    let by_rows = c.nrows() >= c.ncols();
    let axis = if by_rows { Axis(0) } else { Axis(1) };
    let at = c.len_of(axis) * first / parts;
    let (c0, c1) = c.split_at(axis, at);
    let ((a0, a1), (b0, b1)) = if by_rows {
        (a.split_at(Axis(0), at), (b.view(), b))
    } else {
        ((a.view(), a), b.split_at(Axis(1), at))
    };
    rayon::join(
        || split_product(a0, b0, c0, first),
        || split_product(a1, b1, c1, parts - first),
    );
}

/// `c = a @ b`, or `c += a @ b` when `accumulate`, by the `gemm` crate's kernels, each
/// operand read in place through its own strides. Its small-matrix kernels skip the packing
/// that dominates the small products of a tangent batch (a layer of 8-32 units times a few
/// hundred directions).
fn kernel<T: ndarray::LinalgScalar>(
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    mut c: ArrayViewMut2<T>,
    accumulate: bool,
) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return;
    }
    let (sa, sb, sc) = (a.strides(), b.strides(), c.strides());
    let (sc0, sc1) = (sc[0], sc[1]);
    // SAFETY: each pointer is read (or written) only at the offsets of its view's own shape
    // and strides, and `c`, borrowed mutably, overlaps neither operand. `T` is one of the
    // four dtypes `gemm` dispatches on (f32, f64 and their complex numbers): matmul's
    // `infer` admits no other.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            sc1,
            sc0,
            accumulate,
            a.as_ptr(),
            sa[1],
            sa[0],
            b.as_ptr(),
            sb[1],
            sb[0],
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Rows shorter than this take [`short_rows`] (scratch micro-benchmark, µs per product:
/// 4096 x 3 rows 2.8 against gemm's 7.8, 1000 x 10 1.9 against 2.2; 256 x 16 0.79 against
/// 0.68).
const SHORT_ROW: usize = 16;

/// `y = a @ x` for a row-major matrix `a` (`rows`, of `x.len()` entries each): four rows at
/// a time, so that four independent sums overlap; a dot product per row pays a setup that
/// outweighs a row of a few entries (a tangent basis times a state vector, say).
fn short_rows<T: ndarray::LinalgScalar>(rows: &[T], x: &[T], y: &mut [T]) {
    let k = x.len();
    if k == 0 {
        y.fill(T::zero());
        return;
    }
    let mut blocks = rows.chunks_exact(4 * k);
    let mut outs = y.chunks_exact_mut(4);
    for (block, out) in (&mut blocks).zip(&mut outs) {
        let (r0, rest) = block.split_at(k);
        let (r1, rest) = rest.split_at(k);
        let (r2, r3) = rest.split_at(k);
        let mut sums = [T::zero(); 4];
        for ((((&a0, &a1), &a2), &a3), &xj) in r0.iter().zip(r1).zip(r2).zip(r3).zip(x) {
            sums[0] = sums[0] + a0 * xj;
            sums[1] = sums[1] + a1 * xj;
            sums[2] = sums[2] + a2 * xj;
            sums[3] = sums[3] + a3 * xj;
        }
        out.copy_from_slice(&sums);
    }
    for (row, out) in blocks
        .remainder()
        .chunks_exact(k)
        .zip(outs.into_remainder())
    {
        *out = row.iter().zip(x).fold(T::zero(), |s, (&a, &b)| s + a * b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_a_batch_of_one_hot_matrices_put_columns_into_zeros() {
        // `x @ basis` for a chunk of the identity basis of a [3, 4] input, the last two
        // directions past its end (zero); then the same with an infinity in `x`, which the
        // matrix kernel multiplies by the zeros (NaN), as JAX does.
        let x = ndarray::Array::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f64 - 4.5);
        let basis = ndarray::Array::from_shape_fn((6, 3, 4), |(d, i, j)| {
            f64::from(u8::from(d + 8 == i * 4 + j))
        });
        let slow = |x: &ndarray::Array2<f64>| {
            let mut want = ndarray::Array3::<f64>::zeros((6, 5, 4));
            for d in 0..6 {
                let product = x.dot(&basis.index_axis(ndarray::Axis(0), d));
                want.index_axis_mut(ndarray::Axis(0), d).assign(&product);
            }
            want.into_dyn()
        };
        let got = batched_matmul(
            x.view()
                .into_shape_with_order((1, 5, 3))
                .unwrap()
                .into_dyn(),
            basis.view().into_dyn(),
        );
        assert_eq!(got, slow(&x));
        assert_eq!(got[[1, 2, 1]], x[[2, 2]]); // direction 9: element (2, 1)
        let mut infinite = x.clone();
        infinite[[0, 0]] = f64::INFINITY;
        let got = batched_matmul(
            infinite
                .view()
                .into_shape_with_order((1, 5, 3))
                .unwrap()
                .into_dyn(),
            basis.view().into_dyn(),
        );
        let want = slow(&infinite);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(g, w)| g == w || (g.is_nan() && w.is_nan()))
        );
        assert!(got[[0, 0, 1]].is_nan()); // 0 * inf
    }

    #[test]
    fn batched_products_broadcast_their_leading_axes() {
        let a = ndarray::Array::from_shape_fn((2, 1, 2, 3), |(b, _, i, j)| (b + i * 3 + j) as f64);
        let b = ndarray::Array::from_shape_fn((3, 3, 2), |(c, i, j)| (c * 6 + i * 2 + j) as f64);
        let out = batched_matmul(a.view().into_dyn(), b.view().into_dyn());
        assert_eq!(out.shape(), &[2, 3, 2, 2]);
        for (bb, c) in [(0, 0), (1, 2), (0, 1)] {
            let x: ndarray::ArrayView2<f64> = a.slice(ndarray::s![bb, 0, .., ..]);
            let y: ndarray::ArrayView2<f64> = b.slice(ndarray::s![c, .., ..]);
            let want = x.dot(&y);
            assert_eq!(out.slice(ndarray::s![bb, c, .., ..]), want);
        }
    }
    #[test]
    fn every_value_of_a_product_is_written() {
        use ndarray::{Array, Dimension, IxDyn};
        // (a's shape, b's shape): an outer product, a batch folded into one product, a batch
        // of columns through strides, one product per batch element, matrix-vector products.
        let cases: [(&[usize], &[usize]); 6] = [
            (&[3, 4, 1], &[3, 1, 5]),
            (&[4, 3, 5], &[5, 2]),
            (&[3, 5], &[8, 5, 1]),
            (&[2, 3, 4], &[2, 4, 6]),
            (&[40, 3], &[3, 1]),
            (&[20, 40], &[40, 1]),
        ];
        for (sa, sb) in cases {
            let a = Array::from_shape_fn(IxDyn(sa), |i| {
                (i.slice().iter().sum::<usize>() as f64).sin()
            });
            let b = Array::from_shape_fn(IxDyn(sb), |i| {
                (i.slice().iter().sum::<usize>() as f64).cos()
            });
            let clean = batched_matmul(a.view(), b.view());
            // The next buffer of that size from the pool holds NaNs (every case is large
            // enough for the pool).
            let mut poisoned = pool::take_to_overwrite(clean.len());
            poisoned.fill(f64::NAN);
            pool::give(poisoned);
            assert_eq!(batched_matmul(a.view(), b.view()), clean, "{sa:?} @ {sb:?}");
            assert!(clean.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn folded_batches_agree_with_one_product_per_matrix() {
        use ndarray::{Array, Axis, s};
        // a batch of `a` against one `b`: one [batch * m, k] @ [k, n] product
        let a = Array::from_shape_fn((4, 3, 5), |(b, i, j)| (b * 15 + i * 5 + j) as f64 - 20.0);
        let b = Array::from_shape_fn((5, 2), |(i, j)| (i * 2 + j) as f64 * 0.5);
        let out = batched_matmul(a.view().into_dyn(), b.view().into_dyn());
        for (i, x) in a.axis_iter(Axis(0)).enumerate() {
            assert_eq!(out.slice(s![i, .., ..]), x.dot(&b));
        }
        // one `a` against a batch of columns: one [m, k] @ [k, batch] product through strides
        let a = Array::from_shape_fn((3, 5), |(i, j)| (i * 5 + j) as f64 - 7.0);
        let b = Array::from_shape_fn((4, 5, 1), |(b, i, _)| (b * 5 + i) as f64 * 0.25);
        let out = batched_matmul(a.view().into_dyn(), b.view().into_dyn());
        assert_eq!(out.shape(), &[4, 3, 1]);
        for (i, y) in b.axis_iter(Axis(0)).enumerate() {
            assert_eq!(out.slice(s![i, .., ..]), a.dot(&y));
        }
    }

    #[test]
    fn products_shared_among_threads_agree_with_one_product() {
        use ndarray::{Array, Array2, s};
        // split by rows (tall), by columns (wide), into uneven parts
        for (m, k, n, parts) in [(37, 20, 9, 2), (5, 30, 41, 3), (16, 8, 16, 4)] {
            let a = Array::from_shape_fn((m, k), |(i, j)| ((i * k + j) as f64 * 0.37).sin());
            let b = Array::from_shape_fn((k, n), |(i, j)| ((i * n + j) as f64 * 0.11).cos());
            let mut c = Array2::from_elem((m, n), f64::NAN);
            split_product(a.view(), b.view(), c.view_mut(), parts);
            for ((i, j), got) in c.indexed_iter() {
                let want = a.row(i).dot(&b.column(j));
                assert!(
                    (got - want).abs() <= 1e-12,
                    "{m}x{k}x{n}/{parts}: {got} != {want}"
                );
            }
        }
        // a batch large enough to run its products side by side
        let a = Array::from_shape_fn((8, 64, 128), |(b, i, j)| ((b + i * 3 + j) as f64).sin());
        let b = Array::from_shape_fn((8, 128, 64), |(b, i, j)| ((b * 2 + i + j) as f64).cos());
        const { assert!(8 * 64 * 128 * 64 >= 2 * PARALLEL_MIN) };
        let out = batched_matmul(a.view().into_dyn(), b.view().into_dyn());
        for i in 0..8 {
            let (x, y): (ndarray::ArrayView2<f64>, _) =
                (a.slice(s![i, .., ..]), b.slice(s![i, .., ..]));
            let want = x.dot(&y);
            assert_eq!(out.slice(s![i, .., ..]), want);
        }
    }

    /// `kernel` against a sum of products, for each dtype matmul admits, with operands read
    /// through transposed and strided layouts, overwriting and accumulating.
    #[test]
    fn the_kernel_agrees_with_sums_of_products_for_every_dtype_and_layout() {
        use ndarray::{Array2, s};
        use num_complex::Complex;
        fn check<T>(make: impl Fn(f64, f64) -> T, close: impl Fn(T, T) -> bool)
        where
            T: ndarray::LinalgScalar + std::fmt::Debug,
        {
            for (m, k, n) in [(1, 1, 1), (3, 5, 2), (32, 8, 16), (17, 33, 1), (1, 32, 16)] {
                let value = |i: usize, j: usize, w: f64| {
                    make((i as f64 * w + j as f64).sin(), (j as f64 * w).cos())
                };
                // `a` stored transposed, `b` every other column of a wider matrix
                let at = Array2::from_shape_fn((k, m), |(j, i)| value(i, j, 0.7));
                let wide = Array2::from_shape_fn((k, 2 * n), |(i, j)| value(i, j, 0.3));
                let (a, b) = (at.t(), wide.slice(s![.., ..;2]));
                let sum = |i: usize, j: usize| {
                    (0..k).fold(T::zero(), |acc, l| acc + a[[i, l]] * b[[l, j]])
                };
                let mut c = Array2::from_elem((m, n), make(f64::NAN, 0.0));
                kernel(a, b, c.view_mut(), false);
                let start = make(0.5, -1.0);
                let mut acc = Array2::from_elem((n, m), start);
                kernel(a, b, acc.view_mut().reversed_axes(), true);
                for ((i, j), &got) in c.indexed_iter() {
                    assert!(close(got, sum(i, j)), "{m}x{k}x{n} ({i}, {j}): {got:?}");
                    assert!(
                        close(acc[[j, i]], start + sum(i, j)),
                        "{m}x{k}x{n} accumulated"
                    );
                }
            }
        }
        check(|re, _| re, |x: f64, y| (x - y).abs() <= 1e-12);
        check(|re, _| re as f32, |x: f32, y| (x - y).abs() <= 1e-4);
        check(Complex::new, |x: Complex<f64>, y| (x - y).norm() <= 1e-12);
        check(
            |re, im| Complex::new(re as f32, im as f32),
            |x: Complex<f32>, y| (x - y).norm() <= 1e-4,
        );
    }

    /// Batches of small products, through [`Small`] where the layouts allow it (rows of `b`,
    /// or a column result of a transposed `a`) and the matrix kernel where not, against sums
    /// of products: remainders of the row and column blocks, shared and batched operands.
    #[test]
    fn batches_of_small_products_agree_with_sums_of_products_in_every_layout() {
        use ndarray::{Array, ArrayView3, Axis};
        fn check<T: ndarray::LinalgScalar + Send + Sync + PartialEq + std::fmt::Debug>(
            make: impl Fn(f64) -> T,
            close: impl Fn(T, T) -> bool,
        ) {
            for (m, k, n) in [(8, 32, 16), (16, 32, 1), (32, 16, 1), (7, 5, 11), (1, 9, 1)] {
                assert!(m * k * n <= SMALL_PRODUCT);
                let a = Array::from_shape_fn((3, m, k), |(b, i, j)| {
                    make(((b * 31 + i * 7 + j) as f64 * 0.37).sin())
                });
                let at = Array::from_shape_fn((3, k, m), |(q, j, i)| a[[q, i, j]]);
                let b = Array::from_shape_fn((3, k, n), |(b, i, j)| {
                    make(((b * 17 + i * 3 + j) as f64 * 0.23).cos())
                });
                let bt = Array::from_shape_fn((3, n, k), |(q, j, i)| b[[q, i, j]]);
                let a_layouts = [a.view(), at.view().permuted_axes([0, 2, 1])];
                let b_layouts = [b.view(), bt.view().permuted_axes([0, 2, 1])];
                for (x, y) in a_layouts
                    .iter()
                    .flat_map(|x| b_layouts.iter().map(move |y| (x, y)))
                {
                    let check_batch = |x: ArrayView3<T>, y: ArrayView3<T>, shared: &str| {
                        let out = batched_matmul(x.into_dyn(), y.into_dyn());
                        for batch in 0..3 {
                            let (xi, yi) = (
                                x.index_axis(Axis(0), batch.min(x.len_of(Axis(0)) - 1)),
                                y.index_axis(Axis(0), batch.min(y.len_of(Axis(0)) - 1)),
                            );
                            for i in 0..m {
                                for j in 0..n {
                                    let want =
                                        (0..k).fold(T::zero(), |s, l| s + xi[[i, l]] * yi[[l, j]]);
                                    let got = out[[batch, i, j]];
                                    assert!(
                                        close(got, want),
                                        "{m}x{k}x{n} {shared} {:?} {:?}: {got:?}",
                                        x.strides(),
                                        y.strides()
                                    );
                                }
                            }
                        }
                    };
                    check_batch(x.view(), y.view(), "batched");
                    check_batch(x.slice(ndarray::s![..1, .., ..]), y.view(), "shared a");
                    check_batch(x.view(), y.slice(ndarray::s![..1, .., ..]), "shared b");
                }
            }
        }
        check(|x| x, |x: f64, y| (x - y).abs() <= 1e-12);
        check(|x| x as f32, |x: f32, y| (x - y).abs() <= 1e-4);
        // The layouts that take it: rows of `b`, or a column result of a transposed `a`.
        assert!(Small::for_product((8, 32, 16), (1, 8), (16, 1)).is_some_and(|s| !s.swapped));
        assert!(Small::for_product((16, 32, 1), (1, 16), (1, 1)).is_some_and(|s| s.swapped));
        assert!(Small::for_product((16, 32, 4), (1, 16), (1, 32)).is_none());
        assert!(Small::for_product((64, 64, 64), (64, 1), (64, 1)).is_none());
    }

    #[test]
    fn matrix_vector_products_of_short_rows_agree_with_dot_products() {
        use ndarray::Array;
        for (rows, k) in [(1000, 10), (7, 3), (5, 1), (3, 31), (9, 0)] {
            let a = Array::from_shape_fn((rows, k), |(i, j)| ((i * 7 + j) as f64 * 0.3).sin());
            let x = Array::from_shape_fn(k, |j| (j as f64 * 0.7).cos());
            let mut y = vec![f64::NAN; rows];
            short_rows(a.as_slice().unwrap(), x.as_slice().unwrap(), &mut y);
            let want = a.dot(&x);
            for (got, want) in y.iter().zip(&want) {
                assert!((got - want).abs() <= 1e-12, "{rows}x{k}: {got} != {want}");
            }
        }
    }

    #[test]
    fn operands_of_any_layout_are_read_in_place() {
        use ndarray::{Array, IxDyn};
        let a = Array::from_shape_fn((3, 4, 5), |(b, i, j)| (b * 20 + i * 5 + j) as f64 - 30.0);
        let b = Array::from_shape_fn((3, 4, 2), |(b, i, j)| ((b + i * 2 + j) as f64).sin());
        // `a` transposed over its last two axes, as a plan hands it over without a copy
        let at = a.clone().into_dyn().permuted_axes(IxDyn(&[0, 2, 1]));
        assert!(!at.is_standard_layout());
        let want = batched_matmul(at.as_standard_layout().view(), b.view().into_dyn());
        assert_eq!(batched_matmul(at.view(), b.view().into_dyn()), want);
        // and broadcast against a transposed matrix
        let bt = b
            .index_axis(ndarray::Axis(0), 1)
            .t()
            .as_standard_layout()
            .into_owned()
            .into_dyn();
        let btt = b
            .index_axis(ndarray::Axis(0), 1)
            .to_owned()
            .reversed_axes()
            .into_dyn();
        assert!(!btt.is_standard_layout());
        let a2 = a.slice(ndarray::s![.., .., ..2]).to_owned().into_dyn();
        assert_eq!(
            batched_matmul(a2.view(), btt.view()),
            batched_matmul(a2.view(), bt.view())
        );
        // empty inner dimension: zeros
        let e = batched_matmul(
            Array::<f64, _>::zeros((2, 0)).into_dyn().view(),
            Array::<f64, _>::zeros((0, 3)).into_dyn().view(),
        );
        assert_eq!(e, Array::<f64, _>::zeros((2, 3)).into_dyn());
    }
}
