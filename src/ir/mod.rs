//! Programs: the SSA form that tracing records and transforms rewrite.
//!
//! A [`Program`] is a list of equations `outs = prim[params] ins...`, each defining new
//! variables, over inputs and shared constants. Derivative programs are ordinary programs, so
//! every transform applies to the output of every other. Printing follows `jax.make_jaxpr`:
//!
//! ```text
//! { lambda c:f64[3] ; a:f64[3]. let
//!     b:f64[3] = mul a a
//!     d:f64[] = reduce_sum[axes=(0,)] b
//!   in (d) }
//! ```
//!
//! This module knows programs as graphs only: it is generic over the primitive type `P`, so it
//! sits below the primitive set (which names its programs [`crate::Program`]) and its passes
//! (in `passes`) work on the structure alone.
//!
//! ```
//! use brainstate::{make_program, Tensor};
//! let p = make_program(|x: &Tensor| (x * x).sum(), &Tensor::from([1.0, 2.0, 3.0])).unwrap();
//! assert!(p.to_string().contains("= reduce_sum[axes=(0,)]"));
//! ```

pub(crate) mod passes;

use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use crate::storage::{Aval, Data};

/// A variable of a program: an index into its table of shapes and dtypes.
///
/// ```
/// use brainstate::{make_program, Tensor};
/// let p = make_program(|x: &Tensor| x * 2.0, &Tensor::from([1.0, 2.0])).unwrap();
/// // variables print as `name:dtype[shape]`: the constant `b`, the input `a`, the product `c`
/// assert!(p.to_string().contains("c:f64[2] = mul a b"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(u32);

impl Var {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// One step of a program: `outputs = prim(inputs)`. Most primitives have one output; loops and
/// fused kernels have several, as JAX's equations have several `outvars`.
///
/// ```
/// use brainstate::{make_program, Tensor};
/// let p = make_program(|x: &Tensor| (x * x).sum(), &Tensor::from([1.0, 2.0])).unwrap();
/// assert_eq!(p.len(), 2); // one equation per line between `let` and `in`
/// assert_eq!(p.to_string().lines().filter(|l| l.contains(" = ")).count(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Eqn<P> {
    pub(crate) prim: P,
    pub(crate) inputs: Vec<Var>,
    pub(crate) outputs: Vec<Var>,
    /// Where the user wrote the operation (for derived equations: the operation differentiated).
    pub(crate) source: Option<&'static Location<'static>>,
}

/// A traced or derived program over primitives of type `P`, printable in SSA form.
///
/// ```
/// use brainstate::{make_program, Tensor};
/// let program = make_program(|x: &Tensor| (x * x).sum(), &Tensor::from([1.0, 2.0])).unwrap();
/// let text = program.to_string();
/// assert!(text.contains("mul") && text.contains("reduce_sum"));
/// ```
#[derive(Clone, Debug)]
pub struct Program<P> {
    pub(crate) avals: Vec<Aval>,
    pub(crate) inputs: Vec<Var>,
    pub(crate) consts: Vec<(Var, Arc<Data>)>,
    pub(crate) eqns: Vec<Eqn<P>>,
    pub(crate) outputs: Vec<Var>,
    /// Remarks printed above the program, such as how a transform runs it.
    pub(crate) notes: Vec<String>,
}

impl<P> Default for Program<P> {
    fn default() -> Self {
        Program {
            avals: Vec::new(),
            inputs: Vec::new(),
            consts: Vec::new(),
            eqns: Vec::new(),
            outputs: Vec::new(),
            notes: Vec::new(),
        }
    }
}

impl<P> Program<P> {
    pub(crate) fn new_var(&mut self, aval: Aval) -> Var {
        self.avals.push(aval);
        Var(self.avals.len() as u32 - 1)
    }

    pub(crate) fn aval(&self, var: Var) -> &Aval {
        &self.avals[var.index()]
    }

    /// Shapes and dtypes of the inputs.
    ///
    /// ```
    /// use brainstate::{make_program, Aval, DType, Tensor};
    /// let p = make_program(|x: &Tensor| x.sum(), &Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!(p.input_avals(), vec![Aval { shape: vec![2], dtype: DType::F64 }]);
    /// ```
    pub fn input_avals(&self) -> Vec<Aval> {
        self.inputs.iter().map(|&v| self.aval(v).clone()).collect()
    }

    /// Shapes and dtypes of the outputs.
    ///
    /// ```
    /// use brainstate::{make_program, Aval, DType, Tensor};
    /// let p = make_program(|x: &Tensor| x.sum(), &Tensor::from([1.0, 2.0])).unwrap();
    /// assert_eq!(p.output_avals(), vec![Aval { shape: vec![], dtype: DType::F64 }]);
    /// ```
    pub fn output_avals(&self) -> Vec<Aval> {
        self.outputs.iter().map(|&v| self.aval(v).clone()).collect()
    }

    /// The number of equations.
    ///
    /// ```
    /// use brainstate::{make_program, Tensor};
    /// let p = make_program(|x: &Tensor| x.sin().cos(), &Tensor::from([1.0])).unwrap();
    /// assert_eq!(p.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.eqns.len()
    }

    /// Whether the program has no equations.
    ///
    /// ```
    /// use brainstate::{make_program, Tensor};
    /// assert!(make_program(|x: &Tensor| x.clone(), &Tensor::from([1.0])).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.eqns.is_empty()
    }
}

/// Variable names `a`..`z`, `ba`, `bb`, ... as in jaxprs.
fn var_name(var: Var) -> String {
    let mut n = var.index();
    let mut name = Vec::new();
    loop {
        name.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    name.reverse();
    String::from_utf8(name).expect("ascii")
}

impl<P: fmt::Display> fmt::Display for Program<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let typed = |v: &Var| format!("{}:{}", var_name(*v), self.aval(*v));
        let names = |vars: &[Var], sep: &str| {
            vars.iter()
                .map(|&v| var_name(v))
                .collect::<Vec<_>>()
                .join(sep)
        };
        for note in &self.notes {
            writeln!(f, "# {note}")?;
        }
        let consts: Vec<String> = self.consts.iter().map(|(v, _)| typed(v)).collect();
        let inputs: Vec<String> = self.inputs.iter().map(typed).collect();
        writeln!(
            f,
            "{{ lambda {} ; {}. let",
            consts.join(" "),
            inputs.join(" ")
        )?;
        for eqn in &self.eqns {
            let outs: Vec<String> = eqn.outputs.iter().map(typed).collect();
            let args = names(&eqn.inputs, " ");
            // A primitive printed on several lines (a loop and its body) is indented with
            // its equation.
            let prim = eqn.prim.to_string().replace('\n', "\n    ");
            writeln!(f, "    {} = {prim} {args}", outs.join(" "))?;
        }
        write!(f, "  in ({}) }}", names(&self.outputs, ", "))
    }
}
