//! Calling a transform: one `call` per mode and layout, each returning the derivatives the
//! mode computes and what the layout adds (the value, the aux data, or both).

use std::sync::Arc;

use super::blocks::{Arrangement, Blocks, Part};
use super::case::Case;
use super::compile::{Compiled, Executable};
use super::layout::{Aux, Layout, Plain, Value, ValueAux};
use super::mode::{Dense, Diagonal, Hvp, Jvp, Mode, Pattern, Sparse, Vjp};
use super::run::Outputs;
use super::{Argnums, GradientTransform, no_vectors};
use crate::autodiff::{Output, jvp_program};
use crate::error::{Error, Result};
use crate::primitives::Tangent;
use crate::sparsity::{SparseHessian, SparsityPattern};
use crate::state::GradStates;
use crate::storage::Data;
use crate::tensor::Tensor;
use crate::transform::function::{Args, Function};
use crate::tree::{Node, Tree, TreeDef};
use crate::unit::Unit;

impl<F: Function<Sig>, Sig, C: Case, L: Layout, M: Mode> GradientTransform<F, Sig, C, L, M> {
    /// The structure of the differentiated variables: the `grad_states` tree, the argument
    /// tree(s) of `argnums`, or both as a pair.
    fn wrt_def(&self, compiled: &Compiled) -> TreeDef {
        let args = || match &self.argnums {
            Argnums::One(a) => compiled.arg_defs[*a].clone(),
            Argnums::Many(v) => {
                TreeDef::Tuple(v.iter().map(|&a| compiled.arg_defs[a].clone()).collect())
            }
        };
        let states = || {
            self.grad_states
                .as_ref()
                .map(GradStates::def)
                .unwrap_or(TreeDef::Tuple(vec![]))
        };
        match (C::STATES, C::ARGS) {
            (true, true) => TreeDef::Tuple(vec![states(), args()]),
            (true, false) => states(),
            (false, _) => args(),
        }
    }

    /// The leaves of a call's vectors (the tangents of `jvp`, the vector of `hvp`): of the
    /// differentiated variables' structure, shapes and dtypes, each counted in its variable's
    /// unit (a leaf without a unit is taken to be).
    fn vector_leaves<V: Tree>(
        &self,
        compiled: &Compiled,
        vector: &V,
        what: &str,
    ) -> Result<Vec<Tensor>> {
        let name = self.spec_name();
        let expected = self.wrt_def(compiled);
        if vector.def() != expected {
            return Err(Error::Structure(format!(
                "{name}: the {what} must have the structure of the differentiated variables, {expected:?}, got {:?}",
                vector.def()
            )));
        }
        let mut leaves = Vec::new();
        vector.flatten(&mut leaves);
        leaves
            .into_iter()
            .zip(&compiled.wrt_avals)
            .zip(&compiled.wrt_units)
            .enumerate()
            .map(|(k, ((leaf, aval), unit))| {
                let plain = match (leaf.unit(), unit) {
                    (Some(_), Some(unit)) => leaf.value_in(*unit)?,
                    (Some(_), None) => leaf.value_in(Unit::ONE)?,
                    (None, _) => leaf,
                };
                let got = plain.aval()?;
                if got != *aval {
                    return Err(Error::Shape {
                        op: name.to_string(),
                        msg: format!("leaf {k} of the {what} is {got}, but its variable is {aval}"),
                    });
                }
                Ok(plain)
            })
            .collect()
    }

    fn spec_name(&self) -> &'static str {
        match M::EVALUATION {
            super::mode::Evaluation::Dense => self.kind.name(),
            super::mode::Evaluation::Hvp => "hvp",
            super::mode::Evaluation::Diagonal => "hessian diagonal",
            super::mode::Evaluation::Sparse => "sparse hessian",
            super::mode::Evaluation::Pattern => "hessian_sparsity",
            super::mode::Evaluation::Jvp => "jvp",
            super::mode::Evaluation::Vjp => "vjp",
        }
    }

    /// The output tangents of a `jvp` call, nested as the function's value.
    fn tangents(&self, compiled: &Compiled, outputs: &Outputs) -> Node {
        let mut o = 0;
        compiled.value_def.build(&mut || {
            let tangent = &outputs.blocks[compiled.blocks[&Output::Tangent { out: o }]];
            let unit = compiled.output_units[o].filter(|_| self.unit_aware);
            o += 1;
            Node::Leaf(tangent.with_unit(unit))
        })
    }

    /// The sparse Hessian of a call.
    fn sparse_hessian(&self, compiled: &Compiled, outputs: &Outputs) -> Result<SparseHessian> {
        let Executable::Compressed { compression, .. } = &compiled.exec else {
            return Err(Error::Trace(
                "internal: a sparse Hessian without a compression".into(),
            ));
        };
        let values = outputs
            .blocks
            .first()
            .cloned()
            .ok_or_else(|| Error::Trace("internal: a sparse Hessian without values".into()))?;
        let units = if self.unit_aware {
            let out = compiled.output_units[0].unwrap_or(Unit::ONE);
            let wrt = |p: usize| compiled.wrt_units[p].unwrap_or(Unit::ONE);
            let k = compiled.wrt_units.len();
            let units = (0..k * k)
                .map(|b| out.checked_div(&wrt(b / k).checked_mul(&wrt(b % k))?))
                .collect::<Result<Vec<Unit>>>()?;
            Some(units)
        } else {
            None
        };
        Ok(SparseHessian::new(
            compression.pattern.clone(),
            values,
            units,
        ))
    }
}

/// The four layouts' `call` for a mode, from how the mode makes its derivatives.
macro_rules! calls {
    (
        $(#[$doc:meta])*
        $mode:ty => $result:ty,
        call($($arg:ident: &$ty:ident),*),
        with $this:ident,
        vectors: |$compiled:ident| $vectors:expr,
        derivatives: |$compiled2:ident, $outputs:ident| $derivatives:expr $(,)?
    ) => {
        impl<F: Function<Sig>, Sig, C: Case> GradientTransform<F, Sig, C, Plain, $mode> {
            $(#[$doc])*
            pub fn call<$($ty: Tree),*>(&self, args: impl Args<Sig> $(, $arg: &$ty)*) -> Result<$result> {
                let $this = self;
                self.run(&args, |$compiled| $vectors, |$compiled2, $outputs| $derivatives)
            }
        }

        impl<F: Function<Sig>, Sig, C: Case> GradientTransform<F, Sig, C, Value, $mode> {
            /// `(derivatives, value)`: as the plain layout's `call`, with the function's value.
            pub fn call<$($ty: Tree),*>(
                &self,
                args: impl Args<Sig> $(, $arg: &$ty)*
            ) -> Result<($result, F::Output)> {
                let $this = self;
                self.run(&args, |$compiled| $vectors, |$compiled2, $outputs| {
                    let value = F::Output::unflatten(&$compiled2.value_def, &mut $outputs.value.drain(..))?;
                    Ok(($derivatives?, value))
                })
            }
        }

        impl<F, Sig, C: Case, O: Tree, A: Tree> GradientTransform<F, Sig, C, Aux, $mode>
        where
            F: Function<Sig, Output = (O, A)>,
        {
            /// `(derivatives, aux)`: as the plain layout's `call`, with the aux data.
            pub fn call<$($ty: Tree),*>(&self, args: impl Args<Sig> $(, $arg: &$ty)*) -> Result<($result, A)> {
                let $this = self;
                self.run(&args, |$compiled| $vectors, |$compiled2, $outputs| {
                    let aux = A::unflatten($compiled2.aux_def(), &mut $outputs.aux.drain(..))?;
                    Ok(($derivatives?, aux))
                })
            }
        }

        impl<F, Sig, C: Case, O: Tree, A: Tree> GradientTransform<F, Sig, C, ValueAux, $mode>
        where
            F: Function<Sig, Output = (O, A)>,
        {
            /// `(derivatives, value, aux)`: as the plain layout's `call`, with the value and
            /// the aux data.
            pub fn call<$($ty: Tree),*>(
                &self,
                args: impl Args<Sig> $(, $arg: &$ty)*
            ) -> Result<($result, O, A)> {
                let $this = self;
                self.run(&args, |$compiled| $vectors, |$compiled2, $outputs| {
                    let value = O::unflatten(&$compiled2.value_def, &mut $outputs.value.drain(..))?;
                    let aux = A::unflatten($compiled2.aux_def(), &mut $outputs.aux.drain(..))?;
                    Ok(($derivatives?, value, aux))
                })
            }
        }
    };
}

calls! {
    /// The derivatives: `arg_grads`, `var_grads` or `(var_grads, arg_grads)` by case.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * x * y).sum();
    /// let h = hessian(f).call((&Tensor::scalar(1.0), &Tensor::scalar(3.0))).unwrap();
    /// assert_eq!(h.tensor().unwrap().item().unwrap(), 6.0); // d2f / dx2 = 2y
    /// let (h, value) = hessian(f).return_value().call((&Tensor::scalar(1.0), &Tensor::scalar(3.0))).unwrap();
    /// assert_eq!(value.item().unwrap(), 3.0);
    /// ```
    Dense => C::Grads,
    call(),
    with this,
    vectors: |compiled| no_vectors(compiled),
    derivatives: |compiled, outputs| Ok::<_, Error>(this.grads(this.dense_arrangement(), compiled, outputs)),
}

calls! {
    /// The Hessian-vector product `H v` of the scalar function, for a `vector` of the
    /// differentiated variables' structure (leaves in their units, or plain numbers taken to
    /// be), nested like a gradient. One forward-over-reverse pass: a small constant times the
    /// cost of a gradient.
    ///
    /// ```
    /// use brainstate::{hvp, Tensor};
    /// let f = |x: &Tensor| (x.powi(2) * x.slice_along(0, ..1, 1)).sum(); // x0 * sum(x^2)
    /// let x = Tensor::from([1.0, 2.0]);
    /// let hv = hvp(f).call(&x, &Tensor::from([1.0, 0.0])).unwrap(); // the first column of H
    /// assert_eq!(hv.tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 4.0]);
    /// ```
    Hvp => C::Grads,
    call(vector: &V),
    with this,
    vectors: |compiled| this.vector_leaves(compiled, vector, "vector"),
    derivatives: |compiled, outputs| Ok::<_, Error>(this.grads(Arrangement::Products, compiled, outputs)),
}

calls! {
    /// The Hessian's diagonal, nested like a gradient, from a coloring of its sparsity
    /// pattern: as many Hessian-vector products as colors (one for a diagonal Hessian).
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let d = hessian(|x: &Tensor| x.powi(3).sum()).diagonal().call(&Tensor::from([1.0, 2.0]));
    /// assert_eq!(d.unwrap().tensor().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 12.0]);
    /// ```
    Diagonal => C::Grads,
    call(),
    with this,
    vectors: |compiled| no_vectors(compiled),
    derivatives: |compiled, outputs| Ok::<_, Error>(this.grads(Arrangement::Diagonal, compiled, outputs)),
}

calls! {
    /// The Hessian in compressed sparse rows over the flat differentiated variable, computed
    /// from a star coloring of its sparsity pattern: as many Hessian-vector products as
    /// colors, then each entry read from one of them.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let rosen = |x: &Tensor| {
    ///     let (head, tail) = (x.slice_along(0, ..-1, 1), x.slice_along(0, 1.., 1));
    ///     ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
    /// };
    /// let h = hessian(rosen).sparse().call(&Tensor::linspace(-1.0, 1.0, 1000)).unwrap();
    /// assert_eq!(h.nnz(), 2998); // tridiagonal
    /// ```
    Sparse => SparseHessian,
    call(),
    with this,
    vectors: |compiled| no_vectors(compiled),
    derivatives: |compiled, outputs| this.sparse_hessian(compiled, outputs),
}

calls! {
    /// The derivative of the outputs along `tangents` (of the differentiated variables'
    /// structure), nested as the function's value: forward mode, one pass.
    ///
    /// ```
    /// use brainstate::{jvp, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * y).sum();
    /// let (x, y) = (Tensor::from([1.0, 2.0]), Tensor::from([3.0, 4.0]));
    /// let t = jvp(f).argnums([0, 1]).call((&x, &y), &(Tensor::from([1.0, 0.0]), Tensor::zeros(&[2])));
    /// assert_eq!(t.unwrap().tensor().unwrap().item().unwrap(), 3.0); // d f / d x0 = y0
    /// ```
    Jvp => Node,
    call(tangents: &V),
    with this,
    vectors: |compiled| this.vector_leaves(compiled, tangents, "tangents"),
    derivatives: |compiled, outputs| Ok::<_, Error>(this.tangents(compiled, outputs)),
}

calls! {
    /// The pullback at `args`: call it with cotangents of the function's value, as often as
    /// needed, without running the function again.
    ///
    /// ```
    /// use brainstate::{vjp, Tensor};
    /// let (pullback, value) = vjp(|x: &Tensor| x.sin()).return_value().call(&Tensor::from([0.0, 1.0])).unwrap();
    /// let ct = pullback.call(&Tensor::from([1.0, 0.0])).unwrap();
    /// assert_eq!(ct.tensor().unwrap().to_vec::<f64>().unwrap(), vec![1.0, 0.0]); // cos(0)
    /// assert!((value.to_vec::<f64>().unwrap()[1] - 1f64.sin()).abs() < 1e-15);
    /// ```
    Vjp => Pullback<C>,
    call(),
    with this,
    vectors: |compiled| no_vectors(compiled),
    derivatives: |compiled, outputs| this.pullback(compiled, outputs),
}

impl<F: Function<Sig>, Sig, C: Case, L: Layout> GradientTransform<F, Sig, C, L, Pattern> {
    /// The sparsity pattern of the Hessian of the scalar function at arguments like `args`
    /// (it holds for every input of this signature: only shapes and dtypes are used). The
    /// function is traced, not run, and no state is written.
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| (x * x.sum()).sum()).call(&Tensor::zeros(&[3])).unwrap();
    /// assert_eq!(p.nnz(), 9); // dense
    /// ```
    pub fn call(&self, args: impl Args<Sig>) -> Result<SparsityPattern> {
        let (signature, _) = super::function::signature(&args.flatten_args())?;
        match &self.compiled(&signature, false)?.exec {
            Executable::Pattern(pattern) => Ok(SparsityPattern::clone(pattern)),
            _ => Err(Error::Trace(
                "internal: a sparsity pattern without a pattern".into(),
            )),
        }
    }
}

impl<F: Function<Sig>, Sig, C: Case, L: Layout> GradientTransform<F, Sig, C, L, Vjp> {
    fn pullback(&self, compiled: &Arc<Compiled>, outputs: &mut Outputs) -> Result<Pullback<C>> {
        Ok(Pullback {
            residuals: std::mem::take(&mut outputs.residuals),
            argnums: self.argnums.clone(),
            grad_states: self.grad_states.clone(),
            unit_aware: self.unit_aware,
            debug_nan: self.debug_nan || compiled.debug_nan,
            compiled: compiled.clone(),
            _case: std::marker::PhantomData,
        })
    }
}

/// The pullback of a [`vjp`](crate::vjp) call: maps cotangents of the function's value to
/// the cotangents of the differentiated variables, on the residuals of the call (the
/// function is not run again).
///
/// ```
/// use brainstate::{vjp, Tensor};
/// let pullback = vjp(|x: &Tensor| x * x).call(&Tensor::from([1.0, 2.0])).unwrap();
/// let first = pullback.call(&Tensor::from([1.0, 0.0])).unwrap();
/// let second = pullback.call(&Tensor::from([0.0, 1.0])).unwrap(); // reused
/// assert_eq!(first.tensor().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 0.0]);
/// assert_eq!(second.tensor().unwrap().to_vec::<f64>().unwrap(), vec![0.0, 4.0]);
/// ```
pub struct Pullback<C: Case> {
    residuals: Vec<Arc<Data>>,
    argnums: Argnums,
    grad_states: Option<GradStates>,
    unit_aware: bool,
    debug_nan: bool,
    compiled: Arc<Compiled>,
    _case: std::marker::PhantomData<fn() -> C>,
}

impl<C: Case> Pullback<C> {
    /// The cotangents of the differentiated variables for `cotangent` (of the structure,
    /// shapes and dtypes of the function's value), in the transform's case structure.
    ///
    /// ```
    /// use brainstate::{vjp, Tensor};
    /// let pullback = vjp(|x: &Tensor| x.exp()).call(&Tensor::from([0.0])).unwrap();
    /// assert_eq!(pullback.call(&Tensor::from([2.0])).unwrap().tensor().unwrap().item().unwrap(), 2.0);
    /// assert!(pullback.call(&Tensor::from([1.0, 2.0])).is_err()); // another shape
    /// ```
    pub fn call<T: Tree>(&self, cotangent: &T) -> Result<C::Grads> {
        let compiled = &self.compiled;
        let Executable::Vjp { pullback, .. } = &compiled.exec else {
            return Err(Error::Trace("internal: a vjp without a pullback".into()));
        };
        if cotangent.def() != compiled.value_def {
            return Err(Error::Structure(format!(
                "vjp: the cotangent must have the structure of the function's value, {:?}, got {:?}",
                compiled.value_def,
                cotangent.def()
            )));
        }
        let mut leaves = Vec::new();
        cotangent.flatten(&mut leaves);
        let mut ct_unit = Unit::ONE;
        let mut inputs: Vec<Tensor> = self
            .residuals
            .iter()
            .cloned()
            .map(Tensor::from_shared)
            .collect();
        for (k, (leaf, aval)) in leaves.iter().zip(&compiled.value_avals).enumerate() {
            if k == 0 {
                ct_unit = leaf.unit().unwrap_or(Unit::ONE);
            }
            let plain = leaf.mantissa();
            let got = plain.aval()?;
            if got != *aval {
                return Err(Error::Shape {
                    op: "vjp".into(),
                    msg: format!("leaf {k} of the cotangent is {got}, but the value's is {aval}"),
                });
            }
            inputs.push(plain);
        }
        let blocks: Vec<Tensor> = if inputs.iter().any(Tensor::is_traced) {
            if self.debug_nan {
                crate::trace::request_debug_nan();
            }
            let zeros = inputs
                .iter()
                .map(|t| Ok(Tangent::zero(&[], &t.aval()?)))
                .collect::<Result<Vec<_>>>()?;
            jvp_program(&pullback.program, &inputs, &zeros, &[])?.0
        } else {
            let data = inputs
                .iter()
                .map(|t| t.data().cloned())
                .collect::<Result<Vec<_>>>()?;
            pullback
                .run(&data, self.debug_nan)?
                .into_iter()
                .map(Tensor::from_shared)
                .collect()
        };
        let arranged = Blocks {
            arrangement: Arrangement::Cotangents(ct_unit),
            compiled,
            argnums: &self.argnums,
            grad_states: self.grad_states.as_ref(),
            unit_aware: self.unit_aware,
            blocks: &blocks,
        };
        let var_grads = C::STATES.then(|| arranged.part(Part::States, Part::States));
        let arg_grads = C::ARGS.then(|| arranged.part(Part::Args, Part::Args));
        Ok(C::grads(var_grads, arg_grads))
    }
}

impl<F: Function<Sig>, Sig, C: Case, L: Layout> GradientTransform<F, Sig, C, L, Dense> {
    /// Computes the Hessian in compressed sparse rows ([`SparseHessian`]) instead of dense
    /// blocks: the sparsity pattern is detected from the program and colored once per
    /// signature, then each call takes as many Hessian-vector products as colors. Where those
    /// products only scale, add and shift the vector (chains, grids, banded couplings), the
    /// plan computes the stencil's coefficients instead, which are the Hessian's entries (the
    /// printed program says which). The function must return a scalar; a pattern too dense to
    /// pay off is computed the same way (with as many products as it needs).
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.powi(3).sum()).sparse().call(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!(h.pattern().row(1), &[1]);
    /// assert_eq!(h.to_dense().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 0.0, 0.0, 12.0]);
    /// ```
    pub fn sparse(self) -> GradientTransform<F, Sig, C, L, Sparse> {
        let split = self.split;
        self.into_typestate(split)
    }

    /// Computes only the Hessian's diagonal, nested like a gradient (see [`Diagonal`]).
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let d = hessian(|x: &Tensor| x.sin().sum()).diagonal().call(&Tensor::from([0.0])).unwrap();
    /// assert_eq!(d.tensor().unwrap().to_vec::<f64>().unwrap(), vec![0.0]); // -sin(0)
    /// ```
    pub fn diagonal(self) -> GradientTransform<F, Sig, C, L, Diagonal> {
        let split = self.split;
        self.into_typestate(split)
    }
}
