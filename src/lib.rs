//! # brainstate-rs
//!
//! Exact second derivatives of Rust closures over tensors: a Rust port of
//! `brainstate.transform.hessian`, built JAX's way. A function is traced into a [`Program`] of
//! a small set of primitives; differentiation maps programs to programs (forward mode with a
//! batched tangent basis, reverse mode by linearise-then-transpose); the derivative program is
//! simplified, planned once per argument signature, and run.
//!
//! ```
//! use brainstate::{hessian, Tensor};
//!
//! let rosen = |x: &Tensor| {
//!     let head = x.slice_along(0, ..-1, 1);
//!     let tail = x.slice_along(0, 1.., 1);
//!     ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
//! };
//! let h = hessian(rosen).call(&Tensor::from([1.0, 1.0])).unwrap();
//! let h = h.tensor().unwrap().to_vec::<f64>().unwrap();
//! assert_eq!(h, vec![802.0, -400.0, -400.0, 200.0]);
//! ```
//!
//! The modules, from the user's call down to the storage floor (each imports only those below
//! it, but for the loop that is inherent: rules are written with tensor operations, which
//! trace back into primitives, as JAX's rules call `bind`):
//! - [`transform`]: `hessian`, `grad`, `jacrev`, `jacfwd` and the transform object with its
//!   plan cache;
//! - `autodiff` (forward mode, reverse mode, Jacobian and Hessian programs) and `exec`
//!   (simplify, plan, run);
//! - `trace`: recording user code as a program;
//! - [`primitives`]: the primitive set, one family per file, each with its rules;
//! - [`ir`]: programs as graphs, and the passes over their structure;
//! - `storage`: dtypes, abstract values, arrays and the buffer pool.
//!
//! Beside them: [`tensor`] (values and user-level operations), [`state`], [`tree`] (pytrees),
//! [`unit`](mod@unit) (physical units) and [`error`].

#![warn(missing_docs)]

// Lets `#[derive(Tree)]`, which names `brainstate::...`, work inside this crate too.
extern crate self as brainstate;

pub mod transform;

mod autodiff;
mod convert;
mod exec;

mod trace;

pub mod primitives;

pub mod ir;

mod storage;

pub mod error;
pub mod flat;
pub mod state;
pub mod tensor;
pub mod tree;
pub mod unit;

pub use brainstate_derive::{HasStates, Tree};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use error::{Error, Result};
pub use flat::{Snapshot, Unravel, ravel};
pub use num_complex::{Complex32, Complex64};
pub use primitives::Program;
pub use state::{
    GradStates, HasStates, HiddenState, ParamState, ShortTermState, State, StateCollector,
    StateKind,
};
pub use storage::{Aval, DType, Element};
pub use tensor::{AxisRange, Operand, Tensor, concatenate, einsum, stack, where_};
pub use transform::{
    Argnums, Args, Function, GradientTransform, grad, hessian, jacfwd, jacrev, make_program,
};
pub use tree::{Node, Tree, TreeDef};
pub use unit::{Unit, units};
