//! Answering other members' requests about a cache: operations sent to this node as the
//! cache's primary, copies and invalidations from the others, reads, joins of followers, and a
//! new primary gathering the entries (a page at a time).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use immutant_protocol::{CacheMode, CacheOp, CacheOutcome};
use tracing::warn;

use super::peer::{self, PeerAnswer, PeerRequest, Record, pack, unpack};
use super::rebalance::page_after;
use super::store::Entry;
use super::{Cache, Caches};
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

impl Caches {
    /// Takes in copies from another node, those newer than this node's: written by the
    /// primary of `epoch` (or moved by a holder that took in its state), with the write's
    /// `record`; `missed` if this node must take the primary's state in again. Refused,
    /// answering the newer epoch, if a newer primary has fenced this node.
    async fn merge(
        &self,
        cache: &Cache,
        (entries, values): (Vec<peer::WireEntry>, Bytes),
        epoch: Option<u64>,
        record: Option<Record>,
        missed: bool,
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
            if missed {
                store.behind = true;
            }
            // With the entries, under the same lock: a new primary gathering this node gets
            // both or neither.
            if let Some(record) = record {
                cache.applied.record(record);
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
        // A holder still joining takes copies, and is gathered by a new primary (its state is
        // of no primary yet, or of an older one), but serves nothing else.
        let joining = !cache.ready.load(Ordering::Acquire);
        if joining
            && !matches!(
                request,
                PeerRequest::Apply { .. } | PeerRequest::Gather { .. }
            )
        {
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
            // On a local or invalidated cache: a clear, from the member whose app made it. On
            // any other: for this node as the cache's primary.
            PeerRequest::Op { call, request } => peer::answer(&match cache.options.mode {
                CacheMode::Local | CacheMode::Invalidated => {
                    self.execute_here(&cache, &call, body).await
                }
                CacheMode::Replicated | CacheMode::Distributed => {
                    self.as_primary(&cache, &call, body, request.as_deref())
                        .await
                }
            }),
            PeerRequest::Read { key } => {
                let (outcome, value) = self.read(&cache, &key);
                (PeerAnswer::Done { outcome }, value)
            }
            PeerRequest::Apply {
                entries,
                epoch,
                record,
                missed,
            } => match self
                .merge(&cache, (entries, body), epoch, record, missed)
                .await
            {
                Ok(()) => done(CacheOutcome::default()),
                Err(fenced) => (PeerAnswer::Stale { fenced }, Bytes::new()),
            },
            PeerRequest::SideWrites { entries } => match unpack(entries, body, now_ms()) {
                Some(writes) => peer::answer(&self.take_side_writes(&cache, writes).await),
                None => {
                    let reason = format!("side writes to cache '{name}' were cut short");
                    (PeerAnswer::Failed { reason }, Bytes::new())
                }
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
                let first = after.is_none();
                let (snapshot, records) = {
                    let store = lock(&cache.store);
                    let records = first.then(|| cache.applied.records(self.records_in_a_page()));
                    (store.snapshot(), records.unwrap_or_default())
                };
                self.page(snapshot, after, epoch, records)
            }
            PeerRequest::Gather { epoch, after } => {
                let first = after.is_none();
                let (snapshot, synced, records) = {
                    let mut store = lock(&cache.store);
                    // Copies from older primaries are refused from now on; so are this node's
                    // own writes, if it was the primary.
                    if !store.fence(epoch) {
                        let fenced = store.fenced();
                        return (PeerAnswer::Stale { fenced }, Bytes::new());
                    }
                    let records = first.then(|| cache.applied.records(self.records_in_a_page()));
                    (store.snapshot(), store.synced, records.unwrap_or_default())
                };
                self.page(snapshot, after, synced, records)
            }
        }
    }

    /// How many write outcomes go with the first page of a join or a gathering: the newest,
    /// within a quarter of a page (about 110 bytes each).
    fn records_in_a_page(&self) -> usize {
        self.page_bytes / 4 / 110
    }

    /// The page of `snapshot` after the key `after`, as a state of the primary of `synced`
    /// (for a join: of this node, the primary), with `records` (on the first page).
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
