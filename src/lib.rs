//! doozer: a highly available, completely consistent store for small,
//! important data, wire-compatible with the original doozer.

pub mod bench;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod core;
pub mod error;
pub mod paxos;
pub mod runtime;
pub mod session;
pub mod store;
pub mod types;
pub mod uri;
