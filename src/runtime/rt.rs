//! The one place that names the async runtime.
//!
//! async-std is the requested runtime but is discontinued upstream; everything
//! else in the crate reaches it through these re-exports and helpers, so moving
//! to another runtime (smol, say) touches this file only.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
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

/// Connects to `addr` from the local IP `from` (any port), so the other side
/// sees this node's own address as the source: peers and firewall rules can
/// tell nodes apart even when they share a host. `None` (or an unspecified
/// or other-family IP) lets the kernel choose, as a plain connect does.
pub async fn connect_from(from: Option<IpAddr>, addr: &str) -> io::Result<TcpStream> {
    use async_std::net::ToSocketAddrs;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
    for target in addr.to_socket_addrs().await? {
        match connect_one(from, target).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(last)
}

async fn connect_one(from: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if let Some(ip) = from.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == target.is_ipv4()) {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    let pending = async_io::Async::new(std::net::TcpStream::from(socket))?;
    pending.writable().await?;
    if let Some(err) = pending.get_ref().take_error()? {
        return Err(err);
    }
    // Connected (peer_addr fails on a socket whose connect failed).
    pending.get_ref().peer_addr()?;
    Ok(TcpStream::from(pending.into_inner()?))
}
