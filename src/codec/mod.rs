//! Wire formats at the edge of the process. The core never sees these types.
//!
//! - [`client`]: the doozer client protocol, byte-compatible with the original
//!   (4-byte big-endian length + a proto2 message, see `proto/doozer.proto`).

pub mod client;
