//! Structural primitives: broadcast, reshape, transpose, slice, pad, concatenate.
//!
//! All are linear, so each JVP applies the same primitive to the tangent (its parameters
//! shifted past the batch axes), and each transpose is another structural primitive.

use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD, Axis, Ix1, Ix2, Ix3, Ix4, IxDyn, Slice};

use super::{Prim, concat_dims, zeros};
use crate::error::{Error, Result};
use crate::exec::pool;
use crate::tensor::{Aval, Data, Tensor, with_array};

pub(super) fn infer(prim: &Prim, ins: &[Aval]) -> Result<Aval> {
    let op = prim.name();
    let x = &ins[0];
    let rank_check = |n: usize, what: &str| {
        if n == x.shape.len() {
            Ok(())
        } else {
            Err(Error::shape(
                &op,
                format!(
                    "{what} has {n} entries for an operand of shape {:?}",
                    x.shape
                ),
            ))
        }
    };
    let shape = match prim {
        Prim::Broadcast(shape) => {
            let fits = shape.len() >= x.shape.len()
                && x.shape
                    .iter()
                    .zip(&shape[shape.len() - x.shape.len()..])
                    .all(|(&d, &s)| d == s || d == 1);
            if !fits {
                return Err(Error::mismatch("broadcast_to", &x.shape, shape));
            }
            shape.clone()
        }
        Prim::Reshape(shape) => {
            if shape.iter().product::<usize>() != x.numel() {
                return Err(Error::mismatch("reshape", &x.shape, shape));
            }
            shape.clone()
        }
        Prim::Transpose(perm) => {
            rank_check(perm.len(), "the permutation")?;
            let mut seen = vec![false; perm.len()];
            for &p in perm {
                if p >= perm.len() || std::mem::replace(&mut seen[p], true) {
                    return Err(Error::shape(&op, format!("{perm:?} is not a permutation")));
                }
            }
            perm.iter().map(|&p| x.shape[p]).collect()
        }
        Prim::Slice { start, stop, step } => {
            rank_check(start.len(), "start")?;
            rank_check(stop.len(), "stop")?;
            rank_check(step.len(), "step")?;
            let mut shape = Vec::new();
            for (i, &d) in x.shape.iter().enumerate() {
                if start[i] > stop[i] || stop[i] > d || step[i] == 0 {
                    return Err(Error::shape(
                        &op,
                        format!(
                            "range {}..{} step {} is invalid for axis {i} of shape {:?}",
                            start[i], stop[i], step[i], x.shape
                        ),
                    ));
                }
                shape.push((stop[i] - start[i]).div_ceil(step[i]));
            }
            shape
        }
        Prim::Pad { lo, hi, interior } => {
            rank_check(lo.len(), "lo")?;
            rank_check(hi.len(), "hi")?;
            rank_check(interior.len(), "interior")?;
            (0..x.shape.len())
                .map(|i| lo[i] + hi[i] + x.shape[i] + x.shape[i].saturating_sub(1) * interior[i])
                .collect()
        }
        Prim::Concat(axis) => {
            let first = ins
                .first()
                .ok_or_else(|| Error::shape(&op, "needs at least one operand"))?;
            if *axis >= first.shape.len() {
                return Err(Error::shape(
                    &op,
                    format!("axis {axis} out of range for shape {:?}", first.shape),
                ));
            }
            let mut shape = first.shape.clone();
            for other in &ins[1..] {
                let fits = other.shape.len() == shape.len()
                    && (0..shape.len()).all(|i| i == *axis || other.shape[i] == shape[i]);
                if !fits {
                    return Err(Error::mismatch(&op, &first.shape, &other.shape));
                }
                if other.dtype != first.dtype {
                    return Err(Error::dtype(
                        &op,
                        format!("operands must have one dtype, the first is {}", first.dtype),
                        other.dtype,
                    ));
                }
                shape[*axis] += other.shape[*axis];
            }
            shape
        }
        _ => unreachable!("not a structural primitive: {prim}"),
    };
    Ok(Aval::new(&shape, x.dtype))
}

pub(super) fn eval(prim: &Prim, ins: &[&Data]) -> Result<Data> {
    let x = ins[0];
    Ok(match prim {
        Prim::Broadcast(shape) => with_array!(x, a => Data::from(
            owned(a.broadcast(shape.as_slice()).expect("checked by infer"))
        )),
        Prim::Reshape(shape) => with_array!(x, a => Data::from(
            a.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(shape))
                .expect("checked by infer")
        )),
        Prim::Transpose(perm) => {
            with_array!(x, a => Data::from(owned(a.view().permuted_axes(IxDyn(perm)))))
        }
        Prim::Slice { start, stop, step } => with_array!(x, a => {
            let mut view = a.view();
            for i in 0..start.len() {
                view.slice_axis_inplace(
                    Axis(i),
                    Slice::new(start[i] as isize, Some(stop[i] as isize), step[i] as isize),
                );
            }
            Data::from(owned(view))
        }),
        Prim::Pad { lo, hi, interior } => with_array!(x, a => {
            let shape: Vec<usize> = (0..a.ndim())
                .map(|i| lo[i] + hi[i] + a.shape()[i] + a.shape()[i].saturating_sub(1) * interior[i])
                .collect();
            let mut buffer = pool::take(shape.iter().product());
            buffer.resize(buffer.capacity().min(shape.iter().product()), zero_like(a));
            let mut out = ArrayD::from_shape_vec(shape, buffer).expect("one value per element");
            let mut view = out.view_mut();
            for i in 0..a.ndim() {
                let end = lo[i] + a.shape()[i] + a.shape()[i].saturating_sub(1) * interior[i];
                view.slice_axis_inplace(
                    Axis(i),
                    Slice::new(lo[i] as isize, Some(end as isize), interior[i] as isize + 1),
                );
            }
            view.assign(a);
            Data::from(out)
        }),
        Prim::Concat(axis) => {
            macro_rules! concat {
                ($variant:ident) => {{
                    let views: Vec<_> = ins
                        .iter()
                        .map(|d| match d {
                            Data::$variant(a) => a.view(),
                            _ => unreachable!("dtypes checked by infer"),
                        })
                        .collect();
                    Data::$variant(
                        ndarray::concatenate(Axis(*axis), &views).expect("checked by infer"),
                    )
                }};
            }
            match x {
                Data::Bool(_) => concat!(Bool),
                Data::I64(_) => concat!(I64),
                Data::F32(_) => concat!(F32),
                Data::F64(_) => concat!(F64),
                Data::C64(_) => concat!(C64),
                Data::C128(_) => concat!(C128),
            }
        }
        _ => unreachable!("not a structural primitive: {prim}"),
    })
}

/// A standard-layout copy of a view. Fixed-rank iteration is much faster than dynamic-rank,
/// and 2-d transposes are copied in cache-sized tiles.
fn owned<T: Copy + 'static>(view: ArrayViewD<'_, T>) -> ArrayD<T> {
    let shape = view.shape().to_vec();
    let collect = |values: &mut dyn Iterator<Item = T>| {
        let mut buffer = pool::take(shape.iter().product());
        buffer.extend(values);
        ArrayD::from_shape_vec(shape.as_slice(), buffer).expect("one value per element")
    };
    if let Some(values) = view.as_slice() {
        return collect(&mut values.iter().copied());
    }
    match view.ndim() {
        2 => {
            let v = view.into_dimensionality::<Ix2>().expect("rank 2");
            let (rows, cols) = v.dim();
            if v.strides()[0] == 1 && rows * cols > 0 {
                return transpose_tiled(v).into_dyn();
            }
            collect(&mut v.iter().copied())
        }
        1 => collect(
            &mut view
                .into_dimensionality::<Ix1>()
                .expect("rank 1")
                .iter()
                .copied(),
        ),
        3 => collect(
            &mut view
                .into_dimensionality::<Ix3>()
                .expect("rank 3")
                .iter()
                .copied(),
        ),
        4 => collect(
            &mut view
                .into_dimensionality::<Ix4>()
                .expect("rank 4")
                .iter()
                .copied(),
        ),
        _ => collect(&mut view.iter().copied()),
    }
}

/// Copies a column-major 2-d view into row-major order, tile by tile.
fn transpose_tiled<T: Copy + 'static>(v: ArrayView2<'_, T>) -> Array2<T> {
    const TILE: usize = 32;
    let (rows, cols) = v.dim();
    let mut out = pool::take(rows * cols);
    let spare = out.spare_capacity_mut();
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                for r in r0..(r0 + TILE).min(rows) {
                    spare[r * cols + c].write(v[[r, c]]);
                }
            }
        }
    }
    // SAFETY: the loops above wrote every one of the rows * cols elements.
    unsafe { out.set_len(rows * cols) };
    Array2::from_shape_vec((rows, cols), out).expect("rows * cols values")
}

/// The zero of an array's element type, found from the array itself.
fn zero_like<T: Default>(_: &ArrayD<T>) -> T {
    T::default()
}

/// This primitive acting on values with `nb` leading batch axes (of sizes `batch`).
fn batched(prim: &Prim, batch: &[usize]) -> Prim {
    let nb = batch.len();
    let pad = |v: &[usize], fill: usize| concat_dims(&vec![fill; nb], v);
    match prim {
        Prim::Broadcast(shape) => Prim::Broadcast(concat_dims(batch, shape)),
        Prim::Reshape(shape) => Prim::Reshape(concat_dims(batch, shape)),
        Prim::Transpose(perm) => {
            Prim::Transpose((0..nb).chain(perm.iter().map(|p| p + nb)).collect())
        }
        Prim::Slice { start, stop, step } => Prim::Slice {
            start: pad(start, 0),
            stop: concat_dims(batch, stop),
            step: pad(step, 1),
        },
        Prim::Pad { lo, hi, interior } => Prim::Pad {
            lo: pad(lo, 0),
            hi: pad(hi, 0),
            interior: pad(interior, 0),
        },
        Prim::Concat(axis) => Prim::Concat(axis + nb),
        _ => unreachable!("not a structural primitive: {prim}"),
    }
}

pub(super) fn jvp(
    prim: &Prim,
    x: &[Tensor],
    t: &[Option<Tensor>],
    batch: &[usize],
) -> Option<Tensor> {
    let tangents: Vec<Tensor> = match prim {
        Prim::Concat(_) => {
            // Concatenation needs every piece: absent tangents become explicit zeros.
            x.iter()
                .zip(t)
                .map(|(x, t)| {
                    t.clone()
                        .unwrap_or_else(|| zeros(batch, &x.aval().expect("traced")))
                })
                .collect()
        }
        Prim::Broadcast(shape) => {
            // Line the tangent's own axes up with the target's trailing axes.
            let t = t[0].as_ref()?;
            let lead = shape.len() - x[0].ndim();
            let padded = concat_dims(&concat_dims(batch, &vec![1; lead]), x[0].shape());
            vec![t.reshape_exact(&padded)]
        }
        _ => vec![t[0].clone()?],
    };
    let refs: Vec<&Tensor> = tangents.iter().collect();
    Some(Tensor::apply(batched(prim, batch), &refs))
}

pub(super) fn transpose(
    prim: &Prim,
    ct: &Tensor,
    in_avals: &[Aval],
    batch: &[usize],
) -> Vec<Option<Tensor>> {
    let x = &in_avals[0];
    let nb = batch.len();
    match prim {
        // The driver sums the cotangent back over the broadcast axes.
        Prim::Broadcast(_) => vec![Some(ct.clone())],
        Prim::Reshape(_) => vec![Some(ct.reshape_exact(&concat_dims(batch, &x.shape)))],
        Prim::Transpose(perm) => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            vec![Some(Tensor::apply(
                batched(&Prim::Transpose(inverse), batch),
                &[ct],
            ))]
        }
        Prim::Slice { start, step, .. } => {
            let out = &ct.shape()[nb..];
            let mut lo = Vec::new();
            let mut hi = Vec::new();
            for i in 0..x.shape.len() {
                if out[i] == 0 {
                    lo.push(x.shape[i]);
                    hi.push(0);
                } else {
                    let last = start[i] + (out[i] - 1) * step[i];
                    lo.push(start[i]);
                    hi.push(x.shape[i] - last - 1);
                }
            }
            let interior = step.iter().map(|s| s - 1).collect();
            let pad = Prim::Pad { lo, hi, interior };
            vec![Some(Tensor::apply(batched(&pad, batch), &[ct]))]
        }
        Prim::Pad { lo, interior, .. } => {
            let start = lo.clone();
            let step: Vec<usize> = interior.iter().map(|i| i + 1).collect();
            let stop = (0..x.shape.len())
                .map(|i| {
                    if x.shape[i] == 0 {
                        lo[i]
                    } else {
                        lo[i] + (x.shape[i] - 1) * step[i] + 1
                    }
                })
                .collect();
            let slice = Prim::Slice { start, stop, step };
            vec![Some(Tensor::apply(batched(&slice, batch), &[ct]))]
        }
        Prim::Concat(axis) => {
            let mut offset = 0;
            in_avals
                .iter()
                .map(|a| {
                    let len = a.shape[*axis];
                    let mut start = vec![0; a.shape.len()];
                    let mut stop = ct.shape()[nb..].to_vec();
                    start[*axis] = offset;
                    stop[*axis] = offset + len;
                    offset += len;
                    let step = vec![1; a.shape.len()];
                    Some(Tensor::apply(
                        batched(&Prim::Slice { start, stop, step }, batch),
                        &[ct],
                    ))
                })
                .collect()
        }
        _ => unreachable!("not a structural primitive: {prim}"),
    }
}
