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
//! | `debug_nan=True` (through `**kwargs`) | `.debug_nan(true)` |
//! | `h(x, y)` | `h.call((&x, &y))?` |

use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use crate::autodiff::{hessian_program, jacfwd_program, jacrev_program, jvp_program};
use crate::error::{Error, Result};
use crate::exec::{simplify, Plan};
use crate::ir::Program;
use crate::tensor::{Aval, Data, Tensor};
use crate::trace::Tracing;
use crate::tree::{Node, Tree, TreeDef};

/// A Rust function that transforms can trace: any `Fn(&A0, &A1, ...) -> O` of up to six
/// [`Tree`] arguments returning a [`Tree`]. `Sig` is the tuple of argument types.
pub trait Function<Sig> {
    /// What the function returns.
    type Output: Tree;
    /// The number of positional arguments.
    const ARITY: usize;
    /// Calls the function on arguments rebuilt from their structures and leaves.
    fn call_flat(&self, defs: &[TreeDef], leaves: Vec<Tensor>) -> Result<Self::Output>;
}

/// Arguments for a call of a transformed function of signature `Sig`: `&x` for one argument,
/// `(&x, &y, ...)` for several.
pub trait Args<Sig> {
    /// Each argument's structure and leaves.
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

/// Which derivative a transform computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Grad,
    JacRev,
    JacFwd,
    Hessian,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Grad => "grad",
            Kind::JacRev => "jacrev",
            Kind::JacFwd => "jacfwd",
            Kind::Hessian => "hessian",
        }
    }
}

/// Marker types for what a call returns besides the derivatives (typestate, so that a wrong
/// destructuring is a compile error).
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
}
use layout::{Aux, Plain, Value, ValueAux};

/// Everything a call needs that does not depend on the arguments' values.
struct Compiled {
    plan: Plan,
    value_def: TreeDef,
    aux_def: Option<TreeDef>,
    arg_defs: Vec<TreeDef>,
}

/// Structure, shapes and dtypes of a call's arguments: the key of the plan cache.
type Signature = (Vec<TreeDef>, Vec<Aval>);

/// Outputs of one call, before they are given the caller's types.
struct Outcome {
    derivative: Node,
    value: Vec<Tensor>,
    aux: Vec<Tensor>,
    compiled: Arc<Compiled>,
}

/// A transformed function: call it with [`GradientTransform::call`] as often as needed. The
/// derivative program is built once per argument signature and reused.
///
/// ```
/// use brainstate::{hessian, Tensor};
/// let f = |x: &Tensor| (x.powi(3)).sum();
/// let h = hessian(f).return_value();
/// let (hess, value) = h.call(&Tensor::from([1.0, 2.0])).unwrap();
/// assert_eq!(hess.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 0.0, 0.0, 12.0]);
/// assert_eq!(value.item().unwrap(), 9.0);
/// ```
pub struct GradientTransform<F: Function<Sig>, Sig, L = Plain> {
    f: F,
    /// Divides the function's output into the differentiated value and the aux data.
    split: fn(&F::Output) -> Split,
    kind: Kind,
    argnums: Argnums,
    holomorphic: bool,
    debug_nan: bool,
    cache: Mutex<HashMap<Signature, Arc<Compiled>>>,
    _marker: PhantomData<fn() -> (Sig, L)>,
}

fn transform<F: Function<Sig>, Sig>(f: F, kind: Kind) -> GradientTransform<F, Sig> {
    GradientTransform {
        f,
        split: split_plain::<F::Output>,
        kind,
        argnums: Argnums::One(0),
        holomorphic: false,
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

/// The traced program of `f` on arguments like `args` (JAX's `make_jaxpr`).
///
/// ```
/// use brainstate::{make_program, Tensor};
/// let p = make_program(|x: &Tensor| x.exp().sum(), &Tensor::from([1.0, 2.0])).unwrap();
/// println!("{p}");
/// assert_eq!(p.len(), 2);
/// ```
pub fn make_program<F: Function<Sig>, Sig>(f: F, args: impl Args<Sig>) -> Result<Program> {
    let (defs, avals, _) = signature(&args.flatten_args())?;
    let (program, ..) =
        trace_function(&f, &defs, &avals, "make_program", split_plain::<F::Output>)?;
    Ok(simplify(program))
}

/// Flattened arguments: their structures, all leaves' avals, and the leaves.
fn signature(args: &[(TreeDef, Vec<Tensor>)]) -> Result<(Vec<TreeDef>, Vec<Aval>, Vec<Tensor>)> {
    let defs = args.iter().map(|(d, _)| d.clone()).collect();
    let leaves: Vec<Tensor> = args.iter().flat_map(|(_, l)| l.iter().cloned()).collect();
    let avals = leaves.iter().map(Tensor::aval).collect::<Result<_>>()?;
    Ok((defs, avals, leaves))
}

/// How a function's output divides into the differentiated value and the aux data.
type Split = (Vec<Tensor>, TreeDef, Vec<Tensor>, Option<TreeDef>);

fn split_plain<O: Tree>(out: &O) -> Split {
    let mut leaves = Vec::new();
    out.flatten(&mut leaves);
    (leaves, out.def(), Vec::new(), None)
}

fn split_aux<O: Tree, A: Tree>(out: &(O, A)) -> Split {
    let (value, value_def, ..) = split_plain(&out.0);
    let (aux, aux_def, ..) = split_plain(&out.1);
    (value, value_def, aux, Some(aux_def))
}

/// Traces `f` on fresh inputs of the given avals. The program's outputs are the value leaves
/// followed by the aux leaves.
fn trace_function<F: Function<Sig>, Sig>(
    f: &F,
    defs: &[TreeDef],
    avals: &[Aval],
    op: &str,
    split: fn(&F::Output) -> Split,
) -> Result<(Program, TreeDef, Option<TreeDef>, usize)> {
    let tracing = Tracing::new();
    let inputs: Vec<Tensor> = avals.iter().map(|a| tracing.input(a)).collect();
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
    let outputs: Vec<Tensor> = value.into_iter().chain(aux).collect();
    Ok((tracing.finish(&outputs)?, value_def, aux_def, n_value))
}

impl<F: Function<Sig>, Sig, L> GradientTransform<F, Sig, L> {
    fn with_layout<M>(self, split: fn(&F::Output) -> Split) -> GradientTransform<F, Sig, M> {
        GradientTransform {
            f: self.f,
            split,
            kind: self.kind,
            argnums: self.argnums,
            holomorphic: self.holomorphic,
            debug_nan: self.debug_nan,
            cache: Mutex::new(HashMap::new()),
            _marker: PhantomData,
        }
    }

    /// Which positional arguments to differentiate (default `0`): an index, or a sequence
    /// such as `[0, 1]`.
    pub fn argnums(mut self, argnums: impl Into<Argnums>) -> Self {
        self.argnums = argnums.into();
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self
    }

    /// Promise that the function is holomorphic (default `false`). Differentiated inputs must
    /// then be complex; this version of the library has no complex dtypes yet, so `true`
    /// makes every call fail with a clear error, as JAX does for real inputs.
    pub fn holomorphic(mut self, holomorphic: bool) -> Self {
        self.holomorphic = holomorphic;
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
        let (defs, avals, _) = signature(&args.flatten_args())?;
        let compiled = self.compile(&defs, &avals)?;
        Ok(compiled.plan.program.clone())
    }

    fn check_argnums(&self) -> Result<Vec<usize>> {
        let indices = self.argnums.indices();
        let name = self.kind.name();
        if indices.is_empty() {
            return Err(Error::Options(format!(
                "{name}: argnums must name at least one argument"
            )));
        }
        for (k, &i) in indices.iter().enumerate() {
            if i >= F::ARITY {
                return Err(Error::Options(format!(
                    "{name}: argnums {i} is out of range for a function of {} positional argument(s)",
                    F::ARITY
                )));
            }
            if indices[..k].contains(&i) {
                return Err(Error::Options(format!(
                    "{name}: argnums {:?} repeats argument {i}",
                    indices
                )));
            }
        }
        Ok(indices)
    }

    /// The plan for this signature, from the cache or newly built.
    fn compile(&self, defs: &[TreeDef], avals: &[Aval]) -> Result<Arc<Compiled>> {
        let key = (defs.to_vec(), avals.to_vec());
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let name = self.kind.name();
        let argnums = self.check_argnums()?;
        // Leaf ranges of each argument in the flat input list.
        let mut starts = vec![0];
        for d in defs {
            starts.push(starts.last().expect("non-empty") + d.num_leaves());
        }
        let wrt: Vec<usize> = argnums
            .iter()
            .flat_map(|&a| starts[a]..starts[a + 1])
            .collect();
        for &i in &wrt {
            let dtype = avals[i].dtype;
            if !dtype.is_float() {
                return Err(Error::dtype(
                    name,
                    format!(
                        "differentiated inputs must be floating point (argument {} has a leaf of shape {:?}); \
                         integer and boolean inputs cannot be differentiated",
                        starts.iter().rposition(|&s| s <= i).unwrap_or(0),
                        avals[i].shape
                    ),
                    dtype,
                ));
            }
            if self.holomorphic {
                return Err(Error::dtype(
                    name,
                    "holomorphic=true requires inputs with a complex dtype",
                    dtype,
                ));
            }
        }
        let (program, value_def, aux_def, n_value) =
            trace_function(&self.f, defs, avals, name, self.split)?;
        let out_avals = program.output_avals();
        for aval in &out_avals[..n_value] {
            if !aval.dtype.is_float() {
                return Err(Error::dtype(
                    name,
                    "the function's output must be floating point",
                    aval.dtype,
                ));
            }
        }
        if self.kind == Kind::Grad && (n_value != 1 || !out_avals[0].shape.is_empty()) {
            return Err(Error::Shape {
                op: "grad".into(),
                msg: format!(
                    "the function must return one scalar, got outputs of shapes {:?} (use jacrev for others)",
                    out_avals[..n_value].iter().map(|a| a.shape.clone()).collect::<Vec<_>>()
                ),
            });
        }
        let of: Vec<usize> = (0..n_value).collect();
        let derived = match self.kind {
            Kind::Grad | Kind::JacRev => jacrev_program(&program, &wrt, &of)?,
            Kind::JacFwd => jacfwd_program(&program, &wrt, &of)?,
            Kind::Hessian => hessian_program(&program, &wrt, &of)?,
        };
        // Keep the function's outputs (value and aux) and the derivative blocks, which come last.
        let n_blocks = match self.kind {
            Kind::Hessian => of.len() * wrt.len() * wrt.len(),
            _ => of.len() * wrt.len(),
        };
        let mut derived = derived;
        let total = derived.outputs.len();
        let mut outputs = derived.outputs[..program.outputs.len()].to_vec();
        outputs.extend_from_slice(&derived.outputs[total - n_blocks..]);
        derived.outputs = outputs;
        let compiled = Arc::new(Compiled {
            plan: Plan::new(simplify(derived)),
            value_def,
            aux_def,
            arg_defs: defs.to_vec(),
        });
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Runs the transform on `args`.
    fn run(&self, args: &impl Args<Sig>) -> Result<Outcome> {
        let (defs, avals, leaves) = signature(&args.flatten_args())?;
        let compiled = self.compile(&defs, &avals)?;
        let program = &compiled.plan.program;
        let outputs: Vec<Tensor> = if leaves.iter().any(Tensor::is_traced) {
            // Inside another transform's trace: inline the derivative program there.
            let (outs, _) = jvp_program(program, &leaves, &vec![None; leaves.len()], &[]);
            outs
        } else {
            let inputs: Vec<Arc<Data>> = leaves
                .iter()
                .map(|t| t.data().cloned())
                .collect::<Result<_>>()?;
            compiled
                .plan
                .run(&inputs, self.debug_nan)?
                .into_iter()
                .map(Tensor::from_shared)
                .collect()
        };
        let n_value = compiled.value_def.num_leaves();
        let n_aux = compiled.aux_def.as_ref().map_or(0, TreeDef::num_leaves);
        let mut outputs = outputs.into_iter();
        let value: Vec<Tensor> = outputs.by_ref().take(n_value).collect();
        let aux: Vec<Tensor> = outputs.by_ref().take(n_aux).collect();
        let derivative = self.nest(&compiled, outputs);
        Ok(Outcome {
            derivative,
            value,
            aux,
            compiled,
        })
    }

    /// Arranges the flat derivative blocks into the result tree.
    fn nest(&self, compiled: &Compiled, blocks: impl Iterator<Item = Tensor>) -> Node {
        let mut blocks = blocks;
        let mut leaf = || Node::Leaf(blocks.next().expect("one block per leaf"));
        let argnums = &self.argnums;
        let defs = &compiled.arg_defs;
        fn over_args(argnums: &Argnums, defs: &[TreeDef], leaf: &mut dyn FnMut() -> Node) -> Node {
            match argnums {
                Argnums::One(a) => defs[*a].build(leaf),
                Argnums::Many(v) => Node::Tuple(v.iter().map(|&a| defs[a].build(leaf)).collect()),
            }
        }
        match self.kind {
            Kind::Grad => over_args(argnums, defs, &mut leaf),
            Kind::JacRev | Kind::JacFwd => compiled
                .value_def
                .build(&mut || over_args(argnums, defs, &mut leaf)),
            Kind::Hessian => compiled.value_def.build(&mut || {
                over_args(argnums, defs, &mut || over_args(argnums, defs, &mut leaf))
            }),
        }
    }
}

impl<F: Function<Sig>, Sig> GradientTransform<F, Sig, Plain> {
    /// Also return the function's auxiliary data: the function must return `(output, aux)`,
    /// and only `output` is differentiated.
    pub fn has_aux<O: Tree, A: Tree>(self) -> GradientTransform<F, Sig, Aux>
    where
        F: Function<Sig, Output = (O, A)>,
    {
        self.with_layout(split_aux::<O, A>)
    }

    /// Also return the function's value.
    pub fn return_value(self) -> GradientTransform<F, Sig, Value> {
        self.with_layout(split_plain::<F::Output>)
    }

    /// The derivatives (`arg_grads`).
    pub fn call(&self, args: impl Args<Sig>) -> Result<Node> {
        Ok(self.run(&args)?.derivative)
    }
}

impl<F: Function<Sig>, Sig> GradientTransform<F, Sig, Value> {
    /// Also return the function's auxiliary data (see [`GradientTransform::has_aux`]).
    pub fn has_aux<O: Tree, A: Tree>(self) -> GradientTransform<F, Sig, ValueAux>
    where
        F: Function<Sig, Output = (O, A)>,
    {
        self.with_layout(split_aux::<O, A>)
    }

    /// `(arg_grads, value)`.
    pub fn call(&self, args: impl Args<Sig>) -> Result<(Node, F::Output)> {
        let out = self.run(&args)?;
        let value = F::Output::unflatten(&out.compiled.value_def, &mut out.value.into_iter())?;
        Ok((out.derivative, value))
    }
}

impl<F, Sig, O: Tree, A: Tree> GradientTransform<F, Sig, Aux>
where
    F: Function<Sig, Output = (O, A)>,
{
    /// Also return the function's value.
    pub fn return_value(self) -> GradientTransform<F, Sig, ValueAux> {
        let split = self.split;
        self.with_layout(split)
    }

    /// `(arg_grads, aux)`.
    pub fn call(&self, args: impl Args<Sig>) -> Result<(Node, A)> {
        let out = self.run(&args)?;
        let aux_def = out.compiled.aux_def.as_ref().expect("traced with aux");
        Ok((
            out.derivative,
            A::unflatten(aux_def, &mut out.aux.into_iter())?,
        ))
    }
}

impl<F, Sig, O: Tree, A: Tree> GradientTransform<F, Sig, ValueAux>
where
    F: Function<Sig, Output = (O, A)>,
{
    /// `(arg_grads, value, aux)`.
    pub fn call(&self, args: impl Args<Sig>) -> Result<(Node, O, A)> {
        let out = self.run(&args)?;
        let aux_def = out.compiled.aux_def.as_ref().expect("traced with aux");
        let value = O::unflatten(&out.compiled.value_def, &mut out.value.into_iter())?;
        let aux = A::unflatten(aux_def, &mut out.aux.into_iter())?;
        Ok((out.derivative, value, aux))
    }
}
