//! Loops: `scan` as one equation whose body is a program, as JAX's `lax.scan`.
//!
//! A loop runs its body `length` times. The body is a program with inputs
//! `consts ++ carry ++ x` and outputs `carry ++ y`: the constants are the same at every step,
//! the carry flows from one step to the next, `x` is step `i` of the stacked inputs `xs`
//! (sliced along their first axis) and `y` is stacked along a new first axis into `ys`. The
//! equation's inputs are `consts ++ init ++ xs` and its outputs `carry ++ ys`. With `reverse`,
//! step `t` reads and writes index `length - 1 - t`.
//!
//! The body is an ordinary program, so every rule of the loop is a rule *about its body*: the
//! JVP of a loop is a loop over the body's JVP, its transpose a reverse loop over the body's
//! transpose, its sparsity a fixed point of the body's dependence over the carry. Those rules
//! need the layers above this one (forward and reverse mode, the sparsity detector, the
//! planner), which is where they live, each in one place, as JAX's scan rules call back into
//! its interpreters:
//! - the JVP and the transpose in `autodiff::loops` ([`Rules::jvp`] and [`Rules::transpose`]
//!   here only say so, and are never called by the differentiation drivers);
//! - the sparsity fixed point in `sparsity::detect` ([`Rules::dependence`] answers
//!   [`Dependence::Body`]);
//! - the planned execution (the body planned once, run step after step) in `exec::loops`.
//!
//! What needs no other layer is here: shape inference, the unit rule, the printed form, the
//! reference kernel (a plain interpreter of the body, used for loops over constants), and
//! dead-code pruning of unused carries and outputs ([`Loop::prune`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ndarray::{ArrayD, Axis};

use super::{Dependence, Primal, Program, Rules, Tangent, UnitRule, Units, concat_dims};
use crate::error::{Error, Result};
use crate::ir::passes::dead_code;
use crate::storage::{Aval, DType, Data, pool, with_array};
use crate::tensor::Tensor;
use crate::unit::Unit;

/// The units a loop's body was traced with: of its inputs, then of its outputs.
pub(crate) type LoopUnits = Arc<(Vec<Option<Unit>>, Vec<Option<Unit>>)>;

/// One step of a loop's body on concrete values: its inputs to its outputs.
pub(crate) type StepFn<'a> = dyn FnMut(&[Arc<Data>]) -> Result<Vec<Arc<Data>>> + 'a;

/// A loop: the body program, how its inputs divide into constants, carry and per-step
/// inputs, and how many steps run. Printed as JAX prints `scan`, with the body indented.
///
/// ```
/// use brainstate::{make_program, scan, Tensor};
/// let f = |x: &Tensor| {
///     let (last, _) = scan(|h: &Tensor, x: &Tensor| (h + x, ()), &Tensor::scalar(0.0), x).unwrap();
///     last
/// };
/// let p = make_program(f, &Tensor::from([1.0, 2.0, 3.0])).unwrap();
/// let text = p.to_string();
/// assert!(text.contains("= scan[length=3 reverse=false consts=0 carry=1"), "{text}");
/// assert!(text.contains("jaxpr={ lambda "), "{text}");
/// assert_eq!(p.len(), 1); // one equation, however many steps
/// ```
#[derive(Clone, Debug)]
pub struct Loop {
    /// `consts ++ carry ++ x -> carry ++ y`.
    pub(crate) body: Arc<Program>,
    /// How many inputs are constants.
    pub(crate) consts: usize,
    /// How many inputs (and outputs) are carried.
    pub(crate) carry: usize,
    /// The number of steps.
    pub(crate) length: usize,
    /// Whether the steps run from the last index to the first.
    pub(crate) reverse: bool,
    /// Whether reverse mode stores only the carries of each step and recomputes the rest
    /// (a checkpoint), rather than storing every value the backward pass needs.
    pub(crate) remat: bool,
    /// For each input, whether the body is linear in it (set on the loops reverse mode
    /// builds, which are transposed); empty when none is.
    pub(crate) linear: Vec<bool>,
    /// The units the body was traced with: of its inputs, then of its outputs (`None`: a
    /// loop of plain values).
    pub(crate) units: Option<LoopUnits>,
    /// Progress reporting while it runs.
    pub(crate) progress: Option<Tracker>,
    /// How many pairs of per-step outputs (the last `2 * sums` of the body) are factors
    /// `A_t` (`[k, x]`) and `B_t` (`[k, y]`) whose products `A_t^T @ B_t` are summed over the
    /// steps, one output `[x, y]` each, rather than stacked. Only the planner makes them
    /// (`exec::accumulate`): run as the steps go, the sums need no stack of their factors.
    pub(crate) sums: usize,
}

impl Loop {
    /// A loop of plain values over `body`, with no progress reporting.
    pub(crate) fn new(body: Program, consts: usize, carry: usize, length: usize) -> Loop {
        Loop {
            body: Arc::new(body),
            consts,
            carry,
            length,
            reverse: false,
            remat: false,
            linear: Vec::new(),
            units: None,
            progress: None,
            sums: 0,
        }
    }

    /// The number of per-step outputs.
    pub(crate) fn n_ys(&self) -> usize {
        self.body.outputs.len() - self.carry
    }

    /// The number of per-step outputs that are stacked (the others are factors of sums).
    pub(crate) fn n_stacked(&self) -> usize {
        self.n_ys().saturating_sub(2 * self.sums)
    }

    /// The number of the loop's outputs: carries, stacked outputs and sums.
    pub(crate) fn n_outputs(&self) -> usize {
        self.carry + self.n_stacked() + self.sums
    }

    /// Whether the body is linear in input `i`.
    pub(crate) fn is_linear(&self, i: usize) -> bool {
        self.linear.get(i).copied().unwrap_or(false)
    }

    /// The index step `t` reads and writes.
    pub(crate) fn index(&self, t: usize) -> usize {
        if self.reverse { self.length - 1 - t } else { t }
    }

    /// The loop without the outputs nobody uses (`used` flags each output), with which of its
    /// inputs it still reads and which outputs it keeps: carries whose final value is unused
    /// and that no kept value depends on are dropped, with the per-step outputs nobody reads.
    /// `None` when nothing can go (or the loop sums products, whose factors go together).
    pub(crate) fn prune(&self, used: &[bool]) -> Option<(Loop, Vec<bool>, Vec<bool>)> {
        if self.sums > 0 {
            return None;
        }
        let (nc, nh) = (self.consts, self.carry);
        let body = &*self.body;
        let n_in = body.inputs.len();
        // Carries kept: a fixed point, since a kept carry keeps what its next value reads.
        let mut keep_out: Vec<bool> = used.to_vec();
        let reads = loop {
            let reads = body_reads(body, &keep_out);
            let mut changed = false;
            for k in 0..nh {
                if reads[nc + k] && !keep_out[k] {
                    keep_out[k] = true;
                    changed = true;
                }
            }
            if !changed {
                break reads;
            }
        };
        // A carry kept is read (its initial value) even when the body never reads it.
        let keep_in: Vec<bool> = (0..n_in)
            .map(|i| {
                if (nc..nc + nh).contains(&i) {
                    keep_out[i - nc]
                } else {
                    reads[i]
                }
            })
            .collect();
        if keep_out.iter().all(|&k| k) && keep_in.iter().all(|&k| k) {
            return None;
        }
        let mut program = body.clone();
        program.outputs = body
            .outputs
            .iter()
            .zip(&keep_out)
            .filter_map(|(&v, &k)| k.then_some(v))
            .collect();
        program.inputs = body
            .inputs
            .iter()
            .zip(&keep_in)
            .filter_map(|(&v, &k)| k.then_some(v))
            .collect();
        let program = crate::ir::passes::compact(dead_code(program));
        let kept = |flags: &[bool], range: std::ops::Range<usize>| {
            flags[range].iter().filter(|&&k| k).count()
        };
        let filter = |all: &[Option<Unit>], flags: &[bool]| -> Vec<Option<Unit>> {
            all.iter()
                .zip(flags)
                .filter_map(|(&u, &k)| k.then_some(u))
                .collect()
        };
        let pruned = Loop {
            body: Arc::new(program),
            consts: kept(&keep_in, 0..nc),
            carry: kept(&keep_in, nc..nc + nh),
            length: self.length,
            reverse: self.reverse,
            remat: self.remat,
            linear: if self.linear.is_empty() {
                Vec::new()
            } else {
                self.linear
                    .iter()
                    .zip(&keep_in)
                    .filter_map(|(&l, &k)| k.then_some(l))
                    .collect()
            },
            units: self.units.as_ref().map(|u| {
                let (ins, outs) = &**u;
                Arc::new((filter(ins, &keep_in), filter(outs, &keep_out)))
            }),
            progress: self.progress.clone(),
            sums: 0,
        };
        Some((pruned, keep_in, keep_out))
    }
}

/// Which inputs of `program` the outputs flagged in `wanted` read.
fn body_reads(program: &Program, wanted: &[bool]) -> Vec<bool> {
    let mut live = vec![false; program.avals.len()];
    for (v, &w) in program.outputs.iter().zip(wanted) {
        if w {
            live[v.index()] = true;
        }
    }
    for eqn in program.eqns.iter().rev() {
        if eqn.outputs.iter().any(|v| live[v.index()]) {
            for v in &eqn.inputs {
                live[v.index()] = true;
            }
        }
    }
    program.inputs.iter().map(|v| live[v.index()]).collect()
}

impl PartialEq for Loop {
    fn eq(&self, other: &Loop) -> bool {
        Arc::ptr_eq(&self.body, &other.body)
            && self.consts == other.consts
            && self.carry == other.carry
            && self.length == other.length
            && self.reverse == other.reverse
            && self.remat == other.remat
            && self.linear == other.linear
            && self.units == other.units
            && self.progress == other.progress
            && self.sums == other.sums
    }
}

impl Eq for Loop {}

impl Hash for Loop {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.body) as usize).hash(state);
        (
            self.consts,
            self.carry,
            self.length,
            self.reverse,
            self.remat,
            self.sums,
        )
            .hash(state);
    }
}

impl fmt::Display for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scan[length={} reverse={} consts={} carry={}",
            self.length, self.reverse, self.consts, self.carry
        )?;
        if self.remat {
            write!(f, " checkpoint=true")?;
        }
        if self.sums > 0 {
            write!(f, " sums={}", self.sums)?;
        }
        if self.linear.iter().any(|&l| l) {
            let flags: Vec<&str> = self
                .linear
                .iter()
                .map(|&l| if l { "T" } else { "F" })
                .collect();
            write!(f, " linear=({})", flags.join(","))?;
        }
        let body = self.body.to_string();
        let mut lines = body.lines();
        if let Some(first) = lines.next() {
            write!(f, "\n  jaxpr={first}")?;
        }
        for line in lines {
            write!(f, "\n  {line}")?;
        }
        write!(f, "\n]")
    }
}

impl Rules for Loop {
    fn name(&self) -> &'static str {
        "scan"
    }

    fn infer(&self, ins: &[Aval]) -> Result<Vec<Aval>> {
        let body = &*self.body;
        let expected = body.input_avals();
        if ins.len() != expected.len() {
            return Err(Error::shape(
                "scan",
                format!("takes {} operands, got {}", expected.len(), ins.len()),
            ));
        }
        let first_x = self.consts + self.carry;
        for (k, (given, want)) in ins.iter().zip(&expected).enumerate() {
            let want = if k < first_x {
                want.clone()
            } else {
                Aval::new(&concat_dims(&[self.length], &want.shape), want.dtype)
            };
            if *given != want {
                let role = if k < self.consts {
                    "constant"
                } else if k < first_x {
                    "initial carry"
                } else {
                    "stacked input"
                };
                return Err(Error::shape(
                    "scan",
                    format!("operand {k} ({role}) is {given} but the body takes {want}"),
                ));
            }
        }
        let outs = body.output_avals();
        if self.n_ys() < 2 * self.sums {
            return Err(Error::shape(
                "scan",
                format!(
                    "sums {} products but has {} per-step outputs",
                    self.sums,
                    self.n_ys()
                ),
            ));
        }
        let factors = self.carry + self.n_stacked();
        let mut avals: Vec<Aval> = outs[..factors]
            .iter()
            .enumerate()
            .map(|(j, a)| {
                if j < self.carry {
                    a.clone()
                } else {
                    Aval::new(&concat_dims(&[self.length], &a.shape), a.dtype)
                }
            })
            .collect();
        for pair in outs[factors..].chunks_exact(2) {
            avals.push(summed_product(&pair[0], &pair[1])?);
        }
        Ok(avals)
    }

    fn eval(&self, ins: &[&Data]) -> Result<Vec<Data>> {
        let shared: Vec<Arc<Data>> = ins.iter().map(|&d| Arc::new(d.clone())).collect();
        let mut run = |inputs: &[Arc<Data>]| run_reference(&self.body, inputs);
        run_steps(self, &shared, &mut run)
    }

    fn jvp(
        &self,
        _x: &[Tensor],
        _t: &[Tangent],
        _outs: &[Tensor],
        _batch: &[usize],
    ) -> Result<Vec<Tangent>> {
        // The JVP of a loop is a loop over its body's JVP: forward mode builds it
        // (`autodiff::loops`), since differentiating a program is that layer's work.
        Err(Error::Trace(
            "internal: the JVP of `scan` is built by forward mode, not by its rule".into(),
        ))
    }

    fn transpose(&self, _cts: &[Tensor], _x: &[Primal], _batch: &[usize]) -> Result<Vec<Tangent>> {
        // The transpose of a linear loop is a reverse loop over its body's transpose: reverse
        // mode builds it (`autodiff::loops`).
        Err(Error::Trace(
            "internal: the transpose of `scan` is built by reverse mode, not by its rule".into(),
        ))
    }

    fn units(&self, units: &[Option<Unit>], _inputs: &[&Tensor]) -> Result<UnitRule> {
        let rule = Units::new("scan", units);
        let Some(traced) = &self.units else {
            if let Some(u) = units.iter().flatten().next() {
                return Err(Error::Units {
                    op: "scan".into(),
                    msg: format!("this loop takes plain values, got an operand in {u}"),
                });
            }
            return Ok(UnitRule {
                factors: vec![1.0; units.len()],
                outputs: vec![None; self.n_outputs()],
            });
        };
        let (ins, outs) = &**traced;
        let factors = (0..units.len())
            .map(|i| {
                let target = ins.get(i).copied().flatten().unwrap_or(Unit::ONE);
                rule.of(i).factor_to(&target, "scan")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UnitRule {
            factors,
            outputs: outs.clone(),
        })
    }

    fn dependence(&self, _ins: &[Aval]) -> Dependence {
        Dependence::Body
    }
}

/// The aval of the sum over the steps of `a^T @ b`, for factors `a` (`[k, x]`) and `b`
/// (`[k, y]`).
fn summed_product(a: &Aval, b: &Aval) -> Result<Aval> {
    match (a.shape.as_slice(), b.shape.as_slice()) {
        (&[k, x], &[l, y]) if k == l && a.dtype == b.dtype => Ok(Aval::new(&[x, y], a.dtype)),
        _ => Err(Error::shape(
            "scan",
            format!("sums products of factors [k, x] and [k, y], not of {a} and {b}"),
        )),
    }
}

/// `sum_t a_t^T @ b_t` over stacked factors `a` (`[T, k, x]`) and `b` (`[T, k, y]`): one
/// product, with the steps in its contraction.
fn sum_over_steps(a: Data, b: Data) -> Result<Data> {
    let flat = |d: Data| {
        let s = d.shape().to_vec();
        d.into_shape(&[s[0] * s[1], s[2]])
    };
    let a = flat(a).into_permuted(&[1, 0]);
    let b = flat(b);
    Ok(super::MatMul.eval(&[&a, &b])?.remove(0))
}

/// Runs the steps of `l` on its operands (`consts ++ init ++ xs`), with `step` running the
/// body once: the final carry, the stacked outputs, then the sums. Shared by the reference
/// kernel here and the planned one in `exec`.
pub(crate) fn run_steps(l: &Loop, ins: &[Arc<Data>], step: &mut StepFn<'_>) -> Result<Vec<Data>> {
    let (nc, nh) = (l.consts, l.carry);
    let xs = &ins[nc + nh..];
    let mut ys: Vec<Data> = l.body.output_avals()[nh..]
        .iter()
        .map(|a| stacked_buffer(&concat_dims(&[l.length], &a.shape), a.dtype))
        .collect();
    let mut inputs: Vec<Arc<Data>> = ins[..nc + nh].to_vec();
    inputs.extend(xs.iter().cloned());
    for t in 0..l.length {
        let i = l.index(t);
        for (k, x) in xs.iter().enumerate() {
            // The previous step's slice goes back to the pool for this one.
            let previous = std::mem::replace(&mut inputs[nc + nh + k], Arc::new(step_of(x, i)));
            if let Ok(previous) = Arc::try_unwrap(previous) {
                pool::recycle(previous);
            }
        }
        let outs = step(&inputs)?;
        for (j, y) in outs[nh..].iter().enumerate() {
            put_step(&mut ys[j], i, y)?;
        }
        for (k, carry) in outs.into_iter().take(nh).enumerate() {
            inputs[nc + k] = carry;
        }
        if let Some(tracker) = &l.progress {
            tracker.report(t + 1);
        }
    }
    let mut outputs: Vec<Data> = inputs[nc..nc + nh]
        .iter()
        .map(|d| Arc::try_unwrap(d.clone()).unwrap_or_else(|d| (*d).clone()))
        .collect();
    let mut factors = ys.split_off(l.n_stacked()).into_iter();
    outputs.extend(ys);
    while let (Some(a), Some(b)) = (factors.next(), factors.next()) {
        outputs.push(sum_over_steps(a, b)?);
    }
    Ok(outputs)
}

/// An array to stack a loop's outputs in (every element is written before it is read): for
/// `f64`, a buffer of the pool, which takes it back when the array dies.
fn stacked_buffer(shape: &[usize], dtype: DType) -> Data {
    if dtype != DType::F64 {
        return Data::zeros(shape, dtype);
    }
    let buffer = pool::take_to_overwrite(shape.iter().product());
    Data::F64(ArrayD::from_shape_vec(shape, buffer).expect("a buffer of the array's size"))
}

/// Element `i` along the first axis of `xs` (for `f64`, in a buffer of the pool).
pub(crate) fn step_of(xs: &Data, i: usize) -> Data {
    match xs {
        Data::F64(a) if a.is_standard_layout() => {
            let shape = &a.shape()[1..];
            let len: usize = shape.iter().product();
            let all = a.as_slice().expect("standard layout");
            let mut buffer = pool::take::<f64>(len);
            buffer.extend_from_slice(&all[i * len..(i + 1) * len]);
            Data::F64(ArrayD::from_shape_vec(shape, buffer).expect("one step's values"))
        }
        _ => with_array!(xs, a => Data::from(a.index_axis(Axis(0), i).to_owned())),
    }
}

/// Writes `y` as element `i` along the first axis of `ys`: one copy of a slice when both are
/// in standard layout.
pub(crate) fn put_step(ys: &mut Data, i: usize, y: &Data) -> Result<()> {
    macro_rules! put {
        ($($variant:ident),*) => {
            match (ys, y) {
                $((Data::$variant(ys), Data::$variant(y)) => {
                    let len = y.len();
                    match (ys.as_slice_mut(), y.as_slice()) {
                        (Some(all), Some(one)) => {
                            all[i * len..(i + 1) * len].copy_from_slice(one)
                        }
                        _ => ys.index_axis_mut(Axis(0), i).assign(y),
                    }
                    Ok(())
                })*
                (ys, y) => Err(Error::dtype(
                    "scan",
                    format!("stacks outputs of {} but a step gave", ys.dtype()),
                    y.dtype(),
                )),
            }
        };
    }
    put!(Bool, I64, F32, F64, C64, C128)
}

/// Runs `program` equation by equation with the primitives' reference kernels.
pub(crate) fn run_reference(program: &Program, inputs: &[Arc<Data>]) -> Result<Vec<Arc<Data>>> {
    let mut env: Vec<Option<Arc<Data>>> = vec![None; program.avals.len()];
    for (&v, data) in program.inputs.iter().zip(inputs) {
        env[v.index()] = Some(data.clone());
    }
    for (v, data) in &program.consts {
        env[v.index()] = Some(data.clone());
    }
    let defined = |env: &[Option<Arc<Data>>], v: crate::ir::Var| {
        env[v.index()]
            .clone()
            .ok_or_else(|| Error::Trace("internal: a loop body reads an undefined value".into()))
    };
    for eqn in &program.eqns {
        let ins = eqn
            .inputs
            .iter()
            .map(|&v| defined(&env, v))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Data> = ins.iter().map(|d| &**d).collect();
        for (&v, out) in eqn.outputs.iter().zip(eqn.prim.eval(&refs)?) {
            env[v.index()] = Some(Arc::new(out));
        }
    }
    program.outputs.iter().map(|&v| defined(&env, v)).collect()
}

/// How a loop reports its progress (brainstate's `pbar`): a text progress bar, the `log`
/// facade, or a callback, every so many steps.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use brainstate::{Progress, Scan, Tensor};
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// let progress = Progress::callback(move |r| sink.lock().unwrap().push(r.step)).every(2);
/// let xs = Tensor::from([1.0, 2.0, 3.0, 4.0, 5.0]);
/// Scan::new().progress(progress).for_loop(|x: &Tensor| x * 2.0, &xs).unwrap();
/// assert_eq!(*seen.lock().unwrap(), vec![2, 4, 5]); // every 2 steps, and the last
/// ```
#[derive(Clone)]
pub struct Progress(Arc<ProgressInner>);

struct ProgressInner {
    every: usize,
    desc: String,
    sink: Sink,
}

enum Sink {
    Bar,
    Log,
    Callback(Box<dyn Fn(&ProgressReport) + Send + Sync>),
}

/// One progress report of a running loop.
///
/// ```
/// use brainstate::{Progress, Scan, Tensor};
/// let progress = Progress::callback(|r| {
///     assert!(r.step <= r.length && r.pass == "scan" && r.desc == "sim");
/// })
/// .desc("sim");
/// Scan::new().progress(progress).for_loop(|x: &Tensor| x + 1.0, &Tensor::zeros(&[3])).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ProgressReport<'a> {
    /// The description given with [`Progress::desc`].
    pub desc: &'a str,
    /// Which run of the loop: `"scan"` (the loop itself), `"scan jvp"` (its forward-mode
    /// derivative) or `"scan transpose"` (its reverse pass).
    pub pass: &'a str,
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub length: usize,
}

impl Progress {
    fn with_sink(sink: Sink) -> Progress {
        Progress(Arc::new(ProgressInner {
            every: 0,
            desc: String::new(),
            sink,
        }))
    }

    /// A text progress bar on standard error, redrawn every 1% of the steps by default.
    ///
    /// ```
    /// use brainstate::{Progress, Scan, Tensor};
    /// let ys = Scan::new()
    ///     .progress(Progress::bar().desc("simulating"))
    ///     .for_loop(|x: &Tensor| x.sin(), &Tensor::zeros(&[4]))
    ///     .unwrap();
    /// assert_eq!(ys.shape().unwrap(), [4]);
    /// ```
    pub fn bar() -> Progress {
        Progress::with_sink(Sink::Bar)
    }

    /// Reports through the `log` facade, at level `info`, every 10% of the steps by default.
    ///
    /// ```
    /// use brainstate::{Progress, Scan, Tensor};
    /// Scan::new().progress(Progress::log()).for_loop(|x: &Tensor| x * 2.0, &Tensor::zeros(&[3])).unwrap();
    /// ```
    pub fn log() -> Progress {
        Progress::with_sink(Sink::Log)
    }

    /// Calls `f` with a [`ProgressReport`] every step by default (see [`Progress::every`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use brainstate::{Progress, Scan, Tensor};
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let c = calls.clone();
    /// let p = Progress::callback(move |_| { c.fetch_add(1, Ordering::Relaxed); });
    /// Scan::new().progress(p).for_loop(|x: &Tensor| x * 2.0, &Tensor::zeros(&[3])).unwrap();
    /// assert_eq!(calls.load(Ordering::Relaxed), 3);
    /// ```
    pub fn callback(f: impl Fn(&ProgressReport) + Send + Sync + 'static) -> Progress {
        Progress::with_sink(Sink::Callback(Box::new(f)))
    }

    fn rebuild(self, every: Option<usize>, desc: Option<&str>) -> Progress {
        let inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| ProgressInner {
            every: shared.every,
            desc: shared.desc.clone(),
            sink: match &shared.sink {
                Sink::Bar => Sink::Bar,
                Sink::Log => Sink::Log,
                // A shared callback cannot be cloned; reports go through the shared one.
                Sink::Callback(_) => Sink::Callback(Box::new(forward(shared.clone()))),
            },
        });
        Progress(Arc::new(ProgressInner {
            every: every.unwrap_or(inner.every),
            desc: desc.map_or(inner.desc, str::to_string),
            sink: inner.sink,
        }))
    }

    /// Reports every `n` steps (and after the last).
    ///
    /// ```
    /// use brainstate::Progress;
    /// let p = Progress::log().every(100);
    /// # let _ = p;
    /// ```
    pub fn every(self, n: usize) -> Progress {
        self.rebuild(Some(n.max(1)), None)
    }

    /// A description shown with the reports.
    ///
    /// ```
    /// use brainstate::Progress;
    /// let p = Progress::bar().desc("running the network");
    /// # let _ = p;
    /// ```
    pub fn desc(self, desc: &str) -> Progress {
        self.rebuild(None, Some(desc))
    }
}

/// A callback that hands reports on to a shared one.
fn forward(shared: Arc<ProgressInner>) -> impl Fn(&ProgressReport) + Send + Sync {
    move |report| {
        if let Sink::Callback(f) = &shared.sink {
            f(report)
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sink = match self.0.sink {
            Sink::Bar => "bar",
            Sink::Log => "log",
            Sink::Callback(_) => "callback",
        };
        write!(f, "Progress({sink}, every {})", self.0.every)
    }
}

/// A loop's progress reporting: where its steps fall among the steps the user asked for (a
/// checkpointed loop's outer loop counts segments of `stride` steps, after `offset` steps of
/// loops before it), and which run of it this is.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    pub progress: Progress,
    pub pass: &'static str,
    pub stride: usize,
    pub offset: usize,
    pub total: usize,
}

impl PartialEq for Tracker {
    fn eq(&self, other: &Tracker) -> bool {
        Arc::ptr_eq(&self.progress.0, &other.progress.0)
            && (self.pass, self.stride, self.offset, self.total)
                == (other.pass, other.stride, other.offset, other.total)
    }
}

impl Tracker {
    pub(crate) fn new(progress: Progress, stride: usize, offset: usize, total: usize) -> Tracker {
        Tracker {
            progress,
            pass: "scan",
            stride,
            offset,
            total,
        }
    }

    /// The same reporting for another run of the loop (its JVP or its transpose).
    pub(crate) fn for_pass(&self, pass: &'static str) -> Tracker {
        Tracker {
            pass,
            ..self.clone()
        }
    }

    /// Reports that `done` of the loop's iterations have run, when that crosses a multiple
    /// of the reporting interval or finishes every step.
    pub(crate) fn report(&self, done: usize) {
        let inner = &*self.progress.0;
        let at = |n: usize| (self.offset + n * self.stride).min(self.total);
        let (step, before) = (at(done), at(done.saturating_sub(1)));
        let every = match (inner.every, &inner.sink) {
            (0, Sink::Bar) => (self.total / 100).max(1),
            (0, Sink::Log) => (self.total / 10).max(1),
            (0, Sink::Callback(_)) => 1,
            (n, _) => n,
        };
        let finished = step == self.total && before < step;
        if step / every == before / every && !finished {
            return;
        }
        let report = ProgressReport {
            desc: &inner.desc,
            pass: self.pass,
            step,
            length: self.total,
        };
        match &inner.sink {
            Sink::Callback(f) => f(&report),
            Sink::Log => log::info!(
                "{}{}{} {step}/{} steps",
                inner.desc,
                if inner.desc.is_empty() { "" } else { ": " },
                report.pass,
                self.total
            ),
            Sink::Bar => draw_bar(&report, finished),
        }
    }
}

/// Draws a text progress bar on standard error.
fn draw_bar(report: &ProgressReport, finished: bool) {
    use std::io::Write;
    const WIDTH: usize = 30;
    let filled = (report.step * WIDTH) / report.length.max(1);
    let bar: String = (0..WIDTH)
        .map(|k| if k < filled { '#' } else { '.' })
        .collect();
    let mut err = std::io::stderr().lock();
    let label = if report.desc.is_empty() {
        report.pass.to_string()
    } else {
        format!("{} ({})", report.desc, report.pass)
    };
    let _ = write!(err, "\r{label} [{bar}] {}/{}", report.step, report.length);
    if finished {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}
