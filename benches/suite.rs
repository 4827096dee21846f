//! The standard Hessian suite of `../shared/BENCHMARKS.md`, through the public API.
//!
//! `cargo bench --bench suite -- --json` prints one JSON line per case (and a last line with
//! the process's peak memory); `--cases rosen_n16,rosen_n128` runs a subset. Without `--json`
//! it prints a readable table.

use std::time::Instant;

mod cases;

use brainstate::Complex64;
use cases::{Outcome, checksums};

const ENGINE: &str = concat!("brainstate-rs ", env!("CARGO_PKG_VERSION"));

/// What one case measured.
struct Measured {
    first_call_s: f64,
    median_s: f64,
    reps: usize,
    checksum: Complex64,
    complex: bool,
    frobenius: f64,
    nnz: Option<usize>,
}

/// The timed calls of a case span about this long (see [`repetitions`]).
const WINDOW_S: f64 = 0.3;
/// The most timed calls of a case.
const MAX_REPS: usize = 5000;

/// Timed calls for a case whose warm call took `call_s`: the minimum of BENCHMARKS.md (30
/// under 10 ms, else 5), or enough to span [`WINDOW_S`], so that a short burst of load on the
/// shared machine does not move the median. `tools/bench_jax.py` uses the same rule.
fn repetitions(call_s: f64) -> usize {
    let least = if call_s < 0.01 { 30 } else { 5 };
    let spanning = (WINDOW_S / call_s.max(1e-9)).ceil() as usize;
    least.max(spanning.min(MAX_REPS))
}

/// Times `call` as the suite asks: the first call, then the median of enough further calls.
fn measure(call: impl Fn() -> Outcome) -> Measured {
    let start = Instant::now();
    let result = call();
    let first_call_s = start.elapsed().as_secs_f64();
    let (checksum, frobenius) = checksums(&result);
    let complex = result
        .values
        .iter()
        .any(|t| t.dtype().is_ok_and(|d| d.is_complex()));
    let probe = Instant::now();
    call();
    let reps = repetitions(probe.elapsed().as_secs_f64());
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(call());
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Measured {
        first_call_s,
        median_s: times[reps / 2],
        reps,
        checksum,
        complex,
        frobenius,
        nnz: result.nnz,
    }
}

/// Peak resident memory of this process, from `/proc` (Linux).
fn maxrss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let all: Vec<&str> = cases::REFERENCE.iter().map(|r| r.0).collect();
    // The names after `--cases`, separated by commas or spaces (`a,b` or `a, b`).
    let cases: Vec<String> = match args.iter().position(|a| a == "--cases") {
        Some(i) => args[i + 1..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .flat_map(|a| a.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect(),
        None => all.iter().map(|s| s.to_string()).collect(),
    };
    for case in &cases {
        let Some(m) = cases::build(case).map(measure) else {
            eprintln!("unknown case {case}; known: {}", all.join(", "));
            std::process::exit(2);
        };
        if let Some((_, sum, frob)) = cases::REFERENCE.iter().find(|r| r.0 == case) {
            let sum = Complex64::new(sum[0], sum[1]);
            if (m.checksum - sum).norm() > 1e-9 * sum.norm()
                || (m.frobenius - frob).abs() > 1e-9 * frob
            {
                eprintln!("warning: {case} differs from the reference ({sum}, {frob})");
            }
        }
        let checksum_json = if m.complex {
            format!("[{:?}, {:?}]", m.checksum.re, m.checksum.im)
        } else {
            format!("{:?}", m.checksum.re)
        };
        if let Some((_, nnz)) = cases::NNZ.iter().find(|r| r.0 == case)
            && m.nnz != Some(*nnz)
        {
            eprintln!(
                "warning: {case} stores {:?} entries, the reference {nnz}",
                m.nnz
            );
        }
        let nnz_json = m.nnz.map(|n| format!(", \"nnz\": {n}")).unwrap_or_default();
        if json {
            println!(
                "{{\"case\": \"{case}\", \"engine\": \"{ENGINE}\", \"first_call_s\": {:e}, \"median_s\": {:e}, \"reps\": {}, \"checksum\": {}, \"frobenius\": {:?}{nnz_json}}}",
                m.first_call_s, m.median_s, m.reps, checksum_json, m.frobenius
            );
        } else {
            println!(
                "{case:<18} first {:>10.6} s   median {:>12.9} s ({} reps)   checksum {checksum_json}   frobenius {:.12e}",
                m.first_call_s, m.median_s, m.reps, m.frobenius
            );
        }
    }
    if json && let Some(mb) = maxrss_mb() {
        println!("{{\"engine\": \"{ENGINE}\", \"maxrss_mb\": {mb:.1}}}");
    }
}
