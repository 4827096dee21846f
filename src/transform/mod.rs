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
//!
//! ```
//! use brainstate::{hessian, Tensor};
//! let h = hessian(|x: &Tensor, y: &Tensor| (x * y).sum()).argnums([0, 1]);
//! let out = h.call((&Tensor::scalar(1.0), &Tensor::scalar(2.0))).unwrap(); // builds the plan
//! let again = h.call((&Tensor::scalar(5.0), &Tensor::scalar(7.0))).unwrap(); // only runs it
//! assert_eq!(out[0][1].tensor().unwrap().item().unwrap(), 1.0);
//! assert_eq!(again[1][0].tensor().unwrap().item().unwrap(), 1.0);
//! ```

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod blocks;
mod cache;
mod call;
mod compile;
mod footprint;
mod function;
mod loops;
mod run;
mod typestate;

use self::blocks::{Arrangement, Blocks, Part};
use self::cache::PlanCache;
pub use self::call::Pullback;
use self::compile::{Compiled, Spec, compile};
pub use self::function::{Args, Function};
use self::function::{Signature, Split, signature, split_aux, split_plain, trace_function};
pub use self::loops::{Scan, checkpointed_for_loop, for_loop, scan};
use self::run::{Outputs, run};
pub use self::typestate::{case, layout, mode};
use crate::error::Result;
use crate::exec::simplify;
use crate::primitives::Program;
use crate::state::{self, GradStates};

use crate::tensor::Tensor;
use crate::tree::{Node, Tree};

/// The vectors of a call that takes none.
fn no_vectors(_: &Compiled) -> Result<Vec<Tensor>> {
    Ok(Vec::new())
}

/// Which positional arguments to differentiate: one index (the result has no tuple level for
/// arguments, as in JAX) or a sequence (the result has one entry per index, in that order).
///
/// ```
/// use brainstate::Argnums;
/// assert_eq!(Argnums::from(1), Argnums::One(1));
/// assert_eq!(Argnums::from([0, 1]), Argnums::Many(vec![0, 1]));
/// ```
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

use case::Case;
use layout::{Aux, Layout, Plain, Value, ValueAux};
use mode::{Dense, Mode};

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
type Typestate<Sig, C, L, M> = PhantomData<fn() -> (Sig, C, L, M)>;

/// A transformed function (the reference's `GradientTransform`): call it with
/// [`call`](GradientTransform::call) as often as needed. The derivative program is built once
/// per signature (argument structure, shapes and dtypes, and the shapes and dtypes of the
/// states read) and reused.
///
/// `C` is the [`case`] (what is differentiated), `L` the [`layout`] (what else is returned)
/// and `M` the [`mode`] (how the derivatives are computed and returned); they change with the
/// builder methods, so the result's type always matches.
///
/// A transform can be called from several threads at once. A call is atomic with respect to
/// the states its function writes: it holds their locks (taken in one global order) from
/// reading them to assigning their new values, so concurrent calls that write a common state
/// run one after another and lose no update. A call that fails assigns nothing. Tracing is per
/// thread: see the crate's documentation on states and threads for what a function that
/// uses helper threads may do.
///
/// ```
/// use brainstate::{grad, State, Tensor};
/// let calls = State::new(Tensor::scalar(0.0));
/// let g = grad(|x: &Tensor| {
///     calls.set_value(calls.value() + 1.0).unwrap();
///     x.powi(2).sum()
/// });
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..25).for_each(|_| { g.call(&Tensor::from([1.0])).unwrap(); }));
///     }
/// });
/// assert_eq!(calls.value().item().unwrap(), 100.0); // no update lost
/// ```
///
/// ```
/// use brainstate::{hessian, Tensor};
/// let f = |x: &Tensor| (x.powi(3)).sum();
/// let h = hessian(f).return_value();
/// let (hess, value) = h.call(&Tensor::from([1.0, 2.0])).unwrap();
/// assert_eq!(hess.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 0.0, 0.0, 12.0]);
/// assert_eq!(value.item().unwrap(), 9.0);
/// ```
pub struct GradientTransform<F: Function<Sig>, Sig, C = case::Args, L = Plain, M = Dense> {
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
    chunk_size: Option<usize>,
    /// The memory limit of a call in bytes; `None` follows the global one.
    memory_limit: Option<usize>,
    /// Plans by argument signature, least recently used dropped first.
    cache: Mutex<PlanCache>,
    _marker: Typestate<Sig, C, L, M>,
}

fn transform<F: Function<Sig>, Sig, M>(
    f: F,
    kind: Kind,
) -> GradientTransform<F, Sig, case::Args, Plain, M> {
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
        chunk_size: None,
        memory_limit: None,
        cache: Mutex::new(PlanCache::new(cache::DEFAULT_CAPACITY)),
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

/// Hessian-vector products of a scalar `f`: `call(args, vector)` gives `H v` over the
/// differentiated variables (`argnums`, `grad_states`), nested like a gradient. Forward over
/// reverse: the cost of a gradient and a JVP, never of a Hessian. Takes the same options as
/// [`hessian`].
///
/// ```
/// use brainstate::{hvp, ParamState, Tensor};
/// let w = ParamState::new(Tensor::from([1.0, 2.0]));
/// let f = |x: &Tensor| (w.value() * x).sum().powi(2); // H over w is 2 x x^T
/// let h = hvp(f).grad_states(&w);
/// let hv = h.call(&Tensor::from([1.0, 3.0]), &Tensor::from([1.0, 0.0])).unwrap();
/// assert_eq!(hv.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 6.0]);
/// ```
pub fn hvp<F: Function<Sig>, Sig>(f: F) -> GradientTransform<F, Sig, case::Args, Plain, mode::Hvp> {
    transform(f, Kind::Hessian)
}

/// Forward-mode directional derivatives (JAX's `jvp`): `call(args, tangents)` gives the
/// derivative of the outputs along `tangents`, one per differentiated variable, nested as
/// the output. Takes the same options as [`jacfwd`].
///
/// ```
/// use brainstate::{jvp, Tensor};
/// let t = jvp(|x: &Tensor| x.powi(3)).call(&Tensor::from([1.0, 2.0]), &Tensor::from([1.0, 1.0]));
/// assert_eq!(t.unwrap().tensor().unwrap().to_vec::<f64>().unwrap(), vec![3.0, 12.0]);
/// ```
pub fn jvp<F: Function<Sig>, Sig>(f: F) -> GradientTransform<F, Sig, case::Args, Plain, mode::Jvp> {
    transform(f, Kind::JacFwd)
}

/// Reverse mode with a reusable pullback (JAX's `vjp`): `call(args)` runs the function once
/// and returns a [`Pullback`] that maps cotangents of the output to cotangents of the
/// differentiated variables, as often as needed. Takes the same options as [`jacrev`].
///
/// ```
/// use brainstate::{vjp, Tensor};
/// let (pullback, value) = vjp(|x: &Tensor| x.powi(2)).return_value().call(&Tensor::from([3.0])).unwrap();
/// assert_eq!(value.to_vec::<f64>().unwrap(), vec![9.0]);
/// assert_eq!(pullback.call(&Tensor::from([1.0])).unwrap().tensor().unwrap().item().unwrap(), 6.0);
/// ```
pub fn vjp<F: Function<Sig>, Sig>(f: F) -> GradientTransform<F, Sig, case::Args, Plain, mode::Vjp> {
    transform(f, Kind::JacRev)
}

/// The sparsity pattern of the Hessian of a scalar `f` over the differentiated variables,
/// detected from its traced program by propagating index sets through every primitive: it
/// holds every entry that can be nonzero for some input of the signature. Takes the same
/// options as [`hessian`].
///
/// ```
/// use brainstate::{hessian_sparsity, Tensor};
/// let rosen = |x: &Tensor| {
///     let (head, tail) = (x.slice_along(0, ..-1, 1), x.slice_along(0, 1.., 1));
///     ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
/// };
/// let p = hessian_sparsity(rosen).call(&Tensor::zeros(&[5])).unwrap();
/// assert_eq!(p.nnz(), 13); // tridiagonal: 5 + 2 * 4
/// ```
pub fn hessian_sparsity<F: Function<Sig>, Sig>(
    f: F,
) -> GradientTransform<F, Sig, case::Args, Plain, mode::Pattern> {
    transform(f, Kind::Hessian)
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

impl<F: Function<Sig>, Sig, C: Case, L: Layout, M: Mode> GradientTransform<F, Sig, C, L, M> {
    fn into_typestate<C2, L2, M2>(
        self,
        split: fn(&F::Output) -> Split,
    ) -> GradientTransform<F, Sig, C2, L2, M2> {
        let capacity = self.cache_capacity();
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
            chunk_size: self.chunk_size,
            memory_limit: self.memory_limit,
            cache: Mutex::new(PlanCache::new(capacity)),
            _marker: PhantomData,
        }
    }

    /// Which positional arguments to differentiate (default `0`): an index, or a sequence
    /// such as `[0, 1]`. With `grad_states`, both are differentiated (case 3).
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * y).sum();
    /// let (x, y) = (Tensor::from([2.0]), Tensor::from([5.0]));
    /// let dy = grad(f).argnums(1).call((&x, &y)).unwrap();
    /// assert_eq!(dy.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0]);
    /// let both = grad(f).argnums([0, 1]).call((&x, &y)).unwrap();
    /// assert_eq!(both[0].tensor().unwrap().to_vec::<f64>().unwrap(), vec![5.0]);
    /// ```
    pub fn argnums(
        mut self,
        argnums: impl Into<Argnums>,
    ) -> GradientTransform<F, Sig, C::WithArgnums, L, M> {
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
    ) -> GradientTransform<F, Sig, C::WithStates, L, M> {
        self.grad_states = Some(states.into());
        let split = self.split;
        self.into_typestate(split)
    }

    /// Also return the function's value (`return_value=True`).
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let g = grad(|x: &Tensor| (x * x).sum()).return_value();
    /// let (grads, value) = g.call(&Tensor::from([3.0])).unwrap();
    /// assert_eq!(value.item().unwrap(), 9.0);
    /// assert_eq!(grads.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0]);
    /// ```
    pub fn return_value(self) -> GradientTransform<F, Sig, C, L::WithValue, M> {
        let split = self.split;
        self.into_typestate(split)
    }

    /// Also return auxiliary data (`has_aux=True`): the function returns `(output, aux)` and
    /// only `output` is differentiated. A function that returns no pair does not compile.
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let f = |x: &Tensor| ((x * x).sum(), x.max()); // (output, aux)
    /// let (grads, aux) = grad(f).has_aux().call(&Tensor::from([1.0, 3.0])).unwrap();
    /// assert_eq!(aux.item().unwrap(), 3.0);
    /// assert_eq!(grads.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 6.0]);
    /// ```
    pub fn has_aux<O: Tree, A: Tree>(self) -> GradientTransform<F, Sig, C, L::WithAux, M>
    where
        F: Function<Sig, Output = (O, A)>,
    {
        self.into_typestate(split_aux::<O, A>)
    }

    /// Promise that the function is holomorphic (default `false`). Differentiated inputs and
    /// the outputs must then be complex; without it they must be real (`jacfwd` alone allows
    /// complex outputs of real inputs). A call that breaks these rules fails with an error
    /// naming the input or output, as JAX's does.
    ///
    /// ```
    /// use brainstate::{hessian, Complex64, Tensor};
    /// let z = Tensor::from(vec![Complex64::new(1.0, 1.0)]);
    /// let h = hessian(|z: &Tensor| z.powi(3).sum()).holomorphic(true).call(&z).unwrap();
    /// let block = h.tensor().unwrap().to_vec::<Complex64>().unwrap();
    /// assert_eq!(block, vec![Complex64::new(6.0, 6.0)]); // 6z
    /// assert!(hessian(|z: &Tensor| z.powi(3).sum()).call(&z).is_err()); // needs the promise
    /// ```
    pub fn holomorphic(mut self, holomorphic: bool) -> Self {
        self.holomorphic = holomorphic;
        self
    }

    /// Whether a state in `grad_states` that the function never reads is an error (default
    /// `true`); with `false` its blocks are zeros.
    ///
    /// ```
    /// use brainstate::{grad, State, Tensor};
    /// let unread = State::new(Tensor::scalar(1.0));
    /// let f = |x: &Tensor| x.sum();
    /// assert!(grad(f).grad_states(&unread).call(&Tensor::scalar(2.0)).is_err());
    /// let g = grad(f).grad_states(&unread).check_states(false).call(&Tensor::scalar(2.0));
    /// assert_eq!(g.unwrap().tensor().unwrap().item().unwrap(), 0.0);
    /// ```
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
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let g = grad(|x: &Tensor| x.sqrt().sum()).debug_nan(true);
    /// assert!(g.call(&Tensor::from([4.0])).is_ok());
    /// let err = g.call(&Tensor::from([0.0])).unwrap_err(); // d sqrt(x) / dx is infinite at 0
    /// assert!(err.to_string().starts_with("debug_nan:"));
    /// ```
    pub fn debug_nan(mut self, debug_nan: bool) -> Self {
        self.debug_nan = debug_nan;
        self
    }

    /// How many directions of a differentiated input forward mode pushes through at once
    /// (`jacfwd` and `hessian`). The derivative is computed in sweeps of this many columns, so
    /// its memory is bounded by the chunk rather than by the number of inputs; the chunks run
    /// one after another. By default the size is chosen from the memory a direction needs:
    /// all directions at once when they fit in about a core's cache (2 MiB), otherwise chunks
    /// that fit it, run side by side on the threads (through loops, chunks that fit a few
    /// tens of megabytes, since each step's fixed costs are shared by a chunk's directions).
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let f = |x: &Tensor| x.powi(3).sum();
    /// let x = Tensor::from([1.0, 2.0, 3.0]);
    /// let chunked = hessian(f).chunk_size(2).call(&x).unwrap(); // two sweeps: 2 + 1 columns
    /// let whole = hessian(f).call(&x).unwrap();
    /// let values = chunked.tensor().unwrap().to_vec::<f64>().unwrap();
    /// assert_eq!(values, whole.tensor().unwrap().to_vec::<f64>().unwrap());
    /// assert_eq!(values, vec![6.0, 0.0, 0.0, 0.0, 12.0, 0.0, 0.0, 0.0, 18.0]);
    /// ```
    pub fn chunk_size(mut self, directions: usize) -> Self {
        self.chunk_size = Some(directions.max(1));
        self
    }

    /// The most memory a call may allocate, in bytes (default: the global limit of
    /// [`crate::memory`], a fraction of the physical memory). The bytes a call needs (the
    /// blocks it returns and its plans' intermediates at their peak) are known once its plan
    /// is built; a call that needs more fails with [`Error::Memory`](crate::Error::Memory),
    /// naming the bytes, the shapes and what to use instead, before it allocates anything.
    ///
    /// ```
    /// use brainstate::{hessian, Error, Tensor};
    /// let f = |x: &Tensor| x.powi(2).sum();
    /// let h = hessian(f).memory_limit(1 << 20); // 1 MiB
    /// assert!(h.call(&Tensor::zeros(&[100])).is_ok()); // 80 kB of blocks
    /// let err = h.call(&Tensor::zeros(&[1000])).unwrap_err(); // 8 MB of blocks
    /// assert!(matches!(err, Error::Memory { needed: 8_000_000, .. }));
    /// assert!(err.to_string().contains("hvp"));
    /// ```
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// How many plans (one per signature of the arguments and of the states read) the
    /// transform keeps (default 64): beyond that, the least recently used is dropped, and
    /// built again if its signature comes back.
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let g = grad(|x: &Tensor| x.powi(2).sum()).cache_size(2);
    /// for n in 1..10 {
    ///     g.call(&Tensor::ones(&[n])).unwrap(); // a new signature each time
    /// }
    /// assert_eq!(g.cached_plans(), 2);
    /// ```
    pub fn cache_size(self, plans: usize) -> Self {
        self.cache().set_capacity(plans);
        self
    }

    /// The number of plans the transform holds now.
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let g = grad(|x: &Tensor| x.sum());
    /// assert_eq!(g.cached_plans(), 0);
    /// g.call(&Tensor::ones(&[3])).unwrap();
    /// assert_eq!(g.cached_plans(), 1);
    /// ```
    pub fn cached_plans(&self) -> usize {
        self.cache().len()
    }

    /// Drops every plan the transform holds, and with them the results it keeps to write
    /// the next call into (a large dense Hessian from sparsity, see the README's Memory
    /// section): their memory goes back once the caller lets go of them too. The next call
    /// of each signature builds its plan again. As `clear_cache` on a function compiled by
    /// `jax.jit`.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.powi(3).sum());
    /// h.call(&Tensor::ones(&[3])).unwrap();
    /// assert_eq!(h.cached_plans(), 1);
    /// h.clear_cache();
    /// assert_eq!(h.cached_plans(), 0);
    /// assert!(h.call(&Tensor::ones(&[3])).is_ok());
    /// ```
    pub fn clear_cache(&self) {
        let capacity = self.cache_capacity();
        let plans = std::mem::replace(&mut *self.cache(), PlanCache::new(capacity));
        // Out of the lock: dropping the plans frees their kept results.
        drop(plans);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, PlanCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_capacity(&self) -> usize {
        self.cache().capacity()
    }

    /// The memory limit in force for a call.
    fn limit(&self) -> usize {
        self.memory_limit.unwrap_or_else(crate::memory::limit)
    }

    /// The derivative program for arguments like `args`: one program computing the
    /// function's outputs, then every block. Notes above it say how it runs when that is
    /// not as one program: forward-mode derivatives in sweeps over chunks of directions, a
    /// Hessian from its sparsity by a few compressed products.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.sin().sum());
    /// let program = h.program(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert!(program.to_string().contains("sin"));
    /// ```
    pub fn program(&self, args: impl Args<Sig>) -> Result<Program> {
        let (signature, _) = signature(&args.flatten_args())?;
        let compiled = self.compiled(&signature, false)?;
        let mut program = compiled.whole()?.clone();
        program.notes = compiled.notes();
        Ok(program)
    }

    /// The plan for this signature, from the cache or newly built (`for_a_call`: see
    /// [`Spec::for_a_call`]).
    fn compiled(&self, signature: &Signature, for_a_call: bool) -> Result<Arc<Compiled>> {
        if let Some(found) = self.cache().get(signature) {
            return Ok(found);
        }
        let spec = Spec {
            kind: self.kind,
            evaluation: M::EVALUATION,
            value: L::VALUE,
            argnums: C::ARGS.then_some(&self.argnums),
            grad_states: if C::STATES {
                self.grad_states.as_ref()
            } else {
                None
            },
            holomorphic: self.holomorphic,
            check_states: self.check_states,
            chunk_size: self.chunk_size,
            memory_limit: self.limit(),
            for_a_call,
        };
        let start = Instant::now();
        let compiled = Arc::new(compile(&self.f, self.split, &spec, signature)?);
        log::info!(
            "{}: built the plan for a new signature of {} argument leaves in {:.2?} \
             ({} equations; later calls with this signature only run it){}",
            self.kind.name(),
            signature.avals.len(),
            start.elapsed(),
            compiled.exec.equations(),
            compiled
                .notes()
                .iter()
                .map(|n| format!("; {n}"))
                .collect::<String>()
        );
        self.cache().insert(signature, compiled.clone());
        Ok(compiled)
    }

    fn blocks<'a>(
        &'a self,
        arrangement: Arrangement,
        compiled: &'a Compiled,
        outputs: &'a Outputs,
    ) -> Blocks<'a> {
        Blocks {
            arrangement,
            compiled,
            argnums: &self.argnums,
            grad_states: self.grad_states.as_ref(),
            unit_aware: self.unit_aware,
            blocks: &outputs.blocks,
        }
    }

    /// How dense derivative blocks nest.
    fn dense_arrangement(&self) -> Arrangement {
        match self.kind {
            Kind::Hessian => Arrangement::Hessian,
            Kind::Grad => Arrangement::Jacobian { nested: false },
            Kind::JacRev | Kind::JacFwd => Arrangement::Jacobian { nested: true },
        }
    }

    /// Runs the transform on `args` and the call's vectors (made by `vectors` once the
    /// plan is known), and builds the call's result with `build`; the states the function
    /// wrote are assigned only once that has succeeded.
    fn run<R>(
        &self,
        args: &impl Args<Sig>,
        vectors: impl FnOnce(&Compiled) -> Result<Vec<Tensor>>,
        build: impl FnOnce(&Arc<Compiled>, &mut Outputs) -> Result<R>,
    ) -> Result<R> {
        let (signature, leaves) = signature(&args.flatten_args())?;
        // Traced arguments: the derivative program is inlined, its executable never runs.
        let compiled = self.compiled(&signature, !leaves.iter().any(Tensor::is_traced))?;
        let vectors = vectors(&compiled)?;
        let start = Instant::now();
        // Read, compute and commit as one step for the states the function writes: calls
        // that write a common state run one after another.
        let _serialized = state::lock_all(compiled.writes.iter().map(|(s, _)| s));
        let settings = run::Settings {
            debug_nan: self.debug_nan || compiled.debug_nan,
            memory_limit: self.limit(),
        };
        let mut outputs = run(&compiled, leaves, vectors, &settings)?;
        log::debug!(
            "{}: ran the plan in {:.2?}",
            self.kind.name(),
            start.elapsed()
        );
        let result = build(&compiled, &mut outputs)?;
        outputs.commit();
        Ok(result)
    }

    /// The derivatives of a call, arranged in this case's structure.
    fn grads(&self, arrangement: Arrangement, compiled: &Compiled, outputs: &Outputs) -> C::Grads {
        let blocks = self.blocks(arrangement, compiled, outputs);
        let part = |rows, cols| blocks.part(rows, cols);
        let var_grads = C::STATES.then(|| part(Part::States, Part::States));
        let arg_grads = C::ARGS.then(|| part(Part::Args, Part::Args));
        C::grads(var_grads, arg_grads)
    }
}

impl<F: Function<Sig>, Sig, L: Layout> GradientTransform<F, Sig, case::StatesArgs, L, Dense> {
    /// The blocks that `joint` returns.
    fn joint_blocks(&self, compiled: &Compiled, outputs: &Outputs) -> Node {
        let blocks = self.blocks(self.dense_arrangement(), compiled, outputs);
        let part = |rows, cols| blocks.part(rows, cols);
        if self.kind == Kind::Hessian {
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
        }
    }
}

impl<F: Function<Sig>, Sig> GradientTransform<F, Sig, case::StatesArgs, Plain, Dense> {
    /// All blocks over the joint variable `(states, arguments)` as a 2 x 2 nest, from one run
    /// of the function: `[0][0]` is `var_grads`, `[1][1]` is `arg_grads`, and `[0][1]`
    /// (`[1][0]`) holds the mixed blocks `d2f / d state d arg` (`d2f / d arg d state`); each
    /// nests as output / row variable / column variable. For `grad`, `jacrev` and `jacfwd`:
    /// `[states, args]`. With `return_value` and `has_aux`, the value and aux come with it.
    ///
    /// ```
    /// use brainstate::{hessian, State, Tensor};
    /// let w = State::new(Tensor::scalar(2.0));
    /// let h = hessian(|x: &Tensor| (w.value() * x * x).sum()).grad_states(&w).argnums(0);
    /// let joint = h.joint(&Tensor::scalar(3.0)).unwrap();
    /// assert_eq!(joint[0][1].tensor().unwrap().item().unwrap(), 6.0); // d2/dw dx = 2x
    /// ```
    pub fn joint(&self, args: impl Args<Sig>) -> Result<Node> {
        self.run(&args, no_vectors, |compiled, outputs| {
            Ok(self.joint_blocks(compiled, outputs))
        })
    }
}

impl<F: Function<Sig>, Sig> GradientTransform<F, Sig, case::StatesArgs, Value, Dense> {
    /// `(joint, value)`: all blocks over `(states, arguments)` and the function's value,
    /// from one run.
    ///
    /// ```
    /// use brainstate::{hessian, State, Tensor};
    /// let w = State::new(Tensor::scalar(2.0));
    /// let f = |x: &Tensor| (w.value() * x * x).sum();
    /// let h = hessian(f).grad_states(&w).argnums(0).return_value();
    /// let (joint, value) = h.joint(&Tensor::scalar(3.0)).unwrap();
    /// assert_eq!(value.item().unwrap(), 18.0);
    /// assert_eq!(joint[1][1].tensor().unwrap().item().unwrap(), 4.0); // d2/dx2 = 2w
    /// ```
    pub fn joint(&self, args: impl Args<Sig>) -> Result<(Node, F::Output)> {
        self.run(&args, no_vectors, |compiled, outputs| {
            let value = value_of(compiled, outputs)?;
            Ok((self.joint_blocks(compiled, outputs), value))
        })
    }
}

impl<F, Sig, O: Tree, A: Tree> GradientTransform<F, Sig, case::StatesArgs, Aux, Dense>
where
    F: Function<Sig, Output = (O, A)>,
{
    /// `(joint, aux)`: all blocks over `(states, arguments)` and the aux data, from one run.
    ///
    /// ```
    /// use brainstate::{hessian, State, Tensor};
    /// let w = State::new(Tensor::scalar(2.0));
    /// let f = |x: &Tensor| ((w.value() * x * x).sum(), x * 10.0);
    /// let h = hessian(f).grad_states(&w).argnums(0).has_aux();
    /// let (joint, aux) = h.joint(&Tensor::scalar(3.0)).unwrap();
    /// assert_eq!(aux.item().unwrap(), 30.0);
    /// assert_eq!(joint[0][1].tensor().unwrap().item().unwrap(), 6.0);
    /// ```
    pub fn joint(&self, args: impl Args<Sig>) -> Result<(Node, A)> {
        self.run(&args, no_vectors, |compiled, outputs| {
            let aux = aux_of(compiled, outputs)?;
            Ok((self.joint_blocks(compiled, outputs), aux))
        })
    }
}

impl<F, Sig, O: Tree, A: Tree> GradientTransform<F, Sig, case::StatesArgs, ValueAux, Dense>
where
    F: Function<Sig, Output = (O, A)>,
{
    /// `(joint, value, aux)`: all blocks over `(states, arguments)`, the value and the aux
    /// data, from one run (so states the function writes are written once).
    ///
    /// ```
    /// use brainstate::{hessian, State, Tensor};
    /// let w = State::new(Tensor::scalar(2.0));
    /// let calls = State::new(Tensor::scalar(0.0));
    /// let f = |x: &Tensor| {
    ///     calls.set_value(calls.value() + 1.0).unwrap();
    ///     ((w.value() * x * x).sum(), x * 10.0)
    /// };
    /// let h = hessian(f).grad_states(&w).argnums(0).has_aux().return_value();
    /// let (joint, value, aux) = h.joint(&Tensor::scalar(3.0)).unwrap();
    /// assert_eq!((value.item().unwrap(), aux.item().unwrap()), (18.0, 30.0));
    /// assert_eq!(joint[0][0].tensor().unwrap().item().unwrap(), 0.0);
    /// assert_eq!(calls.value().item().unwrap(), 1.0);
    /// ```
    pub fn joint(&self, args: impl Args<Sig>) -> Result<(Node, O, A)> {
        self.run(&args, no_vectors, |compiled, outputs| {
            let value = value_of(compiled, outputs)?;
            let aux = aux_of(compiled, outputs)?;
            Ok((self.joint_blocks(compiled, outputs), value, aux))
        })
    }
}

/// The function's value, rebuilt from a call's outputs.
fn value_of<T: Tree>(compiled: &Compiled, outputs: &mut Outputs) -> Result<T> {
    T::unflatten(&compiled.value_def, &mut outputs.value.drain(..))
}

/// The aux data, rebuilt from a call's outputs.
fn aux_of<A: Tree>(compiled: &Compiled, outputs: &mut Outputs) -> Result<A> {
    A::unflatten(compiled.aux_def(), &mut outputs.aux.drain(..))
}
