//! The typestates of a transform: what it differentiates ([`case`]), what a call returns
//! besides the derivatives ([`layout`]), and how the derivatives are computed and returned
//! ([`mode`]). Builder methods change them, so a call's result always has the right type.

/// What a call returns besides the derivatives (typestate, so that a wrong destructuring is a
/// compile error): set by [`GradientTransform::has_aux`](crate::GradientTransform::has_aux) and [`GradientTransform::return_value`](crate::GradientTransform::return_value).
///
/// ```
/// use brainstate::{grad, Tensor};
/// let g = grad(|x: &Tensor| ((x * x).sum(), x.max())).has_aux().return_value();
/// let (grads, value, aux) = g.call(&Tensor::from([1.0, 2.0])).unwrap(); // layout::ValueAux
/// assert_eq!(grads.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 4.0]);
/// assert_eq!((value.item().unwrap(), aux.item().unwrap()), (5.0, 2.0));
/// ```
pub mod layout {
    /// Derivatives only.
    ///
    /// ```
    /// use brainstate::transform::{case, layout::Plain};
    /// use brainstate::{grad, GradientTransform, Tensor};
    /// let g: GradientTransform<_, (Tensor,), case::Args, Plain> = grad(|x: &Tensor| x.sum());
    /// let grads = g.call(&Tensor::from([1.0, 2.0])).unwrap(); // the derivatives only
    /// assert_eq!(grads.tensor().unwrap().to_vec::<f64>().unwrap(), vec![1.0, 1.0]);
    /// ```
    #[derive(Debug)]
    pub struct Plain;
    /// `(derivatives, aux)`.
    ///
    /// ```
    /// use brainstate::transform::{case, layout::Aux};
    /// use brainstate::{grad, GradientTransform, Tensor};
    /// let g: GradientTransform<_, (Tensor,), case::Args, Aux> =
    ///     grad(|x: &Tensor| (x.sum(), x.max())).has_aux();
    /// let (_grads, aux) = g.call(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!(aux.item().unwrap(), 2.0);
    /// ```
    #[derive(Debug)]
    pub struct Aux;
    /// `(derivatives, value)`.
    ///
    /// ```
    /// use brainstate::transform::{case, layout::Value};
    /// use brainstate::{grad, GradientTransform, Tensor};
    /// let g: GradientTransform<_, (Tensor,), case::Args, Value> =
    ///     grad(|x: &Tensor| x.sum()).return_value();
    /// let (_grads, value) = g.call(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!(value.item().unwrap(), 3.0);
    /// ```
    #[derive(Debug)]
    pub struct Value;
    /// `(derivatives, value, aux)`.
    ///
    /// ```
    /// use brainstate::transform::{case, layout::ValueAux};
    /// use brainstate::{grad, GradientTransform, Tensor};
    /// let g: GradientTransform<_, (Tensor,), case::Args, ValueAux> =
    ///     grad(|x: &Tensor| (x.sum(), x.max())).has_aux().return_value();
    /// let (_grads, value, aux) = g.call(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!((value.item().unwrap(), aux.item().unwrap()), (3.0, 2.0));
    /// ```
    #[derive(Debug)]
    pub struct ValueAux;

    /// How the layout changes when aux data or the value is also asked for: the order of the
    /// builder calls does not matter, and the call's result changes with them.
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let f = |x: &Tensor| (x.powi(2).sum(), x.max());
    /// let x = Tensor::from([1.0, 3.0]);
    /// let (_, aux) = grad(f).has_aux().call(&x).unwrap(); // Plain -> Aux
    /// let (_, value, aux2) = grad(f).return_value().has_aux().call(&x).unwrap(); // -> ValueAux
    /// assert_eq!((aux.item().unwrap(), value.item().unwrap()), (3.0, 10.0));
    /// assert_eq!(aux2.item().unwrap(), 3.0);
    /// ```
    pub trait Layout {
        /// The layout after `.has_aux()`.
        ///
        /// ```
        /// use brainstate::{grad, Tensor};
        /// let with_value = grad(|x: &Tensor| (x.sum(), x * 2.0)).return_value(); // Value
        /// let (_, value, aux) = with_value.has_aux().call(&Tensor::scalar(4.0)).unwrap();
        /// assert_eq!((value.item().unwrap(), aux.item().unwrap()), (4.0, 8.0));
        /// ```
        type WithAux;
        /// The layout after `.return_value()`.
        ///
        /// ```
        /// use brainstate::{hessian, Tensor};
        /// let (hess, value) = hessian(|x: &Tensor| x.powi(3).sum())
        ///     .return_value() // Plain -> Value
        ///     .call(&Tensor::scalar(2.0))
        ///     .unwrap();
        /// assert_eq!((hess.tensor().unwrap().item().unwrap(), value.item().unwrap()), (12.0, 8.0));
        /// ```
        type WithValue;
        /// Whether a call returns the function's value: without it, the plan does not
        /// compute the work that only the value needs.
        ///
        /// ```
        /// use brainstate::transform::layout::{Layout, Plain, Value};
        /// assert!(!Plain::VALUE && Value::VALUE);
        /// ```
        const VALUE: bool;
    }
    impl Layout for Plain {
        type WithAux = Aux;
        type WithValue = Value;
        const VALUE: bool = false;
    }
    impl Layout for Aux {
        type WithAux = Aux;
        type WithValue = ValueAux;
        const VALUE: bool = false;
    }
    impl Layout for Value {
        type WithAux = ValueAux;
        type WithValue = Value;
        const VALUE: bool = true;
    }
    impl Layout for ValueAux {
        type WithAux = ValueAux;
        type WithValue = ValueAux;
        const VALUE: bool = true;
    }
}
/// Which of the specification's three cases a transform is in (typestate): what it
/// differentiates and so what its derivatives are.
///
/// ```
/// use brainstate::{hessian, State, Tensor};
/// let w = State::new(Tensor::scalar(2.0));
/// let f = |x: &Tensor| (w.value() * x * x).sum();
/// let x = Tensor::scalar(3.0);
/// let arg_grads = hessian(f).call(&x).unwrap(); // case 1: d2f / dx2 = 2w
/// let var_grads = hessian(f).grad_states(&w).call(&x).unwrap(); // case 2: d2f / dw2 = 0
/// let (_, both) = hessian(f).grad_states(&w).argnums(0).call(&x).unwrap(); // case 3
/// assert_eq!(arg_grads.tensor().unwrap().item().unwrap(), 4.0);
/// assert_eq!(var_grads.tensor().unwrap().item().unwrap(), 0.0);
/// assert_eq!(both.tensor().unwrap().item().unwrap(), 4.0);
/// ```
pub mod case {
    use crate::tree::Node;

    /// Case 1, `argnums` left at its default `0`: `arg_grads`.
    ///
    /// ```
    /// use brainstate::transform::case;
    /// use brainstate::{hessian, GradientTransform, Tensor};
    /// let h: GradientTransform<_, (Tensor,), case::Args> = hessian(|x: &Tensor| x.powi(3).sum());
    /// let arg_grads = h.call(&Tensor::from([1.0])).unwrap();
    /// assert_eq!(arg_grads.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0]);
    /// ```
    #[derive(Debug)]
    pub struct Args;
    /// Case 1 with `argnums` given: `arg_grads`.
    ///
    /// ```
    /// use brainstate::transform::case;
    /// use brainstate::{grad, GradientTransform, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * y).sum();
    /// let g: GradientTransform<_, (Tensor, Tensor), case::ArgsGiven> = grad(f).argnums(1);
    /// let arg_grads = g.call((&Tensor::scalar(2.0), &Tensor::scalar(5.0))).unwrap();
    /// assert_eq!(arg_grads.tensor().unwrap().item().unwrap(), 2.0);
    /// ```
    #[derive(Debug)]
    pub struct ArgsGiven;
    /// Case 2, `grad_states` without `argnums`: `var_grads`.
    ///
    /// ```
    /// use brainstate::transform::case;
    /// use brainstate::{grad, GradientTransform, State, Tensor};
    /// let w = State::new(Tensor::scalar(2.0));
    /// let f = |x: &Tensor| (w.value() * x).sum();
    /// let g: GradientTransform<_, (Tensor,), case::States> = grad(f).grad_states(&w);
    /// assert_eq!(g.call(&Tensor::scalar(5.0)).unwrap().tensor().unwrap().item().unwrap(), 5.0);
    /// ```
    #[derive(Debug)]
    pub struct States;
    /// Case 3, `grad_states` and `argnums`: `(var_grads, arg_grads)`.
    ///
    /// ```
    /// use brainstate::transform::case;
    /// use brainstate::{grad, GradientTransform, State, Tensor};
    /// let w = State::new(Tensor::scalar(2.0));
    /// let f = |x: &Tensor| (w.value() * x).sum();
    /// let g: GradientTransform<_, (Tensor,), case::StatesArgs> =
    ///     grad(f).grad_states(&w).argnums(0);
    /// let (var_grads, arg_grads) = g.call(&Tensor::scalar(5.0)).unwrap();
    /// assert_eq!(var_grads.tensor().unwrap().item().unwrap(), 5.0); // d/dw = x
    /// assert_eq!(arg_grads.tensor().unwrap().item().unwrap(), 2.0); // d/dx = w
    /// ```
    #[derive(Debug)]
    pub struct StatesArgs;

    /// What each case differentiates and returns: `grad_states` moves case 1 to case 2, and
    /// `argnums` then moves it to case 3, whose result is a pair.
    ///
    /// ```
    /// use brainstate::{grad, State, Tensor};
    /// let w = State::new(Tensor::scalar(3.0));
    /// let f = |x: &Tensor| (w.value() * x * x).sum();
    /// let x = Tensor::scalar(2.0);
    /// let dw = grad(f).grad_states(&w).call(&x).unwrap(); // Args -> States: var_grads
    /// let (dw2, dx) = grad(f).grad_states(&w).argnums(0).call(&x).unwrap(); // -> StatesArgs
    /// assert_eq!(dw.tensor().unwrap().item().unwrap(), 4.0); // x^2
    /// assert_eq!(dw2.tensor().unwrap().item().unwrap(), 4.0);
    /// assert_eq!(dx.tensor().unwrap().item().unwrap(), 12.0); // 2 w x
    /// ```
    pub trait Case {
        /// The derivatives a call returns: one [`Node`] tree, or `(var_grads, arg_grads)` in
        /// case 3.
        ///
        /// ```
        /// use brainstate::{hessian, Node, State, Tensor};
        /// let w = State::new(Tensor::scalar(1.0));
        /// let h = hessian(|x: &Tensor| (w.value() * x).powi(2).sum()).grad_states(&w).argnums(0);
        /// let (var_grads, arg_grads): (Node, Node) = h.call(&Tensor::scalar(3.0)).unwrap();
        /// assert_eq!(var_grads.tensor().unwrap().item().unwrap(), 18.0); // 2 x^2
        /// assert_eq!(arg_grads.tensor().unwrap().item().unwrap(), 2.0); // 2 w^2
        /// ```
        type Grads;
        /// The case after `.argnums(..)`.
        ///
        /// ```
        /// use brainstate::{grad, Tensor};
        /// let g = grad(|x: &Tensor, y: &Tensor| (x * y).sum()).argnums(1); // Args -> ArgsGiven
        /// let dy = g.call((&Tensor::scalar(5.0), &Tensor::scalar(2.0))).unwrap();
        /// assert_eq!(dy.tensor().unwrap().item().unwrap(), 5.0);
        /// ```
        type WithArgnums;
        /// The case after `.grad_states(..)`.
        ///
        /// ```
        /// use brainstate::{grad, State, Tensor};
        /// let w = State::new(Tensor::scalar(2.0));
        /// let g = grad(|x: &Tensor| (w.value() * x).sum()).argnums(0); // ArgsGiven
        /// let (dw, dx) = g.grad_states(&w).call(&Tensor::scalar(7.0)).unwrap(); // StatesArgs
        /// assert_eq!((dw.tensor().unwrap().item().unwrap(), dx.tensor().unwrap().item().unwrap()), (7.0, 2.0));
        /// ```
        type WithStates;
        /// Whether arguments are differentiated.
        ///
        /// ```
        /// use brainstate::transform::case::{Args, Case, States};
        /// assert!(<Args as Case>::ARGS && !<States as Case>::ARGS);
        /// ```
        const ARGS: bool;
        /// Whether states are differentiated.
        ///
        /// ```
        /// use brainstate::transform::case::{Args, Case, StatesArgs};
        /// assert!(<StatesArgs as Case>::STATES && !<Args as Case>::STATES);
        /// ```
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

/// How a transform computes and returns its derivatives (typestate): set by the constructor
/// ([`hessian`](crate::hessian), [`hvp`](crate::hvp), [`jvp`](crate::jvp),
/// [`vjp`](crate::vjp), [`hessian_sparsity`](crate::hessian_sparsity)) and by
/// [`sparse`](crate::GradientTransform::sparse) and
/// [`diagonal`](crate::GradientTransform::diagonal).
///
/// ```
/// use brainstate::{hessian, hvp, Tensor};
/// let f = |x: &Tensor| x.powi(3).sum();
/// let x = Tensor::from([1.0, 2.0]);
/// let dense = hessian(f).call(&x).unwrap(); // mode::Dense: the [2, 2] block
/// let diag = hessian(f).diagonal().call(&x).unwrap(); // mode::Diagonal: 6x
/// let hv = hvp(f).call(&x, &Tensor::from([1.0, 0.0])).unwrap(); // mode::Hvp: H e0
/// assert_eq!(dense.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 0.0, 0.0, 12.0]);
/// assert_eq!(diag.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 12.0]);
/// assert_eq!(hv.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 0.0]);
/// ```
pub mod mode {
    /// How a mode evaluates, for the transform's plan.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[doc(hidden)]
    pub enum Evaluation {
        Dense,
        Hvp,
        Diagonal,
        Sparse,
        Pattern,
        Jvp,
        Vjp,
    }

    /// A mode of evaluation.
    pub trait Mode {
        #[doc(hidden)]
        const EVALUATION: Evaluation;
    }

    /// Dense derivative blocks nested by output and variables (`hessian`, `grad`, `jacrev`,
    /// `jacfwd`).
    ///
    /// ```
    /// use brainstate::{jacrev, Tensor};
    /// let j = jacrev(|x: &Tensor| x * 2.0).call(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!(j.tensor().unwrap().shape().unwrap(), [2, 2]);
    /// ```
    #[derive(Debug)]
    pub struct Dense;
    /// Hessian-vector products (`hvp`): `call(args, vector)`, nested like a gradient.
    ///
    /// ```
    /// use brainstate::{hvp, Tensor};
    /// let hv = hvp(|x: &Tensor| x.powi(2).sum()).call(&Tensor::zeros(&[2]), &Tensor::from([1.0, 3.0]));
    /// assert_eq!(hv.unwrap().tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 6.0]);
    /// ```
    #[derive(Debug)]
    pub struct Hvp;
    /// The Hessian's diagonal (`hessian(f).diagonal()`), nested like a gradient.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let d = hessian(|x: &Tensor| x.exp().sum()).diagonal().call(&Tensor::zeros(&[2])).unwrap();
    /// assert_eq!(d.tensor().unwrap().to_vec::<f64>().unwrap(), vec![1.0, 1.0]);
    /// ```
    #[derive(Debug)]
    pub struct Diagonal;
    /// The Hessian in compressed sparse rows (`hessian(f).sparse()`).
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.powi(3).sum()).sparse().call(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!((h.nnz(), h.values().to_vec::<f64>().unwrap()), (2, vec![6.0, 12.0]));
    /// ```
    #[derive(Debug)]
    pub struct Sparse;
    /// The Hessian's sparsity pattern (`hessian_sparsity`): no values are computed.
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| x.powi(3).sum()).call(&Tensor::zeros(&[3])).unwrap();
    /// assert_eq!(p.nnz(), 3);
    /// ```
    #[derive(Debug)]
    pub struct Pattern;
    /// Forward-mode directional derivatives (`jvp`): `call(args, tangents)`.
    ///
    /// ```
    /// use brainstate::{jvp, Tensor};
    /// let t = jvp(|x: &Tensor| x.powi(2)).call(&Tensor::from([3.0]), &Tensor::from([1.0]));
    /// assert_eq!(t.unwrap().tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0]);
    /// ```
    #[derive(Debug)]
    pub struct Jvp;
    /// Reverse mode with a reusable pullback (`vjp`).
    ///
    /// ```
    /// use brainstate::{vjp, Tensor};
    /// let pullback = vjp(|x: &Tensor| x.powi(2)).call(&Tensor::from([3.0])).unwrap();
    /// let ct = pullback.call(&Tensor::from([1.0])).unwrap();
    /// assert_eq!(ct.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0]);
    /// ```
    #[derive(Debug)]
    pub struct Vjp;

    macro_rules! evaluation {
        ($($mode:ident),*) => {$(
            impl Mode for $mode {
                const EVALUATION: Evaluation = Evaluation::$mode;
            }
        )*};
    }
    evaluation!(Dense, Hvp, Diagonal, Sparse, Pattern, Jvp, Vjp);
}
