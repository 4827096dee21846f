//! Elementwise primitives: unary and binary arithmetic, transcendental functions, comparisons,
//! `select`, dtype conversion and integer powers.
//!
//! Binary primitives broadcast (NumPy rules) and need operands of one dtype; the user-level
//! operations promote before calling them. The kernels are in [`kernels`].

mod kernels;
mod math;

use std::fmt;

pub(crate) use self::kernels::eval_in_place;
pub(super) use self::kernels::zip;
use super::{
    Dependence, Primal, Rules, Tangent, UnitRule, Units, arity, broadcast_shapes, cotangents,
    not_linear, one, require,
};
use crate::error::{Error, Result};
use crate::storage::{Aval, DType, Data};
use crate::tensor::{Tensor, where_};
use crate::unit::Unit;

/// The elementwise primitives.
///
/// ```
/// use brainstate::primitives::{BinaryOp, Elementwise, Prim};
/// let add = Prim::Elementwise(Elementwise::Binary(BinaryOp::Add));
/// assert_eq!((add.name(), Prim::from(BinaryOp::Add)), ("add", add.clone()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Elementwise {
    /// A function of one operand.
    Unary(UnaryOp),
    /// A function of two operands, with NumPy broadcasting.
    Binary(BinaryOp),
    /// A comparison, giving `bool`.
    Compare(CmpOp),
    /// `select(cond, on_true, on_false)`, with broadcasting.
    Select,
    /// Conversion to another dtype.
    Convert(DType),
    /// `x^n` for an integer `n`.
    PowI(i32),
}

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
    /// The error function `2/sqrt(pi) * integral from 0 to x of e^(-t^2) dt` (reals)
    Erf,
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
            UnaryOp::Erf => "erf",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::StopGradient => "stop_gradient",
            UnaryOp::Conj => "conj",
            UnaryOp::Real => "real",
            UnaryOp::Imag => "imag",
        }
    }

    /// `d out`, given the input `x`, the output `out` and the input tangent `t`; `None` for the
    /// operations whose derivative is zero everywhere (declared here by name).
    fn jvp(self, x: &Tensor, out: &Tensor, t: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(match self {
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
            UnaryOp::Erf => t * ((-(x * x)).exp() * std::f64::consts::FRAC_2_SQRT_PI),
            UnaryOp::Abs if x.dtype()?.is_complex() => {
                // d|z| = Re(conj(z) dz) / |z|, taken as 0 at z = 0 (as JAX does).
                let safe = where_(&out.eq(0.0), &Tensor::scalar_of(1.0, out.dtype()?), out);
                (x.conj() * t).real() / safe
            }
            UnaryOp::Abs => t * x.sign(),
            UnaryOp::Conj => t.conj(),
            UnaryOp::Real => t.real(),
            UnaryOp::Imag => t.imag(),
            UnaryOp::Sign | UnaryOp::StopGradient => return Ok(None),
        }))
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

    /// `d out` from the operands, the output and the nonzero tangents (padded to the output's
    /// rank); `None` if both are zero.
    fn jvp(
        self,
        (a, b): (&Tensor, &Tensor),
        out: &Tensor,
        (ta, tb): (Option<&Tensor>, Option<&Tensor>),
    ) -> Result<Option<Tensor>> {
        let sum = |x: Option<Tensor>, y: Option<Tensor>| match (x, y) {
            (Some(x), Some(y)) => Some(x + y),
            (x, y) => x.or(y),
        };
        Ok(match self {
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
                let dtype = out.dtype()?;
                let weight_a = wins.cast(dtype) + a.eq(b).cast(dtype) * 0.5;
                let weight_b = 1.0 - &weight_a;
                sum(ta.map(|t| t * &weight_a), tb.map(|t| t * &weight_b))
            }
            BinaryOp::Complex => {
                let zero = Tensor::scalar_of(0.0, a.dtype()?);
                let (re, im) = (ta.unwrap_or(&zero), tb.unwrap_or(&zero));
                Some(Tensor::apply(BinaryOp::Complex, &[re, im]))
            }
            BinaryOp::Atan2 => {
                // d atan2(a, b) = (b da - a db) / (a^2 + b^2)
                let norm = a * a + b * b;
                sum(ta.map(|t| t * (b / &norm)), tb.map(|t| t * (-a / &norm)))
            }
            BinaryOp::Pow => {
                let da = ta.map(|t| t * (b * a.pow(&(b - 1.0))));
                // d/db a^b = log(a) a^b, taken as 0 where a == 0 (as JAX does).
                let log_a = where_(&a.eq(0.0), &Tensor::scalar_of(0.0, a.dtype()?), &a.log());
                let db = tb.map(|t| t * (log_a * out));
                sum(da, db)
            }
        })
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
}

impl fmt::Display for Elementwise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Elementwise::Convert(d) => write!(f, "{name}[dtype={d}]"),
            Elementwise::PowI(n) => write!(f, "{name}[y={n}]"),
            Elementwise::Unary(_)
            | Elementwise::Binary(_)
            | Elementwise::Compare(_)
            | Elementwise::Select => f.write_str(name),
        }
    }
}

impl Rules for Elementwise {
    fn name(&self) -> &'static str {
        match self {
            Elementwise::Unary(op) => op.name(),
            Elementwise::Binary(op) => op.name(),
            Elementwise::Compare(op) => op.name(),
            Elementwise::Select => "select",
            Elementwise::Convert(_) => "convert",
            Elementwise::PowI(_) => "integer_pow",
        }
    }

    fn infer(&self, ins: &[Aval]) -> Result<Vec<Aval>> {
        let name = self.name();
        let operands = match self {
            Elementwise::Unary(_) | Elementwise::Convert(_) | Elementwise::PowI(_) => 1,
            Elementwise::Binary(_) | Elementwise::Compare(_) => 2,
            Elementwise::Select => 3,
        };
        arity(name, ins, operands)?;
        let same_dtype = |a: &Aval, b: &Aval| {
            if a.dtype == b.dtype {
                Ok(())
            } else {
                Err(Error::dtype(
                    name,
                    format!("operands must have one dtype, the other is {}", a.dtype),
                    b.dtype,
                ))
            }
        };
        let x = &ins[0];
        let inexact = |x: &Aval| {
            require(
                name,
                x.dtype.is_inexact(),
                "a floating-point or complex",
                x.dtype,
            )
        };
        let shape = |dtype: DType| -> Result<Vec<Aval>> {
            let mut shape = x.shape.clone();
            for other in &ins[1..] {
                shape = broadcast_shapes(name, &shape, &other.shape)?;
            }
            Ok(one(Aval::new(&shape, dtype)))
        };
        match self {
            Elementwise::Unary(UnaryOp::StopGradient) => Ok(one(x.clone())),
            Elementwise::Unary(UnaryOp::Real | UnaryOp::Imag) => {
                inexact(x)?;
                shape(x.dtype.real())
            }
            Elementwise::Unary(UnaryOp::Abs) if x.dtype.is_complex() => shape(x.dtype.real()),
            Elementwise::Unary(UnaryOp::Erf) => {
                require(name, x.dtype.is_float(), "a real floating-point", x.dtype)?;
                shape(x.dtype)
            }
            Elementwise::Unary(u) => {
                if !(u.takes_integers() && x.dtype == DType::I64) {
                    inexact(x)?;
                }
                shape(x.dtype)
            }
            Elementwise::PowI(_) => {
                inexact(x)?;
                shape(x.dtype)
            }
            Elementwise::Convert(dtype) => Ok(one(Aval::new(&x.shape, *dtype))),
            Elementwise::Binary(b) => {
                same_dtype(x, &ins[1])?;
                match b {
                    BinaryOp::Complex => {
                        require(name, x.dtype.is_float(), "a real floating-point", x.dtype)?;
                        return shape(x.dtype.complex());
                    }
                    BinaryOp::Atan2 => {
                        require(name, x.dtype.is_float(), "a real floating-point", x.dtype)?
                    }
                    BinaryOp::Max | BinaryOp::Min => {
                        let real = matches!(x.dtype, DType::I64 | DType::F32 | DType::F64);
                        require(name, real, "a real", x.dtype)?
                    }
                    BinaryOp::Div | BinaryOp::Pow => inexact(x)?,
                    BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => {
                        require(name, x.dtype != DType::Bool, "a numeric", x.dtype)?
                    }
                }
                shape(x.dtype)
            }
            Elementwise::Compare(c) => {
                same_dtype(x, &ins[1])?;
                let ordered = !matches!(c, CmpOp::Eq | CmpOp::Ne);
                let ok = !(ordered && x.dtype.is_complex());
                require(name, ok, "an ordered (not complex)", x.dtype)?;
                shape(DType::Bool)
            }
            Elementwise::Select => {
                if x.dtype != DType::Bool {
                    return Err(Error::dtype(name, "the condition must be bool", x.dtype));
                }
                same_dtype(&ins[1], &ins[2])?;
                shape(ins[1].dtype)
            }
        }
    }

    fn eval(&self, ins: &[&Data]) -> Result<Vec<Data>> {
        kernels::eval(self, ins).map(one)
    }

    fn jvp(
        &self,
        x: &[Tensor],
        t: &[Tangent],
        outs: &[Tensor],
        batch: &[usize],
    ) -> Result<Vec<Tangent>> {
        let out = &outs[0];
        let tangent = match self {
            Elementwise::Unary(op) => match t[0].value() {
                Some(t) => op.jvp(&x[0], out, t)?,
                None => None,
            },
            Elementwise::PowI(0) => None,
            Elementwise::PowI(n) => t[0].value().map(|t| {
                // x^(n-1), also where n - 1 does not fit an i32.
                let lower = match n.checked_sub(1) {
                    Some(m) => x[0].powi(m),
                    None => x[0].powi(*n) / &x[0],
                };
                t * (lower * f64::from(*n))
            }),
            Elementwise::Binary(op) => op.jvp((&x[0], &x[1]), out, (t[0].value(), t[1].value()))?,
            // Booleans and integers carry no derivative.
            Elementwise::Compare(_) => None,
            Elementwise::Convert(dtype) if dtype.is_inexact() && x[0].dtype()?.is_inexact() => {
                t[0].value().map(|t| t.cast(*dtype))
            }
            Elementwise::Convert(_) => None,
            Elementwise::Select => {
                let on_true = t[1].instantiate();
                let on_false = t[2].instantiate();
                Some(where_(&x[0], &on_true, &on_false))
            }
        };
        // A tangent that did not meet every operand may still lack some broadcast axes.
        let aval = out.aval()?;
        let shape = super::concat_dims(batch, &aval.shape);
        let tangent = tangent.map(|t| t.broadcast_to(&shape));
        Ok(one(Tangent::or_zero(tangent, batch, &aval)))
    }

    fn transpose(&self, cts: &[Tensor], x: &[Primal], batch: &[usize]) -> Result<Vec<Tangent>> {
        let ct = &cts[0];
        let name = self.name();
        // Transposes pair values by Re(a b), as JAX does, so real-to-complex maps and
        // conjugation transpose as below.
        let linear_dtype = || x[0].aval().map(|a| a.dtype);
        let each = |f: &dyn Fn(usize) -> Tensor| cotangents(x, batch, f);
        match self {
            Elementwise::Unary(UnaryOp::Neg) => each(&|_| -ct),
            Elementwise::Unary(UnaryOp::Conj) => each(&|_| ct.conj()),
            Elementwise::Unary(UnaryOp::Real) => {
                let dtype = linear_dtype()?;
                each(&|_| ct.cast(dtype))
            }
            Elementwise::Unary(UnaryOp::Imag) => {
                let dtype = linear_dtype()?;
                let minus_i = Tensor::from(num_complex::Complex64::new(0.0, -1.0)).cast(dtype);
                each(&|_| ct.cast(dtype) * &minus_i)
            }
            Elementwise::Convert(_) => {
                let dtype = linear_dtype()?;
                each(&|_| ct.cast(dtype))
            }
            Elementwise::Binary(BinaryOp::Complex) => {
                each(&|i| if i == 0 { ct.real() } else { -ct.imag() })
            }
            Elementwise::Binary(BinaryOp::Add) => each(&|_| ct.clone()),
            Elementwise::Binary(BinaryOp::Sub) => each(&|i| if i == 0 { ct.clone() } else { -ct }),
            Elementwise::Binary(BinaryOp::Mul) => match (x[0].known(), x[1].known()) {
                (None, Some(b)) => each(&|_| ct * b),
                (Some(a), None) => each(&|_| a * ct),
                _ => Err(not_linear(name)),
            },
            Elementwise::Binary(BinaryOp::Div) => match (&x[0], x[1].known()) {
                (Primal::Linear(_), Some(b)) => each(&|_| ct / b),
                _ => Err(not_linear(name)),
            },
            Elementwise::Select => {
                let cond = x[0].known().ok_or_else(|| not_linear(name))?;
                let zero = Tensor::scalar_of(0.0, ct.dtype()?);
                each(&|i| {
                    if i == 1 {
                        where_(cond, ct, &zero)
                    } else {
                        where_(cond, &zero, ct)
                    }
                })
            }
            Elementwise::Unary(
                UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Log1p
                | UnaryOp::Expm1
                | UnaryOp::Sqrt
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Tan
                | UnaryOp::Tanh
                | UnaryOp::Logistic
                | UnaryOp::Erf
                | UnaryOp::Abs
                | UnaryOp::Sign
                | UnaryOp::StopGradient,
            )
            | Elementwise::Binary(
                BinaryOp::Max | BinaryOp::Min | BinaryOp::Pow | BinaryOp::Atan2,
            )
            | Elementwise::Compare(_)
            | Elementwise::PowI(_) => Err(not_linear(name)),
        }
    }

    fn units(&self, units: &[Option<Unit>], inputs: &[&Tensor]) -> Result<UnitRule> {
        let name = self.name();
        let u = Units::new(name, units);
        // Transcendental functions take dimensionless values, with any scale folded in.
        let dimensionless = || -> Result<UnitRule> {
            Ok(UnitRule {
                factors: vec![u.dimensionless(0)?],
                outputs: vec![None],
            })
        };
        let common = |operands: &[usize], dimensionless_result: bool| -> Result<UnitRule> {
            let (factors, target) = u.common(operands)?;
            let unit = (!dimensionless_result).then_some(target);
            Ok(UnitRule {
                factors,
                outputs: vec![unit],
            })
        };
        Ok(match self {
            Elementwise::Unary(UnaryOp::Sqrt) => u.keep(Some(u.of(0).checked_sqrt()?)),
            Elementwise::Unary(UnaryOp::Sign) => u.keep(None),
            Elementwise::Unary(
                UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Log1p
                | UnaryOp::Expm1
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Tan
                | UnaryOp::Tanh
                | UnaryOp::Logistic
                | UnaryOp::Erf,
            ) => dimensionless()?,
            Elementwise::Unary(
                UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::StopGradient
                | UnaryOp::Conj
                | UnaryOp::Real
                | UnaryOp::Imag,
            )
            | Elementwise::Convert(_) => u.same_as_first(),
            Elementwise::PowI(n) => u.keep(Some(u.of(0).checked_powi(*n)?)),
            Elementwise::Binary(BinaryOp::Mul) => u.keep(Some(u.of(0).checked_mul(&u.of(1))?)),
            Elementwise::Binary(BinaryOp::Div) => u.keep(Some(u.of(0).checked_div(&u.of(1))?)),
            Elementwise::Binary(BinaryOp::Pow) if u.of(0).is_dimensionless() => UnitRule {
                factors: vec![u.dimensionless(0)?, u.dimensionless(1)?],
                outputs: vec![None],
            },
            Elementwise::Binary(BinaryOp::Pow) => {
                // A quantity's power needs a known, dimensionless exponent.
                let exponent = u
                    .dimensionless(1)
                    .and_then(|scale| Ok(inputs[1].item()? * scale))
                    .map_err(|_| Error::Units {
                        op: name.to_string(),
                        msg: format!(
                            "the power of a quantity in {} needs a constant dimensionless \
                             scalar exponent",
                            u.of(0)
                        ),
                    })?;
                u.keep(Some(u.of(0).powf(exponent)?))
            }
            Elementwise::Binary(BinaryOp::Atan2) | Elementwise::Compare(_) => {
                common(&[0, 1], true)?
            }
            Elementwise::Binary(
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Max | BinaryOp::Min | BinaryOp::Complex,
            ) => common(&[0, 1], false)?,
            Elementwise::Select => common(&[1, 2], false)?,
        })
    }

    fn dependence(&self, ins: &[Aval]) -> Dependence {
        // By the derivatives' structure: `f`irst and `s`econd order in each operand, and
        // the cross term of two operands.
        let unary = |first: bool, second: bool| Dependence::Elementwise {
            first: vec![first],
            second: if second { vec![(0, 0)] } else { vec![] },
        };
        let binary = |second: &[(usize, usize)]| Dependence::Elementwise {
            first: vec![true, true],
            second: second.to_vec(),
        };
        match self {
            Elementwise::Unary(
                UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Log1p
                | UnaryOp::Expm1
                | UnaryOp::Sqrt
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Tan
                | UnaryOp::Tanh
                | UnaryOp::Logistic
                | UnaryOp::Erf,
            ) => unary(true, true),
            // |z| of a complex z is curved in its real and imaginary parts.
            Elementwise::Unary(UnaryOp::Abs) => unary(true, ins[0].dtype.is_complex()),
            Elementwise::Unary(UnaryOp::Neg | UnaryOp::Conj | UnaryOp::Real | UnaryOp::Imag) => {
                unary(true, false)
            }
            Elementwise::Unary(UnaryOp::Sign | UnaryOp::StopGradient) | Elementwise::Compare(_) => {
                Dependence::None
            }
            Elementwise::PowI(0) => Dependence::None,
            Elementwise::PowI(n) => unary(true, *n != 1),
            // Only conversions between floating-point or complex types carry derivatives.
            Elementwise::Convert(to) => {
                let differentiable = to.is_inexact() && ins[0].dtype.is_inexact();
                if differentiable {
                    unary(true, false)
                } else {
                    Dependence::None
                }
            }
            Elementwise::Binary(
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Max | BinaryOp::Min | BinaryOp::Complex,
            ) => binary(&[]),
            Elementwise::Binary(BinaryOp::Mul) => binary(&[(0, 1)]),
            Elementwise::Binary(BinaryOp::Div) => binary(&[(0, 1), (1, 1)]),
            Elementwise::Binary(BinaryOp::Pow | BinaryOp::Atan2) => {
                binary(&[(0, 0), (1, 1), (0, 1)])
            }
            // The condition's derivative is zero; either branch may be taken.
            Elementwise::Select => Dependence::Elementwise {
                first: vec![false, true, true],
                second: vec![],
            },
        }
    }
}
