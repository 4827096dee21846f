//! Arranging a call's derivative blocks into trees, as each case and layout of the
//! specification returns them: output tree / row variable tree (/ column variable tree).

use super::compile::Compiled;
use super::{Argnums, Kind};
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

/// Derivative blocks of one call, with what is needed to arrange them into trees.
pub(crate) struct Blocks<'a> {
    pub kind: Kind,
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
        // With unit_aware, d^k out / d w_p (d w_q) carries unit(out) / (unit(w_p) unit(w_q)).
        // The block of output `o` over row variable `row` (and column variable `col`).
        let block = |o: usize, row: usize, col: Option<usize>| -> Node {
            let output = match col {
                None => Output::Jacobian { out: o, wrt: row },
                Some(col) => Output::Hessian {
                    out: o,
                    wrt: (row, col),
                },
            };
            let tensor = &self.blocks[self.compiled.blocks[&output]];
            if !self.unit_aware {
                return Node::Leaf(tensor.clone());
            }
            let one = Unit::ONE;
            let unit = std::iter::once(row)
                .chain(col)
                .fold(self.compiled.output_units[o].unwrap_or(one), |u, p| {
                    u / self.compiled.wrt_units[p].unwrap_or(one)
                });
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
                if self.kind != Kind::Hessian {
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
        if self.kind == Kind::Grad {
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
