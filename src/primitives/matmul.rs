//! Matrix product over the last two axes, broadcasting the leading (batch) axes.
//!
//! Bilinear: `d(A B) = dA B + A dB`, and each operand's transpose is a product with the other.

use ndarray::{linalg::general_mat_mul, ArrayD, Axis, Ix2, IxDyn};

use super::{broadcast_shapes, concat_dims, Prim};
use crate::error::{Error, Result};
use crate::tensor::{Aval, Data, Tensor};

pub(super) fn infer(a: &Aval, b: &Aval) -> Result<Aval> {
    if a.shape.len() < 2
        || b.shape.len() < 2
        || a.shape[a.shape.len() - 1] != b.shape[b.shape.len() - 2]
    {
        return Err(Error::mismatch("matmul", &a.shape, &b.shape));
    }
    if a.dtype != b.dtype || !a.dtype.is_float() {
        return Err(Error::dtype(
            "matmul",
            format!(
                "needs two floating-point operands of one dtype, the first is {}",
                a.dtype
            ),
            b.dtype,
        ));
    }
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let mut shape = broadcast_shapes("matmul", &a.shape[..ra - 2], &b.shape[..rb - 2])?;
    shape.push(a.shape[ra - 2]);
    shape.push(b.shape[rb - 1]);
    Ok(Aval::new(&shape, a.dtype))
}

fn batched_matmul<T>(a: &ArrayD<T>, b: &ArrayD<T>) -> ArrayD<T>
where
    T: ndarray::LinalgScalar,
{
    let (ra, rb) = (a.ndim(), b.ndim());
    let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
    let batch = broadcast_shapes("matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])
        .expect("checked by infer");
    let count: usize = batch.iter().product();
    let with = |dims: &[usize]| -> Vec<usize> { batch.iter().chain(dims).copied().collect() };
    let a = a.broadcast(with(&[m, k])).expect("checked by infer");
    let b = b.broadcast(with(&[k, n])).expect("checked by infer");
    let a = a.to_shape(IxDyn(&[count, m, k])).expect("reshape");
    let b = b.to_shape(IxDyn(&[count, k, n])).expect("reshape");
    let mut out = ArrayD::<T>::zeros(IxDyn(&[count, m, n]));
    for (i, mut o) in out.axis_iter_mut(Axis(0)).enumerate() {
        let ai = a
            .index_axis(Axis(0), i)
            .into_dimensionality::<Ix2>()
            .expect("2-d");
        let bi = b
            .index_axis(Axis(0), i)
            .into_dimensionality::<Ix2>()
            .expect("2-d");
        let mut oi = o.view_mut().into_dimensionality::<Ix2>().expect("2-d");
        general_mat_mul(T::one(), &ai, &bi, T::zero(), &mut oi);
    }
    out.into_shape_with_order(IxDyn(&with(&[m, n])))
        .expect("reshape")
}

pub(super) fn eval(a: &Data, b: &Data) -> Result<Data> {
    Ok(match (a, b) {
        (Data::F64(a), Data::F64(b)) => Data::F64(batched_matmul(a, b)),
        (Data::F32(a), Data::F32(b)) => Data::F32(batched_matmul(a, b)),
        _ => unreachable!("dtypes checked by infer"),
    })
}

/// Swaps the last two axes.
fn mt(x: &Tensor) -> Tensor {
    let r = x.ndim();
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    Tensor::apply(Prim::Transpose(perm), &[x])
}

fn matmul(a: &Tensor, b: &Tensor) -> Tensor {
    Tensor::apply(Prim::MatMul, &[a, b])
}

pub(super) fn jvp(
    x: &[Tensor],
    t: &[Option<Tensor>],
    out: &Tensor,
    batch: &[usize],
) -> Option<Tensor> {
    // Pad operands and tangents to the output's rank (tangents after their batch axes) so that
    // the batch axes of the tangent never meet an operand's own leading axes.
    let rank = batch.len() + out.ndim();
    let primal = |x: &Tensor| x.reshape_exact(&concat_dims(&vec![1; rank - x.ndim()], x.shape()));
    let tangent = |t: &Tensor, x: &Tensor| {
        let ones = vec![1; out.ndim() - x.ndim()];
        t.reshape_exact(&concat_dims(&concat_dims(batch, &ones), x.shape()))
    };
    let da = t[0]
        .as_ref()
        .map(|ta| matmul(&tangent(ta, &x[0]), &primal(&x[1])));
    let db = t[1]
        .as_ref()
        .map(|tb| matmul(&primal(&x[0]), &tangent(tb, &x[1])));
    match (da, db) {
        (Some(da), Some(db)) => Some(da + db),
        (da, db) => da.or(db),
    }
}

pub(super) fn transpose(ct: &Tensor, x: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
    match (&x[0], &x[1]) {
        (None, Some(b)) => Ok(vec![Some(matmul(ct, &mt(b))), None]),
        (Some(a), None) => Ok(vec![None, Some(matmul(&mt(a), ct))]),
        _ => Err(Prim::MatMul.not_linear()),
    }
}
