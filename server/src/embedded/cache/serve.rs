//! Answering other members' requests about a cache: operations sent to this node as the
//! cache's primary, copies and invalidations from the others, reads, joins of followers, and a
//! new primary gathering the entries (a page at a time).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use immutant_protocol::{CacheOp, CacheOutcome};
use tracing::warn;

use super::peer::{self, PeerAnswer, PeerRequest, Record, pack, unpack};
use super::rebalance::page_after;
use super::store::Entry;
use super::{Cache, Caches};
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

impl Caches {
    /// Takes in copies from another node, those newer than this node's: written by the
    /// primary of `epoch` (or moved by a holder that took in its state). Refused, answering the
    /// newer epoch, if a newer primary has fenced this node.
    pub(super) async fn merge(
        &self,
        cache: &Cache,
        entries: Vec<peer::WireEntry>,
        values: Bytes,
        epoch: Option<u64>,
    ) -> Result<(), u64> {
        let now = now_ms();
        let Some(entries) = unpack(entries, values, now) else {
            warn!(
                "cache {}: a copy from another node was cut short",
                cache.name
            );
            return Ok(());
        };
        let _saving = match &cache.persistence {
            Some(_) => Some(cache.saving.lock().await),
            None => None,
        };
        let newer: Vec<(String, Entry)> = {
            let mut store = lock(&cache.store);
            if let Some(epoch) = epoch
                && !store.fence(epoch)
            {
                return Err(store.fenced());
            }
            entries
                .into_iter()
                .filter(|(key, entry)| store.merge(key.clone(), entry.clone(), now))
                .collect()
        };
        if let Some(persistence) = &cache.persistence
            && let Err(error) = persistence.save(&cache.name, newer).await
        {
            warn!("cache {}: {error}", cache.name);
        }
        Ok(())
    }

    /// Answers a request from the member `from` about the cache `name`.
    pub async fn serve(
        &self,
        from: &str,
        name: &str,
        request: PeerRequest,
        body: Bytes,
    ) -> (PeerAnswer, Bytes) {
        let Some(cache) = self.get(name) else {
            return (PeerAnswer::NotOpen {}, Bytes::new());
        };
        if !cache.ready.load(Ordering::Acquire) && !matches!(request, PeerRequest::Apply { .. }) {
            let reason = format!("cache '{name}' is still joining on {}", self.node);
            return (PeerAnswer::Failed { reason }, Bytes::new());
        }
        let done = |outcome| (PeerAnswer::Done { outcome }, Bytes::new());
        match request {
            PeerRequest::Op {
                call: CacheOp::Get { key },
                ..
            } => {
                let (outcome, value) = self.read_owned(&cache, &key).await;
                (PeerAnswer::Done { outcome }, value)
            }
            PeerRequest::Op { call, request } => {
                match self
                    .as_primary(&cache, &call, body, request.as_deref())
                    .await
                {
                    Ok((outcome, value)) => (PeerAnswer::Done { outcome }, value),
                    Err(error) => {
                        let reason = error.to_string();
                        (PeerAnswer::Failed { reason }, Bytes::new())
                    }
                }
            }
            PeerRequest::Read { key } => {
                let (outcome, value) = self.read(&cache, &key);
                (PeerAnswer::Done { outcome }, value)
            }
            PeerRequest::Apply {
                entries,
                epoch,
                record,
            } => match self.merge(&cache, entries, body, epoch).await {
                Ok(()) => {
                    if let Some(record) = record {
                        cache.applied.record(record);
                    }
                    done(CacheOutcome::default())
                }
                Err(fenced) => (PeerAnswer::Stale { fenced }, Bytes::new()),
            },
            PeerRequest::Invalidate { keys } => {
                let _saving = cache.saving.lock().await;
                {
                    let mut store = lock(&cache.store);
                    for key in &keys {
                        store.invalidate(key);
                    }
                }
                if let Some(persistence) = &cache.persistence
                    && let Err(error) = persistence.forget(&cache.name, keys).await
                {
                    warn!("cache {}: {error}", cache.name);
                }
                done(CacheOutcome::default())
            }
            PeerRequest::Join { after } => {
                let Some(epoch) = cache.serving_epoch() else {
                    let reason = format!("{} is not the primary of cache '{name}'", self.node);
                    return (PeerAnswer::Failed { reason }, Bytes::new());
                };
                // Joined first, then the snapshot: a write either reaches the joiner as a copy
                // or is in the snapshot.
                lock(&cache.joined).insert(from.to_string());
                let snapshot = lock(&cache.store).snapshot();
                self.page(snapshot, after, epoch, Vec::new())
            }
            PeerRequest::Gather { epoch, after } => {
                let (snapshot, synced) = {
                    let mut store = lock(&cache.store);
                    if !store.fence(epoch) {
                        let fenced = store.fenced();
                        return (PeerAnswer::Stale { fenced }, Bytes::new());
                    }
                    (store.snapshot(), store.synced)
                };
                // This node may have been the primary: it applies nothing more under an
                // older epoch.
                let records = match after {
                    None => cache.applied.records(),
                    Some(_) => Vec::new(),
                };
                self.page(snapshot, after, synced, records)
            }
        }
    }

    /// The page of `snapshot` after the key `after`, as a state of the primary of `synced`.
    fn page(
        &self,
        snapshot: Vec<(String, Entry)>,
        after: Option<String>,
        synced: u64,
        records: Vec<Record>,
    ) -> (PeerAnswer, Bytes) {
        let (page, more) = page_after(snapshot, after.as_deref(), self.page_bytes);
        let (entries, values) = pack(&page);
        let answer = PeerAnswer::Entries {
            entries,
            more,
            synced,
            records,
        };
        (answer, values)
    }
}
