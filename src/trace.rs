//! Tracing: running user code on symbolic tensors to record a [`Program`].
//!
//! The only ambient state of the library lives here: a thread-local stack of trace frames.
//! A [`Frame`] is opened by a scoped guard and closed when the guard is finished or dropped,
//! so nothing leaks between threads, and a transform running inside another transform's trace
//! opens its own frame. Every operation goes through [`apply`]: with no traced input it
//! computes at once; otherwise it infers the result's shape and dtype and appends an equation
//! to the innermost frame.
//!
//! States are known here only through [`TracedState`]: reading one inside a trace registers it
//! as a program input, writing one records the new value; the transform decides what to do with
//! them when the trace ends.
//!
//! Tracing is per thread, so what other threads do while a user function is traced is watched
//! (see [`Tracing::watch`]): a traced tensor used or written to a state on another thread fails
//! the trace, states read on other threads are reported to the transform (their values may be
//! constants of the program), and states created with traced values lose them when the trace
//! ends, so that no state ever holds a traced tensor after a call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::error::{Error, Result};
use crate::ir::Var;
use crate::primitives::{BinaryOp, Eqn, Prim, Program};
use crate::storage::{Aval, Data};
use crate::tensor::{Repr, Tensor, Tracer};
use crate::unit::Unit;

static NEXT_FRAME: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// The traces of user functions open now, on any thread: what other threads need of them.
static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());
/// How many there are, read without the lock on every untraced state read.
static WATCHED_COUNT: AtomicUsize = AtomicUsize::new(0);

/// What other threads record about an open trace of a user function.
struct Watched {
    frame: u64,
    /// The first error raised on another thread with one of its traced tensors.
    error: Option<Error>,
    /// States read on threads that were not tracing while it was open, with their versions
    /// when first read.
    foreign_reads: Vec<(Arc<dyn TracedState>, u64)>,
    /// States created with its traced values on other threads.
    temporaries: Vec<Weak<dyn TracedState>>,
}

fn watched() -> MutexGuard<'static, Vec<Watched>> {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records `error` in the open trace `frame` of another thread, so that it fails.
fn record_in(frame: u64, error: &Error) {
    if let Some(w) = watched().iter_mut().find(|w| w.frame == frame) {
        w.error.get_or_insert_with(|| error.clone());
    }
}

/// The frame a traced leaf belongs to, if one is.
fn traced_frame(leaves: &[Tensor]) -> Option<u64> {
    leaves.iter().find_map(|t| match t.repr() {
        Repr::Traced(tr) => Some(tr.frame),
        _ => None,
    })
}

/// What tracing and the transforms need of a state: a stable identity, its current leaves,
/// and the checks and assignment of new ones. The states of the `state` module implement it.
pub(crate) trait TracedState: Send + Sync {
    /// A process-wide unique identity.
    fn id(&self) -> u64;
    /// The current value's leaves.
    fn leaves(&self) -> Vec<Tensor>;
    /// Checks that new leaves fit the state (structure, shapes, dtypes, units).
    fn check(&self, leaves: &[Tensor]) -> Result<()>;
    /// Assigns checked leaves.
    fn assign(&self, leaves: Vec<Tensor>);
    /// How error messages name the state.
    fn describe(&self) -> String;
    /// How many times a value has been assigned.
    fn version(&self) -> u64;
    /// Held by a call that writes the state, from reading its inputs to committing.
    fn call_lock(&self) -> &Mutex<()>;
}

/// A state touched by a trace: the program inputs standing for the value it had when first
/// read, and the last value written.
#[derive(Clone)]
pub(crate) struct StateSlot {
    pub state: Arc<dyn TracedState>,
    pub read: Option<Vec<Tensor>>,
    pub written: Option<Vec<Tensor>>,
}

/// A program under construction.
struct Frame {
    id: u64,
    program: Program,
    /// Constants already in the program, by the address of their shared data.
    consts: HashMap<usize, Var>,
    /// The first error raised while tracing; the trace fails with it even if the failed tensor
    /// was dropped.
    error: Option<Error>,
    /// The states this trace has touched, in first-touch order.
    states: Vec<StateSlot>,
    /// The source location recorded for new equations, when set: while a transform replays an
    /// equation, that equation's (so derived equations point at the user's code rather than at
    /// a rule); while a user-level operation runs, the user's call.
    source: Option<&'static Location<'static>>,
    /// For the body of a loop: the traced tensors of enclosing traces that the body uses,
    /// each with the input of this frame standing for it (the loop passes them in as
    /// constants). `None` for other frames, which cannot use another trace's tensors.
    captures: Option<Vec<(Tensor, Var)>>,
    /// For the body of a loop: the first state created while it was traced, described.
    new_state: Option<String>,
    /// Whether a transform inlined here asked for `debug_nan`.
    debug_nan: bool,
    /// States created here with traced values.
    temporaries: Vec<Weak<dyn TracedState>>,
}

/// An open trace frame. Finish it with [`Tracing::finish`]; dropping it discards the frame.
pub(crate) struct Tracing {
    id: u64,
    /// Whether other threads watch it (see [`Tracing::watch`]).
    watched: bool,
}

impl Tracing {
    /// Opens a new innermost frame.
    pub fn new() -> Tracing {
        Tracing::open(None)
    }

    /// Opens a new innermost frame for the body of a loop: it may use the traced tensors of
    /// the frames around it (see [`Tracing::captures`]), and it notes states created in it.
    pub fn body() -> Tracing {
        Tracing::open(Some(Vec::new()))
    }

    fn open(captures: Option<Vec<(Tensor, Var)>>) -> Tracing {
        let id = NEXT_FRAME.fetch_add(1, Ordering::Relaxed);
        FRAMES.with(|f| {
            f.borrow_mut().push(Frame {
                id,
                program: Program::default(),
                consts: HashMap::new(),
                error: None,
                source: None,
                states: Vec::new(),
                captures,
                new_state: None,
                debug_nan: false,
                temporaries: Vec::new(),
            })
        });
        Tracing { id, watched: false }
    }

    /// Has other threads watch this trace while it is open (for the trace of a user
    /// function): an error they raise with its traced tensors fails it, and the states they
    /// read are reported by [`Tracing::foreign_reads`].
    pub fn watch(&mut self) {
        let mut all = watched();
        all.push(Watched {
            frame: self.id,
            error: None,
            foreign_reads: Vec::new(),
            temporaries: Vec::new(),
        });
        WATCHED_COUNT.store(all.len(), Ordering::Relaxed);
        self.watched = true;
    }

    /// The states read on other threads that were not tracing while this trace was open
    /// (whose values, if the function got them from there, are constants of its program).
    pub fn foreign_reads(&self) -> Vec<(Arc<dyn TracedState>, u64)> {
        watched()
            .iter()
            .find(|w| w.frame == self.id)
            .map(|w| w.foreign_reads.clone())
            .unwrap_or_default()
    }

    /// Whether a transform inlined in this trace asked for `debug_nan`.
    pub fn debug_nan(&self) -> bool {
        with_frame(self.id, |frame| frame.debug_nan)
    }

    /// For a loop body: the tensors of enclosing traces it used, with the inputs standing for
    /// them, in first-use order.
    pub fn captures(&self) -> Vec<(Tensor, Var)> {
        with_frame(self.id, |frame| frame.captures.clone().unwrap_or_default())
    }

    /// For a loop body: the first state created while it was traced, described.
    pub fn new_state(&self) -> Option<String> {
        with_frame(self.id, |frame| frame.new_state.clone())
    }

    /// A new program input of the given shape and dtype.
    pub fn input(&self, aval: &Aval) -> Tensor {
        with_frame(self.id, |frame| frame.input(aval))
    }

    /// A constant of this frame's program as a traced tensor: operations on it are recorded,
    /// not evaluated now, so that derived arrays (slices of a seed matrix, say) are computed
    /// by the plan where they are used instead of being stored beside it.
    pub fn constant(&self, data: Data) -> Tensor {
        with_frame(self.id, |frame| {
            let aval = Aval::new(data.shape(), data.dtype());
            let var = frame.constant(&Arc::new(data));
            Tensor::traced(frame.id, var, aval)
        })
    }

    /// A variable of this frame with no definition yet: the tangent placeholders that reverse
    /// mode linearises around. It must not reach the program's outputs.
    pub fn placeholder(&self, aval: &Aval) -> Tensor {
        with_frame(self.id, |frame| {
            let var = frame.program.new_var(aval.clone());
            Tensor::traced(frame.id, var, aval.clone())
        })
    }

    /// The number of equations recorded so far.
    pub fn len(&self) -> usize {
        with_frame(self.id, |frame| frame.program.eqns.len())
    }

    /// A copy of the equations recorded from index `start` on.
    pub fn eqns_since(&self, start: usize) -> Vec<Eqn> {
        with_frame(self.id, |frame| frame.program.eqns[start..].to_vec())
    }

    /// The tensor that stands for variable `var` of this frame.
    pub fn tensor(&self, var: Var) -> Tensor {
        with_frame(self.id, |frame| {
            Tensor::traced(frame.id, var, frame.program.aval(var).clone())
        })
    }

    /// The frame's variable for `tensor` (a constant is added to the program if needed).
    pub fn var_of(&self, tensor: &Tensor) -> Result<Var> {
        with_frame(self.id, |frame| frame.var_of(tensor))
    }

    /// The states touched so far, in first-touch order.
    pub fn states(&self) -> Vec<StateSlot> {
        with_frame(self.id, |frame| frame.states.clone())
    }

    /// Records `prim` in this frame even when no input is traced (used for the tangent basis,
    /// which must stay a cheap generator in the program rather than become a constant).
    #[track_caller]
    pub fn emit(&self, prim: Prim, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let caller = Location::caller();
        with_frame(self.id, |frame| frame.record(prim, inputs, caller))
    }

    /// Closes the frame and returns its program, with `outputs` as the program's outputs.
    pub fn finish(self, outputs: &[Tensor]) -> Result<Program> {
        let foreign = if self.watched {
            watched()
                .iter_mut()
                .find(|w| w.frame == self.id)
                .and_then(|w| w.error.take())
        } else {
            None
        };
        let result = with_frame(self.id, |frame| {
            if let Some(e) = frame.error.take().or(foreign) {
                return Err(e);
            }
            let vars = outputs
                .iter()
                .map(|t| frame.var_of(t))
                .collect::<Result<Vec<_>>>()?;
            let mut program = std::mem::take(&mut frame.program);
            program.outputs = vars;
            Ok(program)
        });
        drop(self);
        result
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let mut temporaries = FRAMES.with(|f| {
            let mut frames = f.borrow_mut();
            let Some(pos) = frames.iter().rposition(|fr| fr.id == self.id) else {
                return Vec::new();
            };
            let closed = frames.split_off(pos);
            closed
                .into_iter()
                .flat_map(|fr| fr.temporaries)
                .collect::<Vec<_>>()
        });
        if self.watched {
            let mut all = watched();
            if let Some(pos) = all.iter().position(|w| w.frame == self.id) {
                temporaries.extend(all.swap_remove(pos).temporaries);
            }
            WATCHED_COUNT.store(all.len(), Ordering::Relaxed);
        }
        // A state created with traced values loses them: its value is an error from now on.
        for state in temporaries.iter().filter_map(Weak::upgrade) {
            let leaves = state.leaves();
            if traced_frame(&leaves).is_some() {
                let error = Error::Trace(format!(
                    "{} was created inside a traced function with a traced value, which does \
                     not exist after the call; create states outside the function",
                    state.describe()
                ));
                state.assign(
                    leaves
                        .iter()
                        .map(|_| Tensor::failed(error.clone()))
                        .collect(),
                );
            }
        }
    }
}

/// Registers `state`, created with `leaves`, as a temporary of the trace its traced leaves
/// belong to: when that trace ends, its value becomes an error rather than a dead tracer.
pub(crate) fn adopt_temporary(state: &Arc<dyn TracedState>, leaves: &[Tensor]) {
    let Some(frame) = traced_frame(leaves) else {
        return;
    };
    let weak = Arc::downgrade(state);
    let here = FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let found = frames.iter_mut().find(|f| f.id == frame);
        found.map(|f| f.temporaries.push(weak.clone())).is_some()
    });
    if !here {
        match watched().iter_mut().find(|w| w.frame == frame) {
            Some(w) => w.temporaries.push(weak),
            // Its trace has ended already: it holds a dead tracer from the start.
            None => state.assign(
                leaves
                    .iter()
                    .map(|_| {
                        Tensor::failed(Error::Trace(
                            "a state was created with a traced value after its trace ended".into(),
                        ))
                    })
                    .collect(),
            ),
        }
    }
}

/// An error unless `leaves` may be written to a state from this thread: a traced leaf must
/// belong to a trace open on this thread (the error also fails that trace).
pub(crate) fn check_writable(leaves: &[Tensor], state: &dyn TracedState) -> Result<()> {
    let Some(frame) = traced_frame(leaves) else {
        return Ok(());
    };
    let open_here = FRAMES.with(|frames| frames.borrow().iter().any(|f| f.id == frame));
    if open_here {
        return Ok(());
    }
    let error = Error::Trace(format!(
        "writing {}: the new value is traced by a transform on another thread (or one that \
         has ended); tracing is per thread, so read and write states in the traced function \
         itself, and pass values (not traced tensors) to other threads",
        state.describe()
    ));
    record_in(frame, &error);
    Err(error)
}

/// Requests `debug_nan` for the innermost trace (a transform that checks for NaNs was inlined
/// there): the enclosing transform then checks too.
pub(crate) fn request_debug_nan() {
    FRAMES.with(|frames| {
        if let Some(frame) = frames.borrow_mut().last_mut() {
            frame.debug_nan = true;
        }
    });
}

impl Frame {
    fn input(&mut self, aval: &Aval) -> Tensor {
        let var = self.program.new_var(aval.clone());
        self.program.inputs.push(var);
        Tensor::traced(self.id, var, aval.clone())
    }

    /// Whether these leaves were made inside this trace (they are traced here).
    fn made_here(&self, leaves: &[Tensor]) -> bool {
        leaves
            .iter()
            .any(|t| matches!(t.repr(), Repr::Traced(tr) if tr.frame == self.id))
    }

    fn var_of(&mut self, tensor: &Tensor) -> Result<Var> {
        match tensor.repr() {
            Repr::Traced(t) if t.frame == self.id => Ok(t.var),
            Repr::Traced(t) if self.captures.is_some() => Ok(self.capture(tensor, t)),
            Repr::Traced(t) => Err(Error::Trace(format!(
                "a traced tensor ({}) was used outside the transform that traced it",
                t.aval
            ))),
            Repr::Failed(e) => Err((**e).clone()),
            Repr::Concrete(data) => Ok(self.constant(data)),
        }
    }

    /// The input of a loop body standing for a traced tensor of an enclosing trace.
    fn capture(&mut self, tensor: &Tensor, traced: &Tracer) -> Var {
        let captures = self.captures.get_or_insert_with(Vec::new);
        let found = captures.iter().find(|(t, _)| match t.repr() {
            Repr::Traced(c) => c.frame == traced.frame && c.var == traced.var,
            _ => false,
        });
        if let Some((_, var)) = found {
            return *var;
        }
        let var = self.program.new_var(traced.aval.clone());
        self.program.inputs.push(var);
        if let Some(captures) = self.captures.as_mut() {
            captures.push((tensor.mantissa(), var));
        }
        var
    }

    fn constant(&mut self, data: &Arc<Data>) -> Var {
        let key = Arc::as_ptr(data) as usize;
        if let Some(&var) = self.consts.get(&key) {
            return var;
        }
        let var = self.program.new_var(Aval::new(data.shape(), data.dtype()));
        self.program.consts.push((var, data.clone()));
        self.consts.insert(key, var);
        var
    }

    /// Appends `outs = prim(inputs)` and returns the traced outputs.
    fn record(
        &mut self,
        prim: Prim,
        inputs: &[&Tensor],
        caller: &'static Location<'static>,
    ) -> Result<Vec<Tensor>> {
        let avals = inputs
            .iter()
            .map(|t| t.aval())
            .collect::<Result<Vec<_>>>()?;
        let out_avals = prim.infer(&avals)?;
        let vars = inputs
            .iter()
            .map(|t| self.var_of(t))
            .collect::<Result<Vec<_>>>()?;
        let outputs: Vec<Var> = out_avals
            .iter()
            .map(|a| self.program.new_var(a.clone()))
            .collect();
        self.program.eqns.push(Eqn {
            prim,
            inputs: vars,
            outputs: outputs.clone(),
            source: Some(self.source.unwrap_or(caller)),
        });
        Ok(outputs
            .into_iter()
            .zip(out_avals)
            .map(|(var, aval)| Tensor::traced(self.id, var, aval))
            .collect())
    }

    fn slot(&mut self, state: &Arc<dyn TracedState>) -> &mut StateSlot {
        let pos = match self.states.iter().position(|s| s.state.id() == state.id()) {
            Some(pos) => pos,
            None => {
                self.states.push(StateSlot {
                    state: state.clone(),
                    read: None,
                    written: None,
                });
                self.states.len() - 1
            }
        };
        &mut self.states[pos]
    }
}

fn with_frame<R>(id: u64, f: impl FnOnce(&mut Frame) -> R) -> R {
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let frame = frames
            .iter_mut()
            .rev()
            .find(|fr| fr.id == id)
            .expect("a Tracing guard always has its frame");
        f(frame)
    })
}

/// Inside a trace, the traced leaves of `state`: the value last written in this trace, or the
/// program inputs registered at its first read. `None` outside any trace.
pub(crate) fn read_state(state: &Arc<dyn TracedState>) -> Option<Vec<Tensor>> {
    let traced = read_traced(state);
    if traced.is_none() && WATCHED_COUNT.load(Ordering::Relaxed) > 0 {
        // Read on a thread that is not tracing while another thread traces: that trace is
        // told, since the value may reach it as a constant.
        for w in watched().iter_mut() {
            if !w.foreign_reads.iter().any(|(s, _)| s.id() == state.id()) {
                w.foreign_reads.push((state.clone(), state.version()));
            }
        }
    }
    traced
}

/// [`read_state`] for the library's own reads (a transform gathering its inputs): a read
/// outside any trace is not reported to the traces of other threads.
pub(crate) fn read_traced(state: &Arc<dyn TracedState>) -> Option<Vec<Tensor>> {
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let frame = frames.last_mut()?;
        let current = state.leaves();
        if frame.made_here(&current) {
            // A state made inside this trace is a temporary: its value is already traced.
            return Some(current);
        }
        let slot = frame.slot(state);
        if let Some(written) = slot.written.as_ref().or(slot.read.as_ref()) {
            return Some(written.clone());
        }
        let mut inputs = Vec::with_capacity(current.len());
        for leaf in &current {
            inputs.push(match leaf.aval() {
                Ok(aval) => frame.input(&aval).with_unit(leaf.unit()),
                Err(e) => Tensor::failed(e),
            });
        }
        frame.slot(state).read = Some(inputs.clone());
        Some(inputs)
    })
}

/// Inside a trace, records a write of checked `leaves` to `state` and returns `true`; outside
/// any trace returns `false`, and the caller assigns them at once.
pub(crate) fn write_state(state: &Arc<dyn TracedState>, leaves: &[Tensor]) -> bool {
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let Some(frame) = frames.last_mut() else {
            return false;
        };
        if frame.made_here(&state.leaves()) {
            // A temporary state simply takes the new traced value.
            state.assign(leaves.to_vec());
        } else {
            frame.slot(state).written = Some(leaves.to_vec());
        }
        true
    })
}

/// Notes that a state described by `describe` is being created: inside the body of a loop,
/// where the state would not outlive its step, that fails the loop.
pub(crate) fn note_new_state(describe: impl FnOnce() -> String) {
    FRAMES.with(|frames| {
        if let Some(frame) = frames.borrow_mut().last_mut()
            && frame.captures.is_some()
            && frame.new_state.is_none()
        {
            frame.new_state = Some(describe());
        }
    });
}

/// Records `error` as the innermost trace's failure (if tracing) and returns it.
pub(crate) fn record_error(error: Error) -> Error {
    FRAMES.with(|frames| {
        if let Some(frame) = frames.borrow_mut().last_mut() {
            frame.error.get_or_insert_with(|| error.clone());
        }
    });
    error
}

/// Runs `f` with the equations it records in the innermost frame attributed to `source`,
/// unless a source is already set and `replace` is false. Transforms replaying an equation
/// replace it with the equation's own source; user-level operations set the user's call only
/// where no replay has set one.
fn at_source<R>(source: &'static Location<'static>, replace: bool, f: impl FnOnce() -> R) -> R {
    let previous = FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let frame = frames.last_mut()?;
        if frame.source.is_some() && !replace {
            return None;
        }
        Some(frame.source.replace(source))
    });
    let result = f();
    if let Some(previous) = previous {
        FRAMES.with(|frames| {
            if let Some(frame) = frames.borrow_mut().last_mut() {
                frame.source = previous;
            }
        });
    }
    result
}

/// Runs `f` with the equations it records attributed to `source`: the equation a transform is
/// replaying.
pub(crate) fn with_source<R>(
    source: Option<&'static Location<'static>>,
    f: impl FnOnce() -> R,
) -> R {
    match source {
        Some(source) => at_source(source, true, f),
        None => f(),
    }
}

/// Runs a user-level operation's body with its equations attributed to the user's `call`
/// (unless a transform is replaying an equation).
pub(crate) fn with_caller<R>(call: &'static Location<'static>, f: impl FnOnce() -> R) -> R {
    at_source(call, false, f)
}

/// Applies `prim` to `inputs`: computes it when no input is traced, records it otherwise.
/// Never panics: a failure becomes a failed tensor (and the innermost frame's error).
#[track_caller]
pub(crate) fn apply(prim: Prim, inputs: &[&Tensor]) -> Vec<Tensor> {
    let caller = Location::caller();
    let result = if inputs.iter().any(|t| t.unit().is_some()) {
        apply_with_units(&prim, inputs, caller)
    } else {
        try_apply(&prim, inputs, caller)
    };
    result.unwrap_or_else(|e| vec![Tensor::failed(record_error(e))])
}

/// Applies `prim` to quantities: its unit rule says how to rescale each operand's values and
/// what units the results have; the primitive itself only ever sees plain values. A
/// dimensionless result has its scale folded into its values.
fn apply_with_units(
    prim: &Prim,
    inputs: &[&Tensor],
    caller: &'static Location<'static>,
) -> Result<Vec<Tensor>> {
    // A failed operand has no unit; its own error comes first.
    for t in inputs {
        t.aval()?;
    }
    let units: Vec<Option<Unit>> = inputs.iter().map(|t| t.unit()).collect();
    let rule = prim.units(&units, inputs)?;
    let rescale = |t: Tensor, factor: f64| -> Result<Tensor> {
        if factor == 1.0 {
            return Ok(t);
        }
        let factor = Tensor::scalar_of(factor, t.dtype()?);
        let mut scaled = try_apply(&Prim::from(BinaryOp::Mul), &[&t, &factor], caller)?;
        Ok(scaled.swap_remove(0))
    };
    let plain = inputs
        .iter()
        .zip(rule.factors)
        .map(|(t, factor)| rescale(t.mantissa(), factor))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = plain.iter().collect();
    try_apply(prim, &refs, caller)?
        .into_iter()
        .zip(rule.outputs)
        .map(|(out, unit)| match unit {
            Some(u) if u.is_dimensionless() => rescale(out, u.scale()),
            unit => Ok(out.with_unit(unit)),
        })
        .collect()
}

fn try_apply(
    prim: &Prim,
    inputs: &[&Tensor],
    caller: &'static Location<'static>,
) -> Result<Vec<Tensor>> {
    let frame_id = inputs.iter().find_map(|t| match t.repr() {
        Repr::Traced(tr) => Some(tr.frame),
        _ => None,
    });
    let Some(frame_id) = frame_id else {
        let avals = inputs
            .iter()
            .map(|t| t.aval())
            .collect::<Result<Vec<_>>>()?;
        crate::memory::check_results(prim.name(), &prim.infer(&avals)?)?;
        let datas = inputs
            .iter()
            .map(|t| t.data())
            .collect::<Result<Vec<_>>>()?;
        let datas: Vec<&Data> = datas.iter().map(|d| &***d).collect();
        return Ok(prim
            .eval(&datas)?
            .into_iter()
            .map(Tensor::from_data)
            .collect());
    };
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        match frames.last_mut() {
            // A loop body records operations on the tensors of the traces around it too.
            Some(frame) if frame.id == frame_id || frame.captures.is_some() => {
                frame.record(prim.clone(), inputs, caller)
            }
            Some(_) => Err(Error::Trace(
                "a traced tensor was used outside the transform that traced it \
                 (nested transforms over a captured traced value are not supported)"
                    .into(),
            )),
            None => {
                let error = Error::Trace(format!(
                    "`{}` was applied to a traced tensor on a thread that is not tracing: \
                         tracing is per thread, so compute with traced values on the thread \
                         that runs the transformed function (or after the call, with its \
                         results)",
                    prim.name()
                ));
                record_in(frame_id, &error);
                Err(error)
            }
        }
    })
}
