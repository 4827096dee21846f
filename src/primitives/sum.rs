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
            fn plus(self, other: Self) -> Self {
                self + other
            }
        }
    )*};
}
summand!(f32, f64, Complex32, Complex64);

impl Summand for i64 {
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
        for row in src.chunks_exact(width.max(1)).take(rows) {
            for (acc, &v) in out.iter_mut().zip(row) {
                *acc = acc.plus(v);
            }
        }
        return;
    }
    let half = rows / 2;
    sum_rows(&src[..half * width], half, out);
    let mut rest = vec![T::zero(); width];
    sum_rows(&src[half * width..], rows - half, &mut rest);
    for (acc, v) in out.iter_mut().zip(rest) {
        *acc = acc.plus(v);
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

    #[test]
    fn integer_sums_wrap() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2]), vec![i64::MAX, 1]).unwrap();
        assert_eq!(sum_axes(&a, &[0]).into_iter().next(), Some(i64::MIN));
    }
}
