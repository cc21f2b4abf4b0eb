//! Answering other members' requests about a cache: operations sent to this node as a key's
//! primary owner, copies and invalidations from the others, reads, and joins (a page of
//! entries at a time).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use immutant_protocol::{CacheOp, CacheOutcome};
use tracing::warn;

use super::peer::{self, PeerAnswer, PeerRequest, pack, unpack};
use super::rebalance::page_after;
use super::store::Entry;
use super::{Cache, Caches, applied};
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

impl Caches {
    /// Takes in copies from another node: those newer than this node's.
    pub(super) async fn merge(&self, cache: &Cache, entries: Vec<peer::WireEntry>, values: Bytes) {
        let now = now_ms();
        let Some(entries) = unpack(entries, values, now) else {
            warn!(
                "cache {}: a copy from another node was cut short",
                cache.name
            );
            return;
        };
        let _saving = match &cache.persistence {
            Some(_) => Some(cache.saving.lock().await),
            None => None,
        };
        let newer: Vec<(String, Entry)> = {
            let mut store = lock(&cache.store);
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
    }

    /// Carries out `call`, sent by another node that takes this one for the key's primary (a
    /// clear as it comes: it reaches every holder from the node that asked for it).
    async fn carry_out(&self, cache: &Cache, call: &CacheOp, body: Bytes) -> (PeerAnswer, Bytes) {
        let replicate = call.key().is_some();
        match self.execute(cache, call, body, replicate).await {
            Ok((outcome, value)) => (PeerAnswer::Done { outcome }, value),
            Err(error) => {
                let reason = error.to_string();
                (PeerAnswer::Failed { reason }, Bytes::new())
            }
        }
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
            PeerRequest::Read { key } => {
                let (outcome, value) = self.read(&cache, &key);
                (PeerAnswer::Done { outcome }, value)
            }
            PeerRequest::Op { call, request } => {
                let turn = match request.as_deref().map(|id| self.applied.take(id)) {
                    Some(applied::Turn::Retry(first)) => return applied::answer_of(first).await,
                    Some(applied::Turn::Mine(turn)) => Some(turn),
                    None => None,
                };
                let answer = self.carry_out(&cache, &call, body).await;
                if let (Some(id), Some(turn)) = (request.as_deref(), turn) {
                    self.applied.done(id, turn, &answer);
                }
                answer
            }
            PeerRequest::Apply { entries } => {
                self.merge(&cache, entries, body).await;
                done(CacheOutcome::default())
            }
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
                // Joined first, then the snapshot: a write either reaches the joiner as a copy
                // or is in the snapshot.
                lock(&cache.joined).insert(from.to_string());
                let snapshot = lock(&cache.store).snapshot();
                let (page, more) = page_after(snapshot, after.as_deref(), self.page_bytes);
                let (entries, values) = pack(&page);
                (PeerAnswer::Entries { entries, more }, values)
            }
        }
    }
}
