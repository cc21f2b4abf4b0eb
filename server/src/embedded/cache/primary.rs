//! A replicated or distributed cache's primary: the one member that applies its writes. It holds
//! the cache's lease ([`LeaseSubject::CachePrimary`], kept by the same gossip and rules as
//! singletons: see `cluster::lease_protocol`), so a paused, cut-off or deposed primary applies
//! and answers nothing once its lease has lapsed, and a new one takes over only once the old
//! lease certainly lapsed or its holder is proven dead.
//!
//! Under each new lease (a new epoch), the primary first takes the cache over: it fences every
//! holder it can reach with its epoch (they refuse copies from older primaries from then on),
//! gathers their entries and the outcomes of the writes they know, and starts from the newest
//! state among them ([`Store::take_over`]). Only then does it apply writes, each carrying its
//! epoch in its version and in its copies.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use immutant_foundation::clock::{monotonic_ns, now_ms};
use immutant_foundation::sync::lock;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::peer::{PeerAnswer, PeerRequest, Record, unpack};
use super::store::Gathered;
use super::{Cache, Caches, ROUTE_RETRY};
use crate::embedded::cluster::election::LeaseSubject;
use crate::embedded::cluster::lease_holder;
use crate::vocabulary::singletons::LeaseEvent;

/// This node's part as a cache's primary.
#[derive(Debug, Default)]
pub(super) struct Primacy {
    /// The epoch of the lease this node holds, or last held, on the cache (0: never).
    epoch: u64,
    /// Until when the lease holds, on the host's monotonic clock.
    until_ns: u64,
    /// Whether this node took the cache over under `epoch`, and so applies its writes.
    serving: bool,
}

/// The keys of writes applied here whose copies are still on their way: an answer that rests on
/// such a key's value waits for them, for a write whose copies fail may never have happened.
#[derive(Default)]
pub(super) struct Pending {
    keys: std::sync::Mutex<HashMap<String, usize>>,
    settled: Notify,
}

/// Keys with copies on their way, until dropped.
pub(super) struct InFlight<'a> {
    pending: &'a Pending,
    keys: Vec<String>,
}

impl Pending {
    /// Marks `keys` as having copies on their way until the answer is dropped.
    pub(super) fn start(&self, keys: Vec<String>) -> InFlight<'_> {
        let mut pending = lock(&self.keys);
        for key in &keys {
            *pending.entry(key.clone()).or_default() += 1;
        }
        InFlight {
            pending: self,
            keys,
        }
    }

    /// Resolves once no copy of a write to `key` is on its way.
    pub(super) async fn settled(&self, key: &str) {
        loop {
            let settled = self.settled.notified();
            if !lock(&self.keys).contains_key(key) {
                return;
            }
            settled.await;
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut pending = lock(&self.pending.keys);
        for key in &self.keys {
            if let Some(count) = pending.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    pending.remove(key);
                }
            }
        }
        self.pending.settled.notify_waiters();
    }
}

impl Cache {
    /// The epoch this node applies the cache's writes under now, if it does: it took the cache
    /// over and its lease holds.
    pub(super) fn serving_epoch(&self) -> Option<u64> {
        let primacy = lock(&self.primacy);
        (primacy.serving && monotonic_ns() < primacy.until_ns).then_some(primacy.epoch)
    }

    /// Takes in a change of this node's lease on the cache; true for a new lease (a takeover
    /// to carry out).
    fn leased(&self, event: LeaseEvent) -> bool {
        let mut primacy = lock(&self.primacy);
        match event {
            LeaseEvent::Held { epoch, until_ns } if epoch == primacy.epoch => {
                primacy.until_ns = until_ns;
                false
            }
            LeaseEvent::Held { epoch, until_ns } => {
                *primacy = Primacy {
                    epoch,
                    until_ns,
                    serving: false,
                };
                true
            }
            LeaseEvent::Ended { epoch, .. } => {
                if primacy.epoch == epoch {
                    primacy.serving = false;
                    primacy.until_ns = 0;
                }
                false
            }
        }
    }

    /// Stops applying writes under `epoch`: a newer primary has fenced a holder.
    pub(super) fn step_down(&self, epoch: u64) {
        let mut primacy = lock(&self.primacy);
        if primacy.epoch == epoch {
            primacy.serving = false;
        }
    }

    /// Whether this node still holds the lease of `epoch` (taken over or not).
    fn holds(&self, epoch: u64) -> bool {
        let primacy = lock(&self.primacy);
        primacy.epoch == epoch && monotonic_ns() < primacy.until_ns
    }
}

/// Why a holder's entries could not be gathered.
enum NotGathered {
    /// A newer primary fenced it: this takeover is void.
    Stale,
    /// It did not answer (in full); ask again.
    Retry,
}

impl Caches {
    /// Holds the lease on `cache`'s writes whenever this node is elected for it, until the node
    /// stops, and takes the cache over under each new lease.
    pub(super) async fn lead(self: Arc<Self>, cache: Arc<Cache>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let subject = LeaseSubject::CachePrimary(cache.name.clone());
        let (taken, mut takeovers) = watch::channel(0u64);
        let report = |event: LeaseEvent| {
            if let (LeaseEvent::Held { epoch, .. }, true) = (event, cache.leased(event)) {
                taken.send_replace(epoch);
            }
        };
        let holding = lease_holder::hold(&cluster, &subject, &self.shutdown, report);
        let taking_over = async {
            while takeovers.changed().await.is_ok() {
                let epoch = *takeovers.borrow_and_update();
                self.take_over(&cache, epoch).await;
            }
        };
        tokio::select! {
            _ = holding => {}
            _ = taking_over => {}
        }
    }

    /// Takes `cache` over as its primary under `epoch`: fences and gathers every holder in the
    /// view, starts from the newest state among them, then applies writes. Gives up if the
    /// lease ends first or a newer primary has fenced a holder.
    async fn take_over(&self, cache: &Cache, epoch: u64) {
        if !lock(&cache.store).fence(epoch) {
            return;
        }
        let mut gathered = Vec::new();
        let mut records = Vec::new();
        let others: Vec<String> = self
            .holders(cache)
            .into_iter()
            .filter(|holder| *holder != self.node)
            .collect();
        for holder in others {
            loop {
                if !cache.holds(epoch) {
                    return;
                }
                match self.gather_from(cache, &holder, epoch).await {
                    Ok(Some((entries, known))) => {
                        gathered.push(entries);
                        records.extend(known);
                        break;
                    }
                    Ok(None) => break,
                    Err(NotGathered::Stale) => return,
                    Err(NotGathered::Retry) if !self.holders(cache).contains(&holder) => break,
                    Err(NotGathered::Retry) => tokio::time::sleep(ROUTE_RETRY).await,
                }
            }
        }
        let _saving = cache.saving.lock().await;
        let replaced = {
            let mut store = lock(&cache.store);
            if !cache.holds(epoch) || store.fenced() > epoch {
                return;
            }
            let base = gathered.iter().map(|source| source.synced).max();
            let base = base.unwrap_or(0).max(store.synced);
            records.retain(|record: &Record| record.epoch >= base);
            store.take_over(gathered, epoch, now_ms())
        };
        if let Some(persistence) = &cache.persistence {
            let saved = persistence.save(&cache.name, replaced.saved).await;
            let forgotten = persistence.forget(&cache.name, replaced.forgotten).await;
            if let Err(error) = saved.and(forgotten) {
                warn!("cache {}: {error}", cache.name);
            }
        }
        for record in records {
            cache.applied.record(record);
        }
        let mut primacy = lock(&cache.primacy);
        if primacy.epoch == epoch {
            primacy.serving = true;
            info!(
                "This node applies the writes to cache {} (epoch {epoch})",
                cache.name
            );
        }
    }

    /// Fences `holder` with `epoch` and takes every entry it holds, page by page, with the
    /// epoch its state is of and the writes it knows the outcome of; none if it does not hold
    /// the cache.
    async fn gather_from(
        &self,
        cache: &Cache,
        holder: &str,
        epoch: u64,
    ) -> Result<Option<(Gathered, Vec<Record>)>, NotGathered> {
        let mut after = None;
        let mut gathered = Gathered {
            synced: 0,
            entries: Vec::new(),
        };
        let mut known = Vec::new();
        loop {
            let request = PeerRequest::Gather {
                epoch,
                after: after.clone(),
            };
            let answer = self.peers.call(holder, &cache.name, request, Bytes::new());
            match answer.await {
                Ok((
                    PeerAnswer::Entries {
                        entries,
                        more,
                        synced,
                        records,
                    },
                    values,
                )) => {
                    let last = entries.last().map(|entry| entry.key.clone());
                    let page = unpack(entries, values, now_ms()).ok_or(NotGathered::Retry)?;
                    gathered.synced = synced;
                    gathered.entries.extend(page);
                    known.extend(records);
                    if more && last.is_some() {
                        after = last;
                        continue;
                    }
                    return Ok(Some((gathered, known)));
                }
                Ok((PeerAnswer::NotOpen {}, _)) => return Ok(None),
                Ok((PeerAnswer::Stale { fenced }, _)) => {
                    debug!(
                        "cache {}: {holder} follows a newer primary (epoch {fenced})",
                        cache.name
                    );
                    return Err(NotGathered::Stale);
                }
                answer => {
                    debug!("gathering cache {} from {holder}: {answer:?}", cache.name);
                    return Err(NotGathered::Retry);
                }
            }
        }
    }
}
