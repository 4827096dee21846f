#![doc = include_str!("../README.md")]
//!
//! ## Modules
//!
//! - [`transform`]: `hessian`, `grad`, `jacrev`, `jacfwd`, `make_program` and the
//!   [`GradientTransform`] with its plan cache;
//! - [`tensor`]: tensors and the user-level operations, compositions of primitives;
//! - [`state`]: states, `GradStates` and collecting a model's states ([`HasStates`]);
//! - [`tree`]: trees of tensors (pytrees) and the [`Node`] results;
//! - [`flat`]: flat vectors and back ([`ravel`]), flat steps and snapshots of states;
//! - [`unit`](mod@unit): physical units;
//! - [`primitives`] and [`ir`]: the primitive set with its rules, and programs;
//! - [`memory`]: checked sizes and the memory limit;
//! - [`error`]: the one error type.
//!
//! Conversions to `ndarray` arrays of a static rank, and with the features `nalgebra`, `faer`
//! and `npy` to those crates' matrices and NumPy files, are methods of [`Tensor`] and
//! [`Node`].

#![warn(missing_docs)]

// Lets `#[derive(Tree)]`, which names `brainstate::...`, work inside this crate too.
extern crate self as brainstate;

pub mod transform;

mod autodiff;
mod convert;
mod exec;
pub mod sparsity;

mod trace;

pub mod primitives;

pub mod ir;

mod simd;
mod storage;

pub mod error;
pub mod flat;
pub mod memory;
pub mod state;
pub mod tensor;
pub mod tree;
pub mod unit;

pub use brainstate_derive::{HasStates, Tree};

pub use error::{Error, Result};
pub use flat::{Snapshot, Unravel, ravel};
pub use num_complex::{Complex32, Complex64};
pub use primitives::{Program, Progress, ProgressReport};
pub use sparsity::{SparseHessian, SparsityPattern};
pub use state::{
    GradStates, HasStates, HiddenState, ParamState, ShortTermState, State, StateCollector,
    StateKind,
};
pub use storage::{Aval, DType, Element};
pub use tensor::{AxisRange, Operand, Tensor, concatenate, einsum, stack, where_};
pub use transform::{
    Argnums, Args, Function, GradientTransform, Pullback, Scan, checkpointed_for_loop, for_loop,
    grad, hessian, hessian_sparsity, hvp, jacfwd, jacrev, jvp, make_program, scan, vjp,
};
pub use tree::{Node, Tree, TreeDef};
pub use unit::{Unit, units};
