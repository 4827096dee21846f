//! Sparse Hessians: detecting a Hessian's sparsity pattern from the traced program, coloring
//! it, and recovering its values from a few compressed Hessian-vector products.
//!
//! The pattern is *global*: detected from the program alone, it holds every entry that can
//! be nonzero for some input of the signature (it may hold entries that happen to be zero).
//! It is over the flat differentiated variable, in [`Node::flat_matrix`](crate::Node::flat_matrix)
//! order: the `grad_states` leaves, then the `argnums` leaves, each flattened row-major.

mod coloring;
mod decompress;
mod detect;
pub(crate) mod stencil;

use std::fmt;
use std::sync::Arc;

pub(crate) use self::decompress::{Recover, map_beside, unmapped};
use crate::error::{Error, Result};
use crate::primitives::Program;
use crate::storage::Data;
use crate::tensor::Tensor;

/// The sparsity pattern of a Hessian: a symmetric `n x n` pattern in compressed rows, over
/// the flat differentiated variable (see the [module](self) docs).
///
/// ```
/// use brainstate::{hessian_sparsity, Tensor};
/// let f = |x: &Tensor| (x.slice_along(0, 1.., 1) * x.slice_along(0, ..-1, 1)).sum();
/// let pattern = hessian_sparsity(f).call(&Tensor::zeros(&[4])).unwrap();
/// assert_eq!((pattern.size(), pattern.nnz()), (4, 6)); // the two off-diagonals
/// assert!(pattern.contains(1, 2) && !pattern.contains(1, 1));
/// assert_eq!(pattern.row(1), &[0, 2]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparsityPattern {
    row_start: Vec<usize>,
    cols: Vec<usize>,
    /// Shapes of the differentiated leaves, in order: the blocks of the flat variable.
    shapes: Vec<Vec<usize>>,
    /// The blocks' sizes and where each starts in the flat variable, read by every call
    /// that decompresses (kept rather than computed per call).
    sizes: Vec<usize>,
    starts: Vec<usize>,
}

impl SparsityPattern {
    fn new(row_start: Vec<usize>, cols: Vec<usize>, shapes: Vec<Vec<usize>>) -> SparsityPattern {
        let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        SparsityPattern {
            row_start,
            cols,
            starts: crate::primitives::starts(sizes.iter().copied()),
            sizes,
            shapes,
        }
    }

    /// The full pattern from its upper triangle (sorted pairs `(row, col)`, `row <= col`).
    fn from_upper(n: usize, upper: &[(u32, u32)], shapes: Vec<Vec<usize>>) -> SparsityPattern {
        let mut count = vec![0usize; n + 1];
        for &(r, c) in upper {
            count[r as usize] += 1;
            if r != c {
                count[c as usize] += 1;
            }
        }
        let mut row_start = vec![0usize; n + 1];
        for v in 0..n {
            row_start[v + 1] = row_start[v] + count[v];
        }
        let mut fill = row_start.clone();
        let mut cols = vec![0usize; row_start[n]];
        // Rows in increasing order: each row receives its mirrored (smaller) columns before
        // its own upper ones, so columns come out sorted.
        for &(r, c) in upper {
            let (r, c) = (r as usize, c as usize);
            cols[fill[r]] = c;
            fill[r] += 1;
            if r != c {
                cols[fill[c]] = r;
                fill[c] += 1;
            }
        }
        SparsityPattern::new(row_start, cols, shapes)
    }

    /// Every entry of an `n x n` matrix.
    fn dense(n: usize, shapes: Vec<Vec<usize>>) -> SparsityPattern {
        let row_start = (0..=n).map(|r| r * n).collect();
        SparsityPattern::new(row_start, (0..n * n).map(|k| k % n).collect(), shapes)
    }

    /// The sizes of the blocks (differentiated leaves), in order.
    pub(crate) fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Where each block starts in the flat variable.
    pub(crate) fn starts(&self) -> &[usize] {
        &self.starts
    }

    /// The number of rows (and columns): the size of the flat differentiated variable.
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| x.powi(3).sum()).call(&Tensor::zeros(&[5])).unwrap();
    /// assert_eq!(p.size(), 5);
    /// ```
    pub fn size(&self) -> usize {
        self.row_start.len() - 1
    }

    /// The number of entries (both triangles and the diagonal).
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| x.powi(3).sum()).call(&Tensor::zeros(&[5])).unwrap();
    /// assert_eq!(p.nnz(), 5); // a diagonal Hessian
    /// ```
    pub fn nnz(&self) -> usize {
        self.cols.len()
    }

    /// The columns of row `r`, sorted (empty for a row out of range).
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| x.sum().powi(2)).call(&Tensor::zeros(&[3])).unwrap();
    /// assert_eq!(p.row(2), &[0, 1, 2]); // (sum x)^2 couples everything
    /// ```
    pub fn row(&self, r: usize) -> &[usize] {
        match self.row_start.get(r..r + 2) {
            Some(&[a, b]) => &self.cols[a..b],
            _ => &[],
        }
    }

    /// Whether entry `(r, c)` is in the pattern.
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| x.powi(2).sum()).call(&Tensor::zeros(&[2])).unwrap();
    /// assert!(p.contains(1, 1) && !p.contains(0, 1));
    /// ```
    pub fn contains(&self, r: usize, c: usize) -> bool {
        self.row(r).binary_search(&c).is_ok()
    }

    /// The compressed rows: `row_starts()[r]..row_starts()[r + 1]` indexes the columns of
    /// row `r` in [`col_indices`](Self::col_indices) (the CSR layout of SciPy and `sprs`).
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| x.powi(2).sum()).call(&Tensor::zeros(&[3])).unwrap();
    /// assert_eq!((p.row_starts(), p.col_indices()), (&[0, 1, 2, 3][..], &[0, 1, 2][..]));
    /// ```
    pub fn row_starts(&self) -> &[usize] {
        &self.row_start
    }

    /// The column of every entry, row after row (see [`row_starts`](Self::row_starts)).
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| (x * x.sum()).sum()).call(&Tensor::zeros(&[2])).unwrap();
    /// assert_eq!(p.col_indices(), &[0, 1, 0, 1]);
    /// ```
    pub fn col_indices(&self) -> &[usize] {
        &self.cols
    }

    /// The shapes of the differentiated leaves, in the order of the flat variable: the
    /// pattern's block structure.
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * y.sum()).sum();
    /// let p = hessian_sparsity(f).argnums([0, 1]);
    /// let p = p.call((&Tensor::zeros(&[2]), &Tensor::zeros(&[1, 3]))).unwrap();
    /// assert_eq!(p.block_shapes(), &[vec![2], vec![1, 3]]);
    /// ```
    pub fn block_shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// The pattern as a dense `n x n` boolean tensor.
    ///
    /// ```
    /// use brainstate::{hessian_sparsity, Tensor};
    /// let p = hessian_sparsity(|x: &Tensor| x.powi(2).sum()).call(&Tensor::zeros(&[2])).unwrap();
    /// assert_eq!(p.to_dense().to_vec::<bool>().unwrap(), vec![true, false, false, true]);
    /// ```
    pub fn to_dense(&self) -> Tensor {
        let n = self.size();
        let mut dense = vec![false; n * n];
        for r in 0..n {
            for &c in self.row(r) {
                dense[r * n + c] = true;
            }
        }
        Tensor::from_vec(dense, &[n, n]).expect("n * n values")
    }
}

impl fmt::Display for SparsityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.size();
        write!(f, "SparsityPattern({n}x{n}, {} entries", self.nnz())?;
        if n <= 16 {
            for r in 0..n {
                let row: String = (0..n)
                    .map(|c| if self.contains(r, c) { '*' } else { '.' })
                    .collect();
                write!(f, "\n  {row}")?;
            }
        }
        write!(f, ")")
    }
}

/// A Hessian in compressed sparse rows over the flat differentiated variable (see the
/// [module](self) docs): its [`pattern`](Self::pattern) and the [`values`](Self::values) of
/// its entries, in the pattern's order.
///
/// ```
/// use brainstate::{hessian, Tensor};
/// let f = |x: &Tensor| (x.slice_along(0, 1.., 1) * x.slice_along(0, ..-1, 1).powi(2)).sum();
/// let h = hessian(f).sparse().call(&Tensor::from([1.0, 2.0, 3.0])).unwrap();
/// assert_eq!(h.pattern().row(0), &[0, 1]);
/// // f = x1 x0^2 + x2 x1^2: H[0][0] = 2 x1, H[0][1] = 2 x0
/// assert_eq!(h.values().to_vec::<f64>().unwrap()[..2], [4.0, 2.0]);
/// ```
#[derive(Clone, Debug)]
pub struct SparseHessian {
    pattern: Arc<SparsityPattern>,
    values: Tensor,
    /// With `unit_aware`, the unit of each block `(i, j)`, row-major.
    units: Option<Vec<crate::Unit>>,
}

impl SparseHessian {
    pub(crate) fn new(
        pattern: Arc<SparsityPattern>,
        values: Tensor,
        units: Option<Vec<crate::Unit>>,
    ) -> SparseHessian {
        SparseHessian {
            pattern,
            values,
            units,
        }
    }

    /// The sparsity pattern: where the entries are.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.powi(3).sum()).sparse().call(&Tensor::from([1.0])).unwrap();
    /// assert_eq!(h.pattern().nnz(), 1);
    /// ```
    pub fn pattern(&self) -> &SparsityPattern {
        &self.pattern
    }

    /// The values of the entries, a 1-D tensor in the pattern's order (as numbers; with
    /// `unit_aware`, each block's unit is on [`block`](Self::block)).
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.powi(3).sum()).sparse().call(&Tensor::from([2.0])).unwrap();
    /// assert_eq!(h.values().to_vec::<f64>().unwrap(), vec![12.0]);
    /// ```
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// The number of entries.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| x.powi(3).sum()).sparse().call(&Tensor::zeros(&[4])).unwrap();
    /// assert_eq!(h.nnz(), 4);
    /// ```
    pub fn nnz(&self) -> usize {
        self.pattern.nnz()
    }

    /// The Hessian as a dense `n x n` matrix over the flat variable.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let h = hessian(|x: &Tensor| (x * x.sum()).sum()).sparse().call(&Tensor::zeros(&[2])).unwrap();
    /// assert_eq!(h.to_dense().unwrap().to_vec::<f64>().unwrap(), vec![2.0; 4]); // (sum x)^2
    /// ```
    pub fn to_dense(&self) -> Result<Tensor> {
        let n = self.pattern.size();
        self.dense_part(0..n, 0..n, &[n], &[n])
    }

    /// Block `(i, j)` over differentiated leaves `i` and `j` (in the flat variable's order),
    /// dense, of shape `leaf i ++ leaf j` (with `unit_aware`, in its unit): the per-block
    /// view, as `hessian(f)` nests its blocks.
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// let f = |x: &Tensor, y: &Tensor| (x * y).sum();
    /// let h = hessian(f).argnums([0, 1]).sparse();
    /// let h = h.call((&Tensor::zeros(&[2]), &Tensor::zeros(&[2]))).unwrap();
    /// assert_eq!(h.block(0, 1).unwrap().to_vec::<f64>().unwrap(), vec![1.0, 0.0, 0.0, 1.0]);
    /// assert!(h.block(0, 2).is_err());
    /// ```
    pub fn block(&self, i: usize, j: usize) -> Result<Tensor> {
        let shapes = &self.pattern.shapes;
        let k = shapes.len();
        if i >= k || j >= k {
            return Err(Error::shape(
                "SparseHessian::block",
                format!("block ({i}, {j}) of a Hessian over {k} leaves"),
            ));
        }
        let start = |b: usize| {
            shapes[..b]
                .iter()
                .map(|s| s.iter().product::<usize>())
                .sum::<usize>()
        };
        let len = |b: usize| shapes[b].iter().product::<usize>();
        let (r0, c0) = (start(i), start(j));
        let dense = self.dense_part(r0..r0 + len(i), c0..c0 + len(j), &shapes[i], &shapes[j])?;
        Ok(match &self.units {
            Some(units) => dense.with_unit(Some(units[i * k + j])),
            None => dense,
        })
    }

    /// Rows `rows` and columns `cols` as a dense tensor of shape `row_shape ++ col_shape`.
    fn dense_part(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        row_shape: &[usize],
        col_shape: &[usize],
    ) -> Result<Tensor> {
        let values = self.values.to_vec::<num_complex::Complex64>()?;
        let width = cols.len();
        let mut dense = vec![num_complex::Complex64::new(0.0, 0.0); rows.len() * width];
        for r in rows.clone() {
            let start = self.pattern.row_start[r];
            for (slot, &c) in self.pattern.row(r).iter().enumerate() {
                if cols.contains(&c) {
                    dense[(r - rows.start) * width + (c - cols.start)] = values[start + slot];
                }
            }
        }
        let shape: Vec<usize> = row_shape.iter().chain(col_shape).copied().collect();
        Ok(Tensor::from_vec(dense, &shape)?.cast(self.values.dtype()?))
    }
}

/// Detects the Hessian pattern of output 0 of `program` (a scalar) with respect to the
/// inputs `wrt`. With `limit`, `None` when the pattern has more than `limit` upper entries;
/// without, a pattern too dense to detect economically is reported dense.
pub(crate) fn hessian_pattern(
    program: &Program,
    wrt: &[usize],
    limit: Option<usize>,
) -> Result<Option<SparsityPattern>> {
    let shapes: Vec<Vec<usize>> = wrt
        .iter()
        .map(|&i| program.aval(program.inputs[i]).shape.clone())
        .collect();
    let n: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let full = n.saturating_mul(n + 1) / 2;
    match detect::upper_pattern(program, wrt, limit.unwrap_or(full))? {
        Some(upper) => Ok(Some(SparsityPattern::from_upper(n, &upper, shapes))),
        None if limit.is_some() => Ok(None),
        None => Ok(Some(SparsityPattern::dense(n, shapes))),
    }
}

/// How a Hessian is computed from a few products per call, and where each entry of its
/// pattern is in them.
pub(crate) struct Compression {
    pub pattern: Arc<SparsityPattern>,
    pub reading: Reading,
}

/// The products a [`Compression`] computes, and how its entries are read from them.
pub(crate) enum Reading {
    /// One Hessian-vector product per color of a star coloring, `B` (`[colors, n]`,
    /// row-major): entry `e` is `B[sources[e]]`, `sources[e] = color * n + vertex`. Four
    /// bytes each: the gather reads them on every call.
    Colors {
        /// The color of each column.
        color: Vec<usize>,
        colors: usize,
        sources: Vec<u32>,
    },
    /// The coefficients of a stencil (see [`stencil`](self::stencil)), one array per leaf and
    /// offset: entry `e`, in row `k` of leaf `i`, is array `i * offsets.len() + terms[e]` at
    /// `k`; zero where `terms[e]` is [`Reading::NO_TERM`] (an entry the stencil never reaches).
    Stencil {
        offsets: Vec<stencil::Offset>,
        terms: Vec<u16>,
        /// The rows whose entries are not one of every offset, in order (at the edges of a
        /// grid, say), ascending; every other row's entries are its elements of the arrays.
        partial: Vec<usize>,
    },
}

impl Reading {
    /// The term of an entry that no offset of the stencil reaches.
    pub const NO_TERM: u16 = u16::MAX;
}

/// A star coloring of a pattern: the columns of one color make one Hessian-vector product,
/// from which a [`Compression`] reads the entries, unless they are read from a stencil.
pub(crate) struct Coloring {
    pub pattern: Arc<SparsityPattern>,
    /// The color of each column.
    pub color: Vec<usize>,
    pub colors: usize,
}

impl Coloring {
    /// A star coloring of `pattern`.
    pub fn new(pattern: Arc<SparsityPattern>) -> Result<Coloring> {
        let n = pattern.size();
        let upper: Vec<(u32, u32)> = (0..n)
            .flat_map(|r| {
                pattern
                    .row(r)
                    .iter()
                    .filter(move |&&c| c > r)
                    .map(move |&c| (r as u32, c as u32))
            })
            .collect();
        let graph = coloring::Graph::from_upper(n, &upper);
        let (color, colors) = coloring::star_coloring(&graph);
        if (colors as u64).saturating_mul(n as u64) > 1 << 32 {
            return Err(Error::shape(
                "sparse hessian",
                format!("{colors} colors of {n} variables: more than 2^32 compressed values"),
            ));
        }
        Ok(Coloring {
            pattern,
            color,
            colors,
        })
    }

    /// The entries read from one Hessian-vector product per color, each from one product
    /// (the direct decompression of a star coloring).
    pub fn products(self) -> Result<Compression> {
        let pattern = &self.pattern;
        let n = pattern.size();
        let sources =
            coloring::sources(&pattern.row_start, &pattern.cols, &self.color, self.colors)?
                .into_iter()
                .map(|(c, v)| (c * n + v) as u32)
                .collect();
        Ok(Compression {
            pattern: self.pattern,
            reading: Reading::Colors {
                color: self.color,
                colors: self.colors,
                sources,
            },
        })
    }

    /// The entries read from the coefficients of a stencil with these `offsets`, each entry
    /// `(r, c)` from the offset `(leaf of c, index of c - index of r)`.
    pub fn stencil(&self, offsets: Vec<stencil::Offset>) -> Compression {
        let pattern = &self.pattern;
        let shapes = &pattern.shapes;
        let starts = pattern.starts();
        let leaf_of = |v: usize| starts.partition_point(|&s| s <= v) - 1;
        let (mut index_r, mut index_c, mut d) = (Vec::new(), Vec::new(), Vec::new());
        let mut terms = Vec::with_capacity(pattern.nnz());
        let mut partial = Vec::new();
        for r in 0..pattern.size() {
            let i = leaf_of(r);
            unravel(r - starts[i], &shapes[i], &mut index_r);
            for &c in pattern.row(r) {
                let j = leaf_of(c);
                unravel(c - starts[j], &shapes[j], &mut index_c);
                d.clear();
                d.extend(
                    index_c
                        .iter()
                        .zip(&index_r)
                        .map(|(&c, &r)| c as isize - r as isize),
                );
                let term = match index_c.len() == index_r.len() {
                    true => offsets.binary_search_by(|(leaf, o)| (*leaf, &o[..]).cmp(&(j, &d[..]))),
                    false => Err(0),
                };
                terms.push(term.map_or(Reading::NO_TERM, |t| t as u16));
            }
            let mine = &terms[pattern.row_start[r]..];
            if !mine.iter().copied().eq(0..offsets.len() as u16) {
                partial.push(r);
            }
        }
        Compression {
            pattern: self.pattern.clone(),
            reading: Reading::Stencil {
                offsets,
                terms,
                partial,
            },
        }
    }

    /// The seed of leaf `k` of the flat variable: `[colors] ++ shape`, one where a column of
    /// the leaf has the row's color.
    pub fn seed(&self, k: usize, shape: &[usize], dtype: crate::DType) -> Data {
        let (color, colors) = (&self.color, self.colors);
        let sizes = self.pattern.sizes();
        let offset: usize = sizes[..k].iter().sum();
        let len = sizes[k];
        let mut values = vec![0.0; colors * len];
        for i in 0..len {
            values[color[offset + i] * len + i] = 1.0;
        }
        let mut full = vec![colors];
        full.extend(shape);
        Data::F64(ndarray::ArrayD::from_shape_vec(full, values).expect("colors * len")).cast(dtype)
    }
}

/// The multi-index of flat (row-major) index `flat` in `shape`, into `index`.
fn unravel(mut flat: usize, shape: &[usize], index: &mut Vec<usize>) {
    index.clear();
    index.resize(shape.len(), 0);
    for (d, &n) in shape.iter().enumerate().rev() {
        index[d] = flat % n.max(1);
        flat /= n.max(1);
    }
}
