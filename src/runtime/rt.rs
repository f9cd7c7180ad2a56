//! The one place that names the async runtime.
//!
//! async-std is the requested runtime but is discontinued upstream; everything
//! else in the crate reaches it through these re-exports and helpers, so moving
//! to another runtime (smol, say) touches this file only.

use std::future::Future;
use std::time::Duration;

pub use async_std::net::{TcpListener, TcpStream};
pub use async_std::task::JoinHandle;

/// Runs a future to completion on the current thread (binaries' `main`, tests).
pub fn block_on<F: Future>(future: F) -> F::Output {
    async_std::task::block_on(future)
}

/// Spawns a task on the runtime's executor.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    async_std::task::spawn(future)
}

pub async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await
}

/// Awaits `future` for at most `duration`; `None` when time ran out.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    async_std::future::timeout(duration, future).await.ok()
}
