//! The user-facing transforms: [`hessian`], [`grad`], [`jacrev`], [`jacfwd`], and the reusable
//! [`GradientTransform`] they return (the reference's `GradientTransform`).
//!
//! A call flattens the arguments to leaves, looks up the plan for their signature (tree
//! structure, shapes and dtypes), and on a miss traces the function, derives the derivative
//! program, simplifies and plans it. Later calls with the same signature only run the plan.
//!
//! | Python (`brainstate.transform.hessian`) | Rust |
//! |---|---|
//! | `hessian(f)` | `hessian(f)` |
//! | `argnums=1` / `argnums=(0, 1)` | `.argnums(1)` / `.argnums([0, 1])` |
//! | `has_aux=True` | `.has_aux()` (the function returns `(output, aux)`) |
//! | `return_value=True` | `.return_value()` |
//! | `holomorphic=True` | `.holomorphic(true)` |
//! | `grad_states=w` / `[a, b]` / `{"a": a}` | `.grad_states(&w)` / `.grad_states([&a, &b])` / `.grad_states([("a", &a)])` |
//! | `check_states=False` | `.check_states(false)` |
//! | `debug_nan=True` (through `**kwargs`) | `.debug_nan(true)` |
//! | `h(x, y)` | `h.call((&x, &y))?` |

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

mod compile;
mod function;

use self::compile::{compile, run, Blocks, Compiled, Outputs, Part, Spec};
use self::function::{signature, split_aux, split_plain, trace_function, Signature, Split};
pub use self::function::{Args, Function};
use crate::error::Result;
use crate::exec::simplify;
use crate::ir::Program;
use crate::state::GradStates;

use crate::tree::{Node, Tree};

/// Which positional arguments to differentiate: one index (the result has no tuple level for
/// arguments, as in JAX) or a sequence (the result has one entry per index, in that order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Argnums {
    /// A single argument.
    One(usize),
    /// Several arguments, in this order.
    Many(Vec<usize>),
}

impl Argnums {
    fn indices(&self) -> Vec<usize> {
        match self {
            Argnums::One(i) => vec![*i],
            Argnums::Many(v) => v.clone(),
        }
    }
}

impl From<usize> for Argnums {
    fn from(i: usize) -> Self {
        Argnums::One(i)
    }
}
impl From<Vec<usize>> for Argnums {
    fn from(v: Vec<usize>) -> Self {
        Argnums::Many(v)
    }
}
impl From<&[usize]> for Argnums {
    fn from(v: &[usize]) -> Self {
        Argnums::Many(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Argnums {
    fn from(v: [usize; N]) -> Self {
        Argnums::Many(v.to_vec())
    }
}

/// What a call returns besides the derivatives (typestate, so that a wrong destructuring is a
/// compile error): set by [`GradientTransform::has_aux`] and [`GradientTransform::return_value`].
pub mod layout {
    /// Derivatives only.
    #[derive(Debug)]
    pub struct Plain;
    /// `(derivatives, aux)`.
    #[derive(Debug)]
    pub struct Aux;
    /// `(derivatives, value)`.
    #[derive(Debug)]
    pub struct Value;
    /// `(derivatives, value, aux)`.
    #[derive(Debug)]
    pub struct ValueAux;

    /// How the layout changes when aux data or the value is also asked for.
    pub trait Layout {
        /// The layout after `.has_aux()`.
        type WithAux;
        /// The layout after `.return_value()`.
        type WithValue;
    }
    impl Layout for Plain {
        type WithAux = Aux;
        type WithValue = Value;
    }
    impl Layout for Aux {
        type WithAux = Aux;
        type WithValue = ValueAux;
    }
    impl Layout for Value {
        type WithAux = ValueAux;
        type WithValue = Value;
    }
    impl Layout for ValueAux {
        type WithAux = ValueAux;
        type WithValue = ValueAux;
    }
}
use layout::{Aux, Layout, Plain, Value, ValueAux};

/// Which of the specification's three cases a transform is in (typestate): what it
/// differentiates and so what its derivatives are.
pub mod case {
    use crate::tree::Node;

    /// Case 1, `argnums` left at its default `0`: `arg_grads`.
    #[derive(Debug)]
    pub struct Args;
    /// Case 1 with `argnums` given: `arg_grads`.
    #[derive(Debug)]
    pub struct ArgsGiven;
    /// Case 2, `grad_states` without `argnums`: `var_grads`.
    #[derive(Debug)]
    pub struct States;
    /// Case 3, `grad_states` and `argnums`: `(var_grads, arg_grads)`.
    #[derive(Debug)]
    pub struct StatesArgs;

    /// What each case differentiates and returns.
    pub trait Case {
        /// The derivatives a call returns.
        type Grads;
        /// The case after `.argnums(..)`.
        type WithArgnums;
        /// The case after `.grad_states(..)`.
        type WithStates;
        /// Whether arguments are differentiated.
        const ARGS: bool;
        /// Whether states are differentiated.
        const STATES: bool;
        #[doc(hidden)]
        fn grads(var_grads: Option<Node>, arg_grads: Option<Node>) -> Self::Grads;
    }
    impl Case for Args {
        type Grads = Node;
        type WithArgnums = ArgsGiven;
        type WithStates = States;
        const ARGS: bool = true;
        const STATES: bool = false;
        fn grads(_: Option<Node>, arg_grads: Option<Node>) -> Node {
            arg_grads.expect("arguments differentiated")
        }
    }
    impl Case for ArgsGiven {
        type Grads = Node;
        type WithArgnums = ArgsGiven;
        type WithStates = StatesArgs;
        const ARGS: bool = true;
        const STATES: bool = false;
        fn grads(_: Option<Node>, arg_grads: Option<Node>) -> Node {
            arg_grads.expect("arguments differentiated")
        }
    }
    impl Case for States {
        type Grads = Node;
        type WithArgnums = StatesArgs;
        type WithStates = States;
        const ARGS: bool = false;
        const STATES: bool = true;
        fn grads(var_grads: Option<Node>, _: Option<Node>) -> Node {
            var_grads.expect("states differentiated")
        }
    }
    impl Case for StatesArgs {
        type Grads = (Node, Node);
        type WithArgnums = StatesArgs;
        type WithStates = StatesArgs;
        const ARGS: bool = true;
        const STATES: bool = true;
        fn grads(var_grads: Option<Node>, arg_grads: Option<Node>) -> (Node, Node) {
            (
                var_grads.expect("states differentiated"),
                arg_grads.expect("arguments differentiated"),
            )
        }
    }
}
use case::Case;

/// Which derivative a transform computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Grad,
    JacRev,
    JacFwd,
    Hessian,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Grad => "grad",
            Kind::JacRev => "jacrev",
            Kind::JacFwd => "jacfwd",
            Kind::Hessian => "hessian",
        }
    }
}

/// Marks the type parameters a transform only uses at the type level.
type Typestate<Sig, C, L> = PhantomData<fn() -> (Sig, C, L)>;

/// A transformed function (the reference's `GradientTransform`): call it with
/// [`call`](GradientTransform::call) as often as needed. The derivative program is built once
/// per signature (argument structure, shapes and dtypes, and the shapes and dtypes of the
/// states read) and reused.
///
/// `C` is the [`case`] (what is differentiated) and `L` the [`layout`] (what else is
/// returned); both change with the builder methods, so the result's type always matches.
///
/// ```
/// use brainstate::{hessian, Tensor};
/// let f = |x: &Tensor| (x.powi(3)).sum();
/// let h = hessian(f).return_value();
/// let (hess, value) = h.call(&Tensor::from([1.0, 2.0])).unwrap();
/// assert_eq!(hess.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 0.0, 0.0, 12.0]);
/// assert_eq!(value.item().unwrap(), 9.0);
/// ```
pub struct GradientTransform<F: Function<Sig>, Sig, C = case::Args, L = Plain> {
    f: F,
    /// Divides the function's output into the differentiated value and the aux data.
    split: fn(&F::Output) -> Split,
    kind: Kind,
    argnums: Argnums,
    grad_states: Option<GradStates>,
    holomorphic: bool,
    check_states: bool,
    unit_aware: bool,
    debug_nan: bool,
    /// Plans by argument signature; each also checks the states it read (see `fits_states`).
    cache: Mutex<HashMap<Signature, Vec<Arc<Compiled>>>>,
    _marker: Typestate<Sig, C, L>,
}

fn transform<F: Function<Sig>, Sig>(f: F, kind: Kind) -> GradientTransform<F, Sig> {
    GradientTransform {
        f,
        split: split_plain::<F::Output>,
        kind,
        argnums: Argnums::One(0),
        grad_states: None,
        holomorphic: false,
        check_states: true,
        unit_aware: false,
        debug_nan: false,
        cache: Mutex::new(HashMap::new()),
        _marker: PhantomData,
    }
}
/// The Hessian of `f` as dense blocks: forward-mode over reverse-mode differentiation.
///
/// For output leaf `o` and differentiated input leaves `i`, `j`, the block has shape
/// `out_shape_o ++ in_shape_i ++ in_shape_j`; the result nests as output tree / input tree /
/// input tree, where an integer `argnums` has no tuple level for the arguments.
///
/// ```
/// use brainstate::{hessian, Tensor};
/// let a = Tensor::from([[1.0, 2.0], [0.0, 3.0]]);
/// let f = move |x: &Tensor| x.matmul(&a).matmul(x);
/// let h = hessian(f).call(&Tensor::from([0.5, -1.0])).unwrap();
/// // x^T A x has Hessian A + A^T
/// assert_eq!(h.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 2.0, 2.0, 6.0]);
/// ```
pub fn hessian<F: Function<Sig>, Sig>(f: F) -> GradientTransform<F, Sig> {
    transform(f, Kind::Hessian)
}

/// The gradient of a scalar-valued `f`, by reverse mode.
///
/// ```
/// use brainstate::{grad, Tensor};
/// let g = grad(|x: &Tensor| (x * x).sum()).call(&Tensor::from([1.0, 2.0])).unwrap();
/// assert_eq!(g.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 4.0]);
/// ```
pub fn grad<F: Function<Sig>, Sig>(f: F) -> GradientTransform<F, Sig> {
    transform(f, Kind::Grad)
}

/// The Jacobian of `f` by reverse mode (all output directions in one batched pass); blocks
/// have shape `out_shape ++ in_shape`.
///
/// ```
/// use brainstate::{jacrev, Tensor};
/// let j = jacrev(|x: &Tensor| x.sin()).call(&Tensor::from([0.0, 0.0])).unwrap();
/// assert_eq!(j.tensor().unwrap().to_vec::<f64>().unwrap(), vec![1.0, 0.0, 0.0, 1.0]);
/// ```
pub fn jacrev<F: Function<Sig>, Sig>(f: F) -> GradientTransform<F, Sig> {
    transform(f, Kind::JacRev)
}

/// The Jacobian of `f` by forward mode (all input directions in one batched pass); blocks
/// have shape `out_shape ++ in_shape`.
///
/// ```
/// use brainstate::{jacfwd, Tensor};
/// let j = jacfwd(|x: &Tensor| x * 3.0).call(&Tensor::from([1.0, 2.0])).unwrap();
/// assert_eq!(j.tensor().unwrap().to_vec::<f64>().unwrap(), vec![3.0, 0.0, 0.0, 3.0]);
/// ```
pub fn jacfwd<F: Function<Sig>, Sig>(f: F) -> GradientTransform<F, Sig> {
    transform(f, Kind::JacFwd)
}

/// The traced program of `f` on arguments like `args` (JAX's `make_jaxpr`). Its inputs are the
/// argument leaves, then the states read; its outputs are the function's leaves, then the
/// states written.
///
/// ```
/// use brainstate::{make_program, Tensor};
/// let p = make_program(|x: &Tensor| x.exp().sum(), &Tensor::from([1.0, 2.0])).unwrap();
/// println!("{p}");
/// assert_eq!(p.len(), 2);
/// ```
pub fn make_program<F: Function<Sig>, Sig>(f: F, args: impl Args<Sig>) -> Result<Program> {
    let (signature, _) = signature(&args.flatten_args())?;
    let traced = trace_function(&f, &signature, "make_program", split_plain::<F::Output>)?;
    Ok(simplify(traced.program))
}

impl<F: Function<Sig>, Sig, C: Case, L: Layout> GradientTransform<F, Sig, C, L> {
    fn into_typestate<C2, L2>(
        self,
        split: fn(&F::Output) -> Split,
    ) -> GradientTransform<F, Sig, C2, L2> {
        GradientTransform {
            f: self.f,
            split,
            kind: self.kind,
            argnums: self.argnums,
            grad_states: self.grad_states,
            holomorphic: self.holomorphic,
            check_states: self.check_states,
            unit_aware: self.unit_aware,
            debug_nan: self.debug_nan,
            cache: Mutex::new(HashMap::new()),
            _marker: PhantomData,
        }
    }

    /// Which positional arguments to differentiate (default `0`): an index, or a sequence
    /// such as `[0, 1]`. With `grad_states`, both are differentiated (case 3).
    pub fn argnums(
        mut self,
        argnums: impl Into<Argnums>,
    ) -> GradientTransform<F, Sig, C::WithArgnums, L> {
        self.argnums = argnums.into();
        let split = self.split;
        self.into_typestate(split)
    }

    /// The states to differentiate: one state, a sequence or a string-keyed map of states.
    /// Without `argnums` only they are differentiated (case 2).
    ///
    /// ```
    /// use brainstate::{hessian, ParamState, Tensor};
    /// let w = ParamState::new(Tensor::from([1.0, 2.0]));
    /// let f = |x: &Tensor| (w.value() * x).sum().powi(2);
    /// let h = hessian(f).grad_states(&w).call(&Tensor::from([1.0, 3.0])).unwrap();
    /// assert_eq!(h.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 6.0, 6.0, 18.0]);
    /// ```
    pub fn grad_states(
        mut self,
        states: impl Into<GradStates>,
    ) -> GradientTransform<F, Sig, C::WithStates, L> {
        self.grad_states = Some(states.into());
        let split = self.split;
        self.into_typestate(split)
    }

    /// Also return the function's value (`return_value=True`).
    pub fn return_value(self) -> GradientTransform<F, Sig, C, L::WithValue> {
        let split = self.split;
        self.into_typestate(split)
    }

    /// Also return auxiliary data (`has_aux=True`): the function returns `(output, aux)` and
    /// only `output` is differentiated. A function that returns no pair does not compile.
    pub fn has_aux<O: Tree, A: Tree>(self) -> GradientTransform<F, Sig, C, L::WithAux>
    where
        F: Function<Sig, Output = (O, A)>,
    {
        self.into_typestate(split_aux::<O, A>)
    }

    /// Promise that the function is holomorphic (default `false`). Differentiated inputs must
    /// then be complex; this version of the library has no complex dtypes yet, so `true`
    /// makes every call fail with a clear error, as JAX does for real inputs.
    pub fn holomorphic(mut self, holomorphic: bool) -> Self {
        self.holomorphic = holomorphic;
        self
    }

    /// Whether a state in `grad_states` that the function never reads is an error (default
    /// `true`); with `false` its blocks are zeros.
    pub fn check_states(mut self, check_states: bool) -> Self {
        self.check_states = check_states;
        self
    }

    /// With `true`, each derivative block carries its physical unit: `unit(f) / (unit(x_i)
    /// unit(x_j))` for Hessians and `unit(f) / unit(x)` for first derivatives, a dimensionless
    /// block being a plain tensor with its scale folded in. With `false` (the default) the
    /// blocks are the derivatives of the values as counted in their units, without a unit.
    /// The value and aux keep their units either way.
    ///
    /// ```
    /// use brainstate::units::ms;
    /// use brainstate::{hessian, Tensor};
    /// let f = |t: &Tensor| t.powi(3).sum();
    /// let h = hessian(f).unit_aware(true).call(&(Tensor::from([2.0]) * ms)).unwrap();
    /// let block = h.tensor().unwrap();
    /// assert_eq!(block.unit(), Some(ms));
    /// assert_eq!(block.mantissa().to_vec::<f64>().unwrap(), vec![12.0]);
    /// ```
    pub fn unit_aware(mut self, unit_aware: bool) -> Self {
        self.unit_aware = unit_aware;
        self
    }

    /// When on, a NaN or infinity produced while computing the result is an error naming the
    /// first primitive that produced one, its input shapes and the source line it comes from.
    /// Off by default, and then free.
    pub fn debug_nan(mut self, debug_nan: bool) -> Self {
        self.debug_nan = debug_nan;
        self
    }

    /// The derivative program for arguments like `args`, simplified as it will run.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.sin().sum());
    /// let program = h.program(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert!(program.to_string().contains("sin"));
    /// ```
    pub fn program(&self, args: impl Args<Sig>) -> Result<Program> {
        let (signature, _) = signature(&args.flatten_args())?;
        Ok(self.compiled(&signature)?.plan.program.clone())
    }

    /// The plan for this signature, from the cache or newly built.
    fn compiled(&self, signature: &Signature) -> Result<Arc<Compiled>> {
        let cache = || self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = cache()
            .get(signature)
            .and_then(|plans| plans.iter().find(|c| c.fits_states()).cloned())
        {
            return Ok(found);
        }
        let spec = Spec {
            kind: self.kind,
            argnums: C::ARGS.then_some(&self.argnums),
            grad_states: if C::STATES {
                self.grad_states.as_ref()
            } else {
                None
            },
            holomorphic: self.holomorphic,
            check_states: self.check_states,
        };
        let compiled = Arc::new(compile(&self.f, self.split, &spec, signature)?);
        cache()
            .entry(signature.clone())
            .or_default()
            .push(compiled.clone());
        Ok(compiled)
    }

    fn blocks<'a>(&'a self, compiled: &'a Compiled, outputs: &'a Outputs) -> Blocks<'a> {
        Blocks {
            kind: self.kind,
            compiled,
            argnums: &self.argnums,
            grad_states: self.grad_states.as_ref(),
            unit_aware: self.unit_aware,
            blocks: &outputs.blocks,
        }
    }

    /// Runs the transform: the derivatives in this case's structure, and the raw outputs.
    fn run(&self, args: &impl Args<Sig>) -> Result<(C::Grads, Outputs, Arc<Compiled>)> {
        let (signature, leaves) = signature(&args.flatten_args())?;
        let compiled = self.compiled(&signature)?;
        let outputs = run(&compiled, leaves, self.debug_nan)?;
        let blocks = self.blocks(&compiled, &outputs);
        let part = |rows, cols| blocks.part(rows, cols);
        let var_grads = C::STATES.then(|| part(Part::States, Part::States));
        let arg_grads = C::ARGS.then(|| part(Part::Args, Part::Args));
        Ok((C::grads(var_grads, arg_grads), outputs, compiled))
    }
}

impl<F: Function<Sig>, Sig, L: Layout> GradientTransform<F, Sig, case::StatesArgs, L> {
    /// All blocks over the joint variable `(states, arguments)` as a 2 x 2 nest:
    /// `[0][0]` is `var_grads`, `[1][1]` is `arg_grads`, and `[0][1]` (`[1][0]`) holds the
    /// mixed blocks `d2f / d state d arg` (`d2f / d arg d state`); each nests as output /
    /// row variable / column variable. For `grad`, `jacrev` and `jacfwd`: `[states, args]`.
    ///
    /// ```
    /// use brainstate::{hessian, State, Tensor};
    /// let w = State::new(Tensor::scalar(2.0));
    /// let h = hessian(|x: &Tensor| (w.value() * x * x).sum()).grad_states(&w).argnums(0);
    /// let joint = h.joint(&Tensor::scalar(3.0)).unwrap();
    /// assert_eq!(joint[0][1].tensor().unwrap().item().unwrap(), 6.0); // d2/dw dx = 2x
    /// ```
    pub fn joint(&self, args: impl Args<Sig>) -> Result<Node> {
        let (_, outputs, compiled) = self.run(&args)?;
        let blocks = self.blocks(&compiled, &outputs);
        let part = |rows, cols| blocks.part(rows, cols);
        Ok(if self.kind == Kind::Hessian {
            Node::Tuple(vec![
                Node::Tuple(vec![
                    part(Part::States, Part::States),
                    part(Part::States, Part::Args),
                ]),
                Node::Tuple(vec![
                    part(Part::Args, Part::States),
                    part(Part::Args, Part::Args),
                ]),
            ])
        } else {
            Node::Tuple(vec![
                part(Part::States, Part::States),
                part(Part::Args, Part::Args),
            ])
        })
    }
}

impl<F: Function<Sig>, Sig, C: Case> GradientTransform<F, Sig, C, Plain> {
    /// The derivatives: `arg_grads`, `var_grads` or `(var_grads, arg_grads)` by case.
    pub fn call(&self, args: impl Args<Sig>) -> Result<C::Grads> {
        Ok(self.run(&args)?.0)
    }
}

impl<F: Function<Sig>, Sig, C: Case> GradientTransform<F, Sig, C, Value> {
    /// `(grads, value)`.
    pub fn call(&self, args: impl Args<Sig>) -> Result<(C::Grads, F::Output)> {
        let (grads, outputs, compiled) = self.run(&args)?;
        let value = F::Output::unflatten(&compiled.value_def, &mut outputs.value.into_iter())?;
        Ok((grads, value))
    }
}

impl<F, Sig, C: Case, O: Tree, A: Tree> GradientTransform<F, Sig, C, Aux>
where
    F: Function<Sig, Output = (O, A)>,
{
    /// `(grads, aux)`.
    pub fn call(&self, args: impl Args<Sig>) -> Result<(C::Grads, A)> {
        let (grads, outputs, compiled) = self.run(&args)?;
        let aux_def = compiled.aux_def.as_ref().expect("traced with aux");
        Ok((grads, A::unflatten(aux_def, &mut outputs.aux.into_iter())?))
    }
}

impl<F, Sig, C: Case, O: Tree, A: Tree> GradientTransform<F, Sig, C, ValueAux>
where
    F: Function<Sig, Output = (O, A)>,
{
    /// `(grads, value, aux)`.
    pub fn call(&self, args: impl Args<Sig>) -> Result<(C::Grads, O, A)> {
        let (grads, outputs, compiled) = self.run(&args)?;
        let aux_def = compiled.aux_def.as_ref().expect("traced with aux");
        let value = O::unflatten(&compiled.value_def, &mut outputs.value.into_iter())?;
        let aux = A::unflatten(aux_def, &mut outputs.aux.into_iter())?;
        Ok((grads, value, aux))
    }
}
