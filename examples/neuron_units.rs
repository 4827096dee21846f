//! A population of exponential integrate-and-fire neurons in physical units (mV, ms, nS, pF,
//! pA), and the unit-aware Hessian of a fitting loss over its parameters, each block in the
//! units it was built from; then Newton steps that recover two of the parameters from the
//! voltages they produce, taken in the parameters' units.
//!
//! `cargo run --release --example neuron_units`
//!
//! C dV/dt = g_L (E_L - V) + g_L Delta_T exp((V - V_T) / Delta_T) + I, integrated by Euler
//! steps for 20 ms (the loop unrolls while tracing). The loss is the mean squared distance of
//! the final voltages from targets, in mV^2.

use brainstate::units::{mV, ms, nS, pA, pF};
use brainstate::{GradStates, ParamState, ShortTermState, State, Tensor, grad, hessian};
use nalgebra::DMatrix;

struct Population {
    v: State,
    g_l: State,
    e_l: State,
    c: State,
}

impl Population {
    /// The voltages after `steps` Euler steps of `dt` from rest, driven by `input`.
    fn run(&self, input: &Tensor, dt: &Tensor, steps: usize) -> Tensor {
        let (v_t, delta_t) = (-50.0 * mV, 2.0 * mV);
        let (g_l, e_l, c) = (self.g_l.value(), self.e_l.value(), self.c.value());
        let mut v = self.v.value();
        for _ in 0..steps {
            let spike_current = &g_l * &delta_t * ((&v - &v_t) / &delta_t).exp();
            let dv = (&g_l * (&e_l - &v) + spike_current + input) / &c;
            v = v + dv * dt;
        }
        v
    }
}

fn main() -> brainstate::Result<()> {
    let population = Population {
        v: ShortTermState::new(Tensor::from([-65.0; 6]) * mV).with_name("v"),
        g_l: ParamState::new(10.0 * nS).with_name("g_L"),
        e_l: ParamState::new(-65.0 * mV).with_name("E_L"),
        c: ParamState::new(150.0 * pF).with_name("C"),
    };
    let input = Tensor::from([0.0, 40.0, 80.0, 120.0, 160.0, 200.0]) * pA;
    let dt = 0.1 * ms;
    // Targets from these parameters; then the fit starts from other ones.
    let targets = population.run(&input, &dt, 200);
    println!("targets: {targets}");
    population.e_l.set_value(-68.0 * mV)?;
    population.g_l.set_value(8.0 * nS)?;
    let loss = || (population.run(&input, &dt, 200) - &targets).powi(2).mean();
    println!("loss = {}", loss());

    // The unit-aware Hessian over the three parameters: block (i, j) is in mV^2 / (u_i u_j).
    let params = GradStates::from([
        ("C", &population.c),
        ("E_L", &population.e_l),
        ("g_L", &population.g_l),
    ]);
    let h = hessian(loss).grad_states(params.clone()).unit_aware(true);
    let blocks = h.call(())?;
    for row in params.keys() {
        for col in params.keys() {
            let block = blocks[row.as_str()][col.as_str()].tensor()?;
            println!("d2 loss / d{row} d{col} = {block}");
        }
    }

    // Newton's method on E_L and g_L, in the units they are counted in (mV and nS): damped
    // where the Hessian is indefinite, with a step halved until the loss decreases.
    let fitted = GradStates::from([("E_L", &population.e_l), ("g_L", &population.g_l)]);
    let gradient = grad(loss).grad_states(fitted.clone()).return_value();
    let curvature = hessian(loss).grad_states(fitted.clone());
    for iteration in 0..8 {
        let (g, value) = gradient.call(())?;
        let g = g.flat_vector()?.to_dvector::<f64>()?;
        let h = curvature.call(())?.flat_matrix()?.to_dmatrix::<f64>()?;
        let mut damping = 0.0;
        let step = loop {
            if let Some(c) = (&h + DMatrix::identity(2, 2) * damping).cholesky() {
                break Tensor::from_dvector(&-c.solve(&g));
            }
            damping = f64::max(2.0 * damping, 1e-3);
        };
        let (saved, mut t) = (fitted.snapshot(), 1.0);
        loop {
            fitted.add_flat(&step, t)?;
            // (Written so that a NaN loss, from a step too far, is rejected too.)
            if loss().mantissa().item()? <= value.mantissa().item()? || t < 1e-6 {
                break;
            }
            saved.restore()?;
            t /= 2.0;
        }
        println!(
            "{iteration:2}: E_L = {:.6} mV, g_L = {:.6} nS, loss = {:.3e} mV^2",
            population.e_l.value().value_in(mV)?.item()?,
            population.g_l.value().value_in(nS)?.item()?,
            loss().value_in(mV.powi(2))?.item()?,
        );
    }
    Ok(())
}
