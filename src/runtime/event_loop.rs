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

use crossbeam_channel::{select, Receiver, TryRecvError};
use futures::channel::mpsc;

use super::peer_link::PeerLinks;
use crate::codec::client::Response;
use crate::core::{ConnId, Core, Input, Outcome, Output};

/// What a connection's writer task is sent.
#[derive(Debug)]
pub enum Outgoing {
    /// An answer the connection's own session produced (no core involved).
    Immediate(Response),
    /// The core's answer to a submitted request.
    Completed { tag: Option<i32>, outcome: Outcome },
}

pub type Outbox = mpsc::Sender<Outgoing>;

/// Connection life-cycle messages. They travel apart from requests so they
/// can never be refused for a full inbox; each connection sends at most two,
/// and connections are capped, so this channel is bounded in practice.
pub enum Control {
    Opened {
        conn: ConnId,
        outbox: Outbox,
        /// Called to cut the connection when its outbox overflows.
        hang_up: Box<dyn FnOnce() + Send>,
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
    /// Peer messages a link refused to send because their encoding exceeded
    /// the frame cap. Always 0 unless a sender failed to cut a message to
    /// the catch-up budget: a bug, shown in `/metrics`.
    pub peer_frames_refused: AtomicU64,
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
/// How often the cluster view is published for the web view.
const VIEW_INTERVAL: Duration = Duration::from_millis(200);

struct Link {
    outbox: Outbox,
    hang_up: Box<dyn FnOnce() + Send>,
}

pub struct EventLoop {
    core: Core,
    inbox: Receiver<Input>,
    control: Receiver<Control>,
    tick: Duration,
    status: Arc<NodeStatus>,
    links: HashMap<ConnId, Link>,
    peers: PeerLinks,
    view_published: std::time::Instant,
    /// Where the core's clock stands in real time: the start of the tick
    /// that has not been reported yet.
    clock: std::time::Instant,
}

impl EventLoop {
    pub fn new(
        core: Core,
        inbox: Receiver<Input>,
        control: Receiver<Control>,
        tick: Duration,
        status: Arc<NodeStatus>,
        peers: PeerLinks,
    ) -> EventLoop {
        EventLoop {
            core,
            inbox,
            control,
            tick,
            status,
            links: HashMap::new(),
            view_published: std::time::Instant::now() - VIEW_INTERVAL,
            clock: std::time::Instant::now(),
            peers,
        }
    }

    /// Runs until every sender of the inbox is gone.
    pub fn run(mut self) {
        let ticker = crossbeam_channel::tick(self.tick);
        let mut out = Vec::new();
        self.publish_status();
        loop {
            select! {
                recv(self.control) -> msg => match msg {
                    Ok(msg) => self.on_control(msg, &mut out),
                    Err(_) => return,
                },
                recv(self.inbox) -> input => match input {
                    Ok(input) => self.on_input(input, &mut out),
                    Err(_) => return,
                },
                recv(ticker) -> _ => self.on_tick(&mut out),
            }
            for _ in 0..MAX_BATCH {
                match self.inbox.try_recv() {
                    Ok(input) => self.on_input(input, &mut out),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            self.core.end_batch(&mut out);
            self.route(&mut out);
            self.publish_status();
        }
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
        self.core.handle(Input::Tick(elapsed), out);
    }

    fn on_input(&mut self, input: Input, out: &mut Vec<Output>) {
        // An Opened message is sent before the connection's first request, so
        // draining control first guarantees the link is known.
        self.drain_control(out);
        if let Input::Request { conn, .. } = &input {
            if !self.links.contains_key(conn) {
                // The connection closed (or was cut) after sending this.
                return;
            }
        }
        self.core.handle(input, out);
    }

    fn drain_control(&mut self, out: &mut Vec<Output>) {
        while let Ok(msg) = self.control.try_recv() {
            self.on_control(msg, out);
        }
    }

    fn on_control(&mut self, msg: Control, out: &mut Vec<Output>) {
        match msg {
            Control::Opened {
                conn,
                outbox,
                hang_up,
            } => {
                self.links.insert(conn, Link { outbox, hang_up });
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
                    if let Err(err) = link.outbox.try_send(Outgoing::Completed { tag, outcome }) {
                        if err.is_full() {
                            log::warn!("connection {conn}: client is not reading its replies; disconnecting");
                        }
                        cut.push(conn);
                    }
                }
                Output::Peer { to, addr, msg } => self.peers.send(to, &addr, msg),
            }
        }
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
    }
}
