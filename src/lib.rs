//! doozer: a highly available, completely consistent store for small,
//! important data, wire-compatible with the original doozer.

pub mod codec;
pub mod error;
pub mod runtime;
pub mod types;
