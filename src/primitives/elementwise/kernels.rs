//! The elementwise kernels: scalar functions, broadcasting loops and in-place updates.

use ndarray::{ArrayBase, ArrayD, IxDyn, Zip};
use num_complex::Complex;
use num_traits::Float;

use super::{BinaryOp, CmpOp, Elementwise, UnaryOp};
use crate::error::Result;
use crate::primitives::broadcast_shapes;
use crate::storage::{Data, pool};

impl UnaryOp {
    /// Whether the operation is defined on integers too.
    pub(super) fn takes_integers(self) -> bool {
        matches!(
            self,
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::StopGradient
        )
    }

    #[inline(always)] // so that loops over a known operation vectorise
    pub(crate) fn apply<F: Float>(self, x: F) -> F {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Log1p => x.ln_1p(),
            UnaryOp::Expm1 => x.exp_m1(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tan => x.tan(),
            UnaryOp::Tanh => x
                .to_f64()
                .and_then(|x| F::from(super::math::tanh(x)))
                .unwrap_or_else(F::nan),
            UnaryOp::Logistic => F::one() / (F::one() + (-x).exp()),
            // Computed in f64 (libm's, from FreeBSD's msun), then rounded to `F`.
            UnaryOp::Erf => x
                .to_f64()
                .and_then(|x| F::from(libm::erf(x)))
                .unwrap_or_else(F::nan),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sign => {
                if x > F::zero() {
                    F::one()
                } else if x < F::zero() {
                    -F::one()
                } else {
                    x // keeps 0, -0 and NaN as they are
                }
            }
            UnaryOp::StopGradient | UnaryOp::Conj | UnaryOp::Real => x,
            UnaryOp::Imag => F::zero(),
        }
    }

    /// The operation on a complex number, for the operations whose result is complex.
    fn apply_complex<F: Float>(self, z: Complex<F>) -> Complex<F> {
        let one = Complex::new(F::one(), F::zero());
        match self {
            UnaryOp::Neg => -z,
            UnaryOp::Exp => z.exp(),
            UnaryOp::Log => z.ln(),
            UnaryOp::Log1p => (z + one).ln(),
            UnaryOp::Expm1 => z.exp() - one,
            UnaryOp::Sqrt => z.sqrt(),
            UnaryOp::Sin => z.sin(),
            UnaryOp::Cos => z.cos(),
            UnaryOp::Tan => z.tan(),
            UnaryOp::Tanh => z.tanh(),
            UnaryOp::Logistic => one / (one + (-z).exp()),
            UnaryOp::Sign if z.norm() == F::zero() => z,
            UnaryOp::Sign => z / z.norm(),
            UnaryOp::Conj => z.conj(),
            UnaryOp::StopGradient => z,
            UnaryOp::Abs | UnaryOp::Real | UnaryOp::Imag => unreachable!("real-valued, see eval"),
            UnaryOp::Erf => unreachable!("defined on reals only, see infer"),
        }
    }
}

impl BinaryOp {
    #[inline(always)]
    pub(crate) fn apply<F: Float>(self, a: F, b: F) -> F {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => nan_max(a, b),
            BinaryOp::Min => -nan_max(-a, -b),
            BinaryOp::Pow => a.powf(b),
            BinaryOp::Atan2 => a.atan2(b),
            BinaryOp::Complex => unreachable!("complex-valued, see eval"),
        }
    }

    fn apply_complex<F: Float>(self, a: Complex<F>, b: Complex<F>) -> Complex<F> {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Pow => a.powc(b),
            BinaryOp::Max | BinaryOp::Min | BinaryOp::Complex | BinaryOp::Atan2 => {
                unreachable!("not defined on complex numbers, see infer")
            }
        }
    }

    fn apply_int(self, a: i64, b: i64) -> Option<i64> {
        Some(match self {
            BinaryOp::Add => a.wrapping_add(b),
            BinaryOp::Sub => a.wrapping_sub(b),
            BinaryOp::Mul => a.wrapping_mul(b),
            BinaryOp::Max => a.max(b),
            BinaryOp::Min => a.min(b),
            BinaryOp::Div | BinaryOp::Pow | BinaryOp::Complex | BinaryOp::Atan2 => return None,
        })
    }
}

/// Like `f64::max` but NaN-propagating, as NumPy's `maximum`.
fn nan_max<F: Float>(a: F, b: F) -> F {
    if a.is_nan() || b.is_nan() {
        F::nan()
    } else if a >= b {
        a
    } else {
        b
    }
}

impl CmpOp {
    fn apply<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

/// `f` over two arrays broadcast to `shape`. Contiguous operands of the output's shape, and
/// scalars, take a flat loop; the rest iterate with a fixed-rank `Zip`, which is far faster
/// than a dynamic-rank one.
pub(crate) fn zip<A, B, C, SA, SB>(
    a: &ArrayBase<SA, IxDyn>,
    b: &ArrayBase<SB, IxDyn>,
    shape: &[usize],
    f: impl Fn(A, B) -> C,
) -> ArrayD<C>
where
    A: Copy,
    B: Copy,
    C: Clone + 'static,
    SA: ndarray::Data<Elem = A>,
    SB: ndarray::Data<Elem = B>,
{
    let collect = |values: &mut dyn Iterator<Item = C>| {
        let mut buffer = pool::take(shape.iter().product());
        buffer.extend(values);
        ArrayD::from_shape_vec(shape, buffer).expect("one value per element")
    };
    let full = |x: &[usize]| x == shape;
    match (a.as_slice(), b.as_slice()) {
        (Some(x), Some(y)) if full(a.shape()) && full(b.shape()) => {
            return collect(&mut x.iter().zip(y).map(|(&x, &y)| f(x, y)));
        }
        (Some(x), Some(&[y])) if full(a.shape()) => {
            return collect(&mut x.iter().map(|&x| f(x, y)));
        }
        (Some(&[x]), Some(y)) if full(b.shape()) => {
            return collect(&mut y.iter().map(|&y| f(x, y)));
        }
        _ => {}
    }
    let a = a.broadcast(shape).expect("shapes checked by infer");
    let b = b.broadcast(shape).expect("shapes checked by infer");
    let len = shape.iter().product();
    let mut buffer = pool::take(len);
    // Any value does as a placeholder: every element is written below.
    if let (Some(&x), Some(&y)) = (a.iter().next(), b.iter().next()) {
        buffer.resize(len, f(x, y));
    }
    let mut out = ArrayD::from_shape_vec(shape, buffer).expect("one value per element");
    macro_rules! fixed_rank {
        ($dim:ty) => {{
            let a = a.into_dimensionality::<$dim>().expect("rank");
            let b = b.into_dimensionality::<$dim>().expect("rank");
            let out = out.view_mut().into_dimensionality::<$dim>().expect("rank");
            Zip::from(out)
                .and(&a)
                .and(&b)
                .for_each(|o, &x, &y| *o = f(x, y))
        }};
    }
    // Broadcasting operands: Zip's strided inner loops beat element iterators here.
    match shape.len() {
        1 => fixed_rank!(ndarray::Ix1),
        2 => fixed_rank!(ndarray::Ix2),
        3 => fixed_rank!(ndarray::Ix3),
        4 => fixed_rank!(ndarray::Ix4),
        _ => Zip::from(&mut out)
            .and(&a)
            .and(&b)
            .for_each(|o, &x, &y| *o = f(x, y)),
    }
    out
}

/// `f` over every element, in a pooled buffer when the array is contiguous.
fn map<A: Copy, C: 'static>(a: &ArrayD<A>, f: impl Fn(A) -> C) -> ArrayD<C> {
    match a.as_slice() {
        Some(values) => {
            let mut buffer = pool::take(values.len());
            buffer.extend(values.iter().map(|&x| f(x)));
            ArrayD::from_shape_vec(a.shape(), buffer).expect("one value per element")
        }
        None => a.mapv(f),
    }
}

/// `zip` with `op` resolved outside the loop, so that each loop body is one operation.
fn zip_float<F: Float + 'static>(
    op: BinaryOp,
    a: &ArrayD<F>,
    b: &ArrayD<F>,
    shape: &[usize],
) -> ArrayD<F> {
    match op {
        BinaryOp::Add => zip(a, b, shape, |x, y| x + y),
        BinaryOp::Sub => zip(a, b, shape, |x, y| x - y),
        BinaryOp::Mul => zip(a, b, shape, |x, y| x * y),
        BinaryOp::Div => zip(a, b, shape, |x, y| x / y),
        _ => zip(a, b, shape, |x, y| op.apply(x, y)),
    }
}

/// A unary operation on complex numbers; `real` and `complex` wrap real and complex results.
fn complex_unary<F: Float + 'static>(
    op: UnaryOp,
    a: &ArrayD<Complex<F>>,
    real: fn(ArrayD<F>) -> Data,
    complex: fn(ArrayD<Complex<F>>) -> Data,
) -> Data {
    match op {
        UnaryOp::Abs => real(a.mapv(|z| z.norm())),
        UnaryOp::Real => real(a.mapv(|z| z.re)),
        UnaryOp::Imag => real(a.mapv(|z| z.im)),
        _ => complex(a.mapv(|z| op.apply_complex(z))),
    }
}

/// Runs `$body` with `$a`, `$b` bound to same-typed float arrays, rewrapping the result.
macro_rules! float_pair {
    ($x:expr, $y:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($x, $y) {
            (Data::F64($a), Data::F64($b)) => Data::F64($body),
            (Data::F32($a), Data::F32($b)) => Data::F32($body),
            _ => unreachable!("dtypes checked by infer"),
        }
    };
}

pub(super) fn eval(op: &Elementwise, ins: &[&Data]) -> Result<Data> {
    Ok(match op {
        Elementwise::Unary(UnaryOp::StopGradient) => ins[0].clone(),
        Elementwise::Unary(op) => match ins[0] {
            Data::F64(a) => Data::F64(map(a, |x| op.apply(x))),
            Data::F32(a) => Data::F32(map(a, |x| op.apply(x))),
            Data::C128(a) => complex_unary(*op, a, Data::F64, Data::C128),
            Data::C64(a) => complex_unary(*op, a, Data::F32, Data::C64),
            Data::I64(a) => Data::I64(a.mapv(|x| match op {
                UnaryOp::Neg => x.wrapping_neg(),
                UnaryOp::Abs => x.wrapping_abs(),
                _ => x.signum(),
            })),
            Data::Bool(_) => unreachable!("dtypes checked by infer"),
        },
        Elementwise::PowI(n) => match ins[0] {
            Data::F64(a) => Data::F64(map(a, |x| x.powi(*n))),
            Data::F32(a) => Data::F32(map(a, |x| x.powi(*n))),
            Data::C128(a) => Data::C128(a.mapv(|x| x.powi(*n))),
            Data::C64(a) => Data::C64(a.mapv(|x| x.powi(*n))),
            _ => unreachable!("dtypes checked by infer"),
        },
        Elementwise::Convert(dtype) => ins[0].cast(*dtype),
        Elementwise::Binary(op) => {
            let shape = broadcast_shapes(op.name(), ins[0].shape(), ins[1].shape())?;
            match (ins[0], ins[1]) {
                (Data::I64(a), Data::I64(b)) => Data::I64(zip(a, b, &shape, |x, y| {
                    op.apply_int(x, y).expect("checked by infer")
                })),
                (Data::F64(a), Data::F64(b)) if *op == BinaryOp::Complex => {
                    Data::C128(zip(a, b, &shape, Complex::new))
                }
                (Data::F32(a), Data::F32(b)) if *op == BinaryOp::Complex => {
                    Data::C64(zip(a, b, &shape, Complex::new))
                }
                (Data::C128(a), Data::C128(b)) => {
                    Data::C128(zip(a, b, &shape, |x, y| op.apply_complex(x, y)))
                }
                (Data::C64(a), Data::C64(b)) => {
                    Data::C64(zip(a, b, &shape, |x, y| op.apply_complex(x, y)))
                }
                (x, y) => float_pair!(x, y, |a, b| zip_float(*op, a, b, &shape)),
            }
        }
        Elementwise::Compare(op) => {
            let shape = broadcast_shapes(op.name(), ins[0].shape(), ins[1].shape())?;
            Data::Bool(match (ins[0], ins[1]) {
                (Data::F64(a), Data::F64(b)) => zip(a, b, &shape, |x, y| op.apply(x, y)),
                (Data::F32(a), Data::F32(b)) => zip(a, b, &shape, |x, y| op.apply(x, y)),
                (Data::I64(a), Data::I64(b)) => zip(a, b, &shape, |x, y| op.apply(x, y)),
                (Data::Bool(a), Data::Bool(b)) => zip(a, b, &shape, |x, y| op.apply(x, y)),
                (Data::C128(a), Data::C128(b)) => {
                    zip(a, b, &shape, |x, y| (x == y) == (*op == CmpOp::Eq))
                }
                (Data::C64(a), Data::C64(b)) => {
                    zip(a, b, &shape, |x, y| (x == y) == (*op == CmpOp::Eq))
                }
                _ => unreachable!("dtypes checked by infer"),
            })
        }
        Elementwise::Select => {
            let Data::Bool(c) = ins[0] else {
                unreachable!("dtypes checked by infer")
            };
            let shape = broadcast_shapes("select", ins[1].shape(), ins[2].shape())?;
            let shape = broadcast_shapes("select", c.shape(), &shape)?;
            let c = c.broadcast(shape.as_slice()).expect("checked");
            macro_rules! select {
                ($a:expr, $b:expr) => {{
                    let a = $a.broadcast(shape.as_slice()).expect("checked");
                    let b = $b.broadcast(shape.as_slice()).expect("checked");
                    Zip::from(&c)
                        .and(&a)
                        .and(&b)
                        .map_collect(|&c, &x, &y| if c { x } else { y })
                }};
            }
            match (ins[1], ins[2]) {
                (Data::F64(a), Data::F64(b)) => Data::F64(select!(a, b)),
                (Data::F32(a), Data::F32(b)) => Data::F32(select!(a, b)),
                (Data::I64(a), Data::I64(b)) => Data::I64(select!(a, b)),
                (Data::Bool(a), Data::Bool(b)) => Data::Bool(select!(a, b)),
                (Data::C128(a), Data::C128(b)) => Data::C128(select!(a, b)),
                (Data::C64(a), Data::C64(b)) => Data::C64(select!(a, b)),
                _ => unreachable!("dtypes checked by infer"),
            }
        }
    })
}

/// Computes a float unary, integer-power or binary primitive into `target`: the buffer of
/// operand `slot`, which already has the output's shape and dtype and is not needed after this
/// equation. `other` is the other operand of a binary primitive. Returns `false`, leaving
/// `target` as it was, where there is no in-place kernel. Reusing dying buffers saves an
/// allocation (and its page faults) per equation on large arrays.
pub(crate) fn eval_in_place(
    op: &Elementwise,
    target: &mut Data,
    slot: usize,
    other: Option<&Data>,
) -> bool {
    match (op, target, other) {
        (Elementwise::Unary(UnaryOp::StopGradient), ..) => return false,
        (Elementwise::Unary(op), Data::F64(a), None) => unary_in_place(*op, a),
        (Elementwise::Unary(op), Data::F32(a), None) => unary_in_place(*op, a),
        (Elementwise::PowI(n), Data::F64(a), None) => a.mapv_inplace(|x| x.powi(*n)),
        (Elementwise::PowI(n), Data::F32(a), None) => a.mapv_inplace(|x| x.powi(*n)),
        (Elementwise::Binary(op), Data::F64(a), Some(Data::F64(b))) => {
            binary_in_place(*op, a, b, slot)
        }
        (Elementwise::Binary(op), Data::F32(a), Some(Data::F32(b))) => {
            binary_in_place(*op, a, b, slot)
        }
        _ => return false,
    }
    true
}

fn unary_in_place<F: Float>(op: UnaryOp, a: &mut ArrayD<F>) {
    match op {
        UnaryOp::Neg => a.mapv_inplace(|x| -x),
        _ => a.mapv_inplace(|x| op.apply(x)),
    }
}

/// `a = op(a, b)` when `a` is the first operand (`slot` 0), else `a = op(b, a)`.
fn binary_in_place<F: Float>(op: BinaryOp, a: &mut ArrayD<F>, b: &ArrayD<F>, slot: usize) {
    match (op, slot) {
        (BinaryOp::Add, _) => update(a, b, |x, y| x + y),
        (BinaryOp::Mul, _) => update(a, b, |x, y| x * y),
        (BinaryOp::Sub, 0) => update(a, b, |x, y| x - y),
        (BinaryOp::Sub, _) => update(a, b, |x, y| y - x),
        (BinaryOp::Div, 0) => update(a, b, |x, y| x / y),
        (BinaryOp::Div, _) => update(a, b, |x, y| y / x),
        (_, 0) => update(a, b, |x, y| op.apply(x, y)),
        _ => update(a, b, |x, y| op.apply(y, x)),
    }
}

/// `a[i] = f(a[i], b[i])` with `b` broadcast to `a`'s shape.
fn update<F: Copy>(a: &mut ArrayD<F>, b: &ArrayD<F>, f: impl Fn(F, F) -> F) {
    if a.shape() == b.shape()
        && let (Some(xs), Some(ys)) = (a.as_slice_mut(), b.as_slice())
    {
        xs.iter_mut().zip(ys).for_each(|(x, &y)| *x = f(*x, y));
        return;
    }
    if let Some(&[y]) = b.as_slice() {
        a.mapv_inplace(|x| f(x, y));
        return;
    }
    let b = b.broadcast(a.shape()).expect("shapes checked by infer");
    macro_rules! fixed_rank {
        ($dim:ty) => {{
            let mut a = a.view_mut().into_dimensionality::<$dim>().expect("rank");
            let b = b.into_dimensionality::<$dim>().expect("rank");
            Zip::from(&mut a).and(&b).for_each(|x, &y| *x = f(*x, y));
        }};
    }
    match a.ndim() {
        1 => fixed_rank!(ndarray::Ix1),
        2 => fixed_rank!(ndarray::Ix2),
        3 => fixed_rank!(ndarray::Ix3),
        4 => fixed_rank!(ndarray::Ix4),
        _ => Zip::from(a).and(&b).for_each(|x, &y| *x = f(*x, y)),
    }
}
