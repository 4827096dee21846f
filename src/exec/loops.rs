//! Running loops: the body is planned once, with the plan of the program around it, and run
//! step after step (see [`crate::primitives::Loop`] for what a loop computes).

use std::sync::Arc;

use super::Plan;
use super::flat_body::FlatBody;
use crate::error::Result;
use crate::primitives::Loop;
use crate::primitives::loops::run_steps;
use crate::storage::Data;

/// A loop equation ready to run: its parameters and its body's plan (and, for a small body
/// of `f64` values, its layout on flat buffers).
#[derive(Debug)]
pub(crate) struct LoopPlan {
    the_loop: Loop,
    body: Plan,
    flat: Option<FlatBody>,
}

impl LoopPlan {
    pub fn new(the_loop: &Loop) -> LoopPlan {
        let body = Plan::new((*the_loop.body).clone());
        LoopPlan {
            the_loop: the_loop.clone(),
            flat: FlatBody::new(&body.program, the_loop.carry, the_loop.n_stacked()),
            body,
        }
    }

    /// Runs the loop on its operands (`consts ++ init ++ xs`): the final carry, then the
    /// stacked per-step outputs. With `check_finite`, through the body's plan, which checks
    /// equation by equation. An operand that nothing else holds may lend its storage to an
    /// output.
    pub fn run(&self, ins: Vec<Arc<Data>>, check_finite: bool) -> Result<Vec<Data>> {
        if let (Some(flat), false) = (&self.flat, check_finite) {
            return flat.run(&self.the_loop, ins);
        }
        run_steps(&self.the_loop, &ins, &mut |inputs| {
            self.body.run(inputs, check_finite)
        })
    }
}

/// Runs a loop equation on concrete operands, outside any plan (a loop called eagerly).
pub(crate) fn run_loop(the_loop: &Loop, ins: &[Arc<Data>]) -> Result<Vec<Data>> {
    LoopPlan::new(the_loop).run(ins.to_vec(), false)
}
