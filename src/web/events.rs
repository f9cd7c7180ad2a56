//! The live feed behind the tree page and `/api/events`.
//!
//! One task (the [`Hub`]) follows every change of the node with `WAIT /**`
//! at `last + 1` over the web view's own client connection, and keeps the
//! most recent changes in a ring bounded by count and bytes. Each Server-Sent
//! Events subscriber keeps only a cursor (the next rev it wants) and copies
//! the changes matching its glob out of the ring, one SSE message at a time
//! (tide's encoder holds at most one), so a slow browser costs one cursor and
//! never holds up the hub or the others. A subscriber whose cursor is older
//! than the ring (it was away too long, or asked for a rev the ring never
//! saw) gets a `reset` message, and the stream ends: it must reload the tree
//! and follow again from the rev of that snapshot.
//!
//! The hub follows only while someone listens: with no stream open for
//! [`IDLE_AFTER`] it stops asking (a node under write load pays nothing for
//! an unwatched web view), and the next stream starts it again from the
//! node's current rev.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::future::join_all;

use super::json::Obj;
use super::Upstream;
use crate::client::Event;
use crate::error::ErrCode;
use crate::runtime::event_loop::NodeStatus;
use crate::runtime::rt;
use crate::store::Glob;

/// Changes kept for subscribers to catch up from.
pub const RING_EVENTS: usize = 4096;
/// Body bytes kept in the ring.
pub const RING_BYTES: usize = 16 << 20;
/// WAITs the hub has in flight while it catches up on revs the node has
/// already applied.
const CATCH_UP_BATCH: i64 = 64;
/// Changes one subscriber copies out of the ring at a time.
const TAKE_MAX: usize = 256;
/// A quiet stream sends a `ping` this often (it also notices a browser
/// that left).
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// The hub stops following this long after the last stream closed (long
/// enough for a browser to reconnect and resume without a reload).
pub const IDLE_AFTER: Duration = Duration::from_secs(60);
/// How often an idle hub looks for a new stream.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// One set or delete, with its SSE payload encoded once for every
/// subscriber.
#[derive(Debug)]
pub struct Change {
    pub rev: i64,
    pub path: String,
    pub body_len: usize,
    /// `{"rev","path","kind","len","value"|"value_b64","truncated"}`.
    pub json: String,
}

impl Change {
    fn of(ev: &Event) -> Change {
        let kind = if ev.is_del() { "del" } else { "set" };
        let json = Obj::new()
            .num("rev", ev.rev)
            .str("path", &ev.path)
            .str("kind", kind)
            .body(&ev.body, usize::MAX)
            .finish();
        Change {
            rev: ev.rev,
            path: ev.path.clone(),
            body_len: ev.body.len(),
            json,
        }
    }
}

struct Ring {
    changes: VecDeque<Arc<Change>>,
    bytes: usize,
    /// Every change with a rev at or above `start` (and below `next`) is in
    /// `changes`.
    start: i64,
    /// The hub has seen every rev below this.
    next: i64,
    /// Whether the hub is following the node (else `start`/`next` are stale).
    active: bool,
    /// The earliest rev a stream waiting for an idle hub asked for.
    wanted: Option<i64>,
    waiters: Vec<mpsc::Sender<()>>,
}

/// What a subscriber gets from the ring.
#[derive(Debug)]
pub enum Take {
    /// The subscriber's cursor is older than the ring: it must start over
    /// from a snapshot. Carries the latest rev the hub has seen.
    Reset(i64),
    /// Matching changes (possibly none) and the cursor to use next.
    Changes(Vec<Arc<Change>>, i64),
}

/// The shared follower of the node's changes.
pub struct Hub {
    ring: Mutex<Ring>,
    max_events: usize,
    max_bytes: usize,
    /// Open event streams.
    pub subscribers: AtomicUsize,
}

impl Hub {
    /// A hub that has seen everything up to `rev` (and is idle until
    /// [`Hub::run`] sees a subscriber).
    pub fn new(rev: i64, max_events: usize, max_bytes: usize) -> Hub {
        Hub {
            ring: Mutex::new(Ring {
                changes: VecDeque::new(),
                bytes: 0,
                start: rev + 1,
                next: rev + 1,
                active: false,
                wanted: None,
                waiters: Vec::new(),
            }),
            max_events: max_events.max(1),
            max_bytes,
            subscribers: AtomicUsize::new(0),
        }
    }

    /// Whether the hub is following the node now.
    pub fn is_active(&self) -> bool {
        self.lock().active
    }

    /// A stream that starts at `rev` waits for this idle hub: the hub will
    /// start there (replaying from the node's history), not at the node's
    /// rev of the moment it wakes.
    pub fn want(&self, rev: i64) {
        let mut ring = self.lock();
        if !ring.active {
            ring.wanted = Some(ring.wanted.map_or(rev, |w| w.min(rev)));
        }
    }

    /// Where a waking hub starts: after the node's rev `now`, or before the
    /// earliest rev a waiting stream wants.
    fn wake_at(&self, now: i64) -> i64 {
        match self.lock().wanted.take() {
            Some(w) => (w - 1).clamp(0, now),
            None => now,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next rev the hub will see.
    pub fn next(&self) -> i64 {
        self.lock().next
    }

    /// The oldest rev a subscriber can resume from.
    pub fn start(&self) -> i64 {
        self.lock().start
    }

    /// Registers a wake-up for a subscriber: a message arrives (at most one
    /// is queued) whenever the hub has moved on.
    pub fn subscribe(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(0);
        let mut ring = self.lock();
        ring.waiters.retain(|w| !w.is_closed());
        ring.waiters.push(tx);
        rx
    }

    fn wake(ring: &mut Ring) {
        ring.waiters.retain_mut(|w| match w.try_send(()) {
            Ok(()) => true,
            Err(e) => e.is_full(),
        });
    }

    /// Forgets everything: the hub continues after `rev` and older cursors
    /// get a reset.
    pub fn reset(&self, rev: i64) {
        let mut ring = self.lock();
        ring.changes.clear();
        ring.bytes = 0;
        ring.start = rev + 1;
        ring.next = rev + 1;
        ring.active = true;
        Hub::wake(&mut ring);
    }

    fn pause(&self) {
        let mut ring = self.lock();
        ring.active = false;
        ring.changes.clear();
        ring.bytes = 0;
    }

    /// Takes in events in rev order; events older than what the hub has seen
    /// (a WAIT answered with a later rev than it asked for) are skipped.
    /// Returns the next rev to ask for.
    pub fn push(&self, events: &[Event]) -> i64 {
        let mut ring = self.lock();
        for ev in events {
            if ev.rev < ring.next {
                continue;
            }
            ring.next = ev.rev + 1;
            if !ev.is_set() && !ev.is_del() {
                continue; // a nop: nothing to show, but the rev is seen
            }
            let change = Arc::new(Change::of(ev));
            ring.bytes += change.body_len + change.path.len();
            ring.changes.push_back(change);
            while ring.changes.len() > self.max_events
                || (ring.bytes > self.max_bytes && ring.changes.len() > 1)
            {
                let Some(old) = ring.changes.pop_front() else {
                    break;
                };
                ring.bytes -= old.body_len + old.path.len();
                ring.start = old.rev + 1;
            }
        }
        Hub::wake(&mut ring);
        ring.next
    }

    /// The changes at or after `cursor` whose path matches `glob` (at most
    /// `TAKE_MAX`), and the cursor after them.
    pub fn take(&self, cursor: i64, glob: &Glob) -> Take {
        let ring = self.lock();
        if cursor < ring.start {
            return Take::Reset(ring.next - 1);
        }
        let from = ring.changes.partition_point(|c| c.rev < cursor);
        let mut out = Vec::new();
        for change in ring.changes.range(from..) {
            if glob.matches(&change.path) {
                out.push(change.clone());
                if out.len() == TAKE_MAX {
                    let next = change.rev + 1;
                    return Take::Changes(out, next);
                }
            }
        }
        Take::Changes(out, cursor.max(ring.next))
    }

    /// Follows the node for ever: WAIT `/**` at the next rev (a batch of
    /// them while the node is known to be ahead), reconnecting when the
    /// connection fails and starting over when the history no longer holds
    /// the rev it needs.
    pub async fn run(self: Arc<Self>, upstream: Arc<Upstream>, status: Arc<NodeStatus>) {
        // When a stream was last open.
        let mut watched: Option<Instant> = None;
        loop {
            if self.subscribers.load(Ordering::Acquire) > 0 {
                watched = Some(Instant::now());
            } else if watched.is_none_or(|at| at.elapsed() >= IDLE_AFTER) {
                if self.is_active() {
                    log::debug!("web view: no event stream open; not following changes");
                    self.pause();
                }
                rt::sleep(IDLE_POLL).await;
                continue;
            }
            let client = match upstream.client().await {
                Ok(client) => client,
                Err(err) => {
                    log::warn!("web view: cannot reach this node's client port: {err}");
                    rt::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if !self.is_active() {
                // Starting (again): from the node's rev now.
                match client.rev().await {
                    Ok(rev) => self.reset(self.wake_at(rev)),
                    Err(_) => rt::sleep(Duration::from_millis(200)).await,
                }
                continue;
            }
            let next = self.next();
            let applied = status.rev.load(Ordering::Acquire);
            let batch = if applied >= next {
                (applied - next + 1).min(CATCH_UP_BATCH)
            } else {
                1
            };
            let replies = join_all((0..batch).map(|i| client.wait("/**", next + i))).await;
            let mut events = Vec::with_capacity(replies.len());
            let mut failure = None;
            for reply in replies {
                match reply {
                    Ok(ev) => events.push(ev),
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            self.push(&events);
            let Some(err) = failure else { continue };
            if err.is_connection_error() {
                rt::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if err.code() != Some(ErrCode::TooLate) {
                log::warn!("web view: following changes failed: {err}");
                rt::sleep(Duration::from_secs(1)).await;
            }
            // The history has moved past what we need: start over from now.
            match client.rev().await {
                Ok(rev) => self.reset(rev),
                Err(_) => rt::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::client::flags;

    fn set(rev: i64, path: &str, body: &[u8]) -> Event {
        Event {
            rev,
            path: path.into(),
            body: body.to_vec(),
            flags: flags::SET,
        }
    }

    fn revs(take: Take) -> (Vec<i64>, i64) {
        match take {
            Take::Changes(c, next) => (c.iter().map(|c| c.rev).collect(), next),
            Take::Reset(rev) => panic!("unexpected reset at {rev}"),
        }
    }

    #[test]
    fn subscribers_resume_from_any_cursor_in_the_ring() {
        let hub = Hub::new(10, 100, 1 << 20);
        let all = Glob::parse("/**").unwrap();
        let a = Glob::parse("/a/**").unwrap();
        assert_eq!(revs(hub.take(11, &all)), (vec![], 11));
        hub.push(&[set(11, "/a/x", b"1"), set(12, "/b", b"2")]);
        hub.push(&[set(12, "/b", b"dup"), set(14, "/a/y", b"3")]);
        assert_eq!(hub.next(), 15);
        assert_eq!(revs(hub.take(11, &all)), (vec![11, 12, 14], 15));
        assert_eq!(revs(hub.take(12, &all)), (vec![12, 14], 15));
        assert_eq!(revs(hub.take(11, &a)), (vec![11, 14], 15));
        assert_eq!(revs(hub.take(15, &a)), (vec![], 15));
        // A cursor in the future stays where it is.
        assert_eq!(revs(hub.take(20, &a)), (vec![], 20));
        assert!(matches!(hub.take(10, &all), Take::Reset(14)));
    }

    #[test]
    fn the_ring_is_bounded_by_count_and_bytes() {
        let hub = Hub::new(0, 3, 1 << 20);
        for rev in 1..=5 {
            hub.push(&[set(rev, "/x", b"v")]);
        }
        assert_eq!(hub.start(), 3);
        assert!(matches!(hub.take(2, &Glob::any()), Take::Reset(5)));
        assert_eq!(revs(hub.take(3, &Glob::any())), (vec![3, 4, 5], 6));

        let hub = Hub::new(0, 100, 10);
        hub.push(&[set(1, "/x", &[0; 8]), set(2, "/y", &[0; 8])]);
        assert_eq!(hub.start(), 2);
        // A change larger than the byte bound is still kept alone.
        hub.push(&[set(3, "/z", &[0; 100])]);
        assert_eq!(revs(hub.take(3, &Glob::any())), (vec![3], 4));
    }

    #[test]
    fn nops_advance_the_cursor_without_a_change() {
        let hub = Hub::new(0, 10, 1 << 20);
        hub.push(&[Event {
            rev: 1,
            path: "/".into(),
            body: vec![],
            flags: 0,
        }]);
        assert_eq!(revs(hub.take(1, &Glob::any())), (vec![], 2));
    }

    #[test]
    fn waiters_are_woken_and_closed_ones_dropped() {
        let hub = Hub::new(0, 10, 1 << 20);
        let mut rx = hub.subscribe();
        drop(hub.subscribe());
        hub.push(&[set(1, "/x", b"")]);
        hub.push(&[set(2, "/x", b"")]);
        assert_eq!(hub.lock().waiters.len(), 1);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn a_hub_starts_idle_and_a_reset_activates_it() {
        let hub = Hub::new(5, 10, 1 << 20);
        assert!(!hub.is_active());
        assert_eq!(hub.wake_at(9), 9);
        hub.want(8);
        hub.want(7);
        hub.want(12);
        assert_eq!(hub.wake_at(9), 6);
        hub.want(30);
        assert_eq!(hub.wake_at(9), 9);
        hub.reset(9);
        assert!(hub.is_active());
        assert_eq!((hub.start(), hub.next()), (10, 10));
        hub.push(&[set(10, "/x", b"")]);
        hub.pause();
        assert!(!hub.is_active());
        assert_eq!(hub.lock().changes.len(), 0);
    }

    #[test]
    fn change_payloads_are_json() {
        let c = Change::of(&set(7, "/a", b"<script>"));
        assert_eq!(
            c.json,
            r#"{"rev":7,"path":"/a","kind":"set","len":8,"value":"\u003cscript\u003e","truncated":false}"#
        );
    }
}
