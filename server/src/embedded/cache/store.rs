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
/// How far ahead of this node's clock a version from another side may run.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

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
        let counter = previous
            .map_or(0, |version| version.counter)
            .saturating_add(1);
        Version {
            epoch,
            counter: counter.max(now),
            writer,
        }
    }

    /// Whether a write of this version was made later than one of `other`, by when they were
    /// written (a counter is at least its writer's clock, and past the version it replaced):
    /// for two writes neither of which saw the other, on the two sides of a partition, whose
    /// epochs say nothing of which came first.
    pub fn written_after(&self, other: &Version) -> bool {
        (self.counter, self.writer) > (other.counter, other.writer)
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
    /// The writes this node applied as the primary whose answers did not go out (yet), by key
    /// with the version written: a write its holders may never have had, never handed on as a
    /// write of its side ([`Store::side_writes`]).
    unconfirmed: HashMap<String, Version>,
    /// Until when (a version's counter) a key missing here may have been removed without a
    /// trace: the store's opening, the newest removal whose tombstone was swept away, the
    /// moment a takeover or join dropped keys the new state lacks. (Expired entries need no
    /// mark: a side hands on only what has not expired.)
    removals_forgotten_through: u64,
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
    /// An empty store opened at `now`: what was removed before, elsewhere, it cannot know.
    pub fn opened(now: u64) -> Store {
        Store {
            removals_forgotten_through: now,
            ..Store::default()
        }
    }

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
        if !replaced.forgotten.is_empty() {
            self.removals_forgotten_through = self.removals_forgotten_through.max(now);
        }
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
        self.unconfirmed.clear();
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
        if !replaced.forgotten.is_empty() {
            self.removals_forgotten_through = self.removals_forgotten_through.max(now);
        }
        for (key, mut entry) in newest {
            if self.entries.get(&key).map(|mine| mine.version) != Some(entry.version) {
                entry.touched_ms = now;
                self.entries.insert(key.clone(), entry.clone());
                replaced.saved.push((key, entry));
            }
        }
        self.fenced = self.fenced.max(epoch);
        self.synced = epoch;
        self.unconfirmed.clear();
        replaced
    }

    /// Notes the writes of `changes`, just applied as the primary, as not answered yet.
    pub fn doubt(&mut self, changes: &[(String, Entry)]) {
        for (key, entry) in changes {
            self.unconfirmed.insert(key.clone(), entry.version);
        }
    }

    /// Notes the writes `written` (keys and versions) as answered: their holders have them.
    pub fn confirm(&mut self, written: &[(String, Version)]) {
        for (key, version) in written {
            if self.unconfirmed.get(key) == Some(version) {
                self.unconfirmed.remove(key);
            }
        }
    }

    /// The writes of this node's side of a partition that the primary of another side, whose
    /// state (`theirs`) this store is about to take in, never saw: those this node answered as
    /// the primary (`writer`) of the state it holds, later than what `theirs` holds of their
    /// keys, and not expired at `now`. Only a primary's own answered writes count: a write
    /// whose answer never went out (its lease lapsed while it was paused) may never have
    /// happened.
    pub fn side_writes(
        &self,
        theirs: &[(String, Entry)],
        writer: u64,
        now: u64,
    ) -> Vec<(String, Entry)> {
        let theirs: HashMap<&str, Version> = theirs
            .iter()
            .map(|(key, entry)| (key.as_str(), entry.version))
            .collect();
        self.entries
            .iter()
            .filter(|(key, mine)| {
                mine.version.epoch == self.synced
                    && mine.version.writer == writer
                    && (mine.value.is_none() || mine.live(now).is_some())
                    && !self.unconfirmed.contains_key(*key)
                    && theirs
                        .get(key.as_str())
                        .is_none_or(|version| mine.version.written_after(version))
            })
            .map(|(key, entry)| (key.clone(), entry.clone()))
            .collect()
    }

    /// Applies, as the primary (`writer`), the writes another side of a partition made while
    /// the two could not see each other ([`Store::side_writes`]): each that was written later
    /// than this store's entry for its key, as a new write past both, its expiry as the side
    /// had it. A key this store lacks is taken only if written after it may have been removed
    /// here without a trace ([`Store::removals_forgotten_through`]). A version more than a day
    /// ahead of this clock is refused.
    pub fn apply_side_writes(
        &mut self,
        writes: Vec<(String, Entry)>,
        writer: Writer,
        now: u64,
    ) -> Executed {
        let mut changes = Vec::new();
        for (key, mut entry) in writes {
            let mine = self.entries.get(&key).map(|entry| entry.version);
            let later = match mine {
                Some(mine) => entry.version.written_after(&mine),
                None => entry.version.counter > self.removals_forgotten_through,
            };
            let expired = entry.value.is_some() && entry.live(now).is_none();
            if !later || expired || entry.version.counter > now.saturating_add(DAY_MS) {
                continue;
            }
            // Past the side's version too, so that the same write handed again (a page sent
            // twice) is not later than this one.
            let at = now.max(entry.version.counter.saturating_add(1));
            entry.version = Version::after(mine, writer.epoch, writer.id, at);
            self.entries.insert(key.clone(), entry.clone());
            changes.push((key, entry));
        }
        // Answered as a write with no value to give back: whether any was taken.
        let taken = !changes.is_empty();
        Executed {
            outcome: CacheOutcome {
                found: taken,
                applied: taken,
            },
            value: Bytes::new(),
            changes,
        }
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
                let keep = now < entry.touched_ms.saturating_add(TOMBSTONE_MS);
                if !keep {
                    let forgotten = &mut self.removals_forgotten_through;
                    *forgotten = (*forgotten).max(entry.version.counter.min(now));
                }
                keep
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
mod tests;
