//! One connection, plain TCP or TLS over it, behind one type.
//!
//! Readers and writers of a connection run in different tasks, so a
//! connection is cloned, as a `TcpStream` is: clones of a TLS connection
//! share its session behind a mutex held only for the length of one poll
//! (never across an await). `shutdown` and the addresses go to the TCP
//! socket underneath, so a hang-up cuts a TLS connection as it does a plain
//! one.
//!
//! A TLS writer may keep the tail of a write in the session's buffer when
//! the socket is full; every writer flushes after it writes (a no-op on
//! plain TCP).

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use rustls::ServerConfig;

use super::rt::{self, TcpStream};
use crate::tls::{self, ClientTls, HANDSHAKE_TIMEOUT};

type Session = Arc<Mutex<TlsStream<TcpStream>>>;

/// A connection (see the module doc).
#[derive(Clone)]
pub struct Conn {
    tcp: TcpStream,
    tls: Option<Session>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.tcp.peer_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl From<TcpStream> for Conn {
    fn from(tcp: TcpStream) -> Conn {
        Conn::plain(tcp)
    }
}

impl Conn {
    pub fn plain(tcp: TcpStream) -> Conn {
        Conn { tcp, tls: None }
    }

    /// Answers a TLS handshake on an accepted socket, within
    /// [`HANDSHAKE_TIMEOUT`]; why not, in words, otherwise.
    pub async fn accept_tls(tcp: TcpStream, config: Arc<ServerConfig>) -> Result<Conn, String> {
        let accept = TlsAcceptor::from(config).accept(tcp.clone());
        match rt::timeout(HANDSHAKE_TIMEOUT, accept).await {
            None => Err(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")),
            Some(Err(err)) => Err(tls::explain_accept_failure(&err)),
            Some(Ok(stream)) => Ok(Conn {
                tcp,
                tls: Some(Arc::new(Mutex::new(TlsStream::Server(stream)))),
            }),
        }
    }

    /// Makes a TLS handshake as the client on a connected socket, checking
    /// the server's certificate against `addr` (its host part) and what
    /// `tls` trusts, within [`HANDSHAKE_TIMEOUT`]; why not, in words,
    /// otherwise.
    pub async fn connect_tls(tcp: TcpStream, addr: &str, tls: &ClientTls) -> Result<Conn, String> {
        let name = tls::server_name(addr)?;
        let connect = TlsConnector::from(tls.config()).connect(name, tcp.clone());
        match rt::timeout(HANDSHAKE_TIMEOUT, connect).await {
            None => Err(format!(
                "the server took the connection but did not answer the handshake within \
                 {HANDSHAKE_TIMEOUT:?} (stalled, or not a doozer server?)"
            )),
            Some(Err(err)) => Err(tls::explain_dial_failure(&err, tls.trust())),
            Some(Ok(stream)) => Ok(Conn {
                tcp,
                tls: Some(Arc::new(Mutex::new(TlsStream::Client(stream)))),
            }),
        }
    }

    /// Whether TLS runs over this connection.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the other end showed a certificate that the handshake
    /// verified (only a server side asks for one; rustls refuses a
    /// certificate that does not verify, so one that is here did).
    pub fn peer_certified(&self) -> bool {
        self.tls.as_ref().is_some_and(|session| {
            lock(session)
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|certs| !certs.is_empty())
        })
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp.shutdown(how)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp.set_nodelay(on)
    }
}

fn lock(session: &Session) -> MutexGuard<'_, TlsStream<TcpStream>> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AsyncRead for &Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &self.tls {
            // A peer that closes the socket without a TLS close_notify ends
            // the stream as a plain close does: every frame on it carries
            // its own length, so a cut is seen as a truncated frame, not
            // taken for a complete one.
            Some(session) => match Pin::new(&mut *lock(session)).poll_read(cx, buf) {
                Poll::Ready(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(0))
                }
                other => other,
            },
            None => Pin::new(&mut &self.tcp).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for &Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &self.tls {
            Some(session) => Pin::new(&mut *lock(session)).poll_write(cx, buf),
            None => Pin::new(&mut &self.tcp).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.tls {
            Some(session) => Pin::new(&mut *lock(session)).poll_flush(cx),
            None => Pin::new(&mut &self.tcp).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.tls {
            Some(session) => Pin::new(&mut *lock(session)).poll_close(cx),
            None => Pin::new(&mut &self.tcp).poll_close(cx),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_close(cx)
    }
}
