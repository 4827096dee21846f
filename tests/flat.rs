//! Flat vectors and back: `ravel`/`Unravel`, `Node::flat_vector`, `Node::flat_jacobian`, and
//! flat steps, values and snapshots of states, with the errors of bad input.

mod common;

use std::collections::BTreeMap;

use brainstate::units::{mV, ms, nS};
use brainstate::{
    DType, GradStates, ParamState, State, Tensor, Tree, grad, hessian, jacfwd, jacrev, ravel,
};
use common::{assert_close, assert_mentions, vals};

#[derive(Tree, Clone)]
struct Params {
    w: Tensor,
    b: Tensor,
}

#[test]
fn ravel_and_unravel_round_trip_every_tree() {
    let params = Params {
        w: Tensor::from([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        b: Tensor::from([7.0, 8.0]),
    };
    let (flat, unravel) = ravel(&params).unwrap();
    assert_eq!(flat.shape().unwrap(), [8]);
    assert_eq!(vals(&flat), (1..=8).map(f64::from).collect::<Vec<_>>());
    assert_eq!(unravel.len(), 8);
    let back = unravel.call(&flat).unwrap();
    assert_eq!(back.w.shape().unwrap(), [2, 3]);
    assert_eq!(vals(&back.b), vec![7.0, 8.0]);

    // Maps (key order), nested tuples, scalars, and an empty list.
    let tree = (
        BTreeMap::from([
            ("z".to_string(), Tensor::scalar(1.0)),
            ("a".to_string(), Tensor::from([2.0, 3.0])),
        ]),
        (Tensor::scalar(4.0), Vec::<Tensor>::new()),
    );
    let (flat, unravel) = ravel(&tree).unwrap();
    assert_eq!(vals(&flat), vec![2.0, 3.0, 1.0, 4.0]);
    let (map, (s, empty)) = unravel.call(&(flat * 2.0)).unwrap();
    assert_eq!(vals(&map["a"]), vec![4.0, 6.0]);
    assert_eq!((s.item().unwrap(), empty.len()), (8.0, 0));

    // Nothing at all: an empty f64 vector.
    let (flat, unravel) = ravel(&Vec::<Tensor>::new()).unwrap();
    assert_eq!(
        (flat.shape().unwrap(), flat.dtype().unwrap()),
        (&[0][..], DType::F64)
    );
    assert!(unravel.call(&flat).unwrap().is_empty());
}

#[test]
fn ravel_promotes_dtypes_and_unravel_restores_them_and_units() {
    let tree = (
        Tensor::from([1.5f32, 2.5]),
        Tensor::from([3_i64]),
        Tensor::from([-65.0, -60.0]) * mV,
    );
    let (flat, unravel) = ravel(&tree).unwrap();
    assert_eq!(flat.dtype().unwrap(), DType::F64);
    assert_eq!(flat.unit(), None);
    assert_eq!(vals(&flat), vec![1.5, 2.5, 3.0, -65.0, -60.0]);
    let (a, b, v) = unravel.call(&flat).unwrap();
    assert_eq!(
        (a.dtype().unwrap(), b.dtype().unwrap()),
        (DType::F32, DType::I64)
    );
    assert_eq!(v.unit(), Some(mV));
    assert_eq!(vals(&v.mantissa()), vec![-65.0, -60.0]);
}

#[test]
fn unravel_names_the_shapes_it_expected() {
    let (_, unravel) = ravel(&(Tensor::zeros(&[2, 2]), Tensor::scalar(0.0))).unwrap();
    let err = unravel.call(&Tensor::zeros(&[4])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unravel: expected a vector of 5 values (shape [5]), got shape [4]"
    );
    let err = unravel.call(&Tensor::zeros(&[5, 1])).unwrap_err();
    assert_mentions(&err, &["shape [5]", "[5, 1]"]);
    let failed = Tensor::zeros(&[2]) + Tensor::zeros(&[3]);
    assert_mentions(&unravel.call(&failed).unwrap_err(), &["add", "[2] and [3]"]);
}

/// A function of the flat vector: its gradient and Hessian are the flat ones of the tree.
#[test]
fn transforms_over_an_unravelled_vector_match_flat_derivatives() {
    let params = Params {
        w: Tensor::from([[0.5, -1.0], [0.25, 2.0]]),
        b: Tensor::from([0.1, -0.2]),
    };
    let x = Tensor::from([1.0, -0.5]);
    let loss = |p: &Params| (p.w.matmul(&x) + &p.b).tanh().powi(2).sum();
    let (p0, unravel) = ravel(&params).unwrap();
    let flat_loss = |v: &Tensor| loss(&unravel.call(v).unwrap());
    let g_flat = grad(flat_loss).call(&p0).unwrap();
    let g_tree = grad(loss).call(&params).unwrap().flat_vector().unwrap();
    assert_close(&vals(g_flat.tensor().unwrap()), &vals(&g_tree), 1e-14);
    let h_flat = hessian(flat_loss).call(&p0).unwrap();
    let h_tree = hessian(loss).call(&params).unwrap().flat_matrix().unwrap();
    assert_eq!(h_flat.tensor().unwrap().shape().unwrap(), [6, 6]);
    assert_close(&vals(h_flat.tensor().unwrap()), &vals(&h_tree), 1e-14);
    // A panic-free failure inside: a wrong length reaches the caller as an error.
    let (_, short) = ravel(&Tensor::zeros(&[3])).unwrap();
    let err = grad(|v: &Tensor| short.call(v).unwrap().sum())
        .call(&p0)
        .unwrap_err();
    assert_mentions(&err, &["unravel", "3 values", "[6]"]);
}

#[test]
fn flat_vector_and_flat_jacobian_lay_blocks_out_in_flat_order() {
    let (w, b) = (Tensor::from([1.0, 2.0]), Tensor::scalar(3.0));
    let f = |w: &Tensor, b: &Tensor| (w * b).sum().powi(2);
    let g = grad(f).argnums([0, 1]).call((&w, &b)).unwrap();
    // f = (3 b)^2 with sum(w) = 3: df/dw = 2 (b sum w) b, df/db = 2 (b sum w) sum w
    assert_eq!(vals(&g.flat_vector().unwrap()), vec![54.0, 54.0, 54.0]);

    // A vector output over two arguments: m x P.
    let r = |w: &Tensor, b: &Tensor| (w * b).sin();
    let (j, value) = jacrev(r)
        .argnums([0, 1])
        .return_value()
        .call((&w, &b))
        .unwrap();
    let m = j.flat_jacobian(&value).unwrap();
    assert_eq!(m.shape().unwrap(), [2, 3]);
    let c = |x: f64| x.cos();
    assert_close(
        &vals(&m),
        &[3.0 * c(3.0), 0.0, c(3.0), 0.0, 3.0 * c(6.0), 2.0 * c(6.0)],
        1e-14,
    );
    let fwd = jacfwd(r).argnums([0, 1]).call((&w, &b)).unwrap();
    assert_eq!(vals(&fwd.flat_jacobian(&value).unwrap()), vals(&m));

    // Several outputs (a tuple, a matrix among them): their rows one after the other.
    let two = |w: &Tensor| (w * 2.0, w.expand_dims(1) * w.expand_dims(0));
    let (j, value) = jacrev(two).return_value().call(&w).unwrap();
    let m = j.flat_jacobian(&value).unwrap();
    assert_eq!(m.shape().unwrap(), [2 + 4, 2]);
    assert_eq!(
        vals(&m),
        vec![2.0, 0.0, 0.0, 2.0, 2.0, 0.0, 2.0, 1.0, 2.0, 1.0, 0.0, 4.0]
    );
    // A gradient is the 1 x P Jacobian of its scalar.
    assert_eq!(
        g.flat_jacobian(&Tensor::scalar(0.0))
            .unwrap()
            .shape()
            .unwrap(),
        [1, 3]
    );

    // Outputs that do not match the result.
    let err = j.flat_jacobian(&Tensor::zeros(&[3])).unwrap_err();
    assert_mentions(&err, &["flat_jacobian", "[2, 2]", "[3]"]);
    let err = j.flat_jacobian(&vec![Tensor::zeros(&[2])]).unwrap_err();
    assert_mentions(&err, &["flat_jacobian", "output's structure"]);
}

#[test]
fn states_take_flat_steps_in_flat_matrix_order() {
    let w = ParamState::new(Tensor::from([[1.0, 2.0], [3.0, 4.0]])).with_name("w");
    let b = ParamState::new(Tensor::from([0.5f32])).with_name("b");
    let v = State::new(Tensor::from([-65.0]) * mV).with_name("v");
    let states = GradStates::from([("w", &w), ("b", &b)]);
    assert_eq!(states.flat_len().unwrap(), 5);
    // Map order is key order: b, then w.
    assert_eq!(
        vals(&states.flat_values().unwrap()),
        vec![0.5, 1.0, 2.0, 3.0, 4.0]
    );
    let f = || (w.value().sum() * b.value().cast(DType::F64).sum()).powi(2);
    let h = hessian(f).grad_states(states.clone()).call(()).unwrap();
    let g = grad(f).grad_states(states.clone()).call(()).unwrap();
    assert_eq!(h.flat_matrix().unwrap().shape().unwrap(), [5, 5]);
    assert_eq!(g.flat_vector().unwrap().shape().unwrap(), [5]);

    states
        .add_flat(&Tensor::from([1.0, 1.0, 2.0, 3.0, 4.0]), -0.5)
        .unwrap();
    assert_eq!(vals(&w.value()), vec![0.5, 1.0, 1.5, 2.0]);
    assert_eq!(b.value().dtype().unwrap(), DType::F32);
    assert_eq!(b.value().to_vec::<f32>().unwrap(), vec![0.0]);

    // Units are kept; the step is counted in them.
    let with_units = GradStates::from(&v);
    with_units.add_flat(&Tensor::from([5.0]), 1.0).unwrap();
    assert_eq!(
        (v.value().unit(), vals(&v.value().mantissa())),
        (Some(mV), vec![-60.0])
    );
    with_units.set_flat(&Tensor::from([-70.0])).unwrap();
    assert_eq!(vals(&v.value().mantissa()), vec![-70.0]);
}

#[test]
fn bad_steps_name_the_sizes_and_change_no_state() {
    let a = State::new(Tensor::from([1.0, 2.0]));
    let b = State::new(Tensor::scalar(3.0) * ms);
    let both = GradStates::from([&a, &b]);
    let err = both.add_flat(&Tensor::zeros(&[4]), 1.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "add_flat: the step has shape [4] but the states hold 3 values"
    );
    let err = both.set_flat(&Tensor::zeros(&[3, 1])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "set_flat: the step has shape [3, 1] but the states hold 3 values"
    );
    let failed = Tensor::zeros(&[2]) + Tensor::zeros(&[3]);
    assert_mentions(&both.add_flat(&failed, 1.0).unwrap_err(), &["[2] and [3]"]);
    assert_eq!(vals(&a.value()), vec![1.0, 2.0]);
    assert_eq!(vals(&b.value().mantissa()), vec![3.0]);
}

#[test]
fn snapshots_restore_every_state_at_once() {
    let w = ParamState::new(Tensor::from([1.0, 2.0]));
    let g = ParamState::new(Tensor::scalar(2.0) * nS);
    let params = GradStates::from([&w, &g]);
    let saved = params.snapshot();
    params
        .add_flat(&Tensor::from([1.0, 1.0, 1.0]), 1.0)
        .unwrap();
    w.set_value(Tensor::from([9.0, 9.0])).unwrap();
    assert_eq!(vals(&g.value().mantissa()), vec![3.0]);
    saved.restore().unwrap();
    assert_eq!(vals(&w.value()), vec![1.0, 2.0]);
    assert_eq!(
        (g.value().unit(), vals(&g.value().mantissa())),
        (Some(nS), vec![2.0])
    );
    // A snapshot can be restored again, and is a value of its own.
    params.set_flat(&Tensor::zeros(&[3])).unwrap();
    saved.clone().restore().unwrap();
    assert_eq!(vals(&w.value()), vec![1.0, 2.0]);
}

/// A rejected line-search step, the pattern these exist for.
#[test]
fn a_backtracking_line_search_on_states() {
    let w = ParamState::new(Tensor::from([2.0, -1.0]));
    let params = GradStates::from(&w);
    let loss = || (w.value().powi(4)).sum() + w.value().powi(2).sum();
    let value = || loss().item().unwrap();
    let g = grad(loss).grad_states(params.clone());
    let h = hessian(loss).grad_states(params.clone());
    for _ in 0..20 {
        let grad = g.call(()).unwrap().flat_vector().unwrap();
        let hess = h.call(()).unwrap().flat_matrix().unwrap();
        // Diagonal Hessian here: the Newton step is elementwise.
        let step = -(grad / hess.diagonal());
        let (start, saved) = (value(), params.snapshot());
        let mut t = 1.0;
        loop {
            params.add_flat(&step, t).unwrap();
            if value() <= start {
                break;
            }
            saved.restore().unwrap();
            t /= 2.0;
        }
    }
    assert!(
        vals(&w.value()).iter().all(|x| x.abs() < 1e-8),
        "{:?}",
        w.value()
    );
}
