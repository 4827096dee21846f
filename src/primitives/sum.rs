//! Summation kernels: pairwise summation of floating-point and complex values, wrapping sums
//! of integers.
//!
//! A sum of `n` values added one after another has an error bound growing like `n * eps`; a
//! pairwise sum, which adds the halves' sums, one like `log2(n) * eps`. As NumPy does, the
//! recursion stops at blocks (of 512 values, summed by 16 accumulators, so 32 additions each),
//! which makes it as fast as a plain loop. Along an axis that is not the innermost one, whole rows are added: blocks
//! of [`ROWS`] rows one after another, then the blocks' sums pairwise. Integers wrap on
//! overflow, as JAX's do.

use ndarray::{ArrayD, Axis, IxDyn};
use num_complex::{Complex32, Complex64};

/// Values that can be summed: `+` for floating-point and complex numbers, wrapping `+` for
/// integers.
pub(crate) trait Summand: Copy + num_traits::Zero {
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

/// The sum of `a` along `axis`, which is removed.
pub(crate) fn sum_axis<T: Summand>(a: &ArrayD<T>, axis: usize) -> ArrayD<T> {
    let shape = a.shape();
    let (outer, n): (usize, usize) = (shape[..axis].iter().product(), shape[axis]);
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out_shape = shape.to_vec();
    out_shape.remove(axis);
    let standard = a.as_standard_layout();
    let values = standard.as_slice().unwrap_or(&[]);
    let mut out = vec![T::zero(); outer * inner];
    if n > 0 && inner > 0 {
        for (o, block) in values.chunks_exact(n * inner).enumerate().take(outer) {
            let target = &mut out[o * inner..(o + 1) * inner];
            if inner == 1 {
                target[0] = pairwise(block);
            } else {
                sum_rows(block, n, target);
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&out_shape), out).unwrap_or_else(|_| ArrayD::zeros(out_shape))
}

/// The sum of `a` over `axes` (increasing, distinct), which are removed; over all of them at
/// once when they are all of its axes.
pub(crate) fn sum_axes<T: Summand>(a: &ArrayD<T>, axes: &[usize]) -> ArrayD<T> {
    if !axes.is_empty() && axes.len() == a.ndim() {
        let standard = a.as_standard_layout();
        let total = standard.as_slice().map_or_else(T::zero, pairwise);
        return ndarray::arr0(total).into_dyn();
    }
    let mut out = a.clone();
    for &axis in axes.iter().rev() {
        out = sum_axis(&out, axis);
    }
    out
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
        let rows = sum_axis(&a, 0);
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
            assert_eq!(sum_axis(&a, axis), want, "axis {axis}");
        }
        assert_eq!(sum_axes(&a, &[0, 1, 2]).into_iter().next(), Some(a.sum()));
        assert_eq!(sum_axes(&a, &[0, 2]), a.sum_axis(Axis(2)).sum_axis(Axis(0)));
        let empty = ArrayD::<f64>::zeros(IxDyn(&[2, 0, 3]));
        assert_eq!(sum_axis(&empty, 1), ArrayD::zeros(IxDyn(&[2, 3])));
    }

    #[test]
    fn integer_sums_wrap() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2]), vec![i64::MAX, 1]).unwrap();
        assert_eq!(sum_axes(&a, &[0]).into_iter().next(), Some(i64::MIN));
    }
}
