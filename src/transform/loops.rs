//! Loops: [`scan`], [`for_loop`] and checkpointed loops, as brainstate's
//! `brainstate.transform.scan`, `for_loop` and `checkpointed_for_loop`.
//!
//! The body is traced once into a program and the loop becomes one equation holding it (see
//! [`Loop`]), so a thousand steps cost one equation to trace, differentiate and plan, and
//! every transform works through it: `grad`, `jacrev`, `jacfwd`, `hessian`, `hvp`, sparse
//! Hessians and units. Outside a traced function the loop runs at once, its body planned
//! once.
//!
//! States work as everywhere else: the states the body reads are read once, before the loop
//! (their values are the same at every step), and the states it writes are carried from step
//! to step and assigned after the loop, only if the whole call succeeds. Tensors the body
//! captures from an enclosing traced function are passed in as constants.
//!
//! | brainstate | Rust |
//! |---|---|
//! | `scan(f, init, xs)` | `scan(f, &init, &xs)?` |
//! | `scan(f, init, None, length=n)` | `Scan::new().length(n).scan(f, &init, &())?` |
//! | `scan(..., reverse=True)` | `Scan::new().reverse(true).scan(...)` |
//! | `for_loop(f, xs)` | `for_loop(f, &xs)?` |
//! | `checkpointed_for_loop(f, xs, base=16)` | `checkpointed_for_loop(f, &xs, 16)?` |
//! | `pbar=ProgressBar()` | `Scan::new().progress(Progress::bar())` |
//!
//! ```
//! use brainstate::{grad, scan, ParamState, Tensor};
//! let w = ParamState::new(Tensor::scalar(0.5));
//! // h_{t+1} = w h_t + x_t, summed over the steps
//! let f = |xs: &Tensor| {
//!     let step = |h: &Tensor, x: &Tensor| (&(w.value() * h) + x, h.clone());
//!     let (last, hs) = scan(step, &Tensor::scalar(1.0), xs).unwrap();
//!     last + hs.sum()
//! };
//! let xs = Tensor::from([1.0, 2.0, 3.0]);
//! assert_eq!(f(&xs).item().unwrap(), 4.375 + 1.0 + 1.5 + 2.75); // eagerly
//! let g = grad(f).grad_states(&w).call(&xs).unwrap(); // d/dw through the loop
//! assert!((g.tensor().unwrap().item().unwrap() - 6.75).abs() < 1e-12);
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::exec::run_loop;
use crate::ir::Var;
use crate::ir::passes::clean;
use crate::primitives::loops::{LoopUnits, Tracker};
use crate::primitives::{Loop, Prim, Program, Progress};
use crate::state;
use crate::storage::{Aval, Data};
use crate::tensor::{Tensor, concatenate};
use crate::trace::{self, TracedState, Tracing};
use crate::tree::{Tree, TreeDef};
use crate::unit::Unit;

/// The options of a loop, as brainstate's keyword arguments: the number of steps when there
/// are no per-step inputs, the direction, checkpointing and progress reporting. Build one,
/// then run [`Scan::scan`] or [`Scan::for_loop`] with it.
///
/// ```
/// use brainstate::{Scan, Tensor};
/// // Without per-step inputs, `length` says how many steps run.
/// let (n, _) = Scan::new()
///     .length(4)
///     .scan(|c: &Tensor, _: &()| (c + 1.0, ()), &Tensor::scalar(0.0), &())
///     .unwrap();
/// assert_eq!(n.item().unwrap(), 4.0);
/// // `reverse` runs from the last index to the first; outputs keep their index.
/// let xs = Tensor::from([1.0, 2.0, 3.0]);
/// let (_, partial) = Scan::new()
///     .reverse(true)
///     .scan(|s: &Tensor, x: &Tensor| (s + x, s + x), &Tensor::scalar(0.0), &xs)
///     .unwrap();
/// assert_eq!(partial.to_vec::<f64>().unwrap(), vec![6.0, 5.0, 3.0]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Scan {
    length: Option<usize>,
    reverse: bool,
    checkpoint: Option<usize>,
    progress: Option<Progress>,
}

impl Scan {
    /// Default options: as many steps as the per-step inputs have, first to last, every step's
    /// residuals stored for reverse mode, no progress reports.
    ///
    /// ```
    /// use brainstate::{Scan, Tensor};
    /// let ys = Scan::new().for_loop(|x: &Tensor| x * 2.0, &Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!(ys.to_vec::<f64>().unwrap(), vec![2.0, 4.0]);
    /// ```
    pub fn new() -> Scan {
        Scan::default()
    }

    /// The number of steps: required when there are no per-step inputs (`&()`), and checked
    /// against their leading axis otherwise.
    ///
    /// ```
    /// use brainstate::{Scan, Tensor};
    /// let ys = Scan::new().length(3).for_loop(|_: &()| Tensor::scalar(1.0), &()).unwrap();
    /// assert_eq!(ys.shape().unwrap(), [3]);
    /// ```
    pub fn length(mut self, length: usize) -> Scan {
        self.length = Some(length);
        self
    }

    /// Whether the steps run from the last index to the first (per-step outputs keep the
    /// index of their inputs).
    ///
    /// ```
    /// use brainstate::{Scan, Tensor};
    /// let xs = Tensor::from([1.0, 2.0]);
    /// let (last, _) = Scan::new()
    ///     .reverse(true)
    ///     .scan(|c: &Tensor, x: &Tensor| (c * 10.0 + x, ()), &Tensor::scalar(0.0), &xs)
    ///     .unwrap();
    /// assert_eq!(last.item().unwrap(), 21.0);
    /// ```
    pub fn reverse(mut self, reverse: bool) -> Scan {
        self.reverse = reverse;
        self
    }

    /// Checkpointing, as brainstate's `checkpointed_for_loop`: the steps are split into at
    /// most `base` segments, each split again the same way, down to loops of at most `base`
    /// steps. Reverse mode then stores only the carries at the start of the segments of each
    /// level (about `base` per level, `log_base(length)` levels) and recomputes a segment's
    /// steps when it needs them: memory grows with the logarithm of the number of steps, at the
    /// price of one more forward computation per level. Values are unchanged.
    ///
    /// ```
    /// use brainstate::{grad, Scan, Tensor};
    /// let f = |x: &Tensor| {
    ///     let step = |h: &Tensor, _: &()| (h * x.cos() + 0.1, ());
    ///     let plain = Scan::new().length(100);
    ///     let (h1, _) = plain.scan(step, &Tensor::scalar(1.0), &()).unwrap();
    ///     let (h2, _) = plain.checkpointed(4).scan(step, &Tensor::scalar(1.0), &()).unwrap();
    ///     (h1, h2)
    /// };
    /// let g1 = grad(|x: &Tensor| f(x).0).call(&Tensor::scalar(0.3)).unwrap();
    /// let g2 = grad(|x: &Tensor| f(x).1).call(&Tensor::scalar(0.3)).unwrap();
    /// let (a, b) = (g1.tensor().unwrap().item().unwrap(), g2.tensor().unwrap().item().unwrap());
    /// assert!((a - b).abs() < 1e-12);
    /// ```
    pub fn checkpointed(mut self, base: usize) -> Scan {
        self.checkpoint = Some(base.max(2));
        self
    }

    /// Progress reports while the loop runs (see [`Progress`]).
    ///
    /// ```
    /// use brainstate::{Progress, Scan, Tensor};
    /// let p = Scan::new().progress(Progress::log().every(100));
    /// let ys = p.for_loop(|x: &Tensor| x + 1.0, &Tensor::zeros(&[1000])).unwrap();
    /// assert_eq!(ys.sum().item().unwrap(), 1000.0);
    /// ```
    pub fn progress(mut self, progress: Progress) -> Scan {
        self.progress = Some(progress);
        self
    }

    /// Runs `body(carry, x) -> (carry, y)` over the steps: the final carry and the per-step
    /// outputs stacked along a new first axis. The carry must keep its structure, shapes,
    /// dtypes and units from step to step; each leaf of `xs` is sliced along its first axis.
    ///
    /// ```
    /// use brainstate::{Scan, Tensor};
    /// let xs = Tensor::from([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]);
    /// let step = |sum: &Tensor, row: &Tensor| (sum + row, row.sum());
    /// let (sum, totals) = Scan::new().scan(step, &Tensor::zeros(&[2]), &xs).unwrap();
    /// assert_eq!(sum.to_vec::<f64>().unwrap(), vec![9.0, 12.0]);
    /// assert_eq!(totals.to_vec::<f64>().unwrap(), vec![3.0, 7.0, 11.0]);
    /// ```
    #[track_caller]
    pub fn scan<C, X, Y, F>(&self, body: F, init: &C, xs: &X) -> Result<(C, Y)>
    where
        C: Tree,
        X: Tree,
        Y: Tree,
        F: Fn(&C, &X) -> (C, Y),
    {
        self.run("scan", &body, init, xs)
            .map_err(trace::record_error)
    }

    /// Runs `body(x) -> y` over the steps: the per-step outputs stacked along a new first
    /// axis. States the body writes are carried from step to step.
    ///
    /// ```
    /// use brainstate::{Scan, State, Tensor};
    /// let v = State::new(Tensor::scalar(0.0));
    /// let trace = Scan::new()
    ///     .for_loop(|x: &Tensor| {
    ///         v.set_value(v.value() * 0.5 + x).unwrap();
    ///         v.value()
    ///     }, &Tensor::from([1.0, 1.0, 1.0]))
    ///     .unwrap();
    /// assert_eq!(trace.to_vec::<f64>().unwrap(), vec![1.0, 1.5, 1.75]);
    /// assert_eq!(v.value().item().unwrap(), 1.75);
    /// ```
    #[track_caller]
    pub fn for_loop<X, Y, F>(&self, body: F, xs: &X) -> Result<Y>
    where
        X: Tree,
        Y: Tree,
        F: Fn(&X) -> Y,
    {
        let step = |_: &(), x: &X| ((), body(x));
        self.run("for_loop", &step, &(), xs)
            .map(|((), ys)| ys)
            .map_err(trace::record_error)
    }
}

/// `body(carry, x) -> (carry, y)` over the steps of `xs`: the final carry and the stacked
/// per-step outputs (brainstate's `scan`; for options, see [`Scan`]).
///
/// ```
/// use brainstate::{scan, Tensor};
/// let xs = Tensor::from([1.0, 2.0, 3.0, 4.0]);
/// let (total, running) = scan(|s: &Tensor, x: &Tensor| (s + x, s + x), &Tensor::scalar(0.0), &xs).unwrap();
/// assert_eq!(total.item().unwrap(), 10.0);
/// assert_eq!(running.to_vec::<f64>().unwrap(), vec![1.0, 3.0, 6.0, 10.0]);
/// ```
#[track_caller]
pub fn scan<C, X, Y, F>(body: F, init: &C, xs: &X) -> Result<(C, Y)>
where
    C: Tree,
    X: Tree,
    Y: Tree,
    F: Fn(&C, &X) -> (C, Y),
{
    Scan::new().scan(body, init, xs)
}

/// `body(x) -> y` over the steps of `xs`: the stacked per-step outputs (brainstate's
/// `for_loop`; for options, see [`Scan`]).
///
/// ```
/// use brainstate::{for_loop, Tensor};
/// let squares = for_loop(|x: &Tensor| x * x, &Tensor::from([1.0, 2.0, 3.0])).unwrap();
/// assert_eq!(squares.to_vec::<f64>().unwrap(), vec![1.0, 4.0, 9.0]);
/// ```
#[track_caller]
pub fn for_loop<X, Y, F>(body: F, xs: &X) -> Result<Y>
where
    X: Tree,
    Y: Tree,
    F: Fn(&X) -> Y,
{
    Scan::new().for_loop(body, xs)
}

/// [`for_loop`] checkpointed with `base` (brainstate's `checkpointed_for_loop`): reverse mode
/// keeps about `base * log_base(length)` carries instead of every step's values (see
/// [`Scan::checkpointed`]).
///
/// ```
/// use brainstate::{checkpointed_for_loop, Tensor};
/// let ys = checkpointed_for_loop(|x: &Tensor| x.exp(), &Tensor::zeros(&[100]), 8).unwrap();
/// assert_eq!(ys.sum().item().unwrap(), 100.0);
/// ```
#[track_caller]
pub fn checkpointed_for_loop<X, Y, F>(body: F, xs: &X, base: usize) -> Result<Y>
where
    X: Tree,
    Y: Tree,
    F: Fn(&X) -> Y,
{
    Scan::new().checkpointed(base).for_loop(body, xs)
}

/// The body of a loop, traced: its program over `consts ++ carry ++ x`, and what the loop
/// passes for each input and does with each output.
struct Body {
    program: Program,
    /// Values of the constants in the enclosing context: captured tensors, then the states
    /// read and not written.
    consts: Vec<Tensor>,
    /// The states written, carried after the user's carry: each with its leaf count.
    carried: Vec<(Arc<dyn TracedState>, usize)>,
    /// Units of the body's inputs, then outputs (`None` when all are plain).
    units: Option<LoopUnits>,
    /// The structure of the per-step outputs.
    y_def: TreeDef,
}

/// The shape, dtype and unit of each leaf, or the first leaf's error.
fn leaf_avals(leaves: &[Tensor]) -> Result<Vec<Aval>> {
    leaves.iter().map(Tensor::aval).collect()
}

impl Scan {
    fn run<C: Tree, X: Tree, Y: Tree>(
        &self,
        name: &'static str,
        body: &dyn Fn(&C, &X) -> (C, Y),
        init: &C,
        xs: &X,
    ) -> Result<(C, Y)> {
        let (mut init_leaves, mut x_leaves) = (Vec::new(), Vec::new());
        init.flatten(&mut init_leaves);
        xs.flatten(&mut x_leaves);
        let init_avals = leaf_avals(&init_leaves)?;
        let x_avals = leaf_avals(&x_leaves)?;
        let length = self.steps(name, &x_avals)?;
        let traced = trace_body(
            name,
            body,
            init,
            &init_leaves,
            &init_avals,
            xs,
            &x_leaves,
            &x_avals,
        )?;

        // The operands: constants, the carry (the user's, then the written states'), the
        // per-step inputs.
        let n_consts = traced.consts.len();
        let mut operands = traced.consts.clone();
        operands.extend(init_leaves.iter().cloned());
        for (state, _) in &traced.carried {
            operands.extend(trace::read_state(state).unwrap_or_else(|| state.leaves()));
        }
        let n_carry = operands.len() - n_consts;
        operands.extend(x_leaves.iter().cloned());
        let outputs = self.emit(&traced, n_consts, n_carry, &operands, length)?;
        for out in &outputs {
            out.aval()?;
        }

        // Split the outputs: the user's carry, the states' new values, the per-step outputs.
        let mut outputs = outputs.into_iter();
        let carry = C::unflatten(&init.def(), &mut outputs.by_ref().take(init_leaves.len()))?;
        let mut writes = Vec::new();
        for (state, n) in &traced.carried {
            let leaves: Vec<Tensor> = outputs.by_ref().take(*n).collect();
            state.check(&leaves)?;
            writes.push((state.clone(), leaves));
        }
        let ys = Y::unflatten(&traced.y_def, &mut outputs)?;
        state::commit(writes);
        Ok((carry, ys))
    }

    /// The number of steps: the per-step inputs' common leading length, or `length`.
    fn steps(&self, name: &str, x_avals: &[Aval]) -> Result<usize> {
        let mut found: Option<(usize, usize)> = None;
        for (k, aval) in x_avals.iter().enumerate() {
            let Some(&n) = aval.shape.first() else {
                return Err(Error::shape(
                    name,
                    format!(
                        "xs leaf {k} is {aval}, a scalar: each per-step input needs a leading \
                         axis of steps"
                    ),
                ));
            };
            match found {
                Some((first, m)) if m != n => {
                    return Err(Error::shape(
                        name,
                        format!(
                            "xs leaves have mismatched leading lengths: leaf {first} has {m} \
                             steps, leaf {k} has {n} ({})",
                            aval
                        ),
                    ));
                }
                Some(_) => {}
                None => found = Some((k, n)),
            }
        }
        match (found, self.length) {
            (Some((_, n)), Some(length)) if n != length => Err(Error::shape(
                name,
                format!("length is {length} but the xs have {n} steps"),
            )),
            (Some((_, n)), _) => Ok(n),
            (None, Some(length)) => Ok(length),
            (None, None) => Err(Error::shape(
                name,
                "there are no xs to take the number of steps from: give a length \
                 (Scan::new().length(n))",
            )),
        }
    }

    /// The loop equations over `operands` (`consts ++ carry ++ xs`), recorded or run: the
    /// final carry, then the stacked outputs, with their units.
    fn emit(
        &self,
        traced: &Body,
        n_consts: usize,
        n_carry: usize,
        operands: &[Tensor],
        length: usize,
    ) -> Result<Vec<Tensor>> {
        let tracker = |stride: usize, offset: usize| {
            self.progress
                .clone()
                .map(|p| Tracker::new(p, stride, offset, length))
        };
        let mut the_loop = Loop::new(traced.program.clone(), n_consts, n_carry, length);
        the_loop.reverse = self.reverse;
        the_loop.units = traced.units.clone();
        the_loop.progress = tracker(1, 0);
        if !operands.iter().any(Tensor::is_traced) {
            return run_eagerly(&the_loop, operands);
        }
        match self.checkpoint {
            Some(base) if length > base => {
                let shape = Shape {
                    consts: n_consts,
                    carry: n_carry,
                    base,
                    reverse: self.reverse,
                };
                let body = Arc::new(traced.program.clone());
                checkpointed(&shape, &body, operands, length, &traced.units, &tracker, 0)
            }
            _ => Ok(apply(the_loop, operands)),
        }
    }
}

/// Records a loop equation in the innermost trace.
fn apply(the_loop: Loop, operands: &[Tensor]) -> Vec<Tensor> {
    let n = the_loop.body.outputs.len();
    let refs: Vec<&Tensor> = operands.iter().collect();
    Tensor::apply_all(Prim::Loop(the_loop), &refs, n)
}

/// Runs a loop on concrete operands, its body planned once.
fn run_eagerly(the_loop: &Loop, operands: &[Tensor]) -> Result<Vec<Tensor>> {
    let units = the_loop.units.clone();
    let (in_units, out_units) = match units.as_deref() {
        Some((ins, outs)) => (ins.clone(), outs.clone()),
        None => (Vec::new(), vec![None; the_loop.body.outputs.len()]),
    };
    let data = operands
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // The body's values are counted in the units it was traced with.
            let unit = in_units.get(i).copied().flatten().unwrap_or(Unit::ONE);
            let t = match t.unit() {
                Some(_) => t.value_in(unit)?,
                None => t.clone(),
            };
            t.data().cloned()
        })
        .collect::<Result<Vec<Arc<Data>>>>()?;
    Ok(run_loop(the_loop, &data)?
        .into_iter()
        .zip(out_units)
        .map(|(d, u)| Tensor::from_data(d).with_unit(u))
        .collect())
}

/// What a checkpointed loop's levels share.
struct Shape {
    consts: usize,
    carry: usize,
    base: usize,
    reverse: bool,
}

/// A checkpointed loop of `length` steps of `body` over `operands`: at most `base` segments
/// of `ceil(length / base)` steps run by an outer loop that reverse mode recomputes from its
/// carries (`remat`), each segment checkpointed again, and the remaining steps after them
/// (before them, in reverse). Returns the final carry and the stacked outputs.
fn checkpointed(
    shape: &Shape,
    body: &Arc<Program>,
    operands: &[Tensor],
    length: usize,
    units: &Option<LoopUnits>,
    tracker: &dyn Fn(usize, usize) -> Option<Tracker>,
    offset: usize,
) -> Result<Vec<Tensor>> {
    let (nc, nh, base) = (shape.consts, shape.carry, shape.base);
    let plain = |length: usize, operands: &[Tensor], offset: usize| {
        let mut the_loop = Loop::new((**body).clone(), nc, nh, length);
        the_loop.body = body.clone();
        the_loop.reverse = shape.reverse;
        the_loop.units = units.clone();
        the_loop.progress = tracker(1, offset);
        apply(the_loop, operands)
    };
    if length <= base {
        return Ok(plain(length, operands, offset));
    }
    let segment = length.div_ceil(base);
    let segments = length / segment;
    let rest = length - segments * segment;
    let xs = &operands[nc + nh..];
    // The steps of the segments, and the others: forward, these come last; in reverse, first.
    let (main, other) = if shape.reverse {
        (rest..length, 0..rest)
    } else {
        (0..segments * segment, segments * segment..length)
    };
    let take = |t: &Tensor, range: &std::ops::Range<usize>| {
        t.slice_along(0, range.start as isize..range.end as isize, 1)
    };

    // One segment: a loop over its `segment` steps, itself checkpointed.
    let tracing = Tracing::new();
    let avals = body.input_avals();
    let mut inputs: Vec<Tensor> = avals[..nc + nh].iter().map(|a| tracing.input(a)).collect();
    for a in &avals[nc + nh..] {
        let mut stacked = vec![segment];
        stacked.extend(&a.shape);
        inputs.push(tracing.input(&Aval::new(&stacked, a.dtype)));
    }
    let no_tracker = |_: usize, _: usize| None;
    let inner = checkpointed(shape, body, &inputs, segment, &None, &no_tracker, 0)?;
    let segment_body = clean(tracing.finish(&inner)?);

    let mut outer_operands: Vec<Tensor> = operands[..nc + nh].to_vec();
    for x in xs {
        let part = take(x, &main);
        let dims = part.shape()?.to_vec();
        let mut grouped = vec![segments as isize, segment as isize];
        grouped.extend(dims[1..].iter().map(|&d| d as isize));
        outer_operands.push(part.reshape(&grouped));
    }
    let mut outer = Loop::new(segment_body, nc, nh, segments);
    outer.reverse = shape.reverse;
    outer.remat = true;
    outer.units = units.as_ref().map(|u| {
        let (ins, outs) = &**u;
        Arc::new((ins.clone(), outs.clone()))
    });
    let main_offset = if shape.reverse { offset + rest } else { offset };
    outer.progress = tracker(segment, main_offset);
    let mut outs = apply(outer, &outer_operands);
    let carry: Vec<Tensor> = outs.drain(..nh).collect();
    let ys: Vec<Tensor> = outs
        .iter()
        .map(|y| {
            Tensor::attempt(|| {
                let dims = y.shape()?.to_vec();
                let mut flat = vec![(segments * segment) as isize];
                flat.extend(dims[2..].iter().map(|&d| d as isize));
                Ok(y.reshape(&flat))
            })
        })
        .collect();
    if other.is_empty() {
        return Ok(carry.into_iter().chain(ys).collect());
    }
    let mut rest_operands: Vec<Tensor> = operands[..nc].to_vec();
    rest_operands.extend(carry);
    rest_operands.extend(xs.iter().map(|x| take(x, &other)));
    let other_offset = if shape.reverse {
        offset
    } else {
        offset + segments * segment
    };
    let tail = checkpointed(
        shape,
        body,
        &rest_operands,
        rest,
        units,
        tracker,
        other_offset,
    )?;
    let mut result: Vec<Tensor> = tail[..nh].to_vec();
    for (main_y, other_y) in ys.iter().zip(&tail[nh..]) {
        let parts = if shape.reverse {
            [other_y.clone(), main_y.clone()]
        } else {
            [main_y.clone(), other_y.clone()]
        };
        result.push(concatenate(&parts, 0));
    }
    Ok(result)
}

/// Traces `body` once on inputs standing for one step's carry and per-step inputs.
#[allow(clippy::too_many_arguments)]
fn trace_body<C: Tree, X: Tree, Y: Tree>(
    name: &str,
    body: &dyn Fn(&C, &X) -> (C, Y),
    init: &C,
    init_leaves: &[Tensor],
    init_avals: &[Aval],
    xs: &X,
    x_leaves: &[Tensor],
    x_avals: &[Aval],
) -> Result<Body> {
    let tracing = Tracing::body();
    let carry_in: Vec<Tensor> = init_avals
        .iter()
        .zip(init_leaves)
        .map(|(a, t)| tracing.input(a).with_unit(t.unit()))
        .collect();
    let x_in: Vec<Tensor> = x_avals
        .iter()
        .zip(x_leaves)
        .map(|(a, t)| {
            tracing
                .input(&Aval::new(&a.shape[1..], a.dtype))
                .with_unit(t.unit())
        })
        .collect();
    let carry = C::unflatten(&init.def(), &mut carry_in.clone().into_iter())?;
    let x = X::unflatten(&xs.def(), &mut x_in.clone().into_iter())?;
    let (new_carry, y) =
        catch_unwind(AssertUnwindSafe(|| body(&carry, &x))).map_err(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            Error::Panic(format!("{name} body: {msg}"))
        })?;
    if let Some(state) = tracing.new_state() {
        return Err(Error::Trace(format!(
            "{name}: {state} was created inside the loop body, where it would not outlive its \
             step; create the state before the loop and read or write it in the body"
        )));
    }

    // The carry keeps its structure, shapes, dtypes and units; a new unit of the same
    // dimension is converted back.
    if new_carry.def() != init.def() {
        return Err(Error::Structure(format!(
            "{name}: the body returns a carry of another structure than the initial carry"
        )));
    }
    let mut carry_out = Vec::new();
    new_carry.flatten(&mut carry_out);
    let mut outputs = Vec::new();
    for (k, (out, (aval, first))) in carry_out
        .iter()
        .zip(init_avals.iter().zip(init_leaves))
        .enumerate()
    {
        let got = out.aval()?;
        if got.shape != aval.shape {
            return Err(Error::shape(
                name,
                format!(
                    "the carry changes from {aval} to {got} in one step (carry leaf {k}); a \
                     loop's carry keeps its shape and dtype"
                ),
            ));
        }
        if got.dtype != aval.dtype {
            return Err(Error::dtype(
                name,
                format!(
                    "the carry changes from {aval} to {got} in one step (carry leaf {k}); a \
                     loop's carry keeps its dtype"
                ),
                got.dtype,
            ));
        }
        outputs.push(same_unit(
            name,
            out,
            first.unit(),
            &format!("carry leaf {k}"),
        )?);
    }

    // States: those read and not written are constants; those written are carried.
    let slots = tracing.states();
    let mut read_only = Vec::new();
    let mut carried = Vec::new();
    let mut carried_inputs = Vec::new();
    for slot in &slots {
        match (&slot.read, &slot.written) {
            (Some(read), None) => read_only.push((slot.state.clone(), read.clone())),
            (read, Some(written)) => {
                let inputs = match read {
                    Some(read) => read.clone(),
                    None => {
                        let current = slot.state.leaves();
                        current
                            .iter()
                            .map(|t| Ok(tracing.input(&t.aval()?).with_unit(t.unit())))
                            .collect::<Result<Vec<_>>>()?
                    }
                };
                for (k, (w, i)) in written.iter().zip(&inputs).enumerate() {
                    let what = format!("leaf {k} of {}", slot.state.describe());
                    outputs.push(same_unit(name, w, i.unit(), &what)?);
                }
                carried.push((slot.state.clone(), written.len()));
                carried_inputs.extend(inputs);
            }
            (None, None) => {}
        }
    }
    let mut y_leaves = Vec::new();
    y.flatten(&mut y_leaves);
    outputs.extend(y_leaves.iter().cloned());
    let out_units: Vec<Option<Unit>> = outputs.iter().map(Tensor::unit).collect();

    // Inputs in the loop's order: captured tensors, read states, carry, per-step inputs.
    let out_vars = outputs
        .iter()
        .map(|t| tracing.var_of(t))
        .collect::<Result<Vec<Var>>>()?;
    let captures = tracing.captures();
    let read_leaves: Vec<Tensor> = read_only.iter().flat_map(|(_, r)| r.clone()).collect();
    let ordered: Vec<&Tensor> = read_leaves
        .iter()
        .chain(&carry_in)
        .chain(&carried_inputs)
        .chain(&x_in)
        .collect();
    let mut inputs: Vec<Var> = captures.iter().map(|(_, v)| *v).collect();
    for t in &ordered {
        inputs.push(tracing.var_of(t)?);
    }
    let in_units: Vec<Option<Unit>> = captures
        .iter()
        .map(|_| None)
        .chain(ordered.iter().map(|t| t.unit()))
        .collect();
    let mut program = tracing.finish(&outputs)?;
    let mut sorted_inputs = inputs.clone();
    sorted_inputs.sort();
    let mut recorded = program.inputs.clone();
    recorded.sort();
    if sorted_inputs != recorded {
        return Err(Error::Trace(format!(
            "internal: {name} traced a body whose inputs it cannot place"
        )));
    }
    program.inputs = inputs;
    program.outputs = out_vars;
    let program = clean(program);

    // Values of the constants, read in the enclosing context now that the body is closed.
    let mut consts: Vec<Tensor> = captures.into_iter().map(|(t, _)| t).collect();
    for (state, _) in &read_only {
        consts.extend(trace::read_state(state).unwrap_or_else(|| state.leaves()));
    }
    let units = (in_units.iter().chain(&out_units).any(Option::is_some))
        .then(|| Arc::new((in_units, out_units)));
    Ok(Body {
        program,
        consts,
        carried,
        units,
        y_def: y.def(),
    })
}

/// `t` counted in `unit` (the unit it had when the step began), or an error naming `what`.
fn same_unit(name: &str, t: &Tensor, unit: Option<Unit>, what: &str) -> Result<Tensor> {
    t.aval()?;
    if t.unit() == unit {
        return Ok(t.clone());
    }
    let target = unit.unwrap_or(Unit::ONE);
    let got = t.unit().unwrap_or(Unit::ONE);
    match t.value_in(target) {
        Ok(values) => Ok(values.with_unit(unit)),
        Err(_) => Err(Error::Units {
            op: name.to_string(),
            msg: format!(
                "the loop's {what} changes unit from {target} to {got} in one step; a carried \
                 value keeps its dimension"
            ),
        }),
    }
}
