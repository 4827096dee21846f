//! Helpers shared by the integration tests (each test binary includes this module with
//! `mod common;` and uses what it needs).

#![allow(dead_code)]

pub mod fixtures;
pub mod harness;

use brainstate::{Error, Node, Tensor};

// ---------------------------------------------------------------------------------------------
// Small value helpers.
// ---------------------------------------------------------------------------------------------

/// The analytic (tridiagonal) Hessian of Rosenbrock's function at `x`, dense (row-major).
pub fn rosen_hessian(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mut h = vec![0.0; n * n];
    for i in 0..n - 1 {
        h[i * n + i] += 1200.0 * x[i] * x[i] - 400.0 * x[i + 1] + 2.0;
        h[(i + 1) * n + i + 1] += 200.0;
        h[i * n + i + 1] -= 400.0 * x[i];
        h[(i + 1) * n + i] -= 400.0 * x[i];
    }
    h
}

pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().expect("concrete values")
}

#[track_caller]
pub fn leaf(node: &Node) -> &Tensor {
    node.tensor().expect("a leaf")
}

/// Whether sweeps may run chunks side by side: two or more processors, and rayon's thread
/// count not set from outside.
pub fn side_by_side_threads() -> bool {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads >= 2 && std::env::var("RAYON_NUM_THREADS").is_err()
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
// Child processes.
// ---------------------------------------------------------------------------------------------

/// Runs the test `entry` of this test binary alone in a child process, with `var` set to
/// `value` (the entry does its work only when it is set), and returns what it printed. The
/// child must exit normally; a signal means an abort.
#[track_caller]
pub fn child_output(entry: &str, var: &str, value: &str) -> String {
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([entry, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, value)
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{var}={value}: the child ended with {:?} (a signal means an abort)\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The resident memory this process has peaked at so far, in kB (Linux), from `/proc`.
pub fn peak_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The rest of the first line of `output` that holds `key`.
#[track_caller]
pub fn printed<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.split_once(key).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no {key:?} in {output}"))
}
