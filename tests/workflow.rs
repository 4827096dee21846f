//! A user's path from a model to its derivatives: collecting a model's states, functions of
//! no arguments, and `joint` with the value and aux from one run.

mod common;

use std::collections::BTreeMap;

use brainstate::{
    GradStates, HasStates, HiddenState, ParamState, ShortTermState, State, StateKind, Tensor, grad,
    hessian, jacfwd, jacrev, make_program,
};
use common::{assert_mentions, vals};

#[derive(HasStates)]
struct Dense {
    w: State,
    b: State,
}

#[derive(HasStates)]
struct Net {
    layers: Vec<Dense>,
    v: State,
    readout: Option<Dense>,
    #[states(skip)]
    _config: Vec<usize>,
    scale: f64,
    gain: Tensor,
}

#[derive(HasStates)]
struct Pair(State, State);

#[derive(HasStates)]
struct Generic<T: HasStates> {
    inner: T,
}

fn dense(w: [f64; 2], b: f64) -> Dense {
    Dense {
        w: ParamState::new(Tensor::from(w)),
        b: ParamState::new(Tensor::scalar(b)),
    }
}

fn net() -> Net {
    Net {
        layers: vec![dense([1.0, 2.0], 0.5), dense([-1.0, 0.5], 0.0)],
        v: ShortTermState::new(Tensor::from([-65.0])),
        readout: None,
        _config: vec![2, 2],
        scale: 2.0,
        gain: Tensor::scalar(1.0),
    }
}

#[test]
fn a_derived_model_collects_its_states_by_path_and_kind() {
    let mut model = net();
    let all = model.states();
    assert_eq!(
        all.keys(),
        ["layers.0.b", "layers.0.w", "layers.1.b", "layers.1.w", "v"]
    );
    assert_eq!(model.states_of(StateKind::Param).len(), 4);
    assert_eq!(model.states_of(StateKind::ShortTerm).keys(), ["v"]);
    assert!(model.states_of(StateKind::Hidden).is_empty());
    model.readout = Some(dense([0.0, 0.0], 1.0));
    assert_eq!(model.states().len(), 7);
    assert!(model.states().keys().contains(&"readout.w".to_string()));
    // Tuple structs, generics, maps, shared states (collected once).
    let shared = HiddenState::new(Tensor::zeros(&[2]));
    let pair = Pair(shared.clone(), shared.clone());
    assert_eq!(pair.states().keys(), ["0"]);
    let generic = Generic {
        inner: BTreeMap::from([("x", State::new(Tensor::scalar(1.0)))]),
    };
    assert_eq!(generic.states().keys(), ["inner.x"]);
}

#[test]
fn a_model_passes_to_grad_states_directly() {
    let model = net();
    let loss = || {
        let mut h = Tensor::scalar(1.0);
        for layer in &model.layers {
            h = (layer.w.value() * &h + layer.b.value()).tanh();
        }
        (h * model.gain.clone() * model.scale).sum().powi(2) + model.v.value().sum() * 0.0
    };
    // All states, keyed by path, straight from the struct.
    let g = grad(loss).grad_states(&model).call(()).unwrap();
    assert_eq!(g.leaves().len(), 5);
    assert_eq!(g.key("v").unwrap().tensor().unwrap().item().unwrap(), 0.0);
    // The parameters only, as brainstate's `model.states(ParamState)`.
    let params = model.states_of(StateKind::Param);
    let h = hessian(loss).grad_states(params.clone()).call(()).unwrap();
    let m = h.flat_matrix().unwrap();
    assert_eq!(m.shape().unwrap(), [6, 6]);
    let block = h["layers.1.w"]["layers.0.b"].tensor().unwrap();
    assert_eq!(block.shape().unwrap(), [2]);
    // The same matrix through GradStates, and a flat step on the parameters.
    assert_eq!(params.flat_len().unwrap(), 6);
    let before = vals(&params.flat_values().unwrap());
    params.add_flat(&g_flat(&loss, &params), -0.1).unwrap();
    assert_ne!(vals(&params.flat_values().unwrap()), before);
}

fn g_flat(loss: &dyn Fn() -> Tensor, params: &GradStates) -> Tensor {
    grad(loss)
        .grad_states(params.clone())
        .call(())
        .unwrap()
        .flat_vector()
        .unwrap()
}

#[test]
fn functions_of_no_arguments_read_only_states() {
    let w = ParamState::new(Tensor::from([1.0, 2.0]));
    let calls = State::new(Tensor::scalar(0.0));
    let f = || {
        calls.set_value(calls.value() + 1.0).unwrap();
        w.value().powi(3).sum()
    };
    let h = hessian(f).grad_states(&w).call(()).unwrap();
    assert_eq!(vals(h.tensor().unwrap()), vec![6.0, 0.0, 0.0, 12.0]);
    let (g, value) = grad(f).grad_states(&w).return_value().call(()).unwrap();
    assert_eq!(
        (vals(g.tensor().unwrap()), value.item().unwrap()),
        (vec![3.0, 12.0], 9.0)
    );
    let aux = || (w.value().sum().powi(2), w.value() * 2.0);
    let (j, aux_value) = jacrev(aux).grad_states(&w).has_aux().call(()).unwrap();
    assert_eq!(vals(j.tensor().unwrap()), vec![6.0, 6.0]);
    assert_eq!(vals(&aux_value), vec![2.0, 4.0]);
    let j = jacfwd(|| w.value().sin()).grad_states(&w).call(()).unwrap();
    assert_eq!(j.tensor().unwrap().shape().unwrap(), [2, 2]);
    assert_eq!(calls.value().item().unwrap(), 2.0);
    // A program of no inputs but the states it reads.
    let p = make_program(|| w.value().exp().sum(), ()).unwrap();
    assert_eq!(p.input_avals().len(), 1);
    // Differentiating arguments of a function that has none is an error, not a panic.
    let err = grad(|| w.value().sum()).call(()).unwrap_err();
    assert_mentions(&err, &["argnums 0", "0 positional argument"]);
}

#[test]
fn joint_returns_value_and_aux_from_one_run() {
    let w = ParamState::new(Tensor::scalar(2.0));
    let calls = State::new(Tensor::scalar(0.0));
    let f = |x: &Tensor| {
        calls.set_value(calls.value() + 1.0).unwrap();
        ((w.value() * x * x).sum(), x * 10.0)
    };
    let x = Tensor::scalar(3.0);
    let case3 = || hessian(f).grad_states(&w).argnums(0);
    let joint = case3().has_aux().joint(&x).unwrap();
    assert_eq!(vals(&joint.1), vec![30.0]);
    let (joint, value, aux) = case3().has_aux().return_value().joint(&x).unwrap();
    assert_eq!((value.item().unwrap(), aux.item().unwrap()), (18.0, 30.0));
    assert_eq!(joint[0][1].tensor().unwrap().item().unwrap(), 6.0); // d2f / dw dx = 2x
    assert_eq!(joint[1][1].tensor().unwrap().item().unwrap(), 4.0); // d2f / dx2 = 2w
    assert_eq!(calls.value().item().unwrap(), 2.0); // once per joint call
    let only = |x: &Tensor| (w.value() * x * x).sum();
    let (joint, value) = hessian(only)
        .grad_states(&w)
        .argnums(0)
        .return_value()
        .joint(&x)
        .unwrap();
    assert_eq!(
        (
            value.item().unwrap(),
            joint[1][0].tensor().unwrap().item().unwrap()
        ),
        (18.0, 6.0)
    );
    let grads = grad(only).grad_states(&w).argnums(0).joint(&x).unwrap();
    assert_eq!(
        (
            grads[0].tensor().unwrap().item().unwrap(),
            grads[1].tensor().unwrap().item().unwrap()
        ),
        (9.0, 12.0)
    );
}
