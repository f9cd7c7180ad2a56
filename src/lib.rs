//! doozer: a highly available, completely consistent store for small,
//! important data, wire-compatible with the original doozer.
//!
//! # Shape
//!
//! ```text
//!  clients ──TCP── runtime::client_conn (reader + writer task per connection)
//!                     │ session: rights, tags, argument checks → core::Command
//!                     ▼ inbox bounded in items and bytes (try_send; full → OTHER busy)
//!  ticker ───────► runtime::event_loop (one thread) ── owns ──► core::Core
//!                     ▲                                          ├ paxos (ordering)
//!                     │ bounded outbox per connection (try_send;  └ store (tree, history,
//!                     │ full → that client is disconnected)          watches)
//! ```
//!
//! [`core::Core`] is a pure state machine: typed inputs in, outputs out, time
//! as ticks, randomness from a seed. That is what lets tests run it without
//! sockets and replay any run from its seed. [`store`] and [`paxos`] know
//! nothing of each other; the core joins them. Wire formats live in
//! [`codec`]; the async runtime is named only in [`runtime::rt`].

pub mod backup;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod core;
pub mod disk;
pub mod error;
pub mod journal;
pub mod lincheck;
pub mod paxos;
pub mod runtime;
pub mod session;
pub mod store;
pub mod tls;
pub mod types;
pub mod uri;
pub mod web;
