//! The primitive set and its rules.
//!
//! Every traced program is made of these primitives; every user-level operation is either one
//! of them or a composition of them. The primitives come in families, one file each; a family
//! has its own op type and implements `Rules` for it: shape/dtype inference, the reference
//! kernel, the JVP rule, the transpose rule, the unit rule and the printed name. `Rules` has
//! no default methods and every implementation matches exhaustively over its ops, with no
//! catch-all arm, so a new primitive that lacks a rule does not compile. A derivative that is
//! zero, or a primitive that is not linear, says so by name.
//!
//! The rules are written with tensor operations, so a derivative program is a program again and
//! can be differentiated once more. Conventions, shared by every family:
//! - tangents and cotangents carry a leading *batch* of directions (`batch`, possibly empty):
//!   a tangent of an input of shape `s` has shape `batch ++ s`; so `k` directions, or the whole
//!   identity basis, go through one pass;
//! - a zero tangent is `Tangent::Zero`, which rules skip; in a transpose rule, the inputs
//!   whose cotangents are wanted are `Primal::Linear`;
//! - elementwise rules receive tangents already padded to the output's rank, and cotangents
//!   returned for a broadcast operand are summed back to its shape by the driver
//!   (`autodiff`), so no rule repeats that bookkeeping.

mod creation;
mod elementwise;
pub(crate) mod loops;
pub(crate) mod matmul;
mod reduce;
mod structural;
pub(crate) mod sum;

use std::fmt;

pub use self::creation::Creation;
pub(crate) use self::elementwise::eval_in_place;
pub use self::elementwise::{BinaryOp, CmpOp, Elementwise, UnaryOp};
pub use self::loops::{Loop, Progress, ProgressReport};
pub use self::matmul::MatMul;
pub use self::reduce::{Reduce, ReduceOp, keepdims_shape};
pub use self::structural::Structural;
pub(crate) use self::structural::{transpose_into, transposed_matrices};
use crate::error::{Error, Result};
use crate::storage::{Aval, DType, Data};
use crate::tensor::Tensor;
use crate::unit::Unit;

/// A program over this crate's primitives (see [`crate::ir`]).
pub type Program = crate::ir::Program<Prim>;
/// An equation of a [`Program`].
pub type Eqn = crate::ir::Eqn<Prim>;

/// A primitive operation with its static parameters, by family.
///
/// ```
/// use brainstate::primitives::{Elementwise, Prim};
/// use brainstate::{make_program, Tensor};
/// assert_eq!(Prim::from(Elementwise::PowI(3)).to_string(), "integer_pow[y=3]");
/// let p = make_program(|x: &Tensor| x.powi(3).sum(), &Tensor::from([1.0, 2.0])).unwrap();
/// assert!(p.to_string().contains("integer_pow[y=3]"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Prim {
    /// Elementwise arithmetic, functions, comparisons, `select`, conversions.
    Elementwise(Elementwise),
    /// Broadcast, reshape, transpose, slice, pad, concatenate.
    Structural(Structural),
    /// Reductions over axes.
    Reduce(Reduce),
    /// Matrix products.
    MatMul(MatMul),
    /// Arrays generated from their parameters alone.
    Creation(Creation),
    /// A loop whose body is a program (`scan`).
    Loop(Loop),
}

/// The rules of one primitive family, over its own op type. Implementations match
/// exhaustively over their ops: there is no default and no catch-all, so a primitive cannot
/// be added without every rule.
pub(crate) trait Rules: fmt::Display {
    /// The name as printed in programs, without parameters.
    fn name(&self) -> &'static str;

    /// Shapes and dtypes of the results, or an error naming the operation and the shapes.
    fn infer(&self, ins: &[Aval]) -> Result<Vec<Aval>>;

    /// The reference kernel, on inputs that passed [`Rules::infer`].
    fn eval(&self, ins: &[&Data]) -> Result<Vec<Data>>;

    /// The tangents of the results, given the primal inputs `x`, their tangents `t` (at least
    /// one nonzero; shapes `batch ++ input shape`) and the primal results `outs`.
    fn jvp(
        &self,
        x: &[Tensor],
        t: &[Tangent],
        outs: &[Tensor],
        batch: &[usize],
    ) -> Result<Vec<Tangent>>;

    /// The cotangents of the inputs, given those of the results (`batch ++ output shape`) and
    /// the inputs, known or linear. Only primitives linear in their [`Primal::Linear`] inputs
    /// have one; the others fail with [`not_linear`], named in the match.
    fn transpose(&self, cts: &[Tensor], x: &[Primal], batch: &[usize]) -> Result<Vec<Tangent>>;

    /// The unit rule: how operands in units are rescaled before the primitive sees their
    /// values, and the units of the results. Errors name the operation and the units.
    fn units(&self, units: &[Option<Unit>], inputs: &[&Tensor]) -> Result<UnitRule>;

    /// How the outputs' elements depend on the inputs' elements (of abstract values `ins`),
    /// for sparsity detection.
    fn dependence(&self, ins: &[Aval]) -> Dependence;
}

/// How a primitive's output elements depend on its input elements, to first and second
/// order, for sparsity detection. Conservative: a dependence named here may vanish at some
/// inputs, but one left out never exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dependence {
    /// The outputs depend on no input (or only through zero derivatives).
    None,
    /// Elementwise with broadcasting: output element `e` depends on operand `p` at `e` when
    /// `first[p]`, and the second derivative in operands `(p, q)` may be nonzero for each
    /// pair in `second`.
    Elementwise {
        first: Vec<bool>,
        second: Vec<(usize, usize)>,
    },
    /// Each output element is one element of one operand, or zero: which one is found by
    /// running the primitive on element indices. Linear.
    Gather,
    /// Each output element depends on the elements reduced into it (over `axes`); linear or
    /// piecewise linear.
    Reduce(Vec<usize>),
    /// The transpose of a gather: each output element is the sum of the input elements that
    /// the given primitive (a [`Dependence::Gather`] from this primitive's output shape to its
    /// input shape) reads it into. Linear.
    Scatter(Box<Prim>),
    /// `out[.., i, j]` depends on rows `a[.., i, :]` and columns `b[.., :, j]`, bilinearly.
    MatMul,
    /// Through a body program (a loop): the detector follows the body, step after step.
    Body,
}

/// A tangent or cotangent: a symbolic zero, which rules skip, or a value.
#[derive(Clone, Debug)]
pub(crate) enum Tangent {
    /// Zero, of this shape (the batch, then the primal's shape) and dtype.
    Zero(Aval),
    /// A value.
    Value(Tensor),
}

impl Tangent {
    /// The zero tangent of a primal of abstract value `aval`, with `batch` directions.
    pub fn zero(batch: &[usize], aval: &Aval) -> Tangent {
        Tangent::Zero(Aval::new(&concat_dims(batch, &aval.shape), aval.dtype))
    }

    /// `value`, or the zero of `batch` directions of `aval` when there is none.
    pub fn or_zero(value: Option<Tensor>, batch: &[usize], aval: &Aval) -> Tangent {
        value.map_or_else(|| Tangent::zero(batch, aval), Tangent::Value)
    }

    /// The value, unless the tangent is zero.
    pub fn value(&self) -> Option<&Tensor> {
        match self {
            Tangent::Zero(_) => None,
            Tangent::Value(t) => Some(t),
        }
    }

    pub fn is_zero(&self) -> bool {
        matches!(self, Tangent::Zero(_))
    }

    /// The tangent as a tensor; a zero becomes a broadcast scalar (cheap in a program).
    pub fn instantiate(&self) -> Tensor {
        match self {
            Tangent::Zero(aval) => Tensor::scalar_of(0.0, aval.dtype).broadcast_to(&aval.shape),
            Tangent::Value(t) => t.clone(),
        }
    }
}

/// An input of a primitive being transposed: a known value, or a linear input whose cotangent
/// is wanted (only its shape and dtype are known, as JAX's `UndefinedPrimal`).
#[derive(Clone, Debug)]
pub(crate) enum Primal {
    Known(Tensor),
    Linear(Aval),
}

impl Primal {
    /// The value, if known.
    pub fn known(&self) -> Option<&Tensor> {
        match self {
            Primal::Known(t) => Some(t),
            Primal::Linear(_) => None,
        }
    }

    pub fn aval(&self) -> Result<Aval> {
        match self {
            Primal::Known(t) => t.aval(),
            Primal::Linear(aval) => Ok(aval.clone()),
        }
    }
}

/// The error of a transpose rule asked to transpose a primitive in an input it is not linear
/// in (a JVP rule applied it to a tangent that way).
pub(crate) fn not_linear(name: &str) -> Error {
    Error::Trace(format!(
        "`{name}` is not linear in its tangent operand, so it has no transpose rule \
         (a JVP rule applied it to a tangent)"
    ))
}

/// What a unit rule decides: the factor each operand's values are multiplied by before the
/// primitive sees them, and the unit of each result (`None`: dimensionless).
pub(crate) struct UnitRule {
    pub factors: Vec<f64>,
    pub outputs: Vec<Option<Unit>>,
}

/// The operands' units, with the helpers unit rules share.
pub(crate) struct Units<'a> {
    name: &'a str,
    units: &'a [Option<Unit>],
}

impl<'a> Units<'a> {
    pub fn new(name: &'a str, units: &'a [Option<Unit>]) -> Self {
        Units { name, units }
    }

    /// The unit of operand `i` (dimensionless when it has none).
    pub fn of(&self, i: usize) -> Unit {
        self.units[i].unwrap_or(Unit::ONE)
    }

    /// Operands unchanged, one result in `unit`.
    pub fn keep(&self, unit: Option<Unit>) -> UnitRule {
        UnitRule {
            factors: vec![1.0; self.units.len()],
            outputs: vec![unit],
        }
    }

    /// Operands unchanged, one result in the first operand's unit.
    pub fn same_as_first(&self) -> UnitRule {
        self.keep(self.units[0])
    }

    /// The given operands expressed in the unit of the first of them that has one (they must
    /// share a dimension), and that unit.
    pub fn common(&self, operands: &[usize]) -> Result<(Vec<f64>, Unit)> {
        let target = operands
            .iter()
            .find_map(|&i| self.units[i])
            .unwrap_or(Unit::ONE);
        let mut factors = vec![1.0; self.units.len()];
        for &i in operands {
            factors[i] = self.of(i).factor_to(&target, self.name)?;
        }
        Ok((factors, target))
    }

    /// The scale folded into operand `i`, which must be dimensionless (as transcendental
    /// functions need).
    pub fn dimensionless(&self, i: usize) -> Result<f64> {
        let unit = self.of(i);
        if unit.is_dimensionless() {
            Ok(unit.scale())
        } else {
            Err(Error::Units {
                op: self.name.to_string(),
                msg: format!("needs a dimensionless argument, got {unit}"),
            })
        }
    }
}

/// The cotangents of a linear primitive's inputs: `f(i)` for each linear input `i`, zero for
/// the known ones.
fn cotangents(x: &[Primal], batch: &[usize], f: &dyn Fn(usize) -> Tensor) -> Result<Vec<Tangent>> {
    x.iter()
        .enumerate()
        .map(|(i, primal)| {
            Ok(match primal {
                Primal::Linear(_) => Tangent::Value(f(i)),
                Primal::Known(t) => Tangent::zero(batch, &t.aval()?),
            })
        })
        .collect()
}

/// Checks the number of operands.
pub(crate) fn arity(name: &str, ins: &[Aval], n: usize) -> Result<()> {
    if ins.len() == n {
        Ok(())
    } else {
        Err(Error::shape(
            name,
            format!("takes {n} operands, got {}", ins.len()),
        ))
    }
}

/// Dispatches a method of [`Rules`] to the family of a [`Prim`].
macro_rules! dispatch {
    ($prim:expr, $op:ident => $body:expr) => {
        match $prim {
            Prim::Elementwise($op) => $body,
            Prim::Structural($op) => $body,
            Prim::Reduce($op) => $body,
            Prim::MatMul($op) => $body,
            Prim::Creation($op) => $body,
            Prim::Loop($op) => $body,
        }
    };
}

impl Prim {
    /// The name as printed in programs, without parameters.
    ///
    /// ```
    /// use brainstate::primitives::{MatMul, Prim};
    /// assert_eq!(Prim::MatMul(MatMul).name(), "matmul");
    /// ```
    pub fn name(&self) -> &'static str {
        dispatch!(self, op => op.name())
    }

    /// The outputs' shapes and dtypes; an error when the inputs do not fit, or when an
    /// output could not exist (its size overflows: see [`crate::memory`]).
    pub(crate) fn infer(&self, ins: &[Aval]) -> Result<Vec<Aval>> {
        let outs = dispatch!(self, op => op.infer(ins))?;
        crate::memory::avals_bytes(self.name(), &outs)?;
        Ok(outs)
    }

    pub(crate) fn eval(&self, ins: &[&Data]) -> Result<Vec<Data>> {
        dispatch!(self, op => op.eval(ins))
    }

    pub(crate) fn jvp(
        &self,
        x: &[Tensor],
        t: &[Tangent],
        outs: &[Tensor],
        batch: &[usize],
    ) -> Result<Vec<Tangent>> {
        dispatch!(self, op => op.jvp(x, t, outs, batch))
    }

    pub(crate) fn transpose(
        &self,
        cts: &[Tensor],
        x: &[Primal],
        batch: &[usize],
    ) -> Result<Vec<Tangent>> {
        dispatch!(self, op => op.transpose(cts, x, batch))
    }

    pub(crate) fn units(&self, units: &[Option<Unit>], inputs: &[&Tensor]) -> Result<UnitRule> {
        dispatch!(self, op => op.units(units, inputs))
    }

    pub(crate) fn dependence(&self, ins: &[Aval]) -> Dependence {
        dispatch!(self, op => op.dependence(ins))
    }

    /// Whether the primitive maps elements to elements (so tangents are rank-padded for it).
    pub(crate) fn is_elementwise(&self) -> bool {
        matches!(self, Prim::Elementwise(_))
    }
}

impl crate::ir::passes::Prune for Prim {
    fn prune(&self, used: &[bool]) -> Option<(Prim, Vec<bool>, Vec<bool>)> {
        match self {
            Prim::Loop(l) => l
                .prune(used)
                .map(|(l, reads, kept)| (Prim::Loop(l), reads, kept)),
            Prim::Elementwise(_)
            | Prim::Structural(_)
            | Prim::Reduce(_)
            | Prim::MatMul(_)
            | Prim::Creation(_) => None,
        }
    }
}

impl crate::ir::passes::Commute for Prim {
    fn commutes(&self) -> bool {
        // IEEE sums and products are commutative to the bit; `max` and `min` are not (which
        // of `-0.0` and `0.0`, or of two NaNs, they give depends on the order).
        matches!(
            self,
            Prim::Elementwise(Elementwise::Binary(BinaryOp::Add | BinaryOp::Mul))
        )
    }
}

impl fmt::Display for Prim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        dispatch!(self, op => op.fmt(f))
    }
}

macro_rules! into_prim {
    ($($from:ty => $variant:ident $(($wrap:path))?),* $(,)?) => {$(
        impl From<$from> for Prim {
            fn from(op: $from) -> Prim {
                Prim::$variant($($wrap)?(op))
            }
        }
    )*};
}
into_prim!(
    Elementwise => Elementwise,
    UnaryOp => Elementwise(Elementwise::Unary),
    BinaryOp => Elementwise(Elementwise::Binary),
    CmpOp => Elementwise(Elementwise::Compare),
    Structural => Structural,
    Reduce => Reduce,
    MatMul => MatMul,
    Creation => Creation,
    Loop => Loop,
);

/// `(1,2,3)`-style list for printed parameters.
pub(crate) fn tuple(values: &[usize]) -> String {
    let items: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    if items.len() == 1 {
        format!("({},)", items[0])
    } else {
        format!("({})", items.join(","))
    }
}

#[cfg(test)]
impl Program {
    /// Appends `prim` of `inputs`, its output's shape and dtype inferred: programs built by
    /// hand in tests.
    pub(crate) fn push(
        &mut self,
        prim: impl Into<Prim>,
        inputs: &[crate::ir::Var],
    ) -> crate::ir::Var {
        let prim = prim.into();
        let ins: Vec<Aval> = inputs.iter().map(|&v| self.aval(v).clone()).collect();
        let aval = prim.infer(&ins).expect("a well-formed equation").remove(0);
        let out = self.new_var(aval);
        self.eqns.push(Eqn {
            prim,
            inputs: inputs.to_vec(),
            outputs: vec![out],
            source: None,
        });
        out
    }
}

/// The offset, through the operand's `strides`, of the matrix of an operand of batch shape
/// `own` at flat index `i` of the full batch shape `batch` (right-aligned; size-1 axes
/// broadcast).
pub(crate) fn broadcast_offset(
    mut i: usize,
    batch: &[usize],
    own: &[usize],
    strides: &[usize],
) -> usize {
    let lead = batch.len() - own.len();
    let mut offset = 0;
    for d in (0..batch.len()).rev() {
        let coordinate = i % batch[d];
        i /= batch[d];
        if d >= lead && own[d - lead] != 1 {
            offset += coordinate * strides[d - lead];
        }
    }
    offset
}

/// For each element of `shape` (row-major), the flat index of the element of an operand of
/// shape `own` that NumPy broadcasting reads there (axes aligned on the right, axes of length
/// one repeated): [`broadcast_offset`] through the operand's row-major strides.
///
/// A `[3]` operand broadcast to `[2, 3]` reads `0, 1, 2, 0, 1, 2`; a `[2, 1]` one
/// `0, 0, 0, 1, 1, 1`.
pub(crate) fn broadcast_indices(own: &[usize], shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; own.len()];
    for d in (0..own.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * own[d + 1];
    }
    let n: usize = shape.iter().product();
    (0..n)
        .map(|i| broadcast_offset(i, shape, own, &strides))
        .collect()
}

/// NumPy broadcasting of two shapes.
pub(crate) fn broadcast_shapes(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < rank - s.len() {
            1
        } else {
            s[i - (rank - s.len())]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::mismatch(op, a, b)),
        })
        .collect()
}

/// Where consecutive pieces of the given lengths start: `[0, l0, l0 + l1, ...]` (one per
/// piece).
pub(crate) fn starts(lengths: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut next = 0;
    (lengths.into_iter())
        .map(|len| {
            next += len;
            next - len
        })
        .collect()
}

/// `[a, b, ...] ++ [c, ...]`.
pub(crate) fn concat_dims(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter().chain(b).copied().collect()
}

/// The single result of a single-output family's rule.
fn one<T>(value: T) -> Vec<T> {
    vec![value]
}

/// Checks a dtype condition of an operand, with an error naming the operation.
fn require(name: &str, ok: bool, what: &str, dtype: DType) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::dtype(name, format!("needs {what} operand"), dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_offset_maps_the_full_batch_onto_an_operand() {
        // batch [2, 3]; an operand of batch [3] (matrices 10 apart) repeats along the first
        // axis
        let offset = |own: &[usize], strides: &[usize]| -> Vec<usize> {
            (0..6)
                .map(|i| broadcast_offset(i, &[2, 3], own, strides))
                .collect()
        };
        assert_eq!(offset(&[3], &[10]), [0, 10, 20, 0, 10, 20]);
        // an operand of batch [2, 1] repeats along the second
        assert_eq!(offset(&[2, 1], &[7, 7]), [0, 0, 0, 7, 7, 7]);
        // no batch at all: always the one matrix
        assert_eq!(offset(&[], &[]), [0; 6]);
        // the full batch, permuted in memory: the second axis outer
        assert_eq!(offset(&[2, 3], &[1, 2]), [0, 2, 4, 1, 3, 5]);
    }

    #[test]
    fn broadcast_indices_repeat_the_axes_of_length_one() {
        assert_eq!(broadcast_indices(&[3], &[2, 3]), [0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_indices(&[2, 1], &[2, 3]), [0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_indices(&[], &[2]), [0, 0]);
        assert_eq!(broadcast_indices(&[2, 2], &[2, 2]), [0, 1, 2, 3]);
    }

    #[test]
    fn broadcast_shapes_follows_numpy() {
        assert_eq!(broadcast_shapes("t", &[3, 1], &[4]).unwrap(), vec![3, 4]);
        assert_eq!(broadcast_shapes("t", &[], &[2, 2]).unwrap(), vec![2, 2]);
        assert_eq!(broadcast_shapes("t", &[0, 1], &[1, 5]).unwrap(), vec![0, 5]);
        let err = broadcast_shapes("add", &[2], &[3]).unwrap_err();
        assert_eq!(err.to_string(), "add: incompatible shapes [2] and [3]");
    }

    #[test]
    fn a_zero_tangent_has_the_batch_in_front() {
        let zero = Tangent::zero(&[5], &Aval::new(&[2, 3], DType::F32));
        assert!(zero.is_zero() && zero.value().is_none());
        let t = zero.instantiate();
        assert_eq!(t.aval().unwrap(), Aval::new(&[5, 2, 3], DType::F32));
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![0.0; 30]);
    }
}
