//! Hessians against closed forms, the call layouts and `argnums` nesting, the plan cache,
//! printed programs, errors for bad input, and agreement of grad / jacrev / jacfwd / hessian.

mod common;

use std::collections::BTreeMap;

use brainstate::{DType, Error, Node, Tensor, grad, hessian, jacfwd, jacrev, make_program};
use common::{assert_close, assert_mentions, leaf, rosen_hessian, vals};

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Asserts that a tensor of shape `out ++ [n] ++ [n]` (or a flattened `[.., m, m]` view of it)
/// is symmetric in its last two halves, for each leading index.
#[track_caller]
fn assert_symmetric_trailing(t: &Tensor, n: usize) {
    let v = vals(t);
    assert_eq!(v.len() % (n * n), 0, "not a stack of {n}x{n} matrices");
    for (k, m) in v.chunks(n * n).enumerate() {
        for i in 0..n {
            for j in 0..i {
                let (a, b) = (m[i * n + j], m[j * n + i]);
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + a.abs()),
                    "not symmetric at output {k}, ({i},{j}): {a} vs {b}"
                );
            }
        }
    }
}

/// The Hessian of a scalar function as one matrix, checked to be symmetric.
#[track_caller]
fn symmetric_matrix(h: &Node) -> (usize, Vec<f64>) {
    let m = h.flat_matrix().expect("flat matrix");
    let n = m.shape().unwrap()[0];
    assert_eq!(m.shape().unwrap(), &[n, n]);
    assert_symmetric_trailing(&m, n);
    (n, vals(&m))
}

/// A deterministic, non-symmetric `n x m` matrix.
fn matrix(n: usize, m: usize, f: impl Fn(usize, usize) -> f64) -> Tensor {
    let data: Vec<f64> = (0..n * m).map(|k| f(k / m, k % m)).collect();
    Tensor::from_vec(data, &[n, m]).unwrap()
}

fn rosen(x: &Tensor) -> Tensor {
    let head = x.slice_along(0, ..-1, 1);
    let tail = x.slice_along(0, 1.., 1);
    ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
}

fn quad_sin_matrix() -> Tensor {
    Tensor::from([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0]])
}

fn two_args(x: &Tensor, y: &Tensor) -> Tensor {
    (x.tanh().expand_dims(1) * y.expand_dims(0).powi(2)).sum() + x.dot(x) * y.powi(2).log1p().sum()
}

#[track_caller]
fn expect_err<T: std::fmt::Debug>(result: brainstate::Result<T>) -> Error {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Closed forms.
// ---------------------------------------------------------------------------------------------

#[test]
fn quadratic_form_gives_a_plus_a_transpose() {
    let n = 5;
    let a = matrix(n, n, |i, j| {
        (1.3 * i as f64 + 0.7 * (j * j) as f64).sin() + i as f64
    });
    let av = vals(&a);
    let x = Tensor::linspace(-0.8, 1.1, n);
    let a2 = a.clone();
    let h = hessian(move |x: &Tensor| x.matmul(&a2).matmul(x))
        .call(&x)
        .unwrap();
    let t = leaf(&h);
    assert_eq!(t.shape().unwrap(), &[n, n]);
    assert_eq!(t.dtype().unwrap(), DType::F64);
    let want: Vec<f64> = (0..n * n)
        .map(|k| av[k] + av[(k % n) * n + k / n])
        .collect();
    assert_close(&vals(t), &want, 1e-13);
    symmetric_matrix(&h);
    // The Hessian of a quadratic does not depend on the point.
    let h2 = hessian(move |x: &Tensor| x.matmul(&a).matmul(x))
        .call(&Tensor::from([3.0, -2.0, 0.5, 7.0, 1.0]))
        .unwrap();
    assert_close(&vals(leaf(&h2)), &want, 1e-13);
}

#[test]
fn rosenbrock_matches_the_tridiagonal_hessian() {
    let h = hessian(rosen);
    let points: [[f64; 6]; 4] = [
        [1.0; 6],
        [0.0; 6],
        [-1.2, 1.0, 0.3, -0.5, 2.0, 0.7],
        [0.11, -0.37, 1.9, -2.4, 0.05, 3.3],
    ];
    for p in points {
        let got = h.call(&Tensor::from(p)).unwrap();
        assert_eq!(leaf(&got).shape().unwrap(), &[6, 6]);
        let (_, m) = symmetric_matrix(&got);
        assert_close(&m, &rosen_hessian(&p), 1e-13);
    }
}

#[test]
fn logistic_regression_gives_xt_diag_p_one_minus_p_x() {
    let (rows, cols) = (7, 4);
    let features = matrix(rows, cols, |i, j| {
        (0.9 * i as f64 - 1.7 * j as f64 + 0.3).sin()
    });
    let labels: Vec<f64> = (0..rows).map(|i| (i % 3 == 0) as u8 as f64).collect();
    let w = Tensor::from([0.2, -0.5, 0.1, 0.7]);
    let loss = |w: &Tensor, x: &Tensor, y: &Tensor| {
        let z = x.matmul(w);
        (z.logaddexp(0.0) - y * &z).sum()
    };
    let h = hessian(loss)
        .call((&w, &features, &Tensor::from(labels)))
        .unwrap();
    let (n, got) = symmetric_matrix(&h);
    assert_eq!(n, cols);

    let xv = vals(&features);
    let wv = vals(&w);
    let mut want = vec![0.0; cols * cols];
    for r in 0..rows {
        let z: f64 = (0..cols).map(|c| xv[r * cols + c] * wv[c]).sum();
        let p = 1.0 / (1.0 + (-z).exp());
        for i in 0..cols {
            for j in 0..cols {
                want[i * cols + j] += xv[r * cols + i] * p * (1.0 - p) * xv[r * cols + j];
            }
        }
    }
    assert_close(&got, &want, 1e-13);
}

#[test]
fn nonscalar_output_has_shape_out_in_in_and_matches_per_output_closed_forms() {
    // f_k = sin(x_k) S with S = sum x^2:
    // d2 f_k / dx_i dx_j = -sin(x_k) S d_ki d_kj + 2 cos(x_k)(d_ki x_j + d_kj x_i) + 2 sin(x_k) d_ij
    let xs = [0.5, -1.0, 1.5, 0.2];
    let n = xs.len();
    let f = |x: &Tensor| x.sin() * x.powi(2).sum();
    let h = hessian(f).call(&Tensor::from(xs)).unwrap();
    let t = leaf(&h);
    assert_eq!(t.shape().unwrap(), &[n, n, n]);
    assert_symmetric_trailing(t, n);
    let s: f64 = xs.iter().map(|v| v * v).sum();
    let d = |a: usize, b: usize| (a == b) as u8 as f64;
    let mut want = Vec::new();
    for k in 0..n {
        for i in 0..n {
            for j in 0..n {
                want.push(
                    -xs[k].sin() * s * d(k, i) * d(k, j)
                        + 2.0 * xs[k].cos() * (d(k, i) * xs[j] + d(k, j) * xs[i])
                        + 2.0 * xs[k].sin() * d(i, j),
                );
            }
        }
    }
    assert_close(&vals(t), &want, 1e-13);

    // Each output's slice is the Hessian of that output alone.
    let got = vals(t);
    for k in 0..n {
        let hk = hessian(move |x: &Tensor| f(x).index(0, k as isize))
            .call(&Tensor::from(xs))
            .unwrap();
        assert_close(&got[k * n * n..(k + 1) * n * n], &vals(leaf(&hk)), 1e-14);
    }

    // A matrix-valued output: shape [2, 3] ++ [3] ++ [3]; f_{rk} = c_r x_k S1 with S1 = sum x,
    // so d2 f_rk / dx_i dx_j = c_r (d_ki + d_kj).
    let c = Tensor::from([2.0, -1.0]);
    let g = move |x: &Tensor| c.expand_dims(1) * x.expand_dims(0) * x.sum();
    let h = hessian(g).call(&Tensor::from([0.3, 0.1, -0.4])).unwrap();
    let t = leaf(&h);
    assert_eq!(t.shape().unwrap(), &[2, 3, 3, 3]);
    assert_symmetric_trailing(t, 3);
    let mut want = Vec::new();
    for cr in [2.0, -1.0] {
        for k in 0..3 {
            for i in 0..3 {
                for j in 0..3 {
                    want.push(cr * (d(k, i) + d(k, j)));
                }
            }
        }
    }
    assert_close(&vals(t), &want, 1e-14);
}

#[test]
fn tuple_output_gives_a_tuple_of_blocks() {
    let xs = [0.5, -1.0, 1.5];
    let h = hessian(|x: &Tensor| (x.powi(3).sum(), x.exp()))
        .call(&Tensor::from(xs))
        .unwrap();
    let Node::Tuple(items) = &h else {
        panic!("expected a tuple, got {h}")
    };
    assert_eq!(items.len(), 2);
    let first = leaf(&items[0]);
    assert_eq!(first.shape().unwrap(), &[3, 3]);
    let mut want = vec![0.0; 9];
    for i in 0..3 {
        want[i * 3 + i] = 6.0 * xs[i];
    }
    assert_close(&vals(first), &want, 1e-14);
    assert_symmetric_trailing(first, 3);

    let second = leaf(&items[1]);
    assert_eq!(second.shape().unwrap(), &[3, 3, 3]);
    let mut want = vec![0.0; 27];
    for k in 0..3 {
        want[k * 9 + k * 3 + k] = xs[k].exp();
    }
    assert_close(&vals(second), &want, 1e-14);
}

#[test]
fn float32_inputs_give_an_f32_hessian_close_to_f64() {
    let p = [-1.2f64, 1.0, 0.3, -0.5, 2.0, 0.7];
    let p32: Vec<f32> = p.iter().map(|&v| v as f32).collect();
    let h = hessian(rosen);
    let h64 = h.call(&Tensor::from(p)).unwrap();
    let h32 = h.call(&Tensor::from(p32.clone())).unwrap();
    let t32 = leaf(&h32);
    assert_eq!(t32.dtype().unwrap(), DType::F32);
    assert_eq!(t32.shape().unwrap(), &[6, 6]);
    let got: Vec<f64> = t32
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    assert_close(&got, &vals(leaf(&h64)), 1e-5);
    // The exact Hessian at the f32-rounded point agrees even more closely.
    let rounded: Vec<f64> = p32.iter().map(|&v| f64::from(v)).collect();
    assert_close(&got, &rosen_hessian(&rounded), 1e-5);

    // A return value keeps f32 too.
    let (_, value) = hessian(rosen)
        .return_value()
        .call(&Tensor::from(p32))
        .unwrap();
    assert_eq!(value.dtype().unwrap(), DType::F32);
}

// ---------------------------------------------------------------------------------------------
// Layouts and argnums.
// ---------------------------------------------------------------------------------------------

#[test]
fn all_four_layouts_with_exact_types() {
    let x = Tensor::from([0.3, -0.5, 0.8]);
    let xv = vals(&x);
    let a = quad_sin_matrix();
    let av = vals(&a);
    let mut want = vec![0.0; 9];
    for i in 0..3 {
        for j in 0..3 {
            want[i * 3 + j] = av[i * 3 + j] + av[j * 3 + i];
        }
        want[i * 3 + i] -= xv[i].sin();
    }
    let value: f64 = {
        let ax: Vec<f64> = (0..3)
            .map(|j| (0..3).map(|i| xv[i] * av[i * 3 + j]).sum())
            .collect();
        (0..3).map(|j| ax[j] * xv[j] + xv[j].sin()).sum()
    };

    // Borrowing closures are `Copy`, so each layout can take its own.
    let plain = |x: &Tensor| x.matmul(&a).matmul(x) + x.sin().sum();
    let with_aux = |x: &Tensor| (x.matmul(&a).matmul(x) + x.sin().sum(), x * 2.0);

    let h: Node = hessian(plain).call(&x).unwrap();
    assert_close(&vals(leaf(&h)), &want, 1e-14);

    let (h, aux): (Node, Tensor) = hessian(with_aux).has_aux().call(&x).unwrap();
    assert_close(&vals(leaf(&h)), &want, 1e-14);
    assert_close(&vals(&aux), &[0.6, -1.0, 1.6], 1e-15);

    let (h, v): (Node, Tensor) = hessian(plain).return_value().call(&x).unwrap();
    assert_close(&vals(leaf(&h)), &want, 1e-14);
    assert_eq!(v.shape().unwrap(), &[] as &[usize]);
    assert_close(&[v.item().unwrap()], &[value], 1e-14);

    let (h, v, aux): (Node, Tensor, Tensor) =
        hessian(with_aux).has_aux().return_value().call(&x).unwrap();
    assert_close(&vals(leaf(&h)), &want, 1e-14);
    assert_close(&[v.item().unwrap()], &[value], 1e-14);
    assert_close(&vals(&aux), &[0.6, -1.0, 1.6], 1e-15);

    // The builder order does not matter.
    let (h, v, aux): (Node, Tensor, Tensor) =
        hessian(with_aux).return_value().has_aux().call(&x).unwrap();
    assert_close(&vals(leaf(&h)), &want, 1e-14);
    assert_close(&[v.item().unwrap()], &[value], 1e-14);
    assert_close(&vals(&aux), &[0.6, -1.0, 1.6], 1e-15);

    // Aux and value of any tree type come back with that type.
    let tree_out = |x: &Tensor| {
        let value = (x.powi(2).sum(), x.sum());
        let aux = BTreeMap::from([
            ("double".to_string(), x * 2.0),
            ("id".to_string(), x.clone()),
        ]);
        (value, aux)
    };
    let (h, (v0, v1), aux): (Node, (Tensor, Tensor), BTreeMap<String, Tensor>) =
        hessian(tree_out).has_aux().return_value().call(&x).unwrap();
    assert!(matches!(&h, Node::Tuple(c) if c.len() == 2));
    assert_close(
        &vals(leaf(&h[0])),
        &[2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 2.0],
        0.0,
    );
    assert_close(&vals(leaf(&h[1])), &[0.0; 9], 0.0);
    assert_close(&[v0.item().unwrap()], &[0.98], 1e-15);
    assert_close(&[v1.item().unwrap()], &[0.6], 1e-15);
    assert_eq!(aux.keys().collect::<Vec<_>>(), ["double", "id"]);
    assert_close(&vals(&aux["id"]), &xv, 0.0);
}

#[test]
fn argnums_control_nesting_and_order() {
    let x = Tensor::from([0.2, -0.4, 0.6]);
    let y = Tensor::from([1.5, -0.7]);
    let h = hessian(two_args);

    // An integer: no tuple level.
    let h0 = h.call((&x, &y)).unwrap();
    assert_eq!(leaf(&h0).shape().unwrap(), &[3, 3]);
    symmetric_matrix(&h0);
    let h = h.argnums(1);
    let h1 = h.call((&x, &y)).unwrap();
    assert_eq!(leaf(&h1).shape().unwrap(), &[2, 2]);
    symmetric_matrix(&h1);

    // A one-element sequence: a 1 x 1 tuple of tuples.
    let one = hessian(two_args).argnums([1]).call((&x, &y)).unwrap();
    let Node::Tuple(rows) = &one else {
        panic!("expected a tuple, got {one}")
    };
    assert_eq!(rows.len(), 1);
    assert!(matches!(&rows[0], Node::Tuple(c) if c.len() == 1));
    assert_eq!(vals(leaf(&one[0][0])), vals(leaf(&h1)));

    // [0, 1]: blocks (x,x) (x,y) / (y,x) (y,y).
    let h01 = hessian(two_args).argnums([0, 1]).call((&x, &y)).unwrap();
    let shapes = [[vec![3, 3], vec![3, 2]], [vec![2, 3], vec![2, 2]]];
    for (p, row) in shapes.iter().enumerate() {
        for (q, shape) in row.iter().enumerate() {
            assert_eq!(
                leaf(&h01[p][q]).shape().unwrap(),
                shape.as_slice(),
                "block ({p},{q})"
            );
        }
    }
    assert_close(&vals(leaf(&h01[0][0])), &vals(leaf(&h0)), 1e-14);
    assert_close(&vals(leaf(&h01[1][1])), &vals(leaf(&h1)), 1e-14);
    // The mixed blocks are each other's transposes.
    let b01 = vals(leaf(&h01[0][1]));
    let b10 = vals(leaf(&h01[1][0]));
    for i in 0..3 {
        for j in 0..2 {
            assert!((b01[i * 2 + j] - b10[j * 3 + i]).abs() < 1e-13);
        }
    }
    // Mixed closed form: d2/dx_i dy_j = 2 (1 - tanh^2 x_i) y_j + 2 x_i 2 y_j / (1 + y_j^2).
    let (xv, yv) = (vals(&x), vals(&y));
    let mut want = Vec::new();
    for &xi in &xv {
        for &yj in &yv {
            let sech2 = 1.0 - xi.tanh().powi(2);
            want.push(2.0 * sech2 * yj + 4.0 * xi * yj / (1.0 + yj * yj));
        }
    }
    assert_close(&b01, &want, 1e-13);

    // [1, 0]: the same blocks in the other order.
    let h10 = hessian(two_args).argnums([1, 0]).call((&x, &y)).unwrap();
    for p in 0..2 {
        for q in 0..2 {
            let a = leaf(&h10[p][q]);
            let b = leaf(&h01[1 - p][1 - q]);
            assert_eq!(a.shape().unwrap(), b.shape().unwrap(), "block ({p},{q})");
            assert_close(&vals(a), &vals(b), 1e-14);
        }
    }

    // flat_matrix over [0, 1] is the assembled blocks, and symmetric.
    let (n, m) = symmetric_matrix(&h01);
    assert_eq!(n, 5);
    for i in 0..5 {
        for j in 0..5 {
            let (p, r) = if i < 3 { (0, i) } else { (1, i - 3) };
            let (q, c) = if j < 3 { (0, j) } else { (1, j - 3) };
            let cols = if q == 0 { 3 } else { 2 };
            let block = vals(leaf(&h01[p][q]));
            assert_eq!(m[i * 5 + j], block[r * cols + c], "entry ({i},{j})");
        }
    }
    // Over [1, 0] the matrix is the same one with the variables permuted.
    let (_, m10) = symmetric_matrix(&h10);
    let perm = [3, 4, 0, 1, 2];
    for i in 0..5 {
        for j in 0..5 {
            assert_eq!(m10[i * 5 + j], m[perm[i] * 5 + perm[j]]);
        }
    }
}

#[test]
fn undifferentiated_arguments_may_be_integers_and_trees() {
    let f = |x: &Tensor, n: &Tensor, extra: &(Tensor, Tensor)| {
        (x.powi(2) * n).sum() + (&extra.0 * &extra.1).sum() * x.sum()
    };
    let x = Tensor::from([1.0, 2.0]);
    let n = Tensor::from(vec![3i64, 5]);
    let extra = (Tensor::from([1.0]), Tensor::from([4.0]));
    let h = hessian(f).call((&x, &n, &extra)).unwrap();
    assert_close(&vals(leaf(&h)), &[6.0, 0.0, 0.0, 10.0], 0.0);
    // A tree argument, differentiated: blocks nest input tree / input tree.
    let h = hessian(f).argnums(2).call((&x, &n, &extra)).unwrap();
    assert_eq!(h.leaves().len(), 4);
    assert_close(&vals(leaf(&h[0][1])), &[3.0], 1e-15);
    assert_close(&vals(leaf(&h[1][0])), &[3.0], 1e-15);
    assert_close(&vals(leaf(&h[0][0])), &[0.0], 0.0);
}

// ---------------------------------------------------------------------------------------------
// The plan cache.
// ---------------------------------------------------------------------------------------------

#[test]
fn plan_cache_reuses_and_rebuilds_per_signature() {
    let h = hessian(rosen).return_value();
    let p6 = Tensor::from([-1.2, 1.0, 0.3, -0.5, 2.0, 0.7]);
    let (a, va) = h.call(&p6).unwrap();
    let (b, vb) = h.call(&p6).unwrap();
    assert_eq!(vals(leaf(&a)), vals(leaf(&b)), "same call, same bits");
    assert_eq!(va.item().unwrap(), vb.item().unwrap());

    // Same signature, other values: still right (the plan is not specialised to values).
    let q6 = [0.11, -0.37, 1.9, -2.4, 0.05, 3.3];
    let (c, _) = h.call(&Tensor::from(q6)).unwrap();
    assert_close(&vals(leaf(&c)), &rosen_hessian(&q6), 1e-13);

    // A new shape is a new signature.
    let p3 = [0.4, -0.9, 1.2];
    let (d, vd) = h.call(&Tensor::from(p3)).unwrap();
    assert_eq!(leaf(&d).shape().unwrap(), &[3, 3]);
    assert_close(&vals(leaf(&d)), &rosen_hessian(&p3), 1e-13);
    assert_close(
        &[vd.item().unwrap()],
        &[vals(&rosen(&Tensor::from(p3)))[0]],
        1e-14,
    );

    // Back to the first signature: unchanged.
    let (e, _) = h.call(&p6).unwrap();
    assert_eq!(vals(leaf(&e)), vals(leaf(&a)));
}

#[test]
fn plan_cache_handles_different_tree_structures() {
    let f = |xs: &Vec<Tensor>| {
        let mut total = Tensor::scalar(0.0);
        for (k, x) in xs.iter().enumerate() {
            total = total + x.powi(3).sum() * (k as f64 + 1.0);
        }
        total
    };
    let h = hessian(f);
    let two = vec![Tensor::from([1.0, 2.0]), Tensor::scalar(3.0)];
    let three = vec![
        Tensor::from([1.0]),
        Tensor::from([2.0]),
        Tensor::from([0.5, -1.0]),
    ];

    let h2 = h.call(&two).unwrap();
    let Node::List(rows) = &h2 else {
        panic!("expected a list, got {h2}")
    };
    assert_eq!(rows.len(), 2);
    assert_close(&vals(leaf(&h2[0][0])), &[6.0, 0.0, 0.0, 12.0], 1e-15);
    assert_eq!(leaf(&h2[0][1]).shape().unwrap(), &[2]);
    assert_close(&vals(leaf(&h2[1][1])), &[2.0 * 6.0 * 3.0], 1e-15);

    let h3 = h.call(&three).unwrap();
    assert_eq!(h3.leaves().len(), 9);
    assert_close(&vals(leaf(&h3[0][0])), &[6.0], 1e-15);
    assert_close(&vals(leaf(&h3[1][1])), &[2.0 * 6.0 * 2.0], 1e-15);
    assert_close(
        &vals(leaf(&h3[2][2])),
        &[3.0 * 6.0 * 0.5, 0.0, 0.0, -(3.0 * 6.0)],
        1e-15,
    );
    assert_close(&vals(leaf(&h3[0][2])), &[0.0, 0.0], 0.0);
    symmetric_matrix(&h3);

    // And back to the first structure.
    let again = h.call(&two).unwrap();
    assert_eq!(again.leaves().len(), 4);
    assert_eq!(vals(leaf(&again[0][0])), vals(leaf(&h2[0][0])));

    // Maps with different keys are different signatures too.
    let g = |m: &BTreeMap<String, Tensor>| {
        m.values()
            .map(|t| t.powi(2).sum())
            .fold(Tensor::scalar(0.0), |a, b| a + b)
    };
    let h = hessian(g);
    let m1 = BTreeMap::from([("a".to_string(), Tensor::from([1.0]))]);
    let m2 = BTreeMap::from([
        ("b".to_string(), Tensor::from([1.0])),
        ("c".to_string(), Tensor::from([1.0, 2.0])),
    ]);
    let r1 = h.call(&m1).unwrap();
    assert!(matches!(&r1, Node::Map(c) if c.len() == 1 && c[0].0 == "a"));
    let r2 = h.call(&m2).unwrap();
    assert_close(&vals(leaf(&r2["c"]["c"])), &[2.0, 0.0, 0.0, 2.0], 0.0);
    assert_close(&vals(leaf(&r2["b"]["c"])), &[0.0, 0.0], 0.0);
    assert!(r2.key("a").is_err());
}

// ---------------------------------------------------------------------------------------------
// Printed programs.
// ---------------------------------------------------------------------------------------------

/// The constants list of a printed program: between `{ lambda ` and ` ;`.
fn constants(text: &str) -> &str {
    let start = text.find("{ lambda ").expect("program header") + "{ lambda ".len();
    let end = start + text[start..].find(';').expect("constants end");
    &text[start..end]
}

#[test]
fn make_program_prints_readable_ssa() {
    let x = Tensor::linspace(-1.0, 1.0, 6);
    let program = make_program(rosen, &x).unwrap();
    let text = program.to_string();
    assert!(text.starts_with("{ lambda "), "{text}");
    assert!(
        text.contains("; a:f64[6]. let") || text.contains(":f64[6]. let"),
        "{text}"
    );
    for name in ["slice", "integer_pow", "sub", "mul", "add", "reduce_sum"] {
        assert!(
            text.contains(name),
            "program should contain {name}:\n{text}"
        );
    }
    assert!(text.trim_end().ends_with('}'), "{text}");
    assert_eq!(text.lines().count(), program.len() + 2, "{text}");
    assert!(!program.is_empty());
    assert_eq!(program.input_avals()[0].shape, vec![6]);
    assert_eq!(program.output_avals()[0].shape, Vec::<usize>::new());
    // Several arguments.
    let p = make_program(two_args, (&Tensor::from([1.0, 2.0]), &Tensor::from([3.0]))).unwrap();
    let text = p.to_string();
    for name in ["tanh", "log1p", "matmul", "reduce_sum"] {
        assert!(
            text.contains(name),
            "program should contain {name}:\n{text}"
        );
    }
}

#[test]
fn hessian_program_uses_eye_and_no_dense_constant() {
    let n = 6;
    let x = Tensor::linspace(-1.0, 1.0, n);
    let h = hessian(rosen);
    let program = h.program(&x).unwrap();
    let text = program.to_string();
    let consts = constants(&text);
    let mut problems = Vec::new();
    if !text.contains("eye") {
        problems.push("the tangent basis should be generated by `eye`".to_string());
    }
    if consts.contains(&format!("[{n},{n}]")) {
        problems.push(format!("an f64[{n},{n}] constant: {consts:?}"));
    }
    // Nor any slice of the basis folded into a matrix constant (such as [n, n-1]).
    let matrix_consts: Vec<&str> = consts
        .split_whitespace()
        .filter(|c| c.contains(','))
        .collect();
    if !matrix_consts.is_empty() {
        problems.push(format!("matrix constants {matrix_consts:?}"));
    }
    assert!(problems.is_empty(), "{}:\n{text}", problems.join("; "));
    // The output is the [n, n] block (the program keeps the function's own output first).
    let outs = program.output_avals();
    assert!(outs.iter().any(|a| a.shape == vec![n, n]), "{outs:?}");
    // grad / jacfwd programs print too.
    let g = grad(rosen).program(&x).unwrap().to_string();
    assert!(g.contains("integer_pow"), "{g}");
    let jf = jacfwd(|x: &Tensor| x.sin())
        .program(&x)
        .unwrap()
        .to_string();
    assert!(jf.contains("cos"), "{jf}");
}

// ---------------------------------------------------------------------------------------------
// Bad input: clear errors, never panics.
// ---------------------------------------------------------------------------------------------

#[test]
fn argnums_out_of_range_is_an_error() {
    let x = Tensor::from([1.0, 2.0]);
    let e = expect_err(hessian(two_args).argnums(2).call((&x, &x)));
    assert!(matches!(e, Error::Options(_)), "{e:?}");
    assert_mentions(&e, &["argnums", "2", "out of range", "2 positional"]);
    let e = expect_err(hessian(two_args).argnums([0, 5]).call((&x, &x)));
    assert_mentions(&e, &["5", "out of range"]);
    let e = expect_err(
        hessian(two_args)
            .argnums(Vec::<usize>::new())
            .call((&x, &x)),
    );
    assert_mentions(&e, &["argnums", "at least one"]);
}

#[test]
fn repeated_argnums_is_an_error() {
    let x = Tensor::from([1.0, 2.0]);
    let e = expect_err(hessian(two_args).argnums([0, 0]).call((&x, &x)));
    assert!(matches!(e, Error::Options(_)), "{e:?}");
    assert_mentions(&e, &["argnums", "repeats", "0"]);
    let e = expect_err(grad(two_args).argnums([1, 0, 1]).call((&x, &x)));
    assert_mentions(&e, &["grad", "repeats", "1"]);
}

#[test]
fn differentiating_an_integer_argument_is_an_error() {
    let e = expect_err(hessian(|x: &Tensor| x.sum()).call(&Tensor::from(vec![1i64, 2])));
    assert!(matches!(e, Error::DType { .. }), "{e:?}");
    assert_mentions(&e, &["hessian", "floating point", "i64"]);
}

#[test]
fn differentiating_a_bool_argument_is_an_error() {
    let e = expect_err(
        hessian(|x: &Tensor| x.cast(DType::F64).sum()).call(&Tensor::from(vec![true, false])),
    );
    assert!(matches!(e, Error::DType { .. }), "{e:?}");
    assert_mentions(&e, &["floating point", "bool"]);
}

#[test]
fn an_integer_output_is_an_error() {
    let e =
        expect_err(hessian(|x: &Tensor| x.cast(DType::I64).sum()).call(&Tensor::from([1.0, 2.0])));
    assert!(matches!(e, Error::DType { .. }), "{e:?}");
    assert_mentions(&e, &["output", "floating point", "i64"]);
    let e = expect_err(hessian(|x: &Tensor| x.gt(0.0)).call(&Tensor::from([1.0, 2.0])));
    assert_mentions(&e, &["output", "bool"]);
}

#[test]
fn a_shape_mismatch_while_tracing_names_the_op_and_shapes() {
    let e = expect_err(
        hessian(|x: &Tensor| (x + Tensor::from([1.0, 2.0, 3.0])).sum())
            .call(&Tensor::from([1.0, 2.0])),
    );
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_mentions(&e, &["add", "[2]", "[3]"]);
    let e = expect_err(
        grad(|x: &Tensor| x.matmul(&Tensor::from([[1.0, 2.0]])).sum())
            .call(&Tensor::from([1.0, 2.0, 3.0])),
    );
    assert_mentions(&e, &["matmul"]);
}

#[test]
fn grad_of_a_nonscalar_output_is_an_error() {
    let e = expect_err(grad(|x: &Tensor| x.sin()).call(&Tensor::from([1.0, 2.0])));
    assert_mentions(&e, &["grad", "scalar", "[2]"]);
    let e = expect_err(grad(|x: &Tensor| (x.sum(), x.sum())).call(&Tensor::from([1.0, 2.0])));
    assert_mentions(&e, &["grad", "scalar"]);
}

#[test]
fn holomorphic_on_real_input_is_an_error() {
    let e = expect_err(
        hessian(|x: &Tensor| x.sin().sum())
            .holomorphic(true)
            .call(&Tensor::from([1.0, 2.0])),
    );
    assert_mentions(&e, &["holomorphic", "complex", "f64"]);
    // Off again, the same transform works.
    let h = hessian(|x: &Tensor| x.sin().sum()).holomorphic(false);
    assert!(h.call(&Tensor::from([1.0, 2.0])).is_ok());
}

#[test]
fn a_panic_while_tracing_is_an_error() {
    let f = |x: &Tensor| -> Tensor {
        if x.shape().unwrap() == [2] {
            panic!("boom at shape {:?}", x.shape().unwrap());
        }
        x.sum()
    };
    let h = hessian(f);
    let e = expect_err(h.call(&Tensor::from([1.0, 2.0])));
    assert!(matches!(e, Error::Panic(_)), "{e:?}");
    assert_mentions(&e, &["panicked", "boom at shape [2]"]);
    // The transform is still usable afterwards.
    let ok = h.call(&Tensor::from([1.0, 2.0, 3.0])).unwrap();
    assert_close(&vals(leaf(&ok)), &[0.0; 9], 0.0);
    // A static &str payload too.
    let e =
        expect_err(grad(|_: &Tensor| -> Tensor { panic!("static") }).call(&Tensor::scalar(1.0)));
    assert_mentions(&e, &["static"]);
}

#[test]
fn debug_nan_names_the_primitive_and_the_source_line() {
    let x = Tensor::from([0.0, 1.0, 4.0]);
    let e = expect_err(
        hessian(|x: &Tensor| x.sqrt().sum())
            .debug_nan(true)
            .call(&x),
    );
    match &e {
        Error::NonFinite {
            primitive,
            source_hint,
            ..
        } => {
            assert!(!primitive.is_empty());
            let hint = source_hint.as_deref().unwrap_or_default();
            assert!(hint.contains("tests/hessian.rs"), "source hint {hint:?}");
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert_mentions(&e, &["debug_nan", "non-finite", "tests/hessian.rs"]);

    // Off: the same call returns non-finite values.
    let h = hessian(|x: &Tensor| x.sqrt().sum()).call(&x).unwrap();
    let v = vals(leaf(&h));
    assert!(v.iter().any(|x| !x.is_finite()), "{v:?}");
    // Finite entries are still right: d2 sqrt(x) / dx2 = -x^(-3/2) / 4.
    assert_close(&[v[4], v[8]], &[-0.25, -0.25 / 8.0], 1e-14);
}

#[test]
fn the_value_is_computed_only_when_returned() {
    // log(0) is in the value alone: the Hessian in x does not depend on y.
    let f = |x: &Tensor, y: &Tensor| (x * x).sum() + y.log().sum();
    let (x, y) = (Tensor::from([1.0, 2.0]), Tensor::from([0.0]));
    let h = hessian(f).debug_nan(true).call((&x, &y)).unwrap();
    assert_close(&vals(leaf(&h)), &[2.0, 0.0, 0.0, 2.0], 0.0);
    let e = expect_err(hessian(f).debug_nan(true).return_value().call((&x, &y)));
    assert_mentions(&e, &["debug_nan", "log"]);
    let (_, value) = hessian(f).return_value().call((&x, &y)).unwrap();
    assert_eq!(value.item().unwrap(), f64::NEG_INFINITY);
}

#[test]
fn eager_operations_return_failed_tensors() {
    let bad = Tensor::from([1.0, 2.0]) + Tensor::from([1.0, 2.0, 3.0]);
    let e = expect_err(bad.to_vec::<f64>());
    assert_mentions(&e, &["add", "[2]", "[3]"]);
    assert_eq!(bad.error(), Some(&e));
    // Later operations carry the same error.
    let later = (bad * 2.0).sin().sum();
    assert_eq!(expect_err(later.item()), e);
    // And a transform called on a failed tensor reports it.
    let e2 = expect_err(hessian(|x: &Tensor| x.sum()).call(&later));
    assert_eq!(e2, e);
}

#[test]
fn every_operation_on_a_failed_tensor_hands_its_first_error_on() {
    let bad = Tensor::from([1.0, 2.0]) + Tensor::from([1.0, 2.0, 3.0]);
    let e = bad.error().cloned().expect("a failed tensor");
    // A failed tensor has no shape or dtype to read.
    assert_eq!(bad.shape().unwrap_err(), e);
    assert_eq!(bad.dtype().unwrap_err(), e);
    assert_eq!(bad.ndim().unwrap_err(), e);
    assert_eq!(bad.numel().unwrap_err(), e);
    let good = Tensor::from([[1.0, 2.0], [3.0, 4.0]]);
    let results: Vec<(&str, Tensor)> = vec![
        ("zeros_like", bad.zeros_like()),
        ("powi(0)", bad.powi(0)),
        ("powi(1)", bad.powi(1)),
        ("powi(3)", bad.powi(3)),
        ("reshape", bad.reshape(&[-1])),
        ("transpose", bad.transpose()),
        ("permute", bad.permute(&[0])),
        ("expand_dims", bad.expand_dims(0)),
        ("slice_along", bad.slice_along(0, 1.., 1)),
        ("index", bad.index(0, 0)),
        ("broadcast_to", bad.broadcast_to(&[2, 2])),
        ("sum", bad.sum()),
        ("sum_axes", bad.sum_axes(&[0], true)),
        ("max", bad.max()),
        ("mean", bad.mean()),
        ("mean_axes", bad.mean_axes(&[0], false)),
        ("logsumexp", bad.logsumexp()),
        ("softmax", bad.softmax(0)),
        ("cast", bad.cast(brainstate::DType::F32)),
        ("exp", bad.exp()),
        ("abs", bad.abs()),
        ("powf", bad.powf(0.5)),
        ("maximum", good.maximum(&bad)),
        ("logaddexp", bad.logaddexp(0.0)),
        ("eq", bad.eq(0.0)),
        ("select", good.gt(0.0).select(&bad, 0.0)),
        ("matmul (left)", bad.matmul(&good)),
        ("matmul (right)", good.matmul(&bad)),
        ("scalar - x", 1.0 - &bad),
        ("x * scalar", &bad * 2.0),
        (
            "concatenate",
            brainstate::concatenate(&[good.clone(), bad.clone()], 0),
        ),
        ("stack", brainstate::stack(std::slice::from_ref(&bad), 0)),
        (
            "with a unit",
            (&bad * brainstate::units::mV).to_unit(brainstate::units::volt),
        ),
    ];
    for (op, result) in results {
        assert_eq!(
            result.error(),
            Some(&e),
            "{op} must hand the first error on"
        );
    }

    // Inside a transform too: the call fails with the first error, never with a made-up result.
    let f = |x: &Tensor| (x + Tensor::from([1.0, 2.0, 3.0])).zeros_like().sum() + x.sum();
    let err = expect_err(grad(f).call(&Tensor::from([1.0, 2.0])));
    assert_mentions(&err, &["add", "[2]", "[3]"]);
}

// ---------------------------------------------------------------------------------------------
// grad / jacrev / jacfwd / hessian agree.
// ---------------------------------------------------------------------------------------------

fn scalar_f(x: &Tensor) -> Tensor {
    (x.sin() * x.powi(2)).sum() + x.exp().sum() * x.sum() + rosen(x)
}

#[test]
fn grad_jacrev_and_jacfwd_agree() {
    let x = Tensor::from([0.3, -0.8, 1.1, 0.4]);
    let g = vals(leaf(&grad(scalar_f).call(&x).unwrap()));
    let jr = jacrev(scalar_f).call(&x).unwrap();
    let jf = jacfwd(scalar_f).call(&x).unwrap();
    assert_eq!(leaf(&jr).shape().unwrap(), &[4]);
    assert_eq!(leaf(&jf).shape().unwrap(), &[4]);
    assert_close(&vals(leaf(&jr)), &g, 1e-13);
    assert_close(&vals(leaf(&jf)), &g, 1e-13);

    // grad's return_value is the function's value.
    let (_, v) = grad(scalar_f).return_value().call(&x).unwrap();
    assert_close(&[v.item().unwrap()], &[scalar_f(&x).item().unwrap()], 1e-15);

    // A vector function: reverse and forward Jacobians agree, shape out ++ in.
    let vf = |x: &Tensor| x.tanh() * x.sum() + x.slice_along(0, ..2, 1).sum();
    let jr = jacrev(vf).call(&x).unwrap();
    let jf = jacfwd(vf).call(&x).unwrap();
    assert_eq!(leaf(&jr).shape().unwrap(), &[4, 4]);
    assert_close(&vals(leaf(&jr)), &vals(leaf(&jf)), 1e-13);
}

#[test]
fn jacobians_of_the_gradient_equal_the_hessian() {
    let x = Tensor::from([0.3, -0.8, 1.1, 0.4]);
    let h = hessian(scalar_f).call(&x).unwrap();
    let hv = vals(leaf(&h));
    symmetric_matrix(&h);

    let g = grad(scalar_f);
    let grad_of = |x: &Tensor| g.call(x).expect("inner grad").tensor().unwrap().clone();
    let fwd = jacfwd(grad_of).call(&x).unwrap();
    assert_eq!(leaf(&fwd).shape().unwrap(), &[4, 4]);
    assert_close(&vals(leaf(&fwd)), &hv, 1e-13);
    let rev = jacrev(grad_of).call(&x).unwrap();
    assert_close(&vals(leaf(&rev)), &hv, 1e-13);

    // jacfwd(jacrev(f)) too.
    let jr = jacrev(scalar_f);
    let jac_of = |x: &Tensor| jr.call(x).expect("inner jacrev").tensor().unwrap().clone();
    let fwd = jacfwd(jac_of).call(&x).unwrap();
    assert_close(&vals(leaf(&fwd)), &hv, 1e-13);
}

#[test]
fn mixed_hessian_blocks_are_jacobians_of_partial_gradients() {
    let x = Tensor::from([0.2, -0.4, 0.6]);
    let y = Tensor::from([1.5, -0.7]);
    let h = hessian(two_args).argnums([0, 1]).call((&x, &y)).unwrap();

    // d/dy of (d f / dx) is block (x, y).
    let gx = grad(two_args);
    let gx_of = |x: &Tensor, y: &Tensor| gx.call((x, y)).unwrap().tensor().unwrap().clone();
    let j = jacfwd(gx_of).argnums(1).call((&x, &y)).unwrap();
    assert_eq!(leaf(&j).shape().unwrap(), &[3, 2]);
    assert_close(&vals(leaf(&j)), &vals(leaf(&h[0][1])), 1e-13);

    // grad over [0, 1] nests one tuple level, and jacrev of it over [0, 1] is the Hessian.
    let g = grad(two_args).argnums([0, 1]);
    let both = g.call((&x, &y)).unwrap();
    assert!(matches!(&both, Node::Tuple(c) if c.len() == 2));
    let g_of = |x: &Tensor, y: &Tensor| {
        let n = g.call((x, y)).unwrap();
        (
            n[0].tensor().unwrap().clone(),
            n[1].tensor().unwrap().clone(),
        )
    };
    let j = jacrev(g_of).argnums([0, 1]).call((&x, &y)).unwrap();
    for p in 0..2 {
        for q in 0..2 {
            assert_close(&vals(leaf(&j[p][q])), &vals(leaf(&h[p][q])), 1e-13);
        }
    }
}

#[test]
fn every_leaf_is_reachable_and_indexing_errors_are_errors() {
    let h = hessian(two_args)
        .argnums([0, 1])
        .call((&Tensor::from([1.0]), &Tensor::from([2.0])))
        .unwrap();
    assert_eq!(h.leaves().len(), 4);
    assert!(h.get(2).is_err());
    assert!(h.key("x").is_err());
    assert!(h.tensor().is_err());
    assert!(h[0][0].get(0).is_err());
    // flat_matrix needs a square set of blocks.
    let tuple_out = hessian(|x: &Tensor| (x.sum(), x.sum(), x.sum()))
        .call(&Tensor::from([1.0]))
        .unwrap();
    assert!(tuple_out.flat_matrix().is_err());
}

// ---------------------------------------------------------------------------------------------
// Sweeps: forward mode in chunks of directions gives the same derivatives for every chunk size.
// ---------------------------------------------------------------------------------------------

/// Every leaf of a result, flattened in order.
fn all_values(node: &Node) -> Vec<f64> {
    node.leaves().iter().flat_map(vals).collect()
}

#[test]
fn every_chunk_size_gives_the_same_derivatives() {
    let w = brainstate::ParamState::new(Tensor::from([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]]));
    let b = brainstate::ParamState::new(Tensor::from([0.05, -0.1, 0.2]));
    // Two arguments (one of them not differentiated by every block) and two states.
    let f = |x: &Tensor, y: &Tensor| {
        let h = (x.matmul(&w.value()) + b.value()).tanh();
        (h * y).sum() + (x.powi(2) * y.sum()).sum()
    };
    let x = Tensor::from([[0.7, -0.3], [0.2, 0.9]]);
    let y = Tensor::from([0.5, -1.5, 2.0]);
    let reference = hessian(f)
        .grad_states([&w, &b])
        .argnums([0, 1])
        .chunk_size(1000)
        .joint((&x, &y))
        .unwrap();
    for chunk in [1, 2, 5] {
        let chunked = hessian(f)
            .grad_states([&w, &b])
            .argnums([0, 1])
            .chunk_size(chunk)
            .joint((&x, &y))
            .unwrap();
        assert_close(&all_values(&chunked), &all_values(&reference), 1e-14);
    }
    let default = hessian(f).grad_states([&w, &b]).argnums([0, 1]);
    assert_close(
        &all_values(&default.joint((&x, &y)).unwrap()),
        &all_values(&reference),
        1e-14,
    );
    // The Hessian is symmetric across every pair of blocks.
    let flat = |node: &Node| vals(&node.flat_matrix().unwrap());
    let states = flat(&reference[0][0]);
    let n = (states.len() as f64).sqrt() as usize;
    for i in 0..n {
        for j in 0..n {
            assert!((states[i * n + j] - states[j * n + i]).abs() < 1e-12);
        }
    }

    // Jacobians of a vector function, forward mode, in chunks.
    let g = |x: &Tensor| x.sin().matmul(&x.transpose()) * x.sum();
    let whole = jacfwd(g).chunk_size(100).call(&x).unwrap();
    let rev = jacrev(g).call(&x).unwrap();
    assert_close(&vals(leaf(&whole)), &vals(leaf(&rev)), 1e-14);
    for chunk in [1, 3] {
        let chunked = jacfwd(g).chunk_size(chunk).call(&x).unwrap();
        assert_close(&vals(leaf(&chunked)), &vals(leaf(&whole)), 1e-15);
    }
}

/// A `rows x cols` matrix with entries `f(k)` over the flat index `k`.
fn flat_matrix(rows: usize, cols: usize, f: fn(f64) -> f64) -> Tensor {
    let values = (0..rows * cols).map(|k| f(k as f64)).collect();
    Tensor::from_vec(values, &[rows, cols]).unwrap()
}

#[test]
fn directions_beyond_a_cache_run_in_equal_chunks_side_by_side() {
    // 256 directions through intermediates of a batch of 64 rows: more than a core's cache
    // holds at once, so the sweep runs in chunks of equal size, side by side on the threads.
    let x = flat_matrix(64, 16, |k| (0.37 * k).sin());
    let f = |w: &Tensor| (x.matmul(w).tanh().matmul(w) - 0.5).powi(2).mean();
    let w = flat_matrix(16, 16, |k| 0.2 * (0.11 * k + 0.3).cos());
    let text = hessian(f).program(&w).unwrap().to_string();
    let line = text.lines().find(|l| l.contains("in chunks of")).unwrap();
    let chunk: usize = line
        .split("in chunks of ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(chunk < 256, "{line}");
    // Equal chunks: no smaller chunk would need as few of them.
    let chunks = 256usize.div_ceil(chunk);
    assert_eq!(chunk, 256usize.div_ceil(chunks), "{line}");
    if common::side_by_side_threads() {
        assert!(line.contains("2 side by side"), "{line}");
    }
    let side_by_side = vals(leaf(&hessian(f).call(&w).unwrap()));
    let one_chunk = vals(leaf(&hessian(f).chunk_size(256).call(&w).unwrap()));
    assert_close(&side_by_side, &one_chunk, 1e-13);
    assert!(side_by_side.iter().any(|&v| v.abs() > 1e-3));
}

#[test]
fn a_small_sweep_runs_in_one_chunk_on_the_calling_thread() {
    let x = flat_matrix(32, 8, |k| (0.37 * k).sin());
    let sweep_line = |text: String| {
        let line = text.lines().find(|l| l.contains("in chunks of")).unwrap();
        line.to_string()
    };
    // The basis of w1 (128 directions) meets a product with x that puts each direction's
    // column in a matrix of zeros: it stays a product, all directions in one chunk, not
    // split between the threads (which cost more than the half they saved).
    let mlp = |w1: &Tensor| {
        (x.matmul(w1).tanh().sum_axes(&[1], false) - 0.5)
            .powi(2)
            .mean()
    };
    let w1 = flat_matrix(8, 16, |k| 0.2 * (0.11 * k + 0.3).cos());
    let line = sweep_line(hessian(mlp).program(&w1).unwrap().to_string());
    assert!(
        line.contains("in chunks of 128") && !line.contains("side by side"),
        "{line}"
    );
    let whole = vals(leaf(&hessian(mlp).call(&w1).unwrap()));
    let in_chunks = vals(leaf(&hessian(mlp).chunk_size(16).call(&w1).unwrap()));
    assert_close(&whole, &in_chunks, 1e-13);
    assert!(whole.iter().any(|&v| v.abs() > 1e-3));
    // A linear model's basis only regroups x (`x @ I` is x): one chunk as well.
    let x = flat_matrix(64, 64, |k| (0.37 * k).sin());
    let linear = |w: &Tensor| x.matmul(w).logaddexp(0.0).sum();
    let w = Tensor::from_vec((0..64).map(|k| 0.01 * k as f64).collect(), &[64]).unwrap();
    let line = sweep_line(hessian(linear).program(&w).unwrap().to_string());
    assert!(
        line.contains("in chunks of 64") && !line.contains("side by side"),
        "{line}"
    );
}

#[test]
fn sweeps_of_many_chunks_run_side_by_side() {
    let x = flat_matrix(32, 16, |k| (0.37 * k).sin());
    // Two layers sharing w: a dense Hessian, computed by sweeps.
    let f = |w: &Tensor, b: &Tensor| ((x.matmul(w) + b).tanh().matmul(w) - 0.5).powi(2).mean();
    let w = flat_matrix(16, 16, |k| 0.2 * (0.11 * k + 0.3).cos());
    let b = Tensor::from_vec((0..16).map(|k| 0.05 * k as f64).collect(), &[16]).unwrap();
    // Chunks of 4: 64 + 4 of them, shared by the threads across both sweeps.
    let chunked = hessian(f).argnums([0, 1]).chunk_size(4);
    let text = chunked.program((&w, &b)).unwrap().to_string();
    if common::side_by_side_threads() {
        assert!(text.contains("runs its sweeps side by side"), "{text}");
    }
    // On one thread they run one after the other, on the calling thread: handed to the
    // pool, they would only add a wake-up of its thread to every call.
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let text = one_thread.install(|| {
        let chunked = hessian(f).argnums([0, 1]).chunk_size(4);
        chunked.program((&w, &b)).unwrap().to_string()
    });
    assert!(!text.contains("side by side"), "{text}");
    let flat = |node: &brainstate::Node| node.leaves().iter().flat_map(vals).collect::<Vec<_>>();
    let together = flat(&chunked.call((&w, &b)).unwrap());
    let one_chunk = flat(
        &hessian(f)
            .argnums([0, 1])
            .chunk_size(256)
            .call((&w, &b))
            .unwrap(),
    );
    assert_close(&together, &one_chunk, 1e-13);
    assert!(together.iter().any(|&v| v.abs() > 1e-3));
}

#[test]
fn sweeps_take_the_blocks_of_variables_read_earlier_from_their_mirror_images() {
    // Read in the order x, w, b (not the order of the arguments); two outputs, so that each
    // block has an outer axis before its two groups of axes.
    let f = |b: &Tensor, x: &Tensor, w: &Tensor| {
        let h = (x.matmul(w).tanh() + b).powi(2);
        brainstate::stack(&[h.sum(), (h * x.sum()).sin().sum()], 0)
    };
    let b = Tensor::from([0.1, -0.2, 0.3]);
    let x = Tensor::from([[0.7, -0.3], [0.2, 0.9]]);
    let w = Tensor::from([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]]);
    let args = (&b, &x, &w);
    let swept = hessian(f).argnums([0, 1, 2]).chunk_size(2);
    let text = swept.program(args).unwrap().to_string();
    assert!(
        text.contains("takes 3 blocks from their mirror images"),
        "{text}"
    );
    // One program of all directions (no sweeps, no mirrors) gives the same blocks.
    let whole = hessian(f).argnums([0, 1, 2]);
    assert!(!whole.program(args).unwrap().to_string().contains("mirror"));
    let (swept, whole) = (swept.call(args).unwrap(), whole.call(args).unwrap());
    assert_close(&all_values(&swept), &all_values(&whole), 1e-13);
    // Each mirrored block is its image transposed, to the bit.
    let sizes = [3, 4, 6];
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let (block, image) = (vals(leaf(&swept[i][j])), vals(leaf(&swept[j][i])));
            for o in 0..2 {
                for p in 0..sizes[i] {
                    for q in 0..sizes[j] {
                        let at = (o * sizes[i] + p) * sizes[j] + q;
                        let mirrored = (o * sizes[j] + q) * sizes[i] + p;
                        assert_eq!(block[at].to_bits(), image[mirrored].to_bits());
                    }
                }
            }
        }
    }
}

#[test]
fn blocks_an_input_does_not_reach_are_zero() {
    // y only enters linearly, so d2f/dy2 is zero and never computed; the block keeps its shape.
    let f = |x: &Tensor, y: &Tensor| x.powi(3).sum() + (x * y).sum();
    let (x, y) = (Tensor::from([1.0, 2.0]), Tensor::from([3.0, 4.0]));
    let h = hessian(f).argnums([0, 1]).call((&x, &y)).unwrap();
    assert_eq!(vals(leaf(&h[1][1])), vec![0.0; 4]);
    assert_eq!(leaf(&h[1][1]).shape().unwrap(), &[2, 2]);
    assert_eq!(vals(leaf(&h[0][1])), vec![1.0, 0.0, 0.0, 1.0]);
    assert_eq!(vals(leaf(&h[0][0])), vec![6.0, 0.0, 0.0, 12.0]);
    // jacfwd of an output that does not depend on an argument.
    let j = jacfwd(|x: &Tensor, _y: &Tensor| x * 2.0)
        .argnums([0, 1])
        .call((&x, &y))
        .unwrap();
    assert_eq!(vals(leaf(&j[1])), vec![0.0; 4]);
}

/// Set in the child process of [`a_dense_hessian_of_2145_parameters_needs_little_more_memory_than_its_output`].
const MLP_MEMORY_CHILD: &str = "BRAINSTATE_MLP_MEMORY_CHILD";

/// The child process (a no-op in the parent): the dense Hessian of an MLP with 2,145
/// parameters (16 -> 64 -> 16 -> 1, tanh, over a batch of 256) in its parameter states,
/// printed with the process's peak memory before and after the call.
#[test]
fn mlp_memory_child_entry() {
    if std::env::var(MLP_MEMORY_CHILD).is_err() {
        return;
    }
    let wave = |scale: f64, a: f64, b: f64| {
        move |i: usize, j: usize| scale * (a * i as f64 + b * j as f64 + 0.2).sin()
    };
    let layers = [
        brainstate::ParamState::new(matrix(16, 64, wave(0.3, 0.5, 0.3))),
        brainstate::ParamState::new(matrix(1, 64, wave(0.1, 0.0, 0.9))),
        brainstate::ParamState::new(matrix(64, 16, wave(0.2, 0.4, 0.7))),
        brainstate::ParamState::new(matrix(1, 16, wave(0.05, 0.0, 1.1))),
        brainstate::ParamState::new(matrix(16, 1, wave(0.3, 0.2, 0.0))),
        brainstate::ParamState::new(matrix(1, 1, wave(0.05, 0.0, 0.0))),
    ];
    let [w1, b1, w2, b2, w3, b3] = layers.clone();
    let x = matrix(256, 16, wave(1.0, 0.7, -0.2));
    let y = matrix(256, 1, wave(1.0, 0.3, 0.0));
    let loss = move |x: &Tensor, y: &Tensor| {
        let h1 = (x.matmul(&w1.value()) + b1.value()).tanh();
        let h2 = (h1.matmul(&w2.value()) + b2.value()).tanh();
        (h2.matmul(&w3.value()) + b3.value() - y).powi(2).mean()
    };
    let h = hessian(loss).grad_states(layers.iter().collect::<Vec<_>>());
    let before = common::peak_kb().unwrap_or(0);
    let got = h.call((&x, &y)).unwrap();
    let after = common::peak_kb().unwrap_or(0);
    let (n, values) = symmetric_matrix(&got);
    assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|v| v.abs() > 1e-3));
    println!("MEMORY {n} {before} {after}");
}

#[test]
fn a_dense_hessian_of_2145_parameters_needs_little_more_memory_than_its_output() {
    // The user: a 2,100-parameter model's dense Hessian took 3.5 GB. Its tangent
    // batch (2,145 directions through every activation of the batch) is never whole: sweeps
    // run chunks of it within their memory budget (32 MB), into the output's blocks. With
    // the whole batch as one chunk (`.chunk_size(2145)`), the peak grew by 514 MB.
    let output = common::child_output("mlp_memory_child_entry", MLP_MEMORY_CHILD, "1");
    let line = common::printed(&output, "MEMORY ");
    let [n, before, after]: [u64; 3] = line
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect::<Vec<_>>()
        .try_into()
        .expect("three numbers");
    assert_eq!(n, 2145);
    if after == 0 {
        return; // no /proc to measure with
    }
    let output_kb = n * n * 8 / 1024;
    let growth = after - before;
    assert!(
        growth <= output_kb + (32 << 10),
        "peak grew by {growth} kB for an output of {output_kb} kB"
    );
}
