//! Second order beyond dense Hessians: Hessian-vector products, the Hessian's diagonal,
//! sparsity patterns, sparse Hessians and dense Hessians computed from sparsity, and the
//! directional transforms (jvp, vjp). Everything is checked against the dense Hessian or
//! Jacobian of the same function.

mod common;

use brainstate::units::{mV, ms};
use brainstate::{
    Complex64, Node, ParamState, Tensor, hessian, hessian_sparsity, hvp, jacfwd, jacrev, jvp, vjp,
};
use common::{assert_close, assert_mentions, leaf, rosen_hessian, vals};

fn rosen(x: &Tensor) -> Tensor {
    let head = x.slice_along(0, ..-1, 1);
    let tail = x.slice_along(0, 1.., 1);
    ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
}

/// A function of two arguments mixing structure: slices, products across arguments,
/// reductions, a matrix product and transcendental functions.
fn mixed(x: &Tensor, y: &Tensor) -> Tensor {
    let a = x.slice_along(0, 1.., 1) * x.slice_along(0, ..-1, 1).sin();
    let b = (y.matmul(&y.transpose()) * 0.1).exp().sum();
    (a.sum() + b) * x.sum().tanh()
        + (x.powi(2) * y.sum_axes(&[1], false).slice_along(0, ..4, 1)).sum()
}

fn xy() -> (Tensor, Tensor) {
    let x = Tensor::from([0.3, -0.7, 1.1, 0.4]);
    let y = Tensor::from([
        [0.2, -0.1, 0.5],
        [0.3, 0.8, -0.4],
        [-0.6, 0.1, 0.2],
        [0.7, -0.3, 0.9],
    ]);
    (x, y)
}

/// The dense Hessian of `mixed` over both arguments, as one matrix.
fn mixed_dense() -> (usize, Vec<f64>) {
    let (x, y) = xy();
    let h = hessian(mixed).argnums([0, 1]).call((&x, &y)).unwrap();
    let m = h.flat_matrix().unwrap();
    (m.shape().unwrap()[0], vals(&m))
}

fn matvec(m: &[f64], n: usize, v: &[f64]) -> Vec<f64> {
    (0..n)
        .map(|i| (0..n).map(|j| m[i * n + j] * v[j]).sum())
        .collect()
}

fn flat(node: &Node) -> Vec<f64> {
    node.leaves().iter().flat_map(vals).collect()
}

// ---------------------------------------------------------------------------------------------
// Hessian-vector products and the diagonal.
// ---------------------------------------------------------------------------------------------

#[test]
fn hvp_equals_the_dense_hessian_times_the_vector() {
    let (x, y) = xy();
    let (n, h) = mixed_dense();
    let v: Vec<f64> = (0..n).map(|k| (0.1 * k as f64 + 0.2).cos()).collect();
    let vx = Tensor::from_vec(v[..4].to_vec(), &[4]).unwrap();
    let vy = Tensor::from_vec(v[4..].to_vec(), &[4, 3]).unwrap();
    let hv = hvp(mixed)
        .argnums([0, 1])
        .call((&x, &y), &(vx.clone(), vy.clone()))
        .unwrap();
    assert_close(&flat(&hv), &matvec(&h, n, &v), 1e-12);
    // One argument: the vector has that argument's structure.
    let hv0 = hvp(mixed).argnums(0).call((&x, &y), &vx).unwrap();
    let hx: Vec<f64> = (0..4)
        .map(|i| (0..4).map(|j| h[i * n + j] * v[j]).sum())
        .collect();
    assert_close(&vals(leaf(&hv0)), &hx, 1e-12);
    // With the value and aux.
    let with_aux = |x: &Tensor, y: &Tensor| (mixed(x, y), x * 2.0);
    let (hv1, value, aux) = hvp(with_aux)
        .argnums(0)
        .has_aux()
        .return_value()
        .call((&x, &y), &vx)
        .unwrap();
    assert_close(&vals(leaf(&hv1)), &hx, 1e-12);
    assert_eq!(value.item().unwrap(), mixed(&x, &y).item().unwrap());
    assert_eq!(vals(&aux), vals(&(&x * 2.0)));
}

#[test]
fn hvp_over_states_and_arguments() {
    let w = ParamState::new(Tensor::from([[0.5, -0.2], [0.1, 0.3]]));
    let b = ParamState::new(Tensor::from([0.1, -0.1]));
    let f = |x: &Tensor| (x.matmul(&w.value()) + b.value()).tanh().powi(2).sum() * x.sum();
    let x = Tensor::from([0.4, -0.9]);
    let v = [0.3, -0.1, 0.7, 0.2, 0.5, -0.4, 0.6, 0.9];
    let vw = Tensor::from_vec(v[..4].to_vec(), &[2, 2]).unwrap();
    let vb = Tensor::from_vec(v[4..6].to_vec(), &[2]).unwrap();
    let vx = Tensor::from_vec(v[6..].to_vec(), &[2]).unwrap();
    let (hv_states, hv_args) = hvp(f)
        .grad_states([&w, &b])
        .argnums(0)
        .call(&x, &((vec![vw.clone(), vb.clone()]), vx.clone()))
        .unwrap();
    // Against jvp of the gradient: H v = d/dt grad(w + t v).
    let grads = |x: &Tensor| {
        let g = brainstate::grad(f)
            .grad_states([&w, &b])
            .argnums(0)
            .call(x)
            .unwrap();
        (flat(&g.0), flat(&g.1))
    };
    let eps = 1e-6;
    let shifted = |t: f64| {
        let (w0, b0) = (w.value(), b.value());
        w.set_value(&w0 + &vw * t).unwrap();
        b.set_value(&b0 + &vb * t).unwrap();
        let out = grads(&(&x + &vx * t));
        w.set_value(w0).unwrap();
        b.set_value(b0).unwrap();
        out
    };
    let (plus, minus) = (shifted(eps), shifted(-eps));
    let central = |p: &[f64], m: &[f64]| -> Vec<f64> {
        p.iter()
            .zip(m)
            .map(|(a, b)| (a - b) / (2.0 * eps))
            .collect()
    };
    assert_close(&flat(&hv_states), &central(&plus.0, &minus.0), 1e-6);
    assert_close(&flat(&hv_args), &central(&plus.1, &minus.1), 1e-6);
}

#[test]
fn hvp_of_a_holomorphic_function() {
    let z = Tensor::from(vec![Complex64::new(0.5, 0.2), Complex64::new(-0.3, 0.7)]);
    let f = |z: &Tensor| (z.powi(3) + z.exp() * z).sum();
    let dense = hessian(f).holomorphic(true).call(&z).unwrap();
    let h = leaf(&dense).to_vec::<Complex64>().unwrap();
    let v = Tensor::from(vec![Complex64::new(1.0, -1.0), Complex64::new(0.5, 2.0)]);
    let hv = hvp(f).holomorphic(true).call(&z, &v).unwrap();
    let got = leaf(&hv).to_vec::<Complex64>().unwrap();
    let vs = v.to_vec::<Complex64>().unwrap();
    for i in 0..2 {
        let want: Complex64 = (0..2).map(|j| h[i * 2 + j] * vs[j]).sum();
        assert!((got[i] - want).norm() < 1e-12, "{i}: {} vs {want}", got[i]);
    }
}

#[test]
fn the_diagonal_matches_the_dense_hessian() {
    let (x, y) = xy();
    let (n, h) = mixed_dense();
    let diag = hessian(mixed)
        .argnums([0, 1])
        .diagonal()
        .call((&x, &y))
        .unwrap();
    let want: Vec<f64> = (0..n).map(|i| h[i * n + i]).collect();
    assert_close(&flat(&diag), &want, 1e-12);
    assert_eq!(leaf(&diag[1]).shape().unwrap(), &[4, 3]);
    // A diagonal Hessian needs one product.
    let d = hessian(|x: &Tensor| x.exp().sum())
        .diagonal()
        .call(&x)
        .unwrap();
    assert_close(&vals(leaf(&d)), &vals(&x.exp()), 1e-15);
}

#[test]
fn hvp_units_follow_the_outputs_and_variables() {
    // f in mV^2 over v in mV: H in mV^2 / mV^2 = 1; H v in mV when v is in mV.
    let f = |v: &Tensor| (v * v).sum() * 3.0;
    let v = Tensor::from([1.0, 2.0]) * mV;
    let hv = hvp(f)
        .unit_aware(true)
        .call(&v, &(Tensor::from([1.0, 0.5]) * mV))
        .unwrap();
    let t = leaf(&hv);
    assert_eq!(t.unit(), Some(mV));
    assert_close(&vals(&t.mantissa()), &[6.0, 3.0], 1e-15);
    // A vector in another unit of the same dimension is converted; another dimension fails.
    let hv = hvp(f)
        .unit_aware(true)
        .call(&v, &(Tensor::from([1.0, 0.5]) * brainstate::units::volt));
    assert_close(
        &vals(&leaf(&hv.unwrap()).mantissa()),
        &[6000.0, 3000.0],
        1e-12,
    );
    let e = hvp(f)
        .call(&v, &(Tensor::from([1.0, 0.5]) * ms))
        .unwrap_err();
    assert_mentions(&e, &["ms"]);
}

// ---------------------------------------------------------------------------------------------
// Sparsity patterns.
// ---------------------------------------------------------------------------------------------

/// Every nonzero of the dense Hessian is in the pattern.
#[track_caller]
fn assert_covers(pattern: &brainstate::SparsityPattern, n: usize, h: &[f64]) {
    assert_eq!(pattern.size(), n);
    for r in 0..n {
        for c in 0..n {
            if h[r * n + c] != 0.0 {
                assert!(
                    pattern.contains(r, c),
                    "pattern misses ({r}, {c}) = {}",
                    h[r * n + c]
                );
            }
        }
        assert!(
            pattern.row(r).windows(2).all(|w| w[0] < w[1]),
            "row {r} sorted"
        );
    }
}

#[test]
fn patterns_of_known_functions() {
    let p = hessian_sparsity(rosen).call(&Tensor::zeros(&[10])).unwrap();
    assert_eq!(p.nnz(), 28);
    for i in 0..10usize {
        let want: Vec<usize> = (i.saturating_sub(1)..(i + 2).min(10)).collect();
        assert_eq!(p.row(i), want.as_slice());
    }
    // Diagonal, dense, linear, and a product of two arguments.
    let d = hessian_sparsity(|x: &Tensor| x.sin().sum())
        .call(&Tensor::zeros(&[6]))
        .unwrap();
    assert_eq!((d.nnz(), d.row(3)), (6, &[3][..]));
    let dense = hessian_sparsity(|x: &Tensor| x.sum().powi(2))
        .call(&Tensor::zeros(&[4]))
        .unwrap();
    assert_eq!(dense.nnz(), 16);
    let linear = hessian_sparsity(|x: &Tensor| (x * 3.0).sum())
        .call(&Tensor::zeros(&[4]))
        .unwrap();
    assert_eq!(linear.nnz(), 0);
    let cross = hessian_sparsity(|x: &Tensor, y: &Tensor| (x * y).sum()).argnums([0, 1]);
    let cross = cross
        .call((&Tensor::zeros(&[2]), &Tensor::zeros(&[2])))
        .unwrap();
    assert_eq!(cross.col_indices(), &[2, 3, 0, 1]);
    // Over states too, and with the mixed function: never a missed nonzero.
    let (x, y) = xy();
    let (n, h) = mixed_dense();
    let p = hessian_sparsity(mixed)
        .argnums([0, 1])
        .call((&x, &y))
        .unwrap();
    assert_covers(&p, n, &h);
    let w = ParamState::new(Tensor::from([1.0, 2.0, 3.0]));
    let f = |x: &Tensor| {
        (w.value().slice_along(0, 1.., 1) * w.value().slice_along(0, ..-1, 1) * x).sum()
    };
    let p = hessian_sparsity(f)
        .grad_states(&w)
        .call(&Tensor::from([1.0, 1.0]))
        .unwrap();
    assert_eq!(p.nnz(), 4); // w0 w1 and w1 w2
}

/// A batch of rows through one layer: every row depends on the same columns of `w`, so
/// detection meets the same sets over and over (and sorts and multiplies each out once); the
/// pattern is still exactly one dense block per column of `w`, and two layers make it dense.
#[test]
fn patterns_of_batched_layers() {
    let x = Tensor::from_vec(
        (0..8 * 16).map(|k| (0.3 * k as f64).sin()).collect(),
        &[8, 16],
    );
    let x = x.unwrap();
    let w = Tensor::from_vec(
        (0..16 * 4).map(|k| (0.7 * k as f64).cos()).collect(),
        &[16, 4],
    );
    let w = w.unwrap();
    // w is [16, 4], flattened by rows: entry (i, j) is variable 4 i + j.
    let layer = |w: &Tensor| x.matmul(w).tanh().sum();
    let p = hessian_sparsity(layer).call(&w).unwrap();
    assert_eq!(p.nnz(), 4 * 16 * 16);
    for v in 0..64 {
        let same_column: Vec<usize> = (0..16).map(|i| 4 * i + v % 4).collect();
        assert_eq!(p.row(v), same_column.as_slice(), "row {v}");
    }
    let dense = hessian(layer).call(&w).unwrap();
    assert_covers(&p, 64, &flat(&dense));
    // Sets made of a shared one and one of their own: each keeps its own.
    let offsets = |w: &Tensor, c: &Tensor| (x.matmul(w) + c).tanh().sum();
    let c = Tensor::from_vec((0..32).map(|k| 0.1 * k as f64).collect(), &[8, 4]).unwrap();
    let p = hessian_sparsity(offsets)
        .argnums([0, 1])
        .call((&w, &c))
        .unwrap();
    // Blocks of w's columns, c's diagonal, and each c[i, j] with column j of w, both ways.
    assert_eq!(p.nnz(), 4 * 16 * 16 + 32 + 2 * 32 * 16);
    let dense = hessian(offsets).argnums([0, 1]).call((&w, &c)).unwrap();
    assert_covers(&p, 96, &vals(&dense.flat_matrix().unwrap()));
    let two_layers = |w: &Tensor| x.matmul(w).tanh().matmul(&w.transpose()).tanh().sum();
    let p = hessian_sparsity(two_layers).call(&w).unwrap();
    assert_eq!(p.nnz(), 64 * 64);
}

/// Random compositions of primitives: the pattern covers every nonzero of the dense Hessian
/// and the sparse Hessian agrees with it.
#[test]
fn random_programs_sparse_agrees_with_dense() {
    let mut seed = 12345u64;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    for trial in 0..40 {
        let ops: [usize; 6] = std::array::from_fn(|_| next(9));
        let f = move |x: &Tensor| {
            let mut v = x.clone();
            for &op in &ops {
                v = match op {
                    0 => v.sin(),
                    1 => &v * x,
                    2 => brainstate::concatenate(
                        &[v.slice_along(0, 1.., 1), v.slice_along(0, ..1, 1)],
                        0,
                    ),
                    3 => v.tanh() + x.powi(2),
                    4 => v.maximum(x) * 0.5,
                    5 => &v * v.sum() * 0.1,
                    6 => v.exp() * 0.3,
                    7 => {
                        brainstate::concatenate(
                            &[v.slice_along(0, ..-1, 1), x.slice_along(0, -1.., 1)],
                            0,
                        ) * x
                    }
                    _ => (&v + 1.0).log1p(),
                };
            }
            v.sum()
        };
        let x = Tensor::linspace(0.1, 0.9, 6);
        let dense = hessian(f).call(&x).unwrap();
        let h = vals(leaf(&dense));
        let p = hessian_sparsity(f).call(&x).unwrap();
        assert_covers(&p, 6, &h);
        let sparse = hessian(f).sparse().call(&x).unwrap();
        assert_close(&vals(&sparse.to_dense().unwrap()), &h, 1e-12);
        assert!(trial < 40);
    }
}

// ---------------------------------------------------------------------------------------------
// Sparse Hessians, and dense ones from sparsity.
// ---------------------------------------------------------------------------------------------

#[test]
fn sparse_hessian_matches_dense() {
    let x = Tensor::linspace(-1.0, 1.0, 40);
    let dense = vals(leaf(&hessian(rosen).chunk_size(7).call(&x).unwrap()));
    let sparse = hessian(rosen).sparse().call(&x).unwrap();
    assert_eq!(sparse.nnz(), 40 + 2 * 39);
    assert_close(&vals(&sparse.to_dense().unwrap()), &dense, 1e-12);
    // Every stored value is exactly the dense entry.
    let values = vals(sparse.values());
    let p = sparse.pattern();
    for r in 0..40 {
        for (k, &c) in p.row(r).iter().enumerate() {
            let v = values[p.row_starts()[r] + k];
            assert!((v - dense[r * 40 + c]).abs() <= 1e-12 * (1.0 + v.abs()));
        }
    }
    // Several arguments, blocks in the flat order.
    let (x, y) = xy();
    let (n, h) = mixed_dense();
    let s = hessian(mixed)
        .argnums([0, 1])
        .sparse()
        .call((&x, &y))
        .unwrap();
    assert_close(&vals(&s.to_dense().unwrap()), &h, 1e-12);
    let block = s.block(0, 1).unwrap();
    assert_eq!(block.shape().unwrap(), &[4, 4, 3]);
    let want: Vec<f64> = (0..4)
        .flat_map(|i| (4..n).map(move |j| (i, j)))
        .map(|(i, j)| h[i * n + j])
        .collect();
    assert_close(&vals(&block), &want, 1e-12);
}

#[test]
fn dense_hessians_of_sparse_functions_match_their_closed_forms() {
    // Large enough that the compressed evaluation is chosen (3 colors for 64 columns), and
    // read from the three diagonals of its stencil.
    let x = Tensor::linspace(-1.0, 1.0, 64);
    let h = hessian(rosen);
    let auto = vals(leaf(&h.call(&x).unwrap()));
    let printed = h.program(&x).unwrap().to_string();
    assert!(printed.contains("a stencil of 3 offset(s)"), "{printed}");
    assert_close(&auto, &rosen_hessian(&vals(&x)), 1e-12);
    // A diagonal Hessian, complex and holomorphic.
    let z: Vec<Complex64> = (0..32)
        .map(|k| Complex64::new((0.3 * k as f64).cos(), 0.5 * (0.7 * k as f64).sin()))
        .collect();
    let z = Tensor::from(z);
    let g = |z: &Tensor| (z.powi(3) + z.exp() * z).sum();
    let hz = hessian(g).holomorphic(true);
    let auto = leaf(&hz.call(&z).unwrap()).to_vec::<Complex64>().unwrap();
    let printed = hz.program(&z).unwrap().to_string();
    assert!(printed.contains("a stencil of 1 offset(s)"), "{printed}");
    // g'' = 6 z + (2 + z) e^z on the diagonal.
    let zs = z.to_vec::<Complex64>().unwrap();
    for (k, a) in auto.iter().enumerate() {
        let (i, j) = (k / 32, k % 32);
        let want = if i == j {
            6.0 * zs[i] + (2.0 + zs[i]) * zs[i].exp()
        } else {
            Complex64::new(0.0, 0.0)
        };
        assert!(
            (a - want).norm() <= 1e-12 * (1.0 + want.norm()),
            "{k}: {a} {want}"
        );
    }
}

#[test]
fn dense_hessians_from_sparsity_match_the_closed_form() {
    // Two arguments, with entries in the blocks between them:
    // f = rosen(x) + rosen(y) + sum(x y^2). At n = 600 the result (four blocks, 1.44 million
    // entries) is large enough for its pages to be mapped while the plan is built.
    for n in [300, 600] {
        let x = Tensor::linspace(-1.0, 1.0, n);
        let y = Tensor::linspace(0.5, -0.5, n);
        let f = |x: &Tensor, y: &Tensor| rosen(x) + rosen(y) + (x * y.powi(2)).sum();
        let h = hessian(f).argnums([0, 1]);
        let printed = h.program((&x, &y)).unwrap().to_string();
        // Offsets -1, 0 and 1 of x and of y, read by both blocks of rows.
        assert!(printed.contains("stencil of 6 offset(s)"), "{printed}");
        let (xs, ys) = (vals(&x), vals(&y));
        let (hx, hy) = (rosen_hessian(&xs), rosen_hessian(&ys));
        let mut want = vec![0.0; 4 * n * n];
        for i in 0..n {
            for j in 0..n {
                want[i * 2 * n + j] = hx[i * n + j];
                want[(n + i) * 2 * n + n + j] = hy[i * n + j];
            }
            // d2/dy2 of x y^2 is 2x, and d2/dx dy is 2y.
            want[(n + i) * 2 * n + n + i] += 2.0 * xs[i];
            want[i * 2 * n + n + i] = 2.0 * ys[i];
            want[(n + i) * 2 * n + i] = 2.0 * ys[i];
        }
        // A fresh transform: its first call writes into the blocks mapped beside the plan.
        let h = hessian(f).argnums([0, 1]);
        let got = vals(&h.call((&x, &y)).unwrap().flat_matrix().unwrap());
        assert_close(&got, &want, 1e-12);
    }
}

#[test]
fn a_large_hessian_without_a_diagonal_is_read_from_its_sparsity() {
    // f = sum(x[i] x[i+1]): ones beside the diagonal and zeros on it, whose pages were
    // mapped (written with zeros) while the pattern was detected.
    let n = 1100;
    let x = Tensor::linspace(-1.0, 1.0, n);
    let f = |x: &Tensor| (x.slice_along(0, ..-1, 1) * x.slice_along(0, 1.., 1)).sum();
    let printed = hessian(f).program(&x).unwrap().to_string();
    assert!(printed.contains("from its sparsity"), "{printed}");
    let got = vals(leaf(&hessian(f).call(&x).unwrap()));
    let mut want = vec![0.0; n * n];
    for i in 0..n - 1 {
        want[i * n + i + 1] = 1.0;
        want[(i + 1) * n + i] = 1.0;
    }
    assert_eq!(got, want);
}

#[test]
fn a_large_hessian_with_a_dense_block_is_swept_though_its_pattern_was_mapped_meanwhile() {
    // f = (sum of the first m values)^2 + sum(x^2): an m x m block of 2s plus 2 on the
    // diagonal. Its pattern has under n^2 / 8 entries, so its pages are mapped while it is
    // colored; m = n / 3 colors are more than n / 4, so sweeps compute it instead.
    let (n, m) = (1050, 350);
    let x = Tensor::linspace(-1.0, 1.0, n);
    let f = move |x: &Tensor| x.slice_along(0, ..m as isize, 1).sum().powi(2) + x.powi(2).sum();
    let printed = hessian(f).program(&x).unwrap().to_string();
    assert!(!printed.contains("from its sparsity"), "{printed}");
    let got = vals(leaf(&hessian(f).call(&x).unwrap()));
    let mut want = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            want[i * n + j] = 2.0 * f64::from(u8::from(i < m && j < m) + u8::from(i == j));
        }
    }
    assert_close(&got, &want, 1e-12);
}

#[test]
fn large_complex_and_single_precision_hessians_from_sparsity_match_their_closed_forms() {
    // 1100 x 1100 entries: mapped while the plan is built, then written by the first call.
    let n = 1100;
    let z: Vec<Complex64> = (0..n)
        .map(|k| Complex64::new((0.3 * k as f64).cos(), 0.5 * (0.7 * k as f64).sin()))
        .collect();
    let z = Tensor::from(z);
    let g = |z: &Tensor| (z.powi(3) + z.exp() * z).sum();
    let got = leaf(&hessian(g).holomorphic(true).call(&z).unwrap())
        .to_vec::<Complex64>()
        .unwrap();
    let zs = z.to_vec::<Complex64>().unwrap();
    for (k, a) in got.iter().enumerate() {
        let (i, j) = (k / n, k % n);
        // g'' = 6 z + (2 + z) e^z on the diagonal.
        let want = match i == j {
            true => 6.0 * zs[i] + (2.0 + zs[i]) * zs[i].exp(),
            false => Complex64::new(0.0, 0.0),
        };
        assert!(
            (a - want).norm() <= 1e-12 * (1.0 + want.norm()),
            "{k}: {a} {want}"
        );
    }
    let x = Tensor::linspace(-1.0, 1.0, n).cast(brainstate::DType::F32);
    let got = leaf(&hessian(rosen).call(&x).unwrap())
        .to_vec::<f32>()
        .unwrap();
    let want = rosen_hessian(&vals(&x.cast(brainstate::DType::F64)));
    for (k, (&a, &w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{k}: {a} {w}"
        );
    }
}

/// The dense Hessian of `f` at `x`, row by row from Hessian-vector products with the unit
/// vectors: a path that shares nothing with compressed evaluation.
fn hessian_by_hvps(f: impl Fn(&Tensor) -> Tensor + Clone, x: &Tensor) -> Vec<f64> {
    let (shape, n) = (x.shape().unwrap().to_vec(), x.numel().unwrap());
    (0..n)
        .flat_map(|k| {
            let unit = (0..n).map(|j| if j == k { 1.0 } else { 0.0 }).collect();
            let v = Tensor::from_vec(unit, &shape).unwrap();
            vals(leaf(&hvp(f.clone()).call(x, &v).unwrap()))
        })
        .collect()
}

#[test]
fn stencils_on_grids_and_products_without_one_agree_with_hvps() {
    // A grid energy: neighbours along both axes, scaled by values elsewhere on the grid, so
    // the stencil has offsets along each axis and diagonally, with coefficients that vary.
    let grid = |u: &Tensor| {
        let right = u.slice_along(1, 1.., 1) - u.slice_along(1, ..-1, 1);
        let down = u.slice_along(0, 1.., 1) - u.slice_along(0, ..-1, 1);
        let scale = u.slice_along(0, ..-1, 1).slice_along(1, 1.., 1).sin();
        (right.powi(2).slice_along(0, 1.., 1) * &scale).sum() + down.powi(4).sum() + u.exp().sum()
    };
    let u = Tensor::from_vec((0..63).map(|k| (0.37 * k as f64).sin()).collect(), &[7, 9]).unwrap();
    let want = hessian_by_hvps(grid, &u);
    let sparse = hessian(grid).sparse();
    let printed = sparse.program(&u).unwrap().to_string();
    assert!(printed.contains("a stencil of"), "{printed}");
    let got = sparse.call(&u).unwrap();
    assert_close(&vals(&got.to_dense().unwrap()), &want, 1e-12);
    let dense = vals(leaf(&hessian(grid).call(&u).unwrap()));
    assert_close(&dense, &want, 1e-12);
    let diagonal = vals(leaf(&hessian(grid).diagonal().call(&u).unwrap()));
    let on_diagonal: Vec<f64> = (0..63).map(|k| want[k * 63 + k]).collect();
    assert_close(&diagonal, &on_diagonal, 1e-12);
    // Each value times its mirror image: a reversal is no stencil, so the products are
    // computed per color.
    let mirrored = |x: &Tensor| (x * x.flip(&[0])).sum() + x.powi(3).sum();
    let x = Tensor::linspace(-1.0, 2.0, 40);
    let want = hessian_by_hvps(mirrored, &x);
    let sparse = hessian(mirrored).sparse();
    let printed = sparse.program(&x).unwrap().to_string();
    assert!(printed.contains("colors"), "{printed}");
    assert_close(
        &vals(&sparse.call(&x).unwrap().to_dense().unwrap()),
        &want,
        1e-12,
    );
}

#[test]
fn large_sparse_hessians_read_from_stencils_block_by_block_match_the_closed_form() {
    // Enough variables for the coefficients to be computed in many blocks, on every thread,
    // and for the entries (10 MB) to be written past the caches.
    let n = 400_000;
    let x = Tensor::linspace(-1.0, 1.0, n);
    let xs = vals(&x);
    let mut want = Vec::with_capacity(3 * n);
    for i in 0..n {
        if i > 0 {
            want.push(-400.0 * xs[i - 1]);
        }
        let mut diagonal = if i > 0 { 200.0 } else { 0.0 };
        if i + 1 < n {
            diagonal += 1200.0 * xs[i] * xs[i] - 400.0 * xs[i + 1] + 2.0;
        }
        want.push(diagonal);
        if i + 1 < n {
            want.push(-400.0 * xs[i]);
        }
    }
    // Run as planned, and equation by equation (debug_nan), which stores the coefficients.
    for debug_nan in [false, true] {
        let h = hessian(rosen).sparse().debug_nan(debug_nan);
        let values = vals(h.call(&x).unwrap().values());
        assert_close(&values, &want, 1e-12);
    }
}

#[test]
fn large_dense_hessians_from_sparsity_agree_on_new_pages_and_on_reused_ones() {
    // The first call's 2048 x 2048 block (32 MiB) is new pages, filled on the thread pool;
    // the second call writes into the first one's result, dropped by then.
    let n = 2048;
    let h = hessian(rosen);
    for s in [1.0, 0.5] {
        let x = Tensor::linspace(-s, s, n);
        let want = rosen_hessian(&vals(&x));
        assert_close(&vals(leaf(&h.call(&x).unwrap())), &want, 1e-12);
    }
}

#[test]
fn dense_hessians_from_sparsity_are_written_into_dropped_results_never_into_held_ones() {
    // rosen is read from a stencil, the mirror-image function from colors: both write a
    // call's Hessian into the last call's once the caller has let go of it.
    let mirrored = |x: &Tensor| (x * x.flip(&[0])).sum() + x.powi(3).sum();
    let at = |s: f64| Tensor::linspace(-s, 2.0 * s, 48);
    let rosen_at = |x: &Tensor| rosen_hessian(&vals(x));
    let mirrored_at = |x: &Tensor| hessian_by_hvps(mirrored, x);
    let check = |h: &dyn Fn(&Tensor) -> Vec<f64>, want: &dyn Fn(&Tensor) -> Vec<f64>| {
        // Held: a later call leaves the earlier results as they were.
        let held: Vec<_> = [1.0, 0.5, 0.25].map(|s| (h(&at(s)), s)).into();
        for (got, s) in &held {
            assert_close(got, &want(&at(*s)), 1e-12);
        }
        // Dropped at once: each call writes into the one before.
        for s in [2.0, -1.0, 0.75] {
            assert_close(&h(&at(s)), &want(&at(s)), 1e-12);
        }
    };
    let h = hessian(rosen);
    assert!(h.program(&at(1.0)).unwrap().to_string().contains("stencil"));
    check(&|x| vals(leaf(&h.call(x).unwrap())), &rosen_at);
    let h = hessian(mirrored);
    assert!(h.program(&at(1.0)).unwrap().to_string().contains("colors"));
    check(&|x| vals(leaf(&h.call(x).unwrap())), &mirrored_at);
    // Held as tensors while the next call runs.
    let first = h.call(&at(1.0)).unwrap();
    let second = h.call(&at(0.5)).unwrap();
    assert_close(&vals(leaf(&first)), &mirrored_at(&at(1.0)), 1e-12);
    assert_close(&vals(leaf(&second)), &mirrored_at(&at(0.5)), 1e-12);
    // Calls on two threads at once never share a result.
    let h = hessian(rosen);
    std::thread::scope(|scope| {
        for t in 0..2 {
            let h = &h;
            scope.spawn(move || {
                for k in 0..20 {
                    let x = at(0.1 + (2 * k + t) as f64 * 0.05);
                    assert_close(&vals(leaf(&h.call(&x).unwrap())), &rosen_at(&x), 1e-12);
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// jvp and vjp.
// ---------------------------------------------------------------------------------------------

#[test]
fn jvp_and_vjp_agree_with_jacobians() {
    let f = |x: &Tensor, y: &Tensor| (x.sin() * y.sum_axes(&[1], false)).exp();
    let (x, y) = xy();
    let jx = vals(leaf(&jacfwd(f).call((&x, &y)).unwrap()));
    let tx = Tensor::from([0.5, -1.0, 0.25, 2.0]);
    let t = jvp(f).call((&x, &y), &tx).unwrap();
    let want: Vec<f64> = (0..4)
        .map(|i| (0..4).map(|j| jx[i * 4 + j] * vals(&tx)[j]).sum())
        .collect();
    assert_close(&vals(leaf(&t)), &want, 1e-13);
    // Both arguments: the tangents are a pair.
    let ty = Tensor::ones(&[4, 3]);
    let t2 = jvp(f)
        .argnums([0, 1])
        .call((&x, &y), &(tx.clone(), ty))
        .unwrap();
    assert_eq!(leaf(&t2).shape().unwrap(), &[4]);

    let jr = vals(leaf(&jacrev(f).call((&x, &y)).unwrap()));
    let (pullback, value) = vjp(f).return_value().call((&x, &y)).unwrap();
    assert_close(&vals(&value), &vals(&f(&x, &y)), 1e-15);
    for c in [[1.0, 0.0, 0.0, 0.0], [0.3, -0.2, 0.9, 1.5]] {
        let ct = pullback.call(&Tensor::from(c)).unwrap();
        let want: Vec<f64> = (0..4)
            .map(|j| (0..4).map(|i| c[i] * jr[i * 4 + j]).sum())
            .collect();
        assert_close(&vals(leaf(&ct)), &want, 1e-13);
    }
    // Bad cotangents: another structure, another shape.
    assert!(
        pullback
            .call(&(Tensor::zeros(&[4]), Tensor::zeros(&[4])))
            .is_err()
    );
    let e = pullback.call(&Tensor::zeros(&[3])).unwrap_err();
    assert_mentions(&e, &["cotangent", "f64[3]", "f64[4]"]);
}

// ---------------------------------------------------------------------------------------------
// Bad input.
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_input_gets_clear_errors() {
    let x = Tensor::from([1.0, 2.0]);
    let vector = |x: &Tensor| x.sin();
    for e in [
        hvp(vector).call(&x, &x).unwrap_err(),
        hessian(vector).sparse().call(&x).map(|_| ()).unwrap_err(),
        hessian(vector).diagonal().call(&x).map(|_| ()).unwrap_err(),
        hessian_sparsity(vector).call(&x).map(|_| ()).unwrap_err(),
    ] {
        assert_mentions(&e, &["scalar", "[2]"]);
    }
    let f = |x: &Tensor| x.powi(3).sum();
    // A vector of another shape or structure.
    let e = hvp(f).call(&x, &Tensor::zeros(&[3])).unwrap_err();
    assert_mentions(&e, &["vector", "f64[3]", "f64[2]"]);
    let e = hvp(f).call(&x, &(x.clone(), x.clone())).unwrap_err();
    assert_mentions(&e, &["structure"]);
    let e = jvp(f).call(&x, &Tensor::zeros(&[2, 1])).unwrap_err();
    assert_mentions(&e, &["tangents"]);
    // sparse() and diagonal() are for Hessians.
    let e = brainstate::grad(f)
        .sparse()
        .call(&x)
        .map(|_| ())
        .unwrap_err();
    assert_mentions(&e, &["hessian"]);
}
