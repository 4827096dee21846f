//! States: shared, mutable values that functions read and write, as in brainstate.
//!
//! A [`State`] is a cheap handle (clones share one value) with a stable identity, an optional
//! name and the source location where it was created. Outside transforms, [`State::value`] and
//! [`State::set_value`] read and write the value directly. Inside a traced call, the first read
//! registers the state as an input of the program being traced, and writes are recorded as
//! outputs; the transform assigns the written values after the call has succeeded, so a
//! failed call leaves every state as it was.
//!
//! ```
//! use brainstate::{grad, State, Tensor};
//! let calls = State::new(Tensor::scalar(0.0));
//! let f = |x: &Tensor| {
//!     calls.set_value(calls.value() + 1.0).unwrap(); // recorded, assigned after success
//!     x.powi(2).sum()
//! };
//! grad(f).call(&Tensor::from([1.0])).unwrap();
//! assert_eq!(calls.value().item().unwrap(), 1.0);
//! ```

mod collect;

use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::trace::{self, TracedState};
use crate::tree::{Tree, TreeDef};
use crate::unit::Unit;

pub use self::collect::{HasStates, StateCollector};

static NEXT_STATE: AtomicU64 = AtomicU64::new(1);

/// What a state holds in a model, as brainstate distinguishes them.
///
/// ```
/// use brainstate::{ParamState, State, StateKind, Tensor};
/// assert_eq!(ParamState::new(Tensor::scalar(1.0)).kind(), StateKind::Param);
/// assert_eq!(State::of_kind(Tensor::zeros(&[3]), StateKind::Hidden).kind(), StateKind::Hidden);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// A plain state.
    State,
    /// A trainable parameter (`ParamState`).
    Param,
    /// A short-term state, such as a membrane potential (`ShortTermState`).
    ShortTerm,
    /// A hidden state of a recurrent model (`HiddenState`).
    Hidden,
}

/// The type-erased part of a state that transforms work with.
pub(crate) struct StateCore {
    pub id: u64,
    pub name: Mutex<Option<String>>,
    pub kind: StateKind,
    pub created: &'static Location<'static>,
    /// The value, flattened.
    pub value: Mutex<(TreeDef, Vec<Tensor>)>,
    /// Assignments so far.
    pub version: AtomicU64,
    /// Serializes the calls that write the state (see [`lock_all`]).
    pub call: Mutex<()>,
}

impl StateCore {
    /// The structure and leaves of the current value.
    pub fn value(&self) -> (TreeDef, Vec<Tensor>) {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks that a new value of structure `def` fits the state.
    fn check_write(&self, def: &TreeDef, leaves: &[Tensor]) -> Result<()> {
        if *def != self.value().0 {
            return Err(Error::Structure(format!(
                "writing {}: the new value has another structure",
                self.describe()
            )));
        }
        self.check(leaves)
    }
}

impl TracedState for StateCore {
    fn id(&self) -> u64 {
        self.id
    }

    fn leaves(&self) -> Vec<Tensor> {
        self.value().1
    }

    /// How error messages name the state: its name or kind, and where it was created.
    fn describe(&self) -> String {
        let name = match &*self.name.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(n) => format!("{n:?}"),
            None => format!("#{}", self.id),
        };
        format!(
            "{:?} state {name} (created at {}:{})",
            self.kind,
            self.created.file(),
            self.created.line()
        )
    }

    fn check(&self, leaves: &[Tensor]) -> Result<()> {
        let own = self.leaves();
        if leaves.len() != own.len() {
            return Err(Error::Structure(format!(
                "writing {}: the new value has another structure",
                self.describe()
            )));
        }
        for (new, old) in leaves.iter().zip(&own) {
            let one = Unit::ONE;
            let (new_unit, old_unit) = (new.unit().unwrap_or(one), old.unit().unwrap_or(one));
            if !new_unit.same_dimension(&old_unit) {
                return Err(Error::Units {
                    op: "set_value".into(),
                    msg: format!(
                        "writing {}: the new value is in {new_unit} but the state holds {old_unit}",
                        self.describe()
                    ),
                });
            }
            let (new, old) = (new.aval()?, old.aval()?);
            if new != old {
                return Err(Error::Shape {
                    op: "set_value".into(),
                    msg: format!(
                        "writing {}: the new value is {new} but the state holds {old}",
                        self.describe()
                    ),
                });
            }
        }
        Ok(())
    }

    fn assign(&self, leaves: Vec<Tensor>) {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).1 = leaves;
        self.version.fetch_add(1, Ordering::Release);
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn call_lock(&self) -> &Mutex<()> {
        &self.call
    }
}

/// Locks the states a call writes, in one global order (by identity) so that calls locking
/// overlapping sets never deadlock: held from reading the call's inputs to committing its
/// writes, it makes concurrent calls that write a common state run one after another.
pub(crate) fn lock_all<'a>(
    states: impl IntoIterator<Item = &'a Arc<dyn TracedState>>,
) -> Vec<std::sync::MutexGuard<'a, ()>> {
    let mut states: Vec<&Arc<dyn TracedState>> = states.into_iter().collect();
    states.sort_by_key(|s| s.id());
    states.dedup_by_key(|s| s.id());
    states
        .into_iter()
        .map(|s| s.call_lock().lock().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// Hands checked values on to the states they were written to: inside a trace the writes are
/// recorded there (and applied when that trace's own call succeeds); otherwise they are
/// assigned now, in turn with the calls that write those states. This is the one path by
/// which written values reach states.
pub(crate) fn commit(writes: Vec<(Arc<dyn TracedState>, Vec<Tensor>)>) {
    let states: Vec<Arc<dyn TracedState>> = writes.iter().map(|(s, _)| s.clone()).collect();
    let _serialized = lock_all(&states);
    commit_held(writes);
}

/// [`commit`] by a caller that holds the states' call locks (see [`lock_all`]).
pub(crate) fn commit_held(writes: Vec<(Arc<dyn TracedState>, Vec<Tensor>)>) {
    for (state, leaves) in writes {
        if !trace::write_state(&state, &leaves) {
            state.assign(leaves);
        }
    }
}

/// A shared, mutable value holding a tensor (or any [`Tree`] of tensors).
///
/// ```
/// use brainstate::{State, Tensor};
/// let counter = State::new(Tensor::scalar(0.0)).with_name("counter");
/// let alias = counter.clone(); // the same state
/// alias.set_value(&counter.value() + 1.0).unwrap();
/// assert_eq!(counter.value().item().unwrap(), 1.0);
/// ```
pub struct State<T: Tree = Tensor> {
    core: Arc<StateCore>,
    _value: PhantomData<fn() -> T>,
}

/// Constructors of the state kinds a brain model uses, as brainstate names them: each
/// `new` gives a [`State`] of that [`StateKind`].
macro_rules! state_kind {
    ($(#[$doc:meta])* $name:ident => $kind:ident, $example:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl $name {
            #[doc = concat!("A new state of kind [`StateKind::", stringify!($kind), "`].")]
            ///
            /// ```
            #[doc = concat!("use brainstate::{", stringify!($name), ", StateKind, Tensor};")]
            #[doc = concat!("let s = ", stringify!($name), "::new(Tensor::from(", $example, "));")]
            #[doc = concat!("assert_eq!(s.kind(), StateKind::", stringify!($kind), ");")]
            /// ```
            #[track_caller]
            #[allow(clippy::new_ret_no_self)]
            pub fn new<T: Tree>(value: T) -> State<T> {
                State::of_kind(value, StateKind::$kind)
            }
        }
    };
}

state_kind!(
    /// A trainable parameter, such as a weight.
    ParamState => Param, "[1.0, 2.0]"
);
state_kind!(
    /// A short-term dynamical variable, such as a membrane potential.
    ShortTermState => ShortTerm, "[-65.0]"
);
state_kind!(
    /// The hidden state of a recurrent model.
    HiddenState => Hidden, "[0.0, 0.0]"
);

impl<T: Tree> Clone for State<T> {
    fn clone(&self) -> Self {
        State {
            core: self.core.clone(),
            _value: PhantomData,
        }
    }
}

impl<T: Tree> State<T> {
    /// A new plain state.
    ///
    /// ```
    /// use brainstate::{State, StateKind, Tensor};
    /// let s = State::new(Tensor::scalar(1.0));
    /// assert_eq!((s.kind(), s.value().item().unwrap()), (StateKind::State, 1.0));
    /// ```
    #[track_caller]
    pub fn new(value: T) -> State<T> {
        State::of_kind(value, StateKind::State)
    }

    /// A new state of the given kind.
    ///
    /// ```
    /// use brainstate::{State, StateKind, Tensor};
    /// let v = State::of_kind(Tensor::zeros(&[3]), StateKind::ShortTerm);
    /// assert_eq!(v.kind(), StateKind::ShortTerm);
    /// ```
    #[track_caller]
    pub fn of_kind(value: T, kind: StateKind) -> State<T> {
        let mut leaves = Vec::new();
        value.flatten(&mut leaves);
        let state = State {
            core: Arc::new(StateCore {
                id: NEXT_STATE.fetch_add(1, Ordering::Relaxed),
                name: Mutex::new(None),
                kind,
                created: Location::caller(),
                value: Mutex::new((value.def(), leaves.clone())),
                version: AtomicU64::new(0),
                call: Mutex::new(()),
            }),
            _value: PhantomData,
        };
        // Inside a loop body, a new state would not outlive its step: the loop fails.
        trace::note_new_state(|| state.core.describe());
        // Created with traced values inside a trace: it loses them when the trace ends.
        trace::adopt_temporary(&state.handle(), &leaves);
        state
    }

    /// Names the state (every handle sees the name); used in error messages.
    ///
    /// ```
    /// use brainstate::{State, Tensor};
    /// let v = State::new(Tensor::scalar(0.0)).with_name("v");
    /// assert_eq!(v.name().as_deref(), Some("v"));
    /// assert!(format!("{v:?}").contains("\"v\"")); // as error messages name it
    /// ```
    pub fn with_name(self, name: &str) -> State<T> {
        *self.core.name.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.to_string());
        self
    }

    /// The name, if one was given.
    ///
    /// ```
    /// use brainstate::{State, Tensor};
    /// assert_eq!(State::new(Tensor::scalar(0.0)).name(), None);
    /// ```
    pub fn name(&self) -> Option<String> {
        self.core
            .name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The kind of state.
    ///
    /// ```
    /// use brainstate::{State, StateKind, Tensor};
    /// assert_eq!(State::new(Tensor::scalar(0.0)).kind(), StateKind::State);
    /// ```
    pub fn kind(&self) -> StateKind {
        self.core.kind
    }

    /// The current value; inside a traced call, its traced stand-in.
    ///
    /// ```
    /// use brainstate::{State, Tensor};
    /// let s = State::new((Tensor::scalar(1.0), Tensor::from([2.0, 3.0])));
    /// let (a, b) = s.value();
    /// assert_eq!((a.item().unwrap(), b.shape().unwrap()), (1.0, &[2][..]));
    /// ```
    pub fn value(&self) -> T {
        let (def, current) = self.core.value();
        let leaves = trace::read_state(&self.handle()).unwrap_or(current);
        match T::unflatten(&def, &mut leaves.into_iter()) {
            Ok(value) => value,
            Err(_) => unreachable!("a state's structure never changes: writes are checked"),
        }
    }

    /// Writes a new value of the same structure, shapes and dtypes; otherwise an error naming
    /// the state, and the value is kept. Inside a traced call the write is recorded and applied
    /// when the call succeeds (an invalid write also fails that call).
    ///
    /// ```
    /// use brainstate::{State, Tensor};
    /// let s = State::new(Tensor::from([0.0, 0.0]));
    /// s.set_value(Tensor::from([1.0, 2.0])).unwrap();
    /// assert!(s.set_value(Tensor::from([1.0])).is_err()); // another shape: kept
    /// assert_eq!(s.value().to_vec::<f64>().unwrap(), vec![1.0, 2.0]);
    /// ```
    pub fn set_value(&self, value: T) -> Result<()> {
        let mut leaves = Vec::new();
        value.flatten(&mut leaves);
        // Inside a trace, an invalid write fails the call too, even if this error is ignored.
        if let Some(e) = leaves.iter().find_map(|t| t.error()) {
            return Err(trace::record_error(e.clone()));
        }
        trace::check_writable(&leaves, &*self.core)?;
        self.core
            .check_write(&value.def(), &leaves)
            .map_err(trace::record_error)?;
        commit(vec![(self.handle(), leaves)]);
        Ok(())
    }

    /// The state as tracing and transforms see it.
    fn handle(&self) -> Arc<dyn TracedState> {
        self.core.clone()
    }
}

impl<T: Tree> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.core.describe())
    }
}

/// The states to differentiate with respect to (`grad_states`): one state (`&w`), a sequence
/// (`[&a, &b]`, a `Vec`), or a string-keyed map (`[("a", &a), ("b", &b)]`, a `BTreeMap`).
/// The derivatives mirror this structure.
///
/// ```
/// use brainstate::{hessian, State, Tensor};
/// let (a, b) = (State::new(Tensor::scalar(1.0)), State::new(Tensor::scalar(2.0)));
/// let f = |x: &Tensor| (a.value() * b.value() * x).sum();
/// let h = hessian(f).grad_states([("a", &a), ("b", &b)]).call(&Tensor::scalar(3.0)).unwrap();
/// assert_eq!(h["a"]["b"].tensor().unwrap().item().unwrap(), 3.0); // d2f / da db = x
/// ```
#[derive(Clone)]
pub struct GradStates(Selection);

#[derive(Clone)]
enum Selection {
    /// One state: its blocks directly.
    One(Arc<StateCore>),
    /// A sequence: `h[i][j]`.
    Seq(Vec<Arc<StateCore>>),
    /// A map: `h["a"]["b"]`, in key order.
    Map(Vec<(String, Arc<StateCore>)>),
}

impl GradStates {
    /// The number of states.
    ///
    /// ```
    /// use brainstate::{GradStates, State, Tensor};
    /// let (a, b) = (State::new(Tensor::scalar(1.0)), State::new(Tensor::scalar(2.0)));
    /// assert_eq!(GradStates::from([&a, &b]).len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        match &self.0 {
            Selection::One(_) => 1,
            Selection::Seq(v) => v.len(),
            Selection::Map(m) => m.len(),
        }
    }

    /// Whether there are no states.
    ///
    /// ```
    /// use brainstate::{GradStates, State, Tensor};
    /// assert!(GradStates::from(Vec::<State<Tensor>>::new()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys of a map of states, in order (none for one state or a sequence).
    ///
    /// ```
    /// use brainstate::{GradStates, State, Tensor};
    /// let (a, b) = (State::new(Tensor::scalar(1.0)), State::new(Tensor::scalar(2.0)));
    /// assert_eq!(GradStates::from([("w", &a), ("b", &b)]).keys(), ["b", "w"]);
    /// ```
    pub fn keys(&self) -> Vec<String> {
        match &self.0 {
            Selection::Map(m) => m.iter().map(|(k, _)| k.clone()).collect(),
            Selection::One(_) | Selection::Seq(_) => Vec::new(),
        }
    }

    /// The states, in order.
    pub(crate) fn states(&self) -> Vec<Arc<dyn TracedState>> {
        let handle = |s: &Arc<StateCore>| -> Arc<dyn TracedState> { s.clone() };
        match &self.0 {
            Selection::One(s) => vec![handle(s)],
            Selection::Seq(v) => v.iter().map(handle).collect(),
            Selection::Map(m) => m.iter().map(|(_, s)| handle(s)).collect(),
        }
    }

    /// The structure of the states' values, nested as this selection.
    pub(crate) fn def(&self) -> TreeDef {
        let def = |s: &Arc<StateCore>| s.value().0;
        match &self.0 {
            Selection::One(s) => def(s),
            Selection::Seq(v) => TreeDef::List(v.iter().map(def).collect()),
            Selection::Map(m) => TreeDef::Map(m.iter().map(|(k, s)| (k.clone(), def(s))).collect()),
        }
    }
}

impl<T: Tree> From<&State<T>> for GradStates {
    fn from(s: &State<T>) -> Self {
        GradStates(Selection::One(s.core.clone()))
    }
}

impl<T: Tree> From<&[State<T>]> for GradStates {
    fn from(v: &[State<T>]) -> Self {
        GradStates(Selection::Seq(v.iter().map(|s| s.core.clone()).collect()))
    }
}

impl<T: Tree> From<Vec<State<T>>> for GradStates {
    fn from(v: Vec<State<T>>) -> Self {
        GradStates::from(v.as_slice())
    }
}

impl<T: Tree> From<Vec<&State<T>>> for GradStates {
    fn from(v: Vec<&State<T>>) -> Self {
        GradStates(Selection::Seq(v.iter().map(|s| s.core.clone()).collect()))
    }
}

impl<T: Tree, const N: usize> From<[&State<T>; N]> for GradStates {
    fn from(v: [&State<T>; N]) -> Self {
        GradStates::from(v.to_vec())
    }
}

impl<K: AsRef<str>, T: Tree> From<std::collections::BTreeMap<K, State<T>>> for GradStates {
    fn from(m: std::collections::BTreeMap<K, State<T>>) -> Self {
        GradStates(Selection::Map(
            m.iter()
                .map(|(k, s)| (k.as_ref().to_string(), s.core.clone()))
                .collect(),
        ))
    }
}

impl<K: AsRef<str>, T: Tree, const N: usize> From<[(K, &State<T>); N]> for GradStates {
    fn from(entries: [(K, &State<T>); N]) -> Self {
        let mut m: Vec<(String, Arc<StateCore>)> = entries
            .iter()
            .map(|(k, s)| (k.as_ref().to_string(), s.core.clone()))
            .collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        GradStates(Selection::Map(m))
    }
}
