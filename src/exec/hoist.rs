//! Loop-invariant code motion: the equations of a loop's body that read only its constants
//! are computed once, before the loop, and passed in as constants.
//!
//! Derived loops are full of them: the JVP of `W @ r` transposes the tangent of `W` at every
//! step, the transpose of a body transposes `W`, a tangent basis is reshaped. Nested loops are
//! treated from the inside out, so a value invariant in every level moves out of all of them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ir::{Eqn, Var};
use crate::primitives::{Loop, Prim, Program, Structural};

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

/// `program` with each loop's per-step outputs that only restate a per-step input (its step's
/// slice reshaped, or transposed without reordering its elements) taken from that input's
/// stack, reshaped after the loop: the loop no longer copies a stack it was handed.
pub(super) fn restate_stacked_inputs(mut program: Program) -> Program {
    let mut eqns = Vec::with_capacity(program.eqns.len());
    for mut eqn in std::mem::take(&mut program.eqns) {
        let Prim::Loop(the_loop) = &eqn.prim else {
            eqns.push(eqn);
            continue;
        };
        let body = &*the_loop.body;
        let (first_x, n_carry) = (the_loop.consts + the_loop.carry, the_loop.carry);
        let mut restated = Vec::new();
        let stacked = &body.outputs[n_carry..n_carry + the_loop.n_stacked()];
        for (j, &y) in stacked.iter().enumerate() {
            let Some(k) = body.inputs[first_x..]
                .iter()
                .position(|&x| x == same_elements(body, y))
            else {
                continue;
            };
            let out = eqn.outputs[n_carry + j];
            // The loop's output becomes a fresh value nobody reads (dead code drops it).
            eqn.outputs[n_carry + j] = program.new_var(program.aval(out).clone());
            restated.push(Eqn {
                prim: Structural::Reshape(program.aval(out).shape.clone()).into(),
                inputs: vec![eqn.inputs[first_x + k]],
                outputs: vec![out],
                source: eqn.source,
            });
        }
        eqns.push(eqn);
        eqns.extend(restated);
    }
    program.eqns = eqns;
    program
}

/// The value of `body` whose elements `v` holds in the same order: `v` itself, or the operand
/// of the reshapes (and transposes moving only axes of length one) it is computed by.
fn same_elements(body: &Program, mut v: Var) -> Var {
    while let Some(eqn) = body.eqns.iter().find(|e| e.outputs.contains(&v)) {
        let keeps_order = match &eqn.prim {
            Prim::Structural(Structural::Reshape(_)) => true,
            Prim::Structural(Structural::Transpose(perm)) => {
                super::simplify::moves_only_unit_axes(perm, &body.aval(eqn.inputs[0]).shape)
            }
            _ => false,
        };
        if !keeps_order {
            break;
        }
        v = eqn.inputs[0];
    }
    v
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

    #[test]
    fn per_step_outputs_restating_an_input_come_from_its_stack() {
        use crate::ir::Eqn;
        use crate::primitives::{BinaryOp, Loop, Prim, Structural};
        use crate::storage::{Aval, DType};
        let aval = |shape: &[usize]| Aval::new(shape, DType::F64);
        let eqn = |prim: Prim, inputs, outputs| Eqn {
            prim,
            inputs,
            outputs,
            source: None,
        };
        // body (h, x) -> (h + x, x as a column, its row again): the last two restate x.
        let mut body = crate::Program::default();
        let (h, x) = (body.new_var(aval(&[3])), body.new_var(aval(&[3])));
        body.inputs = vec![h, x];
        let next = body.push(BinaryOp::Add, &[h, x]);
        let column = body.push(Structural::Reshape(vec![3, 1]), &[x]);
        let row = body.push(Structural::Transpose(vec![1, 0]), &[column]);
        body.outputs = vec![next, column, row];
        let mut program = crate::Program::default();
        let (h0, xs) = (program.new_var(aval(&[3])), program.new_var(aval(&[4, 3])));
        let last = program.new_var(aval(&[3]));
        let (columns, rows) = (
            program.new_var(aval(&[4, 3, 1])),
            program.new_var(aval(&[4, 1, 3])),
        );
        program.inputs = vec![h0, xs];
        program.eqns = vec![eqn(
            Loop::new(body, 0, 1, 4).into(),
            vec![h0, xs],
            vec![last, columns, rows],
        )];
        program.outputs = vec![last, columns, rows];
        let restated = crate::ir::passes::clean(super::restate_stacked_inputs(program.clone()));
        let Prim::Loop(the_loop) = &restated.eqns[0].prim else {
            panic!("{restated}")
        };
        assert_eq!(the_loop.body.outputs.len(), 1, "{restated}");
        // Planned (the restated program) and equation by equation (the original one).
        let h0 = Tensor::from([1.0, 2.0, 3.0]);
        let xs = Tensor::from_vec((0..12).map(f64::from).collect(), &[4, 3]).unwrap();
        let ins = [h0.data().unwrap().clone(), xs.data().unwrap().clone()];
        let values = |out: Vec<std::sync::Arc<crate::storage::Data>>| {
            out.into_iter()
                .map(|d| Tensor::from_shared(d).to_vec::<f64>().unwrap())
                .collect::<Vec<_>>()
        };
        let planned = values(crate::exec::Plan::new(restated).run(&ins, false).unwrap());
        let reference = crate::primitives::loops::run_reference(&program, &ins).unwrap();
        assert_eq!(planned, values(reference));
    }
}
