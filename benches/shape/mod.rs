//! The load both in-memory benches put on three nodes, and the pace they
//! drive them at, in one place so their figures stay comparable.

use std::time::Duration;

/// Writers against the leader, each with one write outstanding.
pub const WRITERS: u32 = 256;
/// Bytes per value.
pub const VALUE_BYTES: usize = 64;
/// Inputs one turn of a node takes at most (the event loop's `MAX_BATCH`).
pub const MAX_BATCH: usize = 4096;
/// Wall time between ticks (the runtime's default `-tick`).
pub const TICK: Duration = Duration::from_millis(5);
/// Loop turns any phase may take before the harness gives up (bounds every
/// loop; a healthy run needs a small fraction).
pub const MAX_TURNS: u64 = 50_000_000;
