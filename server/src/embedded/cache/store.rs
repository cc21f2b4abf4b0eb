//! One cache's entries on this node, and what each operation does to them. Every entry carries
//! a version: the epoch of the primary that wrote it, then a count of writes to its key; a copy
//! arriving from another node replaces the local one only if it is newer, so every copy of a key
//! converges to the same value whatever order writes arrive in. A removal leaves a tombstone for
//! a while, so that an older write arriving late does not bring the key back.
//!
//! The store also keeps two epochs of the cache's primaries: the highest it was fenced with
//! (copies from an older primary are refused from then on) and the one whose state it took in
//! (`synced`), so that what it holds from an older primary is never pushed over a newer one's.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use immutant_protocol::{CacheOp, CacheOutcome, Expiry};
use serde::{Deserialize, Serialize};

/// How long a removed key's tombstone is kept.
const TOMBSTONE_MS: u64 = 60_000;

/// An entry's version: the epoch of the primary that wrote it (a write under a newer primary
/// comes after every write under an older one), the count of writes to its key, then the
/// writer's generation to break ties between two writers of a cache without a primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    #[serde(default)]
    pub epoch: u64,
    pub counter: u64,
    pub writer: u64,
}

impl Version {
    /// The version of a write under `epoch` by `writer` at `now` to a key whose version was
    /// `previous`: past it, and never below the time, so that a key written again after its
    /// entry was swept away (expired, or a tombstone forgotten) still beats copies elsewhere.
    pub fn after(previous: Option<Version>, epoch: u64, writer: u64, now: u64) -> Version {
        let counter = previous.map_or(0, |version| version.counter) + 1;
        Version {
            epoch,
            counter: counter.max(now),
            writer,
        }
    }
}

/// Who writes: the epoch of the primary (0 for a cache without one) and this node's writer id.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    pub epoch: u64,
    pub id: u64,
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
    /// The highest primary epoch this store was fenced with: copies under an older one are
    /// refused.
    fenced: u64,
    /// The epoch of the primary whose state this store took in (0: none yet, or it must be
    /// taken in again).
    pub synced: u64,
    /// Whether this store missed writes of the primary it took the state of (it was out of
    /// the primary's view): it must take the state in again.
    pub behind: bool,
    /// The keys copies were merged into since a join began ([`Store::track`]).
    tracked: Option<HashSet<String>>,
}

/// A holder's entries, as a join or a new primary gathers them: the epoch of the primary whose
/// state they are (`synced`).
#[derive(Debug, Default)]
pub struct Gathered {
    pub synced: u64,
    pub entries: Vec<(String, Entry)>,
}

/// What replacing a store's entries changed: entries to save, and keys to forget.
#[derive(Debug, Default)]
pub struct Replaced {
    pub saved: Vec<(String, Entry)>,
    pub forgotten: Vec<String>,
}

impl Store {
    /// Carries out `op` (with its `body`) as the cache's primary (or, for a local or invalidated
    /// cache, its only writer): `defaults` is the cache's expiry.
    pub fn execute(
        &mut self,
        op: &CacheOp,
        body: Bytes,
        defaults: Expiry,
        writer: Writer,
        now: u64,
    ) -> Executed {
        if let CacheOp::Clear {} = op {
            return self.clear(writer, now);
        }
        let key = op.key().unwrap_or_default();
        let current = match op {
            CacheOp::Get { .. } | CacheOp::GetLatest { .. } => self.get(key, now),
            _ => self.peek(key, now),
        };
        let found = current.is_some();
        let previous = current.clone().unwrap_or_default();
        let write = |value: Option<Bytes>, expiry: &Option<Expiry>| {
            let expiry = expiry.unwrap_or(defaults);
            let previous = self.entries.get(key).map(|entry| entry.version);
            Entry {
                value,
                version: Version::after(previous, writer.epoch, writer.id, now),
                expires_at_ms: expiry.ttl_ms.map(|ttl| now.saturating_add(ttl)),
                idle_ms: expiry.idle_ms,
                touched_ms: now,
            }
        };
        let change = match op {
            CacheOp::Get { .. } | CacheOp::GetLatest { .. } | CacheOp::Clear {} => None,
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
    fn clear(&mut self, writer: Writer, now: u64) -> Executed {
        let mut changes = Vec::new();
        for (key, entry) in &mut self.entries {
            if entry.live(now).is_some() {
                entry.value = None;
                entry.version = Version::after(Some(entry.version), writer.epoch, writer.id, now);
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
            if let Some(tracked) = &mut self.tracked {
                tracked.insert(key.clone());
            }
            entry.touched_ms = now;
            self.entries.insert(key, entry);
        }
        newer
    }

    /// Starts noting the keys that copies are merged into: a join of the primary begins, and
    /// what the primary copies meanwhile must outlive [`Store::adopt`].
    pub fn track(&mut self) {
        self.tracked = Some(HashSet::new());
    }

    /// Fences the store with a primary's `epoch`: false if a newer primary fenced it already
    /// (then what that primary sends is refused); else copies from older primaries are refused
    /// from now on.
    pub fn fence(&mut self, epoch: u64) -> bool {
        if epoch < self.fenced {
            return false;
        }
        self.fenced = epoch;
        true
    }

    /// The highest primary epoch the store was fenced with.
    pub fn fenced(&self) -> u64 {
        self.fenced
    }

    /// Takes in the state of the primary of `epoch` (every entry it holds, tombstones
    /// included, from a join begun at [`Store::track`]) in place of this store's: what it holds
    /// gives way to the primary's, or goes if the primary does not have it (a write an old
    /// primary never had confirmed, a removal this store missed), except what the primary
    /// copied here since the join began, where newer.
    pub fn adopt(&mut self, primary: Vec<(String, Entry)>, epoch: u64, now: u64) -> Replaced {
        let tracked = self.tracked.take().unwrap_or_default();
        let mut replaced = Replaced::default();
        if epoch < self.fenced {
            // A newer primary has come since: its state is the one to take.
            return replaced;
        }
        let theirs: HashMap<String, Entry> = primary.into_iter().collect();
        self.entries.retain(|key, mine| {
            let copied = tracked.contains(key) && mine.version.epoch >= epoch;
            let keep = theirs.contains_key(key) || copied;
            if !keep {
                replaced.forgotten.push(key.clone());
            }
            keep
        });
        for (key, mut entry) in theirs {
            let take = self.entries.get(&key).is_none_or(|mine| {
                !tracked.contains(&key)
                    || mine.version.epoch < epoch
                    || entry.version > mine.version
            });
            if take {
                entry.touched_ms = now;
                self.entries.insert(key.clone(), entry.clone());
                replaced.saved.push((key, entry));
            }
        }
        self.fenced = self.fenced.max(epoch);
        self.synced = epoch;
        self.behind = false;
        replaced
    }

    /// Becomes the state a new primary of `epoch` starts from: the newest version of each key
    /// among the holders (`gathered`, this store's own entries left out) whose state is of the
    /// newest primary any of them took in; what the others hold counts only where written
    /// under that primary or later.
    pub fn take_over(&mut self, gathered: Vec<Gathered>, epoch: u64, now: u64) -> Replaced {
        let mine = Gathered {
            synced: self.synced,
            entries: self.snapshot(),
        };
        let sources: Vec<Gathered> = gathered.into_iter().chain([mine]).collect();
        let base = sources
            .iter()
            .map(|source| source.synced)
            .max()
            .unwrap_or(0);
        let mut newest: HashMap<String, Entry> = HashMap::new();
        for source in sources {
            let current = source.synced == base;
            for (key, entry) in source.entries {
                if !current && entry.version.epoch < base {
                    continue;
                }
                if newest
                    .get(&key)
                    .is_none_or(|kept| entry.version > kept.version)
                {
                    newest.insert(key, entry);
                }
            }
        }
        let mut replaced = Replaced::default();
        self.entries.retain(|key, _| {
            let keep = newest.contains_key(key);
            if !keep {
                replaced.forgotten.push(key.clone());
            }
            keep
        });
        for (key, mut entry) in newest {
            if self.entries.get(&key).map(|mine| mine.version) != Some(entry.version) {
                entry.touched_ms = now;
                self.entries.insert(key.clone(), entry.clone());
                replaced.saved.push((key, entry));
            }
        }
        self.fenced = self.fenced.max(epoch);
        self.synced = epoch;
        replaced
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

    fn writer(epoch: u64, id: u64) -> Writer {
        Writer { epoch, id }
    }

    fn run(store: &mut Store, (op, body): (CacheOp, Bytes), now: u64) -> Executed {
        store.execute(&op, body, Expiry::default(), writer(0, 1), now)
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
            writer(0, 2),
            1,
        );
        assert!(removal.outcome.applied);
        // The put arriving late from elsewhere does not bring the key back.
        assert!(!store.merge("k".to_string(), older, 2));
        assert!(store.get("k", 3).is_none());
        assert_eq!((store.hits, store.misses), (0, 1));
    }

    fn value(store: &mut Store, key: &str) -> Option<Bytes> {
        store.get(key, 0)
    }

    fn write(store: &mut Store, key: &str, text: &str, epoch: u64) -> (String, Entry) {
        let (op, body) = put(key, text);
        store
            .execute(&op, body, Expiry::default(), writer(epoch, 9), 0)
            .changes
            .remove(0)
    }

    #[test]
    fn a_newer_primarys_write_beats_any_count_of_older_ones() {
        let mut old = Store::default();
        for n in 0..5 {
            write(&mut old, "k", &n.to_string(), 10);
        }
        let mut new = Store::default();
        let newer = write(&mut new, "k", "new", 11);
        let stale = write(&mut old, "k", "stale", 10);
        assert!(old.merge(newer.0.clone(), newer.1.clone(), 0));
        assert!(!old.merge(stale.0, stale.1, 0), "an older epoch never wins");
        assert_eq!(value(&mut old, "k").unwrap(), "new");
        assert!(old.fence(11));
        assert!(!old.fence(10), "fenced by the newer primary");
    }

    #[test]
    fn a_holder_adopting_a_new_primary_drops_what_that_primary_never_had() {
        let mut primary = Store::default();
        let kept = write(&mut primary, "kept", "1", 10);
        let mut holder = Store::default();
        holder.merge(kept.0.clone(), kept.1.clone(), 0);
        // A write the old primary applied here but never had confirmed, and a copy of the new
        // primary's that arrived during the join.
        write(&mut holder, "kept", "unconfirmed", 10);
        write(&mut holder, "orphan", "unconfirmed", 10);
        holder.track();
        let fresh = write(&mut Store::default(), "fresh", "2", 12);
        holder.merge(fresh.0.clone(), fresh.1.clone(), 0);
        let replaced = holder.adopt(primary.snapshot(), 12, 0);
        assert_eq!(value(&mut holder, "kept").unwrap(), "1");
        assert_eq!(value(&mut holder, "orphan"), None);
        assert_eq!(value(&mut holder, "fresh").unwrap(), fresh.1.value.unwrap());
        assert_eq!(replaced.forgotten, vec!["orphan".to_string()]);
        assert_eq!((holder.synced, holder.fenced()), (12, 12));
    }

    #[test]
    fn a_new_primary_starts_from_the_newest_state_and_ignores_a_deposed_copy() {
        // Two holders took in the state of the primary of epoch 10 and got its writes; a third
        // is a primary of epoch 5 that was cut off and went on alone.
        let mut current = Store {
            synced: 10,
            ..Store::default()
        };
        let written = write(&mut current, "k", "acknowledged", 10);
        let mut behind = Store {
            synced: 10,
            ..Store::default()
        };
        behind.merge(
            "other".into(),
            write(&mut Store::default(), "other", "o", 10).1,
            0,
        );
        let mut deposed = Store {
            synced: 5,
            ..Store::default()
        };
        for n in 0..20 {
            write(&mut deposed, "k", &format!("split-{n}"), 5);
        }
        let mut primary = Store::default();
        let gathered = vec![
            Gathered {
                synced: 10,
                entries: vec![written],
            },
            Gathered {
                synced: 10,
                entries: behind.snapshot(),
            },
            Gathered {
                synced: 5,
                entries: deposed.snapshot(),
            },
        ];
        primary.take_over(gathered, 12, 0);
        assert_eq!(value(&mut primary, "k").unwrap(), "acknowledged");
        assert_eq!(value(&mut primary, "other").unwrap(), "o");
        assert_eq!(primary.synced, 12);
    }
}
