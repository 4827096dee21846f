//! Diagonals, traces and Einstein summation, as compositions of shape operations, sums and
//! matrix products.
//!
//! A diagonal is a strided slice of the two axes flattened into one (element `(i, i + k)` of
//! an `n x m` matrix is element `i (m + 1) + k` of its rows laid end to end). [`einsum`]
//! takes diagonals of repeated indices, sums out indices that appear in one operand only, and
//! contracts the rest with one batched matrix product.

use std::collections::BTreeMap;

use super::Tensor;
use super::shape::axis_index;
use crate::error::{Error, Result};

impl Tensor {
    /// The main diagonal of a matrix, `x[i, i]` (NumPy's `diagonal()`, over axes 0 and 1).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    /// assert_eq!(x.diagonal().to_vec::<f64>().unwrap(), vec![1.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn diagonal(&self) -> Tensor {
        self.diagonal_axes(0, 0, 1)
    }

    /// The diagonal `x[.., i, .., i + offset, ..]` of axes `axis1` and `axis2`, which are
    /// removed; the diagonal becomes the last axis (NumPy's `diagonal(offset, axis1, axis2)`).
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    /// assert_eq!(x.diagonal_axes(1, 0, 1).to_vec::<f64>().unwrap(), vec![2.0, 6.0]);
    /// assert_eq!(x.diagonal_axes(-1, 0, 1).to_vec::<f64>().unwrap(), vec![4.0]);
    /// let batch = Tensor::zeros(&[5, 3, 3]).diagonal_axes(0, -2, -1);
    /// assert_eq!(batch.shape().unwrap(), [5, 3]);
    /// ```
    #[track_caller]
    pub fn diagonal_axes(&self, offset: isize, axis1: isize, axis2: isize) -> Tensor {
        Tensor::attempt(|| {
            let shape = self.shape()?;
            let (a1, a2) = (
                axis_index("diagonal", axis1, shape.len())?,
                axis_index("diagonal", axis2, shape.len())?,
            );
            if a1 == a2 {
                return Err(Error::shape(
                    "diagonal",
                    format!("axis1 and axis2 must differ, both are axis {a1} of shape {shape:?}"),
                ));
            }
            let (n, m) = (shape[a1], shape[a2]);
            let mut perm: Vec<usize> = (0..shape.len()).filter(|&i| i != a1 && i != a2).collect();
            let mut flat: Vec<usize> = perm.iter().map(|&i| shape[i]).collect();
            perm.extend([a1, a2]);
            flat.push(n * m);
            let k = offset.unsigned_abs();
            let (start, len) = if offset >= 0 {
                (k, n.min(m.saturating_sub(k)))
            } else {
                (k * m, n.saturating_sub(k).min(m))
            };
            let (start, stop) = match len {
                0 => (0, 0),
                len => (start, start + (len - 1) * (m + 1) + 1),
            };
            let rows = self.permute(&perm).reshape_exact(&flat);
            Ok(rows.slice_along(-1, start as isize..stop as isize, m + 1))
        })
    }

    /// The sum of the main diagonal of a matrix (NumPy's `trace()`).
    ///
    /// ```
    /// use brainstate::{hessian, Tensor};
    /// assert_eq!(Tensor::from([[1.0, 2.0], [3.0, 4.0]]).trace().item().unwrap(), 5.0);
    /// // The Laplacian of f is the trace of its Hessian.
    /// let h = hessian(|x: &Tensor| x.powi(3).sum()).call(&Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!(h.tensor().unwrap().trace().item().unwrap(), 18.0);
    /// ```
    #[track_caller]
    pub fn trace(&self) -> Tensor {
        self.trace_axes(0, 0, 1)
    }

    /// The sum of the diagonal of [`Tensor::diagonal_axes`].
    ///
    /// ```
    /// use brainstate::Tensor;
    /// let x = Tensor::from_vec((1..=8).map(f64::from).collect(), &[2, 2, 2]).unwrap();
    /// assert_eq!(x.trace_axes(0, 1, 2).to_vec::<f64>().unwrap(), vec![5.0, 13.0]);
    /// ```
    #[track_caller]
    pub fn trace_axes(&self, offset: isize, axis1: isize, axis2: isize) -> Tensor {
        self.diagonal_axes(offset, axis1, axis2)
            .sum_axes(&[-1], false)
    }
}

/// Einstein summation over one or two operands (NumPy's `einsum`): `"ij,jk->ik"` is a
/// matrix product, `"bij,bjk->bik"` a batched one, `"i,i->"` a dot product, `"ij,ij->i"` a
/// row-wise dot, `"i,j->ij"` an outer product, `"ij->ji"` a transpose, `"ii->"` a trace,
/// `"ii->i"` a diagonal. Without `->` the output has the indices that appear once, sorted.
/// Indices are ASCII letters; `...` is not supported.
///
/// ```
/// use brainstate::{einsum, Tensor};
/// let a = Tensor::from([[1.0, 2.0], [3.0, 4.0]]);
/// let b = Tensor::from([[5.0, 6.0], [7.0, 8.0]]);
/// assert_eq!(einsum("ij,jk->ik", &[&a, &b]).to_vec::<f64>().unwrap(), a.matmul(&b).to_vec::<f64>().unwrap());
/// assert_eq!(einsum("ij,ij", &[&a, &b]).item().unwrap(), 70.0); // implicit output: none
/// assert_eq!(einsum("ii", &[&a]).item().unwrap(), 5.0);
/// let err = einsum("ij,jk->ik", &[&a, &Tensor::zeros(&[3, 2])]).shape().unwrap_err();
/// assert_eq!(err.to_string(), "einsum: index 'j' has size 2 in one operand and 3 in another");
/// ```
#[track_caller]
pub fn einsum(spec: &str, operands: &[&Tensor]) -> Tensor {
    Tensor::attempt(|| {
        let (inputs, output) = parse(spec, operands.len())?;
        let mut sizes: BTreeMap<char, usize> = BTreeMap::new();
        let mut terms = Vec::new();
        for (term, x) in inputs.into_iter().zip(operands) {
            let shape = x.shape()?;
            if term.len() != shape.len() {
                return Err(einsum_error(format!(
                    "term {:?} has {} indices for an operand of shape {shape:?}",
                    term.iter().collect::<String>(),
                    term.len()
                )));
            }
            for (&c, &d) in term.iter().zip(shape) {
                let known = *sizes.entry(c).or_insert(d);
                if known != d {
                    return Err(einsum_error(format!(
                        "index '{c}' has size {known} in one operand and {d} in another"
                    )));
                }
            }
            terms.push(diagonals((*x).clone(), term));
        }
        // Indices in one operand only and not in the output are summed out first.
        let count = |c: char| terms.iter().filter(|(_, t)| t.contains(&c)).count();
        let terms: Vec<(Tensor, Vec<char>)> = terms
            .iter()
            .map(|(x, term)| {
                let dropped: Vec<isize> = (0..term.len())
                    .filter(|&i| count(term[i]) == 1 && !output.contains(&term[i]))
                    .map(|i| i as isize)
                    .collect();
                let kept = term
                    .iter()
                    .filter(|&&c| count(c) > 1 || output.contains(&c));
                (x.sum_axes(&dropped, false), kept.copied().collect())
            })
            .collect();
        let (x, term) = match terms.as_slice() {
            [one] => one.clone(),
            [a, b] => contract(a, b, &output, &sizes)?,
            _ => unreachable!("parse checks the operand count"),
        };
        let perm: Vec<usize> = output
            .iter()
            .map(|c| {
                term.iter()
                    .position(|t| t == c)
                    .expect("every output index is kept")
            })
            .collect();
        Ok(x.permute(&perm))
    })
}

fn einsum_error(msg: String) -> Error {
    Error::shape("einsum", msg)
}

/// The index lists of the operands and of the output.
fn parse(spec: &str, operands: usize) -> Result<(Vec<Vec<char>>, Vec<char>)> {
    let spec: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
    if spec.contains("...") {
        return Err(einsum_error("`...` is not supported".into()));
    }
    let (lhs, rhs) = match spec.split_once("->") {
        Some((lhs, rhs)) => (lhs, Some(rhs)),
        None => (spec.as_str(), None),
    };
    let inputs: Vec<Vec<char>> = lhs.split(',').map(|t| t.chars().collect()).collect();
    if !(1..=2).contains(&operands) || inputs.len() != operands {
        return Err(einsum_error(format!(
            "{spec:?} has {} terms for {operands} operands (one or two are supported)",
            inputs.len()
        )));
    }
    let mut letters = lhs
        .chars()
        .filter(|&c| c != ',')
        .chain(rhs.unwrap_or("").chars());
    if let Some(c) = letters.find(|c| !c.is_ascii_alphabetic()) {
        return Err(einsum_error(format!(
            "{c:?} in {spec:?} is not an index letter"
        )));
    }
    let all: Vec<char> = inputs.iter().flatten().copied().collect();
    let output: Vec<char> = match rhs {
        Some(rhs) => rhs.chars().collect(),
        None => {
            let mut once: Vec<char> = all
                .iter()
                .copied()
                .filter(|c| all.iter().filter(|d| *d == c).count() == 1)
                .collect();
            once.sort_unstable();
            once
        }
    };
    for (i, c) in output.iter().enumerate() {
        if output[..i].contains(c) || !all.contains(c) {
            return Err(einsum_error(format!(
                "output index '{c}' of {spec:?} is repeated or in no operand"
            )));
        }
    }
    Ok((inputs, output))
}

/// The operand with each repeated index replaced by the diagonal over its axes (moved last).
fn diagonals(mut x: Tensor, mut term: Vec<char>) -> (Tensor, Vec<char>) {
    while let Some((p, q)) = (0..term.len()).find_map(|p| {
        (p + 1..term.len())
            .find(|&q| term[q] == term[p])
            .map(|q| (p, q))
    }) {
        x = x.diagonal_axes(0, p as isize, q as isize);
        let c = term.remove(q);
        term.remove(p);
        term.push(c);
    }
    (x, term)
}

/// The contraction of two operands as one batched matrix product: `a` laid out as
/// `[batch, left, contracted]`, `b` as `[batch, contracted, right]`.
fn contract(
    (a, ta): &(Tensor, Vec<char>),
    (b, tb): &(Tensor, Vec<char>),
    output: &[char],
    sizes: &BTreeMap<char, usize>,
) -> Result<(Tensor, Vec<char>)> {
    let batch: Vec<char> = output
        .iter()
        .copied()
        .filter(|c| ta.contains(c) && tb.contains(c))
        .collect();
    let left: Vec<char> = ta.iter().copied().filter(|c| !tb.contains(c)).collect();
    let right: Vec<char> = tb.iter().copied().filter(|c| !ta.contains(c)).collect();
    let summed: Vec<char> = ta
        .iter()
        .copied()
        .filter(|c| tb.contains(c) && !output.contains(c))
        .collect();
    let size = |cs: &[char]| cs.iter().map(|c| sizes[c]).product::<usize>();
    let arrange = |x: &Tensor, term: &[char], order: &[&[char]], dims: &[usize]| {
        let perm: Vec<usize> = order
            .iter()
            .flat_map(|cs| cs.iter())
            .map(|c| term.iter().position(|t| t == c).expect("index of the term"))
            .collect();
        x.permute(&perm).reshape_exact(dims)
    };
    let (nb, nl, nr, nc) = (size(&batch), size(&left), size(&right), size(&summed));
    // Without batch indices, one plain matrix product.
    let with_batch = |dims: [usize; 2]| {
        if batch.is_empty() {
            dims.to_vec()
        } else {
            vec![nb, dims[0], dims[1]]
        }
    };
    let lhs = arrange(a, ta, &[&batch, &left, &summed], &with_batch([nl, nc]));
    let rhs = arrange(b, tb, &[&batch, &summed, &right], &with_batch([nc, nr]));
    let term: Vec<char> = [batch.as_slice(), &left, &right].concat();
    let dims: Vec<usize> = term.iter().map(|c| sizes[c]).collect();
    Ok((lhs.matmul(&rhs).reshape_exact(&dims), term))
}
