//! Tracing: running user code on symbolic tensors to record a [`Program`].
//!
//! The only ambient state of the library lives here: a thread-local stack of trace frames.
//! A [`Frame`] is opened by a scoped guard and closed when the guard is finished or dropped,
//! so nothing leaks between threads, and a transform running inside another transform's trace
//! opens its own frame. Every operation goes through [`apply`]: with no traced input it
//! computes at once; otherwise it infers the result's shape and dtype and appends an equation
//! to the innermost frame.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::ir::{Eqn, Program};
use crate::primitives::{BinaryOp, Prim};
use crate::state::StateCore;
use crate::tensor::{Aval, Data, Repr, Tensor};
use crate::tree::TreeDef;
use crate::unit::Unit;

pub(crate) use crate::ir::Var;

static NEXT_FRAME: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
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
    /// While a transform replays an equation, the source location of that equation, so that
    /// derived equations point at the user's code rather than at a rule.
    source: Option<&'static Location<'static>>,
}

/// A state touched by a trace: the program inputs standing for the value it had when first
/// read, and the last value written.
#[derive(Clone)]
pub(crate) struct StateSlot {
    pub state: Arc<StateCore>,
    pub read: Option<Vec<Tensor>>,
    pub written: Option<(TreeDef, Vec<Tensor>)>,
}

/// An open trace frame. Finish it with [`Tracing::finish`]; dropping it discards the frame.
pub(crate) struct Tracing {
    id: u64,
}

impl Tracing {
    /// Opens a new innermost frame.
    pub fn new() -> Tracing {
        let id = NEXT_FRAME.fetch_add(1, Ordering::Relaxed);
        FRAMES.with(|f| {
            f.borrow_mut().push(Frame {
                id,
                program: Program::default(),
                consts: HashMap::new(),
                error: None,
                source: None,
                states: Vec::new(),
            })
        });
        Tracing { id }
    }

    /// A new program input of the given shape and dtype.
    pub fn input(&self, aval: &Aval) -> Tensor {
        with_frame(self.id, |frame| {
            let var = frame.program.new_var(aval.clone());
            frame.program.inputs.push(var);
            Tensor::traced(frame.id, var, aval.clone())
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
            Tensor::traced(frame.id, var, frame.program.avals[var.index()].clone())
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

    /// Closes the frame and returns its program, with `outputs` as the program's outputs.
    pub fn finish(self, outputs: &[Tensor]) -> Result<Program> {
        let result = with_frame(self.id, |frame| {
            if let Some(e) = frame.error.take() {
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
        FRAMES.with(|f| {
            let mut frames = f.borrow_mut();
            if let Some(pos) = frames.iter().rposition(|fr| fr.id == self.id) {
                frames.truncate(pos);
            }
        });
    }
}

impl Frame {
    /// Whether a state with these leaves was created inside this trace (its value is traced here).
    fn created_here(&self, leaves: &[Tensor]) -> bool {
        leaves
            .iter()
            .any(|t| matches!(t.repr(), Repr::Traced(tr) if tr.frame == self.id))
    }

    fn var_of(&mut self, tensor: &Tensor) -> Result<Var> {
        match tensor.repr() {
            Repr::Traced(t) if t.frame == self.id => Ok(t.var),
            Repr::Traced(t) => Err(Error::Trace(format!(
                "a traced tensor ({}) was used outside the transform that traced it",
                t.aval
            ))),
            Repr::Failed(e) => Err((**e).clone()),
            Repr::Concrete(data) => Ok(self.constant(data)),
        }
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

/// Inside a trace, the traced value of `state`: the value last written in this trace, or the
/// program inputs registered at its first read. `None` outside any trace.
pub(crate) fn read_state(state: &Arc<StateCore>) -> Option<(TreeDef, Vec<Tensor>)> {
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let frame = frames.last_mut()?;
        let (def, current) = state.leaves();
        if frame.created_here(&current) {
            // A state made inside this trace is a temporary: its value is already traced.
            return Some((def, current));
        }
        let pos = match frame
            .states
            .iter()
            .position(|s| Arc::ptr_eq(&s.state, state))
        {
            Some(pos) => pos,
            None => {
                frame.states.push(StateSlot {
                    state: state.clone(),
                    read: None,
                    written: None,
                });
                frame.states.len() - 1
            }
        };
        if let Some(written) = &frame.states[pos].written {
            return Some(written.clone());
        }
        if let Some(read) = &frame.states[pos].read {
            return Some((def, read.clone()));
        }
        let mut inputs = Vec::with_capacity(current.len());
        for leaf in &current {
            match leaf.aval() {
                Ok(aval) => {
                    let var = frame.program.new_var(aval.clone());
                    frame.program.inputs.push(var);
                    inputs.push(Tensor::traced(frame.id, var, aval).with_unit(leaf.unit()));
                }
                Err(e) => inputs.push(Tensor::failed(e)),
            }
        }
        frame.states[pos].read = Some(inputs.clone());
        Some((def, inputs))
    })
}

/// Inside a trace, records a write of `state` (already checked) and returns `true`; outside
/// any trace returns `false`, and the caller assigns the value at once.
pub(crate) fn write_state(state: &Arc<StateCore>, def: &TreeDef, leaves: &[Tensor]) -> bool {
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let Some(frame) = frames.last_mut() else {
            return false;
        };
        if frame.created_here(&state.leaves().1) {
            // A temporary state simply takes the new traced value.
            state.assign(leaves.to_vec());
            return true;
        }
        let written = Some((def.clone(), leaves.to_vec()));
        match frame
            .states
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.state, state))
        {
            Some(slot) => slot.written = written,
            None => frame.states.push(StateSlot {
                state: state.clone(),
                read: None,
                written,
            }),
        }
        true
    })
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

/// Runs `f` with the equations it records in the innermost frame attributed to `source`
/// (transforms replaying an equation pass the equation's own source, so derived equations
/// point at the user's code rather than at a rule).
pub(crate) fn with_source<R>(
    source: Option<&'static Location<'static>>,
    f: impl FnOnce() -> R,
) -> R {
    let previous = FRAMES.with(|frames| {
        frames
            .borrow_mut()
            .last_mut()
            .map(|frame| std::mem::replace(&mut frame.source, source))
    });
    let result = f();
    FRAMES.with(|frames| {
        if let (Some(frame), Some(previous)) = (frames.borrow_mut().last_mut(), previous) {
            frame.source = previous;
        }
    });
    result
}

/// Applies `prim` to `inputs`: computes it when no input is traced, records it otherwise.
/// Never panics: a failure becomes a failed tensor (and the innermost frame's error).
#[track_caller]
pub(crate) fn apply(prim: Prim, inputs: &[&Tensor]) -> Tensor {
    let caller = Location::caller();
    let result = if inputs.iter().any(|t| t.unit().is_some()) {
        apply_with_units(&prim, inputs, caller)
    } else {
        try_apply(&prim, inputs, caller)
    };
    match result {
        Ok(t) => t,
        Err(e) => {
            FRAMES.with(|f| {
                if let Some(frame) = f.borrow_mut().last_mut() {
                    frame.error.get_or_insert_with(|| e.clone());
                }
            });
            Tensor::failed(e)
        }
    }
}

/// Applies `prim` to quantities: its unit rule says how to rescale each operand's values and
/// what unit the result has; the primitive itself only ever sees plain values. A dimensionless
/// result has its scale folded into its values.
fn apply_with_units(
    prim: &Prim,
    inputs: &[&Tensor],
    caller: &'static Location<'static>,
) -> Result<Tensor> {
    // A failed operand has no unit; its own error comes first.
    if let Some(e) = inputs.iter().find_map(|t| t.error()) {
        return Err(e.clone());
    }
    let units: Vec<Option<Unit>> = inputs.iter().map(|t| t.unit()).collect();
    let (factors, unit) = prim.unit_rule(&units, inputs)?;
    let rescale = |t: Tensor, factor: f64| -> Result<Tensor> {
        if factor == 1.0 {
            return Ok(t);
        }
        let factor = Tensor::scalar_of(factor, t.dtype());
        try_apply(&Prim::Binary(BinaryOp::Mul), &[&t, &factor], caller)
    };
    let plain = inputs
        .iter()
        .zip(factors)
        .map(|(t, factor)| rescale(t.mantissa(), factor))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = plain.iter().collect();
    let out = try_apply(prim, &refs, caller)?;
    match unit {
        Some(u) if u.is_dimensionless() => rescale(out, u.scale()),
        unit => Ok(out.with_unit(unit)),
    }
}

fn try_apply(
    prim: &Prim,
    inputs: &[&Tensor],
    caller: &'static Location<'static>,
) -> Result<Tensor> {
    let avals = inputs
        .iter()
        .map(|t| t.aval())
        .collect::<Result<Vec<_>>>()?;
    let out = prim.infer(&avals)?;
    let frame_id = inputs.iter().find_map(|t| match t.repr() {
        Repr::Traced(tr) => Some(tr.frame),
        _ => None,
    });
    let Some(frame_id) = frame_id else {
        let datas = inputs
            .iter()
            .map(|t| t.data())
            .collect::<Result<Vec<_>>>()?;
        let datas: Vec<&Data> = datas.iter().map(|d| &***d).collect();
        return Ok(Tensor::from_data(prim.eval(&datas)?));
    };
    FRAMES.with(|frames| {
        let mut frames = frames.borrow_mut();
        let frame = match frames.last_mut() {
            Some(frame) if frame.id == frame_id => frame,
            _ => {
                return Err(Error::Trace(
                    "a traced tensor was used outside the transform that traced it \
                     (nested transforms over a captured traced value are not supported)"
                        .into(),
                ));
            }
        };
        let vars = inputs
            .iter()
            .map(|t| frame.var_of(t))
            .collect::<Result<Vec<_>>>()?;
        let var = frame.program.new_var(out.clone());
        let source = frame.source.unwrap_or(caller);
        frame.program.eqns.push(Eqn {
            prim: prim.clone(),
            inputs: vars,
            out: var,
            source: Some(source),
        });
        Ok(Tensor::traced(frame_id, var, out))
    })
}

/// Records `prim` in the innermost frame even when no input is traced (used for the tangent
/// basis, which must stay a cheap generator in the program rather than become a constant).
#[track_caller]
pub(crate) fn emit(tracing: &Tracing, prim: Prim, inputs: &[&Tensor]) -> Result<Tensor> {
    let avals = inputs
        .iter()
        .map(|t| t.aval())
        .collect::<Result<Vec<_>>>()?;
    let out = prim.infer(&avals)?;
    let caller = Location::caller();
    with_frame(tracing.id, |frame| {
        let vars = inputs
            .iter()
            .map(|t| frame.var_of(t))
            .collect::<Result<Vec<_>>>()?;
        let var = frame.program.new_var(out.clone());
        frame.program.eqns.push(Eqn {
            prim,
            inputs: vars,
            out: var,
            source: Some(frame.source.unwrap_or(caller)),
        });
        Ok(Tensor::traced(frame.id, var, out))
    })
}
