//! One cache's entries on this node, and what each operation does to them. Every entry carries
//! a version; a copy arriving from another node replaces the local one only if it is newer, so
//! every copy of a key converges to the same value whatever order writes arrive in. A removal
//! leaves a tombstone for a while, so that an older write arriving late does not bring the key
//! back.

use std::collections::HashMap;

use bytes::Bytes;
use immutant_protocol::{CacheOp, CacheOutcome, Expiry};
use serde::{Deserialize, Serialize};

/// How long a removed key's tombstone is kept.
const TOMBSTONE_MS: u64 = 60_000;

/// An entry's version: the count of writes to its key, then the writer's generation to break
/// ties between two writers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub counter: u64,
    pub writer: u64,
}

impl Version {
    /// The version of a write by `writer` at `now` to a key whose version was `previous`: past
    /// it, and never below the time, so that a key written again after its entry was swept
    /// away (expired, or a tombstone forgotten) still beats copies elsewhere.
    pub fn after(previous: Option<Version>, writer: u64, now: u64) -> Version {
        let counter = previous.map_or(0, |version| version.counter) + 1;
        Version {
            counter: counter.max(now),
            writer,
        }
    }
}

/// One key's value (or its removal) with its version and expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// None once removed: a tombstone.
    pub value: Option<Bytes>,
    pub version: Version,
    pub expires_at_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    /// When this node last wrote or read it (for idle expiry and tombstones).
    pub touched_ms: u64,
}

impl Entry {
    /// The value, unless removed or expired at `now`.
    fn live(&self, now: u64) -> Option<&Bytes> {
        let expired = self.expires_at_ms.is_some_and(|at| now >= at)
            || self
                .idle_ms
                .is_some_and(|idle| now >= self.touched_ms.saturating_add(idle));
        self.value.as_ref().filter(|_| !expired)
    }
}

/// What an operation did: its outcome, the value to answer with, and the entries it changed
/// (to copy to the other owners and to disk).
#[derive(Debug)]
pub struct Executed {
    pub outcome: CacheOutcome,
    pub value: Bytes,
    pub changes: Vec<(String, Entry)>,
}

/// The entries, and how reads went.
#[derive(Debug, Default)]
pub struct Store {
    entries: HashMap<String, Entry>,
    pub hits: u64,
    pub misses: u64,
}

impl Store {
    /// Carries out `op` (with its `body`) as the key's primary owner: `writer` is this node's
    /// generation, `defaults` the cache's expiry.
    pub fn execute(
        &mut self,
        op: &CacheOp,
        body: Bytes,
        defaults: Expiry,
        writer: u64,
        now: u64,
    ) -> Executed {
        if let CacheOp::Clear {} = op {
            return self.clear(writer, now);
        }
        let key = op.key().unwrap_or_default();
        let current = match op {
            CacheOp::Get { .. } => self.get(key, now),
            _ => self.peek(key, now),
        };
        let found = current.is_some();
        let previous = current.clone().unwrap_or_default();
        let write = |value: Option<Bytes>, expiry: &Option<Expiry>| {
            let expiry = expiry.unwrap_or(defaults);
            let previous = self.entries.get(key).map(|entry| entry.version);
            Entry {
                value,
                version: Version::after(previous, writer, now),
                expires_at_ms: expiry.ttl_ms.map(|ttl| now.saturating_add(ttl)),
                idle_ms: expiry.idle_ms,
                touched_ms: now,
            }
        };
        let change = match op {
            CacheOp::Get { .. } | CacheOp::Clear {} => None,
            CacheOp::Put { expiry, .. } => Some(write(Some(body), expiry)),
            CacheOp::PutIfAbsent { expiry, .. } => (!found).then(|| write(Some(body), expiry)),
            CacheOp::Replace {
                expected_len,
                expiry,
                ..
            } => {
                let split = (*expected_len as usize).min(body.len());
                let expected = body.slice(..split);
                (current.as_ref() == Some(&expected))
                    .then(|| write(Some(body.slice(split..)), expiry))
            }
            CacheOp::Remove { .. } => found.then(|| write(None, &None)),
        };
        let applied = change.is_some();
        let changes = change
            .map(|entry| {
                self.entries.insert(key.to_string(), entry.clone());
                vec![(key.to_string(), entry)]
            })
            .unwrap_or_default();
        Executed {
            outcome: CacheOutcome { found, applied },
            value: previous,
            changes,
        }
    }

    /// The live value of `key`, counted as a hit or a miss; a read keeps an idle entry alive.
    pub fn get(&mut self, key: &str, now: u64) -> Option<Bytes> {
        let value = self.entries.get_mut(key).and_then(|entry| {
            let value = entry.live(now).cloned();
            if value.is_some() {
                entry.touched_ms = now;
            }
            value
        });
        match value {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        value
    }

    /// The version of this node's entry for `key`, if it has one.
    pub fn version_of(&self, key: &str) -> Option<Version> {
        self.entries.get(key).map(|entry| entry.version)
    }

    /// Whether this node has any entry for `key`: a value (live or expired) or a removal.
    pub fn has_entry(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The live value of `key`, without counting it as a read.
    fn peek(&self, key: &str, now: u64) -> Option<Bytes> {
        self.entries
            .get(key)
            .and_then(|entry| entry.live(now).cloned())
    }

    /// Removes every entry (leaving tombstones).
    fn clear(&mut self, writer: u64, now: u64) -> Executed {
        let mut changes = Vec::new();
        for (key, entry) in &mut self.entries {
            if entry.live(now).is_some() {
                entry.value = None;
                entry.version = Version::after(Some(entry.version), writer, now);
                entry.touched_ms = now;
                changes.push((key.clone(), entry.clone()));
            }
        }
        Executed {
            outcome: CacheOutcome {
                found: !changes.is_empty(),
                applied: true,
            },
            value: Bytes::new(),
            changes,
        }
    }

    /// Takes a copy of `key` from another node (or the disk) if it is newer than this node's.
    pub fn merge(&mut self, key: String, mut entry: Entry, now: u64) -> bool {
        let newer = self
            .entries
            .get(&key)
            .is_none_or(|mine| entry.version > mine.version);
        if newer {
            entry.touched_ms = now;
            self.entries.insert(key, entry);
        }
        newer
    }

    /// Drops `key` whatever its version (an invalidation from another node).
    pub fn invalidate(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Every entry, tombstones included.
    pub fn snapshot(&self) -> Vec<(String, Entry)> {
        self.entries
            .iter()
            .map(|(key, entry)| (key.clone(), entry.clone()))
            .collect()
    }

    /// Forgets expired entries and old tombstones; returns their keys.
    pub fn sweep(&mut self, now: u64) -> Vec<String> {
        let mut gone = Vec::new();
        self.entries.retain(|key, entry| {
            let keep = if entry.value.is_some() {
                entry.live(now).is_some()
            } else {
                now < entry.touched_ms.saturating_add(TOMBSTONE_MS)
            };
            if !keep {
                gone.push(key.clone());
            }
            keep
        });
        gone
    }

    /// How many live entries this node holds.
    pub fn len(&self, now: u64) -> usize {
        self.entries
            .values()
            .filter(|entry| entry.live(now).is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> (CacheOp, Bytes) {
        let op = CacheOp::Put {
            key: key.to_string(),
            expiry: None,
        };
        (op, Bytes::copy_from_slice(value.as_bytes()))
    }

    fn run(store: &mut Store, (op, body): (CacheOp, Bytes), now: u64) -> Executed {
        store.execute(&op, body, Expiry::default(), 1, now)
    }

    #[test]
    fn compare_and_swap_applies_only_on_the_expected_value() {
        let mut store = Store::default();
        run(&mut store, put("k", "1"), 0);
        let replace = |expected: &str, new: &str| {
            let op = CacheOp::Replace {
                key: "k".to_string(),
                expected_len: expected.len() as u64,
                expiry: None,
            };
            (op, Bytes::from(format!("{expected}{new}")))
        };
        assert!(!run(&mut store, replace("0", "2"), 1).outcome.applied);
        let swapped = run(&mut store, replace("1", "2"), 2);
        assert!(swapped.outcome.applied);
        assert_eq!(swapped.value, "1");
        assert_eq!(store.get("k", 3).unwrap(), "2");
    }

    #[test]
    fn put_if_absent_answers_the_existing_value() {
        let mut store = Store::default();
        let absent = CacheOp::PutIfAbsent {
            key: "k".to_string(),
            expiry: None,
        };
        assert!(
            run(&mut store, (absent.clone(), Bytes::from("a")), 0)
                .outcome
                .applied
        );
        let again = run(&mut store, (absent, Bytes::from("b")), 1);
        assert!(!again.outcome.applied && again.outcome.found);
        assert_eq!(again.value, "a");
    }

    #[test]
    fn ttl_and_idle_expire_entries() {
        let mut store = Store::default();
        let expiring = |key: &str, expiry| CacheOp::Put {
            key: key.to_string(),
            expiry: Some(expiry),
        };
        let ttl = Expiry {
            ttl_ms: Some(100),
            idle_ms: None,
        };
        let idle = Expiry {
            ttl_ms: None,
            idle_ms: Some(100),
        };
        run(&mut store, (expiring("ttl", ttl), Bytes::from("v")), 0);
        run(&mut store, (expiring("idle", idle), Bytes::from("v")), 0);
        assert!(store.get("ttl", 50).is_some());
        assert!(store.get("idle", 90).is_some());
        // Read at 90, so idle until 190; the ttl ran out at 100.
        assert!(store.get("ttl", 150).is_none());
        assert!(store.get("idle", 150).is_some());
        assert!(store.get("idle", 300).is_none());
        assert_eq!(store.sweep(300).len(), 2);
    }

    #[test]
    fn copies_converge_on_the_newest_version_and_removals_stay_removed() {
        let mut store = Store::default();
        let older = run(&mut store, put("k", "1"), 0).changes.remove(0).1;
        let removal = store.execute(
            &CacheOp::Remove {
                key: "k".to_string(),
            },
            Bytes::new(),
            Expiry::default(),
            2,
            1,
        );
        assert!(removal.outcome.applied);
        // The put arriving late from elsewhere does not bring the key back.
        assert!(!store.merge("k".to_string(), older, 2));
        assert!(store.get("k", 3).is_none());
        assert_eq!((store.hits, store.misses), (0, 1));
    }
}
