//! Helpers shared by the integration tests (each test binary includes this module with
//! `mod common;` and uses what it needs).

#![allow(dead_code)]

pub mod harness;

use brainstate::{Error, Node, Tensor};
use serde_json::Value;

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

// ---------------------------------------------------------------------------------------------
// JSON fixtures.
// ---------------------------------------------------------------------------------------------

/// The JSON document `tests/fixtures/{file}`.
pub fn fixture(file: &str) -> Value {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// The `"shape"` of a fixture array, as dimensions.
pub fn json_shape(json: &Value) -> Vec<usize> {
    json["shape"]
        .as_array()
        .unwrap_or_else(|| panic!("expected an array leaf with a shape, got {json}"))
        .iter()
        .map(|d| d.as_u64().expect("dimension") as usize)
        .collect()
}

/// The list of numbers under `key` of a fixture array (`"data"`, `"re"`, `"im"`, ...).
pub fn json_numbers(json: &Value, key: &str) -> Vec<f64> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("expected an array leaf with {key:?}, got {json}"))
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}
