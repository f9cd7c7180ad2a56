//! Waiters indexed by the literal prefix of their glob, so that an event only
//! looks at waiters that could match it instead of scanning them all.
//!
//! Every path a glob matches starts with the glob's literal prefix (the text
//! before its first `*` or `?`). So for an event at path `p`, only the waiters
//! filed under one of `p`'s prefixes can match; those are the buckets looked up,
//! and only at the prefix lengths some bucket has.
//!
//! **Cost of one event** at a path of `L` bytes: one lookup per distinct prefix
//! length in use (at most `min(L, MAX_GLOB_BYTES)`, in practice a handful), then
//! one [`Glob::matches`] per waiter in the buckets found, each at most
//! [`Glob::match_cost`]`(L)` word steps, that is `L + 1` times one word per 64
//! glob elements. So an event costs at most `(L + 1) × Σ words` over the waiters
//! whose literal prefix it starts with: with paths and globs capped at 4 KiB
//! ([`crate::types::MAX_PATH_BYTES`], [`crate::types::MAX_GLOB_BYTES`]), at most
//! about 270,000 word steps per waiter, and the number of waiters is bounded by
//! the client connections' in-flight byte budgets.

use std::collections::BTreeMap;

use super::{Event, Glob};
use crate::types::Rev;

struct Waiter {
    glob: Glob,
    from: Rev,
}

/// A set of one-shot waits `(glob, from)` keyed by `K`.
pub struct WatchIndex<K: Ord + Clone> {
    /// literal prefix → the waiters filed under it.
    by_prefix: BTreeMap<String, BTreeMap<K, Waiter>>,
    /// key → the literal prefix it is filed under.
    prefix_of: BTreeMap<K, String>,
    /// Prefix length → how many buckets have a prefix of that length.
    lengths: BTreeMap<usize, usize>,
}

impl<K: Ord + Clone> Default for WatchIndex<K> {
    fn default() -> Self {
        WatchIndex::new()
    }
}

impl<K: Ord + Clone> WatchIndex<K> {
    pub fn new() -> WatchIndex<K> {
        WatchIndex {
            by_prefix: BTreeMap::new(),
            prefix_of: BTreeMap::new(),
            lengths: BTreeMap::new(),
        }
    }

    fn bucket_gone(&mut self, len: usize) {
        if let Some(n) = self.lengths.get_mut(&len) {
            *n -= 1;
            if *n == 0 {
                self.lengths.remove(&len);
            }
        }
    }

    /// Registers a wait for the first event at or after `from` whose path matches
    /// `glob`. A key already present is replaced.
    pub fn insert(&mut self, key: K, glob: Glob, from: Rev) {
        self.remove(&key);
        let prefix = glob.literal_prefix().to_string();
        let bucket = self.by_prefix.entry(prefix.clone()).or_insert_with(|| {
            *self.lengths.entry(prefix.len()).or_default() += 1;
            BTreeMap::new()
        });
        bucket.insert(key.clone(), Waiter { glob, from });
        self.prefix_of.insert(key, prefix);
    }

    /// Forgets a wait. Returns whether it was there.
    pub fn remove(&mut self, key: &K) -> bool {
        let Some(prefix) = self.prefix_of.remove(key) else {
            return false;
        };
        if let Some(bucket) = self.by_prefix.get_mut(&prefix) {
            bucket.remove(key);
            if bucket.is_empty() {
                self.by_prefix.remove(&prefix);
                self.bucket_gone(prefix.len());
            }
        }
        true
    }

    /// Removes and returns, sorted by key, every waiter that `event` fires:
    /// its glob matches the event's path and its `from` is at most the event's rev.
    pub fn take_matches(&mut self, event: &Event) -> Vec<K> {
        let path = event.path.as_str();
        let mut fired = Vec::new();
        let ends: Vec<usize> = self
            .lengths
            .range(1..=path.len())
            .map(|(n, _)| *n)
            .collect();
        for end in ends {
            let Some(prefix) = path.get(..end) else {
                continue;
            };
            let Some(bucket) = self.by_prefix.get_mut(prefix) else {
                continue;
            };
            let hits: Vec<K> = bucket
                .iter()
                .filter(|(_, w)| w.from <= event.rev && w.glob.matches(path))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &hits {
                bucket.remove(k);
                self.prefix_of.remove(k);
            }
            if bucket.is_empty() {
                self.by_prefix.remove(prefix);
                self.bucket_gone(end);
            }
            fired.extend(hits);
        }
        fired.sort();
        fired
    }

    pub fn len(&self) -> usize {
        self.prefix_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefix_of.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.prefix_of.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventKind;
    use crate::types::Path;
    use std::sync::Arc;

    fn ev(rev: i64, path: &str) -> Event {
        Event {
            rev: Rev(rev),
            path: Path::parse(path).unwrap(),
            body: Arc::from(&b""[..]),
            kind: EventKind::Set,
            error: None,
        }
    }

    fn g(p: &str) -> Glob {
        Glob::parse(p).unwrap()
    }

    #[test]
    fn fires_matching_waiters_once_in_key_order() {
        let mut w = WatchIndex::new();
        w.insert(3, g("/a/**"), Rev(1));
        w.insert(1, g("/**"), Rev(1));
        w.insert(2, g("/a/b"), Rev(1));
        w.insert(4, g("/a/c"), Rev(1));
        w.insert(5, g("/"), Rev(1));
        w.insert(6, g("/a?/b"), Rev(1));
        assert_eq!(w.len(), 6);
        assert_eq!(w.take_matches(&ev(1, "/a/b")), vec![1, 2, 3]);
        assert_eq!(w.len(), 3);
        assert_eq!(w.take_matches(&ev(2, "/a/b")), Vec::<i32>::new());
        assert_eq!(w.take_matches(&ev(3, "/ab/b")), vec![6]);
        // A nop event at `/`.
        assert_eq!(w.take_matches(&ev(4, "/")), vec![5]);
        assert_eq!(w.take_matches(&ev(5, "/a/c")), vec![4]);
        assert!(w.is_empty());
    }

    #[test]
    fn respects_from_rev() {
        let mut w = WatchIndex::new();
        w.insert("k", g("/x"), Rev(10));
        assert!(w.take_matches(&ev(9, "/x")).is_empty());
        assert_eq!(w.take_matches(&ev(10, "/x")), vec!["k"]);
    }

    #[test]
    fn remove_and_replace() {
        let mut w = WatchIndex::new();
        w.insert(1, g("/x"), Rev(1));
        w.insert(1, g("/y"), Rev(1));
        assert_eq!(w.len(), 1);
        assert!(w.take_matches(&ev(1, "/x")).is_empty());
        assert!(w.contains(&1));
        assert!(w.remove(&1));
        assert!(!w.remove(&1));
        assert!(w.take_matches(&ev(2, "/y")).is_empty());
        assert!(w.by_prefix.is_empty() && w.lengths.is_empty());
    }

    #[test]
    fn looks_up_only_the_prefix_lengths_in_use() {
        let mut w = WatchIndex::new();
        w.insert(1, g("/ab*"), Rev(1));
        w.insert(2, g("/cd*"), Rev(1));
        w.insert(3, g("/a/b/c"), Rev(1));
        assert_eq!(w.lengths, BTreeMap::from([(3, 2), (6, 1)]));
        assert_eq!(w.take_matches(&ev(1, "/cdef")), vec![2]);
        assert_eq!(w.lengths, BTreeMap::from([(3, 1), (6, 1)]));
        assert_eq!(w.take_matches(&ev(2, "/a/b/c")), vec![3]);
        assert!(w.remove(&1));
        assert!(w.lengths.is_empty() && w.by_prefix.is_empty());
    }
}
