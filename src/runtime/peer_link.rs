//! Peer links: the TCP connections between nodes.
//!
//! Every node dials each peer it has something to say to; after the
//! handshake the listener on the other end writes nothing. So a pair of
//! nodes talking both ways holds two connections, each carrying the messages
//! of one direction, and neither side ever has to decide which of two
//! crossing dials wins.
//!
//! - **Trust**: every link opens with the mutual challenge–response of
//!   [`peer_auth`] on the cluster's peer key, and every frame after it
//!   carries a MAC, so nothing reaches the core from a connection that has
//!   not proved it holds the key; the dialer also checks that the address
//!   answers as the node it meant to reach. The core then gets each message
//!   tagged with the authenticated sender and the connection's source IP.
//! - **Liveness**: a partition leaves a TCP connection that looks open but
//!   carries nothing until TCP's backed-off retransmission, which can be
//!   tens of seconds after the heal; a dropped link redials instead, within
//!   [`DIAL_TIMEOUT`] + [`MAX_BACKOFF`] of the path coming back. The dialer
//!   sends a keepalive when it has sent nothing for [`KEEPALIVE_INTERVAL`],
//!   and its kernel drops the connection when what it sent goes
//!   unacknowledged for [`UNACKED_TIMEOUT`] (`TCP_USER_TIMEOUT`); the
//!   listener drops one that brought nothing for [`SILENCE_TIMEOUT`]. The
//!   listener sends no keepalives: TCP's acknowledgements, which the kernel
//!   sends without waking the node, tell the dialer the path works. So an
//!   idle cluster's only keepalives are on the links that carry nothing
//!   else, one way, and the listener's end never wakes to write.
//! - **Outbound**: [`PeerLinks`] lives on the event loop thread. `send` never
//!   blocks: it `try_send`s on the link's bounded queue and drops the message
//!   when the queue is full (consensus retransmits what matters). Each link is
//!   a task that dials from this node's own IP, shakes hands, then streams
//!   frames, several per write. On any error it hangs up, waits a backoff
//!   (50 ms doubling to [`MAX_BACKOFF`]) and dials again; messages that
//!   arrive while it waits are kept, the newest ones up to a small bound, and
//!   forgotten after a few seconds (while it dials, the queue holds them).
//!   A link with nothing to send dials nobody, and one idle for
//!   [`IDLE_TIMEOUT`] ends (the next message opens it again).
//! - **TLS** (`-tlscert` with `--tls-ca`): each link is a TLS session in
//!   which both ends showed a certificate the cluster CA signed; the dialer
//!   checks the listener's against the address it dialled. The peer key's
//!   handshake and MACs run inside it unchanged.
//! - **Inbound**: the listener tells a peer from a client by the first 4
//!   bytes and hands peers to [`serve_inbound`], which runs the handshake
//!   under [`HANDSHAKE_TIMEOUT`], then feeds each message to the core's inbox
//!   with `try_send`; a full inbox drops the message and counts it. Every
//!   frame has a deadline (its header within [`SILENCE_TIMEOUT`], its body at
//!   [`MIN_FRAME_BYTES_PER_SEC`] or faster), and the bytes of frames being
//!   read on all inbound links together are capped (a [`ByteBudget`]).
//!   Anything undecodable or unauthenticated closes that connection only.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::future::{BoxFuture, Fuse};
use futures::io::BufReader;
use futures::stream::{FusedStream, Stream};
use futures::{AsyncWriteExt, FutureExt, StreamExt};

use super::conn::Conn;
use super::direct::DirectWriter;
use super::event_loop::{Inbox, InboxError, NodeStatus};
use super::rt;
use crate::budget::ByteBudget;
use crate::codec::peer::{self, Challenge, Hello, PeerFrameError, Proof};
use crate::codec::peer_auth::{
    self, FrameOpener, FrameSealer, PeerKey, Transcript, NONCE_BYTES, TAG_BYTES,
};
use crate::core::{Input, PeerMsg};
use crate::types::NodeId;

/// How long a dial may take. Short: a dial sent into a partition is lost
/// (its SYN dropped), and the next try after the heal should not wait for
/// TCP's one-second SYN retransmission.
pub const DIAL_TIMEOUT: Duration = Duration::from_millis(500);
/// The first wait before redialing a failed link; it doubles per failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between dials. A connection that stayed up at least this
/// long resets the backoff.
pub const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// How long the handshake (hello, challenge, proof) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// The dialer sends a keepalive when it has written nothing for this long.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
/// An inbound link that hears nothing (no frame, no keepalive) for this long
/// is closed.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// A dialer's connection whose bytes stay unacknowledged (or unsent behind
/// a zero window) for this long is dropped by the kernel, and redialed.
pub const UNACKED_TIMEOUT: Duration = Duration::from_secs(1);
/// A write that makes no progress for this long (the peer stopped reading)
/// drops the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A link with no message to send for this long ends its task and
/// connection (keepalives do not count).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The slowest an inbound frame body may arrive: a frame of `n` bytes must be
/// complete within [`SILENCE_TIMEOUT`] + `n` / this, or the link is dropped.
pub const MIN_FRAME_BYTES_PER_SEC: u64 = 1 << 20;
/// Messages kept for a peer while its link is down (the newest ones)...
pub const BACKLOG_MESSAGES: usize = 256;
/// ...and the bytes they may take (the newest message is kept regardless).
pub const BACKLOG_BYTES: usize = 16 << 20;
/// ...and how long each is worth keeping.
pub const BACKLOG_TTL: Duration = Duration::from_secs(5);
/// Bytes gathered before a link writes to its socket.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Read buffer of an inbound link.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// The listener sends nothing after the handshake (a doozerd before this
/// one sent keepalives, which are still taken): any frame larger than one is
/// a protocol error.
const MAX_KEEPALIVE_FRAME: usize = TAG_BYTES;

/// Who this node is on its peer links.
#[derive(Debug)]
pub struct PeerIdentity {
    pub me: NodeId,
    pub cluster: String,
    pub key: PeerKey,
    /// The IP outbound links dial from (this node's `-l` IP), so that
    /// listeners see the node's own address as the source.
    pub bind_ip: Option<IpAddr>,
    /// With TLS on: links are dialled over TLS, showing this node's
    /// certificate and trusting the cluster CA.
    pub tls: Option<Arc<crate::tls::NodeTls>>,
}

impl PeerIdentity {
    /// Dials `addr` from this node's IP, over TLS when it is on: a
    /// connection to shake hands on, or why not. `Err((reason, refused))`:
    /// `refused` when the other end is not who it must be (its certificate).
    async fn connect(&self, addr: &str) -> Result<Conn, (String, bool)> {
        let tcp = match rt::timeout(DIAL_TIMEOUT, rt::connect_from(self.bind_ip, addr)).await {
            Some(Ok(stream)) => stream,
            Some(Err(err)) => return Err((format!("cannot connect: {err}"), false)),
            None => return Err(("cannot connect: timed out".to_string(), false)),
        };
        if let Err(err) = tcp.set_unacked_timeout(UNACKED_TIMEOUT) {
            return Err((format!("cannot set TCP_USER_TIMEOUT: {err}"), false));
        }
        let Some(tls) = &self.tls else {
            return Ok(Conn::plain(tcp));
        };
        let Some(dialer) = tls.current().peer_dialer.clone() else {
            let _ = tcp.shutdown(std::net::Shutdown::Both);
            return Err((
                "TLS is on without --tls-ca: this node links to no peers".to_string(),
                true,
            ));
        };
        Conn::connect_tls(tcp, addr, &dialer)
            .await
            .map_err(|reason| (format!("TLS: {reason}"), true))
    }
}

/// Rate-limits one kind of warning to one a second; the rest go to debug.
#[derive(Default)]
struct WarnLimiter {
    last_ms: AtomicU64,
}

impl WarnLimiter {
    fn due(&self, since: Instant) -> bool {
        let now = (since.elapsed().as_millis() as u64).max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        (last == 0 || now >= last + 1000)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

// ---------------------------------------------------------------------------
// Outbound

struct Link {
    addr: String,
    /// Messages for the task (while the link dials, or on TLS), encoded
    /// (not sealed); `queued_bytes` counts them until the task takes them.
    queue: mpsc::Sender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
    /// The connection's sending half while a plain-TCP connection is up.
    wire: SharedWire,
    /// Messages of the batch being routed, sent together by
    /// [`PeerLinks::flush`].
    batch: Vec<PeerMsg>,
}

impl Link {
    /// Queues an encoded message for the task, counted in the bytes queued
    /// until the task takes it.
    fn try_queue(&mut self, frame: Vec<u8>) -> Result<(), mpsc::TrySendError<Vec<u8>>> {
        let bytes = frame.len();
        // Counted before it is queued, so the task's taking it never finds
        // the count short.
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let queued = self.queue.try_send(frame);
        if queued.is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        queued
    }
}

/// The sending half of a connected plain-TCP link: the event loop's thread
/// seals each batch of messages and writes it to the socket itself (one
/// `send`, no task woken; see [`super::direct`]); the link's task sends
/// keepalives through it and writes what the socket did not take at once.
/// Sealing and sending happen under one lock, so MAC sequence numbers follow
/// the order of the bytes on the wire.
struct Wire {
    sealer: FrameSealer,
    writer: Arc<DirectWriter>,
    last_write: Instant,
    /// The last message (not keepalive) sent, for the idle check.
    last_msg: Instant,
}

type SharedWire = Arc<Mutex<Option<Wire>>>;

fn lock_wire(wire: &SharedWire) -> MutexGuard<'_, Option<Wire>> {
    wire.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes a plain-TCP link queues for a peer that is not reading before it
/// drops the connection (and redials); a larger single batch goes alone.
const DIRECT_QUEUE_BYTES: usize = 64 << 20;

/// Bytes of messages (encoded) a link's queue holds for its task, while it
/// dials or writes to a slow peer; past it messages are dropped (and sent
/// again by whoever needs them), as when the queue is full. One message
/// alone always fits.
pub const LINK_QUEUE_BYTES: usize = 64 << 20;

/// The link task's end of its queue: each message taken gives its bytes
/// back to the queue's bound.
struct QueueRx {
    rx: mpsc::Receiver<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
}

impl QueueRx {
    fn try_recv(&mut self) -> Option<Vec<u8>> {
        let frame = self.rx.try_recv().ok()?;
        self.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }
}

impl Stream for QueueRx {
    type Item = Vec<u8>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let this = &mut *self;
        let queued_bytes = &this.queued_bytes;
        this.rx.poll_next_unpin(cx).map(|taken| {
            taken.inspect(|frame| {
                queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
            })
        })
    }
}

impl FusedStream for QueueRx {
    fn is_terminated(&self) -> bool {
        self.rx.is_terminated()
    }
}

/// The outbound links of one node, keyed by peer id. Owned by the event loop
/// thread; no method blocks or awaits.
pub struct PeerLinks {
    identity: Arc<PeerIdentity>,
    max_frame_bytes: usize,
    queue_capacity: usize,
    links: HashMap<NodeId, Link>,
    /// Peers with a batch to flush.
    touched: Vec<NodeId>,
    /// Where a batch is sealed before it is written.
    scratch: Vec<u8>,
    dropped: u64,
    /// Messages a link refused to encode (larger than the frame cap): each
    /// one is a bug in whoever sized the message.
    refused: Arc<AtomicU64>,
}

impl PeerLinks {
    /// Links that introduce themselves as `identity`, send frames of at most
    /// `max_frame_bytes` (MAC included) and queue at most `queue_capacity`
    /// messages per peer.
    pub fn new(identity: PeerIdentity, max_frame_bytes: usize, queue_capacity: usize) -> PeerLinks {
        PeerLinks {
            identity: Arc::new(identity),
            max_frame_bytes,
            queue_capacity: queue_capacity.max(1),
            links: HashMap::new(),
            touched: Vec::new(),
            scratch: Vec::new(),
            dropped: 0,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends `msg` to `to`, reached at `addr`, at once (a batch of one).
    pub fn send(&mut self, to: NodeId, addr: &str, msg: PeerMsg) {
        self.push(to, addr, msg);
        self.flush();
    }

    /// Adds `msg` for `to`, reached at `addr`, to the batch [`Self::flush`]
    /// sends, opening the link (or replacing it, when `addr` changed) as
    /// needed.
    pub fn push(&mut self, to: NodeId, addr: &str, msg: PeerMsg) {
        let reusable = self
            .links
            .get(&to)
            .is_some_and(|link| link.addr == addr && !link.queue.is_closed());
        if !reusable {
            // Forget links whose task ended (idle) while we are at it; their
            // batches were flushed at the end of the last batch.
            self.links.retain(|_, link| !link.queue.is_closed());
            let link = self.open(&to, addr);
            self.links.insert(to.clone(), link);
        }
        let link = self.links.get_mut(&to).expect("inserted above");
        if link.batch.len() >= self.queue_capacity {
            self.dropped += 1;
            log::debug!("peer {to} at {addr}: batch full; message dropped");
            return;
        }
        link.batch.push(msg);
        if !self.touched.contains(&to) {
            self.touched.push(to);
        }
    }

    /// Sends every batch gathered since the last flush: sealed and written
    /// at once on a connected plain-TCP link, else queued for the link's
    /// task (which dials, and keeps what arrives meanwhile).
    pub fn flush(&mut self) {
        let now = Instant::now();
        let max_body_bytes = self.max_body_bytes();
        for to in std::mem::take(&mut self.touched) {
            let Some(link) = self.links.get_mut(&to) else {
                continue;
            };
            let batch = std::mem::take(&mut link.batch);
            let shared = link.wire.clone();
            // Held while queueing too: the task drains the queue and
            // installs the wire under this lock, so nothing queued can be
            // overtaken by a later direct send.
            let mut wire = lock_wire(&shared);
            let Some(connected) = wire.as_mut() else {
                let addr = link.addr.clone();
                for msg in batch {
                    self.enqueue(to.clone(), &addr, msg);
                }
                continue;
            };
            self.scratch.clear();
            for msg in &batch {
                let start = self.scratch.len();
                match peer::encode_peer_frame_into(msg, &mut self.scratch, max_body_bytes) {
                    Ok(_) => connected.sealer.seal(&mut self.scratch, start),
                    Err(err) => {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        log::error!("peer {to}: message not sent: {err}");
                    }
                }
            }
            connected.last_msg = now;
            connected.last_write = now;
            if connected.writer.send(&self.scratch).is_err() {
                // The task sees the writer closed and redials; what was in
                // this batch is lost, as on any broken connection.
                self.dropped += batch.len() as u64;
            }
            if self.scratch.capacity() > 4 * WRITE_BATCH_BYTES {
                self.scratch = Vec::new();
            }
        }
    }

    fn max_body_bytes(&self) -> usize {
        self.max_frame_bytes.saturating_sub(TAG_BYTES)
    }

    /// Queues `msg` for the task of the link to `to`, reopening it if its
    /// task ended. Drops the message when the link's queue is full.
    fn enqueue(&mut self, to: NodeId, addr: &str, msg: PeerMsg) {
        let mut frame = Vec::new();
        if let Err(err) = peer::encode_peer_frame_into(&msg, &mut frame, self.max_body_bytes()) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            log::error!("peer {to}: message not sent: {err}");
            return;
        }
        let bytes = frame.len();
        let link = match self.links.get_mut(&to) {
            Some(link) => link,
            None => {
                let link = self.open(&to, addr);
                self.links.entry(to.clone()).or_insert(link)
            }
        };
        let queued = link.queued_bytes.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(bytes) > LINK_QUEUE_BYTES {
            self.dropped += 1;
            log::debug!("peer {to} at {addr}: {queued} bytes queued; message dropped");
            return;
        }
        match link.try_queue(frame) {
            Ok(()) => {}
            Err(err) if err.is_full() => {
                self.dropped += 1;
                log::debug!("peer {to} at {addr}: link queue full; message dropped");
            }
            Err(err) => {
                // The task ended (idle) between the check above and now.
                let frame = err.into_inner();
                let mut link = self.open(&to, addr);
                if link.try_queue(frame).is_err() {
                    self.dropped += 1;
                }
                self.links.insert(to, link);
            }
        }
    }

    fn open(&self, to: &NodeId, addr: &str) -> Link {
        let (queue, rx) = mpsc::channel(self.queue_capacity);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let rx = QueueRx {
            rx,
            queued_bytes: queued_bytes.clone(),
        };
        let wire = SharedWire::default();
        let task = LinkTask {
            wire: wire.clone(),
            identity: self.identity.clone(),
            to: to.clone(),
            addr: addr.to_string(),
            rx,
            backlog: Backlog::default(),
        };
        rt::spawn(task.run());
        Link {
            addr: addr.to_string(),
            queue,
            queued_bytes,
            wire,
            batch: Vec::new(),
        }
    }

    /// Open links (including ones whose task is ending).
    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Messages dropped so far because a link's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages not sent because they exceeded the frame cap.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Frames kept for a peer while its link is down (encoded, not yet sealed:
/// the MAC depends on the connection they finally go out on).
#[derive(Default)]
struct Backlog {
    frames: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
}

impl Backlog {
    fn push(&mut self, frame: Vec<u8>) {
        self.bytes += frame.len();
        self.frames.push_back((Instant::now(), frame));
        while self.frames.len() > 1
            && (self.frames.len() > BACKLOG_MESSAGES || self.bytes > BACKLOG_BYTES)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, frame)) = self.frames.pop_front() {
            self.bytes -= frame.len();
        }
    }

    /// Forgets frames older than [`BACKLOG_TTL`].
    fn expire(&mut self) {
        while self
            .frames
            .front()
            .is_some_and(|(at, _)| at.elapsed() > BACKLOG_TTL)
        {
            self.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Appends every kept frame to `buf`, sealed.
    fn drain_into(&mut self, buf: &mut Vec<u8>, sealer: &mut FrameSealer) {
        for (_, frame) in self.frames.drain(..) {
            let start = buf.len();
            buf.extend_from_slice(&frame);
            sealer.seal(buf, start);
        }
        self.bytes = 0;
    }
}

/// Why a connected link stopped.
enum Stop {
    /// The `PeerLinks` side is gone: end the task.
    SenderGone,
    /// Nothing to send for [`IDLE_TIMEOUT`]: end the task.
    Idle,
    /// The connection failed: redial.
    Failed(String),
    /// The other end failed the handshake (another key, another node):
    /// redial, but say so louder, as it is a setup to fix.
    Refused(String),
}

enum Event {
    Msg(Option<Vec<u8>>),
    Closed(String),
    Timer,
}

/// Completes with the reason when the other end of a link falls silent,
/// closes, or sends something it must not.
type Listening = Fuse<BoxFuture<'static, String>>;

struct LinkTask {
    wire: SharedWire,
    identity: Arc<PeerIdentity>,
    to: NodeId,
    addr: String,
    rx: QueueRx,
    backlog: Backlog,
}

impl LinkTask {
    async fn run(mut self) {
        let mut backoff = INITIAL_BACKOFF;
        // Whether the last attempt failed, so a run of failures logs once.
        let mut failing = false;
        loop {
            self.backlog.expire();
            if self.backlog.is_empty() {
                // Nothing to say: dial nobody until there is.
                match rt::timeout(IDLE_TIMEOUT, self.rx.next()).await {
                    Some(Some(msg)) => self.keep(msg),
                    Some(None) => return,
                    None => {
                        log::debug!("peer {} at {}: link idle; closed", self.to, self.addr);
                        return;
                    }
                }
            }
            // Meanwhile the queue holds what arrives (it is bounded too).
            let identity = self.identity.clone();
            let dialed = identity.connect(&self.addr).await;
            let mut refused = false;
            let failure = match dialed {
                Ok(stream) => {
                    let since = Instant::now();
                    let stop = self.pump(&stream, &mut failing).await;
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    if since.elapsed() >= MAX_BACKOFF {
                        backoff = INITIAL_BACKOFF;
                    }
                    match stop {
                        Stop::SenderGone => return,
                        Stop::Idle => {
                            log::debug!("peer {} at {}: link idle; closed", self.to, self.addr);
                            return;
                        }
                        Stop::Failed(reason) => reason,
                        Stop::Refused(reason) => {
                            refused = true;
                            reason
                        }
                    }
                }
                Err((reason, was_refused)) => {
                    refused = was_refused;
                    reason
                }
            };
            if failing {
                log::debug!("peer {} at {}: {failure}", self.to, self.addr);
            } else if refused {
                log::warn!("peer {} at {}: {failure}; redialing", self.to, self.addr);
                failing = true;
            } else {
                log::info!("peer {} at {}: {failure}; redialing", self.to, self.addr);
                failing = true;
            }
            if self.drain_while(rt::sleep(backoff)).await.is_none() {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Keeps an encoded message in the backlog.
    fn keep(&mut self, frame: Vec<u8>) {
        self.backlog.push(frame);
    }

    /// Appends an encoded message to `buf`, sealed.
    fn append_sealed(frame: &[u8], buf: &mut Vec<u8>, sealer: &mut FrameSealer) {
        let start = buf.len();
        buf.extend_from_slice(frame);
        sealer.seal(buf, start);
    }

    /// Awaits `fut` while keeping what arrives on the queue. `None` when the
    /// `PeerLinks` side is gone.
    async fn drain_while<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = Box::pin(fut.fuse());
        loop {
            let msg = futures::select! {
                out = fut => return Some(out),
                msg = self.rx.next() => msg,
            };
            match msg {
                Some(msg) => self.keep(msg),
                None => return None,
            }
        }
    }

    /// Shakes hands, sends the backlog, then whatever arrives (and
    /// keepalives), until the connection fails or falls silent, the link
    /// idles out or its sender is dropped.
    async fn pump(&mut self, stream: &Conn, failing: &mut bool) -> Stop {
        let _ = stream.set_nodelay(true);
        let mut writer = stream.clone();
        let mut reader = BufReader::with_capacity(1024, stream.clone());
        let handshake = dial_handshake(&mut reader, &mut writer, &self.identity, &self.to);
        let (mut sealer, opener) = match rt::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Some(Ok(keys)) => keys,
            Some(Err(HandshakeError::Refused(reason))) => return Stop::Refused(reason),
            Some(Err(HandshakeError::Failed(reason))) => return Stop::Failed(reason),
            None => return Stop::Failed("no handshake in time".to_string()),
        };
        if *failing {
            log::info!("peer {} at {}: connected", self.to, self.addr);
            *failing = false;
        }
        let mut listening: Listening = watch_for_close(reader, opener).boxed().fuse();
        if let Some(tcp) = stream.plain_tcp() {
            let writer = Arc::new(DirectWriter::new(tcp.clone(), DIRECT_QUEUE_BYTES));
            return self.pump_direct(sealer, writer, listening).await;
        }
        let mut buf = Vec::with_capacity(WRITE_BATCH_BYTES);
        self.backlog.drain_into(&mut buf, &mut sealer);
        if !buf.is_empty() {
            if let Err(reason) = write(&mut writer, &buf, &mut listening).await {
                return Stop::Failed(reason);
            }
        }
        let mut last_msg = Instant::now();
        let mut last_write = Instant::now();
        // One timer re-armed for what is left of the period, not one per
        // message: it drives keepalives and the idle check.
        let mut timer = Box::pin(rt::sleep(KEEPALIVE_INTERVAL).fuse());
        loop {
            buf.clear();
            if buf.capacity() > 4 * WRITE_BATCH_BYTES {
                buf = Vec::with_capacity(WRITE_BATCH_BYTES);
            }
            let event = futures::select! {
                msg = self.rx.next() => Event::Msg(msg),
                reason = listening => Event::Closed(reason),
                () = timer => Event::Timer,
            };
            match event {
                Event::Msg(Some(msg)) => {
                    last_msg = Instant::now();
                    Self::append_sealed(&msg, &mut buf, &mut sealer);
                    while buf.len() < WRITE_BATCH_BYTES {
                        match self.rx.try_recv() {
                            Some(msg) => Self::append_sealed(&msg, &mut buf, &mut sealer),
                            None => break,
                        }
                    }
                }
                Event::Msg(None) => return Stop::SenderGone,
                Event::Closed(reason) => return Stop::Failed(reason),
                Event::Timer => {
                    if last_msg.elapsed() >= IDLE_TIMEOUT {
                        return Stop::Idle;
                    }
                    let quiet = last_write.elapsed();
                    let next = if quiet >= KEEPALIVE_INTERVAL {
                        sealer.keepalive(&mut buf);
                        KEEPALIVE_INTERVAL
                    } else {
                        KEEPALIVE_INTERVAL - quiet
                    };
                    timer = Box::pin(rt::sleep(next).fuse());
                }
            }
            if buf.is_empty() {
                continue;
            }
            if let Err(reason) = write(&mut writer, &buf, &mut listening).await {
                return Stop::Failed(reason);
            }
            last_write = Instant::now();
        }
    }
}

impl LinkTask {
    /// [`Self::pump`] on plain TCP: hands the sending half to the event
    /// loop's thread (see [`Wire`]) and, until the connection fails or
    /// idles out, writes what the socket did not take at once, messages
    /// that still come through the queue, and keepalives.
    async fn pump_direct(
        &mut self,
        mut sealer: FrameSealer,
        writer: Arc<DirectWriter>,
        mut listening: Listening,
    ) -> Stop {
        let mut buf = Vec::with_capacity(WRITE_BATCH_BYTES);
        self.backlog.drain_into(&mut buf, &mut sealer);
        {
            // Under the wire's lock, which the event loop holds while it
            // queues: everything queued so far goes out before the first
            // direct send, so messages keep their order.
            let wire = self.wire.clone();
            let mut wire = lock_wire(&wire);
            while let Some(msg) = self.rx.try_recv() {
                Self::append_sealed(&msg, &mut buf, &mut sealer);
            }
            if writer.send(&buf).is_err() {
                return Stop::Failed("write failed".to_string());
            }
            let now = Instant::now();
            *wire = Some(Wire {
                sealer,
                writer: writer.clone(),
                last_write: now,
                last_msg: now,
            });
        }
        let stop = self.pump_wire(&writer, &mut listening).await;
        *lock_wire(&self.wire) = None;
        writer.close();
        stop
    }

    async fn pump_wire(&mut self, writer: &DirectWriter, mut listening: &mut Listening) -> Stop {
        let mut taken = Vec::new();
        let mut buf = Vec::new();
        let mut timer = Box::pin(rt::sleep(KEEPALIVE_INTERVAL).fuse());
        loop {
            taken.clear();
            let event = futures::future::poll_fn(|cx| {
                if let Poll::Ready(more) = writer.poll_take(cx, &mut taken) {
                    return Poll::Ready(WireEvent::Taken(more));
                }
                if let Poll::Ready(reason) = listening.poll_unpin(cx) {
                    return Poll::Ready(WireEvent::Closed(reason));
                }
                if let Poll::Ready(msg) = self.rx.poll_next_unpin(cx) {
                    return Poll::Ready(WireEvent::Msg(msg));
                }
                timer.poll_unpin(cx).map(|()| WireEvent::Timer)
            })
            .await;
            match event {
                WireEvent::Taken(false) => {
                    return Stop::Failed(format!(
                        "the peer is not reading (over {DIRECT_QUEUE_BYTES} bytes queued)"
                    ))
                }
                WireEvent::Taken(true) => {
                    let failed = {
                        let write = writer.write_out(&taken).fuse();
                        let mut deadline = Box::pin(rt::sleep(WRITE_TIMEOUT).fuse());
                        futures::pin_mut!(write);
                        futures::select! {
                            done = write => done.err().map(|err| format!("write failed: {err}")),
                            reason = listening => Some(reason),
                            () = deadline => Some("write timed out (the peer is not reading)".to_string()),
                        }
                    };
                    if let Some(reason) = failed {
                        return Stop::Failed(reason);
                    }
                    if taken.capacity() > 4 * WRITE_BATCH_BYTES {
                        taken = Vec::new();
                    }
                }
                WireEvent::Closed(reason) => return Stop::Failed(reason),
                WireEvent::Msg(None) => return Stop::SenderGone,
                WireEvent::Msg(Some(msg)) => {
                    // Queued before the link came up (or in the moment it did).
                    let mut wire = lock_wire(&self.wire);
                    let Some(connected) = wire.as_mut() else {
                        return Stop::Failed("link closed".to_string());
                    };
                    buf.clear();
                    Self::append_sealed(&msg, &mut buf, &mut connected.sealer);
                    connected.last_msg = Instant::now();
                    connected.last_write = connected.last_msg;
                    if connected.writer.send(&buf).is_err() {
                        return Stop::Failed("write failed".to_string());
                    }
                }
                WireEvent::Timer => {
                    let mut wire = lock_wire(&self.wire);
                    let Some(connected) = wire.as_mut() else {
                        return Stop::Failed("link closed".to_string());
                    };
                    if connected.last_msg.elapsed() >= IDLE_TIMEOUT {
                        return Stop::Idle;
                    }
                    let quiet = connected.last_write.elapsed();
                    let next = if quiet >= KEEPALIVE_INTERVAL {
                        buf.clear();
                        connected.sealer.keepalive(&mut buf);
                        connected.last_write = Instant::now();
                        if connected.writer.send(&buf).is_err() {
                            return Stop::Failed("keepalive failed".to_string());
                        }
                        KEEPALIVE_INTERVAL
                    } else {
                        KEEPALIVE_INTERVAL - quiet
                    };
                    timer = Box::pin(rt::sleep(next).fuse());
                }
            }
        }
    }
}

/// What a plain-TCP link's task is woken for.
enum WireEvent {
    /// Bytes the socket did not take are in the buffer (`false`: the
    /// writer closed: a write failed, or the peer stopped reading).
    Taken(bool),
    Closed(String),
    Msg(Option<Vec<u8>>),
    Timer,
}

/// Why a dialer's handshake did not complete.
enum HandshakeError {
    /// The connection failed or closed (the listener may be of another
    /// cluster or protocol, or just gone).
    Failed(String),
    /// The other end is not who we meant, or does not hold the key.
    Refused(String),
}

/// Dials `to` at `addr` and shakes hands as `identity`: a connection ready
/// for sealed frames, and the sealer for them. For tools and tests that
/// speak the peer protocol by hand; nodes use [`PeerLinks`].
pub async fn dial(
    identity: &PeerIdentity,
    to: &NodeId,
    addr: &str,
) -> Result<(Conn, FrameSealer), String> {
    let stream = identity.connect(addr).await.map_err(|(reason, _)| reason)?;
    let mut reader = BufReader::with_capacity(1024, stream.clone());
    let mut writer = stream.clone();
    let handshake = dial_handshake(&mut reader, &mut writer, identity, to);
    match rt::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Some(Ok((sealer, _))) => Ok((stream, sealer)),
        Some(Err(HandshakeError::Failed(reason) | HandshakeError::Refused(reason))) => Err(reason),
        None => Err("no handshake in time".to_string()),
    }
}

/// The dialer's side of the handshake: hello, the listener's challenge
/// (checked: the node we meant, holding the key), our proof. The frame keys
/// of the link on success; why not otherwise.
async fn dial_handshake(
    reader: &mut BufReader<Conn>,
    writer: &mut Conn,
    identity: &PeerIdentity,
    to: &NodeId,
) -> Result<(FrameSealer, FrameOpener), HandshakeError> {
    use HandshakeError::{Failed, Refused};
    let hello = peer::encode_hello(&Hello {
        version: peer::PROTOCOL_VERSION,
        from: identity.me.clone(),
        cluster: identity.cluster.clone(),
        nonce: peer_auth::fresh_nonce(),
    });
    write_flushed(writer, &hello)
        .await
        .map_err(|err| Failed(format!("write failed: {err}")))?;
    let challenge: Challenge = peer::read_handshake(reader).await.map_err(|err| {
        // With TLS, a listener that refuses our certificate says so with an
        // alert here, after the handshake looked done (TLS 1.3).
        if let PeerFrameError::Io(io) = &err {
            if let Some(reason) = crate::tls::tls_reason(io, "the cluster's CA") {
                return Refused(format!("TLS: {reason}"));
            }
        }
        Failed(format!(
            "no challenge (another cluster, or an older doozerd?): {err}"
        ))
    })?;
    if challenge.from != *to {
        return Err(Refused(format!(
            "the address answers as node {}, not {to}",
            challenge.from
        )));
    }
    if challenge.nonce.len() != NONCE_BYTES {
        return Err(Refused("bad challenge: wrong nonce length".to_string()));
    }
    let transcript = Transcript::new(peer::hello_body(&hello), &challenge.from, &challenge.nonce);
    if !identity
        .key
        .check_listener_proof(&transcript, &challenge.proof)
    {
        return Err(Refused(
            "the peer failed authentication: its peer key differs from ours (check DOOZER_PEERSECRET / DOOZER_RWSECRET / DOOZER_ROSECRET)"
                .to_string(),
        ));
    }
    let proof = Proof {
        proof: identity.key.dialer_proof(&transcript).to_vec(),
    };
    write_flushed(writer, &peer::encode_handshake(&proof))
        .await
        .map_err(|err| Failed(format!("write failed: {err}")))?;
    Ok(identity.key.link_keys(&transcript))
}

/// Writes all of `buf` and flushes it (a TLS session may hold the tail of
/// a write; plain TCP holds nothing).
async fn write_flushed<W: futures::AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &[u8],
) -> std::io::Result<()> {
    writer.write_all(buf).await?;
    writer.flush().await
}

/// Writes `buf`, giving up when the peer stops reading for
/// [`WRITE_TIMEOUT`] or the link is found dead meanwhile.
async fn write(writer: &mut Conn, buf: &[u8], mut listening: &mut Listening) -> Result<(), String> {
    // Most writes complete at once: try without a timer first, because
    // arming one costs a wake-up of the reactor on every message.
    let mut pending = Box::pin(write_flushed(writer, buf));
    if let Some(done) = (&mut pending).now_or_never() {
        return done.map_err(|err| format!("write failed: {err}"));
    }
    let mut pending = pending.fuse();
    let mut deadline = Box::pin(rt::sleep(WRITE_TIMEOUT).fuse());
    futures::select! {
        done = pending => done.map_err(|err| format!("write failed: {err}")),
        reason = listening => Err(reason),
        () = deadline => Err("write timed out (the peer is not reading)".to_string()),
    }
}

/// Reads what the listener sends on an outbound link (nothing, or an older
/// doozerd's keepalives) and completes with the reason the connection
/// ended: closed, reset, dropped by the kernel for [`UNACKED_TIMEOUT`], or
/// sent something it must not.
async fn watch_for_close(mut reader: BufReader<Conn>, mut opener: FrameOpener) -> String {
    loop {
        match peer::read_frame(&mut reader, MAX_KEEPALIVE_FRAME).await {
            Ok(None) => return "the peer closed the connection".to_string(),
            Err(err) => return format!("connection failed: {err}"),
            Ok(Some(frame)) => match opener.open(&frame) {
                Ok([]) => continue,
                Ok(_) => return "the peer sent a message on a keepalive-only link".to_string(),
                Err(err) => return format!("bad frame from the peer: {err}"),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Inbound

/// What inbound peer connections share.
pub struct PeerInbound {
    inbox: Inbox,
    identity: Arc<PeerIdentity>,
    max_frame_bytes: usize,
    status: Arc<NodeStatus>,
    /// Bytes of frames being read on all inbound links together: a frame's
    /// announced length is reserved before its body is read and given back
    /// once it is decoded, so many connections each announcing a large frame
    /// cannot make the node hold more than this between them.
    frames: Arc<ByteBudget>,
    started: Instant,
    drop_warning: WarnLimiter,
    refusal_warning: WarnLimiter,
}

impl PeerInbound {
    /// Accepts peers that prove `identity`'s key and belong to its cluster,
    /// with frames of at most `max_frame_bytes` (MAC included; at most
    /// `frame_budget_bytes` being read at once on all links), into `inbox`;
    /// drops are counted in `status`.
    pub fn new(
        inbox: Inbox,
        identity: PeerIdentity,
        max_frame_bytes: usize,
        frame_budget_bytes: usize,
        status: Arc<NodeStatus>,
    ) -> PeerInbound {
        PeerInbound {
            inbox,
            identity: Arc::new(identity),
            max_frame_bytes,
            status,
            frames: Arc::new(ByteBudget::new(frame_budget_bytes.max(max_frame_bytes))),
            started: Instant::now(),
            drop_warning: WarnLimiter::default(),
            refusal_warning: WarnLimiter::default(),
        }
    }

    fn note_drop(&self, from: &NodeId) {
        let total = self.status.peer_in_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if self.drop_warning.due(self.started) {
            log::warn!("core inbox full: dropping peer messages ({total} so far)");
        } else {
            log::debug!("core inbox full: message from peer {from} dropped");
        }
    }

    /// Logs a refused or failed inbound link: a warning at most once a
    /// second (anyone can open connections), the rest at debug.
    pub(crate) fn note_refusal(&self, addr: &str, reason: &str) {
        self.status.peer_in_refused.fetch_add(1, Ordering::Relaxed);
        if self.refusal_warning.due(self.started) {
            log::warn!("peer connection from {addr} closed: {reason}");
        } else {
            log::debug!("peer connection from {addr} closed: {reason}");
        }
    }
}

/// Serves one inbound peer connection whose [`MAGIC`](peer::MAGIC) the
/// listener has already read.
pub async fn serve_inbound(stream: Conn, ctx: &PeerInbound) {
    let source = stream.peer_addr().ok();
    let addr = source.map_or_else(|| "?".to_string(), |a| a.to_string());
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream.clone());
    let mut writer = stream.clone();
    let handshake = listen_handshake(&mut reader, &mut writer, &ctx.identity);
    let reason = match rt::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        None => Some("no handshake in time".to_string()),
        Some(Err(reason)) => Some(reason),
        // No sealer: nothing is written back, the dialer learns the path
        // works from TCP's acknowledgements (see `UNACKED_TIMEOUT`).
        Some(Ok((from, _, opener))) => {
            log::debug!("peer {from} connected from {addr}");
            let source_ip = source.map(|a| a.ip());
            receive(&mut reader, opener, &from, source_ip, ctx).await
        }
    };
    if let Some(reason) = reason {
        ctx.note_refusal(&addr, &reason);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The listener's side of the handshake, after [`MAGIC`](peer::MAGIC): the
/// dialer's hello (checked: protocol, cluster), our challenge, its proof
/// (checked). The dialer's id and the link's frame keys on success; why not
/// otherwise. Public for tools and tests that act as a node by hand.
pub async fn listen_handshake<R: futures::AsyncRead + Unpin, W: futures::AsyncWrite + Unpin>(
    reader: &mut R,
    writer: &mut W,
    identity: &PeerIdentity,
) -> Result<(NodeId, FrameSealer, FrameOpener), String> {
    let (hello, body) = peer::read_hello(reader)
        .await
        .map_err(|err| format!("bad hello: {err}"))?;
    if hello.version != peer::PROTOCOL_VERSION {
        return Err(format!(
            "node {} speaks peer protocol {}, not {}",
            hello.from,
            hello.version,
            peer::PROTOCOL_VERSION
        ));
    }
    if hello.cluster != identity.cluster {
        return Err(format!(
            "node {} is of cluster {:?}, not {:?}",
            hello.from, hello.cluster, identity.cluster
        ));
    }
    if hello.nonce.len() != NONCE_BYTES {
        return Err(format!("node {}: bad hello nonce", hello.from));
    }
    let nonce = peer_auth::fresh_nonce();
    let transcript = Transcript::new(&body, &identity.me, &nonce);
    let challenge = Challenge {
        from: identity.me.clone(),
        nonce,
        proof: identity.key.listener_proof(&transcript).to_vec(),
    };
    write_flushed(writer, &peer::encode_handshake(&challenge))
        .await
        .map_err(|err| format!("write failed: {err}"))?;
    let proof: Proof = peer::read_handshake(reader).await.map_err(|err| {
        format!(
            "node {} did not prove it holds the peer key (it hung up after our challenge: its key differs?): {err}",
            hello.from
        )
    })?;
    if !identity.key.check_dialer_proof(&transcript, &proof.proof) {
        return Err(format!(
            "node {} failed authentication: it did not prove it holds the peer key",
            hello.from
        ));
    }
    let (sealer, opener) = identity.key.listener_link_keys(&transcript);
    Ok((hello.from, sealer, opener))
}

/// Feeds `from`'s messages to the core until the link ends; the reason it
/// ended, if it was not a clean close.
async fn receive(
    reader: &mut BufReader<Conn>,
    mut opener: FrameOpener,
    from: &NodeId,
    source: Option<IpAddr>,
    ctx: &PeerInbound,
) -> Option<String> {
    // One deadline moved on by every frame rather than a timer per read:
    // arming a timer wakes the reactor's thread (see `rt::Watchdog`).
    let mut watchdog = rt::Watchdog::new(Instant::now() + SILENCE_TIMEOUT);
    loop {
        // The dialer sends something at least every KEEPALIVE_INTERVAL.
        watchdog.set(Instant::now() + SILENCE_TIMEOUT);
        let header = match watchdog.guard(peer::read_frame_header(reader)).await {
            None => {
                return Some(format!(
                    "peer {from}: heard nothing for {SILENCE_TIMEOUT:?}"
                ))
            }
            Some(Ok(None)) => {
                log::debug!("peer {from} hung up");
                return None;
            }
            Some(Ok(Some(header))) => header,
            Some(Err(PeerFrameError::Io(err))) => {
                log::debug!("peer {from}: {err}");
                return None;
            }
            Some(Err(err)) => return Some(format!("peer {from}: {err}")),
        };
        let len = u32::from_be_bytes(header) as usize;
        if len > ctx.max_frame_bytes {
            return Some(format!(
                "peer {from} sent a frame of {len} bytes (the limit is {})",
                ctx.max_frame_bytes
            ));
        }
        let Some(_reserved) = ctx.frames.try_charge(len) else {
            return Some(format!(
                "peer {from}: frames being read on all links would pass {} bytes",
                ctx.frames.cap()
            ));
        };
        let deadline = SILENCE_TIMEOUT + Duration::from_secs(len as u64 / MIN_FRAME_BYTES_PER_SEC);
        watchdog.set(Instant::now() + deadline);
        let frame = match watchdog.guard(peer::read_frame_body(reader, len)).await {
            None => {
                return Some(format!(
                    "peer {from}: a frame of {len} bytes took over {deadline:?}"
                ))
            }
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Some(format!("peer {from}: {err}")),
        };
        let body = match opener.open(&frame) {
            Ok(body) => body,
            Err(err) => return Some(format!("peer {from}: {err}")),
        };
        if body.is_empty() {
            continue;
        }
        let msg = match peer::decode_peer_msg(body) {
            Ok(msg) => msg,
            Err(err) => return Some(format!("peer {from} sent a bad frame: {err}")),
        };
        let input = Input::Peer {
            from: from.clone(),
            // Filled in once outbound links bind to the node's own address.
            source,
            msg,
        };
        // Charged at its frame's size until the core takes it.
        match ctx.inbox.try_send(input, len) {
            Ok(()) => {}
            Err(InboxError::Full) => ctx.note_drop(from),
            Err(InboxError::Closed) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link whose task never takes from its queue (blocked writing to a
    /// peer that stopped reading, say) holds at most `LINK_QUEUE_BYTES` of
    /// messages, whatever their count; what its task takes is given back.
    #[test]
    fn a_link_queue_is_bounded_in_bytes() {
        let identity = PeerIdentity {
            me: NodeId::from_bytes([1; 10]),
            cluster: "test".into(),
            key: PeerKey::for_secrets("secret", "", ""),
            bind_ip: None,
            tls: None,
        };
        let mut links = PeerLinks::new(identity, 256 << 20, 4096);
        let to = NodeId::from_bytes([2; 10]);
        let addr = "127.0.0.1:9";
        let (queue, rx) = mpsc::channel(4096);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let mut rx = QueueRx {
            rx,
            queued_bytes: queued_bytes.clone(),
        };
        links.links.insert(
            to.clone(),
            Link {
                addr: addr.into(),
                queue,
                queued_bytes: queued_bytes.clone(),
                wire: SharedWire::default(),
                batch: Vec::new(),
            },
        );
        // 200 messages of 1 MiB: far fewer than the queue's 4096 slots.
        let big = || PeerMsg::Alive {
            applied: crate::types::Rev(1),
            addr: "a".repeat(1 << 20),
        };
        for _ in 0..200 {
            links.enqueue(to.clone(), addr, big());
        }
        let held = queued_bytes.load(Ordering::Acquire);
        assert!(held <= LINK_QUEUE_BYTES, "{held} bytes queued");
        assert!(
            held > LINK_QUEUE_BYTES - (2 << 20),
            "the queue fills up to its bound"
        );
        let (mut taken, mut count) = (0, 0);
        while let Some(frame) = rx.try_recv() {
            taken += frame.len();
            count += 1;
        }
        assert_eq!(taken, held);
        assert_eq!(links.dropped(), 200 - count, "the rest was dropped");
        assert_eq!(queued_bytes.load(Ordering::Acquire), 0);
        // Room again once the task took what was queued.
        links.enqueue(to, addr, big());
        assert!(queued_bytes.load(Ordering::Acquire) > 1 << 20);
    }

    #[test]
    fn backlog_keeps_the_newest_within_bounds() {
        let mut b = Backlog::default();
        for i in 0..(BACKLOG_MESSAGES + 10) {
            b.push(vec![i as u8; 10]);
        }
        assert_eq!(b.frames.len(), BACKLOG_MESSAGES);
        assert_eq!(b.frames.front().unwrap().1[0], 10);
        assert_eq!(b.bytes, BACKLOG_MESSAGES * 10);
        // One huge frame pushes out everything before it but stays.
        b.push(vec![0; BACKLOG_BYTES + 1]);
        assert_eq!(b.frames.len(), 1);
        assert_eq!(b.bytes, BACKLOG_BYTES + 1);
        b.push(vec![0, 0, 0, 1, 5]);
        assert_eq!(b.frames.len(), 1);
        assert_eq!(b.bytes, 5);
        // Drained frames are sealed: a MAC follows each, counted in its header.
        let key = PeerKey::open();
        let t = Transcript::new(b"h", &NodeId::from_bytes([1; 10]), &[0; 32]);
        let (mut sealer, _) = key.link_keys(&t);
        let (_, mut opener) = key.listener_link_keys(&t);
        let mut out = Vec::new();
        b.drain_into(&mut out, &mut sealer);
        assert_eq!(out.len(), 5 + TAG_BYTES);
        assert_eq!(out[..4], ((1 + TAG_BYTES) as u32).to_be_bytes());
        assert_eq!(opener.open(&out[4..]).unwrap(), [5]);
        assert!(b.is_empty() && b.bytes == 0);
    }
}
