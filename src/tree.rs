//! Trees (JAX's pytrees): nested values with tensors at the leaves.
//!
//! Arguments and outputs of transformed functions are trees: a [`Tensor`] is a leaf; tuples,
//! `Vec`s, arrays and string-keyed maps are nodes; a user struct becomes a node through
//! `#[derive(Tree)]`. A tree flattens to its leaves plus a [`TreeDef`] describing its structure,
//! and is rebuilt from the two. Results whose structure is only known at run time (a Hessian
//! nests output tree / input tree / input tree) are returned as a [`Node`].
//!
//! ```
//! use brainstate::{jacrev, Tensor};
//! use std::collections::BTreeMap;
//! let f = |p: &BTreeMap<String, Tensor>| &p["a"] * &p["b"];
//! let p = BTreeMap::from([("a".into(), Tensor::scalar(2.0)), ("b".into(), Tensor::scalar(3.0))]);
//! let j = jacrev(f).call(&p).unwrap(); // one block per input leaf, under its key
//! assert_eq!(j["a"].tensor().unwrap().item().unwrap(), 3.0);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The structure of a tree, without its leaves.
///
/// ```
/// use brainstate::{Tensor, Tree, TreeDef};
/// let x = (Tensor::scalar(1.0), vec![Tensor::scalar(2.0)]);
/// let list = TreeDef::List(vec![TreeDef::Leaf]);
/// assert_eq!(x.def(), TreeDef::Tuple(vec![TreeDef::Leaf, list]));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TreeDef {
    /// A tensor.
    Leaf,
    /// A tuple (also fixed-size arrays).
    Tuple(Vec<TreeDef>),
    /// A sequence.
    List(Vec<TreeDef>),
    /// A string-keyed map, in key order.
    Map(Vec<(String, TreeDef)>),
    /// A struct with named fields, in declaration order.
    Struct {
        /// The struct's name.
        name: &'static str,
        /// Field names and structures.
        fields: Vec<(&'static str, TreeDef)>,
    },
}

impl TreeDef {
    /// The number of leaves.
    ///
    /// ```
    /// use brainstate::{Tensor, Tree};
    /// let x = (Tensor::scalar(1.0), vec![Tensor::scalar(2.0), Tensor::scalar(3.0)]);
    /// assert_eq!(x.def().num_leaves(), 3);
    /// ```
    pub fn num_leaves(&self) -> usize {
        match self {
            TreeDef::Leaf => 1,
            TreeDef::Tuple(c) | TreeDef::List(c) => c.iter().map(TreeDef::num_leaves).sum(),
            TreeDef::Map(c) => c.iter().map(|(_, d)| d.num_leaves()).sum(),
            TreeDef::Struct { fields, .. } => fields.iter().map(|(_, d)| d.num_leaves()).sum(),
        }
    }

    /// A [`Node`] of this structure whose leaves, in order, are produced by `leaf`.
    ///
    /// ```
    /// use brainstate::{Node, Tensor, TreeDef};
    /// let def = TreeDef::Tuple(vec![TreeDef::Leaf, TreeDef::Leaf]);
    /// let mut n = 0.0;
    /// let node = def.build(&mut || { n += 1.0; Node::Leaf(Tensor::scalar(n)) });
    /// assert_eq!(node[1].tensor().unwrap().item().unwrap(), 2.0);
    /// ```
    pub fn build(&self, leaf: &mut dyn FnMut() -> Node) -> Node {
        match self {
            TreeDef::Leaf => leaf(),
            TreeDef::Tuple(c) => Node::Tuple(c.iter().map(|d| d.build(leaf)).collect()),
            TreeDef::List(c) => Node::List(c.iter().map(|d| d.build(leaf)).collect()),
            TreeDef::Map(c) => {
                Node::Map(c.iter().map(|(k, d)| (k.clone(), d.build(leaf))).collect())
            }
            TreeDef::Struct { name, fields } => Node::Struct {
                name,
                fields: fields.iter().map(|(k, d)| (*k, d.build(leaf))).collect(),
            },
        }
    }

    /// A short description for error messages.
    fn kind(&self) -> String {
        match self {
            TreeDef::Leaf => "a tensor".into(),
            TreeDef::Tuple(c) => format!("a tuple of {}", c.len()),
            TreeDef::List(c) => format!("a list of {}", c.len()),
            TreeDef::Map(c) => format!("a map of {}", c.len()),
            TreeDef::Struct { name, .. } => format!("struct {name}"),
        }
    }

    /// The error for a structure that is not the one expected.
    ///
    /// ```
    /// use brainstate::TreeDef;
    /// let e = TreeDef::Leaf.mismatch("a list");
    /// assert_eq!(e.to_string(), "structure mismatch: expected a list, found a tensor");
    /// ```
    pub fn mismatch(&self, expected: &str) -> Error {
        Error::Structure(format!("expected {expected}, found {}", self.kind()))
    }
}

/// A value that flattens to tensor leaves and can be rebuilt from them.
///
/// Implemented for [`Tensor`], tuples (up to 8), `Vec`, arrays, `BTreeMap<String, _>`,
/// `HashMap<String, _>` (keys sorted, as JAX sorts dict keys) and [`Node`]; derive it for
/// structs with `#[derive(Tree)]`:
///
/// ```
/// use brainstate::{Tensor, Tree};
/// #[derive(Tree)]
/// struct Layer { w: Tensor, b: Tensor }
/// let layer = Layer { w: Tensor::from([1.0, 2.0]), b: Tensor::scalar(0.5) };
/// let mut leaves = Vec::new();
/// layer.flatten(&mut leaves);
/// assert_eq!(leaves.len(), 2);
/// ```
pub trait Tree: Sized {
    /// Appends the leaves, in order.
    ///
    /// ```
    /// use brainstate::{Tensor, Tree};
    /// let mut leaves = Vec::new();
    /// (Tensor::scalar(1.0), [Tensor::scalar(2.0), Tensor::scalar(3.0)]).flatten(&mut leaves);
    /// assert_eq!(leaves[2].item().unwrap(), 3.0);
    /// ```
    fn flatten(&self, leaves: &mut Vec<Tensor>);
    /// The structure.
    ///
    /// ```
    /// use brainstate::{Tensor, Tree, TreeDef};
    /// assert_eq!(vec![Tensor::scalar(1.0)].def(), TreeDef::List(vec![TreeDef::Leaf]));
    /// ```
    fn def(&self) -> TreeDef;
    /// Rebuilds a value from its structure and leaves taken in order.
    ///
    /// ```
    /// use brainstate::{Tensor, Tree};
    /// let def = (Tensor::scalar(0.0), Tensor::scalar(0.0)).def();
    /// let mut leaves = vec![Tensor::scalar(1.0), Tensor::scalar(2.0)].into_iter();
    /// let (_, b) = <(Tensor, Tensor)>::unflatten(&def, &mut leaves).unwrap();
    /// assert_eq!(b.item().unwrap(), 2.0);
    /// assert!(Vec::<Tensor>::unflatten(&def, &mut std::iter::empty()).is_err()); // not a list
    /// ```
    fn unflatten(def: &TreeDef, leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self>;
}

fn next_leaf(leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Tensor> {
    leaves
        .next()
        .ok_or_else(|| Error::Structure("fewer leaves than the structure needs".into()))
}

impl Tree for Tensor {
    fn flatten(&self, leaves: &mut Vec<Tensor>) {
        leaves.push(self.clone());
    }
    fn def(&self) -> TreeDef {
        TreeDef::Leaf
    }
    fn unflatten(def: &TreeDef, leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        match def {
            TreeDef::Leaf => next_leaf(leaves),
            other => Err(other.mismatch("a tensor")),
        }
    }
}

/// The empty tree: no leaves (a loop without per-step inputs or outputs).
impl Tree for () {
    fn flatten(&self, _leaves: &mut Vec<Tensor>) {}
    fn def(&self) -> TreeDef {
        TreeDef::Tuple(Vec::new())
    }
    fn unflatten(def: &TreeDef, _leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        match def {
            TreeDef::Tuple(c) if c.is_empty() => Ok(()),
            other => Err(other.mismatch("an empty tuple")),
        }
    }
}

macro_rules! tuple_tree {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Tree),+> Tree for ($($name,)+) {
            fn flatten(&self, leaves: &mut Vec<Tensor>) {
                $(self.$idx.flatten(leaves);)+
            }
            fn def(&self) -> TreeDef {
                TreeDef::Tuple(vec![$(self.$idx.def()),+])
            }
            fn unflatten(def: &TreeDef, leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
                const N: usize = [$($idx),+].len();
                match def {
                    TreeDef::Tuple(c) if c.len() == N => Ok(($($name::unflatten(&c[$idx], leaves)?,)+)),
                    other => Err(other.mismatch(&format!("a tuple of {N}"))),
                }
            }
        }
    };
}
tuple_tree!(A 0);
tuple_tree!(A 0, B 1);
tuple_tree!(A 0, B 1, C 2);
tuple_tree!(A 0, B 1, C 2, D 3);
tuple_tree!(A 0, B 1, C 2, D 3, E 4);
tuple_tree!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_tree!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_tree!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

impl<T: Tree> Tree for Vec<T> {
    fn flatten(&self, leaves: &mut Vec<Tensor>) {
        self.iter().for_each(|x| x.flatten(leaves));
    }
    fn def(&self) -> TreeDef {
        TreeDef::List(self.iter().map(Tree::def).collect())
    }
    fn unflatten(def: &TreeDef, leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        match def {
            TreeDef::List(c) => c.iter().map(|d| T::unflatten(d, leaves)).collect(),
            other => Err(other.mismatch("a list")),
        }
    }
}

impl<T: Tree, const N: usize> Tree for [T; N] {
    fn flatten(&self, leaves: &mut Vec<Tensor>) {
        self.iter().for_each(|x| x.flatten(leaves));
    }
    fn def(&self) -> TreeDef {
        TreeDef::Tuple(self.iter().map(Tree::def).collect())
    }
    fn unflatten(def: &TreeDef, leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        match def {
            TreeDef::Tuple(c) if c.len() == N => {
                let items = c
                    .iter()
                    .map(|d| T::unflatten(d, leaves))
                    .collect::<Result<Vec<T>>>()?;
                items.try_into().map_err(|_| def.mismatch("an array"))
            }
            other => Err(other.mismatch(&format!("an array of {N}"))),
        }
    }
}

impl<T: Tree> Tree for BTreeMap<String, T> {
    fn flatten(&self, leaves: &mut Vec<Tensor>) {
        self.values().for_each(|x| x.flatten(leaves));
    }
    fn def(&self) -> TreeDef {
        TreeDef::Map(self.iter().map(|(k, v)| (k.clone(), v.def())).collect())
    }
    fn unflatten(def: &TreeDef, leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        match def {
            TreeDef::Map(c) => c
                .iter()
                .map(|(k, d)| Ok((k.clone(), T::unflatten(d, leaves)?)))
                .collect(),
            other => Err(other.mismatch("a map")),
        }
    }
}

impl<T: Tree> Tree for HashMap<String, T> {
    fn flatten(&self, leaves: &mut Vec<Tensor>) {
        let mut keys: Vec<&String> = self.keys().collect();
        keys.sort();
        keys.into_iter().for_each(|k| self[k].flatten(leaves));
    }
    fn def(&self) -> TreeDef {
        let mut entries: Vec<(String, TreeDef)> =
            self.iter().map(|(k, v)| (k.clone(), v.def())).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        TreeDef::Map(entries)
    }
    fn unflatten(def: &TreeDef, leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        Ok(BTreeMap::<String, T>::unflatten(def, leaves)?
            .into_iter()
            .collect())
    }
}

/// A tree whose structure is known only at run time: what Jacobians and Hessians return.
///
/// Index it by position (`h[0]`, for tuples, lists and struct fields in order) or by key
/// (`h["w"]`, for maps and struct fields); [`Node::tensor`] gives a leaf. The `Index`
/// operators panic on a missing entry, like `Vec`'s; [`Node::get`] and [`Node::key`] return
/// errors instead.
///
/// ```
/// use brainstate::{hessian, Tensor};
/// let f = |x: &Tensor, y: &Tensor| (x * y).sum();
/// let h = hessian(f).argnums([0, 1]).call((&Tensor::from([1.0]), &Tensor::from([2.0]))).unwrap();
/// assert_eq!(h[0][1].tensor().unwrap().to_vec::<f64>().unwrap(), vec![1.0]);
/// ```
#[derive(Clone, Debug)]
pub enum Node {
    /// A tensor.
    Leaf(Tensor),
    /// A tuple.
    Tuple(Vec<Node>),
    /// A sequence.
    List(Vec<Node>),
    /// A string-keyed map, in key order.
    Map(Vec<(String, Node)>),
    /// A struct, fields in declaration order.
    Struct {
        /// The struct's name.
        name: &'static str,
        /// Fields.
        fields: Vec<(&'static str, Node)>,
    },
}

impl Node {
    /// The tensor at a leaf.
    ///
    /// ```
    /// use brainstate::{Node, Tensor};
    /// assert_eq!(Node::Leaf(Tensor::scalar(1.0)).tensor().unwrap().item().unwrap(), 1.0);
    /// assert!(Node::List(vec![]).tensor().is_err());
    /// ```
    pub fn tensor(&self) -> Result<&Tensor> {
        match self {
            Node::Leaf(t) => Ok(t),
            other => Err(other.def().mismatch("a tensor")),
        }
    }

    /// The `i`-th child of a tuple, list, map or struct.
    ///
    /// ```
    /// use brainstate::{Node, Tensor};
    /// let n = Node::List(vec![Node::Leaf(Tensor::scalar(5.0))]);
    /// assert_eq!(n.get(0).unwrap().tensor().unwrap().item().unwrap(), 5.0);
    /// assert!(n.get(1).is_err());
    /// ```
    pub fn get(&self, i: usize) -> Result<&Node> {
        let child = match self {
            Node::Tuple(c) | Node::List(c) => c.get(i),
            Node::Map(c) => c.get(i).map(|(_, n)| n),
            Node::Struct { fields, .. } => fields.get(i).map(|(_, n)| n),
            Node::Leaf(_) => None,
        };
        child.ok_or_else(|| Error::Structure(format!("no entry {i} in {}", self.def().kind())))
    }

    /// The child under `key` of a map or struct.
    ///
    /// ```
    /// use brainstate::{Node, Tensor};
    /// let n = Node::Map(vec![("w".to_string(), Node::Leaf(Tensor::scalar(5.0)))]);
    /// assert_eq!(n.key("w").unwrap().tensor().unwrap().item().unwrap(), 5.0);
    /// assert!(n.key("b").is_err());
    /// ```
    pub fn key(&self, key: &str) -> Result<&Node> {
        let child = match self {
            Node::Map(c) => c.iter().find(|(k, _)| k == key).map(|(_, n)| n),
            Node::Struct { fields, .. } => fields.iter().find(|(k, _)| *k == key).map(|(_, n)| n),
            _ => None,
        };
        child.ok_or_else(|| Error::Structure(format!("no entry {key:?} in {}", self.def().kind())))
    }

    /// The leaves, depth first.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * y).sum();
    /// let (x, y) = (Tensor::scalar(1.0), Tensor::scalar(2.0));
    /// let h = hessian(f).argnums([0, 1]).call((&x, &y)).unwrap();
    /// let blocks: Vec<f64> = h.leaves().iter().map(|t| t.item().unwrap()).collect();
    /// assert_eq!(blocks, vec![0.0, 1.0, 1.0, 0.0]);
    /// ```
    pub fn leaves(&self) -> Vec<Tensor> {
        let mut leaves = Vec::new();
        self.flatten(&mut leaves);
        leaves
    }

    /// The Hessian of a scalar function as one `N x N` matrix over all differentiated inputs,
    /// in the order of `argnums` and, within each argument, of its leaves (row-major inside
    /// each leaf). Needs every block, as a Hessian over a scalar output returns them.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * x * y).sum();
    /// let (x, y) = (Tensor::from([1.0, 2.0]), Tensor::scalar(3.0));
    /// let h = hessian(f).argnums([0, 1]).call((&x, &y)).unwrap();
    /// let m = h.flat_matrix().unwrap();
    /// assert_eq!(m.shape().unwrap(), &[3, 3]);
    /// ```
    pub fn flat_matrix(&self) -> Result<Tensor> {
        let blocks = self.leaves();
        let k = (blocks.len() as f64).sqrt().round() as usize;
        if k * k != blocks.len() || k == 0 {
            return Err(Error::Structure(format!(
                "flat_matrix needs the k x k blocks of a Hessian over a scalar output, found {} leaves",
                blocks.len()
            )));
        }
        // Block (p, p) has shape in_p ++ in_p, which gives the size of input p.
        let sizes = (0..k)
            .map(|p| {
                let shape = blocks[p * k + p].shape()?;
                Ok(shape[..shape.len() / 2].iter().product())
            })
            .collect::<Result<Vec<usize>>>()?;
        let mut rows = Vec::with_capacity(k);
        for p in 0..k {
            let row: Vec<Tensor> = (0..k)
                .map(|q| blocks[p * k + q].reshape_exact(&[sizes[p], sizes[q]]))
                .collect();
            rows.push(crate::tensor::concatenate(&row, 1));
        }
        let matrix = crate::tensor::concatenate(&rows, 0);
        match matrix.error() {
            Some(e) => Err(Error::Structure(format!(
                "flat_matrix: the blocks do not form a Hessian ({e})"
            ))),
            None => Ok(matrix),
        }
    }
}

impl Tree for Node {
    fn flatten(&self, leaves: &mut Vec<Tensor>) {
        match self {
            Node::Leaf(t) => leaves.push(t.clone()),
            Node::Tuple(c) | Node::List(c) => c.iter().for_each(|n| n.flatten(leaves)),
            Node::Map(c) => c.iter().for_each(|(_, n)| n.flatten(leaves)),
            Node::Struct { fields, .. } => fields.iter().for_each(|(_, n)| n.flatten(leaves)),
        }
    }
    fn def(&self) -> TreeDef {
        match self {
            Node::Leaf(_) => TreeDef::Leaf,
            Node::Tuple(c) => TreeDef::Tuple(c.iter().map(Node::def).collect()),
            Node::List(c) => TreeDef::List(c.iter().map(Node::def).collect()),
            Node::Map(c) => TreeDef::Map(c.iter().map(|(k, n)| (k.clone(), n.def())).collect()),
            Node::Struct { name, fields } => TreeDef::Struct {
                name,
                fields: fields.iter().map(|(k, n)| (*k, n.def())).collect(),
            },
        }
    }
    fn unflatten(def: &TreeDef, leaves: &mut dyn Iterator<Item = Tensor>) -> Result<Self> {
        let mut error = None;
        let node = def.build(&mut || match next_leaf(leaves) {
            Ok(t) => Node::Leaf(t),
            Err(e) => {
                error = Some(e);
                Node::List(vec![])
            }
        });
        error.map_or(Ok(node), Err)
    }
}

impl std::ops::Index<usize> for Node {
    type Output = Node;
    fn index(&self, i: usize) -> &Node {
        match self.get(i) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }
}

impl std::ops::Index<&str> for Node {
    type Output = Node;
    fn index(&self, key: &str) -> &Node {
        match self.key(key) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Leaf(t) => write!(f, "{t}"),
            Node::Tuple(c) | Node::List(c) => {
                let open = if matches!(self, Node::Tuple(_)) {
                    "("
                } else {
                    "["
                };
                let close = if matches!(self, Node::Tuple(_)) {
                    ")"
                } else {
                    "]"
                };
                write!(f, "{open}")?;
                for (i, n) in c.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{n}")?;
                }
                write!(f, "{close}")
            }
            Node::Map(c) => {
                write!(f, "{{")?;
                for (i, (k, n)) in c.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k:?}: {n}")?;
                }
                write!(f, "}}")
            }
            Node::Struct { name, fields } => {
                write!(f, "{name} {{ ")?;
                for (i, (k, n)) in fields.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {n}")?;
                }
                write!(f, " }}")
            }
        }
    }
}
