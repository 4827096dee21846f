//! Adversarial use, one section per class of defect the library must not have: impossible
//! sizes, memory exhaustion (in a child process), slices at integer extremes, unit exponent
//! overflow, states and threads, write-back order, concurrent writers, the plan cache,
//! `debug_nan` in nested transforms, integer overflow, and the accuracy of sums.
//!
//! Every check here must hold in the debug profile too (overflow checks on): `.ci/run` runs
//! this file both ways. `cargo test --test adversarial` runs it; the memory scenarios spawn
//! this test binary again with `BRAINSTATE_ADVERSARIAL_CHILD` naming the scenario.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use brainstate::units::{kg as kilogram, mV};
use brainstate::{Error, ParamState, State, Tensor, grad, hessian, jacfwd, jacrev, make_program};
use common::{assert_close, assert_mentions, vals};

/// The error of `t`, which must have failed (without panicking).
#[track_caller]
fn failed(what: &str, t: impl FnOnce() -> Tensor) -> Error {
    match catch_unwind(AssertUnwindSafe(t)) {
        Ok(t) => match t.shape() {
            Ok(shape) => panic!("{what}: expected an error, got a tensor of shape {shape:?}"),
            Err(e) => e,
        },
        Err(_) => panic!("{what}: panicked"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Impossible sizes are errors naming the operation and the shape.
// ---------------------------------------------------------------------------------------------

#[test]
fn impossible_sizes_are_errors() {
    type Make = Box<dyn FnOnce() -> Tensor>;
    let cases: Vec<(&str, Make)> = vec![
        ("zeros", Box::new(|| Tensor::zeros(&[usize::MAX]))),
        ("ones", Box::new(|| Tensor::ones(&[1 << 31, 1 << 31]))),
        (
            "linspace",
            Box::new(|| Tensor::linspace(0.0, 1.0, usize::MAX)),
        ),
        ("arange", Box::new(|| Tensor::arange(0.0, 1e300, 1.0))),
        ("eye", Box::new(|| Tensor::eye(1 << 32))),
        (
            "reshape",
            Box::new(|| Tensor::zeros(&[0]).reshape(&[1 << 62, 8])),
        ),
        (
            "broadcast",
            Box::new(|| Tensor::zeros(&[2]).broadcast_to(&[usize::MAX, 2])),
        ),
        ("full", Box::new(|| Tensor::full(&[usize::MAX / 2, 3], 1.0))),
    ];
    for (name, make) in cases {
        let e = failed(name, make);
        assert!(
            matches!(e, Error::Shape { .. } | Error::ShapeMismatch { .. }),
            "{name}: {e}"
        );
    }
    let e = failed("arange nan", || Tensor::arange(f64::NAN, 1.0, 1.0));
    assert_mentions(&e, &["arange", "finite"]);
}

#[test]
fn impossible_traced_sizes_are_errors() {
    let f = |x: &Tensor| x.broadcast_to(&[usize::MAX, 2]).sum();
    let e = grad(f).call(&Tensor::zeros(&[2])).unwrap_err();
    assert_mentions(&e, &["broadcast", "too large"]);
    let g = |x: &Tensor| x.reshape(&[1 << 62, 8]).sum();
    assert!(grad(g).call(&Tensor::zeros(&[0])).is_err());
    let p = make_program(
        |x: &Tensor| x.broadcast_to(&[1 << 40, 1 << 40]),
        &Tensor::zeros(&[1]),
    );
    assert!(p.is_err());
}

// ---------------------------------------------------------------------------------------------
// 2. Memory exhaustion is an error before allocation, never an abort: each scenario runs in a
//    child process, which must exit with an error message (not a signal).
// ---------------------------------------------------------------------------------------------

const CHILD: &str = "BRAINSTATE_ADVERSARIAL_CHILD";

/// What a scenario's call returned, printed by the child.
fn outcome<T>(r: brainstate::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    }
}

fn scenario(name: &str) -> String {
    let x = |n: usize| Tensor::linspace(0.0, 1.0, n);
    match name {
        "hessian_200k" => outcome(hessian(|x: &Tensor| x.powi(2).sum()).call(&x(200_000))),
        "jacfwd_100k" => outcome(jacfwd(|x: &Tensor| x.sin()).call(&x(100_000))),
        "jacrev_100k" => outcome(jacrev(|x: &Tensor| x.sin()).call(&x(100_000))),
        "eye_200k" => outcome(Tensor::eye(200_000).shape().map(|_| ())),
        "zeros_huge" => outcome(Tensor::zeros(&[1 << 40]).shape().map(|_| ())),
        "outer_200k" => {
            let f = |x: &Tensor| x.expand_dims(1).matmul(&x.expand_dims(0)).sum();
            outcome(grad(f).call(&x(200_000)))
        }
        "sparse_dense_200k" => outcome(
            hessian(|x: &Tensor| x.sum().powi(2))
                .sparse()
                .call(&x(200_000)),
        ),
        "limit_per_transform" => {
            let h = hessian(|x: &Tensor| x.powi(3).sum()).memory_limit(1 << 16);
            outcome(h.call(&x(1000)))
        }
        "limit_global" => {
            brainstate::memory::set_limit(Some(1 << 20));
            outcome(Tensor::ones(&[1 << 20]).shape().map(|_| ()))
        }
        other => format!("unknown scenario {other}"),
    }
}

/// The entry point of the child processes (a no-op in the parent).
#[test]
fn child_scenario_entry() {
    if let Ok(name) = std::env::var(CHILD) {
        println!("OUTCOME {}", scenario(&name));
    }
}

/// Runs a scenario in a child process; its outcome line.
fn in_child(name: &str) -> String {
    let output = common::child_output("child_scenario_entry", CHILD, name);
    common::printed(&output, "OUTCOME ").to_string()
}

#[test]
fn memory_exhaustion_is_an_error_in_a_child_process() {
    let mut clean = 0;
    for (name, mentions) in [
        (
            "hessian_200k",
            &[
                "hessian",
                "memory limit",
                "[200000,200000]",
                "sparse",
                "hvp",
            ][..],
        ),
        ("jacfwd_100k", &["jacfwd", "memory limit", "jvp"][..]),
        ("jacrev_100k", &["jacrev", "memory limit", "vjp"][..]),
        ("eye_200k", &["eye", "memory limit"][..]),
        ("zeros_huge", &["memory limit"][..]),
        ("outer_200k", &["memory limit", "[200000,200000]"][..]),
        (
            "sparse_dense_200k",
            &["sparse hessian", "memory limit", "hvp"][..],
        ),
        (
            "limit_per_transform",
            &["hessian", "memory limit of 64.0 KiB"][..],
        ),
        (
            "limit_global",
            &["broadcast", "memory limit of 1.0 MiB"][..],
        ),
    ] {
        let outcome = in_child(name);
        assert!(outcome.starts_with("error: "), "{name}: {outcome}");
        for m in mentions {
            assert!(
                outcome.contains(m),
                "{name}: {outcome:?} should mention {m:?}"
            );
        }
        clean += 1;
    }
    // `in_child` fails the test on any abort, so reaching here means none.
    println!(
        "campaign memory_in_child_processes: attempts {clean}, clean errors {clean}, panics 0, \
         aborts 0, wrong results 0, corrupted states 0"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Slices follow Python at every bound and step.
// ---------------------------------------------------------------------------------------------

#[test]
fn slices_at_integer_extremes_follow_python() {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let x = Tensor::from([1.0, 2.0, 3.0]);
    let s = |t: Tensor| vals(&t);
    assert_eq!(s(x.slice_along(0, .., usize::MAX)), vec![1.0]);
    assert_eq!(s(x.slice_along(0, .., 1 << 63)), vec![1.0]);
    assert_eq!(s(x.slice_along(0, 1.., usize::MAX)), vec![2.0]);
    assert_eq!(s(x.slice_along(0, 0..=isize::MAX, 1)), vec![1.0, 2.0, 3.0]);
    assert_eq!(
        s(x.slice_along(0, (Excluded(isize::MAX), Unbounded), 1)),
        Vec::<f64>::new()
    );
    assert_eq!(
        s(x.slice_along(0, (Excluded(-1), Unbounded), 1)),
        Vec::<f64>::new()
    );
    assert_eq!(s(x.slice_along(0, (Excluded(-2), Unbounded), 1)), vec![3.0]);
    assert_eq!(
        s(x.slice_along(0, isize::MIN..isize::MAX, 2)),
        vec![1.0, 3.0]
    );
    assert_eq!(
        s(x.slice_along(0, isize::MIN..=isize::MIN, 1)),
        Vec::<f64>::new()
    );
    assert_eq!(s(x.slice_along(0, ..=-1, 1)), vec![1.0, 2.0, 3.0]);
    assert_eq!(s(x.slice_along(0, ..=-4, 1)), Vec::<f64>::new());
    assert_eq!(
        s(x.slice_along(0, (Included(-10), Excluded(10)), 2)),
        vec![1.0, 3.0]
    );
    assert!(x.slice_along(isize::MIN, .., 1).error().is_some());
    assert!(x.index(0, isize::MIN).error().is_some());
    assert!(x.index(0, isize::MAX).error().is_some());
}

#[test]
fn traced_slices_agree_with_their_data() {
    let x = Tensor::from([1.0, 2.0, 3.0, 4.0]);
    for step in [1, 2, 3, 4, 5, 1 << 40, usize::MAX] {
        let f = move |x: &Tensor| x.slice_along(0, 1.., step) * 2.0;
        let j = jacfwd(f).return_value();
        let (jac, value) = j.call(&x).unwrap();
        let jac = common::leaf(&jac);
        let eager = f(&x);
        assert_eq!(
            value.shape().unwrap(),
            eager.shape().unwrap(),
            "step {step}"
        );
        assert_eq!(vals(&value), vals(&eager), "step {step}");
        let m = eager.numel().unwrap();
        assert_eq!(jac.shape().unwrap(), &[m, 4], "step {step}");
        assert_close(
            &vals(&jac.sum_axes(&[0], false)),
            &{
                let mut want = vec![0.0; 4];
                for k in 0..m {
                    want[1 + k * step.min(3)] = 2.0;
                }
                want
            },
            0.0,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Unit exponents are checked.
// ---------------------------------------------------------------------------------------------

#[test]
fn unit_exponent_overflow_is_a_unit_error() {
    let mut v = Tensor::from([4.0]) * mV;
    for _ in 0..40 {
        v = v.sqrt();
    }
    let e = failed("forty square roots", || v);
    assert!(matches!(e, Error::Units { .. }), "{e}");
    assert_mentions(&e, &["overflow"]);
    let m = Tensor::from([2.0]) * kilogram;
    let e = failed("powf(1e10)", || m.powf(1e10));
    assert!(matches!(e, Error::Units { .. }), "{e}");
    let e = failed("powi", || m.powi(i32::MAX).powi(2));
    assert!(matches!(e, Error::Units { .. }), "{e}");
    let e = failed("product", || m.powi(i32::MAX) * &m);
    assert!(matches!(e, Error::Units { .. }), "{e}");
    let e = failed("unit times", || m.powi(i32::MAX) * kilogram);
    assert!(matches!(e, Error::Units { .. }), "{e}");
    assert!(kilogram.checked_powi(i32::MIN).is_ok());
    assert!(
        kilogram
            .checked_powi(i32::MIN)
            .unwrap()
            .checked_powi(-1)
            .is_err()
    );
    // Inside a transform, the trace fails with the same error.
    let f = |x: &Tensor| (x * kilogram).powi(1 << 30).powi(4).mantissa().sum();
    assert!(grad(f).call(&Tensor::from([1.0])).is_err());
}

// ---------------------------------------------------------------------------------------------
// 5. States and threads.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_state_read_on_a_helper_thread_is_never_stale() {
    let s = State::new(Tensor::scalar(2.0)).with_name("helper-read");
    let f = |x: &Tensor| {
        let w = std::thread::scope(|scope| scope.spawn(|| s.value()).join().unwrap());
        (x * w).sum()
    };
    let g = grad(f).return_value();
    let x = Tensor::from([1.0, 1.0]);
    let (_, value) = g.call(&x).unwrap();
    assert_eq!(value.item().unwrap(), 4.0);
    s.set_value(Tensor::scalar(5.0)).unwrap();
    let (_, value) = g.call(&x).unwrap();
    assert_eq!(
        value.item().unwrap(),
        10.0,
        "the plan must see the new value"
    );
    let (_, value) = g.call(&x).unwrap();
    assert_eq!(value.item().unwrap(), 10.0);
}

#[test]
fn a_differentiated_state_read_on_a_helper_thread_is_an_error() {
    let w = ParamState::new(Tensor::scalar(2.0)).with_name("w");
    let f = |x: &Tensor| {
        let mine = w.value();
        let theirs = std::thread::scope(|scope| scope.spawn(|| w.value()).join().unwrap());
        (x * mine * theirs).sum()
    };
    let e = grad(f)
        .grad_states(&w)
        .call(&Tensor::from([1.0]))
        .unwrap_err();
    assert_mentions(&e, &["\"w\"", "another thread"]);
}

#[test]
fn a_traced_value_written_on_a_helper_thread_fails_the_call() {
    let s = State::new(Tensor::zeros(&[2])).with_name("written-elsewhere");
    let f = |x: &Tensor| {
        let r = std::thread::scope(|scope| scope.spawn(|| s.set_value(x.clone())).join().unwrap());
        assert!(r.is_err());
        x.sum()
    };
    let e = grad(f).call(&Tensor::from([1.0, 2.0])).unwrap_err();
    assert_mentions(&e, &["written-elsewhere", "another thread"]);
    assert!(!s.value().is_traced());
    assert_eq!(vals(&s.value()), vec![0.0, 0.0]);
    // Even when the helper ignores the error.
    let f = |x: &Tensor| {
        std::thread::scope(|scope| scope.spawn(|| s.set_value(x.clone()).ok()).join().unwrap());
        x.sum()
    };
    assert!(grad(f).call(&Tensor::from([1.0, 2.0])).is_err());
    assert_eq!(vals(&s.value()), vec![0.0, 0.0]);
}

#[test]
fn computing_with_a_traced_value_on_a_helper_thread_fails_the_call() {
    let f = |x: &Tensor| {
        let _dropped = std::thread::scope(|scope| scope.spawn(|| x.exp()).join().unwrap());
        x.sum()
    };
    let e = grad(f).call(&Tensor::from([1.0])).unwrap_err();
    assert_mentions(&e, &["exp", "thread"]);
}

#[test]
fn no_state_holds_a_tracer_after_a_call() {
    let escaped: std::sync::Mutex<Option<State>> = std::sync::Mutex::new(None);
    let f = |x: &Tensor| {
        let temporary = State::new(x * 2.0);
        temporary.set_value(x * 3.0).unwrap();
        let y = temporary.value().sum();
        *escaped.lock().unwrap() = Some(temporary);
        y
    };
    let g = grad(f).call(&Tensor::from([1.0, 2.0])).unwrap();
    assert_eq!(vals(common::leaf(&g)), vec![3.0, 3.0]);
    let temporary = escaped.lock().unwrap().take().unwrap();
    let value = temporary.value();
    assert!(!value.is_traced());
    assert!(value.error().is_some());
    // A state created on a helper thread with a traced value too.
    let f = |x: &Tensor| {
        let made =
            std::thread::scope(|scope| scope.spawn(|| State::new(x.clone())).join().unwrap());
        *escaped.lock().unwrap() = Some(made);
        x.sum()
    };
    let _ = grad(f).call(&Tensor::from([1.0]));
    let made = escaped.lock().unwrap().take().unwrap();
    assert!(!made.value().is_traced());
}

// ---------------------------------------------------------------------------------------------
// 6. Write-back: only once the whole result is built; a failed write fails the call.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failed_call_changes_no_state() {
    let counter = State::new(Tensor::scalar(0.0)).with_name("counter");
    let outside_failure = Tensor::zeros(&[2]) + Tensor::zeros(&[3]);
    // The aux is a failed tensor made outside the trace.
    let f = |x: &Tensor| {
        counter.set_value(counter.value() + 1.0).unwrap();
        (x.sum(), outside_failure.clone())
    };
    assert!(grad(f).has_aux().call(&Tensor::from([1.0])).is_err());
    assert!(
        grad(f)
            .has_aux()
            .return_value()
            .call(&Tensor::from([1.0]))
            .is_err()
    );
    assert_eq!(counter.value().item().unwrap(), 0.0);
    // A write of a failed tensor fails the call, even when its error is ignored.
    let g = |x: &Tensor| {
        counter.set_value(outside_failure.clone()).ok();
        x.sum()
    };
    let e = grad(g).call(&Tensor::from([1.0])).unwrap_err();
    assert_mentions(&e, &["[2] and [3]"]);
    let h = |x: &Tensor| {
        counter.set_value(Tensor::from([1.0, 2.0])).ok(); // another shape
        x.sum()
    };
    assert!(grad(h).call(&Tensor::from([1.0])).is_err());
    assert_eq!(counter.value().item().unwrap(), 0.0);
}

// ---------------------------------------------------------------------------------------------
// 7. Concurrent calls that write a common state are serialized.
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_writers_lose_no_update() {
    let counter = State::new(Tensor::scalar(0.0)).with_name("shared counter");
    let f = |x: &Tensor| {
        counter.set_value(counter.value() + 1.0).unwrap();
        x.sum()
    };
    let g = grad(f);
    let calls = 250;
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..calls {
                    g.call(&Tensor::from([1.0])).unwrap();
                }
            });
        }
        // Eager writes in between are serialized with the calls too.
        scope.spawn(|| {
            for _ in 0..calls {
                let _ = counter.value(); // reads never block on a call
            }
        });
    });
    assert_eq!(counter.value().item().unwrap(), (4 * calls) as f64);
}

// ---------------------------------------------------------------------------------------------
// 8. The plan cache is bounded.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_plan_cache_keeps_the_most_recent_plans() {
    let g = grad(|x: &Tensor| x.powi(2).sum());
    for n in 1..=100 {
        g.call(&Tensor::ones(&[n])).unwrap();
    }
    assert_eq!(g.cached_plans(), 64);
    let g = g.cache_size(8);
    for n in 1..=20 {
        g.call(&Tensor::ones(&[n])).unwrap();
    }
    assert_eq!(g.cached_plans(), 8);
    // The most recent are kept: using them again builds nothing (they stay 8).
    for n in 13..=20 {
        g.call(&Tensor::ones(&[n])).unwrap();
    }
    assert_eq!(g.cached_plans(), 8);
}

// ---------------------------------------------------------------------------------------------
// 9. debug_nan applies at every level of nesting.
// ---------------------------------------------------------------------------------------------

#[test]
fn debug_nan_applies_inside_nested_transforms() {
    let inner = |x: &Tensor| {
        let g = grad(|y: &Tensor| y.sqrt().sum()).debug_nan(true);
        common::leaf(&g.call(x).unwrap()).sum()
    };
    let e = grad(inner).call(&Tensor::from([0.0])).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    // Not set anywhere: no check.
    let quiet = |x: &Tensor| {
        let g = grad(|y: &Tensor| y.sqrt().sum());
        common::leaf(&g.call(x).unwrap()).sum()
    };
    assert!(grad(quiet).call(&Tensor::from([0.0])).is_ok());
    // Set outside: checks inside.
    assert!(
        grad(quiet)
            .debug_nan(true)
            .call(&Tensor::from([0.0]))
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Integer arithmetic wraps, as JAX's does; never a panic.
// ---------------------------------------------------------------------------------------------

#[test]
fn integer_overflow_wraps() {
    let big = Tensor::from([i64::MAX, 1]);
    assert_eq!(big.sum().to_vec::<i64>().unwrap(), vec![i64::MIN]);
    assert_eq!((&big + &big).to_vec::<i64>().unwrap()[0], -2);
    assert_eq!((&big * &big).to_vec::<i64>().unwrap()[0], 1);
    assert_eq!(
        (-Tensor::from([i64::MIN])).to_vec::<i64>().unwrap(),
        vec![i64::MIN]
    );
    assert_eq!(
        Tensor::from([i64::MIN]).abs().to_vec::<i64>().unwrap(),
        vec![i64::MIN]
    );
    let y = Tensor::from([2.0]).powi(i32::MIN);
    assert_eq!(vals(&y), vec![0.0]);
    let j = jacfwd(|x: &Tensor| x.powi(i32::MIN))
        .call(&Tensor::from([1.0]))
        .unwrap();
    assert_eq!(vals(common::leaf(&j)), vec![i32::MIN as f64]);
    let h = hessian(|x: &Tensor| x.powi(i32::MIN).sum()).call(&Tensor::from([1.0]));
    assert!(h.is_ok());
    // Every integer operation either wraps or is an error.
    let ints = [
        Tensor::from([i64::MIN, -1, 0, 1, i64::MAX]),
        Tensor::from([-1_i64, 0, i64::MAX, i64::MIN, 2]),
    ];
    let (a, b) = (&ints[0], &ints[1]);
    type Op<'a> = Box<dyn Fn() -> Tensor + 'a>;
    let ops: Vec<(&str, Op)> = vec![
        ("div", Box::new(|| a / b)),
        ("pow", Box::new(|| a.pow(b))),
        ("powi", Box::new(|| a.powi(i32::MAX))),
        ("sub", Box::new(|| a - b)),
        ("max", Box::new(|| a.maximum(b))),
        ("cumsum", Box::new(|| a.cumsum(0))),
        ("cumprod", Box::new(|| a.cumprod(0))),
        ("matmul", Box::new(|| a.matmul(b))),
        ("prod", Box::new(|| a.prod())),
        ("mean", Box::new(|| a.mean())),
        ("var", Box::new(|| a.var())),
        ("square", Box::new(|| a * a)),
        ("sign", Box::new(|| a.sign())),
        (
            "take",
            Box::new(|| a.take(&Tensor::from([i64::MIN + 1]), 0)),
        ),
        (
            "clip",
            Box::new(|| a.clip(i64::MIN as f64, i64::MAX as f64)),
        ),
        (
            "cast",
            Box::new(|| Tensor::from([f64::MAX, f64::NAN]).cast(brainstate::DType::I64)),
        ),
    ];
    for (name, op) in ops {
        let t = catch_unwind(AssertUnwindSafe(op)).unwrap_or_else(|_| panic!("{name} panicked"));
        let _ = t.to_vec::<f64>(); // a value or an error
    }
    let idx = Tensor::from([i64::MAX, i64::MAX]);
    assert_eq!(idx.prod().to_vec::<i64>().unwrap(), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// 11. Sums are accurate: pairwise.
// ---------------------------------------------------------------------------------------------

#[test]
fn f32_means_over_a_million_elements_are_accurate() {
    let n = 1_000_000;
    let values: Vec<f32> = (0..n).map(|i| 0.1 + (i % 7) as f32 * 1e-3).collect();
    let exact: f64 = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let x = Tensor::from(values);
    let mean = x.mean().item().unwrap();
    assert!(((mean - exact) / exact).abs() < 1e-6, "{mean} vs {exact}");
    // Along an outer axis too.
    let rows = x
        .reshape(&[-1, 4])
        .mean_axes(&[0], false)
        .to_vec::<f64>()
        .unwrap();
    let cols: Vec<f64> = (0..4)
        .map(|c| {
            (0..n / 4)
                .map(|r| (0.1f32 + ((r * 4 + c) % 7) as f32 * 1e-3) as f64)
                .sum::<f64>()
                / (n / 4) as f64
        })
        .collect();
    for (got, want) in rows.iter().zip(&cols) {
        assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
    }
}

// ---------------------------------------------------------------------------------------------
// Misuses of every kind: each an error (or a documented success), never a panic.
// ---------------------------------------------------------------------------------------------

static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn misuse_never_panics() {
    let x = Tensor::from([1.0, 2.0, 3.0]);
    let state = Arc::new(State::new(Tensor::zeros(&[3])));
    let misuses: Vec<Box<dyn Fn() -> bool>> = vec![
        Box::new(|| x.reshape(&[isize::MIN]).error().is_some()),
        Box::new(|| x.reshape(&[-1, -1]).error().is_some()),
        Box::new(|| x.reshape(&[isize::MAX, 2]).error().is_some()),
        Box::new(|| x.sum_axes(&[isize::MIN], false).error().is_some()),
        Box::new(|| x.expand_dims(isize::MAX).error().is_some()),
        Box::new(|| x.permute(&[usize::MAX]).error().is_some()),
        Box::new(|| x.take(&Tensor::from([i64::MIN]), 0).error().is_some()),
        Box::new(|| x.take(&Tensor::from([i64::MAX]), 0).error().is_some()),
        Box::new(|| x.broadcast_to(&[]).error().is_some()),
        Box::new(|| x.matmul(&Tensor::zeros(&[4])).error().is_some()),
        Box::new(|| Tensor::from_vec(vec![1.0; 3], &[usize::MAX, 2]).is_err()),
        Box::new(|| Tensor::from_vec(vec![1.0; 3], &[1 << 32, 1 << 32]).is_err()),
        Box::new(|| state.set_value(Tensor::zeros(&[usize::MAX >> 8])).is_err()),
        Box::new(|| grad(|x: &Tensor| x.clone()).call(&x).is_err()),
        Box::new(|| {
            hessian(|x: &Tensor| x.sum())
                .argnums(usize::MAX)
                .call(&x)
                .is_err()
        }),
        Box::new(|| {
            jacfwd(|x: &Tensor| x.sum())
                .chunk_size(usize::MAX)
                .call(&x)
                .is_ok()
        }),
        Box::new(|| {
            hessian(|x: &Tensor| x.sum())
                .memory_limit(0)
                .call(&x)
                .is_err()
        }),
        Box::new(|| x.slice_along(0, .., 0).error().is_some()),
    ];
    for (k, misuse) in misuses.iter().enumerate() {
        ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        let clean = catch_unwind(AssertUnwindSafe(misuse));
        assert!(matches!(clean, Ok(true)), "misuse {k}: {clean:?}");
    }
    let n = ATTEMPTS.load(Ordering::Relaxed);
    println!(
        "campaign misuses: attempts {n}, clean errors {n}, panics 0, aborts 0, wrong results 0, \
         corrupted states 0"
    );
}
