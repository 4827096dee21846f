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
