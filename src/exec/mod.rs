//! Execution: simplifying a program, planning it, and running it on concrete data.
//!
//! [`simplify`] folds small constant subprograms, merges common subexpressions, removes dead
//! equations and renumbers variables. A [`Plan`] is a simplified program with, for every
//! equation, the buffers that die after it, so that running frees memory as early as possible
//! and reuses dying buffers in place. The transforms never look inside this module: they
//! produce programs, and this runs them.

mod accumulate;
mod batch;
mod coefficients;
mod flat_body;
mod fuse;
mod hoist;
mod loops;
mod one_hot;
mod plan;
mod simplify;
mod sweep;
mod tile;

pub(crate) use self::batch::BatchSplit;
pub(crate) use self::loops::run_loop;
pub(crate) use self::plan::Plan;
pub(crate) use self::simplify::simplify;
pub(crate) use self::sweep::{Mirror, Sweep};
