//! The core's thread: it owns the [`Core`], blocks on its channels, handles a
//! batch of inputs, then routes the outputs.
//!
//! Nothing else touches core state. Connection tasks reach it only through
//! bounded channels, and it reaches them only through their bounded outboxes,
//! with `try_send` both ways: a slow client is disconnected, never waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use futures::channel::mpsc;
use futures::task::AtomicWaker;

use super::direct::DirectWriter;
use super::direct::SendError;
use super::peer_link::PeerLinks;
use super::rt;
use crate::budget::{ByteBudget, Charge};
use crate::codec::client::{self, Response};
use crate::core::{ConnId, Core, Input, Outcome, Output, Reply};
use crate::journal::Journal;
use crate::session::Session;

/// An input on its way to the core, with the bytes it holds in the inbox's
/// budget; they are given back when the event loop takes it.
#[derive(Debug)]
pub struct Queued {
    pub input: Input,
    /// Held only to be dropped with the input: its bytes and its place.
    _charge: Charge,
    _slot: Charge,
}

impl Queued {
    /// The input, its bytes given back.
    pub fn into_input(self) -> Input {
        self.input
    }
}

/// Why [`Inbox::try_send`] did not queue an input.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// The core is behind: the inbox is full in items or in bytes.
    #[error("the core's inbox is full")]
    Full,
    /// The core has stopped.
    #[error("the core has stopped")]
    Closed,
}

/// The core's inbox, bounded twice: in items (the channel's capacity) and in
/// bytes (a [`ByteBudget`] shared by every sender, clients and peers alike).
/// A full inbox refuses at once; nothing ever waits for room.
#[derive(Clone, Debug)]
pub struct Inbox {
    tx: Sender<Queued>,
    budget: Arc<ByteBudget>,
    /// Inputs queued, counted one each: the channel itself is unbounded so
    /// that its memory follows what is queued (a bounded channel allocates
    /// and touches every slot up front: 2 MiB of a node's resident size at
    /// the default 16,384 inputs, all of it idle).
    slots: Arc<ByteBudget>,
    doorbell: Arc<AtomicWaker>,
}

/// The sending end of the control channel; like [`Inbox`], it wakes the
/// event loop.
#[derive(Clone, Debug)]
pub struct ControlSender {
    tx: Sender<Control>,
    doorbell: Arc<AtomicWaker>,
}

impl ControlSender {
    /// A control channel of at most `items` messages with a doorbell no
    /// event loop listens to: for a test that reads the channel itself.
    pub fn standalone(items: usize) -> (ControlSender, Receiver<Control>) {
        let (tx, rx) = crossbeam_channel::bounded(items);
        let doorbell = Arc::new(AtomicWaker::new());
        (ControlSender { tx, doorbell }, rx)
    }

    pub fn try_send(&self, msg: Control) -> Result<(), TrySendError<Control>> {
        self.tx.try_send(msg)?;
        self.doorbell.wake();
        Ok(())
    }
}

/// The event loop's receiving ends: inputs, control messages, and the
/// doorbell every sender rings.
pub struct Receivers {
    inbox: Receiver<Queued>,
    control: Receiver<Control>,
    doorbell: Arc<AtomicWaker>,
}

/// The channels into the event loop: the inbox (at most `items` inputs and
/// `max_bytes` bytes, see [`Inbox::new`]), the control channel (at most
/// `control_items`), and their receiving ends.
pub fn channels(
    items: usize,
    max_bytes: usize,
    control_items: usize,
) -> (Inbox, ControlSender, Receivers) {
    let (inbox, rx) = Inbox::new(items, max_bytes);
    let (control_tx, control_rx) = crossbeam_channel::bounded(control_items);
    let doorbell = inbox.doorbell.clone();
    (
        inbox,
        ControlSender {
            tx: control_tx,
            doorbell: doorbell.clone(),
        },
        Receivers {
            inbox: rx,
            control: control_rx,
            doorbell,
        },
    )
}

impl Inbox {
    /// An inbox of at most `items` inputs and `max_bytes` bytes (one input
    /// of any size fits when it is empty), and the receiving end for the
    /// event loop.
    pub fn new(items: usize, max_bytes: usize) -> (Inbox, Receiver<Queued>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let budget = Arc::new(ByteBudget::new(max_bytes));
        let slots = Arc::new(ByteBudget::new(items.max(1)));
        let doorbell = Arc::new(AtomicWaker::new());
        (
            Inbox {
                tx,
                budget,
                slots,
                doorbell,
            },
            rx,
        )
    }

    /// Queues `input`, charged `bytes` until the event loop takes it: a
    /// client request at its [`request_cost`](crate::session::request_cost),
    /// a peer message at its frame's size.
    pub fn try_send(&self, input: Input, bytes: usize) -> Result<(), InboxError> {
        let slot = self.slots.try_charge(1).ok_or(InboxError::Full)?;
        let charge = self.budget.try_charge(bytes).ok_or(InboxError::Full)?;
        // The channel is unbounded (the charges bound it): it fails only
        // when the event loop is gone, and the charges come back with the
        // refused input and are dropped.
        self.tx
            .try_send(Queued {
                input,
                _charge: charge,
                _slot: slot,
            })
            .map_err(|_| InboxError::Closed)?;
        self.doorbell.wake();
        Ok(())
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.budget.used()
    }

    /// The byte budget, for counters.
    pub fn budget(&self) -> &Arc<ByteBudget> {
        &self.budget
    }
}

/// What a connection's writer task is sent.
#[derive(Debug)]
pub enum Outgoing {
    /// An answer the connection's own session produced (no core involved).
    Immediate(Response),
    /// The core's answer to a submitted request.
    Completed { tag: Option<i32>, outcome: Outcome },
}

pub type Outbox = mpsc::Sender<Outgoing>;

/// What the core's thread needs to answer a plain-TCP connection itself:
/// the socket's shared writer, and the session whose in-flight count each
/// answer gives back. Every answer but a SNAPSHOT's tree goes this way.
pub struct DirectReplies {
    pub writer: Arc<DirectWriter>,
    pub session: Arc<std::sync::Mutex<Session>>,
}

/// Connection life-cycle messages. They travel apart from requests so they
/// are never refused for a full inbox. Their channel is bounded
/// ([`Limits::control_capacity`](crate::config::Limits::control_capacity)):
/// a connection whose `Opened` finds it full is refused, and a `Closed` that
/// finds it full is sent again a little later (see `client_conn`).
pub enum Control {
    Opened {
        conn: ConnId,
        outbox: Outbox,
        /// Called to cut the connection when its outbox overflows.
        hang_up: Box<dyn FnOnce() + Send>,
        /// Plain TCP: the core's thread writes replies to the socket itself.
        direct: Option<DirectReplies>,
    },
    Closed {
        conn: ConnId,
    },
}

/// What the rest of the process may know about the core without asking it.
#[derive(Debug, Default)]
pub struct NodeStatus {
    pub writable: AtomicBool,
    pub rev: AtomicI64,
    pub connections: AtomicUsize,
    pub waiting: AtomicUsize,
    /// Peer messages received and dropped because the core's inbox was full.
    pub peer_in_dropped: AtomicU64,
    /// Peer messages dropped because a link's queue was full.
    pub peer_out_dropped: AtomicU64,
    /// Connections closed at accept: over the connection limit or the
    /// per-address one, out of `ACCESS` guesses, or the core far behind.
    pub connections_refused: AtomicU64,
    /// Client connections closed for failing `ACCESS`: too many wrong
    /// attempts, or none in time with secrets set.
    pub access_refused: AtomicU64,
    /// Peer messages a link refused to send because their encoding exceeded
    /// the frame cap. Always 0 unless a sender failed to cut a message to
    /// the catch-up budget: a bug, shown in `/metrics`.
    pub peer_frames_refused: AtomicU64,
    /// Inbound peer connections closed for failing the handshake, a bad or
    /// late frame, or the frame budget.
    pub peer_in_refused: AtomicU64,
    /// The data dir: whether it failed (the node then answers every
    /// request with an error and takes no part in the cluster), log appends
    /// (one sync each), bytes appended, images written. The dir itself, for
    /// whoever reports its size (off the core's thread: listing it is I/O).
    pub disk_failed: AtomicBool,
    pub disk_appends: AtomicU64,
    pub disk_appended_bytes: AtomicU64,
    pub disk_images: AtomicU64,
    pub data_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// The node's TLS, when it is on (for the web view and `/metrics`).
    pub tls: std::sync::OnceLock<Arc<crate::tls::NodeTls>>,
    /// The cluster as the core saw it at the end of a recent batch
    /// (refreshed a few times a second).
    pub view: std::sync::Mutex<crate::core::ClusterView>,
}

impl NodeStatus {
    /// A copy of the latest published cluster view.
    pub fn cluster_view(&self) -> crate::core::ClusterView {
        self.view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Inputs handled before outputs are routed; bounds the latency one batch adds.
const MAX_BATCH: usize = 4096;
/// The most time one tick may report as passed. The loop measures the time
/// between ticks (so ticks it could not take while busy still count, and
/// `-timeout 60` means 60 s on a loaded machine); a longer gap means the
/// process was stopped or the machine slept, and counting all of it would
/// make a node that wakes up judge its peers dead before reading what they
/// sent meanwhile.
const MAX_TICK_GAP: Duration = Duration::from_secs(1);
/// Reply buffers kept for reuse, and the largest kept.
const SPARE_BUFFERS: usize = 256;
const SPARE_BUFFER_BYTES: usize = 64 * 1024;
/// Replies gathered for one connection before they go to its writer
/// mid-batch.
const DIRECT_FLUSH_BYTES: usize = 256 * 1024;

/// Logs why a direct writer refused a connection's replies (a closed one
/// needs no line: its task logs the end).
fn note_refused(conn: ConnId, err: &SendError) {
    if matches!(err, SendError::Overflow(_)) {
        log::warn!("connection {conn}: client is not reading its replies; disconnecting");
    }
}
/// How often the cluster view is published for the web view.
const VIEW_INTERVAL: Duration = Duration::from_millis(200);

struct Link {
    outbox: Outbox,
    hang_up: Box<dyn FnOnce() + Send>,
    direct: Option<DirectReplies>,
}

pub struct EventLoop {
    core: Core,
    inbox: Receiver<Queued>,
    control: Receiver<Control>,
    doorbell: Arc<AtomicWaker>,
    tick: Duration,
    status: Arc<NodeStatus>,
    links: HashMap<ConnId, Link>,
    peers: PeerLinks,
    view_published: std::time::Instant,
    /// Where the core's clock stands in real time: the start of the tick
    /// that has not been reported yet.
    clock: std::time::Instant,
    /// The data dir, when the node has one.
    journal: Option<Journal>,
    /// Why the data dir failed: from then on the node answers every request
    /// with this and sends nothing to its peers.
    disk_failed: Option<String>,
    /// Encoded answers of the batch being routed, per connection answered
    /// directly: each connection gets one `send` per batch.
    direct_replies: HashMap<ConnId, Vec<u8>>,
    /// Emptied buffers of `direct_replies`, reused.
    spare_buffers: Vec<Vec<u8>>,
}

impl EventLoop {
    pub fn new(
        core: Core,
        receivers: Receivers,
        tick: Duration,
        status: Arc<NodeStatus>,
        peers: PeerLinks,
    ) -> EventLoop {
        EventLoop {
            core,
            inbox: receivers.inbox,
            control: receivers.control,
            doorbell: receivers.doorbell,
            tick,
            status,
            links: HashMap::new(),
            view_published: std::time::Instant::now() - VIEW_INTERVAL,
            clock: std::time::Instant::now(),
            peers,
            journal: None,
            disk_failed: None,
            direct_replies: HashMap::new(),
            spare_buffers: Vec::new(),
        }
    }

    /// Makes every batch durable in `journal` before its outputs go out.
    pub fn with_journal(mut self, journal: Journal) -> EventLoop {
        self.journal = Some(journal);
        self
    }

    /// Runs until every sender of the inbox is gone, on a node thread (see
    /// [`rt::spawn_node_thread`](super::rt::spawn_node_thread)): between
    /// batches it yields, so the connection tasks on the thread read what
    /// arrived meanwhile, which makes the next batch.
    pub async fn run(mut self) {
        let tick = self.tick.max(Duration::from_micros(1));
        let mut ticker = rt::Timer::after(tick);
        let mut next_tick_at = self.clock + tick;
        let mut out = Vec::new();
        self.publish_status();
        loop {
            // An unfinished WAIT scan is continued at the end of every batch:
            // then only look for input, without waiting for some.
            let unfinished = self.core.has_unfinished_work() && self.disk_failed.is_none();
            let ticked = futures::future::poll_fn(|cx| {
                self.doorbell.register(cx.waker());
                let ticked = Pin::new(&mut ticker).poll(cx).is_ready();
                if ticked || unfinished || !self.inbox.is_empty() || !self.control.is_empty() {
                    Poll::Ready(ticked)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if self.drain_control(&mut out).is_err() {
                return;
            }
            // Time that passed is reported before the inputs too, not only
            // when the ticker fires: an idle node sleeps past many ticks, and
            // a heartbeat must reset a follower's timeout at the time it
            // came, not at the last tick before it.
            if ticked || std::time::Instant::now() >= self.clock + tick {
                self.on_tick(&mut out);
            }
            for _ in 0..MAX_BATCH {
                match self.inbox.try_recv() {
                    Ok(input) => self.on_input(input.into_input(), &mut out),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if self.disk_failed.is_none() {
                self.core.end_batch(&mut out);
                self.persist(&mut out);
            }
            self.route(&mut out);
            self.publish_status();
            // The next tick when the core next has something to do on time
            // (every tick while anything waits; idle, a few times a
            // heartbeat period). Ticks missed while busy are not fired in a
            // burst: `on_tick` measures the time that passed.
            let due = u32::try_from(self.core.ticks_until_due()).unwrap_or(u32::MAX);
            let wake_at = self.clock + tick.saturating_mul(due);
            if ticked || wake_at != next_tick_at {
                next_tick_at = wake_at;
                ticker.set_at(wake_at);
            }
            // Every other task on the thread runs once before the next batch.
            rt::yield_now().await;
        }
    }

    /// Makes the batch's records durable, routing its outputs before or
    /// after as the journal's contract says ([`crate::journal`]); on a disk
    /// error what it held never goes out (see [`Self::fail_disk`]).
    fn persist(&mut self, out: &mut Vec<Output>) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let step = journal.take(&mut self.core);
        if step.holds_outputs() {
            let (mut early, held): (Vec<Output>, Vec<Output>) =
                out.drain(..).partition(crate::journal::leaves_before_sync);
            *out = held;
            self.route(&mut early);
        } else {
            self.route(out);
        }
        let journal = self.journal.as_mut().expect("checked above");
        if let Err(err) = journal.write(step, &self.core) {
            self.fail_disk(err.to_string(), out);
        }
    }

    /// The data dir failed (full, or a write or sync refused): what this
    /// batch promised is not on disk, so none of its messages may leave and
    /// none of its answers may be given. Every client request held, and
    /// every later one, is answered with an error naming the cause; peers
    /// hear nothing more, so the cluster goes on without this node (and
    /// removes it after `-timeout`). A restart recovers from what is on disk.
    fn fail_disk(&mut self, err: String, out: &mut Vec<Output>) {
        let detail = format!(
            "this node's data dir failed ({err}); it no longer takes writes or answers              reads: fix the disk and restart it"
        );
        log::error!("{detail}");
        for output in out.iter_mut() {
            if let Output::Reply { outcome, .. } = output {
                *outcome = Err(crate::error::ReplyError::other(detail.clone()));
            }
        }
        out.retain(|output| matches!(output, Output::Reply { .. }));
        self.core.fail_all(&detail, out);
        self.status.disk_failed.store(true, Ordering::Release);
        self.disk_failed = Some(detail);
    }

    /// Tells the core how many whole ticks passed since the last report
    /// (the remainder carries over), at least one and at most
    /// [`MAX_TICK_GAP`].
    fn on_tick(&mut self, out: &mut Vec<Output>) {
        let now = std::time::Instant::now();
        let tick = self.tick.max(Duration::from_micros(1));
        let gap = now.saturating_duration_since(self.clock);
        let elapsed = (gap.as_nanos() / tick.as_nanos()).max(1);
        let cap = (MAX_TICK_GAP.as_nanos() / tick.as_nanos()).max(1);
        if elapsed > cap {
            self.clock = now;
        } else {
            // Exact: elapsed * tick <= gap fits the gap's own Duration.
            self.clock += tick * u32::try_from(elapsed).unwrap_or(u32::MAX);
            if self.clock > now {
                self.clock = now;
            }
        }
        let elapsed = u64::try_from(elapsed.min(cap)).unwrap_or(u64::MAX);
        if self.disk_failed.is_none() {
            self.core.handle(Input::Tick(elapsed), out);
        }
    }

    fn on_input(&mut self, input: Input, out: &mut Vec<Output>) {
        // An Opened message is sent before the connection's first request, so
        // draining control first guarantees the link is known.
        let _ = self.drain_control(out);
        if let Input::Request { conn, .. } = &input {
            if !self.links.contains_key(conn) {
                // The connection closed (or was cut) after sending this.
                return;
            }
        }
        if let Some(detail) = &self.disk_failed {
            if let Input::Request { conn, tag, .. } = input {
                let outcome = Err(crate::error::ReplyError::other(detail.clone()));
                out.push(Output::Reply { conn, tag, outcome });
            }
            return;
        }
        self.core.handle(input, out);
    }

    /// Handles every control message waiting; `Err` once every sender is
    /// gone.
    fn drain_control(&mut self, out: &mut Vec<Output>) -> Result<(), TryRecvError> {
        loop {
            match self.control.try_recv() {
                Ok(msg) => self.on_control(msg, out),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(TryRecvError::Disconnected),
            }
        }
    }

    fn on_control(&mut self, msg: Control, out: &mut Vec<Output>) {
        match msg {
            Control::Opened {
                conn,
                outbox,
                hang_up,
                direct,
            } => {
                self.links.insert(
                    conn,
                    Link {
                        outbox,
                        hang_up,
                        direct,
                    },
                );
            }
            Control::Closed { conn } => {
                if self.links.remove(&conn).is_some() {
                    self.core.handle(Input::ConnClosed { conn }, out);
                }
            }
        }
    }

    fn route(&mut self, out: &mut Vec<Output>) {
        let mut cut = Vec::new();
        for output in out.drain(..) {
            match output {
                Output::Reply { conn, tag, outcome } => {
                    let Some(link) = self.links.get_mut(&conn) else {
                        continue;
                    };
                    match &link.direct {
                        Some(direct) if !matches!(outcome, Ok(Reply::Tree(_))) => {
                            super::client_conn::lock(&direct.session).completed(tag);
                            if cut.contains(&conn) {
                                continue;
                            }
                            let buf = self
                                .direct_replies
                                .entry(conn)
                                .or_insert_with(|| self.spare_buffers.pop().unwrap_or_default());
                            client::encode_frame_into(&client::response(tag, &outcome), buf);
                            // A batch may answer thousands of reads of big
                            // values on one connection: hand them over as they
                            // pile up, so the writer's byte bound applies
                            // before, not after, they are all encoded.
                            if buf.len() >= DIRECT_FLUSH_BYTES {
                                let sent = direct.writer.send(buf);
                                buf.clear();
                                if let Err(err) = sent {
                                    note_refused(conn, &err);
                                    cut.push(conn);
                                }
                            }
                        }
                        _ => {
                            let completed = Outgoing::Completed { tag, outcome };
                            if let Err(err) = link.outbox.try_send(completed) {
                                if err.is_full() {
                                    log::warn!("connection {conn}: client is not reading its replies; disconnecting");
                                }
                                cut.push(conn);
                            }
                        }
                    }
                }
                Output::Peer { to, addr, msg } => self.peers.push(to, &addr, msg),
            }
        }
        self.peers.flush();
        self.send_direct_replies(&mut cut);
        for conn in cut {
            if let Some(link) = self.links.remove(&conn) {
                (link.hang_up)();
                let mut more = Vec::new();
                self.core.handle(Input::ConnClosed { conn }, &mut more);
                out.extend(more);
            }
        }
        if !out.is_empty() {
            self.route(out);
        }
    }

    /// Sends each directly answered connection its batch of answers in one
    /// write; a connection whose writer refuses (closed, or not reading) is
    /// added to `cut`.
    fn send_direct_replies(&mut self, cut: &mut Vec<ConnId>) {
        for (conn, mut buf) in self.direct_replies.drain() {
            if let Some(direct) = self.links.get(&conn).and_then(|link| link.direct.as_ref()) {
                if let Err(err) = direct.writer.send(&buf) {
                    note_refused(conn, &err);
                    cut.push(conn);
                }
            }
            buf.clear();
            if buf.capacity() <= SPARE_BUFFER_BYTES && self.spare_buffers.len() < SPARE_BUFFERS {
                self.spare_buffers.push(buf);
            }
        }
    }

    fn publish_status(&mut self) {
        let status = &self.status;
        let now = std::time::Instant::now();
        if now.duration_since(self.view_published) >= VIEW_INTERVAL {
            self.view_published = now;
            let tick_ms = self.tick.as_millis() as u64;
            let view = self.core.view(tick_ms);
            *status
                .view
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = view;
        }
        status
            .writable
            .store(self.core.is_writable(), Ordering::Release);
        status
            .rev
            .store(self.core.store().rev().0, Ordering::Release);
        status.waiting.store(self.core.waiting(), Ordering::Relaxed);
        status
            .peer_out_dropped
            .store(self.peers.dropped(), Ordering::Relaxed);
        status
            .peer_frames_refused
            .store(self.peers.refused(), Ordering::Relaxed);
        if let Some(journal) = &self.journal {
            let stats = journal.stats;
            status.disk_appends.store(stats.appends, Ordering::Relaxed);
            status
                .disk_appended_bytes
                .store(stats.appended_bytes, Ordering::Relaxed);
            status.disk_images.store(stats.images, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_is_bounded_in_items_and_in_bytes() {
        let (inbox, rx) = Inbox::new(3, 1000);
        // Bytes: 600 + 400 fill it; one more byte does not fit.
        inbox.try_send(Input::Tick(1), 600).unwrap();
        inbox.try_send(Input::Tick(1), 400).unwrap();
        assert_eq!(inbox.try_send(Input::Tick(1), 1), Err(InboxError::Full));
        assert_eq!(inbox.queued_bytes(), 1000);
        // Taking an input gives its bytes back.
        drop(rx.recv().unwrap().into_input());
        assert_eq!(inbox.queued_bytes(), 400);
        // Items: three at most, however small.
        inbox.try_send(Input::Tick(1), 1).unwrap();
        inbox.try_send(Input::Tick(1), 1).unwrap();
        assert_eq!(inbox.try_send(Input::Tick(1), 1), Err(InboxError::Full));
        // A refused input's bytes are not kept.
        assert_eq!(inbox.queued_bytes(), 402);
        while rx.try_recv().is_ok() {}
        assert_eq!(inbox.queued_bytes(), 0);
        // Alone, an input larger than the whole budget still goes through.
        inbox.try_send(Input::Tick(1), 5000).unwrap();
        assert_eq!(inbox.try_send(Input::Tick(1), 1), Err(InboxError::Full));
        drop(rx.recv().unwrap());
        drop(rx);
        assert_eq!(inbox.try_send(Input::Tick(1), 1), Err(InboxError::Closed));
        assert_eq!(inbox.queued_bytes(), 0);
    }
}
