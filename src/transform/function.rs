//! Functions that transforms can trace, and their arguments.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::primitives::Program;
use crate::storage::Aval;
use crate::tensor::Tensor;
use crate::trace::{StateSlot, TracedState, Tracing};
use crate::tree::{Tree, TreeDef};
use crate::unit::Unit;

/// A Rust function that transforms can trace: any `Fn(&A0, &A1, ...) -> O` of up to six
/// [`Tree`] arguments returning a [`Tree`], or an `Fn() -> O` of none that reads only states.
/// `Sig` is the tuple of argument types (`()` for none).
///
/// ```
/// use brainstate::{grad, Tensor};
/// let f = |x: &Tensor, (a, b): &(Tensor, Tensor)| (x * a + b).sum(); // a tuple argument
/// let x = Tensor::from([1.0, 2.0]);
/// let g = grad(f).call((&x, &(Tensor::scalar(3.0), Tensor::scalar(0.0)))).unwrap();
/// assert_eq!(g.tensor().unwrap().to_vec::<f64>().unwrap(), vec![3.0, 3.0]);
/// ```
pub trait Function<Sig> {
    /// What the function returns.
    ///
    /// ```
    /// use brainstate::{Function, Tensor, Tree};
    /// let f = |x: &Tensor| (x.sum(), x.max()); // Output = (Tensor, Tensor)
    /// let x = Tensor::from([1.0, 3.0]);
    /// let out = Function::<(Tensor,)>::call_flat(&f, &[x.def()], vec![x.clone()]).unwrap();
    /// assert_eq!((out.0.item().unwrap(), out.1.item().unwrap()), (4.0, 3.0));
    /// ```
    type Output: Tree;
    /// The number of positional arguments.
    ///
    /// ```
    /// use brainstate::{Function, Tensor};
    /// fn arity<F: Function<Sig>, Sig>(_: &F) -> usize {
    ///     F::ARITY
    /// }
    /// assert_eq!(arity(&|x: &Tensor, y: &Tensor| x + y), 2);
    /// ```
    const ARITY: usize;
    /// Calls the function on arguments rebuilt from their structures and leaves.
    ///
    /// ```
    /// use brainstate::{Function, Tensor, Tree};
    /// let f = |x: &Tensor| x.sum();
    /// let x = Tensor::from([1.0, 2.0]);
    /// let y = Function::<(Tensor,)>::call_flat(&f, &[x.def()], vec![x.clone()]).unwrap();
    /// assert_eq!(y.item().unwrap(), 3.0);
    /// ```
    fn call_flat(&self, defs: &[TreeDef], leaves: Vec<Tensor>) -> Result<Self::Output>;
}

/// Arguments for a call of a transformed function of signature `Sig`: `&x` for one argument,
/// `(&x, &y, ...)` for several, `()` for none.
///
/// ```
/// use brainstate::{hessian, Tensor};
/// let f = |x: &Tensor, y: &Tensor| (x * y).sum();
/// let (x, y) = (Tensor::scalar(2.0), Tensor::scalar(3.0));
/// let h = hessian(f).argnums(1).call((&x, &y)).unwrap(); // two arguments: a tuple
/// assert_eq!(h.tensor().unwrap().item().unwrap(), 0.0);
/// ```
pub trait Args<Sig> {
    /// Each argument's structure and leaves.
    ///
    /// ```
    /// use brainstate::{Args, Tensor, TreeDef};
    /// let pair = (Tensor::scalar(1.0), Tensor::scalar(2.0));
    /// let flat = Args::<((Tensor, Tensor),)>::flatten_args(&&pair);
    /// assert_eq!(flat[0].0, TreeDef::Tuple(vec![TreeDef::Leaf, TreeDef::Leaf]));
    /// assert_eq!(flat[0].1.len(), 2);
    /// ```
    fn flatten_args(&self) -> Vec<(TreeDef, Vec<Tensor>)>;
}

fn flatten_one<T: Tree>(x: &T) -> (TreeDef, Vec<Tensor>) {
    let mut leaves = Vec::new();
    x.flatten(&mut leaves);
    (x.def(), leaves)
}

impl<A0: Tree> Args<(A0,)> for &A0 {
    fn flatten_args(&self) -> Vec<(TreeDef, Vec<Tensor>)> {
        vec![flatten_one(*self)]
    }
}

/// A function of no arguments, reading only states: `hessian(f).grad_states(&w).call(())`.
impl<Func, Out> Function<()> for Func
where
    Func: Fn() -> Out,
    Out: Tree,
{
    type Output = Out;
    const ARITY: usize = 0;
    fn call_flat(&self, _: &[TreeDef], _: Vec<Tensor>) -> Result<Out> {
        Ok(self())
    }
}

/// No arguments, for a function of none: `call(())`.
impl Args<()> for () {
    fn flatten_args(&self) -> Vec<(TreeDef, Vec<Tensor>)> {
        Vec::new()
    }
}

macro_rules! arity {
    ($n:expr; $($a:ident $x:ident $i:tt),+) => {
        impl<Func, Out, $($a),+> Function<($($a,)+)> for Func
        where
            Func: Fn($(&$a),+) -> Out,
            Out: Tree,
            $($a: Tree),+
        {
            type Output = Out;
            const ARITY: usize = $n;
            fn call_flat(&self, defs: &[TreeDef], leaves: Vec<Tensor>) -> Result<Out> {
                let mut leaves = leaves.into_iter();
                $(let $x = $a::unflatten(&defs[$i], &mut leaves)?;)+
                Ok(self($(&$x),+))
            }
        }

        impl<$($a: Tree),+> Args<($($a,)+)> for ($(&$a,)+) {
            fn flatten_args(&self) -> Vec<(TreeDef, Vec<Tensor>)> {
                vec![$(flatten_one(self.$i)),+]
            }
        }
    };
}
arity!(1; A0 x0 0);
arity!(2; A0 x0 0, A1 x1 1);
arity!(3; A0 x0 0, A1 x1 1, A2 x2 2);
arity!(4; A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3);
arity!(5; A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4);
arity!(6; A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4, A5 x5 5);

/// Flattened arguments: their signature, and the leaves.
pub(crate) fn signature(args: &[(TreeDef, Vec<Tensor>)]) -> Result<(Signature, Vec<Tensor>)> {
    let defs = args.iter().map(|(d, _)| d.clone()).collect();
    let leaves: Vec<Tensor> = args.iter().flat_map(|(_, l)| l.iter().cloned()).collect();
    let avals = leaves.iter().map(Tensor::aval).collect::<Result<_>>()?;
    let units = leaves.iter().map(Tensor::unit).collect();
    Ok((Signature { defs, avals, units }, leaves))
}

/// What a call's arguments look like to tracing: structure, shapes and dtypes, and units (the
/// conversions between units are part of the traced program).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Signature {
    pub defs: Vec<TreeDef>,
    pub avals: Vec<Aval>,
    pub units: Vec<Option<Unit>>,
}

/// How a function's output divides into the differentiated value and the aux data.
pub(crate) type Split = (Vec<Tensor>, TreeDef, Vec<Tensor>, Option<TreeDef>);

pub(crate) fn split_plain<O: Tree>(out: &O) -> Split {
    let mut leaves = Vec::new();
    out.flatten(&mut leaves);
    (leaves, out.def(), Vec::new(), None)
}

pub(crate) fn split_aux<O: Tree, A: Tree>(out: &(O, A)) -> Split {
    let (value, value_def, ..) = split_plain(&out.0);
    let (aux, aux_def, ..) = split_plain(&out.1);
    (value, value_def, aux, Some(aux_def))
}

/// A traced user function.
pub(crate) struct Traced {
    /// Inputs: the argument leaves, then the leaves of the states read (first-read order).
    /// Outputs: the value leaves, the aux leaves, then the leaves of the states written.
    pub program: Program,
    pub value_def: TreeDef,
    pub aux_def: Option<TreeDef>,
    pub n_value: usize,
    /// The states the function read or wrote.
    pub states: Vec<StateSlot>,
    /// Units of the outputs (value, aux, written states).
    pub output_units: Vec<Option<Unit>>,
    /// States read on other threads while the function was traced, with their versions then.
    pub foreign_reads: Vec<(Arc<dyn TracedState>, u64)>,
    /// Whether a transform inlined in the function asked for `debug_nan`.
    pub debug_nan: bool,
}

/// Traces `f` on fresh inputs of the given avals.
pub(crate) fn trace_function<F: Function<Sig>, Sig>(
    f: &F,
    signature: &Signature,
    op: &str,
    split: fn(&F::Output) -> Split,
) -> Result<Traced> {
    let mut tracing = Tracing::new();
    tracing.watch();
    let defs = &signature.defs;
    let inputs: Vec<Tensor> = signature
        .avals
        .iter()
        .zip(&signature.units)
        .map(|(a, u)| tracing.input(a).with_unit(*u))
        .collect();
    let output =
        catch_unwind(AssertUnwindSafe(|| f.call_flat(defs, inputs))).map_err(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            Error::Panic(format!("{op}: {msg}"))
        })??;
    let (value, value_def, aux, aux_def) = split(&output);
    let n_value = value.len();
    let states = tracing.states();
    let written = states
        .iter()
        .filter_map(|s| s.written.as_ref())
        .flat_map(|leaves| leaves.iter().cloned());
    let outputs: Vec<Tensor> = value.into_iter().chain(aux).chain(written).collect();
    let output_units = outputs.iter().map(Tensor::unit).collect();
    let foreign_reads = tracing.foreign_reads();
    let debug_nan = tracing.debug_nan();
    Ok(Traced {
        output_units,
        foreign_reads,
        debug_nan,
        program: tracing.finish(&outputs)?,
        value_def,
        aux_def,
        n_value,
        states,
    })
}
