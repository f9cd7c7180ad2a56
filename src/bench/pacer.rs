//! When a bench connection sends its next request, and what its latency is:
//! a pure state machine fed with times (nanoseconds since the run began),
//! so it is tested with a fake clock.
//!
//! * **Closed loop** (the default): the connection has `slots` requests
//!   outstanding (`-p`); each reply frees its slot and the next request
//!   goes out at once, until the run's end. Latency runs from the send.
//! * **Open loop** (`-rate N`): requests have *intended* start times, N per
//!   second over the whole run, spread evenly over the connections
//!   ([`Schedule`]). A request goes out when it is due and a slot is free
//!   (`slots` caps what one connection has outstanding, so memory stays
//!   bounded when the server stalls). Latency runs from the intended
//!   start, not the send: a stalled server makes the requests due meanwhile
//!   wait, and their wait counts as latency instead of vanishing from the
//!   samples (coordinated omission corrected). A request sent more than
//!   [`LATE_AFTER_NANOS`] after its intended start is counted late;
//!   requests due before the end that never went out are unsent.

/// A request that leaves this long after its intended start or later is
/// counted late (a timer wake-up takes tens of microseconds, so one
/// millisecond is well past scheduling noise).
pub const LATE_AFTER_NANOS: u64 = 1_000_000;

/// The most requests one connection may have outstanding in the open loop
/// unless `-p` says otherwise. At 100k ops/s over one connection and 10 ms
/// of latency, 1000 are outstanding; each costs 8 bytes here.
pub const OPEN_LOOP_DEFAULT_SLOTS: usize = 1024;

/// The highest `-rate` accepted, in operations per second: far above what
/// one machine's client can send, and low enough that every intended start
/// time is a whole number of nanoseconds apart.
pub const MAX_RATE: f64 = 100_000_000.0;

/// The intended start times of one connection's requests in an open-loop
/// run: request `i` of connection `index` (of `conns`) at
/// `(index + i * conns) / rate` seconds, for every such time before the
/// end. Together the connections send `rate` requests per second, evenly
/// spaced.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    index: u64,
    conns: u64,
    rate: f64,
    /// Requests of this connection before the end.
    total: u64,
    /// The next request not yet taken.
    next: u64,
}

impl Schedule {
    /// `rate` must be positive and at most [`MAX_RATE`]; `index < conns`.
    pub fn new(rate: f64, conns: usize, index: usize, end_nanos: u64) -> Schedule {
        assert!(rate > 0.0 && rate <= MAX_RATE, "rate {rate} out of range");
        assert!(index < conns, "connection {index} of {conns}");
        let (index, conns) = (index as u64, conns as u64);
        // Requests of the whole run: those at n / rate < end.
        let slots = (end_nanos as f64 * rate / 1e9).ceil() as u64;
        let total = slots.saturating_sub(index).div_ceil(conns);
        Schedule {
            index,
            conns,
            rate,
            total,
            next: 0,
        }
    }

    fn at(&self, i: u64) -> u64 {
        ((self.index + i * self.conns) as f64 * 1e9 / self.rate) as u64
    }

    /// The intended start of the next request; `None` once all are taken.
    pub fn next_at(&self) -> Option<u64> {
        (self.next < self.total).then(|| self.at(self.next))
    }

    /// Takes the next request if it is due at `now`: its intended start.
    pub fn take_due(&mut self, now: u64) -> Option<u64> {
        let at = self.next_at().filter(|&at| at <= now)?;
        self.next += 1;
        Some(at)
    }

    /// Requests scheduled before the end and not taken.
    pub fn left(&self) -> u64 {
        self.total - self.next
    }
}

/// Marks a free slot in [`Pacer::starts`].
const FREE: u64 = u64::MAX;

/// One connection's requests in flight and what goes out next (see the
/// module doc). A request's tag on the wire is its slot's number.
#[derive(Clone, Debug)]
pub struct Pacer {
    /// Per slot: the start its latency runs from, or [`FREE`].
    starts: Vec<u64>,
    /// Free slots, taken from the end.
    free: Vec<u32>,
    /// `None` in the closed loop.
    schedule: Option<Schedule>,
    /// Closed loop: no request starts at or after this time.
    end: u64,
    /// No more requests at all (the fill ran out of keys, or the
    /// connection failed).
    stopped: bool,
    late: u64,
}

impl Pacer {
    /// A closed loop with `slots` requests outstanding until `end`.
    pub fn closed(slots: usize, end: u64) -> Pacer {
        Pacer::new(slots, None, end)
    }

    /// An open loop following `schedule`, at most `slots` outstanding.
    pub fn open(slots: usize, schedule: Schedule) -> Pacer {
        Pacer::new(slots, Some(schedule), 0)
    }

    fn new(slots: usize, schedule: Option<Schedule>, end: u64) -> Pacer {
        assert!(slots >= 1 && slots <= i32::MAX as usize, "{slots} slots");
        Pacer {
            starts: vec![FREE; slots],
            free: (0..slots as u32).rev().collect(),
            schedule,
            end,
            stopped: false,
            late: 0,
        }
    }

    /// The slot (tag) of a request to send now, if one is due and a slot
    /// is free; its latency will run from now (closed loop) or from its
    /// intended start (open loop).
    pub fn next_send(&mut self, now: u64) -> Option<u32> {
        if self.stopped || self.free.is_empty() {
            return None;
        }
        let start = match &mut self.schedule {
            None if now < self.end => now,
            None => return None,
            Some(schedule) => {
                let at = schedule.take_due(now)?;
                if now - at >= LATE_AFTER_NANOS {
                    self.late += 1;
                }
                at
            }
        };
        let slot = self.free.pop().expect("checked not empty");
        self.starts[slot as usize] = start;
        Some(slot)
    }

    /// The reply for `tag` came at `now`: its latency in nanoseconds, or
    /// `None` if no request of that tag is outstanding (a confused server).
    pub fn complete(&mut self, tag: i32, now: u64) -> Option<u64> {
        let slot = usize::try_from(tag)
            .ok()
            .filter(|&s| s < self.starts.len())?;
        let start = std::mem::replace(&mut self.starts[slot], FREE);
        if start == FREE {
            return None;
        }
        self.free.push(slot as u32);
        Some(now.saturating_sub(start))
    }

    /// Requests outstanding.
    pub fn in_flight(&self) -> usize {
        self.starts.len() - self.free.len()
    }

    /// When the next request falls due, if one is waiting for its time
    /// (open loop, a slot free). `None` when only a reply can let more out.
    pub fn wake_at(&self) -> Option<u64> {
        if self.stopped || self.free.is_empty() {
            return None;
        }
        self.schedule.as_ref()?.next_at()
    }

    /// Whether no request will be sent any more (replies may still come).
    pub fn done_sending(&self, now: u64) -> bool {
        self.stopped
            || match &self.schedule {
                None => now >= self.end,
                Some(schedule) => schedule.next_at().is_none(),
            }
    }

    /// Sends nothing more.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Requests sent late (open loop).
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Requests scheduled before the end that never went out (open loop).
    pub fn unsent(&self) -> u64 {
        self.schedule.as_ref().map_or(0, Schedule::left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::histogram::LatencyHistogram;

    const MS: u64 = 1_000_000;

    #[test]
    fn intended_starts_spread_over_connections() {
        // 1000/s over 4 connections for 10 ms: 10 requests, every 1 ms,
        // connection c taking times c, c+4, c+8 ms.
        let times = |index| {
            let mut s = Schedule::new(1000.0, 4, index, 10 * MS);
            let mut out = Vec::new();
            while let Some(at) = s.take_due(u64::MAX) {
                out.push(at / MS);
            }
            out
        };
        assert_eq!(times(0), vec![0, 4, 8]);
        assert_eq!(times(1), vec![1, 5, 9]);
        assert_eq!(times(2), vec![2, 6]);
        assert_eq!(times(3), vec![3, 7]);
        // More connections than requests: some send nothing.
        assert_eq!(Schedule::new(1.0, 8, 5, 1000 * MS).left(), 0);
        assert_eq!(Schedule::new(1.0, 8, 0, 1000 * MS).left(), 1);
        // A fractional rate: 2.5/s for 2 s is 5 requests, 400 ms apart.
        let mut s = Schedule::new(2.5, 1, 0, 2000 * MS);
        assert_eq!(s.left(), 5);
        assert_eq!(s.take_due(0), Some(0));
        assert_eq!(s.take_due(399 * MS), None, "not due yet");
        assert_eq!(s.take_due(400 * MS), Some(400 * MS));
        assert_eq!(s.next_at(), Some(800 * MS));
        assert_eq!(s.left(), 3);
    }

    #[test]
    fn closed_loop_keeps_each_slot_busy_until_the_end() {
        let mut p = Pacer::closed(2, 10 * MS);
        assert_eq!(p.next_send(0), Some(0));
        assert_eq!(p.next_send(0), Some(1));
        assert_eq!(p.next_send(0), None, "both slots busy");
        assert_eq!(p.wake_at(), None, "a closed loop waits for replies only");
        assert_eq!(p.complete(1, 3 * MS), Some(3 * MS));
        assert_eq!(p.complete(1, 3 * MS), None, "a tag answered twice");
        assert_eq!(p.complete(7, 3 * MS), None, "a tag never sent");
        assert_eq!(p.complete(-1, 3 * MS), None);
        assert_eq!(p.next_send(4 * MS), Some(1));
        assert_eq!(p.complete(1, 5 * MS), Some(MS), "latency from the send");
        assert_eq!(p.in_flight(), 1);
        assert!(!p.done_sending(9 * MS));
        assert!(p.done_sending(10 * MS));
        assert_eq!(p.next_send(10 * MS), None, "nothing starts at the end");
        assert_eq!((p.late(), p.unsent()), (0, 0));
    }

    #[test]
    fn open_loop_sends_when_due_and_counts_late() {
        // 1000/s on one connection, 2 slots, 5 ms.
        let mut p = Pacer::open(2, Schedule::new(1000.0, 1, 0, 5 * MS));
        assert_eq!(p.next_send(0), Some(0));
        assert_eq!(p.next_send(0), None, "the next is due at 1 ms");
        assert_eq!(p.wake_at(), Some(MS));
        assert_eq!(p.next_send(MS), Some(1));
        // Both slots busy: the 2 ms request waits, then leaves at 3.5 ms.
        assert_eq!(p.next_send(2 * MS), None);
        assert_eq!(p.wake_at(), None, "no slot: wait for a reply");
        assert_eq!(p.complete(0, 3 * MS + MS / 2), Some(3 * MS + MS / 2));
        assert_eq!(p.next_send(3 * MS + MS / 2), Some(0));
        assert_eq!(p.late(), 1, "sent 1.5 ms after its time");
        // Its latency runs from 2 ms, not from the send.
        assert_eq!(p.complete(0, 4 * MS), Some(2 * MS));
        assert_eq!(p.next_send(4 * MS), Some(0), "the 3 ms request, late too");
        assert_eq!(p.late(), 2);
        assert_eq!(p.next_send(4 * MS), None, "slot 1 still busy");
        assert!(!p.done_sending(4 * MS));
        assert_eq!(p.unsent(), 1, "the 4 ms request");
        p.stop();
        assert!(p.done_sending(4 * MS));
        assert_eq!(p.next_send(9 * MS), None);
    }

    /// One connection against a fake server that answers in 100 µs but
    /// stalls for 200 ms one second in: the stall shows as latency of the
    /// requests due during it, not as fewer samples.
    #[test]
    fn a_stall_shows_as_latency_with_an_open_loop() {
        let (rate, secs) = (1000.0, 3);
        let end = secs * 1000 * MS;
        let stall = (1000 * MS, 1200 * MS);
        let reply_at = |sent: u64| {
            let t = if (stall.0..stall.1).contains(&sent) {
                stall.1
            } else {
                sent
            };
            t + MS / 10
        };
        let run = |mut p: Pacer| {
            let mut hist = LatencyHistogram::new();
            // Replies pending: (time, tag), answered in time order.
            let mut pending: Vec<(u64, u32)> = Vec::new();
            let mut now = 0;
            loop {
                while let Some(tag) = p.next_send(now) {
                    pending.push((reply_at(now), tag));
                }
                pending.sort_unstable_by(|a, b| b.cmp(a));
                let next_reply = pending.last().map(|&(t, _)| t);
                now = match (next_reply, p.wake_at()) {
                    (Some(r), Some(w)) => r.min(w),
                    (Some(r), None) => r,
                    (None, Some(w)) => w,
                    (None, None) => break,
                };
                while pending.last().is_some_and(|&(t, _)| t <= now) {
                    let (_, tag) = pending.pop().unwrap();
                    hist.record_nanos(p.complete(tag as i32, now).unwrap());
                }
            }
            (hist, p)
        };

        let (open, p) = run(Pacer::open(1, Schedule::new(rate, 1, 0, end)));
        assert_eq!(open.count(), 3000, "every scheduled request measured");
        assert_eq!(p.unsent(), 0);
        assert!(
            p.late() >= 190,
            "requests due in the stall went late: {}",
            p.late()
        );
        let lat = open.summary();
        assert_eq!(lat.p50, std::time::Duration::from_micros(100));
        // ~200 of 3000 requests (6.7%) waited up to 200 ms.
        assert!(lat.p99 >= std::time::Duration::from_millis(150), "{lat:?}");
        assert!(lat.max >= std::time::Duration::from_millis(199), "{lat:?}");

        // The closed loop at one slot sends as fast as replies come: the
        // stall is one slow sample among many fast ones, and p99 hides it.
        let (closed, _) = run(Pacer::closed(1, end));
        let lat = closed.summary();
        assert!(closed.count() > 3000, "{}", closed.count());
        assert!(lat.p99 < std::time::Duration::from_millis(1), "{lat:?}");
        assert!(lat.max >= std::time::Duration::from_millis(199), "{lat:?}");
    }
}
