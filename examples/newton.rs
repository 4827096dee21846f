//! Newton's method with a backtracking line search, on models held in `ParamState`s:
//! a logistic regression with 101 parameters and a small MLP with 73.
//!
//! `cargo run --release --example newton`
//!
//! Each iteration takes the flat gradient and Hessian over the model's parameters, solves the
//! (damped) Newton system with nalgebra, and applies the step to the states in the same flat
//! order; a step that does not decrease the loss enough is undone with a snapshot and halved.

use brainstate::{GradStates, HasStates, ParamState, State, StateKind, Tensor, grad, hessian};
use nalgebra::{DMatrix, DVector};

/// Deterministic pseudo-random numbers (a linear congruential generator).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (hi - lo) * (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn tensor(&mut self, shape: &[usize], scale: f64) -> Tensor {
        let n = shape.iter().product();
        let values = (0..n).map(|_| self.uniform(-scale, scale)).collect();
        Tensor::from_vec(values, shape).expect("values fit the shape")
    }
}

#[derive(HasStates)]
struct LogisticRegression {
    w: State,
    b: State,
}

#[derive(HasStates)]
struct Mlp {
    w1: State,
    b1: State,
    w2: State,
    b2: State,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let hidden = (x.matmul(&self.w1.value()) + self.b1.value()).tanh();
        hidden.matmul(&self.w2.value()) + self.b2.value()
    }
}

/// Minimises `loss` over `params` by damped Newton steps with a backtracking line search.
fn newton(name: &str, loss: impl Fn() -> Tensor, params: &GradStates) -> brainstate::Result<()> {
    let gradient = grad(&loss).grad_states(params.clone()).return_value();
    let curvature = hessian(&loss).grad_states(params.clone());
    println!("{name}: {} parameters", params.flat_len()?);
    for iteration in 0..30 {
        let (g, value) = gradient.call(())?;
        let g = g.flat_vector()?.to_dvector::<f64>()?;
        let h = curvature.call(())?.flat_matrix()?.to_dmatrix::<f64>()?;
        println!(
            "  {iteration:2}: loss {:.10}  |gradient| {:.3e}",
            value.item()?,
            g.norm()
        );
        if g.norm() < 1e-10 {
            break;
        }
        let step = Tensor::from_dvector(&damped_newton_step(h, &g));
        // Armijo backtracking: halve the step until the loss decreases enough.
        let slope = g.dot(&step.to_dvector::<f64>()?);
        let (start, saved) = (value.item()?, params.snapshot());
        let mut t = 1.0;
        loop {
            params.add_flat(&step, t)?;
            if loss().item()? <= start + 1e-4 * t * slope || t < 1e-10 {
                break;
            }
            saved.restore()?;
            t /= 2.0;
        }
    }
    Ok(())
}

/// `-(H + mu I)^-1 g` with the smallest `mu` (0 when possible) that makes the matrix positive
/// definite, so the step descends even where the Hessian is indefinite.
fn damped_newton_step(h: DMatrix<f64>, g: &DVector<f64>) -> DVector<f64> {
    let n = h.nrows();
    let mut mu = 0.0;
    loop {
        let damped = &h + DMatrix::identity(n, n) * mu;
        if let Some(cholesky) = damped.cholesky() {
            return -cholesky.solve(g);
        }
        mu = f64::max(2.0 * mu, 1e-6);
    }
}

fn main() -> brainstate::Result<()> {
    let mut rng = Rng(7);

    // Logistic regression on 400 samples of 100 features, with a small L2 penalty.
    let x = rng.tensor(&[400, 100], 1.0);
    let truth = rng.tensor(&[100], 0.5);
    let labels = x.matmul(&truth).gt(0.0).cast(brainstate::DType::F64);
    let model = LogisticRegression {
        w: ParamState::new(Tensor::zeros(&[100])),
        b: ParamState::new(Tensor::scalar(0.0)),
    };
    let loss = || {
        let logits = x.matmul(&model.w.value()) + model.b.value();
        let nll = (logits.logaddexp(0.0) - &labels * &logits).mean();
        nll + model.w.value().powi(2).sum() * 1e-2
    };
    newton(
        "logistic regression",
        loss,
        &model.states_of(StateKind::Param),
    )?;

    // A 2-18-1 MLP fitting a smooth surface from 200 samples.
    let inputs = rng.tensor(&[200, 2], 2.0);
    let targets = (inputs.index(1, 0) * 1.5).sin() * inputs.index(1, 1).cos();
    let mlp = Mlp {
        w1: ParamState::new(rng.tensor(&[2, 18], 1.0)),
        b1: ParamState::new(rng.tensor(&[18], 0.5)),
        w2: ParamState::new(rng.tensor(&[18], 0.5)),
        b2: ParamState::new(Tensor::scalar(0.0)),
    };
    let loss = || (mlp.forward(&inputs) - &targets).powi(2).mean();
    newton("MLP", loss, &mlp.states())?;
    Ok(())
}
