//! Wire formats at the edge of the process. The core never sees these types.
//!
//! - [`client`]: the doozer client protocol, byte-compatible with the original
//!   (4-byte big-endian length + a proto2 message, see `proto/doozer.proto`).
//! - [`peer`]: node-to-node links on the same port (a magic prefix, then
//!   4-byte big-endian length + bincode frames).
//! - [`peer_auth`]: the peer links' handshake and per-frame MACs.
//! - [`durable`]: the payloads of the data dir (log batches, node images).

pub mod client;
pub mod durable;
pub mod peer;
pub mod peer_auth;
