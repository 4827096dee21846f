//! Plans: a simplified program with its liveness, ready to run many times.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Error, Result};
use std::collections::HashMap;

use super::coefficients::factor_coefficients;
use super::fuse::{Step, fuse};
use super::loops::LoopPlan;
use crate::ir::Var;
use crate::ir::passes::last_uses;
use crate::primitives::{Elementwise, Eqn, Prim, Program, Structural, eval_in_place};
use crate::storage::{Data, pool};

/// A program ready to run many times.
#[derive(Debug)]
pub(crate) struct Plan {
    pub program: Program,
    /// For each equation, the variables dead once it has run (for running equation by
    /// equation, as `debug_nan` does).
    frees: Vec<Vec<Var>>,
    /// The fused steps, each with the variables dead once it has run.
    pub(super) steps: Vec<(Step, Vec<Var>)>,
    /// For each loop equation, its body's plan.
    loops: Vec<Option<LoopPlan>>,
    /// The variables only matrix products read (not outputs), which may be left in any
    /// layout: a transpose into one of them permutes strides instead of copying.
    read_by_matmul_only: HashSet<Var>,
}

impl Plan {
    /// The plan of `program`, simplified and fused.
    pub fn new(program: Program) -> Plan {
        let program = super::simplify(program);
        let frees = last_uses(&program);
        let steps = fuse(&program);
        let dying = step_frees(&program, &steps);
        let loops = program
            .eqns
            .iter()
            .map(|eqn| match &eqn.prim {
                Prim::Loop(l) => Some(LoopPlan::new(l)),
                _ => None,
            })
            .collect();
        let read_by_matmul_only = read_by_matmul_only(&program);
        Plan {
            program,
            frees,
            steps: steps.into_iter().zip(dying).collect(),
            loops,
            read_by_matmul_only,
        }
    }

    /// The plan of `program`, whose values are derivatives linear in its last input (a
    /// sweep's seed): as [`Plan::new`], with the arithmetic linear in one large value done as
    /// one product by a small coefficient ([`factor_coefficients`]). That regrouping may change
    /// the last bits of a derivative; the plans of functions' own values keep every bit of an
    /// evaluation one operation at a time.
    pub fn linear(program: Program) -> Plan {
        Plan::new(factor_coefficients(program))
    }

    /// The most bytes the plan's intermediates (equation outputs) hold at once while it runs.
    pub fn peak_bytes(&self) -> usize {
        let bytes = |v: &Var| {
            let aval = self.program.aval(*v);
            crate::memory::array_bytes("plan", &aval.shape, aval.dtype).unwrap_or(usize::MAX)
        };
        let intermediate: HashSet<Var> = self
            .program
            .eqns
            .iter()
            .flat_map(|e| e.outputs.iter().copied())
            .collect();
        let (mut live, mut peak) = (0usize, 0usize);
        for (eqn, frees) in self.program.eqns.iter().zip(&self.frees) {
            let made = eqn.outputs.iter().map(bytes).fold(0, usize::saturating_add);
            live = live.saturating_add(made);
            peak = peak.max(live);
            let dead = frees.iter().filter(|v| intermediate.contains(v));
            live = live.saturating_sub(dead.map(bytes).fold(0, usize::saturating_add));
        }
        peak
    }

    /// Evaluates an elementwise equation, a reshape, or a transpose read only by matrix
    /// products in the buffer of an operand that dies here, when nothing else holds it (for
    /// elementwise ones, of the output's shape and dtype).
    fn in_place(&self, eqn: &Eqn, frees: &[Var], env: &mut [Option<Arc<Data>>]) -> Option<Data> {
        let out = self.program.aval(eqn.outputs[0]);
        let dying = |v: Var, env: &[Option<Arc<Data>>], same_shape: bool| {
            dies_at(eqn, frees, v)
                && env[v.index()].as_ref().is_some_and(|d| {
                    Arc::strong_count(d) == 1
                        && (!same_shape || d.shape() == out.shape.as_slice())
                        && d.dtype() == out.dtype
                })
        };
        match &eqn.prim {
            Prim::Structural(Structural::Reshape(shape)) if dying(eqn.inputs[0], env, false) => {
                let data = Arc::try_unwrap(env[eqn.inputs[0].index()].take()?).ok()?;
                Some(data.into_shape(shape))
            }
            Prim::Structural(Structural::Transpose(perm))
                if self.read_by_matmul_only.contains(&eqn.outputs[0])
                    && dying(eqn.inputs[0], env, false) =>
            {
                let data = Arc::try_unwrap(env[eqn.inputs[0].index()].take()?).ok()?;
                Some(data.into_permuted(perm))
            }
            Prim::Elementwise(
                op @ (Elementwise::Unary(_) | Elementwise::Binary(_) | Elementwise::PowI(_)),
            ) => {
                let slot = (0..eqn.inputs.len()).find(|&s| dying(eqn.inputs[s], env, true))?;
                let v = eqn.inputs[slot];
                let mut target = Arc::try_unwrap(env[v.index()].take()?).ok()?;
                let other = eqn
                    .inputs
                    .get(1 - slot)
                    .and_then(|u| env[u.index()].as_deref());
                if eval_in_place(op, &mut target, slot, other) {
                    return Some(target);
                }
                env[v.index()] = Some(Arc::new(target));
                None
            }
            _ => None,
        }
    }

    /// Runs the program. With `check_finite`, equation by equation, the first equation whose
    /// output holds a NaN or an infinity is reported as an error instead.
    pub fn run(&self, inputs: &[Arc<Data>], check_finite: bool) -> Result<Vec<Arc<Data>>> {
        let mut env = self.bind(inputs);
        if check_finite {
            for (i, frees) in self.frees.iter().enumerate() {
                self.run_eqn(i, frees, &mut env, true)?;
                release(frees, &mut env);
            }
        } else {
            self.run_steps(&self.steps, &mut env)?;
        }
        Ok(self.outputs(&self.program.outputs, &env))
    }

    /// Where a plan's outputs from position `from` on are all computed by its last step, a
    /// group walking its elements in one row: for each of those outputs, its position among
    /// the group's.
    pub fn streamed_outputs(&self, from: usize) -> Option<Vec<usize>> {
        let (Step::Group(group), _) = self.steps.last()? else {
            return None;
        };
        let numel = group.shape.iter().product();
        let (own, streamed) = self
            .program
            .outputs
            .split_at(from.min(self.program.outputs.len()));
        let position = |v: &Var| group.outputs.iter().position(|u| u == v);
        let positions: Option<Vec<usize>> = streamed.iter().map(position).collect();
        let alone = own.iter().all(|v| position(v).is_none())
            && group.outputs.len() == streamed.len()
            && group.blocks(numel).0 == 1;
        positions.filter(|_| alone && !streamed.is_empty())
    }

    /// [`Plan::run`] for a plan with [`Plan::streamed_outputs`] from `from` on: those
    /// outputs go to `consume` a block of elements at a time, in output order, as its last
    /// group computes them (see [`super::fuse::Group::run_blocked`]), rather than into
    /// buffers. Returns the outputs before `from`.
    pub fn run_streaming<P: Send>(
        &self,
        inputs: &[Arc<Data>],
        from: usize,
        split: impl FnOnce(&[std::ops::Range<usize>]) -> Vec<P>,
        consume: impl Fn(&mut P, std::ops::Range<usize>, &[&[f64]]) + Sync,
    ) -> Result<Vec<Arc<Data>>> {
        let positions = self
            .streamed_outputs(from)
            .ok_or_else(|| Error::Trace("internal: a plan streaming no outputs".into()))?;
        let (last, before) = self.steps.split_last().expect("a last step");
        let mut env = self.bind(inputs);
        self.run_steps(before, &mut env)?;
        let Step::Group(group) = &last.0 else {
            unreachable!("streamed outputs come from a group")
        };
        group.run_blocked(&env, split, |state, block, outputs| {
            let ordered: Vec<&[f64]> = positions.iter().map(|&k| outputs[k]).collect();
            consume(state, block, &ordered);
        })?;
        release(&last.1, &mut env);
        Ok(self.outputs(&self.program.outputs[..from], &env))
    }

    /// The values of a run before its first step: inputs and constants.
    fn bind(&self, inputs: &[Arc<Data>]) -> Vec<Option<Arc<Data>>> {
        let program = &self.program;
        let mut env: Vec<Option<Arc<Data>>> = vec![None; program.avals.len()];
        for (&v, data) in program.inputs.iter().zip(inputs) {
            env[v.index()] = Some(data.clone());
        }
        for (v, data) in &program.consts {
            env[v.index()] = Some(data.clone());
        }
        env
    }

    /// Runs fused `steps`, releasing what each leaves dead.
    fn run_steps(&self, steps: &[(Step, Vec<Var>)], env: &mut [Option<Arc<Data>>]) -> Result<()> {
        for (step, frees) in steps {
            match step {
                Step::Eqn(i) => self.run_eqn(*i, frees, env, false)?,
                Step::Group(group) => {
                    let outs = group.run(env)?;
                    for (&v, out) in group.outputs.iter().zip(outs) {
                        env[v.index()] = Some(Arc::new(out));
                    }
                }
            }
            release(frees, env);
        }
        Ok(())
    }

    /// The values of `vars` after a run.
    fn outputs(&self, vars: &[Var], env: &[Option<Arc<Data>>]) -> Vec<Arc<Data>> {
        vars.iter()
            .map(|v| env[v.index()].clone().expect("outputs are defined"))
            .collect()
    }

    /// Runs equation `i` by its primitive's kernel (in the buffer of a dying operand when
    /// it can; a loop by its planned body), after the values it reads.
    fn run_eqn(
        &self,
        i: usize,
        frees: &[Var],
        env: &mut [Option<Arc<Data>>],
        check_finite: bool,
    ) -> Result<()> {
        let program = &self.program;
        let eqn = &program.eqns[i];
        let outs = if let Some(the_loop) = &self.loops[i] {
            // Operands that die here are handed over, so that the loop may reuse their storage.
            let ins: Vec<Arc<Data>> = eqn
                .inputs
                .iter()
                .map(|&v| {
                    let slot = &mut env[v.index()];
                    let data = if dies_at(eqn, frees, v) {
                        slot.take()
                    } else {
                        slot.clone()
                    };
                    data.expect("planned programs define before use")
                })
                .collect();
            the_loop.run(ins, check_finite)?
        } else {
            match self.in_place(eqn, frees, env) {
                Some(out) => vec![out],
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
            }
        };
        if check_finite && !outs.iter().all(Data::all_finite) {
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
        for (&v, out) in eqn.outputs.iter().zip(outs) {
            env[v.index()] = Some(Arc::new(out));
        }
        Ok(())
    }
}

/// Whether `v` dies at `eqn` (whose dead values are `frees`), read by it once.
fn dies_at(eqn: &Eqn, frees: &[Var], v: Var) -> bool {
    frees.contains(&v) && eqn.inputs.iter().filter(|&&u| u == v).count() == 1
}

/// Drops dead values, returning their storage to the pool.
fn release(frees: &[Var], env: &mut [Option<Arc<Data>>]) {
    for v in frees {
        if let Some(dead) = env[v.index()].take()
            && let Ok(data) = Arc::try_unwrap(dead)
        {
            pool::recycle(data);
        }
    }
}

/// Liveness over fused steps: for each step, the values dead once it has run (their last
/// reader, or their definition when nothing reads them). Program outputs never die.
fn step_frees(program: &Program, steps: &[Step]) -> Vec<Vec<Var>> {
    let mut last: HashMap<Var, usize> = HashMap::new();
    for (k, step) in steps.iter().enumerate() {
        let (reads, writes): (Vec<Var>, Vec<Var>) = match step {
            Step::Eqn(i) => {
                let eqn = &program.eqns[*i];
                (eqn.inputs.clone(), eqn.outputs.clone())
            }
            Step::Group(g) => (g.views.iter().map(|v| v.var).collect(), g.outputs.clone()),
        };
        for v in reads.into_iter().chain(writes) {
            last.insert(v, k);
        }
    }
    for v in &program.outputs {
        last.remove(v);
    }
    for v in &program.inputs {
        last.remove(v);
    }
    let mut dying = vec![Vec::new(); steps.len()];
    for (v, k) in last {
        dying[k].push(v);
    }
    dying
}

/// The variables that only matrix products read and that are not outputs of `program`.
fn read_by_matmul_only(program: &Program) -> HashSet<Var> {
    read_only_by(program, |prim| matches!(prim, Prim::MatMul(_)))
}

/// The variables that some equation of `program` reads, that only equations whose primitive
/// is `accepted` read, and that are not outputs of `program`.
pub(super) fn read_only_by(program: &Program, accepted: impl Fn(&Prim) -> bool) -> HashSet<Var> {
    let mut only: HashMap<Var, bool> = HashMap::new();
    for eqn in &program.eqns {
        let accepted = accepted(&eqn.prim);
        for &v in &eqn.inputs {
            *only.entry(v).or_insert(true) &= accepted;
        }
    }
    for v in &program.outputs {
        only.insert(*v, false);
    }
    only.into_iter()
        .filter(|&(_, m)| m)
        .map(|(v, _)| v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Aval, DType};

    /// `y = exp(x); z = y * c` on `n` elements, where `c` is a constant.
    fn chain(n: usize) -> Program {
        let mut p = Program::default();
        let aval = Aval::new(&[n], DType::F64);
        let x = p.new_var(aval.clone());
        p.inputs.push(x);
        let c = p.new_var(aval.clone());
        p.consts.push((
            c,
            Arc::new(Data::F64(ndarray::Array::from_elem(n, 2.0).into_dyn())),
        ));
        let y = p.new_var(aval.clone());
        let z = p.new_var(aval);
        let eqn = |prim: Prim, inputs: Vec<Var>, out: Var| Eqn {
            prim,
            inputs,
            outputs: vec![out],
            source: None,
        };
        p.eqns
            .push(eqn(crate::primitives::UnaryOp::Exp.into(), vec![x], y));
        p.eqns
            .push(eqn(crate::primitives::BinaryOp::Mul.into(), vec![y, c], z));
        p.outputs.push(z);
        p
    }

    fn run(plan: &Plan, x: Arc<Data>) -> Vec<f64> {
        let out = plan.run(&[x], false).unwrap();
        match &*out[0] {
            Data::F64(a) => a.iter().copied().collect(),
            other => panic!("expected f64, got {other:?}"),
        }
    }

    #[test]
    fn streamed_outputs_reach_the_consumer_block_by_block_as_run_computes_them() {
        // Ranges for two threads (when there are two), each of several blocks, the last
        // block of each short.
        let n = 2 * super::super::tile::PARALLEL_MIN + 1234;
        let plan = Plan::new(chain(n));
        assert_eq!(plan.streamed_outputs(0), Some(vec![0]));
        assert_eq!(plan.streamed_outputs(1), None, "no outputs streamed");
        let values: Vec<f64> = (0..n).map(|k| (k as f64 * 1e-4).sin()).collect();
        let x = Arc::new(Data::F64(ndarray::Array::from(values).into_dyn()));
        let want = run(&plan, x.clone());
        let got = std::sync::Mutex::new(vec![f64::NAN; n]);
        let split = |ranges: &[std::ops::Range<usize>]| {
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(n));
            ranges.iter().map(|r| r.start).collect::<Vec<usize>>()
        };
        let consume = |next: &mut usize, block: std::ops::Range<usize>, outs: &[&[f64]]| {
            assert_eq!(block.start, *next, "blocks in order, none skipped");
            *next = block.end;
            got.lock().unwrap()[block].copy_from_slice(outs[0]);
        };
        let own = plan.run_streaming(&[x], 0, split, consume).unwrap();
        assert!(own.is_empty());
        assert_eq!(got.into_inner().unwrap(), want);
    }

    #[test]
    fn a_dying_intermediate_is_reused_in_place() {
        let plan = Plan::new(chain(4));
        let mut env: Vec<Option<Arc<Data>>> = vec![None; plan.program.avals.len()];
        let (y, c) = (
            plan.program.eqns[1].inputs[0],
            plan.program.eqns[1].inputs[1],
        );
        env[y.index()] = Some(Arc::new(Data::F64(ndarray::Array::ones(4).into_dyn())));
        env[c.index()] = plan.program.consts[0].1.clone().into();
        let frees = &plan.frees[1];
        assert!(frees.contains(&y), "y dies at the product: {frees:?}");
        let out = plan.in_place(&plan.program.eqns[1], frees, &mut env);
        assert_eq!(
            out,
            Some(Data::F64(ndarray::Array::from_elem(4, 2.0).into_dyn()))
        );
        assert!(env[y.index()].is_none(), "the buffer moved into the result");
    }

    #[test]
    fn a_dying_operand_is_reshaped_without_a_copy() {
        let mut p = Program::default();
        let x = p.new_var(Aval::new(&[2, 3], DType::F64));
        let y = p.new_var(Aval::new(&[6], DType::F64));
        p.inputs.push(x);
        p.eqns.push(Eqn {
            prim: Structural::Reshape(vec![6]).into(),
            inputs: vec![x],
            outputs: vec![y],
            source: None,
        });
        p.outputs.push(y);
        let plan = Plan::new(p);
        let values = ndarray::Array::from_shape_fn((2, 3), |(i, j)| (3 * i + j) as f64);
        let mut env: Vec<Option<Arc<Data>>> = vec![None; plan.program.avals.len()];
        env[x.index()] = Some(Arc::new(Data::F64(values.into_dyn())));
        let address = |d: &Data| match d {
            Data::F64(a) => a.as_ptr(),
            _ => unreachable!(),
        };
        let before = address(env[x.index()].as_deref().unwrap());
        let out = plan
            .in_place(&plan.program.eqns[0], &[x], &mut env)
            .unwrap();
        assert_eq!(out.shape(), &[6]);
        assert_eq!(address(&out), before, "the buffer moved, uncopied");
        let expected = ndarray::Array::from_iter((0..6).map(f64::from)).into_dyn();
        assert_eq!(out, Data::F64(expected));
    }

    #[test]
    fn a_transpose_read_only_by_a_product_permutes_strides_instead_of_copying() {
        // z = transpose(x) @ y, and the same with the transpose also an output (then copied)
        for transpose_is_output in [false, true] {
            let mut p = Program::default();
            let x = p.new_var(Aval::new(&[3, 2], DType::F64));
            let y = p.new_var(Aval::new(&[3, 1], DType::F64));
            let xt = p.new_var(Aval::new(&[2, 3], DType::F64));
            let z = p.new_var(Aval::new(&[2, 1], DType::F64));
            p.inputs.extend([x, y]);
            p.eqns.push(Eqn {
                prim: Structural::Transpose(vec![1, 0]).into(),
                inputs: vec![x],
                outputs: vec![xt],
                source: None,
            });
            p.eqns.push(Eqn {
                prim: Prim::MatMul(crate::primitives::MatMul),
                inputs: vec![xt, y],
                outputs: vec![z],
                source: None,
            });
            p.outputs.push(z);
            if transpose_is_output {
                p.outputs.push(xt);
            }
            let plan = Plan::new(p);
            let x_values = ndarray::Array::from_shape_fn((3, 2), |(i, j)| (2 * i + j) as f64);
            let mut env: Vec<Option<Arc<Data>>> = vec![None; plan.program.avals.len()];
            env[x.index()] = Some(Arc::new(Data::F64(x_values.clone().into_dyn())));
            let moved = plan.in_place(&plan.program.eqns[0], &[x], &mut env);
            assert_eq!(moved.is_some(), !transpose_is_output);
            // Either way the product is right.
            let x = Arc::new(Data::F64(x_values.clone().into_dyn()));
            let y = Arc::new(Data::F64(ndarray::Array::ones((3, 1)).into_dyn()));
            let out = plan.run(&[x, y], false).unwrap();
            let want = x_values.t().dot(&ndarray::Array::<f64, _>::ones((3, 1)));
            assert_eq!(*out[0], Data::F64(want.into_dyn()));
        }
    }

    #[test]
    fn a_shared_input_is_never_overwritten() {
        let plan = Plan::new(chain(3));
        let x = Arc::new(Data::F64(ndarray::Array::zeros(3).into_dyn()));
        let kept = x.clone();
        assert_eq!(run(&plan, x), vec![2.0; 3]);
        assert_eq!(*kept, Data::F64(ndarray::Array::zeros(3).into_dyn()));
    }

    #[test]
    fn outputs_live_to_the_end_and_the_rest_dies() {
        let plan = Plan::new(chain(2));
        let dead: Vec<Var> = plan.frees.iter().flatten().copied().collect();
        assert!(!dead.contains(&plan.program.outputs[0]));
        assert!(dead.contains(&plan.program.eqns[0].outputs[0]));
    }
}
