//! A picture of a Hessian: the heatmap of an MLP's loss Hessian over its parameters (blocks
//! by layer, in flat order) beside its eigenvalue spectrum, written as a PNG.
//!
//! `cargo run --release --example hessian_picture` prints where the picture is.
//!
//! Colours: red for positive entries and eigenvalues, blue for negative ones, on a
//! logarithmic scale of magnitude (the picture has no text, so it needs no fonts).

use brainstate::{HasStates, ParamState, State, Tensor, hessian};
use nalgebra::SymmetricEigen;
use plotters::prelude::*;

#[derive(HasStates)]
struct Mlp {
    w1: State,
    b1: State,
    w2: State,
    b2: State,
}

/// `sign(v) * log10(1 + |v| / floor)`, scaled to `[-1, 1]` by the largest magnitude.
fn symlog(v: f64, largest: f64, floor: f64) -> f64 {
    let f = |x: f64| (1.0 + x / floor).log10();
    v.signum() * f(v.abs()) / f(largest)
}

/// White at 0, red towards 1, blue towards -1.
fn colour(t: f64) -> RGBColor {
    let fade = |c: f64| (255.0 * (1.0 - t.abs()) + c * t.abs()) as u8;
    if t >= 0.0 {
        RGBColor(fade(200.0), fade(30.0), fade(40.0))
    } else {
        RGBColor(fade(30.0), fade(70.0), fade(200.0))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A 3-8-2 tanh MLP on a fixed batch, at a deterministic initialisation.
    let init = |shape: &[usize], k: f64| {
        let n: usize = shape.iter().product();
        let values = (0..n).map(|i| ((i as f64 + 1.0) * k).sin() * 0.8).collect();
        ParamState::new(Tensor::from_vec(values, shape).expect("sizes match"))
    };
    let mlp = Mlp {
        w1: init(&[3, 8], 1.3),
        b1: init(&[8], 0.7),
        w2: init(&[8, 2], 2.9),
        b2: init(&[2], 0.4),
    };
    let x = Tensor::linspace(-1.0, 1.0, 48).reshape(&[16, 3]);
    let y = stack_targets(&x);
    let loss = || {
        let h = (x.matmul(&mlp.w1.value()) + mlp.b1.value()).tanh();
        let out = h.matmul(&mlp.w2.value()) + mlp.b2.value();
        (out - &y).powi(2).mean()
    };
    // Fields in declaration order, as in the struct: w1, b1, w2, b2.
    let params = brainstate::GradStates::from(vec![&mlp.w1, &mlp.b1, &mlp.w2, &mlp.b2]);
    let h = hessian(loss).grad_states(params).call(())?.flat_matrix()?;
    let n = h.shape()?[0];
    let values = h.to_vec::<f64>()?;
    let mut spectrum: Vec<f64> = SymmetricEigen::new(h.to_dmatrix::<f64>()?)
        .eigenvalues
        .iter()
        .copied()
        .collect();
    spectrum.sort_by(|a, b| b.total_cmp(a));
    let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = largest * 1e-4;

    let path = std::env::temp_dir().join("brainstate_hessian.png");
    let (cell, margin) = (8u32, 20u32);
    let side = cell * n as u32;
    let root =
        BitMapBackend::new(&path, (2 * side + 3 * margin, side + 2 * margin)).into_drawing_area();
    root.fill(&WHITE)?;

    // The Hessian, one square per entry.
    for i in 0..n {
        for j in 0..n {
            let (x0, y0) = (
                (margin + cell * j as u32) as i32,
                (margin + cell * i as u32) as i32,
            );
            let c = colour(symlog(values[i * n + j], largest, floor));
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell as i32, y0 + cell as i32)],
                c.filled(),
            ))?;
        }
    }
    // Lines between the parameter blocks (w1 | b1 | w2 | b2).
    let mut edge = 0;
    for size in [24, 8, 16] {
        edge += size;
        let p = (margin + cell * edge) as i32;
        let (lo, hi) = (margin as i32, (margin + side) as i32);
        root.draw(&PathElement::new(vec![(p, lo), (p, hi)], BLACK))?;
        root.draw(&PathElement::new(vec![(lo, p), (hi, p)], BLACK))?;
    }

    // The spectrum, largest first: bars up (positive) or down (negative) from the middle.
    let left = (2 * margin + side) as i32;
    let middle = (margin + side / 2) as i32;
    let top = spectrum[0].abs().max(spectrum[n - 1].abs());
    let bar = side as i32 / n as i32;
    root.draw(&PathElement::new(
        vec![(left, middle), (left + side as i32, middle)],
        BLACK,
    ))?;
    for (k, &lambda) in spectrum.iter().enumerate() {
        let t = symlog(lambda, top, top * 1e-6);
        let height = (t * (side / 2) as f64) as i32;
        let x0 = left + k as i32 * bar;
        let bar_area = [(x0, middle), (x0 + bar - 1, middle - height)];
        root.draw(&Rectangle::new(bar_area, colour(t.signum()).filled()))?;
    }
    root.present()?;

    println!("Hessian of an MLP loss over {n} parameters");
    println!(
        "eigenvalues from {:.3e} to {:.3e}",
        spectrum[0],
        spectrum[n - 1]
    );
    println!("wrote {}", path.display());
    Ok(())
}

/// Two smooth targets of the three inputs.
fn stack_targets(x: &Tensor) -> Tensor {
    let a = (x.index(1, 0) * 2.0).sin() + x.index(1, 1);
    let b = (x.index(1, 2) * x.index(1, 0)).tanh();
    brainstate::stack(&[a, b], 1)
}
