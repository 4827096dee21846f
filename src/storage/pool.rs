//! A per-thread pool of `f64` buffers, reused across runs of a plan.
//!
//! Fresh allocations cost: large ones come from the operating system as unmapped pages, and
//! faulting them in costs more than the arithmetic that fills them (on the benchmark machines,
//! about 1 ms per 8 MB); small ones cost a call into the allocator each. A plan frees each
//! intermediate buffer after its last use; those buffers come back here, and kernels take
//! their storage from here, so a plan run many times stops paying for either after its first
//! run. Buffers are kept by size class (powers of two), so taking one is a constant-time pop.

use std::any::Any;
use std::cell::RefCell;

use super::Data;

/// Buffers smaller than this many elements are left to the allocator.
const MIN_LEN: usize = 16;
/// At most this many bytes of buffers are kept per thread.
const MAX_BYTES: usize = 1 << 30;

/// Free buffers by size class: class `c` holds buffers with room for at least `2^c` values.
struct Pool {
    classes: Vec<Vec<Vec<f64>>>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { classes: Vec::new(), bytes: 0 }) };
}

/// The class whose buffers hold `len` values: `ceil(log2(len))`.
fn class_for(len: usize) -> usize {
    len.next_power_of_two().trailing_zeros() as usize
}

/// An empty vector with room for `len` elements: for `f64`, from the pool when it holds one
/// of the right class, else a new one of that class's size.
pub(crate) fn take<T: 'static>(len: usize) -> Vec<T> {
    if len < MIN_LEN || std::any::TypeId::of::<T>() != std::any::TypeId::of::<f64>() {
        return Vec::with_capacity(len);
    }
    let class = class_for(len);
    let found = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let buffer = pool.classes.get_mut(class)?.pop()?;
        pool.bytes -= buffer.capacity() * std::mem::size_of::<f64>();
        Some(buffer)
    });
    let buffer = found.unwrap_or_else(|| Vec::<f64>::with_capacity(1 << class));
    let any: Box<dyn Any> = Box::new(buffer);
    match any.downcast::<Vec<T>>() {
        Ok(buffer) => *buffer,
        Err(_) => Vec::with_capacity(len),
    }
}

/// Returns the storage of a dead array to the pool.
pub(crate) fn recycle(data: Data) {
    if let Data::F64(array) = data {
        give(array.into_raw_vec_and_offset().0);
    }
}

/// Returns the storage of the arrays nothing else holds to the pool: a plan's outputs that
/// the caller has read, so that the next run takes their pages again instead of fresh ones.
pub(crate) fn recycle_all(arrays: Vec<std::sync::Arc<Data>>) {
    for array in arrays {
        if let Ok(data) = std::sync::Arc::try_unwrap(array) {
            recycle(data);
        }
    }
}

/// Returns a buffer to the pool (dropped when the pool is full).
pub(crate) fn give(mut buffer: Vec<f64>) {
    let capacity = buffer.capacity();
    if capacity < MIN_LEN {
        return;
    }
    buffer.clear();
    // The largest class the buffer can serve.
    let class = (usize::BITS - 1 - capacity.leading_zeros()) as usize;
    let bytes = capacity * std::mem::size_of::<f64>();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.bytes + bytes > MAX_BYTES {
            return;
        }
        if pool.classes.len() <= class {
            pool.classes.resize_with(class + 1, Vec::new);
        }
        pool.classes[class].push(buffer);
        pool.bytes += bytes;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_taken_again_for_its_class() {
        let buffer = take::<f64>(1000);
        assert!(buffer.capacity() >= 1000);
        let address = buffer.as_ptr();
        give(buffer);
        let again = take::<f64>(600); // the same class: 1024
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty() && again.capacity() >= 600);
        // Other element types and tiny buffers go to the allocator.
        assert!(take::<i64>(1000).capacity() >= 1000);
        assert_eq!(take::<f64>(3).capacity(), 3);
    }
}
