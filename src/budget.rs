//! Byte budgets: memory that many tasks may fill, bounded in bytes rather than
//! in items, because one item (a 1 MiB glob, a 64 MiB catch-up) can weigh a
//! million times another (a REV).
//!
//! A [`ByteBudget`] is a shared counter with a cap. Whoever wants to queue or
//! hold `n` bytes reserves them first and gives them back when they are
//! gone; a reservation that would cross the cap is refused, and the caller
//! answers for it (a client gets `OTHER: busy`, a peer message is dropped
//! and sent again by consensus). A [`Charge`] is a reservation that gives its
//! bytes back when dropped, so it can travel with what it pays for (through a
//! channel, say) and cannot leak on any path.
//!
//! One reservation is always admitted when nothing is held, whatever its
//! size: a budget smaller than the largest legitimate item then slows that
//! item down to one at a time instead of refusing it for ever.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// A shared count of bytes held, with a cap.
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    cap: usize,
    /// Reservations refused so far (for the logs and metrics).
    refused: AtomicU64,
}

impl ByteBudget {
    /// A budget of `cap` bytes.
    pub fn new(cap: usize) -> ByteBudget {
        ByteBudget {
            used: AtomicUsize::new(0),
            cap,
            refused: AtomicU64::new(0),
        }
    }

    /// Reserves `bytes` when they fit under the cap, or when nothing is held
    /// (one item of any size may always go through alone). False, and
    /// nothing reserved, otherwise.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let fits = used == 0 || used.checked_add(bytes).is_some_and(|n| n <= self.cap);
            if !fits {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            // `used == 0` admits any size: the sum cannot overflow then.
            let next = used + bytes;
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Gives back `bytes` reserved earlier.
    ///
    /// # Panics
    /// When more is given back than is held: the accounting is broken, and
    /// a budget that silently wraps would bound nothing.
    pub fn release(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        assert!(
            before >= bytes,
            "byte budget released {bytes} bytes while only {before} were held"
        );
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Reservations refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Like [`try_reserve`](Self::try_reserve), as a [`Charge`] that gives
    /// the bytes back when dropped.
    pub fn try_charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        self.try_reserve(bytes).then(|| Charge {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Bytes reserved in a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Charge {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_the_cap_and_one_item_alone() {
        let b = ByteBudget::new(100);
        assert!(b.try_reserve(60));
        assert!(b.try_reserve(40));
        assert!(!b.try_reserve(1), "full");
        assert_eq!(b.refused(), 1);
        b.release(100);
        // Larger than the cap, but nothing else is held.
        assert!(b.try_reserve(1000));
        assert!(!b.try_reserve(1));
        b.release(1000);
        assert_eq!(b.used(), 0);
        assert!(b.try_reserve(usize::MAX));
        assert!(!b.try_reserve(1), "no overflow past usize::MAX");
        b.release(usize::MAX);
    }

    #[test]
    fn charges_give_back_on_drop() {
        let b = Arc::new(ByteBudget::new(10));
        let c = b.try_charge(7).unwrap();
        assert_eq!((c.bytes(), b.used()), (7, 7));
        assert!(b.try_charge(4).is_none());
        drop(c);
        assert_eq!(b.used(), 0);
        let _d = b.try_charge(10).unwrap();
        assert_eq!(b.used(), 10);
    }

    #[test]
    #[should_panic(expected = "byte budget released")]
    fn giving_back_more_than_held_is_a_bug() {
        let b = ByteBudget::new(10);
        assert!(b.try_reserve(3));
        b.release(4);
    }

    #[test]
    fn threads_never_exceed_the_cap() {
        let b = Arc::new(ByteBudget::new(1000));
        let peak = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (b, peak) = (b.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(c) = b.try_charge(300) {
                            peak.fetch_max(b.used(), Ordering::Relaxed);
                            drop(c);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 1000);
        assert_eq!(b.used(), 0);
    }
}
