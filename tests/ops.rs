//! The operations added for users (erf, flip, take, cumulative sums and products, products,
//! variances, norms, diagonals, traces, einsum, ...): their values against closed forms and
//! NumPy's semantics, and their derivatives against central finite differences, first and
//! second order, through `jacfwd`, `jacrev`, `grad` and `hessian`, as `tests/rules.rs` checks
//! the primitives.

mod common;

use brainstate::{DType, Tensor, einsum, grad, hessian, jacrev, make_program};
use common::harness::{Dom, row, run_table};
use common::{assert_close, vals};

// ---------------------------------------------------------------------------------------------
// The shared finite-difference harness (tests/common/harness.rs), over these domains.

/// Uniform in `(-1.5, 1.5)`.
const ANY: Dom = Dom::Uniform(-1.5, 1.5);
/// Uniform in `(0.5, 2)`.
const POS: Dom = Dom::Uniform(0.5, 2.0);

// ---------------------------------------------------------------------------------------------
// The rows.

fn indices(values: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).unwrap()
}

#[test]
fn elementwise_and_shape_rules() {
    run_table(vec![
        row("erf", &[ANY], &[&[&[]], &[&[4]], &[&[2, 3]]], |x| {
            x[0].erf()
        }),
        row("erf(x * y)", &[ANY], &[&[&[3], &[3]]], |x| {
            (&x[0] * &x[1]).erf()
        }),
        row("clip", &[ANY], &[&[&[7]], &[&[2, 3]]], |x| {
            x[0].clip(-0.713, 0.527) * &x[0]
        }),
        row("clip by tensors", &[ANY], &[&[&[5], &[5], &[5]]], |x| {
            let lo = &x[1] - 2.0;
            x[0].clip(&lo, &(&x[2] + 2.0)).powi(2)
        }),
        row("flip axis 0", &[ANY], &[&[&[5]], &[&[3, 2]]], |x| {
            x[0].flip(&[0]) * &x[0]
        }),
        row("flip both axes", &[ANY], &[&[&[2, 3]]], |x| {
            x[0].flip(&[0, -1]).sin() * &x[0]
        }),
        row("squeeze", &[ANY], &[&[&[1, 3, 1]], &[&[1]]], |x| {
            x[0].squeeze().exp()
        }),
        row("squeeze_axes", &[ANY], &[&[&[2, 1]]], |x| {
            x[0].squeeze_axes(&[-1]) * x[0].squeeze_axes(&[1]).flip(&[0])
        }),
        row(
            "take axis 0, repeats",
            &[ANY],
            &[&[&[4]], &[&[4, 2]]],
            |x| x[0].take(&indices(&[3, 0, -1, 1, 1], &[5]), 0).powi(2),
        ),
        row("take axis 1, index matrix", &[ANY], &[&[&[2, 3]]], |x| {
            x[0].take(&indices(&[2, 0, 1, 2], &[2, 2]), 1) * 2.0
        }),
        row("take_along_axis", &[ANY], &[&[&[2, 3]]], |x| {
            let log_p = x[0].log_softmax(1);
            log_p.take_along_axis(&indices(&[2, 0], &[2, 1]), 1)
        }),
        row("take_along_axis broadcast", &[ANY], &[&[&[3, 2]]], |x| {
            x[0].take_along_axis(&indices(&[1, 1, 0, 2], &[4, 1]), 0) * &x[0].sum()
        }),
    ]);
}

#[test]
fn reduction_and_scan_rules() {
    let all: &[&[&[usize]]] = &[&[&[]], &[&[1]], &[&[5]], &[&[2, 3]], &[&[2, 3, 2]]];
    run_table(vec![
        row("prod", &[ANY], all, |x| x[0].prod()),
        row(
            "prod axes [1] keepdims",
            &[ANY],
            &[&[&[2, 3]], &[&[3, 7, 2]]],
            |x| x[0].prod_axes(&[1], true) * &x[0],
        ),
        row("prod axes [0, 2]", &[ANY], &[&[&[3, 2, 3]]], |x| {
            x[0].prod_axes(&[0, 2], false)
        }),
        row("var", &[ANY], all, |x| x[0].var()),
        row("var axes [-1]", &[ANY], &[&[&[2, 3]], &[&[2, 3, 2]]], |x| {
            x[0].var_axes(&[-1], false)
        }),
        row("std", &[ANY], &[&[&[5]], &[&[2, 3]]], |x| x[0].std()),
        row("std axes [0] keepdims", &[ANY], &[&[&[3, 2]]], |x| {
            x[0].std_axes(&[0], true) * &x[0]
        }),
        row("norm", &[ANY], &[&[&[]], &[&[5]], &[&[2, 3]]], |x| {
            x[0].norm()
        }),
        row("norm axes [1]", &[ANY], &[&[&[2, 3]]], |x| {
            x[0].norm_axes(&[1], false)
        }),
        row("log_softmax", &[ANY], &[&[&[3]], &[&[2, 3]]], |x| {
            x[0].log_softmax(-1)
        }),
        row("log_softmax axis 0", &[ANY], &[&[&[2, 3]]], |x| {
            x[0].log_softmax(0)
        }),
        row("cumsum", &[ANY], &[&[&[1]], &[&[5]], &[&[2, 7]]], |x| {
            x[0].cumsum(-1).powi(2)
        }),
        row("cumsum axis 0", &[ANY], &[&[&[4, 2]], &[&[3, 2, 2]]], |x| {
            x[0].cumsum(0) * &x[0]
        }),
        row("cumprod", &[ANY], &[&[&[1]], &[&[6]], &[&[2, 5]]], |x| {
            x[0].cumprod(-1)
        }),
        row("cumprod axis 1", &[POS], &[&[&[2, 3, 2]]], |x| {
            x[0].cumprod(1).log()
        }),
    ]);
}

#[test]
fn linear_algebra_rules() {
    run_table(vec![
        row(
            "diagonal",
            &[ANY],
            &[&[&[3, 3]], &[&[2, 4]], &[&[4, 2]]],
            |x| x[0].diagonal().powi(2),
        ),
        row("diagonal offsets", &[ANY], &[&[&[3, 4]]], |x| {
            x[0].diagonal_axes(1, 0, 1) * x[0].diagonal_axes(-1, 0, 1).sum()
        }),
        row("diagonal of a batch", &[ANY], &[&[&[2, 3, 3]]], |x| {
            x[0].diagonal_axes(0, -1, -2).exp()
        }),
        row("trace", &[ANY], &[&[&[3, 3]], &[&[2, 3]]], |x| {
            x[0].trace().powi(2)
        }),
        row("trace_axes", &[ANY], &[&[&[2, 2, 3]]], |x| {
            x[0].trace_axes(0, 0, 1)
        }),
        row("einsum ij,jk->ik", &[ANY], &[&[&[2, 3], &[3, 4]]], |x| {
            einsum("ij,jk->ik", &[&x[0], &x[1]])
        }),
        row(
            "einsum bij,bjk->bik",
            &[ANY],
            &[&[&[2, 2, 3], &[2, 3, 2]]],
            |x| einsum("bij,bjk->bik", &[&x[0], &x[1]]),
        ),
        row("einsum ij,ij->i", &[ANY], &[&[&[2, 3], &[2, 3]]], |x| {
            einsum("ij,ij->i", &[&x[0], &x[1]])
        }),
        row("einsum i,j->ij", &[ANY], &[&[&[3], &[2]]], |x| {
            einsum("i,j->ij", &[&x[0], &x[1]])
        }),
        row(
            "einsum ij,kj->ki (transposes)",
            &[ANY],
            &[&[&[2, 3], &[4, 3]]],
            |x| einsum("ij,kj->ki", &[&x[0], &x[1]]),
        ),
        row(
            "einsum ijk,k (sum and contract)",
            &[ANY],
            &[&[&[2, 3, 2], &[2]]],
            |x| einsum("ijk,k->i", &[&x[0], &x[1]]).powi(2),
        ),
        row(
            "einsum ii,i->i (diagonal)",
            &[ANY],
            &[&[&[3, 3], &[3]]],
            |x| einsum("ii,i->i", &[&x[0], &x[1]]),
        ),
        row("einsum x A x", &[ANY], &[&[&[3], &[3, 3]]], |x| {
            einsum("i,ij->j", &[&x[0], &x[1]]).dot(&x[0])
        }),
        row("einsum ji (one operand)", &[ANY], &[&[&[2, 3]]], |x| {
            einsum("ij->ji", &[&x[0]]).sin()
        }),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Values against closed forms and NumPy.

#[test]
fn erf_matches_reference_values() {
    // scipy.special.erf at these points.
    let x = Tensor::from([-3.0, -0.5, 0.0, 0.1, 1.0, 2.5]);
    let want = [
        -0.9999779095030014,
        -0.5204998778130465,
        0.0,
        0.1124629160182849,
        0.8427007929497149,
        0.999593047982555,
    ];
    assert_close(&vals(&x.erf()), &want, 1e-15);
    let f32s = Tensor::from([0.5f32]).erf();
    assert_eq!(f32s.dtype().unwrap(), DType::F32);
    assert!((f32s.to_vec::<f32>().unwrap()[0] - 0.520_499_9).abs() < 1e-6);
    let err = Tensor::from([1_i64])
        .cast(DType::C128)
        .erf()
        .shape()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("erf: needs a real floating-point"),
        "{err}"
    );
}

#[test]
fn scans_and_products_follow_numpy() {
    let x = Tensor::from([[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 0.5, -1.0, 0.0, 3.0]]);
    assert_eq!(
        vals(&x.cumsum(1)),
        vec![1.0, 3.0, 6.0, 10.0, 15.0, 2.0, 2.5, 1.5, 1.5, 4.5]
    );
    assert_eq!(
        vals(&x.cumprod(1)),
        vec![1.0, 2.0, 6.0, 24.0, 120.0, 2.0, 1.0, -1.0, -0.0, 0.0]
    );
    assert_eq!(vals(&x.prod_axes(&[1], false)), vec![120.0, 0.0]);
    assert_eq!(
        vals(&x.prod_axes(&[0], false)),
        vec![2.0, 1.0, -3.0, 0.0, 15.0]
    );
    assert_eq!(Tensor::zeros(&[0]).prod().item().unwrap(), 1.0);
    assert_eq!(
        Tensor::from([true, true, false])
            .cumsum(0)
            .to_vec::<i64>()
            .unwrap(),
        vec![1, 2, 2]
    );
    assert_eq!(
        Tensor::from([2_i64, 3, 4]).prod().to_vec::<i64>().unwrap(),
        vec![24]
    );
    // Exact second derivatives where factors are zero: d2 prod / dx0 dx1 = x2 x3.
    let h = hessian(|x: &Tensor| x.prod())
        .call(&Tensor::from([0.0, 0.0, 2.0, 3.0]))
        .unwrap();
    let h = vals(h.tensor().unwrap());
    assert_eq!(h[1], 6.0);
    assert_eq!(h[2 * 4 + 3], 0.0);
    assert_eq!(h[0], 0.0);
}

#[test]
fn statistics_and_norms_follow_numpy() {
    let x = Tensor::from([[1.0, 2.0, 4.0], [3.0, -1.0, 0.5]]);
    // numpy.var / numpy.std with ddof=0
    assert_close(&[x.var().item().unwrap()], &[2.701388888888889], 1e-14);
    assert_close(&vals(&x.var_axes(&[0], false)), &[1.0, 2.25, 3.0625], 1e-14);
    assert_close(
        &vals(&x.std_axes(&[1], false)),
        &[1.247219128924647, 1.6499158227686108],
        1e-14,
    );
    assert_close(&[x.norm().item().unwrap()], &[5.5901699437494745], 1e-14);
    let z = Tensor::complex(&Tensor::from([3.0, 0.0]), &Tensor::from([4.0, 1.0]));
    assert_close(&[z.norm().item().unwrap()], &[26f64.sqrt()], 1e-14);
    assert_close(&[z.var().item().unwrap()], &[4.5], 1e-14);
}

#[test]
fn diagonals_traces_and_einsum_follow_numpy() {
    let a = Tensor::from_vec((0..12).map(f64::from).collect(), &[3, 4]).unwrap();
    assert_eq!(vals(&a.diagonal()), vec![0.0, 5.0, 10.0]);
    assert_eq!(vals(&a.diagonal_axes(2, 0, 1)), vec![2.0, 7.0]);
    assert_eq!(vals(&a.diagonal_axes(-2, 0, 1)), vec![8.0]);
    assert_eq!(a.diagonal_axes(5, 0, 1).shape().unwrap(), [0]);
    assert_eq!(a.trace().item().unwrap(), 15.0);
    let b = Tensor::from_vec((0..8).map(f64::from).collect(), &[4, 2]).unwrap();
    assert_eq!(vals(&einsum("ij,jk->ik", &[&a, &b])), vals(&a.matmul(&b)));
    assert_eq!(
        vals(&einsum("ij->j", &[&a])),
        vals(&a.sum_axes(&[0], false))
    );
    assert_eq!(einsum("ij", &[&a]).shape().unwrap(), [3, 4]);
    assert_eq!(einsum("ji", &[&a]).shape().unwrap(), [4, 3]); // implicit: sorted, so a.T
    assert_eq!(vals(&einsum("ji", &[&a])), vals(&a.transpose()));
    let c = Tensor::from_vec((0..9).map(f64::from).collect(), &[3, 3]).unwrap();
    assert_eq!(einsum("ii", &[&c]).item().unwrap(), 12.0);
    assert_eq!(vals(&einsum("ii->i", &[&c])), vec![0.0, 4.0, 8.0]);
    let u = Tensor::from([1.0, 2.0]);
    let v = Tensor::from([3.0, 4.0, 5.0]);
    assert_eq!(einsum("i,j", &[&u, &v]).shape().unwrap(), [2, 3]);
    // Errors name the problem.
    let bad = |spec: &str, ops: &[&Tensor]| einsum(spec, ops).shape().unwrap_err().to_string();
    assert_eq!(
        bad("ij,jk->ik", &[&a, &a]),
        "einsum: index 'j' has size 4 in one operand and 3 in another"
    );
    assert_eq!(
        bad("ijk->i", &[&a]),
        "einsum: term \"ijk\" has 3 indices for an operand of shape [3, 4]"
    );
    assert!(bad("i...,j->ij", &[&u, &v]).contains("not supported"));
    assert!(bad("ij,jk,kl->il", &[&a, &b, &c]).contains("one or two are supported"));
    assert!(bad("i,j->k", &[&u, &v]).contains("output index 'k'"));
    assert!(bad("i1,j", &[&u, &v]).contains("not an index letter"));
}

#[test]
fn shape_operations_follow_numpy() {
    let x = Tensor::from_vec((0..6).map(f64::from).collect(), &[2, 3]).unwrap();
    assert_eq!(vals(&x.flip(&[1])), vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
    assert_eq!(vals(&x.flip(&[])), vals(&x));
    let t = x.take(&indices(&[1, 1, 0], &[3]), 0);
    assert_eq!(t.shape().unwrap(), [3, 3]);
    assert_eq!(vals(&t), vec![3.0, 4.0, 5.0, 3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
    let along = x.take_along_axis(&indices(&[2, 0, 1, 1], &[2, 2]), 1);
    assert_eq!(vals(&along), vec![2.0, 0.0, 4.0, 4.0]);
    let err = |t: Tensor| t.shape().unwrap_err().to_string();
    assert_eq!(
        err(x.take(&Tensor::from([0.5]), 0)),
        "take: needs integer (i64) indices (got f64)"
    );
    assert_eq!(
        err(x.take_along_axis(&indices(&[0], &[1]), 1)),
        "take_along_axis: incompatible shapes [2, 3] and [1]"
    );
    assert_eq!(
        err(x.squeeze_axes(&[0])),
        "squeeze: axis 0 has size 2 in shape [2, 3], not 1"
    );
    assert_eq!(
        err(x.flip(&[2])),
        "flip: axis 2 is out of range for 2 dimensions"
    );
    // Traced indices cannot be constants of the program.
    let g = grad(|i: &Tensor| x.take(&i.cast(DType::I64), 0).sum()).call(&Tensor::from([0.0]));
    assert!(g.unwrap_err().to_string().contains("constant"));
}

#[test]
fn new_primitives_print_in_programs() {
    let x = Tensor::from([1.0, 2.0, 3.0]);
    let p = make_program(
        |x: &Tensor| x.flip(&[0]).take(&Tensor::from([2_i64, 0]), 0).erf(),
        &x,
    )
    .unwrap();
    let text = p.to_string();
    assert!(text.contains("rev[axes=(0,)]"), "{text}");
    assert!(text.contains("gather[axis=0 indices=(2,0)]"), "{text}");
    assert!(text.contains("erf"), "{text}");
    let g = jacrev(|x: &Tensor| x.take(&Tensor::from([2_i64, 2]), 0))
        .program(&x)
        .unwrap();
    assert!(
        g.to_string()
            .contains("scatter_add[axis=1 indices=(2,2) size=3]"),
        "{g}"
    );
    let long = Tensor::from(vec![0_i64; 20]);
    let p = make_program(|x: &Tensor| x.take(&long, 0), &x).unwrap();
    assert!(
        p.to_string()
            .contains("indices=(0,0,0,0,0,0,0,0,...; 20 in all)"),
        "{p}"
    );
}

/// Reverse over reverse: the transpose of `scatter_add` (a gather) is reached only by
/// differentiating a gradient in reverse mode, which nests `grad` inside `jacrev`.
#[test]
fn reverse_over_reverse_transposes_scatter_add() {
    let idx = Tensor::from([1_i64, 1, 0]);
    let f = move |x: &Tensor| x.take(&idx, 0).powi(3).sum();
    let x = Tensor::from([0.5, -1.5]);
    let g = grad(f.clone());
    let nested = jacrev(|x: &Tensor| g.call(x).unwrap().tensor().unwrap().clone())
        .call(&x)
        .unwrap();
    let h = hessian(f).call(&x).unwrap();
    assert_eq!(vals(nested.tensor().unwrap()), vals(h.tensor().unwrap()));
    // d2/dx2 of x0^3 + 2 x1^3 is diag(6 x0, 12 x1)
    assert_close(&vals(h.tensor().unwrap()), &[3.0, 0.0, 0.0, -18.0], 1e-12);
}

/// The structural primitives and compositions on complex numbers: a holomorphic function
/// with real coefficients, differentiated at real points through the complex path, equals its
/// real Hessian there.
#[test]
fn complex_operands_take_the_same_paths() {
    use brainstate::Complex64;
    let idx = Tensor::from([2_i64, 0, 2, 1]);
    let f = move |z: &Tensor| {
        let picked = z.take(&idx, 0);
        let scanned = z.flip(&[0]).cumsum(0);
        let contracted = einsum("i,i->", &[&scanned, &scanned.cumprod(0)]);
        (picked.powi(3).sum() + contracted + z.prod()) * 0.5
    };
    let x = [0.7, -1.2, 0.4];
    let real = hessian(f.clone()).call(&Tensor::from(x)).unwrap();
    let z = Tensor::from(
        x.iter()
            .map(|&v| Complex64::new(v, 0.0))
            .collect::<Vec<_>>(),
    );
    let complex = hessian(f).holomorphic(true).call(&z).unwrap();
    let complex = complex.tensor().unwrap().to_vec::<Complex64>().unwrap();
    let real = vals(real.tensor().unwrap());
    assert_close(
        &complex.iter().map(|c| c.re).collect::<Vec<_>>(),
        &real,
        1e-12,
    );
    assert!(complex.iter().all(|c| c.im.abs() < 1e-12));
}
