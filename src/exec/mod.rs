//! Execution: simplifying a program, planning it, and running it on concrete data.
//!
//! [`simplify`] folds small constant subprograms, merges common subexpressions, removes dead
//! equations and renumbers variables. A [`Plan`] is a simplified program with, for every
//! equation, the buffers that die after it, so that running frees memory as early as possible.
//! The transforms never look inside this module: they produce programs, and this runs them.

pub(crate) mod pool;

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ir::{Eqn, Program, Var};
use crate::primitives::Prim;
use crate::tensor::Data;

/// Largest output (in elements) that constant folding computes ahead of time. Larger constant
/// subprograms, like tangent bases, stay generators that run with the program.
const FOLD_LIMIT: usize = 4096;

/// Folds small constants, merges duplicates, drops dead code and renumbers variables.
pub(crate) fn simplify(program: Program) -> Program {
    compact(dead_code(deduplicate(fold_constants(program))))
}

fn fold_constants(mut program: Program) -> Program {
    let mut known: HashMap<Var, Arc<Data>> = program.consts.iter().cloned().collect();
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for eqn in std::mem::take(&mut program.eqns) {
        // Creation primitives stay generators: a tangent basis is never stored as a constant.
        let creates = matches!(eqn.prim, Prim::Eye { .. } | Prim::Iota { .. });
        let foldable = !creates
            && program.aval(eqn.out).numel() <= FOLD_LIMIT
            && eqn.inputs.iter().all(|v| known.contains_key(v));
        if foldable {
            let ins: Vec<&Data> = eqn.inputs.iter().map(|v| &*known[v]).collect();
            if let Ok(data) = eqn.prim.eval(&ins) {
                let data = Arc::new(data);
                program.consts.push((eqn.out, data.clone()));
                known.insert(eqn.out, data);
                continue;
            }
        }
        eqns.push(eqn);
    }
    program.eqns = eqns;
    program
}

/// Common subexpression elimination: an equation identical to an earlier one (same primitive
/// and inputs) is replaced by it.
fn deduplicate(mut program: Program) -> Program {
    let mut rename: HashMap<Var, Var> = HashMap::new();
    let mut seen: HashMap<(Prim, Vec<Var>), Var> = HashMap::new();
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for mut eqn in std::mem::take(&mut program.eqns) {
        for v in &mut eqn.inputs {
            *v = *rename.get(v).unwrap_or(v);
        }
        let key = (eqn.prim.clone(), eqn.inputs.clone());
        if let Some(&earlier) = seen.get(&key) {
            rename.insert(eqn.out, earlier);
            continue;
        }
        seen.insert(key, eqn.out);
        eqns.push(eqn);
    }
    for v in &mut program.outputs {
        *v = *rename.get(v).unwrap_or(v);
    }
    program.eqns = eqns;
    program
}

fn dead_code(mut program: Program) -> Program {
    let mut live = vec![false; program.avals.len()];
    for v in &program.outputs {
        live[v.index()] = true;
    }
    let mut kept: Vec<Eqn> = Vec::new();
    for eqn in program.eqns.drain(..).rev() {
        if live[eqn.out.index()] {
            for v in &eqn.inputs {
                live[v.index()] = true;
            }
            kept.push(eqn);
        }
    }
    kept.reverse();
    program.eqns = kept;
    program.consts.retain(|(v, _)| live[v.index()]);
    program
}

/// Renumbers variables in order of definition (inputs, constants, equations).
fn compact(program: Program) -> Program {
    let mut out = Program::default();
    let mut map: HashMap<Var, Var> = HashMap::new();
    let define = |out: &mut Program, map: &mut HashMap<Var, Var>, v: Var| {
        let new = out.new_var(program.aval(v).clone());
        map.insert(v, new);
        new
    };
    for &v in &program.inputs {
        let new = define(&mut out, &mut map, v);
        out.inputs.push(new);
    }
    for (v, data) in &program.consts {
        let new = define(&mut out, &mut map, *v);
        out.consts.push((new, data.clone()));
    }
    for eqn in &program.eqns {
        let inputs = eqn.inputs.iter().map(|v| map[v]).collect();
        let new = define(&mut out, &mut map, eqn.out);
        out.eqns.push(Eqn {
            prim: eqn.prim.clone(),
            inputs,
            out: new,
            source: eqn.source,
        });
    }
    out.outputs = program.outputs.iter().map(|v| map[v]).collect();
    out
}

/// A program ready to run many times.
#[derive(Debug)]
pub(crate) struct Plan {
    pub program: Program,
    /// For each equation, the variables whose last use it is.
    frees: Vec<Vec<Var>>,
}

impl Plan {
    pub fn new(program: Program) -> Plan {
        let mut last_use: HashMap<Var, usize> = HashMap::new();
        for (i, eqn) in program.eqns.iter().enumerate() {
            for &v in &eqn.inputs {
                last_use.insert(v, i);
            }
        }
        for v in &program.outputs {
            last_use.remove(v);
        }
        let mut frees = vec![Vec::new(); program.eqns.len()];
        for (v, i) in last_use {
            frees[i].push(v);
        }
        Plan { program, frees }
    }

    /// Evaluates an elementwise equation in the buffer of an operand that dies here, when one
    /// has the output's shape and dtype and nothing else holds it.
    fn in_place(&self, eqn: &Eqn, frees: &[Var], env: &mut [Option<Arc<Data>>]) -> Option<Data> {
        if !matches!(eqn.prim, Prim::Unary(_) | Prim::Binary(_) | Prim::PowI(_)) {
            return None;
        }
        let out = self.program.aval(eqn.out);
        for (slot, &v) in eqn.inputs.iter().enumerate() {
            let reusable = frees.contains(&v)
                && eqn.inputs.iter().filter(|&&u| u == v).count() == 1
                && env[v.index()].as_ref().is_some_and(|d| {
                    Arc::strong_count(d) == 1
                        && d.shape() == out.shape.as_slice()
                        && d.dtype() == out.dtype
                });
            if !reusable {
                continue;
            }
            let mut target = Arc::try_unwrap(env[v.index()].take()?).ok()?;
            let other = eqn
                .inputs
                .get(1 - slot)
                .and_then(|u| env[u.index()].as_deref());
            if crate::primitives::eval_in_place(&eqn.prim, &mut target, slot, other) {
                return Some(target);
            }
            env[v.index()] = Some(Arc::new(target));
            return None;
        }
        None
    }

    /// Runs the program. With `check_finite`, the first equation whose output holds a NaN or
    /// an infinity is reported as an error instead.
    pub fn run(&self, inputs: &[Arc<Data>], check_finite: bool) -> Result<Vec<Arc<Data>>> {
        let program = &self.program;
        let mut env: Vec<Option<Arc<Data>>> = vec![None; program.avals.len()];
        for (&v, data) in program.inputs.iter().zip(inputs) {
            env[v.index()] = Some(data.clone());
        }
        for (v, data) in &program.consts {
            env[v.index()] = Some(data.clone());
        }
        for (eqn, frees) in program.eqns.iter().zip(&self.frees) {
            let out = match self.in_place(eqn, frees, &mut env) {
                Some(out) => out,
                None => {
                    let ins: Vec<&Data> = eqn
                        .inputs
                        .iter()
                        .map(|v| {
                            &**env[v.index()]
                                .as_ref()
                                .expect("planned programs define before use")
                        })
                        .collect();
                    eqn.prim.eval(&ins)?
                }
            };
            if check_finite && !out.all_finite() {
                return Err(Error::NonFinite {
                    primitive: eqn.prim.to_string(),
                    input_shapes: eqn
                        .inputs
                        .iter()
                        .map(|&v| program.aval(v).shape.clone())
                        .collect(),
                    source_hint: eqn
                        .source
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
                });
            }
            env[eqn.out.index()] = Some(Arc::new(out));
            for v in frees {
                if let Some(dead) = env[v.index()].take() {
                    if let Ok(data) = Arc::try_unwrap(dead) {
                        pool::recycle(data);
                    }
                }
            }
        }
        Ok(program
            .outputs
            .iter()
            .map(|v| env[v.index()].clone().expect("outputs are defined"))
            .collect())
    }
}
