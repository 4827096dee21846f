//! Arranging a call's derivative blocks into trees, as each case and layout of the
//! specification returns them: output tree / row variable tree (/ column variable tree).

use super::Argnums;
use super::compile::Compiled;
use crate::autodiff::Output;
use crate::state::GradStates;
use crate::tensor::Tensor;
use crate::tree::Node;
use crate::unit::Unit;

/// Which differentiated variables a block index runs over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    States,
    Args,
}

/// What the blocks are, and so how they nest and what units they carry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrangement {
    /// `d out / d w` ([`Output::Jacobian`]): output tree / variable tree, or just the
    /// variable tree for a gradient (`nested: false`).
    Jacobian { nested: bool },
    /// `d2 out / d w d w'` ([`Output::Hessian`]): output tree / variable tree / variable tree.
    Hessian,
    /// One block per variable ([`Output::Product`]) of the scalar output's Hessian: products
    /// with vectors in the variables' units, carrying `unit(out) / unit(w)`.
    Products,
    /// The Hessian's diagonal ([`Output::Product`]), carrying `unit(out) / unit(w)^2`.
    Diagonal,
    /// One cotangent per variable ([`Output::Cotangent`]), carrying `unit(out) / unit(w)`
    /// times the cotangents' unit.
    Cotangents(Unit),
}

/// Derivative blocks of one call, with what is needed to arrange them into trees.
pub(crate) struct Blocks<'a> {
    pub arrangement: Arrangement,
    pub compiled: &'a Compiled,
    pub argnums: &'a Argnums,
    pub grad_states: Option<&'a GradStates>,
    pub unit_aware: bool,
    pub blocks: &'a [Tensor],
}

impl Blocks<'_> {
    /// The blocks over `rows` (and `cols`, for Hessians) as trees: output tree / `rows` tree
    /// (/ `cols` tree). Argument trees follow `argnums` (no tuple level for an integer); state
    /// trees follow `grad_states`.
    pub fn part(&self, rows: Part, cols: Part) -> Node {
        let states_def = self.grad_states.map(GradStates::def);
        let tree = |part: Part, leaf: &mut dyn FnMut() -> Node| -> Node {
            match (part, self.argnums) {
                (Part::States, _) => states_def.as_ref().expect("grad_states given").build(leaf),
                (Part::Args, Argnums::One(a)) => self.compiled.arg_defs[*a].build(leaf),
                (Part::Args, Argnums::Many(v)) => Node::Tuple(
                    v.iter()
                        .map(|&a| self.compiled.arg_defs[a].build(leaf))
                        .collect(),
                ),
            }
        };
        // The block of output `o` over row variable `row` (and column variable `col`).
        let block = |o: usize, row: usize, col: Option<usize>| -> Node {
            let wrt_unit = |p: usize| self.compiled.wrt_units[p].unwrap_or(Unit::ONE);
            let out_unit = self.compiled.output_units[o].unwrap_or(Unit::ONE);
            let (output, unit) = match (self.arrangement, col) {
                (Arrangement::Hessian, Some(col)) => (
                    Output::Hessian {
                        out: o,
                        wrt: (row, col),
                    },
                    wrt_unit(row)
                        .checked_mul(&wrt_unit(col))
                        .and_then(|w| out_unit.checked_div(&w)),
                ),
                (Arrangement::Jacobian { .. } | Arrangement::Hessian, _) => (
                    Output::Jacobian { out: o, wrt: row },
                    out_unit.checked_div(&wrt_unit(row)),
                ),
                (Arrangement::Products, _) => (
                    Output::Product { wrt: row },
                    out_unit.checked_div(&wrt_unit(row)),
                ),
                (Arrangement::Diagonal, _) => (
                    Output::Product { wrt: row },
                    wrt_unit(row)
                        .checked_powi(2)
                        .and_then(|w| out_unit.checked_div(&w)),
                ),
                (Arrangement::Cotangents(ct), _) => (
                    Output::Cotangent { wrt: row },
                    out_unit
                        .checked_mul(&ct)
                        .and_then(|u| u.checked_div(&wrt_unit(row))),
                ),
            };
            let tensor = &self.blocks[self.compiled.blocks[&output]];
            if !self.unit_aware {
                return Node::Leaf(tensor.clone());
            }
            // With unit_aware, each block carries the unit of what it is.
            let unit = match unit {
                Ok(unit) => unit,
                Err(e) => return Node::Leaf(Tensor::failed(e)),
            };
            Node::Leaf(if unit.is_dimensionless() {
                if unit.scale() == 1.0 {
                    tensor.clone()
                } else {
                    tensor * unit.scale()
                }
            } else {
                tensor.with_unit(Some(unit))
            })
        };
        let start = |part: Part| {
            if part == Part::States {
                0
            } else {
                self.compiled.n_state_leaves
            }
        };
        let for_output = |o: usize| -> Node {
            let mut p = start(rows);
            tree(rows, &mut || {
                let row = p;
                p += 1;
                if self.arrangement != Arrangement::Hessian {
                    return block(o, row, None);
                }
                let mut q = start(cols);
                tree(cols, &mut || {
                    let col = q;
                    q += 1;
                    block(o, row, Some(col))
                })
            })
        };
        if self.arrangement != Arrangement::Hessian
            && self.arrangement != (Arrangement::Jacobian { nested: true })
        {
            return for_output(0);
        }
        let mut o = 0;
        self.compiled.value_def.build(&mut || {
            let node = for_output(o);
            o += 1;
            node
        })
    }
}
