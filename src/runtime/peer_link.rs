//! Peer links: the TCP connections between nodes.
//!
//! Every node dials each peer it has something to say to, and the listener
//! on the other end only reads. So a pair of nodes talking both ways holds
//! two connections, each carrying one direction, and neither side ever has to
//! decide which of two crossing dials wins.
//!
//! - **Outbound**: [`PeerLinks`] lives on the event loop thread. `send` never
//!   blocks: it `try_send`s on the link's bounded queue and drops the message
//!   when the queue is full (consensus retransmits what matters). Each link is
//!   a task that dials, writes [`MAGIC`](peer::MAGIC) and a [`Hello`], then
//!   streams frames, several per write. On any error it hangs up, waits a
//!   backoff (50 ms doubling to 1 s) and dials again; messages that arrive
//!   while it waits are kept, the newest ones up to a small bound, and
//!   forgotten after a few seconds (while it dials, the queue holds them).
//!   A link with nothing to send dials nobody, and one idle for
//!   [`IDLE_TIMEOUT`] ends (the next message opens it again).
//! - **Inbound**: the listener tells a peer from a client by the first 4
//!   bytes and hands peers to [`serve_inbound`], which checks the hello and
//!   feeds each message to the core's inbox with `try_send`; a full inbox
//!   drops the message and counts it. Anything undecodable closes that
//!   connection only.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use futures::channel::mpsc;
use futures::io::BufReader;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};

use super::event_loop::NodeStatus;
use super::rt::{self, TcpStream};
use crate::codec::peer::{self, Hello, PeerFrameError};
use crate::core::{Input, PeerMsg};
use crate::types::NodeId;

/// How long a dial may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// The first wait before redialing a failed link; it doubles per failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between dials. A connection that stayed up at least this
/// long resets the backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A write that makes no progress for this long (the peer stopped reading)
/// drops the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A link with nothing to send for this long ends its task and connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an inbound connection may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
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

// ---------------------------------------------------------------------------
// Outbound

struct Link {
    addr: String,
    queue: mpsc::Sender<PeerMsg>,
}

/// The outbound links of one node, keyed by peer id. Owned by the event loop
/// thread; no method blocks or awaits.
pub struct PeerLinks {
    /// `MAGIC` and our hello, encoded once.
    hello: Arc<[u8]>,
    max_frame_bytes: usize,
    queue_capacity: usize,
    links: HashMap<NodeId, Link>,
    dropped: u64,
    /// Messages the link tasks refused to encode (over the frame cap).
    refused: Arc<AtomicU64>,
}

impl PeerLinks {
    /// Links that introduce themselves as `me` of `cluster`, send frames of at
    /// most `max_frame_bytes` and queue at most `queue_capacity` messages per
    /// peer.
    pub fn new(
        me: NodeId,
        cluster: &str,
        max_frame_bytes: usize,
        queue_capacity: usize,
    ) -> PeerLinks {
        let hello = peer::encode_hello(&Hello {
            version: peer::PROTOCOL_VERSION,
            from: me,
            cluster: cluster.to_string(),
        });
        PeerLinks {
            hello: hello.into(),
            max_frame_bytes,
            queue_capacity: queue_capacity.max(1),
            links: HashMap::new(),
            dropped: 0,
            refused: Arc::default(),
        }
    }

    /// Queues `msg` for `to`, reached at `addr`, opening the link (or
    /// replacing it, when `addr` changed) as needed. Drops the message when
    /// the link's queue is full.
    pub fn send(&mut self, to: NodeId, addr: &str, msg: PeerMsg) {
        let reusable = self
            .links
            .get(&to)
            .is_some_and(|link| link.addr == addr && !link.queue.is_closed());
        if !reusable {
            // Forget links whose task ended (idle) while we are at it.
            self.links.retain(|_, link| !link.queue.is_closed());
            let link = self.open(&to, addr);
            self.links.insert(to.clone(), link);
        }
        let link = self.links.get_mut(&to).expect("inserted above");
        match link.queue.try_send(msg) {
            Ok(()) => {}
            Err(err) if err.is_full() => {
                self.dropped += 1;
                log::debug!("peer {to} at {addr}: link queue full; message dropped");
            }
            Err(err) => {
                // The task ended (idle) between the check above and now.
                let msg = err.into_inner();
                let mut link = self.open(&to, addr);
                if link.queue.try_send(msg).is_err() {
                    self.dropped += 1;
                }
                self.links.insert(to, link);
            }
        }
    }

    fn open(&self, to: &NodeId, addr: &str) -> Link {
        let (queue, rx) = mpsc::channel(self.queue_capacity);
        let task = LinkTask {
            hello: self.hello.clone(),
            to: to.clone(),
            addr: addr.to_string(),
            max_frame_bytes: self.max_frame_bytes,
            refused: self.refused.clone(),
            rx,
            backlog: Backlog::default(),
        };
        rt::spawn(task.run());
        Link {
            addr: addr.to_string(),
            queue,
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

    /// Messages not sent so far because they exceeded the frame cap.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Frames kept for a peer while its link is down.
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

    fn drain_into(&mut self, buf: &mut Vec<u8>) {
        for (_, frame) in self.frames.drain(..) {
            buf.extend_from_slice(&frame);
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
}

enum Event {
    Msg(Option<PeerMsg>),
    Closed(String),
    Idle,
}

struct LinkTask {
    hello: Arc<[u8]>,
    to: NodeId,
    addr: String,
    max_frame_bytes: usize,
    refused: Arc<AtomicU64>,
    rx: mpsc::Receiver<PeerMsg>,
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
            let dialed = rt::timeout(DIAL_TIMEOUT, TcpStream::connect(&*self.addr)).await;
            let failure = match dialed {
                Some(Ok(stream)) => {
                    let since = Instant::now();
                    if failing {
                        log::info!("peer {} at {}: connected", self.to, self.addr);
                        failing = false;
                    }
                    let stop = self.pump(&stream).await;
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
                    }
                }
                Some(Err(err)) => format!("cannot connect: {err}"),
                None => "cannot connect: timed out".to_string(),
            };
            if failing {
                log::debug!("peer {} at {}: {failure}", self.to, self.addr);
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

    /// Encodes `msg` into the backlog (dropping it if it is too large to
    /// send at all).
    fn keep(&mut self, msg: PeerMsg) {
        let mut frame = Vec::new();
        if self.encode(&msg, &mut frame) {
            self.backlog.push(frame);
        }
    }

    fn encode(&self, msg: &PeerMsg, buf: &mut Vec<u8>) -> bool {
        match peer::encode_peer_frame_into(msg, buf, self.max_frame_bytes) {
            Ok(_) => true,
            Err(err) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!("peer {}: message not sent: {err}", self.to);
                false
            }
        }
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

    /// Sends the hello, the backlog, then whatever arrives, until the
    /// connection fails, the link idles out or its sender is dropped.
    async fn pump(&mut self, stream: &TcpStream) -> Stop {
        let _ = stream.set_nodelay(true);
        let mut writer = stream.clone();
        let mut buf = Vec::with_capacity(WRITE_BATCH_BYTES);
        buf.extend_from_slice(&self.hello);
        self.backlog.drain_into(&mut buf);
        if let Err(reason) = write(&mut writer, &buf).await {
            return Stop::Failed(reason);
        }
        // The other side never writes: a read that ends means it hung up.
        let mut closed = Box::pin(watch_closed(stream.clone()).fuse());
        // One timer per idle period, not per message: when it fires, it is
        // re-armed for what is left since the last message.
        let mut last_msg = Instant::now();
        let mut idle = Box::pin(rt::sleep(IDLE_TIMEOUT).fuse());
        loop {
            buf.clear();
            if buf.capacity() > 4 * WRITE_BATCH_BYTES {
                buf = Vec::with_capacity(WRITE_BATCH_BYTES);
            }
            let event = futures::select! {
                msg = self.rx.next() => Event::Msg(msg),
                reason = closed => Event::Closed(reason),
                () = idle => Event::Idle,
            };
            let msg = match event {
                Event::Msg(Some(msg)) => msg,
                Event::Msg(None) => return Stop::SenderGone,
                Event::Closed(reason) => return Stop::Failed(reason),
                Event::Idle => {
                    let quiet = last_msg.elapsed();
                    if quiet >= IDLE_TIMEOUT {
                        return Stop::Idle;
                    }
                    idle = Box::pin(rt::sleep(IDLE_TIMEOUT - quiet).fuse());
                    continue;
                }
            };
            last_msg = Instant::now();
            self.encode(&msg, &mut buf);
            while buf.len() < WRITE_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(msg) => {
                        self.encode(&msg, &mut buf);
                    }
                    Err(_) => break,
                }
            }
            if buf.is_empty() {
                continue;
            }
            if let Err(reason) = write(&mut writer, &buf).await {
                return Stop::Failed(reason);
            }
        }
    }
}

async fn write(writer: &mut TcpStream, buf: &[u8]) -> Result<(), String> {
    // Most writes complete at once: try without a timer first, because
    // arming one costs a wake-up of the reactor on every message.
    let mut pending = Box::pin(writer.write_all(buf));
    if let Some(done) = (&mut pending).now_or_never() {
        return done.map_err(|err| format!("write failed: {err}"));
    }
    match rt::timeout(WRITE_TIMEOUT, pending).await {
        Some(Ok(())) => Ok(()),
        Some(Err(err)) => Err(format!("write failed: {err}")),
        None => Err("write timed out (the peer is not reading)".to_string()),
    }
}

/// Completes when the other side closes the connection (or it fails).
async fn watch_closed(mut stream: TcpStream) -> String {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return "the peer closed the connection".to_string(),
            // A listener never writes; ignore whatever it sends.
            Ok(_) => continue,
            Err(err) => return format!("connection failed: {err}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Inbound

/// What inbound peer connections share.
pub struct PeerInbound {
    inbox: Sender<Input>,
    cluster: String,
    max_frame_bytes: usize,
    status: Arc<NodeStatus>,
    started: Instant,
    /// Milliseconds after `started` of the last "inbox full" warning (0: none).
    last_warn_ms: AtomicU64,
}

impl PeerInbound {
    /// Accepts peers of `cluster`, with frames of at most `max_frame_bytes`,
    /// into `inbox`; drops are counted in `status`.
    pub fn new(
        inbox: Sender<Input>,
        cluster: &str,
        max_frame_bytes: usize,
        status: Arc<NodeStatus>,
    ) -> PeerInbound {
        PeerInbound {
            inbox,
            cluster: cluster.to_string(),
            max_frame_bytes,
            status,
            started: Instant::now(),
            last_warn_ms: AtomicU64::new(0),
        }
    }

    fn note_drop(&self, from: &NodeId) {
        let total = self.status.peer_in_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = (self.started.elapsed().as_millis() as u64).max(1);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + 1000;
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!("core inbox full: dropping peer messages ({total} so far)");
        } else {
            log::debug!("core inbox full: message from peer {from} dropped");
        }
    }
}

/// Serves one inbound peer connection whose [`MAGIC`](peer::MAGIC) the
/// listener has already read.
pub async fn serve_inbound(stream: TcpStream, ctx: &PeerInbound) {
    let addr = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream.clone());
    let reason = match rt::timeout(HELLO_TIMEOUT, peer::read_hello(&mut reader)).await {
        None => Some("no hello in time".to_string()),
        Some(Err(err)) => Some(format!("bad hello: {err}")),
        Some(Ok(hello)) if hello.version != peer::PROTOCOL_VERSION => Some(format!(
            "node {} speaks peer protocol {}, not {}",
            hello.from,
            hello.version,
            peer::PROTOCOL_VERSION
        )),
        Some(Ok(hello)) if hello.cluster != ctx.cluster => Some(format!(
            "node {} is of cluster {:?}, not {:?}",
            hello.from, hello.cluster, ctx.cluster
        )),
        Some(Ok(hello)) => {
            log::debug!("peer {} connected from {addr}", hello.from);
            receive(&mut reader, &hello.from, ctx).await
        }
    };
    if let Some(reason) = reason {
        log::warn!("peer connection from {addr} closed: {reason}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Feeds `from`'s messages to the core until the link ends; the reason it
/// ended, if it was not a clean close.
async fn receive(
    reader: &mut BufReader<TcpStream>,
    from: &NodeId,
    ctx: &PeerInbound,
) -> Option<String> {
    loop {
        let msg = match peer::read_peer_frame(reader, ctx.max_frame_bytes).await {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                log::debug!("peer {from} hung up");
                return None;
            }
            Err(PeerFrameError::Io(err)) => {
                log::debug!("peer {from}: {err}");
                return None;
            }
            Err(err) => return Some(format!("peer {from} sent a bad frame: {err}")),
        };
        let input = Input::Peer {
            from: from.clone(),
            msg,
        };
        match ctx.inbox.try_send(input) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => ctx.note_drop(from),
            Err(TrySendError::Disconnected(_)) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        b.push(vec![1; 5]);
        assert_eq!(b.frames.len(), 1);
        assert_eq!(b.bytes, 5);
        let mut out = Vec::new();
        b.drain_into(&mut out);
        assert_eq!(out, [1; 5]);
        assert!(b.is_empty() && b.bytes == 0);
    }
}
