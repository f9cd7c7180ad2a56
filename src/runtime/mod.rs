//! The process around the core: the event loop thread and the network edges.

pub mod rt;
