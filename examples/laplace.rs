//! A Laplace approximation of a Bayesian MLP whose weights live in `ParamState`s:
//! the MAP by Newton's method, the Hessian of the negative log posterior and its eigenvalues
//! (through nalgebra), the log-determinant, the Fisher (Gauss-Newton) matrix from the
//! Jacobian of the outputs, the Laplace estimate of the evidence, and predictive error bars.
//!
//! `cargo run --release --example laplace`
//!
//! (The library's `nalgebra` feature gives `to_dmatrix`; this repository's examples have it.)

use brainstate::{
    GradStates, HasStates, ParamState, ShortTermState, State, StateKind, Tensor, grad, hessian,
    jacrev,
};
use nalgebra::{DMatrix, SymmetricEigen};

#[derive(HasStates)]
struct Dense {
    w: State,
    b: State,
}

#[derive(HasStates)]
struct Model {
    hidden: Dense,
    out: Dense,
    /// Not a parameter: counts forward passes, and is left out by `states_of(Param)`.
    passes: State,
}

impl Model {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.passes.set_value(self.passes.value() + 1.0).ok();
        let h = (x.matmul(&self.hidden.w.value()) + self.hidden.b.value()).tanh();
        h.matmul(&self.out.w.value()) + self.out.b.value()
    }
}

const NOISE: f64 = 0.1; // standard deviation of the observation noise
const PRIOR: f64 = 1.0; // precision of the Gaussian prior on every parameter

fn main() -> brainstate::Result<()> {
    // 40 noisy samples of sin(3x).
    let x = Tensor::linspace(-1.5, 1.5, 40).reshape(&[40, 1]);
    let wiggle = (Tensor::arange(0.0, 40.0, 1.0) * 2.3).sin() * NOISE;
    let y = (x.index(1, 0) * 3.0).sin() + wiggle;
    let init = |shape: &[usize], k: f64| {
        let n: usize = shape.iter().product();
        let v = (0..n).map(|i| ((i as f64 + 1.0) * k).sin()).collect();
        ParamState::new(Tensor::from_vec(v, shape).expect("sizes match"))
    };
    let model = Model {
        hidden: Dense {
            w: init(&[1, 12], 1.7),
            b: init(&[12], 0.9),
        },
        out: Dense {
            w: init(&[12], 2.1),
            b: ParamState::new(Tensor::scalar(0.0)),
        },
        passes: ShortTermState::new(Tensor::scalar(0.0)),
    };
    let params = model.states_of(StateKind::Param);
    let p = params.flat_len()?;
    println!("parameters: {p} in {:?}", params.keys());

    // The negative log posterior, up to constants: squared errors and the Gaussian prior.
    let neg_log_posterior = || {
        let fit = (model.forward(&x) - &y).powi(2).sum() / (2.0 * NOISE * NOISE);
        let weights = params.flat_values().expect("the parameters' values");
        fit + weights.powi(2).sum() * (PRIOR / 2.0)
    };

    // The MAP, by damped Newton steps with a line search.
    let gradient = grad(neg_log_posterior)
        .grad_states(params.clone())
        .return_value();
    let curvature = hessian(neg_log_posterior).grad_states(params.clone());
    let mut iterations = 0;
    while iterations < 100 {
        let (g, value) = gradient.call(())?;
        let g = g.flat_vector()?;
        if g.norm().item()? < 1e-8 {
            break;
        }
        iterations += 1;
        let h = curvature.call(())?.flat_matrix()?.to_dmatrix::<f64>()?;
        let step = newton_step(h, &g.to_dvector::<f64>()?);
        line_search(&params, &step, value.item()?, &neg_log_posterior)?;
    }
    let map_value = neg_log_posterior().item()?;
    println!("MAP after {iterations} Newton steps: negative log posterior {map_value:.6}");

    // The Hessian at the MAP: its spectrum and log-determinant.
    let h = curvature.call(())?.flat_matrix()?.to_dmatrix::<f64>()?;
    let eigen = SymmetricEigen::new(h.clone());
    let mut spectrum: Vec<f64> = eigen.eigenvalues.iter().copied().collect();
    spectrum.sort_by(|a, b| b.total_cmp(a));
    println!(
        "Hessian eigenvalues: largest {:.4e}, smallest {:.4e}",
        spectrum[0],
        spectrum[p - 1]
    );
    println!(
        "  top five: {:?}",
        &spectrum[..5]
            .iter()
            .map(|v| format!("{v:.3e}"))
            .collect::<Vec<_>>()
    );
    let log_det: f64 = spectrum.iter().map(|v| v.ln()).sum();
    println!("log det H = {log_det:.4}");

    // The Fisher (generalised Gauss-Newton) matrix: J^T J / noise^2 + prior, with J the m x P
    // Jacobian of the 40 outputs over the parameters.
    let (jacobian, outputs) = jacrev(|| model.forward(&x))
        .grad_states(params.clone())
        .return_value()
        .call(())?;
    let j = jacobian.flat_jacobian(&outputs)?.to_dmatrix::<f64>()?;
    let fisher = j.transpose() * &j / (NOISE * NOISE) + DMatrix::identity(p, p) * PRIOR;
    let fisher_log_det: f64 = SymmetricEigen::new(fisher.clone())
        .eigenvalues
        .iter()
        .map(|v| v.ln())
        .sum();
    println!(
        "Jacobian {} x {}; log det Fisher = {fisher_log_det:.4}",
        j.nrows(),
        j.ncols()
    );
    println!(
        "|H - Fisher| / |H| = {:.3e}",
        (&h - &fisher).norm() / h.norm()
    );

    // The Laplace estimate of the log evidence log p(y).
    let n = 40.0;
    let log_evidence = -map_value - n / 2.0 * (2.0 * std::f64::consts::PI * NOISE * NOISE).ln()
        + p as f64 / 2.0 * PRIOR.ln()
        - log_det / 2.0;
    println!("Laplace log evidence = {log_evidence:.4}");

    // Linearised predictive standard deviations: sqrt(j^T H^-1 j + noise^2) at new inputs.
    let tests = Tensor::from([[-2.5], [0.0], [2.5]]);
    let (jt, mean) = jacrev(|| model.forward(&tests))
        .grad_states(params.clone())
        .return_value()
        .call(())?;
    let jt = jt.flat_jacobian(&mean)?.to_dmatrix::<f64>()?;
    let covariance = h
        .cholesky()
        .expect("positive definite at the MAP")
        .inverse();
    let variance = (&jt * covariance * jt.transpose()).diagonal();
    for (i, x) in [-2.5, 0.0, 2.5].iter().enumerate() {
        let sd = (variance[i] + NOISE * NOISE).sqrt();
        println!("  f({x:+.1}) = {:+.3} +- {sd:.3}", mean.to_vec::<f64>()?[i]);
    }
    println!(
        "forward passes recorded by the non-parameter state: {}",
        model.passes.value().item()?
    );
    Ok(())
}

/// `-(H + mu I)^-1 g`, with the smallest damping `mu` that makes the matrix positive definite.
fn newton_step(h: DMatrix<f64>, g: &nalgebra::DVector<f64>) -> Tensor {
    let n = h.nrows();
    let mut mu = 0.0;
    loop {
        if let Some(c) = (&h + DMatrix::identity(n, n) * mu).cholesky() {
            return Tensor::from_dvector(&-c.solve(g));
        }
        mu = f64::max(2.0 * mu, 1e-6);
    }
}

/// Applies `t * step` with the largest `t = 1, 1/2, ...` that decreases the loss.
fn line_search(
    params: &GradStates,
    step: &Tensor,
    start: f64,
    loss: &dyn Fn() -> Tensor,
) -> brainstate::Result<()> {
    let saved = params.snapshot();
    let mut t = 1.0;
    while t > 1e-10 {
        params.add_flat(step, t)?;
        if loss().item()? < start {
            return Ok(());
        }
        saved.restore()?;
        t /= 2.0;
    }
    Ok(())
}
