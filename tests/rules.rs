//! The real derivative rules: every primitive's JVP and VJP (and the user-level operations
//! built from them) checked against central finite differences, at several shapes including
//! broadcasting, by the table-driven harness of `tests/common/harness.rs` (`jacfwd`, `jacrev`,
//! `grad` of `sum(f(x) * w)` and `hessian` of it, symmetric and equal to differences of `grad`).
//!
//! Each row of the table is an operation `f(x0, x1, ...)` of one or more `f64` tensors, an input
//! domain per argument (positive for `log`, away from kinks and ties for `abs`/`max`, ...) and
//! a list of shape cases. Rows marked `zero` (sign, stop_gradient, comparisons) must instead
//! give derivatives that are exactly zero.

mod common;

use brainstate::{DType, Tensor, concatenate, grad, hessian, jacfwd, jacrev, stack, where_};
use common::harness::{BINARY, Dom, Row, UNARY, binary, broadcast_squared, row, run_table, unary};

// ---------------------------------------------------------------------------------------------
// The table.

/// Uniform in `(-1.5, 1.5)`.
const ANY: Dom = Dom::Uniform(-1.5, 1.5);
/// Uniform in `(0.5, 2)`: for `log`, `sqrt`, the base of `pow`.
const POS: Dom = Dom::Uniform(0.5, 2.0);
/// `|x|` in `(0.3, 1.5)`, either sign: away from the kinks of `abs`, `relu`, `sign`, and from
/// the poles of `1/x`.
const AWAY: Dom = Dom::EitherSign(0.3, 1.5);
/// Uniform in `(-1.2, 1.2)`: for `tan`.
const SMALL: Dom = Dom::Uniform(-1.2, 1.2);
/// Distinct across the case and away from 0: no ties for `max`/`min`, no kinks for `relu`.
const DISTINCT: Dom = Dom::Distinct;

/// Shape cases of reductions over everything.
const REDUCE_ALL: &[&[&[usize]]] = &[&[&[]], &[&[5]], &[&[2, 3]], &[&[2, 3, 2]]];

fn mask(values: &[bool], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).expect("mask values match the shape")
}

fn elementwise_rows() -> Vec<Row<Dom>> {
    vec![
        // UnaryOp
        unary("neg", ANY, |x| -x),
        unary("exp", ANY, Tensor::exp),
        unary("log", POS, Tensor::log),
        unary("log1p", POS, Tensor::log1p),
        unary("expm1", ANY, Tensor::expm1),
        unary("sqrt", POS, Tensor::sqrt),
        unary("sin", ANY, Tensor::sin),
        unary("cos", ANY, Tensor::cos),
        unary("tan", SMALL, Tensor::tan),
        unary("tanh", ANY, Tensor::tanh),
        unary("logistic", ANY, Tensor::sigmoid),
        unary("abs", AWAY, Tensor::abs),
        unary("sign", AWAY, Tensor::sign).zero(),
        unary("stop_gradient", ANY, Tensor::stop_gradient).zero(),
        unary("relu", DISTINCT, Tensor::relu),
        // integer_pow
        unary("integer_pow[-2]", AWAY, |x| x.powi(-2)),
        unary("integer_pow[-1]", AWAY, |x| x.powi(-1)),
        unary("integer_pow[0]", ANY, |x| x.powi(0)),
        unary("integer_pow[1]", ANY, |x| x.powi(1)),
        unary("integer_pow[2]", ANY, |x| x.powi(2)),
        unary("integer_pow[3]", ANY, |x| x.powi(3)),
        // Weakly typed scalars on either side (binary primitives with a broadcast constant).
        unary("scalar - x", ANY, |x| 1.5 - x),
        unary("scalar / x", AWAY, |x| 2.0 / x),
        unary("x / scalar", ANY, |x| x / 3.0),
        unary("x * scalar + scalar", ANY, |x| x * 2.5 + 1.0),
        unary("x ^ 1.5 (powf)", POS, |x| x.powf(1.5)),
        unary("2 ^ x", ANY, |x| Tensor::scalar(2.0).pow(x)),
        unary("maximum(x, 0.25)", DISTINCT, |x| x.maximum(0.25)),
        unary("minimum(x, -0.25)", DISTINCT, |x| x.minimum(-0.25)),
        // BinaryOp
        binary("add", &[ANY], |a, b| a + b),
        binary("sub", &[ANY], |a, b| a - b),
        binary("mul", &[ANY], |a, b| a * b),
        binary("div", &[ANY, AWAY], |a, b| a / b),
        binary("max (maximum)", &[DISTINCT], |a, b| a.maximum(b)),
        binary("min (minimum)", &[DISTINCT], |a, b| a.minimum(b)),
        binary("pow", &[POS, ANY], |a, b| a.pow(b)),
        binary("logaddexp", &[DISTINCT], |a, b| a.logaddexp(b)),
        binary("mul of the same twice", &[ANY], |a, b| a * b * a),
        // convert: through f32 and back. The f32 rounding (relative 6e-8) needs a larger step,
        // which is exact for these low-degree polynomials.
        row("convert f64->f32->f64", &[ANY], UNARY, |x| {
            x[0].cast(DType::F32).cast(DType::F64) * &x[0]
        })
        .fd(1e-2, 1e-4),
        row("convert, math in f32", &[ANY], UNARY, |x| {
            (x[0].cast(DType::F32).sin() * 2.0).cast(DType::F64)
        })
        .fd(1e-2, 1e-3),
        // select, with fixed masks of several shapes broadcast against the operands.
        row(
            "select mask[2,3]",
            &[ANY],
            &[
                &[&[2, 3], &[3]],
                &[&[3], &[2, 1]],
                &[&[], &[2, 3]],
                &[&[2, 3], &[]],
            ],
            |x| {
                let m = mask(&[true, false, true, false, false, true], &[2, 3]);
                where_(&m, &x[0], &x[1])
            },
        ),
        row(
            "select mask[3]",
            &[ANY],
            &[&[&[2, 3], &[2, 1]], &[&[2, 1], &[]], &[&[1], &[2, 3]]],
            |x| {
                let m = mask(&[false, true, true], &[3]);
                where_(&m, &(&x[0] * &x[1]), &x[1].sin())
            },
        ),
        row(
            "select mask[2,1]",
            &[ANY],
            &[&[&[3], &[]], &[&[2, 3], &[1, 3]]],
            |x| {
                let m = mask(&[true, false], &[2, 1]);
                where_(&m, &x[0].exp(), &(&x[1] * &x[1]))
            },
        ),
        // Comparisons carry no derivative: a mask computed from the input differentiates as
        // a constant, away from the switching points.
        unary("where(x > 0, x*x, -x)", AWAY, |x| {
            where_(&x.gt(0.0), &(x * x), &(-x))
        }),
        row("where(a > b, a*b, a-b)", &[DISTINCT], BINARY, |x| {
            let (a, b) = (&x[0], &x[1]);
            where_(&a.gt(b), &(a * b), &(a - b))
        }),
        unary("(x > 0) as f64 * x", AWAY, |x| {
            x.gt(0.0).cast(DType::F64) * x
        }),
        row("comparisons only", &[DISTINCT], BINARY, |x| {
            let (a, b) = (&x[0], &x[1]);
            a.eq(b).cast(DType::F64) + a.lt(b).cast(DType::F64) * 2.0 - a.ge(b).cast(DType::F64)
        })
        .zero(),
        unary("sign(x) * stop_gradient(x)", AWAY, |x| {
            x.sign() * x.stop_gradient()
        })
        .zero(),
    ]
}

// `1..-1` is a Python-style range here (all but the ends), not an empty Rust range.
#[allow(clippy::reversed_empty_ranges)]
fn structural_rows() -> Vec<Row<Dom>> {
    vec![
        row(
            "broadcast_to",
            &[ANY],
            &[&[&[]], &[&[3]], &[&[2, 1]], &[&[1, 3]]],
            |x| broadcast_squared(&x[0]),
        ),
        row(
            "reshape [-1]",
            &[ANY],
            &[&[&[2, 3]], &[&[2, 3, 2]], &[&[]]],
            |x| x[0].reshape(&[-1]),
        ),
        row(
            "reshape [2,-1]",
            &[ANY],
            &[&[&[6]], &[&[2, 3]], &[&[4, 3]]],
            |x| x[0].reshape(&[2, -1]).sin(),
        ),
        row("expand_dims", &[ANY], &[&[&[3]], &[&[2, 3]]], |x| {
            x[0].expand_dims(-1) * x[0].expand_dims(-2)
        }),
        row(
            "transpose (.T)",
            &[ANY],
            &[&[&[3]], &[&[2, 3]], &[&[2, 3, 4]]],
            |x| x[0].transpose(),
        ),
        row(
            "permute [1,2,0]",
            &[ANY],
            &[&[&[2, 3, 4]], &[&[1, 3, 2]]],
            |x| x[0].permute(&[1, 2, 0]).powi(2),
        ),
        row(
            "transpose then add (mixed layouts)",
            &[ANY],
            &[&[&[2, 3], &[3, 2]], &[&[3, 3], &[3, 3]]],
            |x| x[0].transpose() * &x[1],
        ),
        // slice (its transpose is pad, so jacrev and hessian cover pad too)
        row("slice 1..-1", &[ANY], &[&[&[5]], &[&[4, 3]]], |x| {
            x[0].slice_along(0, 1..-1, 1)
        }),
        row(
            "slice ..step 2 last axis",
            &[ANY],
            &[&[&[5]], &[&[2, 5]], &[&[3, 4]]],
            |x| x[0].slice_along(-1, .., 2).powi(2),
        ),
        row("slice -4..-1 step 2", &[ANY], &[&[&[6]], &[&[5, 2]]], |x| {
            x[0].slice_along(0, -4..-1, 2).exp()
        }),
        row(
            "slice 1.. step 2 axis 1",
            &[ANY],
            &[&[&[2, 5]], &[&[3, 4, 2]]],
            |x| x[0].slice_along(1, 1.., 2) * x[0].slice_along(1, ..-1, 2),
        ),
        row("index(1, -1)", &[ANY], &[&[&[2, 3]], &[&[3, 4, 2]]], |x| {
            x[0].index(1, -1).sin()
        }),
        row("index(0, 1)", &[ANY], &[&[&[3]], &[&[3, 2]]], |x| {
            x[0].index(0, 1) * x[0].index(0, 0)
        }),
        row("rosenbrock (slices)", &[ANY], &[&[&[4]], &[&[2, 3]]], |x| {
            let head = x[0].slice_along(-1, ..-1, 1);
            let tail = x[0].slice_along(-1, 1.., 1);
            (tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)
        }),
        // concatenate / stack
        row(
            "concatenate axis 0",
            &[ANY],
            &[&[&[2], &[3], &[1]], &[&[1, 3], &[2, 3], &[2, 3]]],
            |x| concatenate(&[x[0].clone(), x[1].exp(), &x[2] * &x[2]], 0),
        ),
        row(
            "concatenate axis -1",
            &[ANY],
            &[&[&[2, 3], &[2, 1], &[2, 2]], &[&[2], &[3], &[1]]],
            |x| concatenate(&[x[0].sin(), x[1].clone(), &x[2] * 2.0], -1),
        ),
        row(
            "concatenate 4 inputs axis 1",
            &[ANY],
            &[&[&[2, 1], &[2, 2], &[2, 1], &[2, 3]]],
            |x| concatenate(x, 1).powi(3),
        ),
        row(
            "stack axis 0",
            &[ANY],
            &[&[&[3], &[3]], &[&[2, 3], &[2, 3]], &[&[], &[]]],
            |x| stack(&[&x[0] * &x[1], x[1].clone()], 0),
        ),
        row(
            "stack axis -1",
            &[ANY],
            &[&[&[3], &[3], &[3]], &[&[2, 2], &[2, 2], &[2, 2]]],
            |x| stack(&[x[0].clone(), x[1].cos(), &x[2] * &x[0]], -1),
        ),
    ]
}

fn reduction_rows() -> Vec<Row<Dom>> {
    let rank2_3: &[&[&[usize]]] = &[&[&[2, 3]], &[&[2, 3, 2]]];
    vec![
        row("reduce_sum all", &[ANY], REDUCE_ALL, |x| x[0].sum()),
        row(
            "reduce_sum axes [0]",
            &[ANY],
            &[&[&[5]], &[&[2, 3]], &[&[2, 3, 2]]],
            |x| x[0].sum_axes(&[0], false),
        ),
        row("reduce_sum axes [-1] keepdims", &[ANY], rank2_3, |x| {
            x[0].sum_axes(&[-1], true) * &x[0]
        }),
        row(
            "reduce_sum axes [0,2] keepdims",
            &[ANY],
            &[&[&[2, 3, 2]], &[&[3, 1, 2]]],
            |x| x[0].sum_axes(&[0, 2], true).powi(2),
        ),
        row("reduce_max all", &[DISTINCT], REDUCE_ALL, |x| x[0].max()),
        row("reduce_max axes [1] keepdims", &[DISTINCT], rank2_3, |x| {
            x[0].max_axes(&[1], true) * &x[0]
        }),
        row("reduce_max axes [0]", &[DISTINCT], rank2_3, |x| {
            x[0].max_axes(&[0], false).powi(2)
        }),
        row("reduce_min all", &[DISTINCT], REDUCE_ALL, |x| x[0].min()),
        row("reduce_min axes [-1]", &[DISTINCT], rank2_3, |x| {
            x[0].min_axes(&[-1], false).powi(3)
        }),
        row(
            "reduce_min axes [0,1] keepdims",
            &[DISTINCT],
            rank2_3,
            |x| x[0].min_axes(&[0, 1], true) - &x[0],
        ),
        row(
            "reduce_max of a product",
            &[DISTINCT],
            &[&[&[3], &[3]]],
            |x| (&x[0] * &x[1]).max(),
        ),
        // compositions
        row("mean", &[ANY], REDUCE_ALL, |x| x[0].mean().powi(2)),
        row("mean axes [0] keepdims", &[ANY], rank2_3, |x| {
            x[0].mean_axes(&[0], true) * &x[0]
        }),
        row("logsumexp", &[ANY], REDUCE_ALL, |x| x[0].logsumexp()),
        row("logsumexp axes [-1]", &[ANY], rank2_3, |x| {
            x[0].logsumexp_axes(&[-1], false)
        }),
        row("logsumexp axes [0] keepdims", &[ANY], rank2_3, |x| {
            x[0].logsumexp_axes(&[0], true)
        }),
        row(
            "softmax axis -1",
            &[ANY],
            &[&[&[3]], &[&[2, 3]], &[&[2, 2, 3]]],
            |x| x[0].softmax(-1),
        ),
        row("softmax axis 0", &[ANY], &[&[&[3]], &[&[2, 3]]], |x| {
            x[0].softmax(0)
        }),
    ]
}

fn matmul_rows() -> Vec<Row<Dom>> {
    vec![
        row(
            "matmul",
            &[ANY],
            &[
                &[&[3], &[3]],
                &[&[2, 3], &[3]],
                &[&[3], &[3, 2]],
                &[&[2, 3], &[3, 4]],
                &[&[2, 3, 4], &[4, 2]],
                &[&[2, 3, 4], &[4, 5]],
                &[&[2, 3, 4], &[2, 4, 2]],
                &[&[4], &[2, 4, 3]],
                &[&[2, 1, 3, 2], &[3, 2, 2]],
                &[&[2, 2, 3], &[3]],
                &[&[2, 1, 2], &[2, 1]],
            ],
            |x| x[0].matmul(&x[1]),
        ),
        row("dot", &[ANY], &[&[&[3], &[3]], &[&[2, 3], &[3, 2]]], |x| {
            x[0].dot(&x[1])
        }),
        row("x @ A @ x", &[ANY], &[&[&[3], &[3, 3]]], |x| {
            x[0].matmul(&x[1]).matmul(&x[0])
        }),
        row(
            "tanh(x @ W + b) layer",
            &[ANY],
            &[&[&[2, 3], &[3, 4], &[4]], &[&[3], &[3, 2], &[]]],
            |x| (x[0].matmul(&x[1]) + &x[2]).tanh(),
        ),
        row(
            "softmax(x @ W) cross terms",
            &[ANY],
            &[&[&[2, 3], &[3, 4]]],
            |x| x[0].matmul(&x[1]).softmax(-1),
        ),
        row(
            "a * b * c",
            &[ANY],
            &[&[&[3], &[3], &[3]], &[&[2, 3], &[3], &[]]],
            |x| &x[0] * &x[1] * &x[2],
        ),
    ]
}

#[test]
fn elementwise_rules() {
    run_table(elementwise_rows());
}

#[test]
fn structural_rules() {
    run_table(structural_rows());
}

#[test]
fn reduction_rules() {
    run_table(reduction_rows());
}

#[test]
fn matmul_rules() {
    run_table(matmul_rows());
}

// ---------------------------------------------------------------------------------------------
// Checks of the harness itself and of the non-differentiable paths.

/// The harness must catch a wrong derivative: `stop_gradient` inside an otherwise smooth
/// function makes the transforms disagree with finite differences.
#[test]
fn harness_detects_a_wrong_derivative() {
    let wrong = row("x * stop_gradient(x)", &[ANY], UNARY, |x| {
        &x[0] * x[0].stop_gradient()
    });
    let failures = wrong.failures();
    assert_eq!(failures.len(), wrong.cases.len(), "{failures:?}");
    assert!(failures.iter().all(|f| f.contains("worst mismatch")));

    // And a row marked `zero` whose derivatives are not.
    let not_zero = row("x * x marked zero", &[ANY], UNARY, |x| &x[0] * &x[0]).zero();
    let failures = not_zero.failures();
    assert_eq!(failures.len(), not_zero.cases.len(), "{failures:?}");
    assert!(failures.iter().all(|f| f.contains("expected exactly 0")));
}

/// `x * stop_gradient(x)` differentiates as `x * c` with `c = x` held constant.
#[test]
fn stop_gradient_is_a_constant() {
    let x = Tensor::from([0.5, -2.0, 3.0]);
    let f = |x: &Tensor| x * x.stop_gradient();
    let j = jacfwd(f).call(&x).unwrap();
    let j = j.tensor().unwrap().to_vec::<f64>().unwrap();
    assert_eq!(j, vec![0.5, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 3.0]);
    let jr = jacrev(f).call(&x).unwrap();
    assert_eq!(jr.tensor().unwrap().to_vec::<f64>().unwrap(), j);
    let h = hessian(|x: &Tensor| (x * x.stop_gradient()).sum())
        .call(&x)
        .unwrap();
    assert!(
        h.tensor()
            .unwrap()
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .all(|v| *v == 0.0)
    );
}

/// `where_(x > 0, x*x, -x)`: the comparison has no derivative path; each branch differentiates
/// where it is selected.
#[test]
fn where_with_a_comparison() {
    let x = Tensor::from([-1.5, -0.25, 0.5, 2.0]);
    let f = |x: &Tensor| where_(&x.gt(0.0), &(x * x), &(-x));
    let g = grad(|x: &Tensor| f(x).sum()).call(&x).unwrap();
    assert_eq!(
        g.tensor().unwrap().to_vec::<f64>().unwrap(),
        vec![-1.0, -1.0, 1.0, 4.0]
    );
    let h = hessian(|x: &Tensor| f(x).sum()).call(&x).unwrap();
    let h = h.tensor().unwrap().to_vec::<f64>().unwrap();
    let mut want = vec![0.0; 16];
    want[2 * 4 + 2] = 2.0;
    want[3 * 4 + 3] = 2.0;
    assert_eq!(h, want);
}

/// A boolean output cannot be differentiated: the transforms say so instead of returning zeros.
#[test]
fn comparison_outputs_are_not_differentiable() {
    let x = Tensor::from([1.0, -1.0]);
    let err = jacfwd(|x: &Tensor| x.gt(0.0)).call(&x).unwrap_err();
    assert!(err.to_string().contains("floating point"), "{err}");
    let err = jacrev(|x: &Tensor| x.eq(1.0)).call(&x).unwrap_err();
    assert!(err.to_string().contains("floating point"), "{err}");
}
