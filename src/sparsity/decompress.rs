//! Reading a Hessian's entries out of its compressed products.

use std::borrow::Cow;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};
use rayon::prelude::*;

use super::Compression;
use crate::error::{Error, Result};
use crate::storage::{Data, pool};

/// Gathers of at least this many entries, and dense blocks of new pages of at least this many
/// elements, run on the thread pool.
const PARALLEL_MIN: usize = 1 << 16;

impl Compression {
    /// The compressed products `B` (`[colors, n]`, row-major) from one product per
    /// differentiated leaf (`[colors] ++ leaf shape` each): the one product itself when there
    /// is one leaf, else its rows gathered.
    fn gathered<'a, T: Copy>(&self, products: &[ArrayViewD<'a, T>]) -> Result<Cow<'a, [T]>> {
        let sizes = self.pattern.sizes();
        let mut flats = Vec::with_capacity(products.len());
        for (product, &len) in products.iter().zip(&sizes) {
            let flat = product
                .to_slice()
                .ok_or_else(|| Error::shape("sparse hessian", "a product out of layout"))?;
            if flat.len() != self.colors * len {
                return Err(Error::shape(
                    "sparse hessian",
                    format!(
                        "a product of {} values for {} colors of {len} variables",
                        flat.len(),
                        self.colors
                    ),
                ));
            }
            flats.push(flat);
        }
        if let [flat] = flats[..] {
            return Ok(Cow::Borrowed(flat));
        }
        let n: usize = sizes.iter().sum();
        let mut b = Vec::with_capacity(self.colors * n);
        for c in 0..self.colors {
            for (flat, &len) in flats.iter().zip(&sizes) {
                b.extend_from_slice(&flat[c * len..(c + 1) * len]);
            }
        }
        Ok(Cow::Owned(b))
    }

    /// The values of the pattern's entries, in its order (gathered on every thread when
    /// there are many: a gather is bound by memory latency, which threads overlap).
    fn entries<T: Copy + Send + Sync + 'static>(
        &self,
        products: &[ArrayViewD<T>],
    ) -> Result<Vec<T>> {
        let gathered = self.gathered(products)?;
        // A slice held by value: the gather loads no bounds from memory per entry.
        let b: &[T] = &gathered;
        let read = move |&s: &u32| b[s as usize];
        let mut values = pool::take(self.sources.len());
        if self.sources.len() < PARALLEL_MIN {
            values.extend(self.sources.iter().map(read));
        } else {
            let sources = self.sources.par_iter().with_min_len(PARALLEL_MIN / 2);
            sources.map(read).collect_into_vec(&mut values);
        }
        Ok(values)
    }

    /// The dense blocks `H[i][j]` (shape `leaf i ++ leaf j`, row-major over `i` then `j`),
    /// zero outside the pattern.
    fn dense<T: Copy + Default + Send + Sync + 'static>(
        &self,
        products: &[ArrayViewD<T>],
        shapes: &[Vec<usize>],
    ) -> Result<Vec<ArrayD<T>>> {
        let values = self.entries(products)?;
        let blocks = &self.pattern.sizes();
        let starts: Vec<usize> = blocks
            .iter()
            .scan(0, |acc, &len| {
                *acc += len;
                Some(*acc - len)
            })
            .collect();
        let k = blocks.len();
        let mut out: Vec<Vec<T>> = (0..k * k)
            .map(|b| {
                let len = blocks[b / k].saturating_mul(blocks[b % k]);
                crate::memory::try_filled("hessian", len, T::default())
            })
            .collect::<Result<_>>()?;
        // Row by row, on every thread when the block is large and its pages are new: the
        // first write to each page faults it in, which threads overlap. Memory the allocator
        // had (a previous call's result, say) is mapped and zeroed before this loop: setting
        // a few entries per row then takes less than waking a thread (rosen_n1024: 0.11 ms
        // one thread, 0.21 ms two).
        let pattern = &self.pattern;
        for (b, block) in out.iter_mut().enumerate() {
            let (i, j) = (b / k, b % k);
            let columns = starts[j]..starts[j] + blocks[j];
            let fill_row = |(a, row): (usize, &mut [T])| {
                let r = starts[i] + a;
                let slots = pattern.row_start[r]..pattern.row_start[r + 1];
                for (&c, &value) in pattern.cols[slots.clone()].iter().zip(&values[slots]) {
                    if columns.contains(&c) {
                        row[c - columns.start] = value;
                    }
                }
            };
            let width = blocks[j].max(1);
            if block.len() < PARALLEL_MIN || pool::mapped(block) {
                block.chunks_mut(width).enumerate().for_each(fill_row);
            } else {
                block.par_chunks_mut(width).enumerate().for_each(fill_row);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(b, values)| {
                let mut shape = shapes[b / k].clone();
                shape.extend(&shapes[b % k]);
                ArrayD::from_shape_vec(shape, values)
                    .map_err(|_| Error::shape("sparse hessian", "a block's shape"))
            })
            .collect()
    }

    /// The diagonal, one array per leaf (of the leaf's shape); zero where the pattern has no
    /// diagonal entry.
    fn diagonal<T: Copy + Default>(
        &self,
        products: &[ArrayViewD<T>],
        shapes: &[Vec<usize>],
    ) -> Result<Vec<ArrayD<T>>> {
        let b = self.gathered(products)?;
        let n = self.pattern.size();
        let mut start = 0;
        shapes
            .iter()
            .zip(&self.pattern.sizes())
            .map(|(shape, &len)| {
                let values = (start..start + len)
                    .map(|v| {
                        if self.pattern.contains(v, v) {
                            b[self.color[v] * n + v]
                        } else {
                            T::default()
                        }
                    })
                    .collect();
                start += len;
                ArrayD::from_shape_vec(shape.as_slice(), values)
                    .map_err(|_| Error::shape("hessian diagonal", "a leaf's shape"))
            })
            .collect()
    }

    /// Recovers the Hessian from one compressed product per differentiated leaf (shapes
    /// `[colors] ++ shapes[i]`): the dense blocks, the pattern's entries (one 1-D array), or
    /// the diagonal per leaf.
    pub(crate) fn decompress(
        &self,
        products: &[Arc<Data>],
        shapes: &[Vec<usize>],
        into: Recover,
    ) -> Result<Vec<Data>> {
        macro_rules! typed {
            ($variant:ident) => {{
                let arrays = products
                    .iter()
                    .map(|p| match &**p {
                        Data::$variant(a) => Ok(a),
                        other => Err(Error::dtype(
                            "sparse hessian",
                            "products of one dtype",
                            other.dtype(),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let arrays: Vec<_> = arrays.iter().map(|a| a.as_standard_layout()).collect();
                let refs: Vec<ArrayViewD<_>> = arrays.iter().map(|a| a.view()).collect();
                Ok(match into {
                    Recover::Dense => self
                        .dense(&refs, shapes)?
                        .into_iter()
                        .map(Data::$variant)
                        .collect(),
                    Recover::Entries => {
                        let values = self.entries(&refs)?;
                        let len = values.len();
                        vec![Data::$variant(
                            ArrayD::from_shape_vec(vec![len], values).expect("nnz values"),
                        )]
                    }
                    Recover::Diagonal => self
                        .diagonal(&refs, shapes)?
                        .into_iter()
                        .map(Data::$variant)
                        .collect(),
                })
            }};
        }
        match products.first().map(|p| p.dtype()) {
            Some(crate::DType::F64) | None => typed!(F64),
            Some(crate::DType::F32) => typed!(F32),
            Some(crate::DType::C128) => typed!(C128),
            Some(crate::DType::C64) => typed!(C64),
            Some(dtype @ (crate::DType::Bool | crate::DType::I64)) => Err(Error::dtype(
                "sparse hessian",
                "floating-point or complex products",
                dtype,
            )),
        }
    }
}

/// What [`Compression::decompress`] recovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recover {
    /// The dense blocks.
    Dense,
    /// The pattern's entries.
    Entries,
    /// The diagonal.
    Diagonal,
}
