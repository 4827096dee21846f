//! Helpers shared by the integration tests (each test binary includes this module with
//! `mod common;` and uses what it needs).

#![allow(dead_code)]

use std::cell::Cell;
use std::fmt::LowerExp;
use std::ops::Sub;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use brainstate::{Complex64, Error, Node, Tensor};
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

// ---------------------------------------------------------------------------------------------
// The finite-difference harness (tests/rules.rs, tests/complex.rs).
// ---------------------------------------------------------------------------------------------

/// A 64-bit linear congruential generator (Knuth's MMIX constants), high bits as output.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        let mut rng = Lcg(seed ^ 0x9E37_79B9_7F4A_7C15);
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn sign(&mut self) -> f64 {
        if self.unit() < 0.5 { -1.0 } else { 1.0 }
    }
}

/// FNV-1a, to give each row its own seed.
pub fn seed_of(name: &str, case: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(case.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn cat(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter().chain(b).copied().collect()
}

/// A value the harness compares: `f64` or `Complex64`.
pub trait Scalar: Copy + Sub<Output = Self> + LowerExp {
    /// `|x|`.
    fn magnitude(self) -> f64;
}

impl Scalar for f64 {
    fn magnitude(self) -> f64 {
        self.abs()
    }
}

impl Scalar for Complex64 {
    fn magnitude(self) -> f64 {
        self.norm()
    }
}

/// Compares `got` with `want`, reporting the worst mismatch (measured as
/// `|got - want| / (1 + |want|)`).
pub fn close<T: Scalar>(what: &str, got: &[T], want: &[T], tol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).magnitude() / (1.0 + w.magnitude());
        let err = if err.is_nan() { f64::INFINITY } else { err };
        if worst.is_none_or(|(_, e)| err > e) {
            worst = Some((i, err));
        }
    }
    match worst {
        Some((i, err)) if err > tol => Err(format!(
            "{what}: worst mismatch at flat index {i}: got {:.12e}, expected {:.12e} \
             (relative error {err:.2e}, tolerance {tol:.0e})",
            got[i], want[i]
        )),
        _ => Ok(()),
    }
}

thread_local! {
    /// Whether the panic hook stays silent on this thread (inside [`guarded`]).
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs a check, turning a panic into an error (reported with the failures, so the panic hook
/// is silenced meanwhile on this thread).
pub fn guarded(check: &dyn Fn() -> Result<(), String>) -> Result<(), String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|q| q.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(check));
    QUIET.with(|q| q.set(was_quiet));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }
    }
}

/// A row of a harness table: an operation checked on several shape cases.
pub trait TableRow {
    fn name(&self) -> &str;
    fn cases(&self) -> &[Vec<Vec<usize>>];
    /// Runs every check of the row on one shape case.
    fn check(&self, case: usize, shapes: &[Vec<usize>]) -> Result<(), String>;
}

/// Runs every row on every shape case and fails with the list of all failures.
pub fn run_table<R: TableRow>(rows: Vec<R>) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in &rows {
        for (case, shapes) in row.cases().iter().enumerate() {
            checked += 1;
            let Err(message) = guarded(&|| row.check(case, shapes)) else {
                continue;
            };
            failures.push(format!(
                "  {} with input shapes {:?}: {message}",
                row.name(),
                shapes
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} (operation, shape case) pairs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
