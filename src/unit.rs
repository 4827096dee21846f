//! Physical units: static metadata of tensors, checked and propagated when an operation is
//! applied (at trace time inside transforms), never at run time.
//!
//! A [`Unit`] is a product of powers of the seven SI base dimensions with rational exponents,
//! times a scale to SI (`ms` is `s` with scale `1e-3`). A tensor with a unit is a quantity whose
//! values are counted in that unit: `Tensor::from([1.0, 2.0]) * ms` holds `1, 2` and means
//! `0.001 s, 0.002 s`. Operations that combine quantities of one dimension (addition,
//! comparison, `maximum`, `where_`, concatenation) express the others in the first one's unit;
//! products and quotients combine units; powers and roots transform exponents; transcendental
//! functions need dimensionless arguments.
//!
//! ```
//! use brainstate::units::{mV, ms, nS};
//! use brainstate::Tensor;
//! let v = Tensor::from([-65.0, -50.0]) * mV;
//! let g = Tensor::scalar(2.0) * nS;
//! let current = &v * &g; // mV nS, a current
//! let pa = current.value_in(brainstate::units::pA).unwrap().to_vec::<f64>().unwrap();
//! assert!((pa[0] + 130.0).abs() < 1e-9 && (pa[1] + 100.0).abs() < 1e-9);
//! assert_eq!(current.unit().unwrap().to_string(), "pA");
//! let bad = &v + Tensor::scalar(1.0) * ms;
//! assert!(bad.error().unwrap().to_string().contains("mV"));
//! ```
//!
//! A unit prints as a named unit when it is one exactly (`mV * nS` is `pA`), else in the named
//! units it was built from (`mV^2/nS^2`, `mV/ms`), and only as SI base units with a scale when
//! it was built some other way (with [`Unit::scaled`], say).
//!
//! ```
//! use brainstate::units::{mV, ms, nS};
//! assert_eq!((mV * nS).to_string(), "pA");
//! assert_eq!((mV / nS).powi(2).to_string(), "mV^2/nS^2");
//! assert_eq!((nS * mV / ms).to_string(), "nS*mV/ms");
//! let v = -65.0 * mV; // a number times a unit is a quantity
//! assert_eq!(v.to_string(), "-65 mV (f64[])");
//! ```

use std::fmt;
use std::ops::{Div, Mul};

use crate::error::{Error, Result};

/// A rational exponent `num / den`, kept reduced with `den > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Ratio {
    num: i32,
    den: i32,
}

impl Ratio {
    const ZERO: Ratio = Ratio { num: 0, den: 1 };

    const fn int(n: i32) -> Ratio {
        Ratio { num: n, den: 1 }
    }

    /// `num / den` reduced, or `None` when it does not fit `i32` or `den` is 0.
    fn new(num: i128, den: i128) -> Option<Ratio> {
        fn gcd(a: i128, b: i128) -> i128 {
            if b == 0 {
                a.abs().max(1)
            } else {
                gcd(b, a % b)
            }
        }
        if den == 0 {
            return None;
        }
        let g = gcd(num, den) * den.signum();
        Some(Ratio {
            num: i32::try_from(num / g).ok()?,
            den: i32::try_from(den / g).ok()?,
        })
    }

    /// The parts in `i128`, where sums and products of two `i32` fractions never overflow.
    fn wide(self) -> (i128, i128) {
        (i128::from(self.num), i128::from(self.den))
    }

    fn add(self, other: Ratio) -> Option<Ratio> {
        // Most exponents are zero: the unit of a plain number has only those.
        if self.num == 0 {
            return Some(other);
        }
        if other.num == 0 {
            return Some(self);
        }
        let ((a, b), (c, d)) = (self.wide(), other.wide());
        Ratio::new(a * d + c * b, b * d)
    }

    fn mul(self, other: Ratio) -> Option<Ratio> {
        if self.num == 0 || other.num == 0 {
            return Some(Ratio::int(0));
        }
        let ((a, b), (c, d)) = (self.wide(), other.wide());
        Ratio::new(a * c, b * d)
    }

    fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

/// One factor of a unit's printed form: named unit `name` (an index into [`units::NAMED`]) to
/// the power `num / den`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Factor {
    name: u8,
    num: i8,
    den: i8,
}

impl Factor {
    fn power(self) -> Ratio {
        Ratio {
            num: i32::from(self.num),
            den: i32::from(self.den),
        }
    }

    /// The factor with another power; `None` if it does not fit.
    fn with_power(self, p: Ratio) -> Option<Factor> {
        Some(Factor {
            name: self.name,
            num: i8::try_from(p.num).ok()?,
            den: i8::try_from(p.den).ok()?,
        })
    }
}

/// How a unit was built from named units, for printing: up to [`Symbols::CAPACITY`] factors
/// in the order they first appeared. Units built otherwise, or with more factors, have none
/// and print in SI base units. Kept inline so that [`Unit`] stays `Copy`.
#[derive(Clone, Copy, Debug)]
struct Symbols {
    len: u8,
    factors: [Factor; Symbols::CAPACITY],
}

impl Symbols {
    const CAPACITY: usize = 6;
    const EMPTY: Symbols = Symbols {
        len: 0,
        factors: [Factor {
            name: 0,
            num: 0,
            den: 1,
        }; Symbols::CAPACITY],
    };

    const fn one(name: u8) -> Symbols {
        let mut symbols = Symbols::EMPTY;
        symbols.factors[0] = Factor {
            name,
            num: 1,
            den: 1,
        };
        symbols.len = 1;
        symbols
    }

    fn factors(&self) -> &[Factor] {
        &self.factors[..usize::from(self.len)]
    }

    /// The product, merging powers of the same named unit; `None` if it does not fit.
    fn times(self, other: Symbols) -> Option<Symbols> {
        let mut out = self;
        for f in other.factors() {
            let len = usize::from(out.len);
            match out.factors[..len].iter_mut().find(|g| g.name == f.name) {
                Some(g) => *g = g.with_power(g.power().add(f.power())?)?,
                None if len < Symbols::CAPACITY => {
                    out.factors[len] = *f;
                    out.len += 1;
                }
                None => return None,
            }
        }
        // Drop the factors whose powers cancelled, keeping the order of the rest.
        let mut kept = 0;
        for i in 0..usize::from(out.len) {
            if out.factors[i].num != 0 {
                out.factors[kept] = out.factors[i];
                kept += 1;
            }
        }
        out.len = kept as u8;
        Some(out)
    }

    /// Every power multiplied by `p`; `None` if one does not fit.
    fn pow(self, p: Ratio) -> Option<Symbols> {
        let mut out = self;
        for f in out.factors[..usize::from(self.len)].iter_mut() {
            *f = f.with_power(f.power().mul(p)?)?;
        }
        Some(out)
    }
}

impl fmt::Display for Symbols {
    /// `mV*nS/ms`, `pA^2/(mV*nS)`, `1/(ms*nS)`, `ms^(1/2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let term = |factor: &Factor, p: Ratio| {
            let name = units::NAMED[usize::from(factor.name)].0;
            match (p.num, p.den) {
                (1, 1) => name.to_string(),
                (_, 1) => format!("{name}^{}", p.num),
                _ => format!("{name}^({p})"),
            }
        };
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for factor in self.factors() {
            let p = factor.power();
            if p.num > 0 {
                up.push(term(factor, p));
            } else {
                down.push(term(
                    factor,
                    Ratio {
                        num: -p.num,
                        den: p.den,
                    },
                ));
            }
        }
        let up = if up.is_empty() {
            "1".to_string()
        } else {
            up.join("*")
        };
        match down.len() {
            0 => f.write_str(&up),
            1 => write!(f, "{up}/{}", down[0]),
            _ => write!(f, "{up}/({})", down.join("*")),
        }
    }
}

/// `x` rounded to 12 significant digits, so that products of scales land on the same double
/// however they were formed (`ms^3 / ms^2` is exactly `ms`), keeping units comparable.
fn tidy(x: f64) -> f64 {
    // One, the scale of every plain number, is tidy: calls without units skip the formatting.
    if x == 1.0 {
        return x;
    }
    format!("{x:.11e}").parse().unwrap_or(x)
}

/// Base dimensions, in the order of [`Unit`]'s exponents, with their SI symbols.
const BASE: [&str; 7] = ["m", "kg", "s", "A", "K", "mol", "cd"];

/// A physical unit: powers of the SI base dimensions times a scale to SI. Build one from the
/// named [`units`] with `*`, `/`, [`Unit::powi`], [`Unit::powf`] and [`Unit::sqrt`].
///
/// ```
/// use brainstate::units::{mV, ms, second, volt};
/// assert!((mV / ms).same_dimension(&(volt / second)));
/// assert_eq!(ms.powi(2).sqrt(), ms);
/// assert_eq!(mV.to_string(), "mV");
/// assert_eq!(ms.powi(3).to_string(), "ms^3");
/// assert_eq!((volt / second).to_string(), "V/s");
/// assert_eq!(volt.scaled(2.0).to_string(), "2e0 m^2 kg s^-3 A^-1"); // no name: SI
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Unit {
    /// Exponents of metre, kilogram, second, ampere, kelvin, mole, candela.
    dims: [Ratio; 7],
    /// Value of one of this unit in SI units.
    scale: f64,
    /// The named units it was built from, for printing only: equality and hashing ignore it.
    symbols: Option<Symbols>,
}

impl PartialEq for Unit {
    fn eq(&self, other: &Unit) -> bool {
        self.dims == other.dims && self.scale.to_bits() == other.scale.to_bits()
    }
}

impl Eq for Unit {}

impl std::hash::Hash for Unit {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.dims.hash(state);
        self.scale.to_bits().hash(state);
    }
}

impl Unit {
    /// The dimensionless unit `1`.
    ///
    /// ```
    /// use brainstate::{Tensor, Unit};
    /// assert!(Unit::ONE.is_dimensionless());
    /// assert_eq!(Unit::ONE.to_string(), "1");
    /// assert_eq!((Tensor::scalar(2.0) * Unit::ONE).unit(), None); // a plain tensor
    /// ```
    pub const ONE: Unit = Unit {
        dims: [Ratio::ZERO; 7],
        scale: 1.0,
        symbols: Some(Symbols::EMPTY),
    };

    const fn base(index: usize, scale: f64) -> Unit {
        let mut dims = [Ratio::ZERO; 7];
        dims[index] = Ratio::int(1);
        Unit {
            dims,
            scale,
            symbols: None,
        }
    }

    const fn derived(exponents: [i32; 7], scale: f64) -> Unit {
        let mut dims = [Ratio::ZERO; 7];
        let mut i = 0;
        while i < 7 {
            dims[i] = Ratio::int(exponents[i]);
            i += 1;
        }
        Unit {
            dims,
            scale,
            symbols: None,
        }
    }

    /// Named unit `name`, which prints as its symbol.
    const fn named(name: units::Name) -> Unit {
        let mut unit = units::NAMED[name as usize].1;
        unit.symbols = Some(Symbols::one(name as u8));
        unit
    }

    /// The same dimension with another scale: `volt.scaled(1e-3)` is `mV`. The result has no
    /// name of its own: it prints as a named unit it equals, else in SI base units.
    ///
    /// ```
    /// use brainstate::units::{mV, volt};
    /// assert_eq!(volt.scaled(1e-3), mV);
    /// assert_eq!(volt.scaled(1e-3).to_string(), "mV");
    /// ```
    pub const fn scaled(self, factor: f64) -> Unit {
        Unit {
            dims: self.dims,
            scale: self.scale * factor,
            symbols: None,
        }
    }

    /// Whether the unit has no dimension (its scale may still differ from 1, as `ms / s`).
    ///
    /// ```
    /// use brainstate::units::{ms, second};
    /// assert!((ms / second).is_dimensionless());
    /// assert!(!ms.is_dimensionless());
    /// ```
    pub fn is_dimensionless(&self) -> bool {
        self.dims.iter().all(|d| d.num == 0)
    }

    /// Whether both units measure the same dimension.
    ///
    /// ```
    /// use brainstate::units::{mV, ms, second};
    /// assert!(ms.same_dimension(&second));
    /// assert!(!ms.same_dimension(&mV));
    /// ```
    pub fn same_dimension(&self, other: &Unit) -> bool {
        self.dims == other.dims
    }

    /// The value of one of this unit in SI units.
    ///
    /// ```
    /// use brainstate::units::{mV, ms, second};
    /// assert_eq!(mV.scale(), 1e-3);
    /// assert_eq!((ms / second).scale(), 1e-3);
    /// ```
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// This unit to the integer power `n`.
    ///
    /// # Panics
    ///
    /// When an exponent overflows (`i32`), as integer arithmetic does; operations on tensors
    /// use [`Unit::checked_powi`] and fail with an error instead.
    ///
    /// ```
    /// use brainstate::units::{hertz, ms, second};
    /// assert_eq!(ms.powi(2).to_string(), "ms^2");
    /// assert_eq!(second.powi(-1), hertz);
    /// ```
    pub fn powi(&self, n: i32) -> Unit {
        self.checked_powi(n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// This unit to the integer power `n`, or an error when an exponent overflows.
    ///
    /// ```
    /// use brainstate::units::ms;
    /// assert_eq!(ms.checked_powi(3).unwrap().to_string(), "ms^3");
    /// let err = ms.checked_powi(i32::MAX).unwrap().checked_powi(2).unwrap_err();
    /// assert!(err.to_string().contains("overflow"));
    /// ```
    pub fn checked_powi(&self, n: i32) -> Result<Unit> {
        self.pow_ratio(Ratio::int(n), "powi")
    }

    /// This unit to the power `p`, which must be a fraction with a small denominator (up to 12)
    /// when the unit has a dimension; an error otherwise, or when an exponent overflows.
    ///
    /// ```
    /// use brainstate::units::{kg, ms};
    /// assert_eq!(ms.powi(2).powf(0.5).unwrap(), ms);
    /// assert!(ms.powf(std::f64::consts::PI).is_err());
    /// assert!(kg.powf(1e10).is_err()); // the exponent does not fit
    /// ```
    pub fn powf(&self, p: f64) -> Result<Unit> {
        let fraction = (1..=12).find_map(|den| {
            let num = (p * den as f64).round();
            ((p * den as f64 - num).abs() < 1e-9).then_some((num, den))
        });
        if self.is_dimensionless() {
            return Ok(Unit {
                dims: self.dims,
                scale: self.scale.powf(p),
                symbols: fraction
                    .and_then(|(num, den)| {
                        fits_i64(num).and_then(|n| Ratio::new(n.into(), den.into()))
                    })
                    .and_then(|r| self.symbols?.pow(r)),
            });
        }
        let (num, den) = fraction.ok_or_else(|| Error::Units {
            op: "pow".into(),
            msg: format!(
                "cannot raise {self} to the power {p}: exponents must be simple fractions"
            ),
        })?;
        let ratio = fits_i64(num)
            .and_then(|n| Ratio::new(n.into(), den.into()))
            .ok_or_else(|| overflow("pow", self, &format!("the power {p}")))?;
        self.pow_ratio(ratio, "pow")
    }

    fn pow_ratio(&self, p: Ratio, op: &str) -> Result<Unit> {
        let mut dims = self.dims;
        for d in &mut dims {
            *d = d
                .mul(p)
                .ok_or_else(|| overflow(op, self, &format!("the power {p}")))?;
        }
        Ok(Unit {
            dims,
            scale: tidy(self.scale.powf(p.as_f64())),
            symbols: self.symbols.and_then(|s| s.pow(p)),
        })
    }

    /// The square root.
    ///
    /// # Panics
    ///
    /// When an exponent's denominator overflows (`i32`); operations on tensors use
    /// [`Unit::checked_sqrt`] and fail with an error instead.
    ///
    /// ```
    /// use brainstate::units::mV;
    /// assert_eq!((mV * mV).sqrt(), mV);
    /// ```
    pub fn sqrt(&self) -> Unit {
        self.checked_sqrt().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The square root, or an error when an exponent's denominator overflows.
    ///
    /// ```
    /// use brainstate::units::mV;
    /// let mut u = mV;
    /// for _ in 0..29 {
    ///     u = u.checked_sqrt().unwrap();
    /// }
    /// assert!(u.checked_sqrt().unwrap().checked_sqrt().is_err()); // mV^(1/2^31)
    /// ```
    pub fn checked_sqrt(&self) -> Result<Unit> {
        self.pow_ratio(Ratio { num: 1, den: 2 }, "sqrt")
    }

    /// The product, or an error when an exponent overflows.
    ///
    /// ```
    /// use brainstate::units::{mV, nS};
    /// assert_eq!(mV.checked_mul(&nS).unwrap().to_string(), "pA");
    /// ```
    pub fn checked_mul(&self, other: &Unit) -> Result<Unit> {
        let mut dims = self.dims;
        for (d, o) in dims.iter_mut().zip(other.dims) {
            *d = d
                .add(o)
                .ok_or_else(|| overflow("mul", self, &format!("times {other}")))?;
        }
        let symbols = match (self.symbols, other.symbols) {
            (Some(a), Some(b)) => a.times(b),
            _ => None,
        };
        Ok(Unit {
            dims,
            scale: tidy(self.scale * other.scale),
            symbols,
        })
    }

    /// The quotient, or an error when an exponent overflows.
    ///
    /// ```
    /// use brainstate::units::{mV, ms};
    /// assert_eq!(mV.checked_div(&ms).unwrap().to_string(), "mV/ms");
    /// ```
    pub fn checked_div(&self, other: &Unit) -> Result<Unit> {
        self.checked_mul(&other.checked_powi(-1)?)
    }

    /// The factor that converts values counted in this unit into values counted in `target`,
    /// or an error naming `op` and both units when their dimensions differ.
    pub(crate) fn factor_to(&self, target: &Unit, op: &str) -> Result<f64> {
        if self.same_dimension(target) {
            return Ok(self.scale / target.scale);
        }
        let got = if self.is_dimensionless() {
            "a plain number".to_string()
        } else {
            format!("a quantity in {self}")
        };
        let msg = if target.is_dimensionless() {
            format!("expected a plain (dimensionless) number, got {got}")
        } else {
            format!("expected a quantity in {target} (or a unit of the same dimension), got {got}")
        };
        Err(Error::Units {
            op: op.to_string(),
            msg,
        })
    }
}

/// The product of units.
///
/// # Panics
///
/// When an exponent overflows (`i32`); operations on tensors use [`Unit::checked_mul`].
impl Mul for Unit {
    type Output = Unit;
    fn mul(self, other: Unit) -> Unit {
        self.checked_mul(&other).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The quotient of units.
///
/// # Panics
///
/// When an exponent overflows (`i32`); operations on tensors use [`Unit::checked_div`].
impl Div for Unit {
    type Output = Unit;
    fn div(self, other: Unit) -> Unit {
        self.checked_div(&other).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `x` as an `i64` when it is an integer that fits.
fn fits_i64(x: f64) -> Option<i64> {
    (x.abs() < i64::MAX as f64).then_some(x as i64)
}

/// The error for an exponent that overflows.
fn overflow(op: &str, unit: &Unit, what: &str) -> Error {
    Error::Units {
        op: op.to_string(),
        msg: format!("the exponents of {unit} to {what} overflow (they are 32-bit fractions)"),
    }
}

impl fmt::Display for Unit {
    /// A named unit (`mV`) or a named unit's power (`ms^3`) that it equals; else the named
    /// units it was built from (`mV/nS`); else SI base units with a scale.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_dimensionless() && self.scale == 1.0 {
            return f.write_str("1");
        }
        let close = |u: &Unit| u.dims == self.dims && (u.scale / self.scale - 1.0).abs() < 1e-12;
        for k in [1, 2, 3, 4, -1, -2, -3, -4] {
            if let Some((name, _)) = units::NAMED.iter().find(|(_, u)| close(&u.powi(k))) {
                return match k {
                    1 => f.write_str(name),
                    _ => write!(f, "{name}^{k}"),
                };
            }
        }
        if let Some(symbols) = self.symbols.filter(|s| s.len > 0) {
            return write!(f, "{symbols}");
        }
        let mut parts = Vec::new();
        if self.scale != 1.0 {
            parts.push(format!("{:e}", self.scale));
        }
        for (symbol, d) in BASE.iter().zip(self.dims) {
            match (d.num, d.den) {
                (0, _) => {}
                (1, 1) => parts.push(symbol.to_string()),
                _ => parts.push(format!("{symbol}^{d}")),
            }
        }
        if parts.is_empty() {
            f.write_str("1")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// Defines the named units: a constant for each in [`units`], with its documentation, and the
/// table [`units::NAMED`] of their symbols and SI values, indexed by [`units::Name`].
macro_rules! named_units {
    ($($(#[$doc:meta])* $id:ident = $symbol:literal, $si:expr;)*) => {
        /// Indices of the named units in [`NAMED`].
        #[derive(Clone, Copy)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub(super) enum Name {
            $($id,)*
        }

        /// The named units: symbol, and value in SI base units.
        pub(super) const NAMED: &[(&str, Unit)] = &[$(($symbol, $si),)*];

        $($(#[$doc])* pub const $id: Unit = Unit::named(Name::$id);)*
    };
}

/// The named units of neuroscience and their SI bases, with prefixes. Lower-case names follow
/// the symbols (`mV`, `nS`), as brainunit's do.
///
/// ```
/// use brainstate::units::{mV, volt};
/// use brainstate::Tensor;
/// let v = Tensor::from([-65.0]) * mV;
/// assert!((v.value_in(volt).unwrap().item().unwrap() + 0.065).abs() < 1e-12);
/// ```
#[allow(non_upper_case_globals)]
pub mod units {
    use super::Unit;

    // The SI units that named units scale (without names of their own).
    const METRE: Unit = Unit::base(0, 1.0);
    const KILOGRAM: Unit = Unit::base(1, 1.0);
    const SECOND: Unit = Unit::base(2, 1.0);
    const AMPERE: Unit = Unit::base(3, 1.0);
    const MOLAR: Unit = Unit::derived([-3, 0, 0, 0, 0, 1, 0], 1e3);
    const VOLT: Unit = Unit::derived([2, 1, -3, -1, 0, 0, 0], 1.0);
    const SIEMENS: Unit = Unit::derived([-2, -1, 3, 2, 0, 0, 0], 1.0);
    const OHM: Unit = Unit::derived([2, 1, -3, -2, 0, 0, 0], 1.0);
    const FARAD: Unit = Unit::derived([-2, -1, 4, 2, 0, 0, 0], 1.0);

    named_units! {
        /// metre
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!((meter.to_string(), meter.scale()), ("m".to_string(), 1.0));
        /// ```
        meter = "m", METRE;
        /// centimetre
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(cm.same_dimension(&meter) && cm.scale() == 1e-2);
        /// ```
        cm = "cm", METRE.scaled(1e-2);
        /// millimetre
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(mm.same_dimension(&meter) && mm.scale() == 1e-3);
        /// ```
        mm = "mm", METRE.scaled(1e-3);
        /// micrometre
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(um.same_dimension(&meter) && um.scale() == 1e-6);
        /// ```
        um = "um", METRE.scaled(1e-6);
        /// kilogram
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!((kg.to_string(), kg.scale()), ("kg".to_string(), 1.0));
        /// ```
        kg = "kg", KILOGRAM;
        /// gram
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(gram.same_dimension(&kg) && gram.scale() == 1e-3);
        /// assert_eq!(gram.to_string(), "g");
        /// ```
        gram = "g", KILOGRAM.scaled(1e-3);
        /// second
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!((second.to_string(), second.scale()), ("s".to_string(), 1.0));
        /// ```
        second = "s", SECOND;
        /// millisecond
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(ms.same_dimension(&second) && ms.scale() == 1e-3);
        /// ```
        ms = "ms", SECOND.scaled(1e-3);
        /// microsecond
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(us.same_dimension(&second) && us.scale() == 1e-6);
        /// assert_eq!((Mohm * pF).to_string(), "us"); // a membrane time constant
        /// ```
        us = "us", SECOND.scaled(1e-6);
        /// ampere
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!((amp.to_string(), amp.scale()), ("A".to_string(), 1.0));
        /// ```
        amp = "A", AMPERE;
        /// milliampere
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(mA.same_dimension(&amp) && mA.scale() == 1e-3);
        /// ```
        mA = "mA", AMPERE.scaled(1e-3);
        /// nanoampere
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(nA.same_dimension(&amp) && nA.scale() == 1e-9);
        /// ```
        nA = "nA", AMPERE.scaled(1e-9);
        /// picoampere
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(pA.same_dimension(&amp) && pA.scale() == 1e-12);
        /// assert_eq!((mV * nS).to_string(), "pA");
        /// ```
        pA = "pA", AMPERE.scaled(1e-12);
        /// kelvin
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!(kelvin.to_string(), "K");
        /// ```
        kelvin = "K", Unit::base(4, 1.0);
        /// mole
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!(mole.to_string(), "mol");
        /// ```
        mole = "mol", Unit::base(5, 1.0);
        /// molar, mol/L
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(molar.same_dimension(&(mole / meter.powi(3))));
        /// assert_eq!(molar.scale(), 1e3); // 1 mol/L is 1000 mol/m^3
        /// ```
        molar = "M", MOLAR;
        /// millimolar
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(mM.same_dimension(&molar) && (mM.scale() - 1.0).abs() < 1e-12);
        /// ```
        mM = "mM", MOLAR.scaled(1e-3);
        /// micromolar
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(uM.same_dimension(&molar) && (uM.scale() - 1e-3).abs() < 1e-15);
        /// ```
        uM = "uM", MOLAR.scaled(1e-6);
        /// candela
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!(candela.to_string(), "cd");
        /// ```
        candela = "cd", Unit::base(6, 1.0);
        /// hertz, 1/s
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!(hertz, second.powi(-1));
        /// assert_eq!(hertz.to_string(), "Hz");
        /// ```
        hertz = "Hz", Unit::derived([0, 0, -1, 0, 0, 0, 0], 1.0);
        /// volt, kg m^2 s^-3 A^-1
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(volt.same_dimension(&(amp * ohm)));
        /// assert_eq!(volt.to_string(), "V");
        /// ```
        volt = "V", VOLT;
        /// millivolt
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(mV.same_dimension(&volt) && mV.scale() == 1e-3);
        /// ```
        mV = "mV", VOLT.scaled(1e-3);
        /// siemens, kg^-1 m^-2 s^3 A^2
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert_eq!(siemens, ohm.powi(-1));
        /// assert_eq!(siemens.to_string(), "S");
        /// ```
        siemens = "S", SIEMENS;
        /// millisiemens
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(mS.same_dimension(&siemens) && mS.scale() == 1e-3);
        /// ```
        mS = "mS", SIEMENS.scaled(1e-3);
        /// nanosiemens
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(nS.same_dimension(&siemens) && nS.scale() == 1e-9);
        /// ```
        nS = "nS", SIEMENS.scaled(1e-9);
        /// ohm, kg m^2 s^-3 A^-2
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(ohm.same_dimension(&(volt / amp)));
        /// assert_eq!(ohm.to_string(), "ohm");
        /// ```
        ohm = "ohm", OHM;
        /// megaohm
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(Mohm.same_dimension(&ohm) && Mohm.scale() == 1e6);
        /// ```
        Mohm = "Mohm", OHM.scaled(1e6);
        /// farad, kg^-1 m^-2 s^4 A^2
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(farad.same_dimension(&(second / ohm)));
        /// assert_eq!(farad.to_string(), "F");
        /// ```
        farad = "F", FARAD;
        /// microfarad
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(uF.same_dimension(&farad) && uF.scale() == 1e-6);
        /// assert_eq!((Mohm * uF).to_string(), "s");
        /// ```
        uF = "uF", FARAD.scaled(1e-6);
        /// picofarad
        ///
        /// ```
        /// use brainstate::units::*;
        /// assert!(pF.same_dimension(&farad) && pF.scale() == 1e-12);
        /// ```
        pF = "pF", FARAD.scaled(1e-12);
    }
}
