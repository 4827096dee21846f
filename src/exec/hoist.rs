//! Loop-invariant code motion: the equations of a loop's body that read only its constants
//! are computed once, before the loop, and passed in as constants.
//!
//! Derived loops are full of them: the JVP of `W @ r` transposes the tangent of `W` at every
//! step, the transpose of a body transposes `W`, a tangent basis is reshaped. Nested loops are
//! treated from the inside out, so a value invariant in every level moves out of all of them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ir::{Eqn, Var};
use crate::primitives::{Loop, Prim, Program};

/// `program` with the invariant work of each loop (and of loops nested in their bodies)
/// moved before it.
pub(super) fn hoist_invariants(mut program: Program) -> Program {
    if !program.eqns.iter().any(|e| matches!(e.prim, Prim::Loop(_))) {
        return program;
    }
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for eqn in std::mem::take(&mut program.eqns) {
        let Prim::Loop(the_loop) = &eqn.prim else {
            eqns.push(eqn);
            continue;
        };
        let body = hoist_invariants((*the_loop.body).clone());
        let (moved, kept) = split_body(&body, the_loop.consts);
        if moved.is_empty() {
            let mut inner = the_loop.clone();
            inner.body = Arc::new(body);
            eqns.push(Eqn {
                prim: Prim::Loop(inner),
                ..eqn
            });
            continue;
        }
        // The moved equations, replayed before the loop on its constants.
        let mut outer: HashMap<Var, Var> = HashMap::new();
        for (k, &v) in body.inputs[..the_loop.consts].iter().enumerate() {
            outer.insert(v, eqn.inputs[k]);
        }
        for (v, data) in &body.consts {
            let var = program.new_var(body.aval(*v).clone());
            program.consts.push((var, data.clone()));
            outer.insert(*v, var);
        }
        for e in &moved {
            let b = &body.eqns[*e];
            let outputs = b
                .outputs
                .iter()
                .map(|&v| {
                    let var = program.new_var(body.aval(v).clone());
                    outer.insert(v, var);
                    var
                })
                .collect();
            eqns.push(Eqn {
                prim: b.prim.clone(),
                inputs: b.inputs.iter().map(|v| outer[v]).collect(),
                outputs,
                source: b.source,
            });
        }
        // The moved values the rest of the body reads become constants of the loop.
        let mut read = vec![false; body.avals.len()];
        for e in &kept {
            for v in &body.eqns[*e].inputs {
                read[v.index()] = true;
            }
        }
        for v in &body.outputs {
            read[v.index()] = true;
        }
        let passed: Vec<Var> = moved
            .iter()
            .flat_map(|e| body.eqns[*e].outputs.iter().copied())
            .filter(|v| read[v.index()])
            .collect();
        let nc = the_loop.consts;
        let mut new_body = body.clone();
        new_body.eqns = kept.iter().map(|e| body.eqns[*e].clone()).collect();
        new_body.inputs = body.inputs[..nc].to_vec();
        new_body.inputs.extend(&passed);
        new_body.inputs.extend(&body.inputs[nc..]);
        let mut inputs = eqn.inputs[..nc].to_vec();
        inputs.extend(passed.iter().map(|v| outer[v]));
        inputs.extend(&eqn.inputs[nc..]);
        let widen = |flags: &[bool]| {
            if flags.is_empty() {
                return Vec::new();
            }
            let mut out = flags[..nc].to_vec();
            out.resize(nc + passed.len(), false);
            out.extend(&flags[nc..]);
            out
        };
        let hoisted = Loop {
            body: Arc::new(crate::ir::passes::compact(new_body)),
            consts: nc + passed.len(),
            linear: widen(&the_loop.linear),
            units: the_loop.units.as_ref().map(|u| {
                let (ins, outs) = &**u;
                let mut widened = ins[..nc].to_vec();
                widened.resize(nc + passed.len(), None);
                widened.extend(&ins[nc..]);
                Arc::new((widened, outs.clone()))
            }),
            ..the_loop.clone()
        };
        eqns.push(Eqn {
            prim: Prim::Loop(hoisted),
            inputs,
            ..eqn
        });
    }
    program.eqns = eqns;
    program
}

/// The equations of `body` that read only its first `consts` inputs, its constants and each
/// other (in order), and the others.
fn split_body(body: &Program, consts: usize) -> (Vec<usize>, Vec<usize>) {
    let mut invariant = vec![false; body.avals.len()];
    for v in &body.inputs[..consts] {
        invariant[v.index()] = true;
    }
    for (v, _) in &body.consts {
        invariant[v.index()] = true;
    }
    let (mut moved, mut kept) = (Vec::new(), Vec::new());
    for (e, eqn) in body.eqns.iter().enumerate() {
        if eqn.inputs.iter().all(|v| invariant[v.index()]) {
            for v in &eqn.outputs {
                invariant[v.index()] = true;
            }
            moved.push(e);
        } else {
            kept.push(e);
        }
    }
    (moved, kept)
}

#[cfg(test)]
mod tests {
    use crate::{Scan, Tensor, make_program};

    #[test]
    fn invariant_work_moves_before_the_loop() {
        let f = |w: &Tensor, x: &Tensor| {
            let body = |h: &Tensor, _: &()| ((w.transpose().exp().matmul(h) + x).tanh(), ());
            Scan::new().length(5).scan(body, x, &()).unwrap().0
        };
        let (w, x) = (
            Tensor::from([[0.1, 0.2], [0.3, -0.4]]),
            Tensor::from([1.0, -1.0]),
        );
        let program = make_program(f, (&w, &x)).unwrap();
        let hoisted = super::hoist_invariants(program.clone());
        let text = hoisted.to_string();
        // transpose and exp now come before the loop; the body keeps the rest.
        let before = &text[..text.find("scan[").unwrap()];
        assert!(
            before.contains("transpose") && before.contains("exp"),
            "{text}"
        );
        let body = &text[text.find("jaxpr").unwrap()..];
        assert!(!body.contains("exp") && body.contains("tanh"), "{text}");
        let run = |p: crate::Program| {
            let plan = crate::exec::Plan::new(p);
            let ins = [w.data().unwrap().clone(), x.data().unwrap().clone()];
            let out = plan.run(&ins, false).unwrap();
            Tensor::from_shared(out[0].clone()).to_vec::<f64>().unwrap()
        };
        assert_eq!(run(hoisted), run(program));
        assert_eq!(
            run(make_program(f, (&w, &x)).unwrap()),
            f(&w, &x).to_vec::<f64>().unwrap()
        );
    }
}
