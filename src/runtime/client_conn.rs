//! Client connections: accept, read frames, check them in the session, hand
//! commands to the core, write replies.
//!
//! Peers share the port: a connection whose first 4 bytes are the peer magic
//! goes to [`peer_link::serve_inbound`]; any other first 4 bytes are the
//! header of a client's first frame. With TLS on, every connection first
//! completes a TLS handshake (within
//! [`HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT)), and only one
//! that showed a client certificate signed by the cluster CA may go on as a
//! peer; anything else (plain text included) is closed.
//!
//! Each connection is two tasks: a reader that owns the session checks and
//! `try_send`s to the core, and a writer that drains the connection's bounded
//! outbox and writes replies in as few syscalls as it can.
//!
//! What one host can take is bounded here, before anything reaches the core:
//! connection slots per source address (so idle sockets from one host
//! cannot lock everyone else out), with secrets set a deadline to pass
//! `ACCESS` and a few attempts at it (per connection, and per address over
//! a minute), and bytes in flight per connection and
//! in the core's inbox. Refusals that an attacker can repeat at wire speed
//! are logged through a [`LogLimiter`], a line a second at most.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use futures::channel::mpsc;
use futures::{AsyncWriteExt, FutureExt, StreamExt};

use super::conn::Conn;
use super::direct::DirectWriter;
use super::event_loop::{
    Control, ControlSender, DirectReplies, Inbox, InboxError, NodeStatus, Outgoing,
};
use super::peer_link::{self, PeerInbound};
use super::rt::{self, TcpListener, TcpStream};
use crate::budget::ByteBudget;
use crate::codec::client::{self, read_message, read_message_after, Request, Response, Verb};
use crate::codec::peer::MAGIC;
use crate::core::{ConnId, Input, Reply};
use crate::error::ReplyError;
use crate::session::{Action, Secrets, Session, SessionLimits};
use crate::store::Snapshot;
use crate::tls::NodeTls;
use crate::types::NodeId;

/// What every connection task shares.
pub struct ClientContext {
    pub inbox: Inbox,
    pub control: ControlSender,
    pub status: Arc<NodeStatus>,
    pub node_id: NodeId,
    pub secrets: Secrets,
    pub session_limits: SessionLimits,
    pub max_frame_bytes: usize,
    pub outbox_capacity: usize,
    pub max_connections: usize,
    /// Open connections from one source address (one IPv6 /64).
    pub max_connections_per_ip: usize,
    /// With secrets set: time from accept to a granted `ACCESS`.
    pub access_timeout: Duration,
    /// Bytes in flight of all client connections together.
    pub client_budget: Arc<ByteBudget>,
    /// Where connections that turn out to be peer links go.
    pub peers: PeerInbound,
    /// With TLS on (`-tlscert`): every connection is TLS.
    pub tls: Option<Arc<NodeTls>>,
}

/// Bytes gathered before a writer flushes to the socket.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// How long a connection being closed for cause (wrong secrets) waits for
/// its last reply to be written before the socket is shut.
const LAST_REPLY_LIMIT: Duration = Duration::from_secs(1);

/// How long a connection waits before trying again to tell the core it
/// closed, when the control channel is full (the core is far behind).
const CONTROL_RETRY: Duration = Duration::from_millis(10);

/// A log line at most once a second for an event an attacker can repeat at
/// wire speed; the lines skipped in between are counted in the next one.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Milliseconds since the Unix epoch of the last line written (0: never).
    last_ms: AtomicU64,
    skipped: AtomicU64,
}

impl LogLimiter {
    pub const fn new() -> LogLimiter {
        LogLimiter {
            last_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Logs `line()` at warn level when a second has passed since the last
    /// line, else counts it as skipped.
    pub fn warn(&self, line: impl FnOnce() -> String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)
            .max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now >= last.saturating_add(1000);
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let skipped = self.skipped.swap(0, Ordering::Relaxed);
            if skipped == 0 {
                log::warn!("{}", line());
            } else {
                log::warn!("{} ({skipped} more like it not logged)", line());
            }
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Connections refused at accept (over a limit).
static REFUSED_LOG: LogLimiter = LogLimiter::new();
/// Connections closed for failing `ACCESS` or its deadline.
static ACCESS_LOG: LogLimiter = LogLimiter::new();

/// The address a per-source connection cap counts by: an IPv4 address (an
/// IPv4-mapped IPv6 one as IPv4), or an IPv6 address's /64, which one host
/// usually holds whole.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Open connections per source address; an entry lives while it counts any.
#[derive(Debug)]
pub struct SourceSlots {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceSlots {
    pub fn new(cap: usize) -> SourceSlots {
        SourceSlots {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for a connection from `ip`, or `None` (with the count
    /// already open) when that address holds the cap.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<SourceSlot, usize> {
        let key = source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.cap {
            return Err(*n);
        }
        *n += 1;
        Ok(SourceSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s address.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&source_key(ip)).copied().unwrap_or(0)
    }
}

/// Wrong `ACCESS` attempts one address (one IPv6 /64) may make in
/// [`GUESS_WINDOW`], over all its connections; past it, new connections from
/// that address are closed at accept, and open ones at their next wrong
/// attempt, until the window ends (logged). 30 a minute: a person fixing a
/// typo never comes near, a guesser gets 43,200 tries a day instead of
/// millions a second. A client on the same host as a guesser is locked out
/// with it for the rest of the window: the price of counting by address.
pub const MAX_GUESSES_PER_ADDRESS: u32 = 30;

/// The window [`MAX_GUESSES_PER_ADDRESS`] counts over.
pub const GUESS_WINDOW: Duration = Duration::from_secs(60);

/// Addresses whose wrong attempts are counted at once. When full, entries of
/// ended windows are dropped; if none has ended, a new address is not
/// counted (the ones counted stay locked out): memory stays bounded whatever
/// the number of addresses a guesser holds.
pub const MAX_GUESSING_ADDRESSES: usize = 65_536;

/// Wrong `ACCESS` attempts per source address, in fixed windows.
#[derive(Debug, Default)]
pub struct Guesses {
    by_source: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Guesses {
    /// Counts `n` wrong attempts from `ip` at `now`; true when the address
    /// is now over its allowance.
    pub fn note(&self, ip: IpAddr, n: u32, now: Instant) -> bool {
        let key = source_key(ip);
        let mut by = self
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !by.contains_key(&key) && by.len() >= MAX_GUESSING_ADDRESSES {
            by.retain(|_, (start, _)| now.duration_since(*start) < GUESS_WINDOW);
            if by.len() >= MAX_GUESSING_ADDRESSES {
                return false;
            }
        }
        let entry = by.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= GUESS_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(n);
        entry.1 > MAX_GUESSES_PER_ADDRESS
    }

    /// Whether `ip`'s address has used up its allowance in its current window.
    pub fn locked_out(&self, ip: IpAddr, now: Instant) -> bool {
        let by = self
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by.get(&source_key(ip)).is_some_and(|(start, n)| {
            now.duration_since(*start) < GUESS_WINDOW && *n >= MAX_GUESSES_PER_ADDRESS
        })
    }
}

/// One connection's slot; given back on drop.
#[derive(Debug)]
pub struct SourceSlot {
    slots: Arc<SourceSlots>,
    key: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Accepts client and peer connections for ever.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<ClientContext>) {
    let mut next_conn: ConnId = 1;
    let slots = Arc::new(SourceSlots::new(ctx.max_connections_per_ip));
    let guesses = Arc::new(Guesses::default());
    let snapshots = Arc::new(SnapshotSlots::default());
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off, don't spin.
                log::warn!("accept failed: {err}");
                rt::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = ctx.status.connections.load(Ordering::Relaxed);
        if open >= ctx.max_connections {
            REFUSED_LOG
                .warn(|| format!("refusing a connection from {from}: {open} are open (the limit)"));
            refuse(&stream, &ctx);
            continue;
        }
        if ctx.secrets.any_set() && guesses.locked_out(from.ip(), Instant::now()) {
            ACCESS_LOG.warn(|| {
                format!(
                    "refusing a connection from {from}: over {MAX_GUESSES_PER_ADDRESS} wrong \
                     ACCESS attempts from that address in {GUESS_WINDOW:?}"
                )
            });
            refuse(&stream, &ctx);
            continue;
        }
        let slot = match slots.take(from.ip()) {
            Ok(slot) => slot,
            Err(n) => {
                REFUSED_LOG.warn(|| {
                    format!(
                        "refusing a connection from {from}: {n} are open from that address (the limit)"
                    )
                });
                refuse(&stream, &ctx);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = next_conn;
        next_conn += 1;
        ctx.status.connections.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let accepted = Instant::now();
        let guesses = guesses.clone();
        let snapshots = snapshots.clone();
        rt::spawn(async move {
            dispatch(conn, stream, accepted, &ctx, &guesses, snapshots).await;
            ctx.status.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}

/// Closes a connection refused at accept, and counts it.
fn refuse(stream: &TcpStream, ctx: &ClientContext) {
    ctx.status
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Reads a connection's first 4 bytes (after its TLS handshake, with TLS
/// on), here in its own task: an idle client is normal and must not hold up
/// the accept loop. With secrets set, an idle connection has until its
/// `ACCESS` deadline to say anything.
async fn dispatch(
    conn: ConnId,
    tcp: TcpStream,
    accepted: Instant,
    ctx: &ClientContext,
    guesses: &Guesses,
    snapshots: Arc<SnapshotSlots>,
) {
    let stream = match &ctx.tls {
        None => Conn::plain(tcp),
        Some(tls) => {
            let peer = peer_name(&tcp);
            match Conn::accept_tls(tcp.clone(), tls.current().listener.clone()).await {
                Ok(stream) => stream,
                Err(reason) => {
                    tls.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    TLS_LOG.warn(|| {
                        format!(
                            "connection {conn} from {peer} closed: TLS handshake failed: {reason}"
                        )
                    });
                    let _ = tcp.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    };
    let mut reader = &stream;
    let read = client::read_header(&mut reader);
    let header = if ctx.secrets.any_set() {
        match rt::timeout(ctx.access_timeout, read).await {
            Some(read) => read,
            None => {
                let peer = conn_name(&stream);
                ACCESS_LOG.warn(|| {
                    format!(
                        "client {peer} (connection {conn}) closed: silent for {:?} with secrets set",
                        ctx.access_timeout
                    )
                });
                ctx.status.access_refused.fetch_add(1, Ordering::Relaxed);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    } else {
        read.await
    };
    let header = match header {
        Ok(Some(header)) => header,
        // Connected and left without a word.
        Ok(None) => return,
        Err(err) => {
            let peer = conn_name(&stream);
            log::info!("client {peer} (connection {conn}) disconnected: {err}");
            return;
        }
    };
    if header == MAGIC {
        if let Some(tls) = &ctx.tls {
            let refusal = if !tls.takes_peers() {
                Some("TLS is on without --tls-ca: this node takes no peers")
            } else if !stream.peer_certified() {
                Some("it showed no client certificate (with TLS on, a peer must show one the cluster CA signed)")
            } else {
                None
            };
            if let Some(reason) = refusal {
                ctx.peers.note_refusal(&conn_name(&stream), reason);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        peer_link::serve_inbound(stream, &ctx.peers).await;
    } else {
        serve(conn, stream, header, accepted, ctx, guesses, snapshots).await;
    }
}

/// Failed TLS handshakes: anyone can make them, at wire speed.
static TLS_LOG: LogLimiter = LogLimiter::new();

fn conn_name(stream: &Conn) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string())
}

fn peer_name(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string())
}

/// Bytes of answers queued for a plain-TCP client that is not reading them
/// (its socket full) before it is disconnected; a single larger answer is
/// queued alone.
pub const DIRECT_QUEUE_BYTES: usize = 16 << 20;

/// Bytes read from a client socket at once.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// The longest a reader waits for room in flight before the request is
/// checked (and refused if there is still none).
const ROOM_WAIT: Duration = Duration::from_secs(10);

/// Waits (at most [`ROOM_WAIT`]) until the session has room for `request`
/// or no request in flight would make some.
async fn wait_for_room(session: &Mutex<Session>, request: &Request) {
    let room = futures::future::poll_fn(|cx| {
        let mut session = lock(session);
        if session.must_wait(request) {
            session.wake_on_completion(cx.waker());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    });
    let _ = rt::timeout(ROOM_WAIT, room).await;
}

/// Request bytes a reader hands the core before it lets the core run.
const YIELD_AFTER_BYTES: usize = 256 * 1024;

/// How often a client held while the node fetches its copy looks again.
const COPY_POLL: Duration = Duration::from_millis(10);

/// Why a connection's reader stopped.
enum End {
    /// The client closed between frames.
    Clean,
    /// Something worth an info line (a bad frame, a client not reading).
    Error(String),
    /// Cut off for cause (secrets): a rate-limited warning, after the last
    /// reply is written.
    Refused(String),
}

/// Serves a client whose first frame header was already read.
async fn serve(
    conn: ConnId,
    stream: Conn,
    first_header: [u8; client::HEADER_BYTES],
    accepted: Instant,
    ctx: &ClientContext,
    guesses: &Guesses,
    snapshots: Arc<SnapshotSlots>,
) {
    let peer = conn_name(&stream);
    let source = stream.peer_addr().ok().map(|a| a.ip());
    let mut failures_seen = 0;
    // A node still fetching its first copy of the store (attaching) has
    // nothing true to say yet: an empty tree at rev 0 would mislead. Hold
    // the client until the copy is in, as the original did by accepting
    // nobody before its clone; the client may give up by closing.
    let mut held = false;
    while !ctx.status.writable.load(Ordering::Acquire) {
        held = true;
        rt::sleep(COPY_POLL).await;
    }
    let session = Arc::new(Mutex::new(
        Session::new(ctx.secrets.clone(), ctx.node_id.clone(), ctx.session_limits)
            .with_shared_budget(ctx.client_budget.clone()),
    ));
    let (mut outbox, replies) = mpsc::channel(ctx.outbox_capacity);
    let writer = stream
        .plain_tcp()
        .map(|tcp| Arc::new(DirectWriter::new(tcp.clone(), DIRECT_QUEUE_BYTES)));
    let cut = stream.clone();
    let cut_writer = writer.clone();
    let opened = Control::Opened {
        conn,
        outbox: outbox.clone(),
        hang_up: Box::new(move || {
            if let Some(writer) = cut_writer {
                writer.close();
            }
            let _ = cut.shutdown(std::net::Shutdown::Both);
        }),
        direct: writer.clone().map(|writer| DirectReplies {
            writer,
            session: session.clone(),
        }),
    };
    match ctx.control.try_send(opened) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            REFUSED_LOG.warn(|| {
                format!("refusing client {peer} (connection {conn}): the core is far behind")
            });
            ctx.status
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        Err(TrySendError::Disconnected(_)) => return,
    }
    let mut writer = rt::spawn(write_replies(
        stream.clone(),
        replies,
        session.clone(),
        snapshots,
        writer,
    ));

    // With secrets set, the connection must hold a right by this time
    // (counted from accept, or from the end of the wait for the copy: that
    // wait is not the client's doing).
    let since = if held { Instant::now() } else { accepted };
    let deadline = ctx.secrets.any_set().then(|| since + ctx.access_timeout);
    // Buffered: a pipelining client's frames come in with one read, not two
    // (header, body) per request.
    let mut reader = futures::io::BufReader::with_capacity(READ_BUFFER_BYTES, stream.clone());
    let mut first_header = Some(first_header);
    let mut submitted_bytes = 0;
    let end = loop {
        let read = async {
            match first_header.take() {
                Some(header) => read_message_after(&mut reader, header, ctx.max_frame_bytes)
                    .await
                    .map(Some),
                None => read_message(&mut reader, ctx.max_frame_bytes).await,
            }
        };
        let pending_access = deadline.filter(|_| !lock(&session).has_rights());
        let read = match pending_access {
            None => read.await,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match rt::timeout(left, read).await {
                    Some(read) => read,
                    None => {
                        break End::Refused(format!(
                            "no ACCESS within {:?} with secrets set",
                            ctx.access_timeout
                        ))
                    }
                }
            }
        };
        let request: Request = match read {
            Ok(Some(request)) => request,
            Ok(None) => break End::Clean,
            Err(err) => break End::Error(err.to_string()),
        };
        // An address out of guesses gets no secret checked, on any of its
        // connections, until its window ends.
        let guessing = request.verb == Some(Verb::Access as i32);
        if guessing && source.is_some_and(|ip| guesses.locked_out(ip, Instant::now())) {
            let denied = Response::error(request.tag, &ReplyError::permission_denied());
            let _ = outbox.try_send(Outgoing::Immediate(denied));
            break End::Refused(format!(
                "ACCESS from an address with over {MAX_GUESSES_PER_ADDRESS} wrong attempts in \
                 {GUESS_WINDOW:?}"
            ));
        }
        if lock(&session).must_wait(&request) {
            wait_for_room(&session, &request).await;
        }
        let writable = ctx.status.writable.load(Ordering::Acquire);
        let (action, failures) = {
            let mut session = lock(&session);
            (
                session.on_request(request, writable),
                session.access_failures(),
            )
        };
        if failures > failures_seen {
            let over =
                source.is_some_and(|ip| guesses.note(ip, failures - failures_seen, Instant::now()));
            failures_seen = failures;
            if over {
                if let Action::Reply(reply) | Action::Close { reply, .. } = action {
                    let _ = outbox.try_send(Outgoing::Immediate(reply));
                }
                break End::Refused(format!(
                    "over {MAX_GUESSES_PER_ADDRESS} wrong ACCESS attempts from that address in \
                     {GUESS_WINDOW:?}"
                ));
            }
        }
        let immediate = match action {
            Action::Reply(response) => response,
            Action::Close { reply, reason } => {
                let _ = outbox.try_send(Outgoing::Immediate(reply));
                break End::Refused(reason);
            }
            Action::Submit {
                tag,
                command,
                bytes,
            } => match ctx
                .inbox
                .try_send(Input::Request { conn, tag, command }, bytes)
            {
                Ok(()) => {
                    // The core runs on this thread: after a big request let
                    // it take what came in before reading on, as it would
                    // meanwhile on a thread of its own, so a client
                    // pipelining big values is not refused for bytes in
                    // flight that the core would already have answered.
                    submitted_bytes += bytes;
                    if submitted_bytes >= YIELD_AFTER_BYTES {
                        submitted_bytes = 0;
                        rt::yield_now().await;
                    }
                    continue;
                }
                Err(InboxError::Full) => {
                    lock(&session).completed(tag);
                    Response::error(tag, &ReplyError::busy())
                }
                Err(InboxError::Closed) => break End::Error("server is shutting down".into()),
            },
        };
        if outbox.try_send(Outgoing::Immediate(immediate)).is_err() {
            break End::Error("client is not reading its replies".into());
        }
    };
    match &end {
        End::Clean => {}
        End::Error(reason) => {
            log::info!("client {peer} (connection {conn}) disconnected: {reason}")
        }
        End::Refused(reason) => {
            ctx.status.access_refused.fetch_add(1, Ordering::Relaxed);
            ACCESS_LOG.warn(|| format!("client {peer} (connection {conn}) closed: {reason}"))
        }
    }
    tell_closed(conn, ctx).await;
    drop(outbox);
    if matches!(end, End::Refused(_)) {
        // Let the writer send the last reply; it ends once the core has
        // dropped its handle on the outbox too.
        let _ = rt::timeout(LAST_REPLY_LIMIT, &mut writer).await;
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    writer.await;
}

/// Tells the core the connection is gone. A full control channel means the
/// core is far behind; the message must not be lost (the core would keep the
/// connection's WAITs), so it is sent again a little later, the connection
/// still counted against the limits meanwhile.
async fn tell_closed(conn: ConnId, ctx: &ClientContext) {
    let mut msg = Control::Closed { conn };
    loop {
        match ctx.control.try_send(msg) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => return,
            Err(TrySendError::Full(back)) => {
                msg = back;
                rt::sleep(CONTROL_RETRY).await;
            }
        }
    }
}

/// What the writer task is woken for.
enum WriterEvent {
    /// Bytes the core's thread queued are in the buffer (`false`: the
    /// direct writer closed).
    Taken(bool),
    Outgoing(Option<Outgoing>),
}

/// The writer task of a plain-TCP connection, whose answers the core's
/// thread mostly writes itself: it writes what the socket did not take at
/// once, the answers the reader produced, and SNAPSHOT streams (owning the
/// socket meanwhile, so nothing interleaves).
async fn write_replies_direct(
    mut stream: Conn,
    mut replies: mpsc::Receiver<Outgoing>,
    session: Arc<Mutex<Session>>,
    snapshots: Arc<SnapshotSlots>,
    direct: Arc<DirectWriter>,
) {
    let mut taken = Vec::new();
    let mut buf = Vec::new();
    loop {
        taken.clear();
        let event = futures::future::poll_fn(|cx| {
            if let Poll::Ready(more) = direct.poll_take(cx, &mut taken) {
                return Poll::Ready(WriterEvent::Taken(more));
            }
            replies.poll_next_unpin(cx).map(WriterEvent::Outgoing)
        })
        .await;
        match event {
            WriterEvent::Taken(false) => break,
            WriterEvent::Taken(true) => {
                if direct.write_out(&taken).await.is_err() {
                    break;
                }
                if taken.capacity() > WRITE_BATCH_BYTES * 16 {
                    taken = Vec::new();
                }
            }
            WriterEvent::Outgoing(None) => {
                // The connection is over: what is queued still goes out.
                direct.own(&mut taken).await;
                break;
            }
            WriterEvent::Outgoing(Some(outgoing)) => {
                buf.clear();
                let tree = encode(outgoing, &mut buf, &session);
                if direct.send(&buf).is_err() {
                    break;
                }
                let Some((tag, tree)) = tree else { continue };
                if !direct.own(&mut taken).await {
                    break;
                }
                buf.clear();
                let sent = send_snapshot(&mut stream, tag, tree, &mut buf, &snapshots).await;
                buf = Vec::new();
                lock(&session).completed(tag);
                if let Err(reason) = sent {
                    log::info!("snapshot stream ended: {reason}; disconnecting");
                    break;
                }
            }
        }
    }
    direct.close();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Streams a SNAPSHOT's tree, or answers busy when [`MAX_SNAPSHOT_STREAMS`]
/// are being sent.
async fn send_snapshot(
    stream: &mut Conn,
    tag: Option<i32>,
    tree: Snapshot,
    buf: &mut Vec<u8>,
    snapshots: &SnapshotSlots,
) -> Result<(), String> {
    match snapshots.take() {
        Some(_slot) => send_tree(stream, tag, tree, buf).await,
        None => {
            let busy = ReplyError::other(format!(
                "busy: {MAX_SNAPSHOT_STREAMS} snapshots are being sent"
            ));
            client::encode_frame_into(&Response::error(tag, &busy), buf);
            write_flushed(stream, buf)
                .await
                .map_err(|err| err.to_string())
        }
    }
}

async fn write_replies(
    stream: Conn,
    replies: mpsc::Receiver<Outgoing>,
    session: Arc<Mutex<Session>>,
    snapshots: Arc<SnapshotSlots>,
    direct: Option<Arc<DirectWriter>>,
) {
    match direct {
        Some(direct) => write_replies_direct(stream, replies, session, snapshots, direct).await,
        None => write_replies_tls(stream, replies, session, snapshots).await,
    }
}

/// The writer task of a TLS connection: every answer goes through it.
async fn write_replies_tls(
    mut stream: Conn,
    mut replies: mpsc::Receiver<Outgoing>,
    session: Arc<Mutex<Session>>,
    snapshots: Arc<SnapshotSlots>,
) {
    let mut buf = Vec::with_capacity(WRITE_BATCH_BYTES);
    while let Some(first) = replies.next().await {
        let mut tree = encode(first, &mut buf, &session);
        while tree.is_none() && buf.len() < WRITE_BATCH_BYTES {
            match replies.try_recv() {
                Ok(next) => tree = encode(next, &mut buf, &session),
                Err(_) => break,
            }
        }
        if !buf.is_empty() && write_flushed(&mut stream, &buf).await.is_err() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        buf.clear();
        if let Some((tag, tree)) = tree {
            let sent = send_snapshot(&mut stream, tag, tree, &mut buf, &snapshots).await;
            buf.clear();
            buf.shrink_to(WRITE_BATCH_BYTES);
            lock(&session).completed(tag);
            if let Err(reason) = sent {
                log::info!("snapshot stream ended: {reason}; disconnecting");
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }
}

/// SNAPSHOT streams sent at once by one node; one more gets `OTHER: busy`
/// (its tree dropped at once). Each holds its pinned tree (which keeps old
/// versions of files rewritten since alive) and up to
/// [`SNAPSHOT_CHUNK_BYTES`] plus one file of encoded frames: 8 streams of
/// a 1 GiB tree rewritten as they run hold at most 8 GiB of old versions,
/// and the stall limit below ends a stream whose client stopped reading.
pub const MAX_SNAPSHOT_STREAMS: usize = 8;

/// Bytes of files (paths, bodies and [`FILE_OVERHEAD_BYTES`](crate::store::FILE_OVERHEAD_BYTES) each) a
/// SNAPSHOT stream encodes before writing them out; a single larger file
/// goes alone. The stream's frames are made one chunk at a time, never all.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;

/// A SNAPSHOT stream must get [`SNAPSHOT_PROGRESS_BYTES`] into the socket
/// within this time, again and again until it ends (about 70 KB/s, a
/// 0.6 Mbit/s link); a client that reads slower or not at all is
/// disconnected, which lets go of the tree it pinned. Counted in bytes over
/// a window, not per write: a socket nobody reads still takes a few hundred
/// kilobytes now and then as the kernel tunes its buffers, and a per-write
/// limit would let such a drip hold a tree for ever.
pub const SNAPSHOT_STALL_LIMIT: Duration = Duration::from_secs(30);

/// See [`SNAPSHOT_STALL_LIMIT`].
pub const SNAPSHOT_PROGRESS_BYTES: usize = 2 << 20;

/// Counts SNAPSHOT streams in progress on one node.
#[derive(Debug, Default)]
pub struct SnapshotSlots {
    sending: AtomicUsize,
}

/// One stream's place in [`SnapshotSlots`]; given back on drop.
pub struct SnapshotSlot<'a>(&'a SnapshotSlots);

impl SnapshotSlots {
    /// A place for one more stream, or `None` at [`MAX_SNAPSHOT_STREAMS`].
    pub fn take(&self) -> Option<SnapshotSlot<'_>> {
        self.sending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SNAPSHOT_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| SnapshotSlot(self))
    }
}

impl Drop for SnapshotSlot<'_> {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends a SNAPSHOT's files in walk order, a chunk at a time (each file a
/// frame: flags `SET`, path, value, the file's rev), then the `DONE` frame
/// (rev = the tree's rev, len = files sent). Runs in the connection's
/// writer, so a slow client holds up only its own connection; `buf` is
/// empty on entry and holds one chunk at most.
async fn send_tree(
    stream: &mut Conn,
    tag: Option<i32>,
    tree: Snapshot,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let mut after: Option<crate::types::Path> = None;
    let mut sent: u64 = 0;
    let mut checkpoint = Instant::now();
    let mut progress = 0usize;
    loop {
        let (files, end) = tree.files_after(after.as_ref(), SNAPSHOT_CHUNK_BYTES);
        for (path, rev, body) in &files {
            let frame = Response {
                tag,
                flags: Some(client::flags::SET),
                rev: Some(rev.0),
                path: Some(path.to_string()),
                value: Some(body.to_vec()),
                ..Response::default()
            };
            client::encode_frame_into(&frame, buf);
        }
        sent += files.len() as u64;
        after = files.into_iter().next_back().map(|(path, _, _)| path);
        if end {
            let done = Response {
                tag,
                flags: Some(client::flags::DONE),
                rev: Some(tree.rev().0),
                len: Some(sent.min(i32::MAX as u64) as i32),
                ..Response::default()
            };
            client::encode_frame_into(&done, buf);
        }
        let left = (checkpoint + SNAPSHOT_STALL_LIMIT).saturating_duration_since(Instant::now());
        {
            let mut write = Box::pin(write_flushed(stream, buf)).fuse();
            let mut stall = Box::pin(rt::sleep(left).fuse());
            futures::select! {
                done = write => done.map_err(|err| err.to_string())?,
                () = stall => {
                    return Err(format!(
                        "the client read under {SNAPSHOT_PROGRESS_BYTES} bytes of its snapshot \
                         in {SNAPSHOT_STALL_LIMIT:?}"
                    ))
                }
            }
        }
        progress += buf.len();
        if progress >= SNAPSHOT_PROGRESS_BYTES {
            checkpoint = Instant::now();
            progress = 0;
        }
        buf.clear();
        if end {
            return Ok(());
        }
    }
}

/// Writes all of `buf` and flushes it: a TLS session may keep the tail of
/// a write until flushed (plain TCP keeps nothing).
async fn write_flushed(stream: &mut Conn, buf: &[u8]) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await
}

/// Appends the frame for `outgoing` to `buf`, except a SNAPSHOT's tree,
/// which is handed back to be streamed (its tag stays in flight until then).
fn encode(
    outgoing: Outgoing,
    buf: &mut Vec<u8>,
    session: &Mutex<Session>,
) -> Option<(Option<i32>, Snapshot)> {
    let response = match outgoing {
        Outgoing::Immediate(response) => response,
        Outgoing::Completed {
            tag,
            outcome: Ok(Reply::Tree(tree)),
        } => return Some((tag, tree)),
        Outgoing::Completed { tag, outcome } => {
            lock(session).completed(tag);
            client::response(tag, &outcome)
        }
    };
    client::encode_frame_into(&response, buf);
    None
}

pub(super) fn lock(session: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_keys_group_an_ipv6_host_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(source_key(mapped), "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn source_slots_cap_each_address_and_come_back() {
        let slots = Arc::new(SourceSlots::new(2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let one = slots.take(a).unwrap();
        let _two = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), 2);
        let _other = slots.take(b).unwrap();
        drop(one);
        assert_eq!(slots.open_from(a), 1);
        let _three = slots.take(a).unwrap();
        drop(_two);
        drop(_three);
        assert_eq!(slots.open_from(a), 0);
        assert!(
            slots.open.lock().unwrap().get(&a).is_none(),
            "no empty entries kept"
        );
    }

    #[test]
    fn guesses_lock_an_address_out_for_the_rest_of_its_window() {
        let g = Guesses::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(!g.note(a, MAX_GUESSES_PER_ADDRESS - 1, t0));
        assert!(!g.locked_out(a, t0));
        assert!(!g.note(a, 1, t0));
        assert!(g.locked_out(a, t0), "the allowance is used up");
        assert!(g.note(a, 1, t0), "one more is over it");
        assert!(!g.locked_out(b, t0), "other addresses are not affected");
        let later = t0 + GUESS_WINDOW;
        assert!(!g.locked_out(a, later), "a new window starts afresh");
        assert!(!g.note(a, 1, later));
    }
}
