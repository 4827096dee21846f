//! Elementwise primitives: unary and binary arithmetic, transcendental functions, comparisons,
//! `select`, dtype conversion and integer powers.
//!
//! Binary primitives broadcast (NumPy rules) and need operands of one dtype; the user-level
//! operations promote before calling them.

use ndarray::{ArrayD, Zip};
use num_complex::Complex;
use num_traits::Float;

use super::{Prim, broadcast_shapes};
use crate::error::{Error, Result};
use crate::exec::pool;
use crate::tensor::{Aval, DType, Data, Tensor};

/// Elementwise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `e^x`
    Exp,
    /// natural logarithm
    Log,
    /// `log(1 + x)`
    Log1p,
    /// `e^x - 1`
    Expm1,
    /// square root
    Sqrt,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// tangent
    Tan,
    /// hyperbolic tangent
    Tanh,
    /// `1 / (1 + e^-x)`
    Logistic,
    /// `|x|`
    Abs,
    /// `-1`, `0` or `1`
    Sign,
    /// The identity, with a zero derivative (JAX's `stop_gradient`).
    StopGradient,
    /// Complex conjugate (the identity on reals).
    Conj,
    /// Real part, as a real dtype.
    Real,
    /// Imaginary part, as a real dtype.
    Imag,
}

/// Elementwise functions of two operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// larger of the two
    Max,
    /// smaller of the two
    Min,
    /// `a^b`
    Pow,
    /// `a + i b` from real parts
    Complex,
    /// The angle of the point `(b, a)`: `atan2(a, b)` (reals)
    Atan2,
}

/// Elementwise comparisons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl UnaryOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Log1p => "log1p",
            UnaryOp::Expm1 => "expm1",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tan => "tan",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Logistic => "logistic",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::StopGradient => "stop_gradient",
            UnaryOp::Conj => "conj",
            UnaryOp::Real => "real",
            UnaryOp::Imag => "imag",
        }
    }

    /// Whether the operation is defined on integers too.
    fn takes_integers(self) -> bool {
        matches!(
            self,
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::StopGradient
        )
    }

    fn apply<F: Float>(self, x: F) -> F {
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
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Logistic => F::one() / (F::one() + (-x).exp()),
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
        }
    }

    /// `d out`, given the input `x`, the output `out` and the input tangent `t`.
    fn jvp(self, x: &Tensor, out: &Tensor, t: &Tensor) -> Option<Tensor> {
        Some(match self {
            UnaryOp::Neg => -t,
            UnaryOp::Exp => t * out,
            UnaryOp::Log => t / x,
            UnaryOp::Log1p => t / (x + 1.0),
            UnaryOp::Expm1 => t * (out + 1.0),
            UnaryOp::Sqrt => t / (out * 2.0),
            UnaryOp::Sin => t * x.cos(),
            UnaryOp::Cos => t * -x.sin(),
            UnaryOp::Tan => t * (out * out + 1.0),
            UnaryOp::Tanh => t * (1.0 - out * out),
            UnaryOp::Logistic => t * (out * (1.0 - out)),
            UnaryOp::Abs if x.dtype().is_complex() => {
                // d|z| = Re(conj(z) dz) / |z|, taken as 0 at z = 0 (as JAX does).
                let safe =
                    crate::tensor::where_(&out.eq(0.0), &Tensor::scalar_of(1.0, out.dtype()), out);
                (x.conj() * t).real() / safe
            }
            UnaryOp::Abs => t * x.sign(),
            UnaryOp::Conj => t.conj(),
            UnaryOp::Real => t.real(),
            UnaryOp::Imag => t.imag(),
            UnaryOp::Sign | UnaryOp::StopGradient => return None,
        })
    }
}

impl BinaryOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Pow => "pow",
            BinaryOp::Complex => "complex",
            BinaryOp::Atan2 => "atan2",
        }
    }

    fn apply<F: Float>(self, a: F, b: F) -> F {
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
            _ => unreachable!("not defined on complex numbers, see infer"),
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

    /// `d out` from the operands, the output and the tangents (padded to the output's rank).
    fn jvp(
        self,
        a: &Tensor,
        b: &Tensor,
        out: &Tensor,
        ta: Option<&Tensor>,
        tb: Option<&Tensor>,
    ) -> Option<Tensor> {
        let sum = |x: Option<Tensor>, y: Option<Tensor>| match (x, y) {
            (Some(x), Some(y)) => Some(x + y),
            (x, y) => x.or(y),
        };
        match self {
            BinaryOp::Add => sum(ta.cloned(), tb.cloned()),
            BinaryOp::Sub => sum(ta.cloned(), tb.map(|t| -t)),
            BinaryOp::Mul => sum(ta.map(|t| t * b), tb.map(|t| a * t)),
            BinaryOp::Div => match ta {
                Some(ta) => Some(tb.map_or(ta.clone(), |tb| ta - tb * out) / b),
                None => tb.map(|tb| -(tb * out) / b),
            },
            BinaryOp::Max | BinaryOp::Min => {
                // Where the operands tie, each gets half (as JAX does).
                let wins = if self == BinaryOp::Max {
                    a.gt(b)
                } else {
                    a.lt(b)
                };
                let weight_a = wins.cast(out.dtype()) + a.eq(b).cast(out.dtype()) * 0.5;
                let weight_b = 1.0 - &weight_a;
                sum(ta.map(|t| t * &weight_a), tb.map(|t| t * &weight_b))
            }
            BinaryOp::Complex => {
                let zero = || Tensor::scalar_of(0.0, a.dtype());
                let re = ta.cloned().unwrap_or_else(zero);
                let im = tb.cloned().unwrap_or_else(zero);
                Some(Tensor::apply(Prim::Binary(BinaryOp::Complex), &[&re, &im]))
            }
            BinaryOp::Atan2 => {
                // d atan2(a, b) = (b da - a db) / (a^2 + b^2)
                let norm = a * a + b * b;
                sum(ta.map(|t| t * (b / &norm)), tb.map(|t| t * (-a / &norm)))
            }
            BinaryOp::Pow => {
                let da = ta.map(|t| t * (b * a.pow(&(b - 1.0))));
                // d/db a^b = log(a) a^b, taken as 0 where a == 0 (as JAX does).
                let log_a =
                    crate::tensor::where_(&a.eq(0.0), &Tensor::scalar_of(0.0, a.dtype()), &a.log());
                let db = tb.map(|t| t * (log_a * out));
                sum(da, db)
            }
        }
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
    pub(crate) fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }

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

pub(super) fn infer(prim: &Prim, ins: &[Aval]) -> Result<Aval> {
    let op = prim.name();
    let same_dtype = |a: &Aval, b: &Aval| {
        if a.dtype == b.dtype {
            Ok(())
        } else {
            Err(Error::dtype(
                &op,
                format!("operands must have one dtype, the other is {}", a.dtype),
                b.dtype,
            ))
        }
    };
    let require = |ok: bool, what: &str, a: &Aval| {
        if ok {
            Ok(())
        } else {
            Err(Error::dtype(&op, format!("needs {what} operand"), a.dtype))
        }
    };
    let x = &ins[0];
    let shape = |dtype: DType| -> Result<Aval> {
        let mut shape = x.shape.clone();
        for other in &ins[1..] {
            shape = broadcast_shapes(&op, &shape, &other.shape)?;
        }
        Ok(Aval::new(&shape, dtype))
    };
    match prim {
        Prim::Unary(UnaryOp::StopGradient) => Ok(x.clone()),
        Prim::Unary(UnaryOp::Real | UnaryOp::Imag) => {
            require(x.dtype.is_inexact(), "a floating-point or complex", x)?;
            shape(x.dtype.real())
        }
        Prim::Unary(UnaryOp::Abs) if x.dtype.is_complex() => shape(x.dtype.real()),
        Prim::Unary(u) => {
            let integer = u.takes_integers() && x.dtype == DType::I64;
            require(
                integer || x.dtype.is_inexact(),
                "a floating-point or complex",
                x,
            )?;
            shape(x.dtype)
        }
        Prim::PowI(_) => {
            require(x.dtype.is_inexact(), "a floating-point or complex", x)?;
            shape(x.dtype)
        }
        Prim::Convert(dtype) => Ok(Aval::new(&x.shape, *dtype)),
        Prim::Binary(b) => {
            same_dtype(x, &ins[1])?;
            match b {
                BinaryOp::Complex => {
                    require(x.dtype.is_float(), "a real floating-point", x)?;
                    return shape(x.dtype.complex());
                }
                BinaryOp::Atan2 => require(x.dtype.is_float(), "a real floating-point", x)?,
                BinaryOp::Max | BinaryOp::Min => require(
                    matches!(x.dtype, DType::I64 | DType::F32 | DType::F64),
                    "a real",
                    x,
                )?,
                BinaryOp::Div | BinaryOp::Pow => {
                    require(x.dtype.is_inexact(), "a floating-point or complex", x)?
                }
                _ => require(x.dtype != DType::Bool, "a numeric", x)?,
            }
            shape(x.dtype)
        }
        Prim::Compare(c) => {
            same_dtype(x, &ins[1])?;
            let ordered = !matches!(c, CmpOp::Eq | CmpOp::Ne);
            require(
                !(ordered && x.dtype.is_complex()),
                "an ordered (not complex)",
                x,
            )?;
            shape(DType::Bool)
        }
        Prim::Select => {
            if x.dtype != DType::Bool {
                return Err(Error::dtype(&op, "the condition must be bool", x.dtype));
            }
            same_dtype(&ins[1], &ins[2])?;
            shape(ins[1].dtype)
        }
        _ => unreachable!("not an elementwise primitive: {prim}"),
    }
}

/// `f` over two arrays broadcast to `shape`. Contiguous operands of the output's shape, and
/// scalars, take a flat loop; the rest iterate with a fixed-rank `Zip`, which is far faster
/// than a dynamic-rank one.
pub(super) fn zip<A: Copy, B: Copy, C: 'static>(
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    shape: &[usize],
    f: impl Fn(A, B) -> C,
) -> ArrayD<C> {
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
    macro_rules! fixed_rank {
        ($dim:ty) => {{
            let a = a.into_dimensionality::<$dim>().expect("rank");
            let b = b.into_dimensionality::<$dim>().expect("rank");
            Zip::from(&a)
                .and(&b)
                .map_collect(|&x, &y| f(x, y))
                .into_dyn()
        }};
    }
    // Broadcasting operands: Zip's strided inner loops beat element iterators here.
    match shape.len() {
        1 => fixed_rank!(ndarray::Ix1),
        2 => fixed_rank!(ndarray::Ix2),
        3 => fixed_rank!(ndarray::Ix3),
        4 => fixed_rank!(ndarray::Ix4),
        _ => Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)),
    }
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

pub(super) fn eval(prim: &Prim, ins: &[&Data]) -> Result<Data> {
    Ok(match prim {
        Prim::Unary(UnaryOp::StopGradient) => ins[0].clone(),
        Prim::Unary(op) => match ins[0] {
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
        Prim::PowI(n) => match ins[0] {
            Data::F64(a) => Data::F64(map(a, |x| x.powi(*n))),
            Data::F32(a) => Data::F32(map(a, |x| x.powi(*n))),
            Data::C128(a) => Data::C128(a.mapv(|x| x.powi(*n))),
            Data::C64(a) => Data::C64(a.mapv(|x| x.powi(*n))),
            _ => unreachable!("dtypes checked by infer"),
        },
        Prim::Convert(dtype) => ins[0].cast(*dtype),
        Prim::Binary(op) => {
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
        Prim::Compare(op) => {
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
        Prim::Select => {
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
        _ => unreachable!("not an elementwise primitive: {prim}"),
    })
}

pub(super) fn jvp(
    prim: &Prim,
    x: &[Tensor],
    t: &[Option<Tensor>],
    out: &Tensor,
    batch: &[usize],
) -> Option<Tensor> {
    let tangent = match prim {
        Prim::Unary(op) => op.jvp(&x[0], out, t[0].as_ref()?)?,
        Prim::PowI(0) => return None,
        Prim::PowI(n) => t[0].as_ref()? * (x[0].powi(n - 1) * f64::from(*n)),
        Prim::Binary(op) => op.jvp(&x[0], &x[1], out, t[0].as_ref(), t[1].as_ref())?,
        Prim::Compare(_) => return None,
        Prim::Convert(dtype) if dtype.is_inexact() && x[0].dtype().is_inexact() => {
            t[0].as_ref()?.cast(*dtype)
        }
        Prim::Convert(_) => return None,
        Prim::Select => {
            let zero = || Tensor::scalar_of(0.0, out.dtype());
            let on_true = t[1].clone().unwrap_or_else(zero);
            let on_false = t[2].clone().unwrap_or_else(zero);
            crate::tensor::where_(&x[0], &on_true, &on_false)
        }
        _ => unreachable!("not an elementwise primitive: {prim}"),
    };
    // A tangent that did not meet every operand may still lack some broadcast axes.
    let shape = super::concat_dims(batch, out.shape());
    Some(if tangent.shape() == shape.as_slice() {
        tangent
    } else {
        tangent.broadcast_to(&shape)
    })
}

pub(super) fn transpose(
    prim: &Prim,
    ct: &Tensor,
    x: &[Option<Tensor>],
    in_avals: &[Aval],
) -> Result<Vec<Option<Tensor>>> {
    let linear = |i: usize| x[i].is_none();
    Ok(match prim {
        Prim::Unary(UnaryOp::Neg) => vec![Some(-ct)],
        // Transposes pair values by Re(a b), as JAX does, so real-to-complex maps and
        // conjugation transpose as below.
        Prim::Unary(UnaryOp::Conj) => vec![Some(ct.conj())],
        Prim::Unary(UnaryOp::Real) => vec![Some(ct.cast(in_avals[0].dtype))],
        Prim::Unary(UnaryOp::Imag) => {
            let minus_i =
                Tensor::from(num_complex::Complex64::new(0.0, -1.0)).cast(in_avals[0].dtype);
            vec![Some(ct.cast(in_avals[0].dtype) * minus_i)]
        }
        Prim::Binary(BinaryOp::Complex) => {
            vec![linear(0).then(|| ct.real()), linear(1).then(|| -ct.imag())]
        }
        Prim::Binary(BinaryOp::Add) => {
            vec![linear(0).then(|| ct.clone()), linear(1).then(|| ct.clone())]
        }
        Prim::Binary(BinaryOp::Sub) => vec![linear(0).then(|| ct.clone()), linear(1).then(|| -ct)],
        Prim::Binary(BinaryOp::Mul) => match (&x[0], &x[1]) {
            (None, Some(b)) => vec![Some(ct * b), None],
            (Some(a), None) => vec![None, Some(a * ct)],
            _ => return Err(prim.not_linear()),
        },
        Prim::Binary(BinaryOp::Div) => match &x[1] {
            Some(b) if linear(0) => vec![Some(ct / b), None],
            _ => return Err(prim.not_linear()),
        },
        Prim::Select => {
            let cond = x[0].as_ref().ok_or_else(|| prim.not_linear())?;
            let zero = Tensor::scalar_of(0.0, ct.dtype());
            vec![
                None,
                linear(1).then(|| crate::tensor::where_(cond, ct, &zero)),
                linear(2).then(|| crate::tensor::where_(cond, &zero, ct)),
            ]
        }
        Prim::Convert(_) => vec![Some(ct.cast(in_avals[0].dtype))],
        _ => return Err(prim.not_linear()),
    })
}

/// Computes a float unary, integer-power or binary primitive into `target`: the buffer of
/// operand `slot`, which already has the output's shape and dtype and is not needed after this
/// equation. `other` is the other operand of a binary primitive. Returns `false`, leaving
/// `target` as it was, where there is no in-place kernel. Reusing dying buffers saves an
/// allocation (and its page faults) per equation on large arrays.
pub(crate) fn eval_in_place(
    prim: &Prim,
    target: &mut Data,
    slot: usize,
    other: Option<&Data>,
) -> bool {
    match (prim, target, other) {
        (Prim::Unary(UnaryOp::StopGradient), ..) => return false,
        (Prim::Unary(op), Data::F64(a), None) => unary_in_place(*op, a),
        (Prim::Unary(op), Data::F32(a), None) => unary_in_place(*op, a),
        (Prim::PowI(n), Data::F64(a), None) => a.mapv_inplace(|x| x.powi(*n)),
        (Prim::PowI(n), Data::F32(a), None) => a.mapv_inplace(|x| x.powi(*n)),
        (Prim::Binary(op), Data::F64(a), Some(Data::F64(b))) => binary_in_place(*op, a, b, slot),
        (Prim::Binary(op), Data::F32(a), Some(Data::F32(b))) => binary_in_place(*op, a, b, slot),
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
    if a.shape() == b.shape() {
        if let (Some(xs), Some(ys)) = (a.as_slice_mut(), b.as_slice()) {
            xs.iter_mut().zip(ys).for_each(|(x, &y)| *x = f(*x, y));
            return;
        }
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
