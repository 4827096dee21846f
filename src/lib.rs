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
//! Modules, in the order data flows through them: [`tensor`] (values and user operations),
//! [`primitives`] (the primitive set and its rules), `trace` (recording programs), [`ir`]
//! (programs), `autodiff` (program transforms), `exec` (simplify, plan, run), [`tree`]
//! (pytrees), [`transform`] (the user-facing transforms).

#![warn(missing_docs)]

// Lets `#[derive(Tree)]`, which names `brainstate::...`, work inside this crate too.
extern crate self as brainstate;

mod autodiff;
pub mod error;
mod exec;
pub mod ir;
pub mod primitives;
pub mod state;
pub mod tensor;
mod trace;
pub mod transform;
pub mod tree;
pub mod unit;

pub use brainstate_derive::Tree;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use error::{Error, Result};
pub use ir::Program;
pub use num_complex::{Complex32, Complex64};
pub use state::{GradStates, HiddenState, ParamState, ShortTermState, State, StateKind};
pub use tensor::{Aval, AxisRange, DType, Element, Operand, Tensor, concatenate, stack, where_};
pub use transform::{
    Argnums, Args, Function, GradientTransform, grad, hessian, jacfwd, jacrev, make_program,
};
pub use tree::{Node, Tree, TreeDef};
pub use unit::{Unit, units};
