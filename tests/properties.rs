//! Property-based tests (proptest): random programs against finite differences and Hessian
//! symmetry, random loop bodies against their unrolled loops, random chains of products with
//! constants planned to the bit as computed one operation at a time, random batch models run
//! in parts of their batch against the whole run, random bad inputs that must give errors
//! (never panics), and random failing calls after which every state is bit-for-bit
//! unchanged.
//!
//! Each property prints its campaign figures (attempts, clean errors, panics, aborts, wrong
//! results, corrupted states; an abort would end the test process, so a printed line means
//! none happened). The default run is bounded to stay fast; `PROPTEST_CASES=N` runs `N` cases
//! per property (for example `PROPTEST_CASES=2000 cargo test --release --test properties --
//! --nocapture`).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};

use brainstate::units::{mV, ms};
use brainstate::{
    Error, Scan, State, Tensor, concatenate, grad, hessian, hvp, jacfwd, jacrev, jvp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per property: `PROPTEST_CASES`, or a bound that keeps the default run fast.
fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Figures of one campaign.
#[derive(Default)]
struct Figures {
    attempts: AtomicUsize,
    clean_errors: AtomicUsize,
    panics: AtomicUsize,
    wrong: AtomicUsize,
    corrupted: AtomicUsize,
}

impl Figures {
    fn report(&self, name: &str) {
        let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        println!(
            "campaign {name}: attempts {}, clean errors {}, panics {}, aborts 0, wrong results {}, corrupted states {}",
            get(&self.attempts),
            get(&self.clean_errors),
            get(&self.panics),
            get(&self.wrong),
            get(&self.corrupted)
        );
        assert_eq!(get(&self.panics), 0, "{name}: panics");
        assert_eq!(get(&self.wrong), 0, "{name}: wrong results");
        assert_eq!(get(&self.corrupted), 0, "{name}: corrupted states");
    }
}

// ---------------------------------------------------------------------------------------------
// Random programs.
// ---------------------------------------------------------------------------------------------

/// One step of a random program: a new vector from one or two earlier ones (by index, taken
/// modulo the number of values so far). Every value has the input's shape `[n]`.
#[derive(Clone, Copy, Debug)]
enum Op {
    Sin(usize),
    Tanh(usize),
    Exp(usize),
    Square(usize),
    Cube(usize),
    SoftSqrt(usize),
    Log1pSquare(usize),
    Softmax(usize),
    Flip(usize),
    Roll(usize),
    Cumsum(usize),
    Add(usize, usize),
    Sub(usize, usize),
    Mul(usize, usize),
    SafeDiv(usize, usize),
    TimesMean(usize, usize),
    PlusLogsumexp(usize, usize),
    Outer(usize, usize),
    Where(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let a = 0usize..16;
    prop_oneof![
        a.clone().prop_map(Op::Sin),
        a.clone().prop_map(Op::Tanh),
        a.clone().prop_map(Op::Exp),
        a.clone().prop_map(Op::Square),
        a.clone().prop_map(Op::Cube),
        a.clone().prop_map(Op::SoftSqrt),
        a.clone().prop_map(Op::Log1pSquare),
        a.clone().prop_map(Op::Softmax),
        a.clone().prop_map(Op::Flip),
        a.clone().prop_map(Op::Roll),
        a.clone().prop_map(Op::Cumsum),
        (a.clone(), a.clone()).prop_map(|(x, y)| Op::Add(x, y)),
        (a.clone(), a.clone()).prop_map(|(x, y)| Op::Sub(x, y)),
        (a.clone(), a.clone()).prop_map(|(x, y)| Op::Mul(x, y)),
        (a.clone(), a.clone()).prop_map(|(x, y)| Op::SafeDiv(x, y)),
        (a.clone(), a.clone()).prop_map(|(x, y)| Op::TimesMean(x, y)),
        (a.clone(), a.clone()).prop_map(|(x, y)| Op::PlusLogsumexp(x, y)),
        (a.clone(), a.clone()).prop_map(|(x, y)| Op::Outer(x, y)),
        (a.clone(), a).prop_map(|(x, y)| Op::Where(x, y)),
    ]
}

/// The scalar the program computes from `x` (shape `[n]`), eagerly or traced.
fn run_program(ops: &[Op], x: &Tensor) -> Tensor {
    last_value(ops, x).sum()
}

/// The program's last vector (shape `[n]`).
fn last_value(ops: &[Op], x: &Tensor) -> Tensor {
    let mut values = vec![x.clone()];
    for op in ops {
        let v = |i: usize| values[i % values.len()].clone();
        let n = x.numel().unwrap_or(1) as isize;
        let next = match *op {
            Op::Sin(a) => v(a).sin(),
            Op::Tanh(a) => v(a).tanh(),
            Op::Exp(a) => (v(a).tanh() * 0.5).exp(),
            Op::Square(a) => v(a).powi(2),
            Op::Cube(a) => v(a).tanh().powi(3),
            Op::SoftSqrt(a) => (v(a).powi(2) + 1.0).sqrt(),
            Op::Log1pSquare(a) => v(a).powi(2).log1p(),
            Op::Softmax(a) => v(a).softmax(-1),
            Op::Flip(a) => v(a).flip(&[0]),
            Op::Roll(a) => concatenate(
                &[v(a).slice_along(0, 1.., 1), v(a).slice_along(0, ..1, 1)],
                0,
            ),
            Op::Cumsum(a) => v(a).cumsum(0) / n as f64,
            Op::Add(a, b) => v(a) + v(b),
            Op::Sub(a, b) => v(a) - v(b),
            Op::Mul(a, b) => v(a) * v(b),
            Op::SafeDiv(a, b) => v(a) / (v(b).powi(2) + 1.0),
            Op::TimesMean(a, b) => v(a) * v(b).mean(),
            Op::PlusLogsumexp(a, b) => v(a) + v(b).logsumexp(),
            Op::Outer(a, b) => {
                let outer = v(a).expand_dims(1).matmul(&v(b).tanh().expand_dims(0));
                outer.sum_axes(&[1], false) / n as f64
            }
            Op::Where(a, b) => brainstate::where_(&v(b).gt(0.0), &v(a), &v(a).sin()),
        };
        values.push(next);
    }
    values.pop().unwrap_or_else(|| x.clone())
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap_or_default()
}

/// Whether `got` matches `want` to `tol`, relative to the largest magnitude.
fn close(got: &[f64], want: &[f64], tol: f64) -> bool {
    let scale = want.iter().chain(got).fold(1.0f64, |m, v| m.max(v.abs()));
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() <= tol * scale)
}

/// Checks one random program at `x`: the gradient against central differences of the value,
/// the Hessian against central differences of the gradient, and its symmetry; also `hvp`,
/// `jvp`, `jacfwd` and `jacrev` against the Hessian and gradient. `Err` says what disagreed.
fn check_program(ops: &[Op], x: &[f64]) -> Result<(), String> {
    let f = |t: &Tensor| run_program(ops, t);
    let n = x.len();
    let xt = Tensor::from(x.to_vec());
    let value = f(&xt).item().map_err(|e| format!("value: {e}"))?;
    if !value.is_finite() {
        return Ok(()); // nothing to compare
    }
    let g = grad(f).call(&xt).map_err(|e| format!("grad: {e}"))?;
    let g = vals(common::leaf(&g));
    let h = hessian(f).call(&xt).map_err(|e| format!("hessian: {e}"))?;
    let h = vals(common::leaf(&h));
    let eps = 1e-5;
    let shifted = |k: usize, d: f64| {
        let mut y = x.to_vec();
        y[k] += d;
        Tensor::from(y)
    };
    let fd_g: Vec<f64> = (0..n)
        .map(|k| {
            let up = f(&shifted(k, eps)).item().unwrap_or(f64::NAN);
            let down = f(&shifted(k, -eps)).item().unwrap_or(f64::NAN);
            (up - down) / (2.0 * eps)
        })
        .collect();
    if !close(&g, &fd_g, 1e-5) {
        return Err(format!("gradient {g:?} vs differences {fd_g:?}"));
    }
    let grad_at = |t: &Tensor| {
        grad(f)
            .call(t)
            .ok()
            .and_then(|g| g.tensor().ok().map(vals))
            .unwrap_or_default()
    };
    let eps = 1e-4;
    let mut fd_h = vec![0.0; n * n];
    for k in 0..n {
        let (up, down) = (grad_at(&shifted(k, eps)), grad_at(&shifted(k, -eps)));
        for i in 0..n {
            fd_h[i * n + k] = (up.get(i).copied().unwrap_or(f64::NAN)
                - down.get(i).copied().unwrap_or(f64::NAN))
                / (2.0 * eps);
        }
    }
    if !close(&h, &fd_h, 1e-4) {
        return Err(format!("hessian {h:?} vs differences {fd_h:?}"));
    }
    for i in 0..n {
        for j in 0..i {
            let (a, b) = (h[i * n + j], h[j * n + i]);
            if (a - b).abs() > 1e-9 * (1.0 + a.abs()) {
                return Err(format!("hessian not symmetric at ({i}, {j}): {a} vs {b}"));
            }
        }
    }
    // Products and Jacobians agree with the blocks.
    let v: Vec<f64> = (0..n).map(|k| 1.0 / (k + 1) as f64).collect();
    let hv = hvp(f)
        .call(&xt, &Tensor::from(v.clone()))
        .map_err(|e| format!("hvp: {e}"))?;
    let want: Vec<f64> = (0..n)
        .map(|i| (0..n).map(|j| h[i * n + j] * v[j]).sum())
        .collect();
    if !close(&vals(common::leaf(&hv)), &want, 1e-9) {
        return Err(format!("hvp {:?} vs H v {want:?}", vals(common::leaf(&hv))));
    }
    let t = jvp(f)
        .call(&xt, &Tensor::from(v.clone()))
        .map_err(|e| format!("jvp: {e}"))?;
    let want: f64 = g.iter().zip(&v).map(|(a, b)| a * b).sum();
    if !close(&vals(common::leaf(&t)), &[want], 1e-9) {
        return Err(format!("jvp {:?} vs g . v {want}", vals(common::leaf(&t))));
    }
    for (name, jac) in [
        ("jacfwd", jacfwd(f).call(&xt)),
        ("jacrev", jacrev(f).call(&xt)),
    ] {
        let jac = jac.map_err(|e| format!("{name}: {e}"))?;
        if !close(&vals(common::leaf(&jac)), &g, 1e-9) {
            return Err(format!("{name} disagrees with grad"));
        }
    }
    let chunked = hessian(f)
        .chunk_size(2)
        .call(&xt)
        .map_err(|e| format!("chunked: {e}"))?;
    if !close(&vals(common::leaf(&chunked)), &h, 1e-9) {
        return Err("a chunked Hessian disagrees".into());
    }
    // Over two arguments in sweeps: one block of each pair is its mirror's image.
    if n >= 2 {
        let half = n / 2;
        let split = |a: &Tensor, b: &Tensor| f(&concatenate(&[a.clone(), b.clone()], 0));
        let (a, b) = (
            Tensor::from(x[..half].to_vec()),
            Tensor::from(x[half..].to_vec()),
        );
        let blocks = hessian(split)
            .argnums([0, 1])
            .chunk_size(2)
            .call((&a, &b))
            .map_err(|e| format!("two arguments: {e}"))?;
        let joined = vals(&blocks.flat_matrix().map_err(|e| format!("flat: {e}"))?);
        if !close(&joined, &h, 1e-9) {
            return Err(format!("blocks over two arguments {joined:?} vs {h:?}"));
        }
    }
    Ok(())
}

#[test]
fn random_programs_agree_with_finite_differences() {
    random_program_campaign("random_programs", 1..7, 48, check_program);
}

/// Runs `check` on `cases` random programs of `lengths` operations (and random points): no
/// wrong result, no panic.
fn random_program_campaign(
    name: &str,
    lengths: std::ops::Range<usize>,
    cases: u32,
    check: fn(&[Op], &[f64]) -> Result<(), String>,
) {
    let figures = Figures::default();
    let strategy = (
        prop::collection::vec(op(), lengths),
        prop::collection::vec(-1.0f64..1.0, 1..5),
    );
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&strategy, |(ops, x)| {
        figures.attempts.fetch_add(1, Ordering::Relaxed);
        match catch_unwind(AssertUnwindSafe(|| check(&ops, &x))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => {
                figures.wrong.fetch_add(1, Ordering::Relaxed);
                Err(TestCaseError::fail(msg))
            }
            Err(_) => {
                figures.panics.fetch_add(1, Ordering::Relaxed);
                Err(TestCaseError::fail("panicked"))
            }
        }
    });
    if let Err(e) = &result {
        println!("{name}: {e}");
    }
    figures.report(name);
    result.unwrap();
}

/// A loop whose body is a random program (squashed, so that the steps stay bounded), through
/// `scan` and unrolled: the values, gradients, Hessians and Hessian-vector products agree.
fn check_loop(ops: &[Op], x: &[f64]) -> Result<(), String> {
    const STEPS: usize = 3;
    let step = |h: &Tensor| last_value(ops, h).tanh() * 0.9;
    let looped = |x: &Tensor| {
        let (h, ()) = Scan::new()
            .length(STEPS)
            .scan(|h: &Tensor, _: &()| (step(h), ()), x, &())
            .expect("the body traces");
        h.sum()
    };
    let unrolled = |x: &Tensor| (0..STEPS).fold(x.clone(), |h, _| step(&h)).sum();
    let xt = Tensor::from(x.to_vec());
    let v = Tensor::from((0..x.len()).map(|k| 0.5 - k as f64).collect::<Vec<_>>());
    let results = |f: &dyn Fn(&Tensor) -> Tensor| -> Result<Vec<Vec<f64>>, String> {
        let value = vals(&f(&xt));
        let g = grad(f).call(&xt).map_err(|e| format!("grad: {e}"))?;
        let h = hessian(f).call(&xt).map_err(|e| format!("hessian: {e}"))?;
        let hv = hvp(f).call(&xt, &v).map_err(|e| format!("hvp: {e}"))?;
        Ok(vec![
            value,
            vals(common::leaf(&g)),
            vals(common::leaf(&h)),
            vals(common::leaf(&hv)),
        ])
    };
    let (got, want) = (results(&looped)?, results(&unrolled)?);
    for (name, (g, w)) in ["value", "gradient", "hessian", "hvp"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        if !close(g, w, 1e-9) {
            return Err(format!("{name} through the loop {g:?} vs unrolled {w:?}"));
        }
    }
    Ok(())
}

#[test]
fn random_loop_bodies_agree_with_their_unrolled_loops() {
    random_program_campaign("random_loop_bodies", 1..5, 24, check_loop);
}

// ---------------------------------------------------------------------------------------------
// Random chains of products with constants: planned as computed, to the bit.
// ---------------------------------------------------------------------------------------------

/// One step of a chain: a product with a constant (either side), a negation or a doubling,
/// which plans fold into fewer products.
#[derive(Clone, Copy, Debug)]
enum Scale {
    Times(f64),
    TimesLeft(f64),
    Neg,
    Double,
}

/// Factors that fold (one, powers of two, their negations) and factors that must not (below
/// one, not a power of two, huge, a negative zero).
const FACTORS: [f64; 10] = [1.0, -1.0, 2.0, 4.0, -8.0, 0.5, 100.0, -3.0, 1e300, -0.0];

/// Values at the edges: zeros of both signs, subnormals, near overflow, infinities, a NaN.
const EDGES: [f64; 11] = [
    0.0,
    -0.0,
    1e-310,
    -5e-324,
    1.7e308,
    -1e308,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.3,
    -2.5,
    f64::NAN,
];

fn chain(steps: &[Scale], x: &Tensor) -> Tensor {
    steps.iter().fold(x.clone(), |v, step| match *step {
        Scale::Times(c) => &v * c,
        Scale::TimesLeft(c) => Tensor::scalar(c) * &v,
        Scale::Neg => -&v,
        Scale::Double => &v + &v,
    })
}

#[test]
fn chains_of_products_with_constants_keep_every_bit() {
    let factor = || prop::sample::select(FACTORS.to_vec());
    let step = prop_oneof![
        factor().prop_map(Scale::Times),
        factor().prop_map(Scale::TimesLeft),
        Just(Scale::Neg),
        Just(Scale::Double),
    ];
    let x = Tensor::from(EDGES.to_vec());
    let mut runner = TestRunner::new(config(64));
    let result = runner.run(&prop::collection::vec(step, 1..8), |steps| {
        planned_keeps_every_bit(|x| chain(&steps, x), &x, &format!("{steps:?}"))
    });
    result.unwrap();
}

/// The value a plan computes for `f` at `x` (simplified, fused) against `f` run one
/// operation at a time: equal to the bit, but for the sign of a NaN (`(-x) * c` planned as
/// `x * -c` keeps the NaN the eager negation flipped).
fn planned_keeps_every_bit(
    f: impl Fn(&Tensor) -> Tensor,
    x: &Tensor,
    case: &str,
) -> Result<(), TestCaseError> {
    let (_, planned) = jvp(&f).return_value().call(x, x).unwrap();
    let got = planned.to_vec::<f64>().unwrap();
    let want = f(x).to_vec::<f64>().unwrap();
    for (g, w) in got.iter().zip(&want) {
        prop_assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{case}: got {got:?}, want {want:?}"
        );
    }
    Ok(())
}

/// One operation of a random elementwise program, on earlier values (by index, modulo the
/// number of values so far).
#[derive(Clone, Debug)]
enum Elementwise {
    Add(usize, usize),
    Sub(usize, usize),
    Mul(usize, usize),
    Div(usize, usize),
    Neg(usize),
    Pow(usize, i32),
    Tanh(usize),
    Times(usize, f64),
}

fn elementwise() -> impl Strategy<Value = Elementwise> {
    let pair = (0..8usize, 0..8usize);
    prop_oneof![
        pair.clone().prop_map(|(a, b)| Elementwise::Add(a, b)),
        pair.clone().prop_map(|(a, b)| Elementwise::Sub(a, b)),
        pair.clone().prop_map(|(a, b)| Elementwise::Mul(a, b)),
        pair.prop_map(|(a, b)| Elementwise::Div(a, b)),
        (0..8usize).prop_map(Elementwise::Neg),
        (0..8usize, prop::sample::select(vec![2, 3, -1, 4]))
            .prop_map(|(a, n)| Elementwise::Pow(a, n)),
        (0..8usize).prop_map(Elementwise::Tanh),
        (0..8usize, prop::sample::select(vec![0.5, -3.0, 1e300]))
            .prop_map(|(a, c)| Elementwise::Times(a, c)),
    ]
}

/// The last two values of `ops` run on `x` and a row `bias` broadcast along its rows.
fn elementwise_program(ops: &[Elementwise], x: &Tensor, bias: &Tensor) -> (Tensor, Tensor) {
    let mut values = vec![x.clone(), bias.broadcast_to(x.shape().unwrap())];
    for op in ops {
        let at = |i: usize| &values[i % values.len()];
        let value = match *op {
            Elementwise::Add(a, b) => at(a) + at(b),
            Elementwise::Sub(a, b) => at(a) - at(b),
            Elementwise::Mul(a, b) => at(a) * at(b),
            Elementwise::Div(a, b) => at(a) / at(b),
            Elementwise::Neg(a) => -at(a),
            Elementwise::Pow(a, n) => at(a).powi(n),
            Elementwise::Tanh(a) => at(a).tanh(),
            Elementwise::Times(a, c) => at(a) * c,
        };
        values.push(value);
    }
    let last = values.len() - 1;
    (values[last].clone(), values[last - 1].clone())
}

#[test]
fn fused_elementwise_programs_keep_every_bit() {
    // Rows of lengths that end inside a chunk (of 32, then of 4) and across tiles of 512.
    let shape = (
        1..4usize,
        prop::sample::select(vec![1, 3, 16, 37, 48, 200, 1029]),
    );
    let mut runner = TestRunner::new(config(128));
    let strategy = (shape, prop::collection::vec(elementwise(), 1..14));
    let result = runner.run(&strategy, |((rows, cols), ops)| {
        let n = rows * cols;
        let x = Tensor::from_vec(
            (0..n).map(|k| (k as f64 * 0.731).sin() * 3.0).collect(),
            &[rows, cols],
        )
        .unwrap();
        let bias = Tensor::from((0..cols).map(|k| 0.25 * k as f64 - 1.5).collect::<Vec<_>>());
        let f = |x: &Tensor| {
            let (a, b) = elementwise_program(&ops, x, &bias);
            a + b * 0.75
        };
        planned_keeps_every_bit(f, &x, &format!("{rows}x{cols} {ops:?}"))
    });
    result.unwrap();
}

/// One step of a random batch model: rows of `h` (`[rows, 32]`) through a layer, an
/// elementwise function, a per-row sum, or a mean over the rows (which mixes them).
#[derive(Clone, Debug)]
enum Layer {
    Product,
    Bias,
    Tanh,
    Square,
    RowSum,
    RowsMean,
    Transposes,
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        Just(Layer::Product),
        Just(Layer::Bias),
        Just(Layer::Tanh),
        Just(Layer::Square),
        Just(Layer::RowSum),
        Just(Layer::RowsMean),
        Just(Layer::Transposes),
    ]
}

fn batch_model(layers: &[Layer], x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let mut h = x.clone();
    for layer in layers {
        h = match layer {
            Layer::Product => h.matmul(w),
            Layer::Bias => h + b,
            Layer::Tanh => h.tanh(),
            Layer::Square => h.powi(2) * 0.1,
            Layer::RowSum => h.clone() * h.sum_axes(&[1], true).tanh(),
            Layer::RowsMean => h.clone() - h.mean_axes(&[0], true),
            Layer::Transposes => h.transpose().tanh().transpose(),
        };
    }
    h.powi(2).mean()
}

#[test]
fn batches_split_among_threads_give_the_whole_programs_results() {
    // hvp runs whole programs in parts of their batch where the rows stay apart (see
    // `exec::batch`); `debug_nan` runs them whole.
    let splits = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config(24));
    let strategy = (
        prop::sample::select(vec![128usize, 400, 1000]),
        prop::collection::vec(layer(), 1..7),
    );
    let result = runner.run(&strategy, |(rows, layers)| {
        let matrix = |r: usize, c: usize, s: f64| {
            let values = (0..r * c)
                .map(|k| s * (0.37 * k as f64 + 0.1).sin())
                .collect();
            Tensor::from_vec(values, &[r, c]).unwrap()
        };
        let x = matrix(rows, 32, 1.0);
        let f = |w: &Tensor, b: &Tensor| batch_model(&layers, &x, w, b);
        let (w, b) = (matrix(32, 32, 0.2), Tensor::from(vec![0.1; 32]));
        let (vw, vb) = (matrix(32, 32, 1.0), Tensor::from(vec![0.5; 32]));
        let args = (&w, &b);
        let text = hvp(f).argnums([0, 1]).program(args).unwrap().to_string();
        if text.contains("parts of its batch") {
            splits.fetch_add(1, Ordering::Relaxed);
        }
        let vectors = (vw.clone(), vb.clone());
        let split = hvp(f).argnums([0, 1]).call(args, &vectors).unwrap();
        let whole = hvp(f)
            .argnums([0, 1])
            .debug_nan(true)
            .call(args, &vectors)
            .unwrap();
        let flat =
            |node: &brainstate::Node| node.leaves().iter().flat_map(vals).collect::<Vec<_>>();
        let (split, whole) = (flat(&split), flat(&whole));
        prop_assert!(
            close(&split, &whole, 1e-12),
            "{layers:?}: {split:?} vs {whole:?}"
        );
        Ok(())
    });
    result.unwrap();
    let splits = splits.load(Ordering::Relaxed);
    println!("campaign batch splits: {splits} models ran in parts");
    if common::side_by_side_threads() {
        assert!(splits > 0, "no model was split");
    }
}

// ---------------------------------------------------------------------------------------------
// Random bad inputs: errors, never panics.
// ---------------------------------------------------------------------------------------------

/// An extreme or ordinary size.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..5,
        Just(usize::MAX),
        Just(usize::MAX / 2),
        Just(1 << 31),
        Just(1 << 40),
        Just(1 << 62),
        any::<usize>(),
    ]
}

/// An extreme or ordinary signed index.
fn index() -> impl Strategy<Value = isize> {
    prop_oneof![
        -5isize..5,
        Just(isize::MIN),
        Just(isize::MAX),
        Just(isize::MIN + 1),
        Just(isize::MAX - 1),
        any::<isize>(),
    ]
}

/// A misuse of the library.
#[derive(Clone, Debug)]
enum Misuse {
    Zeros(Vec<usize>),
    Eye(usize),
    Linspace(usize),
    Arange(f64, f64, f64),
    Reshape(Vec<usize>, Vec<isize>),
    Broadcast(Vec<usize>, Vec<usize>),
    TracedBroadcast(Vec<usize>),
    Slice(usize, isize, isize, usize, bool),
    Index(usize, isize, isize),
    SumAxes(Vec<isize>),
    Take(Vec<i64>),
    PowI(i32, i32),
    PowF(f64),
    UnitSqrts(usize),
    Argnums(Vec<usize>),
    HvpVector(Vec<usize>),
    FromVec(usize, Vec<usize>),
    Limit(usize, usize),
}

fn misuse() -> impl Strategy<Value = Misuse> {
    let shape = || prop::collection::vec(size(), 0..4);
    prop_oneof![
        shape().prop_map(Misuse::Zeros),
        size().prop_map(Misuse::Eye),
        size().prop_map(Misuse::Linspace),
        (any::<f64>(), any::<f64>(), any::<f64>()).prop_map(|(a, b, c)| Misuse::Arange(a, b, c)),
        (
            prop::collection::vec(0usize..4, 0..4),
            prop::collection::vec(index(), 0..4)
        )
            .prop_map(|(s, t)| Misuse::Reshape(s, t)),
        (prop::collection::vec(0usize..4, 0..3), shape())
            .prop_map(|(s, t)| Misuse::Broadcast(s, t)),
        shape().prop_map(Misuse::TracedBroadcast),
        (0usize..6, index(), index(), size(), any::<bool>())
            .prop_map(|(n, a, b, s, t)| Misuse::Slice(n, a, b, s, t)),
        (0usize..4, index(), index()).prop_map(|(n, a, i)| Misuse::Index(n, a, i)),
        prop::collection::vec(index(), 0..4).prop_map(Misuse::SumAxes),
        prop::collection::vec(any::<i64>(), 0..4).prop_map(Misuse::Take),
        (any::<i32>(), any::<i32>()).prop_map(|(a, b)| Misuse::PowI(a, b)),
        any::<f64>().prop_map(Misuse::PowF),
        (0usize..80).prop_map(Misuse::UnitSqrts),
        prop::collection::vec(size(), 0..3).prop_map(Misuse::Argnums),
        prop::collection::vec(0usize..4, 0..3).prop_map(Misuse::HvpVector),
        (0usize..8, shape()).prop_map(|(n, s)| Misuse::FromVec(n, s)),
        (0usize..(1 << 16), 0usize..300).prop_map(|(l, n)| Misuse::Limit(l, n)),
    ]
}

/// Applies a misuse; `Ok(true)` for a clean error, `Ok(false)` when it was fine to succeed,
/// `Err` for a result that should not be.
fn apply(m: &Misuse) -> Result<bool, String> {
    let fails = |t: Tensor| Ok(t.shape().is_err());
    let x = Tensor::from([1.0, 2.0, 3.0]);
    match m {
        Misuse::Zeros(shape) => fails(Tensor::zeros(shape)),
        Misuse::Eye(n) => fails(Tensor::eye(*n)),
        Misuse::Linspace(n) => fails(Tensor::linspace(0.0, 1.0, *n)),
        Misuse::Arange(a, b, c) => {
            let count = ((b - a) / c).ceil();
            let want = if count <= 0.0 {
                Some(0.0)
            } else {
                count.is_finite().then_some(count)
            };
            match Tensor::arange(*a, *b, *c).shape() {
                Ok(s) if Some(s[0] as f64) == want => Ok(false),
                Ok(s) => Err(format!("arange({a}, {b}, {c}) has {} elements", s[0])),
                Err(_) => Ok(true),
            }
        }
        Misuse::Reshape(shape, target) => {
            let t = Tensor::zeros(shape).reshape(target);
            match t.shape() {
                Ok(s) if s.iter().product::<usize>() == shape.iter().product::<usize>() => {
                    Ok(false)
                }
                Ok(s) => Err(format!("reshape {shape:?} to {target:?} gave {s:?}")),
                Err(_) => Ok(true),
            }
        }
        Misuse::Broadcast(shape, target) => fails(Tensor::zeros(shape).broadcast_to(target)),
        Misuse::TracedBroadcast(target) => {
            let target = target.clone();
            let r = grad(move |x: &Tensor| x.sum().broadcast_to(&target).sum()).call(&x);
            Ok(r.is_err())
        }
        Misuse::Slice(n, a, b, step, inclusive) => {
            let t = Tensor::arange(0.0, *n as f64, 1.0);
            let got = if *inclusive {
                t.slice_along(0, *a..=*b, *step)
            } else {
                t.slice_along(0, *a..*b, *step)
            };
            let want = python_slice(*n, *a, *b, *step, *inclusive);
            match (got.to_vec::<f64>(), want) {
                (Ok(g), Some(w)) if g == w => Ok(false),
                (Err(_), None) => Ok(true),
                (g, w) => Err(format!("slice {n} [{a}, {b}] step {step}: {g:?} vs {w:?}")),
            }
        }
        Misuse::Index(n, axis, i) => fails(Tensor::zeros(&[*n]).index(*axis, *i)).map(|_| true),
        Misuse::SumAxes(axes) => Ok(x.sum_axes(axes, false).shape().is_err()),
        Misuse::Take(indices) => Ok(x.take(&Tensor::from(indices.clone()), 0).shape().is_err()),
        Misuse::PowI(a, b) => {
            let u = (Tensor::from([2.0]) * mV).powi(*a).powi(*b);
            Ok(u.shape().is_err())
        }
        Misuse::PowF(p) => Ok((Tensor::from([2.0]) * ms).powf(*p).shape().is_err()),
        Misuse::UnitSqrts(k) => {
            let mut v = Tensor::from([4.0]) * mV;
            for _ in 0..*k {
                v = v.sqrt();
            }
            Ok(v.shape().is_err())
        }
        Misuse::Argnums(argnums) => {
            let r = hessian(|a: &Tensor, b: &Tensor| (a * b).sum())
                .argnums(argnums.clone())
                .call((&x, &x));
            Ok(r.is_err())
        }
        Misuse::HvpVector(shape) => {
            let r = hvp(|a: &Tensor| a.powi(3).sum()).call(&x, &Tensor::zeros(shape));
            Ok(r.is_err())
        }
        Misuse::FromVec(n, shape) => Ok(Tensor::from_vec(vec![0.0; *n], shape).is_err()),
        Misuse::Limit(limit, n) => {
            let r = hessian(|a: &Tensor| a.powi(3).sum())
                .memory_limit(*limit)
                .call(&Tensor::ones(&[*n]));
            match r {
                Err(Error::Memory { needed, .. }) if needed > *limit => Ok(true),
                Err(e) => Err(format!("limit {limit}, n {n}: {e}")),
                Ok(_) if n * n * 8 <= *limit => Ok(false),
                Ok(_) => Err(format!("a Hessian of {n} values fit in {limit} bytes")),
            }
        }
    }
}

/// Python's `list(range(n))[a:b:step]` (`a:b+1` when inclusive), `None` for step 0.
fn python_slice(n: usize, a: isize, b: isize, step: usize, inclusive: bool) -> Option<Vec<f64>> {
    if step == 0 {
        return None;
    }
    let len = n as i128;
    let resolve = |i: i128| (if i < 0 { i + len } else { i }).clamp(0, len);
    let start = resolve(a as i128);
    let stop = if inclusive {
        (if (b as i128) < 0 {
            b as i128 + len
        } else {
            b as i128
        } + 1)
            .clamp(0, len)
    } else {
        resolve(b as i128)
    };
    let mut out = Vec::new();
    let mut i = start;
    while i < stop {
        out.push(i as f64);
        i += step as i128;
    }
    Some(out)
}

#[test]
fn bad_inputs_give_errors_never_panics() {
    // Sizes that are possible but large would be allocated (slowly) under the default limit;
    // this binary's tests all compute on small values, so a small global limit suits them all.
    brainstate::memory::set_limit(Some(64 << 20));
    let figures = Figures::default();
    let mut runner = TestRunner::new(config(400));
    let result = runner.run(&misuse(), |m| {
        figures.attempts.fetch_add(1, Ordering::Relaxed);
        match catch_unwind(AssertUnwindSafe(|| apply(&m))) {
            Ok(Ok(clean_error)) => {
                if clean_error {
                    figures.clean_errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Ok(Err(msg)) => {
                figures.wrong.fetch_add(1, Ordering::Relaxed);
                Err(TestCaseError::fail(msg))
            }
            Err(_) => {
                figures.panics.fetch_add(1, Ordering::Relaxed);
                Err(TestCaseError::fail(format!("{m:?} panicked")))
            }
        }
    });
    if let Err(e) = &result {
        println!("bad_inputs: {e}");
    }
    figures.report("bad_inputs");
    result.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Random failing calls: every state bit-for-bit unchanged.
// ---------------------------------------------------------------------------------------------

/// How a call fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    ShapeMismatch,
    WriteFailed,
    WriteWrongShape,
    Panic,
    NonFinite,
    MemoryLimit,
    AuxFailed,
    HelperThreadWrite,
}

fn failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        Just(Failure::ShapeMismatch),
        Just(Failure::WriteFailed),
        Just(Failure::WriteWrongShape),
        Just(Failure::Panic),
        Just(Failure::NonFinite),
        Just(Failure::MemoryLimit),
        Just(Failure::AuxFailed),
        Just(Failure::HelperThreadWrite),
    ]
}

/// The bits of every state's value.
fn bits(states: &[State]) -> Vec<Vec<u64>> {
    states
        .iter()
        .map(|s| {
            let v = s.value();
            assert!(!v.is_traced(), "a state holds a tracer");
            v.to_vec::<f64>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn failing_calls_change_no_state() {
    let figures = Figures::default();
    let strategy = (
        failure(),
        prop::collection::vec(-2.0f64..2.0, 1..4),
        0usize..3,
        any::<bool>(),
        0usize..4,
    );
    let mut runner = TestRunner::new(config(96));
    let result = runner.run(&strategy, |(failure, init, writes, aux, layout)| {
        figures.attempts.fetch_add(1, Ordering::Relaxed);
        let n = init.len();
        let states: Vec<State> = (0..3)
            .map(|k| {
                State::new(Tensor::from(
                    init.iter().map(|v| v + k as f64).collect::<Vec<_>>(),
                ))
            })
            .collect();
        let before = bits(&states);
        let bad = Tensor::zeros(&[n]).reshape(&[n as isize + 1]);
        let f = |x: &Tensor| {
            for s in &states[..writes] {
                s.set_value(s.value() * x.sum().tanh() + 1.0).unwrap();
            }
            let mut y = (x * states[0].value()).sum();
            match failure {
                Failure::ShapeMismatch => y = y + x.reshape(&[n as isize + 1]).sum(),
                Failure::WriteFailed => {
                    states[2].set_value(bad.clone()).ok();
                }
                Failure::WriteWrongShape => {
                    states[1].set_value(Tensor::zeros(&[n + 2])).ok();
                }
                Failure::Panic => panic!("injected"),
                Failure::NonFinite => y = y + (x - x).sqrt().sum(),
                Failure::MemoryLimit | Failure::AuxFailed => {}
                Failure::HelperThreadWrite => {
                    std::thread::scope(|scope| {
                        scope
                            .spawn(|| states[2].set_value(x.clone()).ok())
                            .join()
                            .ok()
                    });
                }
            }
            let aux = if matches!(failure, Failure::AuxFailed) {
                bad.clone()
            } else {
                x.clone()
            };
            (y, aux)
        };
        let x = Tensor::from(init.clone());
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let limit = if matches!(failure, Failure::MemoryLimit) {
                1
            } else {
                usize::MAX
            };
            let h = hessian(f).has_aux().debug_nan(true).memory_limit(limit);
            let g = grad(f).has_aux().debug_nan(true).memory_limit(limit);
            match (layout, aux) {
                (0, _) => h.call(&x).map(|_| ()),
                (1, _) => h.return_value().call(&x).map(|_| ()),
                (2, true) => g.call(&x).map(|_| ()),
                _ => g.return_value().call(&x).map(|_| ()),
            }
        }));
        match outcome {
            Err(_) => {
                figures.panics.fetch_add(1, Ordering::Relaxed);
                return Err(TestCaseError::fail("the call panicked"));
            }
            Ok(Ok(())) => {
                figures.wrong.fetch_add(1, Ordering::Relaxed);
                return Err(TestCaseError::fail(format!(
                    "{failure:?}: the call succeeded"
                )));
            }
            Ok(Err(_)) => {
                figures.clean_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if catch_unwind(AssertUnwindSafe(|| bits(&states))).ok() != Some(before) {
            figures.corrupted.fetch_add(1, Ordering::Relaxed);
            return Err(TestCaseError::fail(format!("{failure:?}: a state changed")));
        }
        Ok(())
    });
    if let Err(e) = &result {
        println!("failing_calls: {e}");
    }
    figures.report("failing_calls");
    result.unwrap();
}
