//! TCP streams and listeners whose reads wait for the reactor's word before
//! they try an empty socket again, on the node thread's own reactor
//! ([`super::reactor`]) or, elsewhere, on async-io.
//!
//! Why not async-std's own: its read tries the socket first and asks the
//! reactor only after `EAGAIN`, and the reactor still reports the event that
//! woke the task before, so every frame read cost three `recvfrom` calls (the
//! data, then two `EAGAIN`s) and a task woken for another reason (a link
//! task woken to send) read its idle socket twice for nothing. At 64
//! connections that was two thirds of a node's `recvfrom` calls.
//!
//! Here a read that finds the socket empty marks it drained, and the read
//! after the task is woken asks the reactor first, which knows whether
//! anything came since. A read after one that returned bytes still tries the
//! socket at once (under load the next frame is often there already). So a
//! frame costs its `recvfrom` and at most one `EAGAIN`. On a node thread,
//! where sockets are registered once, edge-triggered, there is no
//! `epoll_ctl`, and a read that returned fewer bytes than asked took all
//! there was, so it marks the reader drained too and the `EAGAIN` is saved
//! (bytes that come later raise an edge; see
//! [`Registered::short_read_drained`]).
//!
//! Everything else (`shutdown`, addresses) goes straight to the socket.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_std::net::ToSocketAddrs;
use futures::{AsyncRead, AsyncWrite};

use super::reactor::{Direction, Registered};

/// A connected socket. Clones share the socket (a reader and a writer task
/// each hold one); each clone tracks its own reads.
#[derive(Debug)]
pub struct TcpStream {
    io: Arc<Registered<std::net::TcpStream>>,
    /// The last read on this handle found the socket empty: the next one
    /// waits for readiness first.
    drained: AtomicBool,
}

impl Clone for TcpStream {
    fn clone(&self) -> TcpStream {
        TcpStream {
            io: self.io.clone(),
            drained: AtomicBool::new(false),
        }
    }
}

impl TcpStream {
    /// Connects to the first address of `addr` that answers.
    pub async fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
        for target in addr.to_socket_addrs().await? {
            match connect_to(None, target).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    /// Takes over a connected socket in non-blocking mode.
    fn from_nonblocking(tcp: std::net::TcpStream) -> TcpStream {
        TcpStream {
            io: Arc::new(Registered::new(tcp)),
            drained: AtomicBool::new(false),
        }
    }

    /// Another handle on this socket, a duplicated descriptor, watched by
    /// the reactor of whichever thread first waits on it rather than by
    /// this handle's. A socket dialed on one thread (where the connect and
    /// any handshake bound it to async-io) can then be served from a
    /// node reactor ([`super::rt::block_on_own_reactor`]), with no
    /// `epoll_ctl` per wait and no `EAGAIN` after a short read. Only one of
    /// the two handles may wait on the socket at a time.
    pub fn rehome(&self) -> io::Result<TcpStream> {
        Ok(TcpStream::from_nonblocking(self.io.get_ref().try_clone()?))
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.get_ref().shutdown(how)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.io.get_ref().set_nodelay(on)
    }

    /// Has the kernel drop the connection (`ETIMEDOUT`) when bytes it sent
    /// stay unacknowledged, or unsent behind a zero window, for `timeout`
    /// (`TCP_USER_TIMEOUT`): a dead path noticed without the far end having
    /// to write anything.
    pub fn set_unacked_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        socket2::SockRef::from(self.io.get_ref()).set_tcp_user_timeout(Some(timeout))
    }

    /// Reads without taking: waits until at least one byte (or the end) is
    /// there.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        futures::future::poll_fn(|cx| self.io.poll_io(cx, Direction::Read, |tcp| tcp.peek(buf)))
            .await
    }
}

/// Connects to `target` from the local IP `from` (any port; `None`, an
/// unspecified IP or one of the other family lets the kernel choose).
pub(super) async fn connect_to(from: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
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
    let stream = TcpStream::from_nonblocking(std::net::TcpStream::from(socket));
    loop {
        futures::future::poll_fn(|cx| stream.io.poll_write_ready(cx)).await?;
        if let Some(err) = stream.io.get_ref().take_error()? {
            return Err(err);
        }
        // Connected once it has a peer (a failed connect has none either,
        // but leaves its error, taken above).
        match stream.peer_addr() {
            Ok(_) => return Ok(stream),
            Err(err) if err.kind() == io::ErrorKind::NotConnected => {}
            Err(err) => return Err(err),
        }
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.get_ref().as_raw_fd()
    }
}

impl AsyncRead for &TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this: &TcpStream = self.get_mut();
        loop {
            if this.drained.load(Ordering::Relaxed) {
                ready!(this.io.poll_read_ready(cx))?;
            } else {
                this.io.clear_read_ready();
            }
            match this.io.get_ref().read(buf) {
                Ok(n) => {
                    let drained = this.io.short_read_drained(n, buf.len());
                    this.drained.store(drained, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    this.drained.store(true, Ordering::Relaxed);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for &TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io
            .poll_io(cx, Direction::Write, |mut tcp| tcp.write(buf))
    }

    /// One `writev` of every buffer: the default would write only the
    /// first, and rustls hands its records over as several (a TLS 1.3
    /// client's last-gasp alert follows a change-cipher-spec record in the
    /// same single write attempt, and was lost).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io
            .poll_io(cx, Direction::Write, |mut tcp| tcp.write_vectored(bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(Shutdown::Write))
    }
}

/// `AsyncRead` and `AsyncWrite` for an owned handle through the impls on
/// a shared one (`&T`), as `TcpStream` has them: reads and writes of a
/// socket need no exclusive access.
macro_rules! io_through_shared_ref {
    ($t:ty) => {
        impl futures::io::AsyncRead for $t {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_read(cx, buf)
            }
        }

        impl futures::io::AsyncWrite for $t {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_write_vectored(cx, bufs)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_flush(cx)
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_close(cx)
            }
        }
    };
}
pub(super) use io_through_shared_ref;

io_through_shared_ref!(TcpStream);

/// A listening socket whose accepted connections are [`TcpStream`]s.
#[derive(Debug)]
pub struct TcpListener {
    io: Registered<std::net::TcpListener>,
}

impl TcpListener {
    pub async fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<TcpListener> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to listen on");
        for target in addr.to_socket_addrs().await? {
            match std::net::TcpListener::bind(target) {
                Ok(listener) => {
                    listener.set_nonblocking(true)?;
                    return Ok(TcpListener {
                        io: Registered::new(listener),
                    });
                }
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (tcp, from) = futures::future::poll_fn(|cx| {
            self.io
                .poll_io(cx, Direction::Read, std::net::TcpListener::accept)
        })
        .await?;
        tcp.set_nonblocking(true)?;
        Ok((TcpStream::from_nonblocking(tcp), from))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }
}

/// Both ends of a fresh loopback connection: (dialed, accepted).
#[cfg(test)]
pub(super) async fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialed, accepted) = futures::join!(TcpStream::connect(addr), listener.accept());
    (dialed.unwrap(), accepted.unwrap().0)
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::runtime::rt;

    /// On a node thread (its own edge-triggered reactor), a writer that
    /// filled the socket waits and resumes when the far end drains it, and
    /// a reader waits for bytes that come later; the listener was bound off
    /// the node thread and accepts on it.
    #[test]
    fn on_a_node_thread_a_full_socket_and_an_empty_one_both_wake_their_tasks() {
        // More than both socket buffers hold (loopback: up to 4 + 6 MiB).
        const TOTAL: usize = 32 << 20;
        let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let far = std::thread::spawn(move || {
            let mut far = std::net::TcpStream::connect(addr).unwrap();
            far.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            // Let the node's writer fill both socket buffers first.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let mut got = 0;
            let mut buf = vec![0u8; 1 << 16];
            while got < TOTAL {
                let n = far.read(&mut buf).unwrap();
                assert!(n > 0, "the stream ended after {got} bytes");
                got += n;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            far.write_all(b"done").unwrap();
            far
        });
        let (report, result) = std::sync::mpsc::channel();
        let node = rt::spawn_node_thread("test-node", move || async move {
            let run = async {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut writer = tcp.clone();
                writer.write_all(&vec![5u8; TOTAL]).await.unwrap();
                let mut reader = tcp;
                let mut word = [0u8; 4];
                reader.read_exact(&mut word).await.unwrap();
                word
            };
            let got = rt::timeout(std::time::Duration::from_secs(30), run).await;
            report.send(got).unwrap();
        })
        .unwrap();
        node.join().unwrap();
        assert_eq!(result.recv().unwrap(), Some(*b"done"));
        drop(far.join().unwrap());
    }

    /// On a node thread a short read marks the reader drained (no `EAGAIN`
    /// read needed), and what comes after still wakes it; the end of the
    /// stream that came with the last bytes is still read, not waited for.
    #[test]
    fn on_a_node_thread_a_short_read_drains_but_loses_neither_bytes_nor_the_end() {
        let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let far = std::thread::spawn(move || {
            let mut far = std::net::TcpStream::connect(addr).unwrap();
            // The reader waits first (and so is registered).
            std::thread::sleep(std::time::Duration::from_millis(100));
            far.write_all(b"one").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            far.write_all(b"two").unwrap();
            // The last bytes and the end together.
            far.write_all(b"three").unwrap();
            far.shutdown(Shutdown::Write).unwrap();
            far
        });
        let (report, result) = std::sync::mpsc::channel();
        let node = rt::spawn_node_thread("test-node", move || async move {
            let run = async {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 64];
                let mut got = Vec::new();
                let mut drained_after_short = 0;
                loop {
                    let n = tcp.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if tcp.drained.load(Ordering::Relaxed) {
                        drained_after_short += 1;
                    }
                }
                (got, drained_after_short)
            };
            let got = rt::timeout(std::time::Duration::from_secs(30), run).await;
            report.send(got).unwrap();
        })
        .unwrap();
        node.join().unwrap();
        let (got, drained_after_short) = result.recv().unwrap().expect("the reader hung");
        assert_eq!(got, b"onetwothree");
        assert!(
            drained_after_short >= 1,
            "no short read marked the reader drained"
        );
        drop(far.join().unwrap());
    }

    /// A vectored write goes out as one `writev` of every buffer (rustls
    /// relies on it for its last-gasp alert).
    #[test]
    fn a_vectored_write_writes_every_buffer() {
        rt::block_on(async {
            let (a, mut b) = loopback_pair().await;
            let bufs = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cde")];
            let wrote =
                futures::future::poll_fn(|cx| Pin::new(&mut &a).poll_write_vectored(cx, &bufs));
            assert_eq!(wrote.await.unwrap(), 5);
            let mut got = [0u8; 5];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"abcde");
        });
    }

    /// Bytes that arrive while a reader is marked drained still wake it,
    /// whether they came before it waited or after; after bytes, the next
    /// read goes to the socket at once; the end of the stream reads as 0,
    /// again and again.
    #[test]
    fn a_drained_reader_is_woken_by_what_comes_before_or_after_it_waits() {
        rt::block_on(async {
            let (mut a, b) = loopback_pair().await;
            let mut reader = b.clone();
            a.write_all(b"one").await.unwrap();
            let mut buf = [0u8; 16];
            assert_eq!(reader.read(&mut buf).await.unwrap(), 3);
            assert!(!reader.drained.load(Ordering::Relaxed));
            // An empty socket marks the reader drained.
            let empty = futures::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut &reader).poll_read(cx, &mut buf).is_pending())
            });
            assert!(empty.await);
            assert!(reader.drained.load(Ordering::Relaxed));
            // Came while drained, before the next read waits.
            a.write_all(b"two").await.unwrap();
            let got = rt::timeout(std::time::Duration::from_secs(5), reader.read(&mut buf)).await;
            assert_eq!(got.unwrap().unwrap(), 3);
            assert!(!reader.drained.load(Ordering::Relaxed));
            // Comes after the reader waits.
            let late = rt::spawn(async move {
                rt::sleep(std::time::Duration::from_millis(50)).await;
                a.write_all(&[7u8; 40]).await.unwrap();
                a
            });
            let mut small = [0u8; 8];
            let got = rt::timeout(std::time::Duration::from_secs(5), reader.read(&mut small)).await;
            assert_eq!(got.unwrap().unwrap(), 8);
            // After bytes, the next read tries the socket at once.
            assert!(!reader.drained.load(Ordering::Relaxed));
            let mut rest = [0u8; 64];
            let mut total = 0;
            while total < 32 {
                total += reader.read(&mut rest[total..]).await.unwrap();
            }
            assert_eq!(total, 32);
            let a = late.await;
            a.shutdown(Shutdown::Write).unwrap();
            for _ in 0..3 {
                let got = rt::timeout(std::time::Duration::from_secs(5), reader.read(&mut buf));
                assert_eq!(got.await.unwrap().unwrap(), 0);
            }
        });
    }

    /// A socket dialed and read on one thread (so watched by async-io) and
    /// then rehomed is watched by the reactor of the thread that waits on
    /// the new handle: a short read there marks it drained, which only a
    /// node reactor allows, and bytes that come later still wake it. The
    /// first handle stays usable once the new one is gone.
    #[test]
    fn a_rehomed_socket_is_watched_by_the_reactor_of_the_thread_that_waits_on_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let far = std::thread::spawn(move || {
            let (mut far, _) = listener.accept().unwrap();
            far.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            let mut word = [0u8; 3];
            for (send, expect) in [(b"one", b"ack"), (b"two", b"bye"), (b"end", b"fin")] {
                // The near side waits first, so each word comes as an edge.
                std::thread::sleep(std::time::Duration::from_millis(100));
                far.write_all(send).unwrap();
                far.read_exact(&mut word).unwrap();
                assert_eq!(&word, expect);
            }
        });
        let near = rt::block_on(TcpStream::connect(addr)).unwrap();
        let exchange = |tcp: TcpStream, reply: &'static [u8]| async move {
            let mut buf = [0u8; 64];
            let n = (&tcp).read(&mut buf).await.unwrap();
            (&tcp).write_all(reply).await.unwrap();
            (buf[..n].to_vec(), tcp.drained.load(Ordering::Relaxed))
        };
        let limit = std::time::Duration::from_secs(30);
        let (got, drained) =
            rt::block_on(rt::timeout(limit, exchange(near.clone(), b"ack"))).unwrap();
        assert_eq!((got.as_slice(), drained), (&b"one"[..], false));

        let moved = near.rehome().unwrap();
        let (got, drained) = std::thread::spawn(move || {
            rt::block_on_own_reactor(rt::timeout(limit, exchange(moved, b"bye")))
                .unwrap()
                .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(got, b"two");
        assert!(
            drained,
            "the rehomed handle was not watched by its thread's reactor"
        );

        let (got, _) = rt::block_on(rt::timeout(limit, exchange(near, b"fin"))).unwrap();
        assert_eq!(got, b"end");
        far.join().unwrap();
    }
}
