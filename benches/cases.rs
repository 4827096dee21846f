//! The cases of the standard Hessian suite (`../shared/BENCHMARKS.md`), shared by the benchmark
//! runner (`benches/suite.rs`) and the test that checks their reference checksums.

use std::collections::BTreeMap;

use brainstate::{Complex64, Node, ParamState, Scan, State, Tensor, hessian, hvp};

/// What one call of a case computes: the tensors it returns (the Hessian's blocks, the
/// Hessian-vector product, or a sparse Hessian's stored values) and, for a sparse Hessian,
/// the number of stored entries.
pub struct Outcome {
    pub values: Vec<Tensor>,
    pub nnz: Option<usize>,
}

impl From<Node> for Outcome {
    fn from(node: Node) -> Outcome {
        Outcome {
            values: node.leaves(),
            nnz: None,
        }
    }
}

/// A case ready to run.
pub type Case = Box<dyn Fn() -> Outcome>;

/// Every case, in the order of the suite, with its reference checksum (`[re, im]`) and
/// Frobenius norm (JAX 0.10.2, float64 and complex128; the sparse cases by asdex 0.5).
pub const REFERENCE: [(&str, [f64; 2], f64); 13] = [
    ("rosen_n16", [9483.333333333334, 0.0], 3075.704291522332),
    ("rosen_n128", [76860.29921259843, 0.0], 9063.19649059404),
    ("rosen_n1024", [616246.7820136853, 0.0], 25785.33903507017),
    ("rosen_n4096", [2465590.1953601954, 0.0], 51603.51426019164),
    (
        "logreg_d64_m512",
        [86.03919643917087, 0.0],
        2896.729032029705,
    ),
    ("mlp_177", [155.0730197800209, 0.0], 19.335259374751804),
    ("rnn_n10_t50", [26.128710259876808, 0.0], 14.91770277689367),
    (
        "holo_n64",
        [189.46254282939532, 0.5719909958350442],
        66.07975684671489,
    ),
    ("mlp_1089", [-143.7547920182827, 0.0], 16.033867799465852),
    (
        "hvp_mlp_1089",
        [-1.1116941777168647, 0.0],
        6.115135730980358,
    ),
    (
        "sparse_rosen_n4096",
        [2465590.1953601954, 0.0],
        51603.51426019164,
    ),
    (
        "sparse_rosen_n1000000",
        [601999798.0008, 0.0],
        806475.5837586673,
    ),
    (
        "rnn_n10_t1000",
        [30.625021375982897, 0.0],
        16.864734939811154,
    ),
];

/// The number of stored entries of the sparse cases' Hessians.
pub const NNZ: [(&str, usize); 2] = [
    ("sparse_rosen_n4096", 12286),
    ("sparse_rosen_n1000000", 2999998),
];

fn rosen(x: &Tensor) -> Tensor {
    let head = x.slice_along(0, ..-1, 1);
    let tail = x.slice_along(0, 1.., 1);
    ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
}

/// A `rows x cols` matrix with entries `f(i, j)`.
fn matrix(rows: usize, cols: usize, f: impl Fn(f64, f64) -> f64) -> Tensor {
    let values = (0..rows * cols)
        .map(|k| f((k / cols) as f64, (k % cols) as f64))
        .collect();
    Tensor::from_vec(values, &[rows, cols]).expect("rows * cols values")
}

/// A vector with entries `f(i)`.
fn vector(n: usize, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::from((0..n).map(|i| f(i as f64)).collect::<Vec<f64>>())
}

fn logreg() -> Case {
    let x = matrix(512, 64, |i, j| (1.3 * i + 0.7 * j + 0.1).sin());
    let y = vector(512, |i| if (0.9 * i).cos() > 0.0 { 1.0 } else { 0.0 });
    let w = ParamState::new(vector(64, |j| 0.01 * (0.5 * j).cos()));
    let weights = w.clone();
    let loss = move |x: &Tensor, y: &Tensor| {
        let logits = x.matmul(&weights.value());
        (logits.logaddexp(0.0) - y * &logits).sum()
    };
    let h = hessian(loss).grad_states(&w);
    Box::new(move || h.call((&x, &y)).expect("logreg hessian").into())
}

fn mlp() -> Case {
    let params: BTreeMap<&str, State> = BTreeMap::from([
        (
            "W1",
            ParamState::new(matrix(8, 16, |i, j| 0.3 * (0.5 * i + 0.3 * j + 0.2).sin())),
        ),
        ("b1", ParamState::new(vector(16, |j| 0.1 * j.cos()))),
        (
            "W2",
            ParamState::new(matrix(16, 1, |i, _| 0.3 * (0.4 * i + 0.1).cos())),
        ),
        ("b2", ParamState::new(Tensor::from([0.05]))),
    ]);
    let xb = matrix(32, 8, |i, j| (0.7 * i - 0.2 * j).sin());
    let yb = matrix(32, 1, |i, _| (0.3 * i).cos());
    let p = params.clone();
    let loss = move |x: &Tensor, y: &Tensor| {
        let hidden = (x.matmul(&p["W1"].value()) + p["b1"].value()).tanh();
        (hidden.matmul(&p["W2"].value()) + p["b2"].value() - y)
            .powi(2)
            .mean()
    };
    let h = hessian(loss).grad_states(params);
    Box::new(move || h.call((&xb, &yb)).expect("mlp hessian").into())
}

/// The recurrent network of `rnn_n10_t*`, its steps one `scan` equation (as JAX runs them with
/// `lax.fori_loop` and `lax.scan`).
fn rnn(steps: usize) -> Case {
    let n = 10;
    let w = ParamState::new(matrix(n, n, |i, j| {
        0.5 / (n as f64).sqrt() * (1.1 * i + 0.6 * j + 0.3).sin()
    }));
    let input = vector(n, |i| (0.8 * i).cos());
    let target = vector(n, |i| 0.1 * (0.5 * i).sin());
    let (dt, tau) = (0.1, 1.0);
    let state = w.clone();
    let loss = move |input: &Tensor, target: &Tensor| {
        let weights = state.value();
        let body = |r: &Tensor, _: &()| {
            let next = r + (-r + (weights.matmul(r) + input).tanh()) * (dt / tau);
            (next, ())
        };
        let (r, ()) = Scan::new()
            .length(steps)
            .scan(body, &Tensor::zeros(&[n]), &())
            .expect("the loop traces");
        (r - target).powi(2).sum()
    };
    let h = hessian(loss).grad_states(&w);
    Box::new(move || h.call((&input, &target)).expect("rnn hessian").into())
}

fn holo() -> Case {
    let values: Vec<Complex64> = (0..64)
        .map(|k| Complex64::new((0.3 * k as f64).cos(), 0.5 * (0.7 * k as f64).sin()))
        .collect();
    let z = Tensor::from(values);
    let h = hessian(|z: &Tensor| (z.powi(3) + z.exp() * z).sum()).holomorphic(true);
    Box::new(move || h.call(&z).expect("holomorphic hessian").into())
}

/// The parameter states of `mlp_1089` (1089 values), by name.
fn mlp_1089_params() -> BTreeMap<&'static str, State> {
    BTreeMap::from([
        (
            "W1",
            matrix(16, 32, |i, j| 0.3 * (0.5 * i + 0.3 * j + 0.2).sin()),
        ),
        ("b1", vector(32, |j| 0.1 * j.cos())),
        (
            "W2",
            matrix(32, 16, |i, j| 0.2 * (0.4 * i + 0.7 * j + 0.1).cos()),
        ),
        ("b2", vector(16, |j| 0.05 * j.sin())),
        ("W3", matrix(16, 1, |i, _| 0.3 * (0.2 * i + 0.3).cos())),
        ("b3", Tensor::from([0.05])),
    ])
    .into_iter()
    .map(|(k, t)| (k, ParamState::new(t)))
    .collect()
}

/// The loss of `mlp_1089` over its parameter states.
fn mlp_1089_loss(p: &BTreeMap<&'static str, State>, x: &Tensor, y: &Tensor) -> Tensor {
    let h1 = (x.matmul(&p["W1"].value()) + p["b1"].value()).tanh();
    let h2 = (h1.matmul(&p["W2"].value()) + p["b2"].value()).tanh();
    (h2.matmul(&p["W3"].value()) + p["b3"].value() - y)
        .powi(2)
        .mean()
}

fn mlp_1089_data() -> (Tensor, Tensor) {
    (
        matrix(256, 16, |i, j| (0.7 * i - 0.2 * j).sin()),
        matrix(256, 1, |i, _| (0.3 * i).cos()),
    )
}

fn mlp_1089() -> Case {
    let params = mlp_1089_params();
    let (x, y) = mlp_1089_data();
    let p = params.clone();
    let h = hessian(move |x: &Tensor, y: &Tensor| mlp_1089_loss(&p, x, y)).grad_states(params);
    Box::new(move || h.call((&x, &y)).expect("mlp_1089 hessian").into())
}

fn hvp_mlp_1089() -> Case {
    let params = mlp_1089_params();
    let (x, y) = mlp_1089_data();
    // v: each leaf v[k] = cos(0.1 k + 0.2) over its flat index, in the states' (key) order.
    let v: BTreeMap<String, Tensor> = params
        .iter()
        .map(|(k, s)| {
            let shape = s.value().shape().expect("a shape").to_vec();
            let n: usize = shape.iter().product();
            let values = (0..n).map(|i| (0.1 * i as f64 + 0.2).cos()).collect();
            (
                k.to_string(),
                Tensor::from_vec(values, &shape).expect("n values"),
            )
        })
        .collect();
    let p = params.clone();
    let h = hvp(move |x: &Tensor, y: &Tensor| mlp_1089_loss(&p, x, y)).grad_states(params);
    Box::new(move || h.call((&x, &y), &v).expect("mlp_1089 hvp").into())
}

fn sparse_rosen(n: usize) -> Case {
    let x = Tensor::linspace(-1.0, 1.0, n);
    let h = hessian(rosen).sparse();
    Box::new(move || {
        let sparse = h.call(&x).expect("sparse rosen hessian");
        Outcome {
            values: vec![sparse.values().clone()],
            nnz: Some(sparse.nnz()),
        }
    })
}

/// The case called `name`, ready to run: each call computes its Hessian with one transform
/// object, so the first call traces and plans and later calls only run.
pub fn build(name: &str) -> Option<Case> {
    match name {
        "logreg_d64_m512" => return Some(logreg()),
        "mlp_177" => return Some(mlp()),
        "rnn_n10_t50" => return Some(rnn(50)),
        "rnn_n10_t1000" => return Some(rnn(1000)),
        "holo_n64" => return Some(holo()),
        "mlp_1089" => return Some(mlp_1089()),
        "hvp_mlp_1089" => return Some(hvp_mlp_1089()),
        _ => {}
    }
    if let Some(n) = name.strip_prefix("sparse_rosen_n") {
        return Some(sparse_rosen(n.parse().ok()?));
    }
    let n: usize = name.strip_prefix("rosen_n")?.parse().ok()?;
    let x = Tensor::linspace(-1.0, 1.0, n);
    let h = hessian(rosen);
    Some(Box::new(move || h.call(&x).expect("rosen hessian").into()))
}

/// Sum of all entries (complex) and Frobenius norm over every tensor of a result.
pub fn checksums(result: &Outcome) -> (Complex64, f64) {
    let (mut sum, mut squares) = (Complex64::new(0.0, 0.0), 0.0);
    // One tensor at a time, complex ones only as complex: a copy of a large real Hessian as
    // complex numbers would double the peak memory the benchmark reports.
    for t in &result.values {
        if t.dtype().expect("concrete result").is_complex() {
            for v in t.to_vec::<Complex64>().expect("concrete result") {
                sum += v;
                squares += v.norm_sqr();
            }
        } else {
            for v in t.to_vec::<f64>().expect("concrete result") {
                sum += v;
                squares += v * v;
            }
        }
    }
    (sum, squares.sqrt())
}
