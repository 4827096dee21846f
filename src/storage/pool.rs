//! A per-thread pool of large `f64` buffers, reused across runs of a plan.
//!
//! Fresh large allocations come from the operating system as unmapped pages, and faulting them
//! in costs more than the arithmetic that fills them (on the benchmark machines, about 1 ms per
//! 8 MB). A plan frees each intermediate buffer after its last use; those buffers come back
//! here, and kernels that produce large `f64` arrays take their storage from here, so a plan
//! run many times stops paying for page faults after its first run.

use std::any::Any;
use std::cell::RefCell;

use super::Data;

/// Buffers smaller than this many elements are left to the allocator.
const MIN_LEN: usize = 1 << 15;
/// At most this many bytes of buffers are kept per thread.
const MAX_BYTES: usize = 1 << 30;

thread_local! {
    static POOL: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
}

fn bytes(buffer: &Vec<f64>) -> usize {
    buffer.capacity() * std::mem::size_of::<f64>()
}

/// An empty vector with room for `len` elements, from the pool when `T` is `f64` and a pooled
/// buffer fits (not more than twice the size needed).
pub(crate) fn take<T: 'static>(len: usize) -> Vec<T> {
    if len >= MIN_LEN && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>() {
        let found = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let pos = pool
                .iter()
                .position(|b| b.capacity() >= len && b.capacity() <= 2 * len)?;
            Some(pool.swap_remove(pos))
        });
        if let Some(buffer) = found {
            let any: Box<dyn Any> = Box::new(buffer);
            if let Ok(buffer) = any.downcast::<Vec<T>>() {
                return *buffer;
            }
        }
    }
    Vec::with_capacity(len)
}

/// Returns the storage of a dead array to the pool.
pub(crate) fn recycle(data: Data) {
    if let Data::F64(array) = data {
        if array.len() >= MIN_LEN {
            let (mut buffer, _) = array.into_raw_vec_and_offset();
            buffer.clear();
            POOL.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.iter().map(bytes).sum::<usize>() + bytes(&buffer) <= MAX_BYTES {
                    pool.push(buffer);
                }
            });
        }
    }
}
