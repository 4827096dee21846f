//! The storage floor: element types, abstract values, concrete arrays and the buffer pool.
//!
//! Everything else builds on this module, and it imports nothing from the rest of the crate.

mod aval;
mod data;
mod dtype;
pub(crate) mod pool;

pub use self::aval::Aval;
pub use self::data::Element;
pub(crate) use self::data::{Data, with_array};
pub use self::dtype::DType;

/// Where a kernel writes a value: an element, or one of a buffer not written yet.
pub(crate) trait Slot<T> {
    fn set(&mut self, value: T);
}

impl<T> Slot<T> for T {
    fn set(&mut self, value: T) {
        *self = value;
    }
}

impl<T> Slot<T> for std::mem::MaybeUninit<T> {
    fn set(&mut self, value: T) {
        self.write(value);
    }
}
