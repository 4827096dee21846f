//! The JSON fixtures of `tests/fixtures/` (written by `tools/*.py`) and the one comparison of
//! a result tree with a fixture tree (`tests/golden.rs`, `tests/complex.rs`, `tests/states.rs`).
//!
//! A fixture tree is an array leaf, `{"shape", "data"}` (`f64`) or `{"shape", "re", "im"}`
//! (`c128`), or `{"tuple": [...]}`, `{"list": [...]}`, `{"dict": {...}}` of trees.

use brainstate::{Complex64, DType, Node, Tensor};
use serde_json::Value;

use super::harness::Scalar;

/// The JSON document `tests/fixtures/{file}`.
pub fn fixture(file: &str) -> Value {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// The `"shape"` of a fixture array, as dimensions.
pub fn json_shape(json: &Value) -> Vec<usize> {
    json["shape"]
        .as_array()
        .unwrap_or_else(|| panic!("expected an array leaf with a shape, got {json}"))
        .iter()
        .map(|d| d.as_u64().expect("dimension") as usize)
        .collect()
}

/// The list of numbers under `key` of a fixture array (`"data"`, `"re"`, `"im"`, ...).
pub fn json_numbers(json: &Value, key: &str) -> Vec<f64> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("expected an array leaf with {key:?}, got {json}"))
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

/// A fixture array as a tensor: `{"shape", "data"}` as `f64`, `{"shape", "re", "im"}` as
/// `c128`.
pub fn json_tensor(json: &Value) -> Tensor {
    let shape = json_shape(json);
    let tensor = if json.get("data").is_some() {
        Tensor::from_vec(json_numbers(json, "data"), &shape)
    } else {
        let values: Vec<Complex64> = json_numbers(json, "re")
            .into_iter()
            .zip(json_numbers(json, "im"))
            .map(|(re, im)| Complex64::new(re, im))
            .collect();
        Tensor::from_vec(values, &shape)
    };
    tensor.unwrap_or_else(|e| panic!("a malformed fixture array {json}: {e}"))
}

/// How a result tree is compared with a fixture tree: the same nesting (a tuple for a tuple, a
/// list for a list, a map with the fixture's keys in its order for a dict), and for every leaf
/// the same shape and dtype and values within `|got - want| <= rtol |want| + atol`. Every
/// mismatch is reported once, a leaf's with the number of values that differ and the worst.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    rtol: f64,
    atol: f64,
    /// Whether a struct may stand for a fixture dict (its fields compared with the keys as a
    /// set: fields keep their declaration order, a dict's keys are sorted).
    structs_as_dicts: bool,
}

impl Compare {
    pub const fn new(rtol: f64, atol: f64) -> Self {
        Compare {
            rtol,
            atol,
            structs_as_dicts: false,
        }
    }

    /// Accepts a struct where the fixture has a dict.
    pub const fn structs_as_dicts(self) -> Self {
        Compare {
            structs_as_dicts: true,
            ..self
        }
    }

    /// The mismatches of `node` with the fixture tree `want`, each prefixed with its `path`.
    pub fn errors(&self, path: &str, node: &Node, want: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.tree(path, node, want, &mut errors);
        errors
    }

    /// Panics with the mismatches of `node` with the fixture tree `want`, if any.
    #[track_caller]
    pub fn assert(&self, path: &str, node: &Node, want: &Value) {
        let errors = self.errors(path, node, want);
        assert!(errors.is_empty(), "{path}:\n{}", errors.join("\n"));
    }

    /// Compares `node` with the fixture tree `want`; mismatches are appended to `errors`.
    pub fn tree(&self, path: &str, node: &Node, want: &Value, errors: &mut Vec<String>) {
        let obj = want
            .as_object()
            .unwrap_or_else(|| panic!("{path}: malformed fixture tree {want}"));
        if obj.contains_key("shape") {
            self.leaf(path, node, want, errors);
        } else if let Some(items) = obj.get("tuple").or_else(|| obj.get("list")) {
            let items = items.as_array().expect("tuple or list items");
            let children = match (node, obj.contains_key("tuple")) {
                (Node::Tuple(c), true) | (Node::List(c), false) => c,
                (_, tuple) => {
                    let what = if tuple { "a tuple" } else { "a list" };
                    errors.push(format!("{path}: expected {what}, got {}", kind(node)));
                    return;
                }
            };
            if children.len() != items.len() {
                errors.push(format!(
                    "{path}: {} entries, expected {}",
                    children.len(),
                    items.len()
                ));
                return;
            }
            for (i, (n, e)) in children.iter().zip(items).enumerate() {
                self.tree(&format!("{path}[{i}]"), n, e, errors);
            }
        } else if let Some(entries) = obj.get("dict") {
            let entries = entries.as_object().expect("dict entries");
            let want_keys: Vec<&str> = entries.keys().map(String::as_str).collect();
            let keys: Vec<&str> = match node {
                // A map keeps JAX's sorted key order.
                Node::Map(c) => c.iter().map(|(k, _)| k.as_str()).collect(),
                Node::Struct { fields, .. } if self.structs_as_dicts => {
                    let mut keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
                    keys.sort_unstable();
                    keys
                }
                _ => {
                    errors.push(format!("{path}: expected a dict, got {}", kind(node)));
                    return;
                }
            };
            if keys != want_keys {
                errors.push(format!("{path}: keys {keys:?}, expected {want_keys:?}"));
                return;
            }
            for (k, e) in entries {
                let n = node.key(k).expect("key checked above");
                self.tree(&format!("{path}[{k:?}]"), n, e, errors);
            }
        } else {
            panic!("{path}: malformed fixture tree {want}");
        }
    }

    fn leaf(&self, path: &str, node: &Node, want: &Value, errors: &mut Vec<String>) {
        let Node::Leaf(t) = node else {
            errors.push(format!("{path}: expected an array, got {}", kind(node)));
            return;
        };
        let want = json_tensor(want);
        let (shape, dtype) = (want.shape().unwrap(), want.dtype().unwrap());
        let (got_shape, got_dtype) = match (t.shape(), t.dtype()) {
            (Ok(s), Ok(d)) => (s, d),
            _ => {
                errors.push(format!("{path}: a failed tensor: {t}"));
                return;
            }
        };
        if got_shape != shape || got_dtype != dtype {
            errors.push(format!(
                "{path}: {got_dtype} {got_shape:?}, expected {dtype} {shape:?}"
            ));
            return;
        }
        let mismatch = if dtype == DType::C128 {
            self.values::<Complex64>(t, &want)
        } else {
            self.values::<f64>(t, &want)
        };
        if let Some(e) = mismatch {
            errors.push(format!("{path}: {e}"));
        }
    }

    /// How the values of `got` differ from those of `want` (same shape), if they do.
    fn values<T: Scalar>(&self, got: &Tensor, want: &Tensor) -> Option<String> {
        let got = match got.to_vec::<T>() {
            Ok(v) => v,
            Err(e) => return Some(format!("no values ({e})")),
        };
        let want = want.to_vec::<T>().expect("fixture values");
        let mut bad = 0;
        let mut worst: Option<(usize, f64)> = None;
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            let gap = (a - b).magnitude();
            // A NaN on either side is a mismatch.
            let within = gap <= self.rtol * b.magnitude() + self.atol;
            if !within {
                bad += 1;
                let gap = if gap.is_nan() { f64::INFINITY } else { gap };
                if worst.is_none_or(|(_, g)| gap > g) {
                    worst = Some((i, gap));
                }
            }
        }
        let (i, _) = worst?;
        Some(format!(
            "{bad} of {} values differ, worst at flat index {i}: {:e} vs {:e} expected",
            got.len(),
            got[i],
            want[i]
        ))
    }
}

/// What a tree is, for messages.
fn kind(node: &Node) -> String {
    match node {
        Node::Leaf(t) => match t.shape() {
            Ok(shape) => format!("an array of shape {shape:?}"),
            Err(e) => format!("a failed tensor ({e})"),
        },
        Node::Tuple(c) => format!("a tuple of {}", c.len()),
        Node::List(c) => format!("a list of {}", c.len()),
        Node::Map(c) => format!("a map of {}", c.len()),
        Node::Struct { name, .. } => format!("struct {name}"),
    }
}

/// What one golden case returned: the Hessian, and the value and aux output when asked for.
pub struct Outcome {
    pub hessian: Node,
    pub value: Option<Node>,
    pub aux: Option<Node>,
}

impl Compare {
    /// Compares a case's [`Outcome`] with the fixture case `json` (its `"hessian"`, `"value"`
    /// and `"aux"`, the last two `null` when not returned); returns the mismatches.
    pub fn outcome(&self, json: &Value, outcome: &Outcome) -> Vec<String> {
        let mut errors = self.errors("hessian", &outcome.hessian, &json["hessian"]);
        for (what, got) in [("value", &outcome.value), ("aux", &outcome.aux)] {
            match (got, &json[what]) {
                (None, Value::Null) => {}
                (Some(node), want) if !want.is_null() => self.tree(what, node, want, &mut errors),
                (got, want) => errors.push(format!(
                    "{what}: returned {}, fixture has {}",
                    if got.is_some() {
                        "something"
                    } else {
                        "nothing"
                    },
                    if want.is_null() { "null" } else { "a tree" }
                )),
            }
        }
        errors
    }
}
