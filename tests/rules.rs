//! The generic derivative-rule harness: every primitive's JVP and VJP (and the user-level
//! operations built from them) checked against central finite differences, at several shapes
//! including broadcasting, by one table-driven harness.
//!
//! Each row of the table is an operation `f(x0, x1, ...)` of one or more `f64` tensors, an input
//! domain per argument (positive for `log`, away from kinks and ties for `abs`/`max`, ...) and
//! a list of shape cases. For every row and case the harness checks, with deterministic
//! pseudo-random inputs:
//!
//! 1. `jacfwd` (forward mode, batched over the identity basis) against central differences;
//! 2. `jacrev` (reverse mode, batched: checks the transpose rules) against the same;
//! 3. `grad` of the scalarised `sum(f(x) * w)` (unbatched reverse mode) against the
//!    finite-difference gradient;
//! 4. `hessian` of the scalarised function: symmetric (block `(i, j)` is block `(j, i)`
//!    transposed) and equal to central differences of `grad` (second order through every rule).
//!
//! Since 1 and 2 both equal the same finite differences, the transpose identity
//! `<t, vjp(c)> = <jvp(t), c>` follows and is not checked separately.
//!
//! Rows marked `zero` (sign, stop_gradient, comparisons) must instead give derivatives that are
//! exactly zero.

mod common;

use std::rc::Rc;

use brainstate::{DType, Node, Tensor, concatenate, grad, hessian, jacfwd, jacrev, stack, where_};
use common::{Lcg, TableRow, cat, close, guarded, run_table, seed_of};

// ---------------------------------------------------------------------------------------------
// Deterministic inputs.

/// Where the inputs of an argument are drawn from.
#[derive(Clone, Copy, Debug)]
enum Dom {
    /// Uniform in `(-1.5, 1.5)`.
    Any,
    /// Uniform in `(0.5, 2)`: for `log`, `sqrt`, the base of `pow`.
    Pos,
    /// `|x|` in `(0.3, 1.5)`, either sign: away from the kinks of `abs`, `relu`, `sign`, and from
    /// the poles of `1/x`.
    Away,
    /// Uniform in `(-1.2, 1.2)`: for `tan`.
    Small,
    /// Distinct across every `Distinct` argument of the case (gaps of at least 0.1) and away from
    /// 0: no ties for `max`/`min` (elementwise or reductions), no kinks for `relu`.
    Distinct,
}

/// Inputs for one shape case.
fn generate(doms: &[Dom], shapes: &[Vec<usize>], rng: &mut Lcg) -> Vec<Vec<f64>> {
    let dom = |i: usize| doms[i.min(doms.len() - 1)];
    let n_distinct: usize = (0..shapes.len())
        .filter(|&i| matches!(dom(i), Dom::Distinct))
        .map(|i| shapes[i].iter().product::<usize>())
        .sum();
    // Magnitudes 0.2, 0.3, ... in a random order (Fisher-Yates), each with a random sign.
    let mut pool: Vec<f64> = (0..n_distinct).map(|k| 0.2 + 0.1 * k as f64).collect();
    for k in (1..pool.len()).rev() {
        let j = (rng.next_u64() % (k as u64 + 1)) as usize;
        pool.swap(k, j);
    }
    let mut pool = pool.into_iter();
    shapes
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: usize = shape.iter().product();
            (0..n)
                .map(|_| match dom(i) {
                    Dom::Any => rng.uniform(-1.5, 1.5),
                    Dom::Pos => rng.uniform(0.5, 2.0),
                    Dom::Away => rng.sign() * rng.uniform(0.3, 1.5),
                    Dom::Small => rng.uniform(-1.2, 1.2),
                    Dom::Distinct => rng.sign() * pool.next().expect("pool sized above"),
                })
                .collect()
        })
        .collect()
}

fn tensor(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).expect("values match the shape")
}

// ---------------------------------------------------------------------------------------------
// The table.

/// An operation of the table: all arguments in, one tensor out.
type Op = Rc<dyn Fn(&[Tensor]) -> Tensor>;

/// What a row is checked against.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Central finite differences with step `h * max(1, |x|)`; mismatches are measured as
    /// `|got - want| / (1 + |want|)` and must stay within `tol`.
    FiniteDiff { h: f64, tol: f64 },
    /// Every derivative is exactly zero.
    Zero,
}

struct Row {
    name: &'static str,
    f: Op,
    doms: Vec<Dom>,
    cases: Vec<Vec<Vec<usize>>>,
    expect: Expect,
}

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;
/// Tolerance of the Hessian symmetry check (both sides are computed exactly).
const SYM_TOL: f64 = 1e-9;

fn row(
    name: &'static str,
    doms: &[Dom],
    cases: &[&[&[usize]]],
    f: impl Fn(&[Tensor]) -> Tensor + 'static,
) -> Row {
    Row {
        name,
        f: Rc::new(f),
        doms: doms.to_vec(),
        cases: cases
            .iter()
            .map(|c| c.iter().map(|s| s.to_vec()).collect())
            .collect(),
        expect: Expect::FiniteDiff { h: H, tol: TOL },
    }
}

impl Row {
    fn zero(mut self) -> Row {
        self.expect = Expect::Zero;
        self
    }

    fn fd(mut self, h: f64, tol: f64) -> Row {
        self.expect = Expect::FiniteDiff { h, tol };
        self
    }
}

impl TableRow for Row {
    fn name(&self) -> &str {
        self.name
    }

    fn cases(&self) -> &[Vec<Vec<usize>>] {
        &self.cases
    }

    fn check(&self, case: usize, shapes: &[Vec<usize>]) -> Result<(), String> {
        check_case(self, case, shapes)
    }
}

/// Shape cases of one-argument elementwise operations.
const UNARY: &[&[&[usize]]] = &[&[&[]], &[&[3]], &[&[2, 3]]];
/// Shape cases of two-argument elementwise operations, broadcasting included.
const BINARY: &[&[&[usize]]] = &[
    &[&[3], &[3]],
    &[&[2, 3], &[3]],
    &[&[2, 1], &[1, 4]],
    &[&[], &[3]],
    &[&[2, 3], &[]],
    &[&[2, 3], &[2, 1]],
];
/// Shape cases of reductions over everything.
const REDUCE_ALL: &[&[&[usize]]] = &[&[&[]], &[&[5]], &[&[2, 3]], &[&[2, 3, 2]]];

fn unary(name: &'static str, dom: Dom, f: fn(&Tensor) -> Tensor) -> Row {
    row(name, &[dom], UNARY, move |x| f(&x[0]))
}

fn binary(name: &'static str, doms: &[Dom], f: fn(&Tensor, &Tensor) -> Tensor) -> Row {
    row(name, doms, BINARY, move |x| f(&x[0], &x[1]))
}

fn mask(values: &[bool], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).expect("mask values match the shape")
}

fn elementwise_rows() -> Vec<Row> {
    use Dom::*;
    vec![
        // UnaryOp
        unary("neg", Any, |x| -x),
        unary("exp", Any, Tensor::exp),
        unary("log", Pos, Tensor::log),
        unary("log1p", Pos, Tensor::log1p),
        unary("expm1", Any, Tensor::expm1),
        unary("sqrt", Pos, Tensor::sqrt),
        unary("sin", Any, Tensor::sin),
        unary("cos", Any, Tensor::cos),
        unary("tan", Small, Tensor::tan),
        unary("tanh", Any, Tensor::tanh),
        unary("logistic", Any, Tensor::sigmoid),
        unary("abs", Away, Tensor::abs),
        unary("sign", Away, Tensor::sign).zero(),
        unary("stop_gradient", Any, Tensor::stop_gradient).zero(),
        unary("relu", Distinct, Tensor::relu),
        // integer_pow
        unary("integer_pow[-2]", Away, |x| x.powi(-2)),
        unary("integer_pow[-1]", Away, |x| x.powi(-1)),
        unary("integer_pow[0]", Any, |x| x.powi(0)),
        unary("integer_pow[1]", Any, |x| x.powi(1)),
        unary("integer_pow[2]", Any, |x| x.powi(2)),
        unary("integer_pow[3]", Any, |x| x.powi(3)),
        // Weakly typed scalars on either side (binary primitives with a broadcast constant).
        unary("scalar - x", Any, |x| 1.5 - x),
        unary("scalar / x", Away, |x| 2.0 / x),
        unary("x / scalar", Any, |x| x / 3.0),
        unary("x * scalar + scalar", Any, |x| x * 2.5 + 1.0),
        unary("x ^ 1.5 (powf)", Pos, |x| x.powf(1.5)),
        unary("2 ^ x", Any, |x| Tensor::scalar(2.0).pow(x)),
        unary("maximum(x, 0.25)", Distinct, |x| x.maximum(0.25)),
        unary("minimum(x, -0.25)", Distinct, |x| x.minimum(-0.25)),
        // BinaryOp
        binary("add", &[Any], |a, b| a + b),
        binary("sub", &[Any], |a, b| a - b),
        binary("mul", &[Any], |a, b| a * b),
        binary("div", &[Any, Away], |a, b| a / b),
        binary("max (maximum)", &[Distinct], |a, b| a.maximum(b)),
        binary("min (minimum)", &[Distinct], |a, b| a.minimum(b)),
        binary("pow", &[Pos, Any], |a, b| a.pow(b)),
        binary("logaddexp", &[Distinct], |a, b| a.logaddexp(b)),
        binary("mul of the same twice", &[Any], |a, b| a * b * a),
        // convert: through f32 and back. The f32 rounding (relative 6e-8) needs a larger step,
        // which is exact for these low-degree polynomials.
        row("convert f64->f32->f64", &[Any], UNARY, |x| {
            x[0].cast(DType::F32).cast(DType::F64) * &x[0]
        })
        .fd(1e-2, 1e-4),
        row("convert, math in f32", &[Any], UNARY, |x| {
            (x[0].cast(DType::F32).sin() * 2.0).cast(DType::F64)
        })
        .fd(1e-2, 1e-3),
        // select, with fixed masks of several shapes broadcast against the operands.
        row(
            "select mask[2,3]",
            &[Any],
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
            &[Any],
            &[&[&[2, 3], &[2, 1]], &[&[2, 1], &[]], &[&[1], &[2, 3]]],
            |x| {
                let m = mask(&[false, true, true], &[3]);
                where_(&m, &(&x[0] * &x[1]), &x[1].sin())
            },
        ),
        row(
            "select mask[2,1]",
            &[Any],
            &[&[&[3], &[]], &[&[2, 3], &[1, 3]]],
            |x| {
                let m = mask(&[true, false], &[2, 1]);
                where_(&m, &x[0].exp(), &(&x[1] * &x[1]))
            },
        ),
        // Comparisons carry no derivative: a mask computed from the input differentiates as
        // a constant, away from the switching points.
        unary("where(x > 0, x*x, -x)", Away, |x| {
            where_(&x.gt(0.0), &(x * x), &(-x))
        }),
        row("where(a > b, a*b, a-b)", &[Distinct], BINARY, |x| {
            let (a, b) = (&x[0], &x[1]);
            where_(&a.gt(b), &(a * b), &(a - b))
        }),
        unary("(x > 0) as f64 * x", Away, |x| {
            x.gt(0.0).cast(DType::F64) * x
        }),
        row("comparisons only", &[Distinct], BINARY, |x| {
            let (a, b) = (&x[0], &x[1]);
            a.eq(b).cast(DType::F64) + a.lt(b).cast(DType::F64) * 2.0 - a.ge(b).cast(DType::F64)
        })
        .zero(),
        unary("sign(x) * stop_gradient(x)", Away, |x| {
            x.sign() * x.stop_gradient()
        })
        .zero(),
    ]
}

// `1..-1` is a Python-style range here (all but the ends), not an empty Rust range.
#[allow(clippy::reversed_empty_ranges)]
fn structural_rows() -> Vec<Row> {
    use Dom::*;
    vec![
        // broadcast: a leading axis of 2, size-1 axes stretched to 3.
        row(
            "broadcast_to",
            &[Any],
            &[&[&[]], &[&[3]], &[&[2, 1]], &[&[1, 3]]],
            |x| {
                let mut shape = vec![2];
                shape.extend(
                    x[0].shape()
                        .unwrap()
                        .iter()
                        .map(|&d| if d == 1 { 3 } else { d }),
                );
                x[0].broadcast_to(&shape) * x[0].broadcast_to(&shape)
            },
        ),
        row(
            "reshape [-1]",
            &[Any],
            &[&[&[2, 3]], &[&[2, 3, 2]], &[&[]]],
            |x| x[0].reshape(&[-1]),
        ),
        row(
            "reshape [2,-1]",
            &[Any],
            &[&[&[6]], &[&[2, 3]], &[&[4, 3]]],
            |x| x[0].reshape(&[2, -1]).sin(),
        ),
        row("expand_dims", &[Any], &[&[&[3]], &[&[2, 3]]], |x| {
            x[0].expand_dims(-1) * x[0].expand_dims(-2)
        }),
        row(
            "transpose (.T)",
            &[Any],
            &[&[&[3]], &[&[2, 3]], &[&[2, 3, 4]]],
            |x| x[0].transpose(),
        ),
        row(
            "permute [1,2,0]",
            &[Any],
            &[&[&[2, 3, 4]], &[&[1, 3, 2]]],
            |x| x[0].permute(&[1, 2, 0]).powi(2),
        ),
        row(
            "transpose then add (mixed layouts)",
            &[Any],
            &[&[&[2, 3], &[3, 2]], &[&[3, 3], &[3, 3]]],
            |x| x[0].transpose() * &x[1],
        ),
        // slice (its transpose is pad, so jacrev and hessian cover pad too)
        row("slice 1..-1", &[Any], &[&[&[5]], &[&[4, 3]]], |x| {
            x[0].slice_along(0, 1..-1, 1)
        }),
        row(
            "slice ..step 2 last axis",
            &[Any],
            &[&[&[5]], &[&[2, 5]], &[&[3, 4]]],
            |x| x[0].slice_along(-1, .., 2).powi(2),
        ),
        row("slice -4..-1 step 2", &[Any], &[&[&[6]], &[&[5, 2]]], |x| {
            x[0].slice_along(0, -4..-1, 2).exp()
        }),
        row(
            "slice 1.. step 2 axis 1",
            &[Any],
            &[&[&[2, 5]], &[&[3, 4, 2]]],
            |x| x[0].slice_along(1, 1.., 2) * x[0].slice_along(1, ..-1, 2),
        ),
        row("index(1, -1)", &[Any], &[&[&[2, 3]], &[&[3, 4, 2]]], |x| {
            x[0].index(1, -1).sin()
        }),
        row("index(0, 1)", &[Any], &[&[&[3]], &[&[3, 2]]], |x| {
            x[0].index(0, 1) * x[0].index(0, 0)
        }),
        row("rosenbrock (slices)", &[Any], &[&[&[4]], &[&[2, 3]]], |x| {
            let head = x[0].slice_along(-1, ..-1, 1);
            let tail = x[0].slice_along(-1, 1.., 1);
            (tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)
        }),
        // concatenate / stack
        row(
            "concatenate axis 0",
            &[Any],
            &[&[&[2], &[3], &[1]], &[&[1, 3], &[2, 3], &[2, 3]]],
            |x| concatenate(&[x[0].clone(), x[1].exp(), &x[2] * &x[2]], 0),
        ),
        row(
            "concatenate axis -1",
            &[Any],
            &[&[&[2, 3], &[2, 1], &[2, 2]], &[&[2], &[3], &[1]]],
            |x| concatenate(&[x[0].sin(), x[1].clone(), &x[2] * 2.0], -1),
        ),
        row(
            "concatenate 4 inputs axis 1",
            &[Any],
            &[&[&[2, 1], &[2, 2], &[2, 1], &[2, 3]]],
            |x| concatenate(x, 1).powi(3),
        ),
        row(
            "stack axis 0",
            &[Any],
            &[&[&[3], &[3]], &[&[2, 3], &[2, 3]], &[&[], &[]]],
            |x| stack(&[&x[0] * &x[1], x[1].clone()], 0),
        ),
        row(
            "stack axis -1",
            &[Any],
            &[&[&[3], &[3], &[3]], &[&[2, 2], &[2, 2], &[2, 2]]],
            |x| stack(&[x[0].clone(), x[1].cos(), &x[2] * &x[0]], -1),
        ),
    ]
}

fn reduction_rows() -> Vec<Row> {
    use Dom::*;
    let rank2_3: &[&[&[usize]]] = &[&[&[2, 3]], &[&[2, 3, 2]]];
    vec![
        row("reduce_sum all", &[Any], REDUCE_ALL, |x| x[0].sum()),
        row(
            "reduce_sum axes [0]",
            &[Any],
            &[&[&[5]], &[&[2, 3]], &[&[2, 3, 2]]],
            |x| x[0].sum_axes(&[0], false),
        ),
        row("reduce_sum axes [-1] keepdims", &[Any], rank2_3, |x| {
            x[0].sum_axes(&[-1], true) * &x[0]
        }),
        row(
            "reduce_sum axes [0,2] keepdims",
            &[Any],
            &[&[&[2, 3, 2]], &[&[3, 1, 2]]],
            |x| x[0].sum_axes(&[0, 2], true).powi(2),
        ),
        row("reduce_max all", &[Distinct], REDUCE_ALL, |x| x[0].max()),
        row("reduce_max axes [1] keepdims", &[Distinct], rank2_3, |x| {
            x[0].max_axes(&[1], true) * &x[0]
        }),
        row("reduce_max axes [0]", &[Distinct], rank2_3, |x| {
            x[0].max_axes(&[0], false).powi(2)
        }),
        row("reduce_min all", &[Distinct], REDUCE_ALL, |x| x[0].min()),
        row("reduce_min axes [-1]", &[Distinct], rank2_3, |x| {
            x[0].min_axes(&[-1], false).powi(3)
        }),
        row(
            "reduce_min axes [0,1] keepdims",
            &[Distinct],
            rank2_3,
            |x| x[0].min_axes(&[0, 1], true) - &x[0],
        ),
        row(
            "reduce_max of a product",
            &[Distinct],
            &[&[&[3], &[3]]],
            |x| (&x[0] * &x[1]).max(),
        ),
        // compositions
        row("mean", &[Any], REDUCE_ALL, |x| x[0].mean().powi(2)),
        row("mean axes [0] keepdims", &[Any], rank2_3, |x| {
            x[0].mean_axes(&[0], true) * &x[0]
        }),
        row("logsumexp", &[Any], REDUCE_ALL, |x| x[0].logsumexp()),
        row("logsumexp axes [-1]", &[Any], rank2_3, |x| {
            x[0].logsumexp_axes(&[-1], false)
        }),
        row("logsumexp axes [0] keepdims", &[Any], rank2_3, |x| {
            x[0].logsumexp_axes(&[0], true)
        }),
        row(
            "softmax axis -1",
            &[Any],
            &[&[&[3]], &[&[2, 3]], &[&[2, 2, 3]]],
            |x| x[0].softmax(-1),
        ),
        row("softmax axis 0", &[Any], &[&[&[3]], &[&[2, 3]]], |x| {
            x[0].softmax(0)
        }),
    ]
}

fn matmul_rows() -> Vec<Row> {
    use Dom::*;
    vec![
        row(
            "matmul",
            &[Any],
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
        row("dot", &[Any], &[&[&[3], &[3]], &[&[2, 3], &[3, 2]]], |x| {
            x[0].dot(&x[1])
        }),
        row("x @ A @ x", &[Any], &[&[&[3], &[3, 3]]], |x| {
            x[0].matmul(&x[1]).matmul(&x[0])
        }),
        row(
            "tanh(x @ W + b) layer",
            &[Any],
            &[&[&[2, 3], &[3, 4], &[4]], &[&[3], &[3, 2], &[]]],
            |x| (x[0].matmul(&x[1]) + &x[2]).tanh(),
        ),
        row(
            "softmax(x @ W) cross terms",
            &[Any],
            &[&[&[2, 3], &[3, 4]]],
            |x| x[0].matmul(&x[1]).softmax(-1),
        ),
        row(
            "a * b * c",
            &[Any],
            &[&[&[3], &[3], &[3]], &[&[2, 3], &[3], &[]]],
            |x| &x[0] * &x[1] * &x[2],
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running the transforms on a table row, whatever its number of arguments.

/// A transform made callable on a slice of arguments: the derivative blocks, flattened in the
/// transform's order (output / argument / argument).
type Compiled = Box<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>, String>>;

/// Builds `$transform` of an [`Op`] over all its arguments: a function of one argument with the
/// default `argnums`, of two or three with `argnums([0, 1(, 2)])`, and of more as one `Vec`
/// argument (a list tree).
macro_rules! compile {
    ($transform:ident, $f:expr, $n:expr) => {{
        let f: Op = $f;
        let leaves = |r: brainstate::Result<Node>| r.map(|n| n.leaves()).map_err(|e| e.to_string());
        let c: Compiled = match $n {
            1 => {
                let t = $transform(move |a: &Tensor| f(std::slice::from_ref(a)));
                Box::new(move |x: &[Tensor]| leaves(t.call(&x[0])))
            }
            2 => {
                let t = $transform(move |a: &Tensor, b: &Tensor| f(&[a.clone(), b.clone()]))
                    .argnums([0, 1]);
                Box::new(move |x: &[Tensor]| leaves(t.call((&x[0], &x[1]))))
            }
            3 => {
                let t = $transform(move |a: &Tensor, b: &Tensor, c: &Tensor| {
                    f(&[a.clone(), b.clone(), c.clone()])
                })
                .argnums([0, 1, 2]);
                Box::new(move |x: &[Tensor]| leaves(t.call((&x[0], &x[1], &x[2]))))
            }
            _ => {
                let t = $transform(move |v: &Vec<Tensor>| f(v));
                Box::new(move |x: &[Tensor]| leaves(t.call(&x.to_vec())))
            }
        };
        c
    }};
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Checks that a transform returned `shapes.len()` blocks of these shapes, and returns their
/// values.
fn blocks(got: Vec<Tensor>, shapes: &[Vec<usize>]) -> Result<Vec<Vec<f64>>, String> {
    if got.len() != shapes.len() {
        return Err(format!("{} blocks, expected {}", got.len(), shapes.len()));
    }
    got.iter()
        .zip(shapes)
        .enumerate()
        .map(|(k, (t, shape))| {
            if t.shape().unwrap() != shape.as_slice() {
                return Err(format!(
                    "block {k} has shape {:?}, expected {shape:?}",
                    t.shape().unwrap()
                ));
            }
            if t.dtype().unwrap() != DType::F64 {
                return Err(format!("block {k} has dtype {}", t.dtype().unwrap()));
            }
            t.to_vec::<f64>().map_err(|e| format!("block {k}: {e}"))
        })
        .collect()
}

/// A function of the arguments with a flat vector of values.
type Values<'a> = dyn Fn(&[Tensor]) -> Result<Vec<f64>, String> + 'a;
/// Derivatives along each element of one argument, each over all values.
type Columns = Vec<Vec<f64>>;

/// Central differences of `f` (any function with a flat vector of values) at `xs`:
/// `out[i][k]` is the derivative of all of `f`'s values along element `k` of argument `i`.
fn central(
    xs: &[Vec<f64>],
    shapes: &[Vec<usize>],
    h: f64,
    f: &Values<'_>,
) -> Result<Vec<Columns>, String> {
    let mut out = Vec::new();
    for i in 0..xs.len() {
        let mut columns = Vec::new();
        for k in 0..xs[i].len() {
            let step = h * xs[i][k].abs().max(1.0);
            let at = |delta: f64| {
                let args: Vec<Tensor> = (0..xs.len())
                    .map(|j| {
                        let mut v = xs[j].clone();
                        if j == i {
                            v[k] += delta;
                        }
                        tensor(&v, &shapes[j])
                    })
                    .collect();
                f(&args)
            };
            let (plus, minus) = (at(step)?, at(-step)?);
            columns.push(
                plus.iter()
                    .zip(&minus)
                    .map(|(p, m)| (p - m) / (2.0 * step))
                    .collect(),
            );
        }
        out.push(columns);
    }
    Ok(out)
}

/// `values` (one entry per input element of argument `i`, each a vector over output elements)
/// laid out as a Jacobian block `out ++ in`.
fn transpose_columns(columns: &[Vec<f64>], out_n: usize) -> Vec<f64> {
    let in_n = columns.len();
    let mut block = vec![0.0; out_n * in_n];
    for (k, col) in columns.iter().enumerate() {
        for (o, &v) in col.iter().enumerate() {
            block[o * in_n + k] = v;
        }
    }
    block
}

/// Runs every check of one row on one shape case.
fn check_case(row: &Row, case: usize, shapes: &[Vec<usize>]) -> Result<(), String> {
    let mut rng = Lcg::new(seed_of(row.name, case));
    let xs = generate(&row.doms, shapes, &mut rng);
    let args: Vec<Tensor> = xs.iter().zip(shapes).map(|(v, s)| tensor(v, s)).collect();
    let n = shapes.len();
    let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();

    // The value, eagerly.
    let y = (row.f)(&args);
    if let Some(e) = y.error() {
        return Err(format!("eager evaluation failed: {e}"));
    }
    if y.dtype().unwrap() != DType::F64 {
        return Err(format!(
            "output dtype is {}, expected f64",
            y.dtype().unwrap()
        ));
    }
    let out_shape = y.shape().unwrap().to_vec();
    let out_n: usize = out_shape.iter().product();
    let weights: Vec<f64> = (0..out_n).map(|_| rng.uniform(0.5, 1.5)).collect();
    let w = tensor(&weights, &out_shape);

    let f = row.f.clone();
    let scalar: Op = Rc::new(move |x: &[Tensor]| (f(x) * &w).sum());

    let jac_shapes: Vec<Vec<usize>> = shapes.iter().map(|s| cat(&out_shape, s)).collect();
    let hess_shapes: Vec<Vec<usize>> = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| cat(&shapes[i], &shapes[j]))
        .collect();

    let fwd = compile!(jacfwd, row.f.clone(), n);
    let rev = compile!(jacrev, row.f.clone(), n);
    let grd = compile!(grad, scalar.clone(), n);
    let hes = compile!(hessian, scalar.clone(), n);

    // Each transform is checked on its own, so that one failure does not hide another.
    let mut errors: Vec<String> = Vec::new();
    let mut attempt = |what: &str, check: &dyn Fn() -> Result<(), String>| {
        if let Err(e) = guarded(check) {
            errors.push(format!("{what}: {e}"));
        }
    };
    let run = |c: &Compiled, want: &[Vec<usize>]| -> Result<Vec<Vec<f64>>, String> {
        blocks(c(&args)?, want)
    };

    if let Expect::Zero = row.expect {
        let zero = |c: &Compiled, want: &[Vec<usize>]| -> Result<(), String> {
            for (k, block) in run(c, want)?.iter().enumerate() {
                if let Some(v) = block.iter().find(|v| **v != 0.0) {
                    return Err(format!("block {k} has {v:e}, expected exactly 0"));
                }
            }
            Ok(())
        };
        attempt("jacfwd", &|| zero(&fwd, &jac_shapes));
        attempt("jacrev", &|| zero(&rev, &jac_shapes));
        attempt("grad", &|| zero(&grd, shapes));
        attempt("hessian", &|| zero(&hes, &hess_shapes));
        return if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        };
    }
    let Expect::FiniteDiff { h, tol } = row.expect else {
        unreachable!()
    };

    // Central differences of the function: fd[i][k] is d f / d x_i[k], over f's elements.
    let eval = |x: &[Tensor]| (row.f)(x).to_vec::<f64>().map_err(|e| e.to_string());
    let fd = central(&xs, shapes, h, &eval)?;

    // 1 and 2: the Jacobians, forward and reverse.
    let jacobian = |c: &Compiled| -> Result<(), String> {
        let got = run(c, &jac_shapes)?;
        for i in 0..n {
            let want = transpose_columns(&fd[i], out_n);
            close(&format!("block {i}"), &got[i], &want, tol)?;
        }
        Ok(())
    };
    attempt("jacfwd", &|| jacobian(&fwd));
    attempt("jacrev", &|| jacobian(&rev));

    // 3: the gradient of the scalarised function.
    attempt("grad", &|| {
        let got = run(&grd, shapes)?;
        for i in 0..n {
            let want: Vec<f64> = fd[i]
                .iter()
                .map(|col| col.iter().zip(&weights).map(|(d, w)| d * w).sum())
                .collect();
            close(&format!("argument {i}"), &got[i], &want, tol)?;
        }
        Ok(())
    });

    // 4: the Hessian is symmetric, and is the derivative of the gradient.
    attempt("hessian", &|| {
        let hs = run(&hes, &hess_shapes)?;
        for i in 0..n {
            for j in 0..n {
                let (hij, hji) = (&hs[i * n + j], &hs[j * n + i]);
                let mirrored: Vec<f64> = (0..sizes[i] * sizes[j])
                    .map(|ab| hji[(ab % sizes[j]) * sizes[i] + ab / sizes[j]])
                    .collect();
                close(
                    &format!("symmetry, block ({i},{j}) vs ({j},{i})^T"),
                    hij,
                    &mirrored,
                    SYM_TOL.max(tol * 1e-3),
                )?;
            }
        }
        let eval_grad = |x: &[Tensor]| -> Result<Vec<f64>, String> {
            let mut flat = Vec::new();
            for t in grd(x)? {
                flat.extend(t.to_vec::<f64>().map_err(|e| e.to_string())?);
            }
            Ok(flat)
        };
        // fd_g[j][b][offset_i + a] = d grad_i[a] / d x_j[b]
        let fd_g =
            central(&xs, shapes, h, &eval_grad).map_err(|e| format!("differences of grad: {e}"))?;
        let offsets: Vec<usize> = (0..n).map(|i| sizes[..i].iter().sum()).collect();
        for i in 0..n {
            for j in 0..n {
                let mut want = vec![0.0; sizes[i] * sizes[j]];
                for (b, column) in fd_g[j].iter().enumerate() {
                    for a in 0..sizes[i] {
                        want[a * sizes[j] + b] = column[offsets[i] + a];
                    }
                }
                close(
                    &format!("block ({i},{j}) vs differences of grad"),
                    &hs[i * n + j],
                    &want,
                    tol,
                )?;
            }
        }
        Ok(())
    });
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
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
    let wrong = row("x * stop_gradient(x)", &[Dom::Any], UNARY, |x| {
        &x[0] * x[0].stop_gradient()
    });
    let failures: Vec<String> = wrong
        .cases
        .iter()
        .enumerate()
        .filter_map(|(c, s)| check_case(&wrong, c, s).err())
        .collect();
    assert_eq!(failures.len(), wrong.cases.len(), "{failures:?}");
    assert!(failures.iter().all(|f| f.contains("worst mismatch")));
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
