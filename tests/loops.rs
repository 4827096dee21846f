//! Loops: `scan`, `for_loop` and checkpointed loops, against their unrolled equivalents and
//! finite differences, through every transform; states carried and written back; `reverse`
//! and `length`; the printed program; progress reports; bad input.

mod common;

use std::sync::{Arc, Mutex};

use brainstate::{
    DType, Error, ParamState, Progress, Scan, State, Tensor, checkpointed_for_loop, for_loop, grad,
    hessian, hessian_sparsity, hvp, jacfwd, jacrev, make_program, scan, stack,
};
use common::{assert_close, leaf, vals};

const T: usize = 12;

/// Per-step inputs: `T` rows of 3.
fn inputs(steps: usize) -> Tensor {
    let v: Vec<f64> = (0..steps * 3).map(|k| (0.37 * k as f64).sin()).collect();
    Tensor::from_vec(v, &[steps, 3]).unwrap()
}

fn rows(xs: &Tensor) -> Vec<Tensor> {
    let n = xs.shape().unwrap()[0];
    (0..n)
        .map(|t| {
            xs.slice_along(0, t as isize..t as isize + 1, 1)
                .reshape(&[3])
        })
        .collect()
}

fn weights() -> Tensor {
    Tensor::from([[0.3, -0.2, 0.1], [0.05, 0.4, -0.3], [-0.1, 0.2, 0.25]])
}

/// One step of a small recurrent network with a parameter vector `p`.
fn step(w: &Tensor, p: &Tensor, h: &Tensor, x: &Tensor) -> Tensor {
    h + (-h + (w.matmul(h) + x * p).tanh()) * 0.3
}

fn looped(w: &Tensor, p: &Tensor, xs: &Tensor, reverse: bool) -> (Tensor, Tensor) {
    let body = |h: &Tensor, x: &Tensor| {
        let next = step(w, p, h, x);
        let y = next.powi(2).sum();
        (next, y)
    };
    Scan::new()
        .reverse(reverse)
        .scan(body, &Tensor::from([0.1, -0.2, 0.3]), xs)
        .unwrap()
}

fn unrolled(w: &Tensor, p: &Tensor, xs: &Tensor, reverse: bool) -> (Tensor, Tensor) {
    let mut h = Tensor::from([0.1, -0.2, 0.3]);
    let rows = rows(xs);
    let mut ys = vec![Tensor::scalar(0.0); rows.len()];
    let order: Vec<usize> = if reverse {
        (0..rows.len()).rev().collect()
    } else {
        (0..rows.len()).collect()
    };
    for t in order {
        h = step(w, p, &h, &rows[t]);
        ys[t] = h.powi(2).sum();
    }
    (h, stack(&ys, 0))
}

/// A scalar loss of the final carry and the per-step outputs (weighted by index, so that the
/// order of the outputs matters).
fn loss(out: (Tensor, Tensor)) -> Tensor {
    let (h, ys) = out;
    let n = ys.shape().unwrap()[0];
    let weights = Tensor::from_vec((0..n).map(|t| 1.0 + 0.1 * t as f64).collect(), &[n]).unwrap();
    (h - 0.2).powi(2).sum() + (ys * weights).sum() * 0.1
}

fn p0() -> Tensor {
    Tensor::from([0.7, -0.4, 1.1])
}

fn node_vals(node: &brainstate::Node) -> Vec<f64> {
    node.leaves().iter().flat_map(vals).collect()
}

#[test]
fn scan_matches_its_unrolled_loop_through_every_transform() {
    let (w, xs, p) = (weights(), inputs(T), p0());
    for reverse in [false, true] {
        let f = |p: &Tensor| loss(looped(&w, p, &xs, reverse));
        let u = |p: &Tensor| loss(unrolled(&w, p, &xs, reverse));
        let last = |p: &Tensor| looped(&w, p, &xs, reverse).0;
        let last_u = |p: &Tensor| unrolled(&w, p, &xs, reverse).0;
        // Values, eagerly and per-step outputs in their index.
        let (a, b) = (looped(&w, &p, &xs, reverse), unrolled(&w, &p, &xs, reverse));
        assert_close(&vals(&a.0), &vals(&b.0), 1e-14);
        assert_close(&vals(&a.1), &vals(&b.1), 1e-14);
        let tol = 1e-12;
        let g = grad(f).call(&p).unwrap();
        assert_close(
            &vals(leaf(&g)),
            &vals(leaf(&grad(u).call(&p).unwrap())),
            tol,
        );
        let jr = jacrev(last).call(&p).unwrap();
        assert_close(
            &vals(leaf(&jr)),
            &vals(leaf(&jacrev(last_u).call(&p).unwrap())),
            tol,
        );
        let jf = jacfwd(last).call(&p).unwrap();
        assert_close(&vals(leaf(&jf)), &vals(leaf(&jr)), tol);
        let h = hessian(f).call(&p).unwrap();
        let hu = hessian(u).call(&p).unwrap();
        assert_close(&vals(leaf(&h)), &vals(leaf(&hu)), tol);
        let v = Tensor::from([0.3, -1.0, 0.5]);
        let hv = hvp(f).call(&p, &v).unwrap();
        assert_close(
            &vals(leaf(&hv)),
            &vals(leaf(&hvp(u).call(&p, &v).unwrap())),
            tol,
        );
        let sparse = hessian(f).sparse().call(&p).unwrap();
        assert_close(&vals(&sparse.to_dense().unwrap()), &vals(leaf(&hu)), tol);
    }
}

#[test]
fn derivatives_through_a_loop_match_finite_differences() {
    let (w, xs, p) = (weights(), inputs(T), p0());
    let f = |p: &Tensor| loss(looped(&w, p, &xs, false));
    let eps = 1e-5;
    let shifted = |k: usize, by: f64| {
        let mut v = vals(&p);
        v[k] += by;
        Tensor::from_vec(v, &[3]).unwrap()
    };
    let g = vals(leaf(&grad(f).call(&p).unwrap()));
    let h = vals(leaf(&hessian(f).call(&p).unwrap()));
    for k in 0..3 {
        let fd = (f(&shifted(k, eps)).item().unwrap() - f(&shifted(k, -eps)).item().unwrap())
            / (2.0 * eps);
        assert!((g[k] - fd).abs() < 1e-8, "grad {k}: {} vs {fd}", g[k]);
        let gp = vals(leaf(&grad(f).call(&shifted(k, eps)).unwrap()));
        let gm = vals(leaf(&grad(f).call(&shifted(k, -eps)).unwrap()));
        for j in 0..3 {
            let fd = (gp[j] - gm[j]) / (2.0 * eps);
            assert!(
                (h[j * 3 + k] - fd).abs() < 1e-7,
                "hessian {j},{k}: {} vs {fd}",
                h[j * 3 + k]
            );
        }
    }
}

#[test]
fn states_read_in_the_body_are_differentiated_like_arguments() {
    let (xs, p) = (inputs(T), p0());
    let w = ParamState::new(weights());
    let f = |p: &Tensor| loss(looped(&w.value(), p, &xs, false));
    let u = |p: &Tensor| loss(unrolled(&w.value(), p, &xs, false));
    let g = grad(f).grad_states(&w).call(&p).unwrap();
    let gu = grad(u).grad_states(&w).call(&p).unwrap();
    assert_close(&node_vals(&g), &node_vals(&gu), 1e-12);
    let h = hessian(f).grad_states(&w).call(&p).unwrap();
    let hu = hessian(u).grad_states(&w).call(&p).unwrap();
    assert_close(&node_vals(&h), &node_vals(&hu), 1e-12);
    let pattern = hessian_sparsity(f).grad_states(&w).call(&p).unwrap();
    assert_eq!(pattern.nnz(), 81); // the recurrence couples every weight
    assert_eq!(vals(&w.value()), vals(&weights())); // read, never written
}

#[test]
fn sparsity_through_a_loop_is_a_fixed_point_of_the_body() {
    // Elementwise recurrence: each carry entry depends on its own parameter only.
    let g = |p: &Tensor| {
        let xs = Tensor::from_vec((0..20).map(|k| 0.1 * k as f64).collect(), &[4, 5]).unwrap();
        let body = |h: &Tensor, x: &Tensor| ((h * p).sin() + x, h.powi(2));
        let (h, ys) = scan(body, &Tensor::ones(&[5]), &xs).unwrap();
        h.sum() + ys.sum()
    };
    let p = Tensor::from([0.3, 0.5, -0.2, 0.9, 1.3]);
    let pattern = hessian_sparsity(g).call(&p).unwrap();
    assert_eq!(pattern.nnz(), 5, "diagonal");
    let sparse = hessian(g).sparse().call(&p).unwrap();
    let dense = hessian(g).call(&p).unwrap();
    assert_close(
        &vals(&sparse.to_dense().unwrap()),
        &vals(leaf(&dense)),
        1e-12,
    );
}

#[test]
fn states_written_in_the_body_are_carried_and_written_back() {
    let xs = Tensor::from([1.0, 2.0, -1.0, 0.5]);
    // A state read and written (carried), and one only written.
    let v = State::new(Tensor::scalar(0.5));
    let last = State::new(Tensor::scalar(0.0));
    let looped = |p: &Tensor| {
        let ys = for_loop(
            |x: &Tensor| {
                v.set_value(v.value() * p + x).unwrap();
                last.set_value(x * 2.0).unwrap();
                v.value().powi(2)
            },
            &xs,
        )
        .unwrap();
        ys.sum()
    };
    let v2 = State::new(Tensor::scalar(0.5));
    let last2 = State::new(Tensor::scalar(0.0));
    let unrolled = |p: &Tensor| {
        let mut total = Tensor::scalar(0.0);
        for x in vals(&xs) {
            v2.set_value(v2.value() * p + x).unwrap();
            last2.set_value(Tensor::scalar(x * 2.0)).unwrap();
            total = total + v2.value().powi(2);
        }
        total
    };
    let p = Tensor::scalar(0.8);
    // Eagerly.
    assert_close(&vals(&looped(&p)), &vals(&unrolled(&p)), 1e-14);
    assert_close(&vals(&v.value()), &vals(&v2.value()), 1e-14);
    assert_eq!(vals(&last.value()), vec![1.0]);
    assert_eq!(vals(&last2.value()), vec![1.0]);
    // Through transforms: same derivatives, and the states are written back after each call
    // as the unrolled loop's are.
    for _ in 0..2 {
        let g = grad(looped).call(&p).unwrap();
        let gu = grad(unrolled).call(&p).unwrap();
        assert_close(&vals(leaf(&g)), &vals(leaf(&gu)), 1e-12);
        assert_close(&vals(&v.value()), &vals(&v2.value()), 1e-12);
        let h = hessian(looped).call(&p).unwrap();
        let hu = hessian(unrolled).call(&p).unwrap();
        assert_close(&vals(leaf(&h)), &vals(leaf(&hu)), 1e-12);
        assert_close(&vals(&v.value()), &vals(&v2.value()), 1e-12);
    }
    // The carried state's initial value is differentiable too.
    let g = grad(looped).grad_states(&v).call(&p).unwrap();
    let gu = grad(unrolled).grad_states(&v2).call(&p).unwrap();
    assert_close(&node_vals(&g), &node_vals(&gu), 1e-12);
    assert_close(&vals(&v.value()), &vals(&v2.value()), 1e-12);
}

#[test]
fn length_runs_a_loop_without_per_step_inputs() {
    let p = Tensor::scalar(0.9);
    let f = |p: &Tensor| {
        let body = |h: &Tensor, _: &()| ((h * p).cos(), h.clone());
        let (h, hs) = Scan::new()
            .length(7)
            .scan(body, &Tensor::scalar(0.2), &())
            .unwrap();
        h + hs.sum()
    };
    let u = |p: &Tensor| {
        let (mut h, mut total) = (Tensor::scalar(0.2), Tensor::scalar(0.0));
        for _ in 0..7 {
            total = total + &h;
            h = (&h * p).cos();
        }
        h + total
    };
    assert_close(&vals(&f(&p)), &vals(&u(&p)), 1e-14);
    let h = hessian(f).call(&p).unwrap();
    assert_close(
        &vals(leaf(&h)),
        &vals(leaf(&hessian(u).call(&p).unwrap())),
        1e-12,
    );
    // for_loop with a length: outputs stacked.
    let ones = Scan::new()
        .length(4)
        .for_loop(|_: &()| Tensor::ones(&[2]), &())
        .unwrap();
    assert_eq!(ones.shape().unwrap(), [4, 2]);
}

/// The first dimension of every stacked value (rank two and up) in a printed program.
fn stacked_lengths(text: &str) -> Vec<usize> {
    text.match_indices("f64[")
        .filter_map(|(at, _)| {
            let rest = &text[at + 4..];
            let dims = &rest[..rest.find(']')?];
            let (first, _) = dims.split_once(',')?;
            first.parse().ok()
        })
        .collect()
}

#[test]
fn checkpointed_loops_agree_with_plain_ones_and_store_few_carries() {
    let steps = 100;
    let run = |p: &Tensor, base: Option<usize>, reverse: bool| {
        let body = |h: &Tensor, x: &Tensor| ((h * p).sin() + x * 0.1, h.powi(2).sum());
        let s = Scan::new().reverse(reverse);
        let s = match base {
            Some(b) => s.checkpointed(b),
            None => s,
        };
        let xs = Tensor::from_vec(
            (0..steps * 2).map(|k| (0.1 * k as f64).cos()).collect(),
            &[steps, 2],
        )
        .unwrap();
        let (h, ys) = s.scan(body, &Tensor::from([0.1, 0.2]), &xs).unwrap();
        let weights = Tensor::linspace(0.0, 1.0, steps);
        h.sum() + (ys * weights).sum()
    };
    let p = Tensor::from([0.5, 0.7]);
    for reverse in [false, true] {
        let plain = |p: &Tensor| run(p, None, reverse);
        let (g, h) = (
            grad(plain).call(&p).unwrap(),
            hessian(plain).call(&p).unwrap(),
        );
        for base in [2, 3, 10, 99] {
            let ck = |p: &Tensor| run(p, Some(base), reverse);
            assert_close(&vals(&ck(&p)), &vals(&plain(&p)), 1e-13);
            assert_close(
                &vals(leaf(&grad(ck).call(&p).unwrap())),
                &vals(leaf(&g)),
                1e-12,
            );
            assert_close(
                &vals(leaf(&hessian(ck).call(&p).unwrap())),
                &vals(leaf(&h)),
                1e-12,
            );
        }
    }
    // Memory: reverse mode through the plain loop stores every step's values (stacked values
    // of `steps` rows); through the checkpointed one, no stored value has more rows than
    // the base: about `base` carries per level, `log_base(steps)` levels. (No per-step inputs
    // or outputs here, so that every stacked value is a stored residual.)
    let only_carry = |base: Option<usize>| {
        move |p: &Tensor| {
            let body = |h: &Tensor, _: &()| ((h * p).sin() + 0.1, ());
            let s = Scan::new().length(steps);
            let s = base.map_or(s.clone(), |b| s.checkpointed(b));
            s.scan(body, &Tensor::from([0.1, 0.2]), &())
                .unwrap()
                .0
                .sum()
        }
    };
    let plain = grad(only_carry(None)).program(&p).unwrap();
    assert!(stacked_lengths(&plain.to_string()).contains(&steps));
    for base in [3, 10] {
        let ck = grad(only_carry(Some(base))).program(&p).unwrap();
        let text = ck.to_string();
        let lengths = stacked_lengths(&text);
        assert!(!lengths.is_empty(), "{text}");
        assert!(lengths.iter().all(|&n| n <= base), "{lengths:?}\n{text}");
        let g = grad(only_carry(Some(base))).call(&p).unwrap();
        let gp = grad(only_carry(None)).call(&p).unwrap();
        assert_close(&vals(leaf(&g)), &vals(leaf(&gp)), 1e-12);
    }
    // checkpointed_for_loop, as brainstate's.
    let ys = checkpointed_for_loop(|x: &Tensor| x.exp(), &Tensor::zeros(&[50]), 4).unwrap();
    assert_eq!(vals(&ys), vec![1.0; 50]);
}

#[test]
fn progress_is_reported_through_a_callback() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let progress = Progress::callback(move |r| {
        sink.lock()
            .unwrap()
            .push((r.pass.to_string(), r.step, r.length, r.desc.to_string()))
    })
    .every(10)
    .desc("net");
    let xs = Tensor::zeros(&[25]);
    let s = Scan::new().progress(progress);
    s.for_loop(|x: &Tensor| x + 1.0, &xs).unwrap();
    let steps: Vec<usize> = seen.lock().unwrap().iter().map(|r| r.1).collect();
    assert_eq!(steps, vec![10, 20, 25]);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|r| r.0 == "scan" && r.2 == 25 && r.3 == "net")
    );
    // Through reverse mode: the loop and its reverse pass report.
    seen.lock().unwrap().clear();
    let f = |p: &Tensor| {
        let body = |h: &Tensor, x: &Tensor| ((h * p).sin() + x, ());
        s.scan(body, &Tensor::scalar(0.1), &xs).unwrap().0
    };
    grad(f).call(&Tensor::scalar(0.5)).unwrap();
    let passes: Vec<String> = seen.lock().unwrap().iter().map(|r| r.0.clone()).collect();
    assert!(passes.iter().any(|p| p.contains("transpose")), "{passes:?}");
    assert!(seen.lock().unwrap().iter().any(|r| r.1 == 25));
    // A checkpointed loop reports its steps in order up to the last.
    seen.lock().unwrap().clear();
    s.clone()
        .checkpointed(4)
        .for_loop(|x: &Tensor| x + 1.0, &xs)
        .unwrap();
    let steps: Vec<usize> = seen.lock().unwrap().iter().map(|r| r.1).collect();
    assert_eq!(steps.last(), Some(&25), "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
}

#[test]
fn the_printed_program_shows_one_loop_equation_with_its_body() {
    let program = |steps: usize| {
        let f = |p: &Tensor| {
            let body = |h: &Tensor, _: &()| (h + (h * p).tanh() * 0.1, ());
            Scan::new()
                .length(steps)
                .scan(body, &p.clone(), &())
                .unwrap()
                .0
                .sum()
        };
        (
            make_program(f, &p0()).unwrap(),
            hessian(f).program(&p0()).unwrap(),
        )
    };
    let (p10, h10) = program(10);
    let text = p10.to_string();
    assert_eq!(text.matches("scan[length=10").count(), 1, "{text}");
    assert!(
        text.contains("jaxpr={ lambda ") && text.contains("tanh"),
        "{text}"
    );
    assert_eq!(p10.len(), 2, "{text}"); // the loop and the sum
    // Program sizes do not depend on the number of steps, for the Hessian too.
    let (p2000, h2000) = program(2000);
    assert_eq!(p2000.len(), p10.len());
    assert_eq!(h2000.len(), h10.len());
    assert_eq!(
        h2000.to_string().lines().count(),
        h10.to_string().lines().count()
    );
    assert!(h2000.to_string().contains("length=2000"));
}

#[test]
fn bad_loops_give_clear_errors_and_change_no_state() {
    let s = State::new(Tensor::scalar(1.0));
    let before = || vals(&s.value());
    let xs = Tensor::from([1.0, 2.0, 3.0]);
    let check = |e: Error, parts: &[&str]| {
        common::assert_mentions(&e, parts);
        assert_eq!(before(), vec![1.0], "a failed loop wrote its state");
    };
    // The carry changes shape.
    let e = scan(
        |h: &Tensor, x: &Tensor| {
            s.set_value(s.value() + x).unwrap();
            (stack(&[h.clone(), h.clone()], 0), ())
        },
        &Tensor::scalar(0.0),
        &xs,
    )
    .unwrap_err();
    check(e, &["carry changes", "f64[]", "f64[2]"]);
    // The carry changes dtype.
    let e = scan(
        |h: &Tensor, x: &Tensor| {
            s.set_value(s.value() + x).unwrap();
            (h.cast(DType::F32), ())
        },
        &Tensor::scalar(0.0),
        &xs,
    )
    .unwrap_err();
    check(e, &["carry changes", "dtype"]);
    // Per-step inputs of different lengths.
    let e = for_loop(
        |(a, b): &(Tensor, Tensor)| {
            s.set_value(s.value() + a).unwrap();
            a + b
        },
        &(xs.clone(), Tensor::zeros(&[4])),
    )
    .unwrap_err();
    check(e, &["mismatched leading lengths", "3", "4"]);
    // A length that disagrees with the inputs, and none at all.
    let e = Scan::new()
        .length(5)
        .for_loop(|x: &Tensor| x * 2.0, &xs)
        .unwrap_err();
    check(e, &["length is 5", "3 steps"]);
    let e = Scan::new()
        .for_loop(|_: &()| Tensor::scalar(1.0), &())
        .unwrap_err();
    check(e, &["length"]);
    // A state created inside the body.
    let e = for_loop(
        |x: &Tensor| {
            s.set_value(s.value() + x).unwrap();
            let fresh = State::new(x * 2.0);
            fresh.value()
        },
        &xs,
    )
    .unwrap_err();
    check(e, &["created inside the loop body"]);
    // A body that panics.
    let e = for_loop(
        |x: &Tensor| -> Tensor {
            s.set_value(s.value() + x).unwrap();
            panic!("boom")
        },
        &xs,
    )
    .unwrap_err();
    check(e, &["boom"]);
    // Inside a transform: the call fails, and writes no state.
    let f = |p: &Tensor| {
        s.set_value(s.value() * p).unwrap();
        let r = scan(
            |h: &Tensor, x: &Tensor| {
                s.set_value(s.value() + x).unwrap();
                (stack(&[h.clone(), h.clone()], 0), ())
            },
            &Tensor::scalar(0.0),
            &xs,
        );
        match r {
            Ok((h, ())) => h.sum(),
            Err(_) => p * 1.0,
        }
    };
    let e = grad(f).call(&Tensor::scalar(2.0)).unwrap_err();
    check(e, &["carry changes"]);
    let e = hessian(f).call(&Tensor::scalar(2.0)).unwrap_err();
    check(e, &["carry changes"]);
    // And a good loop afterwards still works.
    let ok = for_loop(
        |x: &Tensor| {
            s.set_value(s.value() + x).unwrap();
            s.value()
        },
        &xs,
    )
    .unwrap();
    assert_eq!(vals(&ok), vec![2.0, 4.0, 7.0]);
    assert_eq!(before(), vec![7.0]);
}

/// A Hessian through a 2,000-step model (the exponential integrate-and-fire population of
/// `examples/neuron_units.rs`, in plain numbers: mV, ms, nS, pF, pA) over its three
/// parameters: the program's size does not depend on the number of steps, and the first call
/// (trace, differentiate, plan, run) is timed and printed
/// (`cargo test --release --test loops -- --nocapture hessian_through`).
#[test]
fn hessian_through_a_2000_step_neuron_model() {
    let g_l = ParamState::new(Tensor::scalar(10.0));
    let e_l = ParamState::new(Tensor::scalar(-65.0));
    let c = ParamState::new(Tensor::scalar(150.0));
    let input = Tensor::from([0.0, 40.0, 80.0, 120.0, 160.0, 200.0]);
    let model = |steps: usize| {
        let (g_l, e_l, c) = (g_l.clone(), e_l.clone(), c.clone());
        move |input: &Tensor| {
            let (g_l, e_l, c) = (g_l.value(), e_l.value(), c.value());
            let (v_t, delta_t, dt) = (-50.0, 2.0, 0.01);
            let body = |v: &Tensor, _: &()| {
                let spike = &g_l * delta_t * ((v - v_t) / delta_t).exp();
                let dv = (&g_l * (&e_l - v) + spike + input) / &c;
                (v + dv * dt, ())
            };
            let (v, ()) = Scan::new()
                .length(steps)
                .scan(body, &Tensor::full(&[6], -65.0), &())
                .unwrap();
            (v + 60.0).powi(2).mean()
        }
    };
    let params = brainstate::GradStates::from([("C", &c), ("E_L", &e_l), ("g_L", &g_l)]);
    let h = hessian(model(2000)).grad_states(params.clone());
    let start = std::time::Instant::now();
    let first = h.call(&input).unwrap();
    let elapsed = start.elapsed();
    println!("hessian through 2000 steps: first call {elapsed:?}");
    let again = std::time::Instant::now();
    h.call(&input).unwrap();
    println!(
        "hessian through 2000 steps: second call {:?}",
        again.elapsed()
    );
    assert_eq!(node_vals(&first).len(), 9);
    assert!(node_vals(&first).iter().all(|v| v.is_finite()));
    // The same Hessian as the unrolled loop's, on a shorter run.
    let short = hessian(model(50)).grad_states(params.clone());
    let unrolled = |input: &Tensor| {
        let (g_l, e_l, c) = (g_l.value(), e_l.value(), c.value());
        let mut v = Tensor::full(&[6], -65.0);
        for _ in 0..50 {
            let spike = &g_l * 2.0 * ((&v + 50.0) / 2.0).exp();
            let dv = (&g_l * (&e_l - &v) + spike + input) / &c;
            v = &v + dv * 0.01;
        }
        (v + 60.0).powi(2).mean()
    };
    let hu = hessian(unrolled)
        .grad_states(params.clone())
        .call(&input)
        .unwrap();
    assert_close(
        &node_vals(&short.call(&input).unwrap()),
        &node_vals(&hu),
        1e-10,
    );
    // Three scalar parameters run as one pass over their three directions; one sweep per
    // parameter gives the same Hessian.
    let swept = hessian(model(50)).grad_states(params.clone()).chunk_size(1);
    assert_close(
        &node_vals(&swept.call(&input).unwrap()),
        &node_vals(&hu),
        1e-10,
    );
    assert!(
        !short
            .program(&input)
            .unwrap()
            .to_string()
            .contains("sweeps")
    );
    assert!(
        swept
            .program(&input)
            .unwrap()
            .to_string()
            .contains("sweeps")
    );
    // Program size: the same for 50 and 2,000 steps.
    let (long, short) = (h.program(&input).unwrap(), short.program(&input).unwrap());
    assert_eq!(long.len(), short.len());
    assert_eq!(
        long.to_string().lines().count(),
        short.to_string().lines().count()
    );
}

/// The child process of [`a_hessian_through_100000_checkpointed_steps_runs_in_bounded_memory`]
/// (a no-op in the parent): the Hessian of a leaky neuron model's parameters through 100,000
/// steps, checkpointed with the base in `LONG_RUN_CHILD` (0: a plain loop), printed with the
/// process's peak resident memory.
#[test]
fn long_run_child_entry() {
    let Ok(base) = std::env::var(LONG_RUN_CHILD) else {
        return;
    };
    let base: usize = base.parse().expect("a base");
    let g_l = ParamState::new(Tensor::scalar(10.0));
    let e_l = ParamState::new(Tensor::scalar(-65.0));
    let c = ParamState::new(Tensor::scalar(150.0));
    let input = Tensor::from([0.0, 40.0, 80.0, 120.0, 160.0, 200.0]);
    let (g, e, cap) = (g_l.clone(), e_l.clone(), c.clone());
    let model = move |input: &Tensor| {
        let (g_l, e_l, c) = (g.value(), e.value(), cap.value());
        let body = |v: &Tensor, _: &()| {
            let dv = (&g_l * (&e_l - v) + input * ((v + 60.0) / 10.0).tanh()) / &c;
            (v + dv * 0.01, ())
        };
        let s = Scan::new().length(100_000);
        let s = if base > 0 { s.checkpointed(base) } else { s };
        let (v, ()) = s.scan(body, &Tensor::full(&[6], -65.0), &()).unwrap();
        (v + 60.0).powi(2).mean()
    };
    let params = brainstate::GradStates::from([("C", &c), ("E_L", &e_l), ("g_L", &g_l)]);
    let h = hessian(model).grad_states(params).call(&input).unwrap();
    let peak_kb = common::peak_kb().unwrap_or(0);
    let values: Vec<String> = node_vals(&h).iter().map(|v| format!("{v:e}")).collect();
    println!("PEAK_KB {peak_kb}");
    println!("HESSIAN {}", values.join(" "));
}

const LONG_RUN_CHILD: &str = "BRAINSTATE_LONG_RUN_CHILD";

/// Runs [`long_run_child_entry`] with `base`: its peak memory (kB, 0 where the system does not
/// say) and its Hessian.
fn long_run(base: usize) -> (u64, Vec<f64>) {
    let output = common::child_output("long_run_child_entry", LONG_RUN_CHILD, &base.to_string());
    let peak = common::printed(&output, "PEAK_KB ")
        .trim()
        .parse()
        .expect("a number");
    let hessian = common::printed(&output, "HESSIAN ")
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    (peak, hessian)
}

/// A Hessian through 100,000 steps of a small model: the checkpointed loop stores about
/// `base` carries per level instead of every step's values, so its peak memory stays a few
/// megabytes where the plain loop's grows with the steps (about 100 MB here), and both give
/// the same Hessian. Each runs in a child process, so that its peak is its own.
#[test]
fn a_hessian_through_100000_checkpointed_steps_runs_in_bounded_memory() {
    let (plain_peak, plain) = long_run(0);
    let (peak, checkpointed) = long_run(100);
    assert_eq!(plain.len(), 9);
    assert!(
        checkpointed.iter().all(|v| v.is_finite()),
        "{checkpointed:?}"
    );
    let scale = plain.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (a, b) in checkpointed.iter().zip(&plain) {
        assert!((a - b).abs() <= 1e-9 * scale, "{checkpointed:?}\n{plain:?}");
    }
    if cfg!(target_os = "linux") {
        println!("peak memory: plain loop {plain_peak} kB, checkpointed {peak} kB");
        assert!(peak < 32 * 1024, "checkpointed peak {peak} kB");
        assert!(
            4 * peak < plain_peak,
            "{peak} kB vs the plain loop's {plain_peak} kB"
        );
    }
}

#[test]
fn a_hessian_through_a_loop_shares_its_directions_among_the_threads() {
    // A 6x6 weight matrix: 36 directions, enough to split between threads.
    let w = Tensor::from_vec(
        (0..36).map(|k| 0.3 * (0.7 * k as f64).sin()).collect(),
        &[6, 6],
    );
    let w = w.unwrap();
    let f = |w: &Tensor| {
        let body = |r: &Tensor, x: &Tensor| {
            let next = r + (-r + (w.matmul(r) + x).tanh()) * 0.1;
            (next, ())
        };
        let xs = Tensor::from_vec(
            (0..30 * 6).map(|k| (0.3 * k as f64).cos()).collect(),
            &[30, 6],
        );
        let init = Tensor::from_vec((0..6).map(|k| 0.1 * k as f64).collect(), &[6]).unwrap();
        let (last, _) = scan(body, &init, &xs.unwrap()).unwrap();
        (last - 0.5).powi(2).sum()
    };
    let text = hessian(f).program(&w).unwrap().to_string();
    if common::side_by_side_threads() {
        assert!(text.contains("in chunks of 18, 2 side by side"), "{text}");
    }
    // The chunks run side by side give what one chunk of all directions gives.
    let shared = vals(leaf(&hessian(f).call(&w).unwrap()));
    let one_chunk = vals(leaf(&hessian(f).chunk_size(36).call(&w).unwrap()));
    assert_close(&shared, &one_chunk, 1e-13);
    assert!(shared.iter().any(|&v| v.abs() > 1e-3));
}
