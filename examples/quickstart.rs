//! Computes and prints Hessians of a small model: `cargo run --release --example quickstart`.

use brainstate::{Tensor, hessian, make_program};

fn main() -> brainstate::Result<()> {
    // Rosenbrock's function: a classic test of second-order optimisers.
    let rosen = |x: &Tensor| {
        let head = x.slice_along(0, ..-1, 1);
        let tail = x.slice_along(0, 1.., 1);
        ((tail - head.powi(2)).powi(2) * 100.0 + (1.0 - &head).powi(2)).sum()
    };
    let x = Tensor::linspace(-1.0, 1.0, 4);
    println!("traced program of rosen:\n{}\n", make_program(rosen, &x)?);
    let h = hessian(rosen).return_value();
    let (hess, value) = h.call(&x)?;
    println!("rosen(x) = {value}");
    println!("Hessian:\n{}\n", hess.tensor()?);

    // Logistic regression over two arguments (weights and bias), with aux output.
    let features = Tensor::from([[0.5, -1.0], [1.5, 0.3], [-0.2, 0.8]]);
    let labels = Tensor::from([1.0, 0.0, 1.0]);
    let loss = move |w: &Tensor, b: &Tensor| {
        let logits = features.matmul(w) + b;
        let loss = (logits.logaddexp(0.0) - &labels * &logits).sum();
        (loss, logits.sigmoid())
    };
    let h = hessian(loss).argnums([0, 1]).has_aux().return_value();
    let (hess, value, probabilities) =
        h.call((&Tensor::from([0.1, -0.2]), &Tensor::scalar(0.05)))?;
    println!("loss = {value}, probabilities = {probabilities}");
    println!("d2/dw2 =\n{}", hess[0][0].tensor()?);
    println!("d2/dw db = {}", hess[0][1].tensor()?);
    println!("d2/db2 = {}", hess[1][1].tensor()?);
    println!("as one matrix over (w, b):\n{}", hess.flat_matrix()?);
    Ok(())
}
