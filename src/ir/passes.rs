//! Passes over a program's structure, whatever its primitives: dead code elimination, common
//! subexpression elimination, renumbering, and liveness. Each handles equations with several
//! outputs. Passes that need to evaluate primitives (constant folding) live with the executor.

use std::collections::HashMap;
use std::hash::Hash;

use super::{Eqn, Program, Var};

/// Primitives whose equations can shed outputs nobody reads, and then inputs: loops, whose
/// unused carries and per-step outputs are work inside their body.
pub(crate) trait Prune: Sized {
    /// A primitive computing the outputs flagged in `used` (and perhaps others it needs),
    /// which of its inputs it still reads and which of its outputs it keeps; `None` when it
    /// cannot shed anything.
    fn prune(&self, used: &[bool]) -> Option<(Self, Vec<bool>, Vec<bool>)>;
}

/// Primitives some of whose equations give the same result whatever the order of their
/// inputs (`a + b`, `a * b`): common subexpression elimination then merges `b * a` into
/// `a * b`. Derivative rules make such pairs (the tangent of `u * u` is `du * u + u * du`).
pub(crate) trait Commute {
    /// Whether the order of the inputs makes no difference to any bit of the result.
    fn commutes(&self) -> bool;
}

/// Common subexpressions merged, dead code dropped, variables renumbered.
pub(crate) fn clean<P>(program: Program<P>) -> Program<P>
where
    P: Clone + Eq + Hash + Prune + Commute,
{
    compact(dead_code(deduplicate(program)))
}

/// Drops the equations none of whose outputs reaches the program's outputs, and unused
/// constants; an equation that can shed its unused outputs (see [`Prune`]) does. Primitives
/// have no side effects, so this never changes a result.
pub(crate) fn dead_code<P: Prune>(mut program: Program<P>) -> Program<P> {
    let mut live = vec![false; program.avals.len()];
    for v in &program.outputs {
        live[v.index()] = true;
    }
    let mut kept = Vec::new();
    for mut eqn in program.eqns.drain(..).rev() {
        let used: Vec<bool> = eqn.outputs.iter().map(|v| live[v.index()]).collect();
        if !used.iter().any(|&u| u) {
            continue;
        }
        if let Some((prim, reads, kept)) = eqn.prim.prune(&used) {
            eqn.prim = prim;
            eqn.inputs = keep(&eqn.inputs, &reads);
            eqn.outputs = keep(&eqn.outputs, &kept);
        }
        for v in &eqn.inputs {
            live[v.index()] = true;
        }
        kept.push(eqn);
    }
    kept.reverse();
    program.eqns = kept;
    program.consts.retain(|(v, _)| live[v.index()]);
    program
}

/// The variables flagged in `flags`.
fn keep(vars: &[Var], flags: &[bool]) -> Vec<Var> {
    vars.iter()
        .zip(flags)
        .filter_map(|(&v, &k)| k.then_some(v))
        .collect()
}

/// Common subexpression elimination: an equation identical to an earlier one (same primitive
/// and inputs) is dropped, and its outputs are renamed to the earlier one's.
pub(crate) fn deduplicate<P>(mut program: Program<P>) -> Program<P>
where
    P: Clone + Eq + Hash + Commute,
{
    let mut rename: HashMap<Var, Var> = HashMap::new();
    let mut seen: HashMap<(P, Vec<Var>), Vec<Var>> = HashMap::new();
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for mut eqn in std::mem::take(&mut program.eqns) {
        for v in &mut eqn.inputs {
            *v = *rename.get(v).unwrap_or(v);
        }
        let mut inputs = eqn.inputs.clone();
        if eqn.prim.commutes() {
            inputs.sort();
        }
        let key = (eqn.prim.clone(), inputs);
        if let Some(earlier) = seen.get(&key) {
            rename.extend(eqn.outputs.iter().copied().zip(earlier.iter().copied()));
            continue;
        }
        seen.insert(key, eqn.outputs.clone());
        eqns.push(eqn);
    }
    for v in &mut program.outputs {
        *v = *rename.get(v).unwrap_or(v);
    }
    program.eqns = eqns;
    program
}

/// Renumbers variables in order of definition (inputs, constants, equation outputs), dropping
/// those no longer defined.
pub(crate) fn compact<P: Clone>(program: Program<P>) -> Program<P> {
    let mut out = Program::default();
    let mut map: HashMap<Var, Var> = HashMap::new();
    let define = |out: &mut Program<P>, map: &mut HashMap<Var, Var>, v: Var| {
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
        let outputs = eqn
            .outputs
            .iter()
            .map(|&v| define(&mut out, &mut map, v))
            .collect();
        out.eqns.push(Eqn {
            prim: eqn.prim.clone(),
            inputs,
            outputs,
            source: eqn.source,
        });
    }
    out.outputs = program.outputs.iter().map(|v| map[v]).collect();
    out.notes = program.notes.clone();
    out
}

/// Liveness: for each equation, the variables that are dead once it has run (their last use,
/// or their definition when nothing uses them). Program outputs never die.
pub(crate) fn last_uses<P>(program: &Program<P>) -> Vec<Vec<Var>> {
    let mut last: HashMap<Var, usize> = HashMap::new();
    for (i, eqn) in program.eqns.iter().enumerate() {
        for &v in eqn.inputs.iter().chain(&eqn.outputs) {
            last.insert(v, i);
        }
    }
    for v in &program.outputs {
        last.remove(v);
    }
    let mut dies = vec![Vec::new(); program.eqns.len()];
    for (v, i) in last {
        dies[i].push(v);
    }
    for vars in &mut dies {
        vars.sort();
    }
    dies
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Aval, DType};

    /// A toy primitive set: the passes only look at structure.
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    enum Toy {
        Add,
        Sub,
        /// Two outputs.
        Split,
    }

    impl Prune for Toy {
        fn prune(&self, _used: &[bool]) -> Option<(Self, Vec<bool>, Vec<bool>)> {
            None
        }
    }

    impl Commute for Toy {
        fn commutes(&self) -> bool {
            *self == Toy::Add
        }
    }

    fn scalar() -> Aval {
        Aval::new(&[], DType::F64)
    }

    /// A program builder: `eqn(prim, inputs, n_outputs)` returns the new outputs.
    struct Builder(Program<Toy>);

    impl Builder {
        fn new(n_inputs: usize) -> Builder {
            let mut p = Program::default();
            for _ in 0..n_inputs {
                let v = p.new_var(scalar());
                p.inputs.push(v);
            }
            Builder(p)
        }
        fn input(&self, i: usize) -> Var {
            self.0.inputs[i]
        }
        fn eqn(&mut self, prim: Toy, inputs: &[Var], n: usize) -> Vec<Var> {
            let outputs: Vec<Var> = (0..n).map(|_| self.0.new_var(scalar())).collect();
            self.0.eqns.push(Eqn {
                prim,
                inputs: inputs.to_vec(),
                outputs: outputs.clone(),
                source: None,
            });
            outputs
        }
        fn finish(mut self, outputs: &[Var]) -> Program<Toy> {
            self.0.outputs = outputs.to_vec();
            self.0
        }
    }

    #[test]
    fn dead_code_keeps_an_equation_when_any_output_is_used() {
        let mut b = Builder::new(1);
        let x = b.input(0);
        let pair = b.eqn(Toy::Split, &[x], 2);
        let unused = b.eqn(Toy::Add, &[x, x], 1);
        let y = b.eqn(Toy::Add, &[pair[1], x], 1);
        let p = dead_code(b.finish(&y));
        assert_eq!(p.eqns.len(), 2);
        assert_eq!(p.eqns[0].prim, Toy::Split);
        assert!(p.eqns.iter().all(|e| e.outputs != unused));
    }

    #[test]
    fn deduplicate_renames_every_output_of_a_repeated_equation() {
        let mut b = Builder::new(1);
        let x = b.input(0);
        let first = b.eqn(Toy::Split, &[x], 2);
        let second = b.eqn(Toy::Split, &[x], 2);
        let sum = b.eqn(Toy::Add, &[second[0], second[1]], 1);
        let p = deduplicate(b.finish(&[sum[0], second[1]]));
        assert_eq!(p.eqns.len(), 2);
        assert_eq!(p.eqns[1].inputs, first);
        assert_eq!(p.outputs, vec![sum[0], first[1]]);
    }

    #[test]
    fn deduplicate_sees_through_earlier_renames() {
        let mut b = Builder::new(1);
        let x = b.input(0);
        let a1 = b.eqn(Toy::Add, &[x, x], 1);
        let a2 = b.eqn(Toy::Add, &[x, x], 1);
        let c1 = b.eqn(Toy::Add, &[a1[0], x], 1);
        let c2 = b.eqn(Toy::Add, &[a2[0], x], 1);
        let p = deduplicate(b.finish(&[c1[0], c2[0]]));
        assert_eq!(p.eqns.len(), 2);
        assert_eq!(p.outputs, vec![c1[0], c1[0]]);
    }

    #[test]
    fn deduplicate_merges_commuted_inputs_of_commuting_primitives_only() {
        let mut b = Builder::new(2);
        let (x, y) = (b.input(0), b.input(1));
        let xy = b.eqn(Toy::Add, &[x, y], 1);
        let yx = b.eqn(Toy::Add, &[y, x], 1);
        let d1 = b.eqn(Toy::Sub, &[x, y], 1);
        let d2 = b.eqn(Toy::Sub, &[y, x], 1);
        let p = deduplicate(b.finish(&[xy[0], yx[0], d1[0], d2[0]]));
        assert_eq!(p.eqns.len(), 3);
        assert_eq!(p.outputs, vec![xy[0], xy[0], d1[0], d2[0]]);
    }

    #[test]
    fn compact_numbers_variables_in_order_of_definition() {
        let mut b = Builder::new(1);
        let x = b.input(0);
        let _dead = b.eqn(Toy::Add, &[x, x], 1);
        let pair = b.eqn(Toy::Split, &[x], 2);
        let p = compact(dead_code(b.finish(&[pair[1], pair[0]])));
        assert_eq!(p.avals.len(), 3);
        assert_eq!(p.eqns[0].outputs, vec![Var(1), Var(2)]);
        assert_eq!(p.outputs, vec![Var(2), Var(1)]);
    }

    #[test]
    fn liveness_frees_each_variable_after_its_last_use() {
        let mut b = Builder::new(2);
        let (x, y) = (b.input(0), b.input(1));
        let pair = b.eqn(Toy::Split, &[x], 2); // pair[1] is never used
        let s = b.eqn(Toy::Add, &[pair[0], y], 1);
        let t = b.eqn(Toy::Add, &[s[0], y], 1);
        let p = b.finish(&t);
        let dies = last_uses(&p);
        assert_eq!(dies[0], vec![x, pair[1]]);
        assert_eq!(dies[1], vec![pair[0]]);
        assert_eq!(dies[2], vec![y, s[0]]); // the output t stays alive
    }
}
