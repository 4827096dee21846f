//! Helpers shared by the integration tests (each test binary includes this module with
//! `mod common;` and uses what it needs).

#![allow(dead_code)]

pub mod fixtures;
pub mod harness;

use brainstate::{Error, Node, Tensor};

// ---------------------------------------------------------------------------------------------
// Small value helpers.
// ---------------------------------------------------------------------------------------------

pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().expect("concrete values")
}

#[track_caller]
pub fn leaf(node: &Node) -> &Tensor {
    node.tensor().expect("a leaf")
}

#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "index {i}: got {a}, expected {b} (tolerance {tol})\n got: {got:?}\nwant: {want:?}"
        );
    }
}

#[track_caller]
pub fn assert_mentions(e: &Error, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}
