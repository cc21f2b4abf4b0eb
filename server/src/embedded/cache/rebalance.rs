//! Keeping copies where they belong as members come and go: each holder takes in the state of
//! a new primary, and distributed entries move to their new owners.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use immutant_protocol::CacheMode;

use super::peer::{PeerAnswer, PeerRequest, pack};
use super::store::{Entry, Version};
use super::{Cache, Caches};
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;

/// How long the view must stay still before distributed entries move.
const REBALANCE_SETTLE: Duration = Duration::from_millis(200);
/// How often a hand-over or merge that did not get through is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Caches {
    /// When a cache has a new primary, takes in its state; when the members holding a
    /// distributed cache change, gives each entry to its new owners and drops those this node
    /// no longer owns, so that every entry has its copies again.
    pub(super) async fn rebalance(self: Arc<Self>, shutdown: Shutdown) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut view = cluster.view();
        let mut seen: HashMap<String, (Vec<String>, u64)> = HashMap::new();
        loop {
            // On every change of the view, and every second for what did not get through.
            tokio::select! {
                changed = view.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RETRY_INTERVAL) => {}
                _ = shutdown.cancelled() => return,
            }
            tokio::time::sleep(REBALANCE_SETTLE).await;
            view.borrow_and_update();
            let members: BTreeSet<String> = self.members_where(|_| true).into_iter().collect();
            // A cache still opening follows its primary from there.
            let caches: Vec<Arc<Cache>> = lock(&self.caches)
                .values()
                .filter(|cache| cache.ready.load(std::sync::atomic::Ordering::Acquire))
                .cloned()
                .collect();
            for cache in caches {
                lock(&cache.joined).retain(|name| members.contains(name));
                if !matches!(
                    cache.options.mode,
                    CacheMode::Replicated | CacheMode::Distributed
                ) {
                    continue;
                }
                let Some(synced) = self.follow_new_primary(&cache).await else {
                    continue;
                };
                self.hand_side_writes(&cache).await;
                if cache.options.mode != CacheMode::Distributed {
                    continue;
                }
                let holders = (self.holders(&cache), synced);
                if seen.get(&cache.name) == Some(&holders) {
                    continue;
                }
                // Tried again in a second if a copy did not get through.
                if self.hand_over(&cache, synced).await {
                    seen.insert(cache.name.clone(), holders);
                }
            }
        }
    }

    /// Takes in the state of the cache's primary if it is newer than the one this node holds
    /// (a primary took over, or this node was cut off or paused), and answers the epoch of the
    /// primary whose state this node holds now, if that primary leads the cache still: only
    /// then may its entries move to other owners, for every one of them is the primary's.
    async fn follow_new_primary(&self, cache: &Cache) -> Option<u64> {
        let (primary, epoch) = self.primary(cache)?;
        let epoch = epoch?;
        let behind = {
            let store = lock(&cache.store);
            store.synced < epoch || store.behind
        };
        if primary != self.node && behind {
            self.follow(cache, &primary, None).await;
        }
        let store = lock(&cache.store);
        (store.synced == epoch && !store.behind).then_some(epoch)
    }

    /// Copies each entry held here to its owners (as held in the state of the primary of
    /// `synced`), then drops those this node does not own. Returns whether every copy got
    /// through (only then are entries dropped).
    async fn hand_over(&self, cache: &Cache, synced: u64) -> bool {
        let snapshot = lock(&cache.store).snapshot();
        let mut by_owner: HashMap<String, Vec<(String, Entry)>> = HashMap::new();
        let mut not_mine = Vec::new();
        for (key, entry) in snapshot {
            let owners = self.owners(cache, &key);
            if !owners.contains(&self.node) {
                not_mine.push((key.clone(), entry.version));
            }
            for owner in owners.into_iter().filter(|owner| *owner != self.node) {
                by_owner
                    .entry(owner)
                    .or_default()
                    .push((key.clone(), entry.clone()));
            }
        }
        // Owners in parallel, each one's pages one after another (so that none waits in line
        // past its timeout).
        let copies = by_owner.into_iter().map(|(owner, entries)| async move {
            for page in pages(entries, self.page_bytes) {
                let (entries, values) = pack(&page);
                let request = PeerRequest::Apply {
                    entries,
                    epoch: Some(synced),
                    record: None,
                    missed: false,
                };
                let answer = self.peers.call(&owner, &cache.name, request, values).await;
                if !matches!(answer, Ok((PeerAnswer::Done { .. }, _))) {
                    return false;
                }
            }
            true
        });
        let copied = futures_util::future::join_all(copies).await;
        let all = copied.iter().all(|ok| *ok);
        if all {
            self.drop_given_away(cache, not_mine).await;
        }
        all
    }

    /// Drops the entries handed over (`given`: keys and the versions handed over) that this
    /// node still does not own and that were not written since, from memory and from disk.
    async fn drop_given_away(&self, cache: &Cache, given: Vec<(String, Version)>) {
        let _saving = cache.saving.lock().await;
        let dropped: Vec<String> = {
            let mut store = lock(&cache.store);
            let dropped: Vec<String> = given
                .into_iter()
                .filter(|(key, version)| {
                    store.version_of(key) == Some(*version)
                        && !self.owners(cache, key).contains(&self.node)
                })
                .map(|(key, _)| key)
                .collect();
            for key in &dropped {
                store.invalidate(key);
            }
            dropped
        };
        if let Some(persistence) = &cache.persistence
            && let Err(error) = persistence.forget(&cache.name, dropped).await
        {
            tracing::warn!("cache {}: {error}", cache.name);
        }
    }
}

/// About how many bytes of JSON metadata an entry adds to a frame's header.
const ENTRY_OVERHEAD: usize = 160;

/// How many bytes (keys, values and their metadata) go in one frame between nodes at most.
const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// How many bytes go in one page for nodes whose frames carry up to `max_message_size` bytes:
/// well under it.
pub(super) fn page_bytes(max_message_size: u64) -> usize {
    PAGE_BYTES.min((max_message_size / 2) as usize)
}

/// Entries in pages of about `limit` bytes each (an entry larger than that has a page of its
/// own).
pub(super) fn pages(entries: Vec<(String, Entry)>, limit: usize) -> Vec<Vec<(String, Entry)>> {
    let mut pages: Vec<Vec<(String, Entry)>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        // The key twice (header and body) and the entry's JSON metadata in the header.
        let size =
            2 * entry.0.len() + ENTRY_OVERHEAD + entry.1.value.as_ref().map_or(0, Bytes::len);
        match pages.last_mut() {
            Some(page) if bytes + size <= limit => {
                bytes += size;
                page.push(entry);
            }
            _ => {
                bytes = size;
                pages.push(vec![entry]);
            }
        }
    }
    pages
}

/// The page (of about `limit` bytes) of `snapshot`'s entries in key order after the key
/// `after`, and whether more follow it.
pub(super) fn page_after(
    mut snapshot: Vec<(String, Entry)>,
    after: Option<&str>,
    limit: usize,
) -> (Vec<(String, Entry)>, bool) {
    snapshot.sort_by(|a, b| a.0.cmp(&b.0));
    let rest: Vec<(String, Entry)> = snapshot
        .into_iter()
        .filter(|(key, _)| after.is_none_or(|after| key.as_str() > after))
        .collect();
    let mut pages = pages(rest, limit).into_iter();
    let page = pages.next().unwrap_or_default();
    (page, pages.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::cache::store::Version;

    #[test]
    fn a_large_snapshot_goes_in_pages_that_cover_every_entry_once() {
        let entry = |size: usize| Entry {
            value: Some(Bytes::from(vec![0u8; size])),
            version: Version::default(),
            expires_at_ms: None,
            idle_ms: None,
            touched_ms: 0,
        };
        let snapshot: Vec<(String, Entry)> = (0..5)
            .map(|n| (format!("key-{n}"), entry(3 * 1024 * 1024)))
            .chain((0..10).map(|n| (format!("small-{n}"), entry(10))))
            .collect();
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let (page, more) = page_after(snapshot.clone(), after.as_deref(), PAGE_BYTES);
            let bytes: usize = page
                .iter()
                .map(|(_, e)| e.value.as_ref().map_or(0, Bytes::len))
                .sum();
            assert!(bytes <= PAGE_BYTES, "a page of {bytes} bytes");
            seen.extend(page.iter().map(|(key, _)| key.clone()));
            after = page.last().map(|(key, _)| key.clone());
            if !more {
                break;
            }
        }
        let mut expected: Vec<String> = snapshot.into_iter().map(|(key, _)| key).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }
}
