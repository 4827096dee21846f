//! Summation kernels: pairwise summation of floating-point and complex values, wrapping sums
//! of integers.
//!
//! A sum of `n` values added one after another has an error bound growing like `n * eps`; a
//! pairwise sum, which adds the halves' sums, one like `log2(n) * eps`. As NumPy does, the
//! recursion stops at blocks (of 512 values, summed by 16 accumulators, so 32 additions each),
//! which makes it as fast as a plain loop. Along an axis that is not the innermost one, whole rows are added: blocks
//! of [`ROWS`] rows one after another, then the blocks' sums pairwise. Integers wrap on
//! overflow, as JAX's do.

use std::borrow::Cow;
use std::ops::Range;

use ndarray::{ArrayD, Axis, IxDyn};
use num_complex::{Complex32, Complex64};

use crate::simd::multiversion;
use crate::storage::pool;

/// Values that can be summed: `+` for floating-point and complex numbers, wrapping `+` for
/// integers.
pub(crate) trait Summand: Copy + num_traits::Zero + 'static {
    /// `self + other` (wrapping for integers).
    fn plus(self, other: Self) -> Self;
}

macro_rules! summand {
    ($($t:ty),*) => {$(
        impl Summand for $t {
            #[inline(always)]
            fn plus(self, other: Self) -> Self {
                self + other
            }
        }
    )*};
}
summand!(f32, f64, Complex32, Complex64);

impl Summand for i64 {
    #[inline(always)]
    fn plus(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
}

/// Values summed by [`LANES`] accumulators, below this length; longer runs are halved.
const BLOCK: usize = 512;

/// Accumulators of a block: enough independent additions to keep the adder busy.
const LANES: usize = 16;

/// Rows added one after another before their sums are added pairwise.
const ROWS: usize = 16;

/// The sum of `values`, pairwise.
pub(crate) fn pairwise<T: Summand>(values: &[T]) -> T {
    let n = values.len();
    if n < LANES {
        values.iter().fold(T::zero(), |acc, &v| acc.plus(v))
    } else if n <= BLOCK {
        let mut r = [T::zero(); LANES];
        let mut chunks = values.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (acc, &v) in r.iter_mut().zip(chunk) {
                *acc = acc.plus(v);
            }
        }
        // The accumulators pairwise too.
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for k in 0..width {
                r[k] = r[k].plus(r[k + width]);
            }
        }
        chunks.remainder().iter().fold(r[0], |acc, &v| acc.plus(v))
    } else {
        // Halves whose first part is a whole number of groups of accumulators.
        let half = n / 2 / LANES * LANES;
        pairwise(&values[..half]).plus(pairwise(&values[half..]))
    }
}

/// `out = sum of the rows of src` (`rows` rows of `out.len()` values each), pairwise over
/// blocks of [`ROWS`] rows.
fn sum_rows<T: Summand>(src: &[T], rows: usize, out: &mut [T]) {
    let width = out.len();
    if rows <= ROWS {
        out.fill(T::zero());
        add_rows(src, rows, out);
        return;
    }
    let half = rows / 2;
    sum_rows(&src[..half * width], half, out);
    // The second half's sums: on the stack when short (the rows of a tangent batch's
    // [batch, n, units] sums are a few units wide, summed once per batch element).
    let mut short = [T::zero(); SHORT_ROW];
    let mut long = Vec::new();
    let rest = if width <= SHORT_ROW {
        &mut short[..width]
    } else {
        long.resize(width, T::zero());
        &mut long[..]
    };
    sum_rows(&src[half * width..], rows - half, rest);
    add_rows(rest, 1, out);
}

/// Rows at most this long are summed in a buffer on the stack by [`sum_rows`].
const SHORT_ROW: usize = 64;

multiversion! {
    /// Adds the first `rows` rows of `src` (each `out.len()` long) to `out`, one after
    /// another.
    fn add_rows<T: Summand>(src: &[T], rows: usize, out: &mut [T]) {
        // Blocks of `BLOCK_WIDTH` columns are summed in registers over all rows, rather than
        // loaded from `out` and stored back at each row.
        const BLOCK_WIDTH: usize = 8;
        let width = out.len().max(1);
        let whole = out.len() / BLOCK_WIDTH * BLOCK_WIDTH;
        for j in (0..whole).step_by(BLOCK_WIDTH) {
            let mut sums: [T; BLOCK_WIDTH] = out[j..j + BLOCK_WIDTH].try_into().expect("a block");
            for row in src.chunks_exact(width).take(rows) {
                for (acc, &v) in sums.iter_mut().zip(&row[j..j + BLOCK_WIDTH]) {
                    *acc = acc.plus(v);
                }
            }
            out[j..j + BLOCK_WIDTH].copy_from_slice(&sums);
        }
        for row in src.chunks_exact(width).take(rows) {
            for (acc, &v) in out[whole..].iter_mut().zip(&row[whole..]) {
                *acc = acc.plus(v);
            }
        }
    }
}

/// The sum over the axes `run` (consecutive) of row-major `values` of `shape`: the values
/// of the shape with those axes removed, into a pooled buffer.
fn sum_run<T: Summand>(values: &[T], shape: &[usize], run: Range<usize>) -> Vec<T> {
    let outer: usize = shape[..run.start].iter().product();
    let n: usize = shape[run.clone()].iter().product();
    let inner: usize = shape[run.end..].iter().product();
    let mut out = pool::take(outer * inner);
    out.resize(outer * inner, T::zero());
    sum_middle(values, n, inner, &mut out);
    out
}

/// The sums over the middle axis of row-major `values` of shape `[outer, n, inner]`, into
/// `out` (`outer * inner` values): each pairwise.
pub(crate) fn sum_middle<T: Summand>(values: &[T], n: usize, inner: usize, out: &mut [T]) {
    out.fill(T::zero());
    if n > 0 && inner > 0 {
        for (block, target) in values
            .chunks_exact(n * inner)
            .zip(out.chunks_exact_mut(inner))
        {
            if inner == 1 {
                target[0] = pairwise(block);
            } else {
                sum_rows(block, n, target);
            }
        }
    }
}

/// The sum of `a` over `axes` (increasing, distinct), which are removed. Consecutive axes are
/// summed as one (in row-major order they are one axis), so summing all axes is one pairwise
/// sum, and `a` is read in place when it is in standard layout.
pub(crate) fn sum_axes<T: Summand>(a: &ArrayD<T>, axes: &[usize]) -> ArrayD<T> {
    let standard = a.as_standard_layout();
    let mut values = Cow::Borrowed(standard.as_slice().unwrap_or(&[]));
    let mut shape = a.shape().to_vec();
    // Runs of consecutive axes, summed from the last so earlier indices stay valid.
    let mut runs: Vec<Range<usize>> = Vec::new();
    for &axis in axes {
        match runs.last_mut() {
            Some(run) if run.end == axis => run.end += 1,
            _ => runs.push(axis..axis + 1),
        }
    }
    for run in runs.into_iter().rev() {
        values = Cow::Owned(sum_run(&values, &shape, run.clone()));
        shape.drain(run);
    }
    let values = values.into_owned();
    ArrayD::from_shape_vec(IxDyn(&shape), values).unwrap_or_else(|_| ArrayD::zeros(shape))
}

/// `out[.., indices[k], ..] += a[.., k, ..]` into zeros whose `axis` has length `size`.
pub(crate) fn scatter_add<T: Summand>(
    a: &ArrayD<T>,
    axis: Axis,
    indices: &[usize],
    size: usize,
) -> ArrayD<T> {
    let mut shape = a.shape().to_vec();
    shape[axis.index()] = size;
    let mut out = ArrayD::zeros(shape);
    for (k, &i) in indices.iter().enumerate() {
        out.index_axis_mut(axis, i)
            .zip_mut_with(&a.index_axis(axis, k), |acc: &mut T, &v| *acc = acc.plus(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sums_are_accurate_in_f32() {
        let n = 1_000_000;
        let values = vec![0.1f32; n];
        let sum = pairwise(&values) as f64;
        let exact = 0.1f32 as f64 * n as f64;
        assert!((sum - exact).abs() / exact < 1e-6, "{sum} vs {exact}");
        // Along a leading axis too.
        let a = ArrayD::from_shape_vec(IxDyn(&[n / 4, 4]), values).unwrap();
        let rows = sum_axes(&a, &[0]);
        for &s in rows.iter() {
            let exact = exact / 4.0;
            assert!((s as f64 - exact).abs() / exact < 1e-6, "{s} vs {exact}");
        }
    }

    #[test]
    fn sums_match_a_plain_loop_on_small_integers() {
        let a = ArrayD::from_shape_fn(IxDyn(&[3, 37, 5]), |i| {
            (i[0] * 100 + i[1] * 7 + i[2]) as f64
        });
        for axis in 0..3 {
            let want = a.sum_axis(Axis(axis));
            assert_eq!(sum_axes(&a, &[axis]), want, "axis {axis}");
        }
        assert_eq!(sum_axes(&a, &[0, 1, 2]).into_iter().next(), Some(a.sum()));
        assert_eq!(sum_axes(&a, &[0, 2]), a.sum_axis(Axis(2)).sum_axis(Axis(0)));
        // Consecutive axes are summed as one.
        assert_eq!(sum_axes(&a, &[0, 1]), a.sum_axis(Axis(1)).sum_axis(Axis(0)));
        assert_eq!(sum_axes(&a, &[1, 2]), a.sum_axis(Axis(2)).sum_axis(Axis(1)));
        // Any layout.
        let t = a.clone().permuted_axes(IxDyn(&[2, 0, 1]));
        assert_eq!(sum_axes(&t, &[1, 2]), t.sum_axis(Axis(2)).sum_axis(Axis(1)));
        let empty = ArrayD::<f64>::zeros(IxDyn(&[2, 0, 3]));
        assert_eq!(sum_axes(&empty, &[1]), ArrayD::zeros(IxDyn(&[2, 3])));
    }

    /// Rows of every width around the blocks of `add_rows` and the stack buffer of
    /// `sum_rows`, in more rows than one block of rows, against a plain loop (exact on small
    /// integers), for each summand type.
    #[test]
    fn sums_over_a_middle_axis_match_a_plain_loop_for_every_width() {
        for inner in [1, 3, 8, 13, 16, 64, 70] {
            for n in [1, 5, 16, 17, 40] {
                let a = ArrayD::from_shape_fn(IxDyn(&[2, n, inner]), |i| {
                    (i[0] * 1000 + i[1] * 7 + i[2]) as f64
                });
                let want = a.sum_axis(Axis(1));
                assert_eq!(sum_axes(&a, &[1]), want, "[2, {n}, {inner}]");
                let as_i64 = a.mapv(|x| x as i64);
                assert_eq!(sum_axes(&as_i64, &[1]), want.mapv(|x| x as i64));
                let as_c64 = a.mapv(|x| Complex64::new(x, -x));
                assert_eq!(
                    sum_axes(&as_c64, &[1]),
                    want.mapv(|x| Complex64::new(x, -x))
                );
            }
        }
    }

    #[test]
    fn integer_sums_wrap() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2]), vec![i64::MAX, 1]).unwrap();
        assert_eq!(sum_axes(&a, &[0]).into_iter().next(), Some(i64::MIN));
    }
}
