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
/// The longest the loop sleeps without input (ticks wake it far sooner).
const IDLE_WAKE: Duration = Duration::from_secs(60);
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
            peers,
        }
    }

    /// Runs until every sender of the inbox is gone.
    pub fn run(mut self) {
        let ticker = crossbeam_channel::tick(self.tick);
        let mut out = Vec::new();
        self.publish_status();
        loop {
            // An unfinished WAIT scan is continued at the end of every batch:
            // then only look for input, without sleeping until some comes.
            let idle_wait = if self.core.has_unfinished_work() {
                Duration::ZERO
            } else {
                IDLE_WAKE
            };
            select! {
                recv(self.control) -> msg => match msg {
                    Ok(msg) => self.on_control(msg, &mut out),
                    Err(_) => return,
                },
                recv(self.inbox) -> input => match input {
                    Ok(input) => self.on_input(input, &mut out),
                    Err(_) => return,
                },
                recv(ticker) -> _ => self.core.handle(Input::Tick, &mut out),
                default(idle_wait) => {}
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
    }
}
