//! Collecting a model's states (brainstate's `model.states()` and `model.states(ParamState)`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{GradStates, Selection, State, StateCore, StateKind};
use crate::tensor::Tensor;
use crate::tree::Tree;
use crate::unit::Unit;

/// A value that holds states, such as a model: [`HasStates::states`] collects them, keyed by
/// their path (field names and indices joined by dots), as a [`GradStates`] to differentiate
/// with respect to; [`HasStates::states_of`] keeps one [`StateKind`]. Derive it for structs
/// with `#[derive(HasStates)]`, which also lets `&model` be passed to `grad_states` directly.
/// Fields that hold no states (tensors, numbers, strings) are skipped; mark fields of other
/// types `#[states(skip)]`.
///
/// Implemented for [`State`], `Vec`, arrays, `Option`, `Box`, tuples and string-keyed maps of
/// values that hold states. A state reachable by several paths is collected once, under the
/// first.
///
/// ```
/// use brainstate::{hessian, HasStates, HiddenState, ParamState, State, StateKind, Tensor};
///
/// #[derive(HasStates)]
/// struct Layer {
///     w: State,
///     b: State,
/// }
///
/// #[derive(HasStates)]
/// struct Model {
///     layers: Vec<Layer>,
///     h: State,
///     #[states(skip)]
///     name: &'static str,
/// }
///
/// let layer = |w: f64| Layer {
///     w: ParamState::new(Tensor::from([w, w])),
///     b: ParamState::new(Tensor::scalar(0.0)),
/// };
/// let model = Model {
///     layers: vec![layer(1.0), layer(2.0)],
///     h: HiddenState::new(Tensor::zeros(&[2])),
///     name: "mlp",
/// };
/// let params = model.states_of(StateKind::Param);
/// assert_eq!(params.keys(), ["layers.0.b", "layers.0.w", "layers.1.b", "layers.1.w"]);
/// assert_eq!(model.states().keys().len(), 5);
///
/// let loss = || {
///     let (l0, l1) = (&model.layers[0], &model.layers[1]);
///     (l0.w.value() * l1.w.value() + l0.b.value() + l1.b.value()).powi(2).sum()
/// };
/// let h = hessian(loss).grad_states(params).call(()).unwrap();
/// let block = h["layers.0.w"]["layers.1.w"].tensor().unwrap();
/// assert_eq!(block.to_vec::<f64>().unwrap(), vec![8.0, 0.0, 0.0, 8.0]); // 4 w0 w1
/// let all = hessian(loss).grad_states(&model).check_states(false).call(()).unwrap();
/// assert!(all.key("h").is_ok());
/// ```
pub trait HasStates {
    /// Adds the states held to `into`, each under `path` extended by its own (see
    /// [`StateCollector::join`]).
    ///
    /// ```
    /// use brainstate::{HasStates, State, StateCollector, Tensor};
    /// let pair = (State::new(Tensor::scalar(1.0)), State::new(Tensor::scalar(2.0)));
    /// let mut into = StateCollector::default();
    /// pair.collect_states("pair", &mut into);
    /// assert_eq!(into.len(), 2);
    /// ```
    fn collect_states(&self, path: &str, into: &mut StateCollector);

    /// Every state held, keyed by path.
    ///
    /// ```
    /// use brainstate::{HasStates, State, Tensor};
    /// let states = vec![State::new(Tensor::scalar(1.0)), State::new(Tensor::scalar(2.0))];
    /// assert_eq!(states.states().keys(), ["0", "1"]);
    /// ```
    fn states(&self) -> GradStates {
        let mut into = StateCollector::default();
        self.collect_states("", &mut into);
        into.finish(None)
    }

    /// The states of one kind, keyed by path: `model.states_of(StateKind::Param)` is
    /// brainstate's `model.states(ParamState)`.
    ///
    /// ```
    /// use brainstate::{HasStates, ParamState, ShortTermState, StateKind, Tensor};
    /// let states = (ParamState::new(Tensor::scalar(1.0)), ShortTermState::new(Tensor::scalar(2.0)));
    /// assert_eq!(states.states_of(StateKind::ShortTerm).keys(), ["1"]);
    /// ```
    fn states_of(&self, kind: StateKind) -> GradStates {
        let mut into = StateCollector::default();
        self.collect_states("", &mut into);
        into.finish(Some(kind))
    }
}

/// The states found so far by [`HasStates::collect_states`], with their paths.
///
/// ```
/// use brainstate::{HasStates, State, StateCollector, Tensor};
/// let mut into = StateCollector::default();
/// State::new(Tensor::scalar(1.0)).collect_states("v", &mut into);
/// assert_eq!((into.len(), into.is_empty()), (1, false));
/// ```
#[derive(Default)]
pub struct StateCollector {
    entries: Vec<(String, Arc<StateCore>)>,
}

impl StateCollector {
    /// `path.name`, or `name` at the top (the path of a field or an element).
    ///
    /// ```
    /// use brainstate::StateCollector;
    /// assert_eq!(StateCollector::join("", "w"), "w");
    /// assert_eq!(StateCollector::join("layers.0", "w"), "layers.0.w");
    /// ```
    pub fn join(path: &str, name: &str) -> String {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    }

    /// Adds `state` under `path`, unless it was found already.
    ///
    /// ```
    /// use brainstate::{State, StateCollector, Tensor};
    /// let s = State::new(Tensor::scalar(1.0));
    /// let mut into = StateCollector::default();
    /// into.add("a", &s);
    /// into.add("b", &s); // the same state: kept once, as "a"
    /// assert_eq!(into.len(), 1);
    /// ```
    pub fn add<T: Tree>(&mut self, path: &str, state: &State<T>) {
        if !self.entries.iter().any(|(_, s)| s.id == state.core.id) {
            self.entries.push((path.to_string(), state.core.clone()));
        }
    }

    /// The number of states found.
    ///
    /// ```
    /// assert_eq!(brainstate::StateCollector::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no state was found.
    ///
    /// ```
    /// assert!(brainstate::StateCollector::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The states found (those of `kind`, if given), as a map in key order.
    fn finish(self, kind: Option<StateKind>) -> GradStates {
        let mut entries: Vec<(String, Arc<StateCore>)> = self
            .entries
            .into_iter()
            .filter(|(_, s)| kind.is_none_or(|k| s.kind == k))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        GradStates(Selection::Map(entries))
    }
}

impl<T: Tree> HasStates for State<T> {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        into.add(path, self);
    }
}

impl<T: HasStates + ?Sized> HasStates for &T {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        (**self).collect_states(path, into);
    }
}

impl<T: HasStates + ?Sized> HasStates for Box<T> {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        (**self).collect_states(path, into);
    }
}

impl<T: HasStates> HasStates for Option<T> {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        if let Some(inner) = self {
            inner.collect_states(path, into);
        }
    }
}

impl<T: HasStates> HasStates for [T] {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        for (i, item) in self.iter().enumerate() {
            item.collect_states(&StateCollector::join(path, &i.to_string()), into);
        }
    }
}

impl<T: HasStates> HasStates for Vec<T> {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        self.as_slice().collect_states(path, into);
    }
}

impl<T: HasStates, const N: usize> HasStates for [T; N] {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        self.as_slice().collect_states(path, into);
    }
}

impl<K: AsRef<str>, T: HasStates> HasStates for BTreeMap<K, T> {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        for (key, item) in self {
            item.collect_states(&StateCollector::join(path, key.as_ref()), into);
        }
    }
}

impl<K: AsRef<str>, T: HasStates> HasStates for HashMap<K, T> {
    fn collect_states(&self, path: &str, into: &mut StateCollector) {
        for (key, item) in self {
            item.collect_states(&StateCollector::join(path, key.as_ref()), into);
        }
    }
}

macro_rules! tuple_states {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: HasStates),+> HasStates for ($($name,)+) {
            fn collect_states(&self, path: &str, into: &mut StateCollector) {
                $(self.$idx.collect_states(&StateCollector::join(path, stringify!($idx)), into);)+
            }
        }
    };
}
tuple_states!(A 0);
tuple_states!(A 0, B 1);
tuple_states!(A 0, B 1, C 2);
tuple_states!(A 0, B 1, C 2, D 3);
tuple_states!(A 0, B 1, C 2, D 3, E 4);
tuple_states!(A 0, B 1, C 2, D 3, E 4, F 5);

/// Values that hold no states, as fields of a model.
macro_rules! no_states {
    ($($t:ty),*) => {$(
        impl HasStates for $t {
            fn collect_states(&self, _: &str, _: &mut StateCollector) {}
        }
    )*};
}
no_states!(
    Tensor, Unit, f64, f32, i64, i32, u64, u32, usize, bool, String, str
);
