//! The benchmark cases reproduce the reference checksums (JAX, float64) to 1e-9 relative.
//! The largest Rosenbrock cases are left to the benchmark runner to keep the suite fast.

#[path = "../benches/cases.rs"]
mod cases;

#[test]
fn suite_cases_reproduce_reference_checksums() {
    for (name, sum, frobenius) in cases::REFERENCE {
        if name == "rosen_n1024" || name == "rosen_n4096" {
            continue;
        }
        let case = cases::build(name).expect("known case");
        let (got_sum, got_frobenius) = cases::checksums(&case());
        let off = |a: f64, b: f64| (a - b).abs() / b.abs();
        assert!(
            off(got_sum, sum) < 1e-9,
            "{name}: checksum {got_sum} vs {sum}"
        );
        assert!(
            off(got_frobenius, frobenius) < 1e-9,
            "{name}: frobenius {got_frobenius} vs {frobenius}"
        );
        // A second call runs the cached plan and must agree exactly.
        assert_eq!(
            cases::checksums(&case()),
            (got_sum, got_frobenius),
            "{name}: cached call"
        );
    }
}
