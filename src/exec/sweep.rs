//! Sweeps: a linear plan run over the identity basis of one input, a chunk of directions at a
//! time, its outputs gathered into the columns of dense blocks.

use std::sync::{Arc, Mutex};

use ndarray::ArrayD;
use num_complex::Complex64;
use rayon::prelude::*;

use super::Plan;
use crate::error::{Error, Result};
use crate::ir::Var;
use crate::primitives::{
    Creation, Eqn, Prim, Program, Structural, transpose_into, transposed_matrices,
};
use crate::storage::{Aval, DType, Data, Element, pool};

/// A linear plan over the residuals and a seed of `chunk` directions of `input` (shape
/// `[chunk] ++ input shape`). Output `b` of the plan, of shape `[chunk] ++ shape_b`, holds
/// for each direction the matching column of a block of shape `shape_b ++ input shape`.
#[derive(Debug)]
pub(crate) struct Sweep {
    pub plan: Plan,
    pub input: Aval,
    pub chunk: usize,
    /// How many chunks run at once, one per thread.
    pub side_by_side: usize,
    /// Whether the plan generates its seed (the whole basis, when one chunk covers the
    /// input) rather than taking it as its last input.
    own_seed: bool,
}

impl Sweep {
    /// The sweep of `program`, a linear program whose last input is the seed. When one chunk
    /// covers the input, the seed is the identity: the program generates it, so that planning
    /// sees its structure (a product that only regroups another value by it becomes a
    /// reshape and a transpose).
    pub fn new(mut program: Program, input: Aval, chunk: usize, side_by_side: usize) -> Sweep {
        let n = input.numel();
        let seed = (chunk == n && input.dtype.is_inexact())
            .then(|| program.inputs.pop())
            .flatten();
        let own_seed = seed.is_some();
        if let Some(seed) = seed {
            let eye = program.new_var(Aval::new(&[n, n], input.dtype));
            let generate = |prim: Prim, inputs: Vec<Var>, output: Var| Eqn {
                prim,
                inputs,
                outputs: vec![output],
                source: None,
            };
            let eye_prim = Creation::Eye {
                rows: n,
                cols: n,
                offset: 0,
                dtype: input.dtype,
            };
            let shape = program.aval(seed).shape.clone();
            program.eqns.splice(
                0..0,
                [
                    generate(eye_prim.into(), vec![], eye),
                    generate(Structural::Reshape(shape).into(), vec![eye], seed),
                ],
            );
        }
        Sweep {
            plan: Plan::linear(program),
            input,
            chunk,
            side_by_side: side_by_side.max(1),
            own_seed,
        }
    }

    /// Runs the plan over the whole basis of the input and returns the blocks, in the order
    /// of the plan's outputs.
    pub fn run(&self, residuals: &[Arc<Data>], check_finite: bool) -> Result<Vec<Data>> {
        let n = self.input.numel();
        let mut blocks = self
            .plan
            .program
            .output_avals()
            .iter()
            .map(|out| {
                let mut shape = out.shape[1..].to_vec();
                shape.extend(&self.input.shape);
                crate::memory::zeros("sweep", &shape, out.dtype)
            })
            .collect::<Result<Vec<_>>>()?;
        let run = |start: usize| -> Result<Vec<Arc<Data>>> {
            if self.own_seed {
                return self.plan.run(residuals, check_finite);
            }
            let mut inputs: Vec<Arc<Data>> = residuals.to_vec();
            inputs.push(Arc::new(self.seed(start)?));
            self.plan.run(&inputs, check_finite)
        };
        let filled = Mutex::new(&mut blocks);
        let run_and_place = |start: usize| -> Result<()> {
            let outs = run(start)?;
            let mut blocks = filled
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (out, block) in outs.iter().zip(blocks.iter_mut()) {
                place(out, block, start, self.chunk.min(n - start), n)?;
            }
            // The chunk's outputs serve the next chunk's (and the next call's) products, on
            // the thread that ran it.
            pool::recycle_all(outs);
            Ok(())
        };
        let starts: Vec<usize> = (0..n).step_by(self.chunk.max(1)).collect();
        for at_once in starts.chunks(self.side_by_side) {
            match at_once {
                [start] => run_and_place(*start)?,
                _ => at_once
                    .par_iter()
                    .try_for_each(|&start| run_and_place(start))?,
            }
        }
        Ok(blocks)
    }

    /// Directions `start..start + chunk` of the identity basis of the input (directions past
    /// its last element are zero).
    fn seed(&self, start: usize) -> Result<Data> {
        let n = self.input.numel();
        let mut shape = vec![self.chunk];
        shape.extend(&self.input.shape);
        fn one_hot<T: Element>(chunk: usize, n: usize, start: usize, shape: &[usize]) -> Data {
            let zero = T::from_complex(Complex64::new(0.0, 0.0));
            let one = T::from_complex(Complex64::new(1.0, 0.0));
            let mut values = vec![zero; chunk * n];
            for k in 0..chunk.min(n.saturating_sub(start)) {
                values[k * n + start + k] = one;
            }
            Data::from(ArrayD::from_shape_vec(shape, values).expect("chunk * n values"))
        }
        Ok(match self.input.dtype {
            DType::F64 => one_hot::<f64>(self.chunk, n, start, &shape),
            DType::F32 => one_hot::<f32>(self.chunk, n, start, &shape),
            DType::C128 => one_hot::<Complex64>(self.chunk, n, start, &shape),
            DType::C64 => one_hot::<num_complex::Complex32>(self.chunk, n, start, &shape),
            dtype @ (DType::Bool | DType::I64) => {
                return Err(Error::dtype("sweep", "needs a differentiable input", dtype));
            }
        })
    }
}

/// A Hessian block no sweep computes: block `of` (of a call's blocks), of shape
/// `outer ++ first ++ second`, with its two trailing groups of axes swapped.
#[derive(Clone, Debug)]
pub(crate) struct Mirror {
    pub of: usize,
    pub first: Vec<usize>,
    pub second: Vec<usize>,
}

impl Mirror {
    /// The block of shape `outer ++ second ++ first` that mirrors `block`.
    pub fn image(&self, block: &Data) -> Result<Data> {
        let rows = self.first.iter().product();
        let cols = self.second.iter().product();
        let outer = block.shape().len() - self.first.len() - self.second.len();
        let shape = [&block.shape()[..outer], &self.second, &self.first].concat();
        crate::memory::check_array("hessian", &shape, block.dtype())?;
        Ok(transposed_matrices(block, rows, cols).into_shape(&shape))
    }
}

/// Writes the first `valid` rows of a chunk's output `[chunk, a...]` into columns
/// `start..start + valid` of `block` `[a..., n]`.
fn place(out: &Data, block: &mut Data, start: usize, valid: usize, n: usize) -> Result<()> {
    fn copy<T: Copy>(out: &ArrayD<T>, block: &mut ArrayD<T>, start: usize, valid: usize, n: usize) {
        let out = out.as_standard_layout();
        let src = out.as_slice().expect("standard layout");
        let dst = block.as_slice_mut().expect("a fresh block is contiguous");
        let rows = dst.len() / n.max(1);
        // `src` is `[valid, rows]`: the block's columns `start..start + valid`, stored by
        // columns. (A block without rows has no values past its start.)
        if let Some(columns) = dst.get_mut(start..) {
            transpose_into(src, rows, rows, valid, columns, n);
        }
    }
    match (out, block) {
        (Data::F64(o), Data::F64(b)) => copy(o, b, start, valid, n),
        (Data::F32(o), Data::F32(b)) => copy(o, b, start, valid, n),
        (Data::C128(o), Data::C128(b)) => copy(o, b, start, valid, n),
        (Data::C64(o), Data::C64(b)) => copy(o, b, start, valid, n),
        (out, block) => {
            return Err(Error::dtype(
                "sweep",
                format!("a block of {} cannot take values of", block.dtype()),
                out.dtype(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk's output `[valid, rows]` lands in columns `start..start + valid` of a
    /// `[rows, n]` block, and nowhere else: shapes around the transposed squares.
    #[test]
    fn a_chunk_is_placed_in_its_columns_of_the_block() {
        for (rows, n, start, valid) in
            [(19, 21, 3, 13), (16, 16, 8, 8), (5, 9, 0, 9), (40, 7, 6, 1)]
        {
            let out: Vec<f64> = (0..valid * rows).map(|v| v as f64).collect();
            let out = Data::F64(ArrayD::from_shape_vec(vec![valid, rows], out).unwrap());
            let mut block = Data::F64(ArrayD::from_elem(vec![rows, n], f64::NAN));
            place(&out, &mut block, start, valid, n).unwrap();
            let Data::F64(block) = block else {
                unreachable!()
            };
            for ((a, k), &value) in block.indexed_iter().map(|(i, v)| ((i[0], i[1]), v)) {
                if (start..start + valid).contains(&k) {
                    assert_eq!(
                        value,
                        ((k - start) * rows + a) as f64,
                        "{rows}x{n} ({a}, {k})"
                    );
                } else {
                    assert!(value.is_nan(), "{rows}x{n} ({a}, {k}) written");
                }
            }
        }
    }
}
