//! The clients: workers doing seeded random SET / CAS / DEL / GET on a few
//! keys, each on its own connection to one node, and one WAIT-chain watcher
//! per node. Every op has a client-side time-out; what the client could not
//! learn is recorded as `Unknown`, never guessed.
//!
//! A worker or watcher is bound to a node *slot*: when churn replaces a
//! node, the slot's address changes and the next reconnect follows it, so
//! there are clients on every live node throughout.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::future::timeout;
use doozer::client::{Client, Error};
use doozer::error::ErrCode;

use crate::history::{Op, OpKind, Outcome, Time, WatchEvent, WatchSegment, WatchStream};
use crate::rng::Rng;

/// The keys every worker uses (few, so reads and writes collide).
pub const KEYS: usize = 5;
/// The glob the watchers follow.
pub const GLOB: &str = "/jepsen/**";
/// Every op's time-out: a write not answered by then is `Unknown`.
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// A watcher's WAIT gives up after this and asks again (same rev).
const WAIT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed connect before the next try.
const RETRY: Duration = Duration::from_millis(100);

pub fn key(i: usize) -> String {
    format!("/jepsen/k{i}")
}

/// What workers and watchers share with the run.
pub struct Shared {
    pub start: Instant,
    /// The address each slot's clients connect to.
    pub slots: Mutex<Vec<String>>,
    /// Workers stop taking new ops.
    pub stop_workers: AtomicBool,
    /// Watchers stop once past `watch_until` (or idle).
    pub stop_watchers: AtomicBool,
    pub watch_until: AtomicI64,
    /// Pause between one worker's ops (sets the rate).
    pub period: Duration,
}

impl Shared {
    pub fn now(&self) -> Time {
        self.start.elapsed().as_nanos() as Time
    }

    fn addr(&self, slot: usize) -> String {
        self.slots.lock().unwrap()[slot].clone()
    }
}

/// A refusal means "not applied" (REV_MISMATCH: refused by its check);
/// anything else unclear is `Unknown`.
fn classify(e: &Error) -> Outcome {
    match e {
        Error::Reply(r) => match r.code {
            ErrCode::RevMismatch => Outcome::Mismatch,
            ErrCode::Readonly | ErrCode::NoEnt => Outcome::Refused,
            ErrCode::Other => {
                let d = r.detail.as_deref().unwrap_or("");
                if d == "busy" || d.starts_with("too many") {
                    Outcome::Refused
                } else {
                    Outcome::Unknown
                }
            }
            _ => Outcome::Unknown,
        },
        _ => Outcome::Unknown,
    }
}

async fn connect(shared: &Shared, slot: usize) -> Option<Client> {
    let addr = shared.addr(slot);
    match Client::connect_timeout(&addr, OP_TIMEOUT).await {
        Ok(c) => Some(c),
        Err(_) => {
            async_std::task::sleep(RETRY).await;
            None
        }
    }
}

/// One worker until `stop_workers`: returns its ops (ids assigned later).
pub async fn worker(shared: Arc<Shared>, client: usize, slot: usize, seed: u64) -> Vec<Op> {
    let mut rng = Rng::fork(seed, 1000 + client as u64);
    let mut ops = Vec::new();
    let mut conn: Option<Client> = None;
    // The rev this worker last saw of each key (0: absent), for CAS.
    let mut last_rev: [Option<i64>; KEYS] = [None; KEYS];
    let mut counter = 0u64;
    while !shared.stop_workers.load(Ordering::Relaxed) {
        let Some(c) = conn.clone() else {
            conn = connect(&shared, slot).await;
            continue;
        };
        let k = rng.index(KEYS);
        let path = key(k);
        let roll = rng.range(0, 100);
        let invoked;
        let mut cut = false;
        if roll < 40 {
            invoked = shared.now();
            match timeout(OP_TIMEOUT, c.get(&path, None)).await {
                Ok(Ok((body, rev))) => {
                    last_rev[k] = Some(rev);
                    ops.push(Op {
                        id: 0,
                        client,
                        invoked,
                        completed: Some(shared.now()),
                        kind: OpKind::Get {
                            key: path,
                            body,
                            rev,
                        },
                    });
                }
                Ok(Err(e)) => cut = e.is_connection_error(),
                Err(_) => cut = true,
            }
        } else if roll < 85 {
            counter += 1;
            let body = format!("w{client}-{counter}").into_bytes();
            let check = if roll < 62 {
                -1
            } else if rng.percent(20) {
                0
            } else {
                last_rev[k].unwrap_or(0)
            };
            invoked = shared.now();
            let res = timeout(OP_TIMEOUT, c.set(&path, check, &body)).await;
            let (outcome, completed) = match res {
                Ok(Ok(rev)) => {
                    last_rev[k] = Some(rev);
                    (Outcome::Ok(Some(rev)), Some(shared.now()))
                }
                Ok(Err(e)) => {
                    cut = e.is_connection_error();
                    let o = classify(&e);
                    (o.clone(), (o != Outcome::Unknown).then(|| shared.now()))
                }
                Err(_) => {
                    cut = true;
                    (Outcome::Unknown, None)
                }
            };
            ops.push(Op {
                id: 0,
                client,
                invoked,
                completed,
                kind: OpKind::Set {
                    key: path,
                    body,
                    check,
                    outcome,
                },
            });
        } else {
            let check = if rng.percent(50) {
                -1
            } else {
                last_rev[k].unwrap_or(0)
            };
            invoked = shared.now();
            let res = timeout(OP_TIMEOUT, c.del(&path, check)).await;
            let (outcome, completed) = match res {
                Ok(Ok(())) => {
                    last_rev[k] = Some(0);
                    (Outcome::Ok(None), Some(shared.now()))
                }
                Ok(Err(e)) => {
                    cut = e.is_connection_error();
                    let o = classify(&e);
                    (o.clone(), (o != Outcome::Unknown).then(|| shared.now()))
                }
                Err(_) => {
                    cut = true;
                    (Outcome::Unknown, None)
                }
            };
            ops.push(Op {
                id: 0,
                client,
                invoked,
                completed,
                kind: OpKind::Del {
                    key: path,
                    check,
                    outcome,
                },
            });
        }
        if cut || c.is_closed() {
            c.close();
            conn = None;
        }
        async_std::task::sleep(shared.period).await;
    }
    if let Some(c) = conn {
        c.close();
    }
    ops
}

/// The WAIT chain on slot `slot` from rev 1 until stopped.
pub async fn watcher(shared: Arc<Shared>, slot: usize) -> Vec<WatchStream> {
    let mut streams: Vec<WatchStream> = Vec::new();
    let mut next: i64 = 1;
    let mut conn: Option<Client> = None;
    loop {
        let stopping = shared.stop_watchers.load(Ordering::Relaxed);
        if stopping && next > shared.watch_until.load(Ordering::Relaxed) {
            break;
        }
        let addr = shared.addr(slot);
        if streams.last().map(|s| s.node.as_str()) != Some(addr.as_str()) {
            // A new node in this slot (churn): a stream of its own.
            if let Some(c) = conn.take() {
                c.close();
            }
            streams.push(WatchStream {
                node: addr.clone(),
                segments: vec![WatchSegment {
                    from: next,
                    events: Vec::new(),
                }],
            });
        }
        let Some(c) = conn.clone() else {
            if stopping {
                break;
            }
            conn = connect(&shared, slot).await;
            continue;
        };
        let stream = streams.last_mut().unwrap();
        match c.wait_timeout(GLOB, next, WAIT_TIMEOUT).await {
            Ok(ev) => {
                let body = (!ev.is_del()).then_some(ev.body);
                stream.segments.last_mut().unwrap().events.push(WatchEvent {
                    rev: ev.rev,
                    key: ev.path,
                    body,
                });
                next = ev.rev + 1;
            }
            Err(Error::WaitTimeout) => {
                if stopping {
                    break;
                }
            }
            Err(e) if e.code() == Some(ErrCode::TooLate) => {
                // History this old is gone on this node: a new segment
                // from its current rev.
                // (A node that joined by snapshot keeps no history before
                // it, not even of its current rev: start just after.)
                match timeout(OP_TIMEOUT, c.rev()).await {
                    Ok(Ok(rev)) => {
                        let seg = stream.segments.last_mut().unwrap();
                        if seg.events.is_empty() {
                            // Nothing seen yet: move the start, don't pile
                            // up empty segments while the node catches up.
                            if seg.from == rev + 1 {
                                async_std::task::sleep(RETRY).await;
                            }
                            seg.from = rev + 1;
                        } else {
                            stream.segments.push(WatchSegment {
                                from: rev + 1,
                                events: Vec::new(),
                            });
                        }
                        next = rev + 1;
                    }
                    _ => {
                        c.close();
                        conn = None;
                    }
                }
            }
            Err(e) => {
                if e.is_connection_error() || c.is_closed() {
                    c.close();
                    conn = None;
                } else {
                    async_std::task::sleep(RETRY).await;
                }
            }
        }
    }
    if let Some(c) = conn {
        c.close();
    }
    streams
}
