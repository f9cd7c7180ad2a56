//! The process around the core: the event loop thread and the network edges.
//! async-std is named only in [`rt`].

pub mod attach;
pub mod client_conn;
pub mod conn;
pub mod direct;
pub mod dzns;
pub mod event_loop;
pub mod peer_link;
pub mod reactor;
pub mod rt;
pub mod server;
pub mod tcp;
