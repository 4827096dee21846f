//! The finite-difference harness of `tests/rules.rs` and `tests/complex.rs`, generic over the
//! scalar: `f64` arguments (real rules, and real functions of complex intermediates) or
//! `Complex64` ones (holomorphic rules, with `holomorphic(true)`).
//!
//! A [`Row`] is an operation `f(x0, x1, ...)` of one or more tensors, an input domain per
//! argument (a [`Dom`] for a real argument, a pair for the real and imaginary parts of a
//! complex one) and a list of shape cases. For every row and case, with deterministic
//! pseudo-random inputs, [`Row::check`] checks:
//!
//! 1. `jacfwd` (forward mode, batched over the identity basis) against central differences;
//! 2. `jacrev` (reverse mode, batched: checks the transpose rules) against the same;
//! 3. `grad` of the scalarised `sum(f(x) * w)` (unbatched reverse mode) against the
//!    finite-difference gradient;
//! 4. `hessian` of the scalarised function: symmetric (block `(i, j)` is block `(j, i)`
//!    transposed; complex symmetric, not Hermitian, for holomorphic rows) and equal to central
//!    differences of `grad` (second order through every rule).
//!
//! Since 1 and 2 both equal the same finite differences, the transpose identity
//! `<t, vjp(c)> = <jvp(t), c>` follows and is not checked separately. The step is always real:
//! for a holomorphic `f`, `(f(z + h) - f(z - h)) / 2h` is its complex derivative (the imaginary
//! direction is checked by real rows of `(x, y) -> (Re f(x + iy), Im f(x + iy))`).
//!
//! Rows marked [`Row::zero`] must instead give derivatives that are exactly zero.

use std::cell::Cell;
use std::fmt::{Debug, LowerExp};
use std::iter::Sum;
use std::ops::{Add, Div, Mul, Sub};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Once;

use brainstate::{Complex64, Element, Node, Tensor, grad, hessian, jacfwd, jacrev};

// ---------------------------------------------------------------------------------------------
// Deterministic inputs.
// ---------------------------------------------------------------------------------------------

/// A 64-bit linear congruential generator (Knuth's MMIX constants), high bits as output.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        let mut rng = Lcg(seed ^ 0x9E37_79B9_7F4A_7C15);
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn sign(&mut self) -> f64 {
        if self.unit() < 0.5 { -1.0 } else { 1.0 }
    }
}

/// FNV-1a, to give each row its own seed.
pub fn seed_of(name: &str, case: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(case.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A real interval inputs are drawn from.
#[derive(Clone, Copy, Debug)]
pub enum Dom {
    /// Uniform in `(lo, hi)`.
    Uniform(f64, f64),
    /// `|x|` uniform in `(lo, hi)`, either sign: away from 0 (kinks, poles, branch cuts).
    EitherSign(f64, f64),
    /// Distinct across every `Distinct` input of the case (magnitudes 0.2, 0.3, ... in a random
    /// order, gaps of at least 0.1) and away from 0: no ties for `max`/`min` (elementwise or
    /// reductions), no kinks for `relu`.
    Distinct,
}

/// What one shape case draws from: the generator and the shuffled pool of `Distinct` values.
pub struct Draw {
    rng: Lcg,
    pool: std::vec::IntoIter<f64>,
}

impl Dom {
    fn draw(self, d: &mut Draw) -> f64 {
        match self {
            Dom::Uniform(lo, hi) => d.rng.uniform(lo, hi),
            Dom::EitherSign(lo, hi) => d.rng.sign() * d.rng.uniform(lo, hi),
            Dom::Distinct => d.rng.sign() * d.pool.next().expect("pool sized for the case"),
        }
    }
}

/// The input domain of one argument; its type decides the scalar of the row: a [`Dom`] gives
/// an `f64` argument, a pair `(real part, imaginary part)` a `Complex64` one.
pub trait Domain: Copy + Debug + 'static {
    type Scalar: Scalar;
    /// Where the weights `w` of the scalarised `sum(f(x) * w)` are drawn from.
    const WEIGHTS: Self;
    /// How many parts of a value are drawn from [`Dom::Distinct`].
    fn distinct(self) -> usize;
    fn draw(self, d: &mut Draw) -> Self::Scalar;
}

impl Domain for Dom {
    type Scalar = f64;
    const WEIGHTS: Self = Dom::Uniform(0.5, 1.5);

    fn distinct(self) -> usize {
        usize::from(matches!(self, Dom::Distinct))
    }

    fn draw(self, d: &mut Draw) -> f64 {
        Dom::draw(self, d)
    }
}

impl Domain for (Dom, Dom) {
    type Scalar = Complex64;
    /// Complex weights, so that the scalarised function mixes the parts.
    const WEIGHTS: Self = (Dom::Uniform(0.5, 1.5), Dom::Uniform(-1.0, 1.0));

    fn distinct(self) -> usize {
        self.0.distinct() + self.1.distinct()
    }

    fn draw(self, d: &mut Draw) -> Complex64 {
        let re = self.0.draw(d);
        Complex64::new(re, self.1.draw(d))
    }
}

/// Inputs for one shape case (argument `i` drawn from `doms[min(i, last)]`), and what is left
/// to draw from.
fn generate<D: Domain>(doms: &[D], shapes: &[Vec<usize>], rng: Lcg) -> (Vec<Vec<D::Scalar>>, Draw) {
    let dom = |i: usize| doms[i.min(doms.len() - 1)];
    let n_distinct: usize = (0..shapes.len())
        .map(|i| dom(i).distinct() * shapes[i].iter().product::<usize>())
        .sum();
    // Magnitudes 0.2, 0.3, ... in a random order (Fisher-Yates), each with a random sign.
    let mut rng = rng;
    let mut pool: Vec<f64> = (0..n_distinct).map(|k| 0.2 + 0.1 * k as f64).collect();
    for k in (1..pool.len()).rev() {
        let j = (rng.next_u64() % (k as u64 + 1)) as usize;
        pool.swap(k, j);
    }
    let mut d = Draw {
        rng,
        pool: pool.into_iter(),
    };
    let xs = shapes
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: usize = shape.iter().product();
            (0..n).map(|_| dom(i).draw(&mut d)).collect()
        })
        .collect();
    (xs, d)
}

// ---------------------------------------------------------------------------------------------
// Comparisons.
// ---------------------------------------------------------------------------------------------

/// A value the harness computes with: `f64` or `Complex64`.
pub trait Scalar:
    Element
    + Default
    + PartialEq
    + LowerExp
    + Sum
    + Add<f64, Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<f64, Output = Self>
{
    /// `|x|`.
    fn magnitude(self) -> f64;
}

impl Scalar for f64 {
    fn magnitude(self) -> f64 {
        self.abs()
    }
}

impl Scalar for Complex64 {
    fn magnitude(self) -> f64 {
        self.norm()
    }
}

/// Compares `got` with `want`, reporting the worst mismatch (measured as
/// `|got - want| / (1 + |want|)`).
pub fn close<T: Scalar>(what: &str, got: &[T], want: &[T], tol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).magnitude() / (1.0 + w.magnitude());
        let err = if err.is_nan() { f64::INFINITY } else { err };
        if worst.is_none_or(|(_, e)| err > e) {
            worst = Some((i, err));
        }
    }
    match worst {
        Some((i, err)) if err > tol => Err(format!(
            "{what}: worst mismatch at flat index {i}: got {:.12e}, expected {:.12e} \
             (relative error {err:.2e}, tolerance {tol:.0e})",
            got[i], want[i]
        )),
        _ => Ok(()),
    }
}

thread_local! {
    /// Whether the panic hook stays silent on this thread (inside [`guarded`]).
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs a check, turning a panic into an error (reported with the failures, so the panic hook
/// is silenced meanwhile on this thread).
pub fn guarded(check: &dyn Fn() -> Result<(), String>) -> Result<(), String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|q| q.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(check));
    QUIET.with(|q| q.set(was_quiet));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table.
// ---------------------------------------------------------------------------------------------

/// An operation of a table: all arguments in, one tensor out.
pub type Op = Rc<dyn Fn(&[Tensor]) -> Tensor>;

/// What a row is checked against.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Central finite differences with step `h * max(1, |x|)`; mismatches are measured as
    /// `|got - want| / (1 + |want|)` and must stay within `tol`.
    FiniteDiff { h: f64, tol: f64 },
    /// Every derivative is exactly zero.
    Zero,
}

/// The default step and tolerance of [`Expect::FiniteDiff`].
const H: f64 = 1e-6;
const TOL: f64 = 1e-6;
/// Tolerance of the Hessian symmetry check (both sides are computed exactly).
const SYM_TOL: f64 = 1e-9;

/// A row of a table: an operation checked on several shape cases.
pub struct Row<D: Domain> {
    pub name: String,
    f: Op,
    doms: Vec<D>,
    pub cases: Vec<Vec<Vec<usize>>>,
    expect: Expect,
}

/// A row checked against finite differences with the default step and tolerance (`1e-6` both).
/// Argument `i` is drawn from `doms[min(i, doms.len() - 1)]`.
pub fn row<D: Domain>(
    name: impl Into<String>,
    doms: &[D],
    cases: &[&[&[usize]]],
    f: impl Fn(&[Tensor]) -> Tensor + 'static,
) -> Row<D> {
    Row {
        name: name.into(),
        f: Rc::new(f),
        doms: doms.to_vec(),
        cases: cases
            .iter()
            .map(|c| c.iter().map(|s| s.to_vec()).collect())
            .collect(),
        expect: Expect::FiniteDiff { h: H, tol: TOL },
    }
}

impl<D: Domain> Row<D> {
    /// Every derivative must be exactly zero.
    pub fn zero(mut self) -> Self {
        self.expect = Expect::Zero;
        self
    }

    /// Finite differences with step `h`, within `tol`.
    pub fn fd(mut self, h: f64, tol: f64) -> Self {
        self.expect = Expect::FiniteDiff { h, tol };
        self
    }

    /// The failures of [`Row::check`], one per failing shape case.
    pub fn failures(&self) -> Vec<String> {
        self.cases
            .iter()
            .enumerate()
            .filter_map(|(case, shapes)| self.check(case, shapes).err())
            .collect()
    }

    /// Runs every check of the row on shape case number `case`.
    pub fn check(&self, case: usize, shapes: &[Vec<usize>]) -> Result<(), String> {
        check_case(self, case, shapes)
    }
}

/// Shape cases of one-argument elementwise operations.
pub const UNARY: &[&[&[usize]]] = &[&[&[]], &[&[3]], &[&[2, 3]]];
/// Shape cases of two-argument elementwise operations, broadcasting included.
pub const BINARY: &[&[&[usize]]] = &[
    &[&[3], &[3]],
    &[&[2, 3], &[3]],
    &[&[2, 1], &[1, 4]],
    &[&[], &[3]],
    &[&[2, 3], &[]],
    &[&[2, 3], &[2, 1]],
];

/// An elementwise operation of one argument, on the [`UNARY`] shape cases.
pub fn unary<D: Domain>(name: &str, dom: D, f: fn(&Tensor) -> Tensor) -> Row<D> {
    row(name, &[dom], UNARY, move |x| f(&x[0]))
}

/// An elementwise operation of two arguments, on the [`BINARY`] shape cases.
pub fn binary<D: Domain>(name: &str, doms: &[D], f: fn(&Tensor, &Tensor) -> Tensor) -> Row<D> {
    row(name, doms, BINARY, move |x| f(&x[0], &x[1]))
}

/// `x` broadcast to a leading axis of 2, its size-1 axes stretched to 3, times itself: the
/// `broadcast_to` row of both tables.
pub fn broadcast_squared(x: &Tensor) -> Tensor {
    let mut shape = vec![2];
    shape.extend(
        x.shape()
            .unwrap()
            .iter()
            .map(|&d| if d == 1 { 3 } else { d }),
    );
    x.broadcast_to(&shape) * x.broadcast_to(&shape)
}

/// Runs every row on every shape case and fails with the list of all failures.
pub fn run_table<D: Domain>(rows: Vec<Row<D>>) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in &rows {
        for (case, shapes) in row.cases.iter().enumerate() {
            checked += 1;
            let Err(message) = guarded(&|| row.check(case, shapes)) else {
                continue;
            };
            failures.push(format!(
                "  {} with input shapes {:?}: {message}",
                row.name, shapes
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} (operation, shape case) pairs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Running the transforms on a row, whatever its number of arguments.
// ---------------------------------------------------------------------------------------------

/// A transform made callable on a slice of arguments: the derivative blocks, flattened in the
/// transform's order (output / argument / argument).
type Compiled = Box<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>, String>>;

/// Builds `$transform` of an [`Op`] over all its arguments, with `holomorphic($holo)`: a
/// function of one argument with the default `argnums`, of two or three with
/// `argnums([0, 1(, 2)])`, and of more as one `Vec` argument (a list tree).
macro_rules! compile {
    ($transform:ident, $f:expr, $n:expr, $holo:expr) => {{
        let f: Op = $f;
        let holo: bool = $holo;
        let leaves = |r: brainstate::Result<Node>| r.map(|n| n.leaves()).map_err(|e| e.to_string());
        let c: Compiled = match $n {
            1 => {
                let t = $transform(move |a: &Tensor| f(std::slice::from_ref(a))).holomorphic(holo);
                Box::new(move |x: &[Tensor]| leaves(t.call(&x[0])))
            }
            2 => {
                let t = $transform(move |a: &Tensor, b: &Tensor| f(&[a.clone(), b.clone()]))
                    .argnums([0, 1])
                    .holomorphic(holo);
                Box::new(move |x: &[Tensor]| leaves(t.call((&x[0], &x[1]))))
            }
            3 => {
                let t = $transform(move |a: &Tensor, b: &Tensor, c: &Tensor| {
                    f(&[a.clone(), b.clone(), c.clone()])
                })
                .argnums([0, 1, 2])
                .holomorphic(holo);
                Box::new(move |x: &[Tensor]| leaves(t.call((&x[0], &x[1], &x[2]))))
            }
            _ => {
                let t = $transform(move |v: &Vec<Tensor>| f(v)).holomorphic(holo);
                Box::new(move |x: &[Tensor]| leaves(t.call(&x.to_vec())))
            }
        };
        c
    }};
}

// ---------------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------------

fn tensor<T: Scalar>(values: &[T], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).expect("values match the shape")
}

/// The values of a tensor.
fn values<T: Scalar>(t: &Tensor) -> Result<Vec<T>, String> {
    t.to_vec::<T>().map_err(|e| e.to_string())
}

/// Checks that a transform returned `shapes.len()` blocks of these shapes and of the dtype of
/// `T`, and returns their values.
fn blocks<T: Scalar>(got: Vec<Tensor>, shapes: &[Vec<usize>]) -> Result<Vec<Vec<T>>, String> {
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
            if t.dtype().unwrap() != T::DTYPE {
                return Err(format!(
                    "block {k} has dtype {}, expected {}",
                    t.dtype().unwrap(),
                    T::DTYPE
                ));
            }
            values(t).map_err(|e| format!("block {k}: {e}"))
        })
        .collect()
}

/// A function of the arguments with a flat vector of values.
type Values<'a, T> = dyn Fn(&[Tensor]) -> Result<Vec<T>, String> + 'a;
/// Derivatives along each element of one argument, each over all values.
type Columns<T> = Vec<Vec<T>>;

/// Central differences of `f` (any function with a flat vector of values) at `xs`, with a real
/// step: `out[i][k]` is the derivative of all of `f`'s values along the real direction of
/// element `k` of argument `i` (for a holomorphic `f`, its complex derivative).
fn central<T: Scalar>(
    xs: &[Vec<T>],
    shapes: &[Vec<usize>],
    h: f64,
    f: &Values<'_, T>,
) -> Result<Vec<Columns<T>>, String> {
    let mut out = Vec::new();
    for i in 0..xs.len() {
        let mut columns = Vec::new();
        for k in 0..xs[i].len() {
            let step = h * xs[i][k].magnitude().max(1.0);
            let at = |delta: f64| {
                let mut moved = xs.to_vec();
                moved[i][k] = moved[i][k] + delta;
                let args: Vec<Tensor> = moved
                    .iter()
                    .zip(shapes)
                    .map(|(v, s)| tensor(v, s))
                    .collect();
                f(&args)
            };
            let (plus, minus) = (at(step)?, at(-step)?);
            columns.push(
                plus.iter()
                    .zip(&minus)
                    .map(|(&p, &m)| (p - m) / (2.0 * step))
                    .collect(),
            );
        }
        out.push(columns);
    }
    Ok(out)
}

/// Runs every check of one row on one shape case.
fn check_case<D: Domain>(row: &Row<D>, case: usize, shapes: &[Vec<usize>]) -> Result<(), String> {
    let holo = D::Scalar::DTYPE.is_complex();
    let (xs, mut draw) = generate(&row.doms, shapes, Lcg::new(seed_of(&row.name, case)));
    let args: Vec<Tensor> = xs.iter().zip(shapes).map(|(v, s)| tensor(v, s)).collect();
    let n = shapes.len();
    let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();

    // The value, eagerly.
    let y = (row.f)(&args);
    if let Some(e) = y.error() {
        return Err(format!("eager evaluation failed: {e}"));
    }
    if y.dtype().unwrap() != D::Scalar::DTYPE {
        return Err(format!(
            "output dtype is {}, expected {}",
            y.dtype().unwrap(),
            D::Scalar::DTYPE
        ));
    }
    let out_shape = y.shape().unwrap().to_vec();
    let out_n: usize = out_shape.iter().product();
    let weights: Vec<D::Scalar> = (0..out_n).map(|_| D::WEIGHTS.draw(&mut draw)).collect();
    let w = tensor(&weights, &out_shape);

    let f = row.f.clone();
    let scalar: Op = Rc::new(move |x: &[Tensor]| (f(x) * &w).sum());

    let cat = |a: &[usize], b: &[usize]| -> Vec<usize> { a.iter().chain(b).copied().collect() };
    let jac_shapes: Vec<Vec<usize>> = shapes.iter().map(|s| cat(&out_shape, s)).collect();
    let hess_shapes: Vec<Vec<usize>> = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| cat(&shapes[i], &shapes[j]))
        .collect();

    let fwd = compile!(jacfwd, row.f.clone(), n, holo);
    let rev = compile!(jacrev, row.f.clone(), n, holo);
    let grd = compile!(grad, scalar.clone(), n, holo);
    let hes = compile!(hessian, scalar, n, holo);

    // Each transform is checked on its own, so that one failure does not hide another.
    let mut errors: Vec<String> = Vec::new();
    let mut attempt = |what: &str, check: &dyn Fn() -> Result<(), String>| {
        if let Err(e) = guarded(check) {
            errors.push(format!("{what}: {e}"));
        }
    };
    let run = |c: &Compiled, want: &[Vec<usize>]| -> Result<Vec<Vec<D::Scalar>>, String> {
        blocks(c(&args)?, want)
    };
    let outcome = |errors: Vec<String>| {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    };

    let (h, tol) = match row.expect {
        Expect::FiniteDiff { h, tol } => (h, tol),
        Expect::Zero => {
            let zero = |c: &Compiled, want: &[Vec<usize>]| -> Result<(), String> {
                for (k, block) in run(c, want)?.iter().enumerate() {
                    if let Some(v) = block.iter().find(|&&v| v != D::Scalar::default()) {
                        return Err(format!("block {k} has {v:e}, expected exactly 0"));
                    }
                }
                Ok(())
            };
            attempt("jacfwd", &|| zero(&fwd, &jac_shapes));
            attempt("jacrev", &|| zero(&rev, &jac_shapes));
            attempt("grad", &|| zero(&grd, shapes));
            attempt("hessian", &|| zero(&hes, &hess_shapes));
            return outcome(errors);
        }
    };

    // Central differences of the function: fd[i][k] is d f / d x_i[k], over f's elements.
    let eval = |x: &[Tensor]| values(&(row.f)(x));
    let fd = central(&xs, shapes, h, &eval)?;

    // 1 and 2: the Jacobians, forward and reverse.
    let jacobian = |c: &Compiled| -> Result<(), String> {
        let got = run(c, &jac_shapes)?;
        for i in 0..n {
            // fd[i] laid out as the Jacobian block `out ++ in`.
            let mut want = vec![D::Scalar::default(); out_n * sizes[i]];
            for (k, col) in fd[i].iter().enumerate() {
                for (o, &v) in col.iter().enumerate() {
                    want[o * sizes[i] + k] = v;
                }
            }
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
            let want: Vec<D::Scalar> = fd[i]
                .iter()
                .map(|col| col.iter().zip(&weights).map(|(&d, &w)| d * w).sum())
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
                let mirrored: Vec<D::Scalar> = (0..sizes[i] * sizes[j])
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
        let eval_grad = |x: &[Tensor]| -> Result<Vec<D::Scalar>, String> {
            let mut flat = Vec::new();
            for t in grd(x)? {
                flat.extend(values::<D::Scalar>(&t)?);
            }
            Ok(flat)
        };
        // fd_g[j][b][offset_i + a] = d grad_i[a] / d x_j[b]
        let fd_g =
            central(&xs, shapes, h, &eval_grad).map_err(|e| format!("differences of grad: {e}"))?;
        let offsets: Vec<usize> = (0..n).map(|i| sizes[..i].iter().sum()).collect();
        for i in 0..n {
            for j in 0..n {
                let mut want = vec![D::Scalar::default(); sizes[i] * sizes[j]];
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
    outcome(errors)
}
