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

    /// The socket, when no TLS runs over it (its bytes may then be written
    /// to it directly; see [`super::direct`]).
    pub fn plain_tcp(&self) -> Option<&TcpStream> {
        self.tls.is_none().then_some(&self.tcp)
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

    /// This connection on a new handle that the next thread to wait on it
    /// watches ([`TcpStream::rehome`]); a TLS connection stays where it is
    /// (its session holds the handle it was made on), as a clone.
    pub fn rehome(&self) -> io::Result<Conn> {
        match &self.tls {
            None => Ok(Conn::plain(self.tcp.rehome()?)),
            Some(_) => Ok(self.clone()),
        }
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

super::tcp::io_through_shared_ref!(Conn);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tls::testing::Ca;
    use crate::tls::NodeTlsSet;

    /// A TLS connection over loopback: (server side, client side).
    async fn tls_pair(ip: &str, server: Arc<ServerConfig>, client: &ClientTls) -> (Conn, Conn) {
        let listener = rt::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accept = rt::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            Conn::accept_tls(tcp, server).await
        });
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let client = Conn::connect_tls(tcp, &addr, client).await.unwrap();
        (accept.await.unwrap(), client)
    }

    fn node(ip: &str) -> (tempfile::TempDir, NodeTlsSet) {
        let dir = tempfile::tempdir().unwrap();
        let files = Ca::new("conn test CA").node_files(dir.path(), "n", &[ip]);
        let set = NodeTlsSet::load(&files).unwrap();
        (dir, set)
    }

    /// Echoes what it reads until the other end closes.
    async fn echo(conn: Conn) {
        let mut buf = vec![0u8; 8192];
        loop {
            let n = (&conn).read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            (&conn).write_all(&buf[..n]).await.unwrap();
            (&conn).flush().await.unwrap();
        }
    }

    #[test]
    fn bytes_echo_over_tls() {
        let (_dir, set) = node("127.0.64.200");
        rt::block_on(async {
            let client_tls = set.client.clone().unwrap();
            let (server, client) =
                tls_pair("127.0.64.200", set.listener.clone(), &client_tls).await;
            assert!(server.is_tls() && client.is_tls());
            assert_eq!(server.local_addr().unwrap(), client.peer_addr().unwrap());
            rt::spawn(echo(server));
            (&client).write_all(b"hello over tls").await.unwrap();
            (&client).flush().await.unwrap();
            let mut got = [0u8; 14];
            (&client).read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello over tls");
            // A hang-up cuts the TLS stream as it does a plain one: the
            // echo ends and the client reads the end.
            client.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let mut reader = &client;
            let read = rt::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
            assert!(read.is_some(), "no end of stream");
        });
    }

    /// One clone writes 4 MiB while another reads the echo back, from two
    /// tasks at once: the shared session neither loses a wake-up nor mixes
    /// bytes up.
    #[test]
    fn clones_read_and_write_at_once() {
        const LEN: usize = 4 << 20;
        let (_dir, set) = node("127.0.64.201");
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let done = rt::block_on(rt::timeout(Duration::from_secs(30), async {
            let client_tls = set.client.clone().unwrap();
            let (server, client) =
                tls_pair("127.0.64.201", set.listener.clone(), &client_tls).await;
            rt::spawn(echo(server));
            let writer = client.clone();
            let sent = data.clone();
            let write = rt::spawn(async move {
                for chunk in sent.chunks(16 * 1024 + 7) {
                    (&writer).write_all(chunk).await.unwrap();
                }
                (&writer).flush().await.unwrap();
            });
            let mut got = vec![0u8; LEN];
            (&client).read_exact(&mut got).await.unwrap();
            write.await;
            got
        }));
        let got = done.expect("the echo finished within 30 s");
        assert!(got == data, "the echo differs");
    }

    /// The server side sees a verified client certificate only when the
    /// client showed one (the peer dialer does, a client does not); a
    /// plain connection has none.
    #[test]
    fn peer_certified_only_with_a_client_certificate() {
        let (_dir, set) = node("127.0.64.202");
        rt::block_on(async {
            let ip = "127.0.64.202";
            let (server, _client) =
                tls_pair(ip, set.listener.clone(), set.client.as_ref().unwrap()).await;
            assert!(!server.peer_certified());
            let (server, _peer) =
                tls_pair(ip, set.listener.clone(), set.peer_dialer.as_ref().unwrap()).await;
            assert!(server.peer_certified());
            let listener = rt::TcpListener::bind((ip, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let plain = Conn::plain(TcpStream::connect(addr).await.unwrap());
            assert!(!plain.is_tls() && !plain.peer_certified());
        });
    }

    /// A client certificate from another CA is refused by the handshake,
    /// so it never counts as certified.
    #[test]
    fn a_client_certificate_from_another_ca_is_refused() {
        let ip = "127.0.64.203";
        let (dir, set) = node(ip);
        let (other_dir, _) = node(ip);
        // Trusts the server's CA, shows a certificate another CA signed.
        let mixed = NodeTlsSet::load(&crate::tls::NodeTlsFiles {
            cert: other_dir.path().join("n.pem"),
            key: other_dir.path().join("n.key"),
            ca: Some(dir.path().join("n-ca.pem")),
        })
        .unwrap();
        rt::block_on(async {
            let listener = rt::TcpListener::bind((ip, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let config = set.listener.clone();
            let accept = rt::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                Conn::accept_tls(tcp, config).await
            });
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let dialed = Conn::connect_tls(tcp, &addr, mixed.peer_dialer.as_ref().unwrap()).await;
            // In TLS 1.3 the client may finish before the server refuses.
            if let Ok(conn) = dialed {
                let mut buf = [0u8; 1];
                let read = rt::timeout(Duration::from_secs(5), (&conn).read(&mut buf)).await;
                assert!(!matches!(read, Some(Ok(1))));
            }
            let err = accept.await.unwrap_err();
            assert!(err.contains("client's certificate"), "{err}");
        });
    }
}
