//! Flat vectors and back (JAX's `ravel_pytree`): a tree of tensors as one vector, the
//! derivatives of a call as one vector or matrix, and steps applied to states in that order.
//!
//! The order is always the order of the leaves: depth first through tuples, lists, struct
//! fields and maps (in key order), each leaf row-major. It is the order of
//! [`Node::flat_matrix`] too, so a Newton step solved from a flat Hessian and a flat gradient
//! applies to the states or arguments it was taken over. Flat vectors hold the numbers as
//! counted in each leaf's unit (a leaf's unit comes back when unravelled).
//!
//! ```
//! use brainstate::{grad, hessian, ravel, ParamState, GradStates, Tensor};
//! let w = ParamState::new(Tensor::from([1.0, 2.0]));
//! let b = ParamState::new(Tensor::scalar(0.5));
//! let params = GradStates::from([&w, &b]);
//! let loss = || ((w.value() * 3.0).sum() + b.value() - 1.0).powi(2);
//! let g = grad(loss).grad_states(params.clone()).call(()).unwrap().flat_vector().unwrap();
//! assert_eq!(g.shape().unwrap(), [3]);
//! let saved = params.snapshot();
//! params.add_flat(&g, -0.01).unwrap(); // one gradient step on both states
//! saved.restore().unwrap(); // rejected: back to where it was
//! assert_eq!(w.value().to_vec::<f64>().unwrap(), vec![1.0, 2.0]);
//!
//! let (flat, unravel) = ravel(&(Tensor::from([1.0, 2.0]), Tensor::scalar(3.0))).unwrap();
//! let (a, c) = unravel.call(&(flat * 10.0)).unwrap();
//! assert_eq!((a.to_vec::<f64>().unwrap(), c.item().unwrap()), (vec![10.0, 20.0], 30.0));
//! ```

use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::state::{self, GradStates};
use crate::storage::DType;
use crate::tensor::{Tensor, concatenate};
use crate::trace::TracedState;
use crate::tree::{Node, Tree, TreeDef};
use crate::unit::Unit;

/// A tree's leaves as one vector, and the [`Unravel`] that rebuilds the tree from such a
/// vector (JAX's `ravel_pytree`). The vector has the leaves' promoted dtype (`f64` for no
/// leaves) and holds each leaf's numbers as counted in its unit.
///
/// ```
/// use brainstate::{ravel, Tensor};
/// let tree = vec![Tensor::from([[1.0, 2.0], [3.0, 4.0]]), Tensor::scalar(5.0)];
/// let (flat, unravel) = ravel(&tree).unwrap();
/// assert_eq!(flat.to_vec::<f64>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
/// let back: Vec<Tensor> = unravel.call(&flat).unwrap();
/// assert_eq!(back[0].shape().unwrap(), [2, 2]);
/// ```
pub fn ravel<T: Tree>(tree: &T) -> Result<(Tensor, Unravel<T>)> {
    let mut leaves = Vec::new();
    tree.flatten(&mut leaves);
    let leaf_types = leaves
        .iter()
        .map(|t| Ok((t.shape()?.to_vec(), t.dtype()?, t.unit())))
        .collect::<Result<Vec<_>>>()?;
    let flat = flatten_leaves("ravel", &leaves)?;
    let unravel = Unravel {
        def: tree.def(),
        len: flat.numel()?,
        leaves: leaf_types,
        _tree: PhantomData,
    };
    Ok((flat, unravel))
}

/// Rebuilds a tree from a flat vector: the inverse of [`ravel`] for trees of one structure,
/// shapes, dtypes and units.
///
/// ```
/// use brainstate::units::mV;
/// use brainstate::{ravel, Tensor};
/// let (flat, unravel) = ravel(&(Tensor::from([-65.0, -60.0]) * mV)).unwrap();
/// assert_eq!(unravel.len(), 2);
/// let v: Tensor = unravel.call(&(flat + 1.0)).unwrap();
/// assert_eq!((v.unit(), v.mantissa().to_vec::<f64>().unwrap()), (Some(mV), vec![-64.0, -59.0]));
/// let err = unravel.call(&Tensor::zeros(&[3])).unwrap_err();
/// assert_eq!(err.to_string(), "unravel: expected a vector of 2 values (shape [2]), got shape [3]");
/// ```
pub struct Unravel<T> {
    def: TreeDef,
    len: usize,
    /// Shape, dtype and unit of each leaf.
    leaves: Vec<(Vec<usize>, DType, Option<Unit>)>,
    _tree: PhantomData<fn() -> T>,
}

impl<T> Clone for Unravel<T> {
    fn clone(&self) -> Self {
        Unravel {
            def: self.def.clone(),
            len: self.len,
            leaves: self.leaves.clone(),
            _tree: PhantomData,
        }
    }
}

impl<T: Tree> Unravel<T> {
    /// The tree with the values of `flat`, a vector of [`Unravel::len`] values. Works on
    /// traced vectors too, inside a transform.
    ///
    /// ```
    /// use brainstate::{grad, ravel, Tensor};
    /// let params = (Tensor::from([1.0, 2.0]), Tensor::scalar(0.5));
    /// let (p, unravel) = ravel(&params).unwrap();
    /// // A loss over the flat vector: its gradient is flat too.
    /// let loss = |v: &Tensor| {
    ///     let (w, b) = unravel.call(v).unwrap();
    ///     (w.sum() * &b).powi(2)
    /// };
    /// let g = grad(loss).call(&p).unwrap();
    /// assert_eq!(g.tensor().unwrap().to_vec::<f64>().unwrap(), vec![1.5, 1.5, 9.0]);
    /// ```
    pub fn call(&self, flat: &Tensor) -> Result<T> {
        let shape = flat.shape()?;
        if shape != [self.len] {
            return Err(Error::shape(
                "unravel",
                format!(
                    "expected a vector of {} values (shape [{}]), got shape {shape:?}",
                    self.len, self.len
                ),
            ));
        }
        let flat = flat.mantissa();
        let mut start = 0;
        let mut leaves = Vec::with_capacity(self.leaves.len());
        for (shape, dtype, unit) in &self.leaves {
            let n: usize = shape.iter().product();
            let piece = flat.slice_along(0, start as isize..(start + n) as isize, 1);
            leaves.push(piece.reshape_exact(shape).cast(*dtype).with_unit(*unit));
            start += n;
        }
        if let Some(e) = leaves.iter().find_map(Tensor::error) {
            return Err(e.clone());
        }
        T::unflatten(&self.def, &mut leaves.into_iter())
    }

    /// The number of values in the flat vector.
    ///
    /// ```
    /// use brainstate::{ravel, Tensor};
    /// let (_, unravel) = ravel(&(Tensor::zeros(&[2, 3]), Tensor::scalar(1.0))).unwrap();
    /// assert_eq!(unravel.len(), 7);
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the flat vector is empty (the tree has no values).
    ///
    /// ```
    /// use brainstate::{ravel, Tensor};
    /// let (_, unravel) = ravel(&Vec::<Tensor>::new()).unwrap();
    /// assert!(unravel.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The leaves' values (as counted in their units) in one vector of their promoted dtype.
fn flatten_leaves(op: &str, leaves: &[Tensor]) -> Result<Tensor> {
    let mut dtype: Option<DType> = None;
    for t in leaves {
        let d = t.dtype()?;
        dtype = Some(dtype.map_or(d, |acc| acc.promote(d)));
    }
    let Some(dtype) = dtype else {
        return Ok(Tensor::zeros(&[0]));
    };
    let pieces = leaves
        .iter()
        .map(|t| Ok(t.mantissa().cast(dtype).reshape_exact(&[t.numel()?])))
        .collect::<Result<Vec<_>>>()?;
    let flat = concatenate(&pieces, 0);
    match flat.error() {
        Some(e) => Err(Error::Structure(format!("{op}: {e}"))),
        None => Ok(flat),
    }
}

impl Node {
    /// All leaves as one vector, in leaf order (the order of [`Node::flat_matrix`]): a
    /// gradient as one vector over all differentiated inputs. Values are as counted in each
    /// leaf's unit.
    ///
    /// ```
    /// use brainstate::{grad, Tensor};
    /// let f = |w: &Tensor, b: &Tensor| (w * 2.0).sum() + b * b;
    /// let g = grad(f).argnums([0, 1]).call((&Tensor::from([1.0, 2.0]), &Tensor::scalar(3.0)));
    /// let g = g.unwrap().flat_vector().unwrap();
    /// assert_eq!(g.to_vec::<f64>().unwrap(), vec![2.0, 2.0, 6.0]);
    /// ```
    pub fn flat_vector(&self) -> Result<Tensor> {
        flatten_leaves("flat_vector", &self.leaves())
    }

    /// A Jacobian as one `m x P` matrix: a row per element of the function's `output` (all
    /// its leaves, in order, row-major) and a column per differentiated input value, in the
    /// order of [`Node::flat_vector`]. `output` is the function's value (or anything with the
    /// same structure and shapes), which says where the output tree ends in the result.
    ///
    /// ```
    /// use brainstate::{jacrev, Tensor};
    /// let f = |w: &Tensor, b: &Tensor| w * b; // 2 outputs, 2 + 1 inputs
    /// let (w, b) = (Tensor::from([1.0, 2.0]), Tensor::scalar(3.0));
    /// let (j, value) = jacrev(f).argnums([0, 1]).return_value().call((&w, &b)).unwrap();
    /// let m = j.flat_jacobian(&value).unwrap();
    /// assert_eq!(m.shape().unwrap(), [2, 3]);
    /// assert_eq!(m.to_vec::<f64>().unwrap(), vec![3.0, 0.0, 1.0, 0.0, 3.0, 2.0]);
    /// ```
    pub fn flat_jacobian<O: Tree>(&self, output: &O) -> Result<Tensor> {
        let (mut per_output, mut outputs) = (Vec::new(), Vec::new());
        split_outputs(self, &output.def(), &mut per_output)?;
        output.flatten(&mut outputs);
        let mut rows = Vec::new();
        for (node, out) in per_output.iter().zip(&outputs) {
            let m = out.numel()?;
            let blocks = node
                .leaves()
                .iter()
                .map(|block| {
                    let n = block.numel()?;
                    if m == 0 || n % m != 0 {
                        return Err(Error::Structure(format!(
                            "flat_jacobian: a block of shape {:?} does not start with an \
                             output of shape {:?}",
                            block.shape()?,
                            out.shape()?
                        )));
                    }
                    Ok(block.mantissa().reshape_exact(&[m, n / m]))
                })
                .collect::<Result<Vec<_>>>()?;
            rows.push(concatenate(&blocks, 1));
        }
        let matrix = concatenate(&rows, 0);
        match matrix.error() {
            Some(e) => Err(Error::Structure(format!(
                "flat_jacobian: the blocks do not form a Jacobian ({e})"
            ))),
            None => Ok(matrix),
        }
    }
}

/// The subtrees of a result for each output leaf, following the output's structure `def`.
fn split_outputs<'a>(node: &'a Node, def: &TreeDef, out: &mut Vec<&'a Node>) -> Result<()> {
    let mismatch = || {
        Error::Structure(
            "flat_jacobian: the result does not nest the output's structure (pass the \
             function's value)"
                .to_string(),
        )
    };
    match (def, node) {
        (TreeDef::Leaf, _) => out.push(node),
        (TreeDef::Tuple(c), Node::Tuple(n)) | (TreeDef::List(c), Node::List(n))
            if c.len() == n.len() =>
        {
            for (d, child) in c.iter().zip(n) {
                split_outputs(child, d, out)?;
            }
        }
        (TreeDef::Map(c), Node::Map(n)) if c.len() == n.len() => {
            for ((k, d), (key, child)) in c.iter().zip(n) {
                if k != key {
                    return Err(mismatch());
                }
                split_outputs(child, d, out)?;
            }
        }
        (TreeDef::Struct { fields, .. }, Node::Struct { fields: n, .. })
            if fields.len() == n.len() =>
        {
            for ((_, d), (_, child)) in fields.iter().zip(n) {
                split_outputs(child, d, out)?;
            }
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}

/// The saved values of a set of states, to put back with [`Snapshot::restore`] (a rejected
/// step of an optimiser, say).
///
/// ```
/// use brainstate::{GradStates, State, Tensor};
/// let v = State::new(Tensor::from([1.0, 2.0]));
/// let saved = GradStates::from(&v).snapshot();
/// v.set_value(Tensor::from([5.0, 5.0])).unwrap();
/// saved.restore().unwrap();
/// assert_eq!(v.value().to_vec::<f64>().unwrap(), vec![1.0, 2.0]);
/// ```
#[derive(Clone)]
pub struct Snapshot {
    values: Vec<(Arc<dyn TracedState>, Vec<Tensor>)>,
}

impl Snapshot {
    /// Puts the saved values back (as one write: all states or, on an error, none).
    ///
    /// ```
    /// use brainstate::{GradStates, ParamState, Tensor};
    /// let w = ParamState::new(Tensor::scalar(1.0));
    /// let params = GradStates::from(&w);
    /// let saved = params.snapshot();
    /// params.add_flat(&Tensor::from([0.5]), 1.0).unwrap();
    /// assert_eq!(w.value().item().unwrap(), 1.5);
    /// saved.restore().unwrap();
    /// assert_eq!(w.value().item().unwrap(), 1.0);
    /// ```
    pub fn restore(&self) -> Result<()> {
        write(self.values.clone())
    }
}

/// Checks every write, then commits them all (so a failure changes no state).
fn write(writes: Vec<(Arc<dyn TracedState>, Vec<Tensor>)>) -> Result<()> {
    for (state, leaves) in &writes {
        if let Some(e) = leaves.iter().find_map(Tensor::error) {
            return Err(crate::trace::record_error(e.clone()));
        }
        crate::trace::check_writable(leaves, &**state)?;
        state.check(leaves).map_err(crate::trace::record_error)?;
    }
    state::commit(writes);
    Ok(())
}

impl GradStates {
    /// The number of values the states hold, over all their leaves: the length of their flat
    /// vector, and the size of a Hessian's [`Node::flat_matrix`] over them.
    ///
    /// ```
    /// use brainstate::{GradStates, State, Tensor};
    /// let (a, b) = (State::new(Tensor::zeros(&[2, 3])), State::new(Tensor::scalar(1.0)));
    /// assert_eq!(GradStates::from([&a, &b]).flat_len().unwrap(), 7);
    /// ```
    pub fn flat_len(&self) -> Result<usize> {
        self.states()
            .iter()
            .flat_map(|s| s.leaves())
            .map(|t| t.numel())
            .sum()
    }

    /// The states' current values as one vector, in the order of their derivatives'
    /// [`Node::flat_vector`] and [`Node::flat_matrix`]. Inside a transform they are read as
    /// [`State::value`](crate::State::value) reads them, so a penalty on all parameters can be
    /// written with it.
    ///
    /// ```
    /// use brainstate::{grad, GradStates, State, Tensor};
    /// let (a, b) = (State::new(Tensor::from([1.0, 2.0])), State::new(Tensor::scalar(3.0)));
    /// let both = GradStates::from([&a, &b]);
    /// assert_eq!(both.flat_values().unwrap().to_vec::<f64>().unwrap(), vec![1.0, 2.0, 3.0]);
    /// let penalty = || both.flat_values().unwrap().powi(2).sum();
    /// let g = grad(penalty).grad_states(both.clone()).call(()).unwrap();
    /// assert_eq!(g.flat_vector().unwrap().to_vec::<f64>().unwrap(), vec![2.0, 4.0, 6.0]);
    /// ```
    pub fn flat_values(&self) -> Result<Tensor> {
        // Inside a transform, reading registers the states as [`crate::State::value`] does.
        let leaves: Vec<Tensor> = self
            .states()
            .iter()
            .flat_map(|s| crate::trace::read_state(s).unwrap_or_else(|| s.leaves()))
            .collect();
        flatten_leaves("flat_values", &leaves)
    }

    /// Sets the states from one vector of [`GradStates::flat_len`] values (each leaf keeps
    /// its shape, dtype and unit).
    ///
    /// ```
    /// use brainstate::{GradStates, State, Tensor};
    /// let (a, b) = (State::new(Tensor::from([1.0, 2.0])), State::new(Tensor::scalar(3.0)));
    /// GradStates::from([&a, &b]).set_flat(&Tensor::from([7.0, 8.0, 9.0])).unwrap();
    /// assert_eq!(b.value().item().unwrap(), 9.0);
    /// ```
    pub fn set_flat(&self, values: &Tensor) -> Result<()> {
        self.update_flat("set_flat", values, &|_, new| new.clone())
    }

    /// Adds `scale * step` to the states, `step` being one vector over all their values in
    /// flat order: a Newton or gradient step solved from a flat Hessian and gradient. All
    /// states change, or (on an error naming the sizes) none.
    ///
    /// ```
    /// use brainstate::{GradStates, State, Tensor};
    /// let (a, b) = (State::new(Tensor::from([1.0, 2.0])), State::new(Tensor::scalar(3.0)));
    /// let both = GradStates::from([&a, &b]);
    /// both.add_flat(&Tensor::from([1.0, 1.0, 2.0]), -0.5).unwrap();
    /// assert_eq!(a.value().to_vec::<f64>().unwrap(), vec![0.5, 1.5]);
    /// let err = both.add_flat(&Tensor::from([1.0, 1.0]), 1.0).unwrap_err();
    /// assert_eq!(err.to_string(), "add_flat: the step has shape [2] but the states hold 3 values");
    /// ```
    pub fn add_flat(&self, step: &Tensor, scale: f64) -> Result<()> {
        self.update_flat("add_flat", step, &|old, part| old + part * scale)
    }

    /// Saves the states' current values, to put back with [`Snapshot::restore`].
    ///
    /// ```
    /// use brainstate::{GradStates, State, Tensor};
    /// let s = State::new(Tensor::scalar(1.0));
    /// let saved = GradStates::from(&s).snapshot();
    /// s.set_value(Tensor::scalar(2.0)).unwrap();
    /// saved.restore().unwrap();
    /// assert_eq!(s.value().item().unwrap(), 1.0);
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            values: self
                .states()
                .into_iter()
                .map(|s| {
                    let leaves = s.leaves();
                    (s, leaves)
                })
                .collect(),
        }
    }

    /// Writes `combine(old, part)` to every leaf, `part` being the leaf's piece of `flat`
    /// reshaped to it, and `old` its value as counted in its unit.
    fn update_flat(
        &self,
        op: &str,
        flat: &Tensor,
        combine: &dyn Fn(&Tensor, &Tensor) -> Tensor,
    ) -> Result<()> {
        let len = self.flat_len()?;
        let shape = flat.shape()?;
        if shape != [len] {
            return Err(Error::shape(
                op,
                format!("the step has shape {shape:?} but the states hold {len} values"),
            ));
        }
        let flat = flat.mantissa();
        let mut start = 0;
        let mut writes = Vec::new();
        for state in self.states() {
            let mut leaves = Vec::new();
            for old in state.leaves() {
                let n = old.numel()?;
                let part = flat
                    .slice_along(0, start as isize..(start + n) as isize, 1)
                    .reshape_exact(old.shape()?)
                    .cast(old.dtype()?);
                start += n;
                leaves.push(combine(&old.mantissa(), &part).with_unit(old.unit()));
            }
            writes.push((state, leaves));
        }
        write(writes)
    }
}
