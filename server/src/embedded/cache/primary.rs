//! A replicated or distributed cache's primary: the one member that applies its writes. It holds
//! the cache's lease ([`LeaseSubject::CachePrimary`], kept by the same gossip and rules as
//! singletons: see `cluster::lease_protocol`), so a paused, cut-off or deposed primary applies
//! and answers nothing once its lease has lapsed, and a new one takes over only once the old
//! lease certainly lapsed or its holder is proven dead.
//!
//! Under each new lease (a new epoch), the primary first takes the cache over: it fences every
//! holder in its view with its epoch (they refuse copies from older primaries from then on),
//! gathers their entries and the outcomes of the writes they know, and starts from the newest
//! state among them (`Store::take_over`). Only then does it apply writes, each carrying its
//! epoch in its version and in its copies. A takeover that cannot finish (a holder does not
//! answer, or a newer primary fenced one) gives the lease up, and the cache is taken over
//! afresh.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use std::time::Duration;

use immutant_foundation::clock::{monotonic_ns, now_ms};
use immutant_foundation::sync::lock;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use super::open::HolderState;
use super::peer::{PeerAnswer, PeerRequest};
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

/// The writes applied here whose copies are still on their way, by key, each with its number
/// in the order they were applied: an answer that rests on a key's value waits for the writes to
/// it applied before that answer was read, for a write whose copies fail may never have
/// happened.
#[derive(Default)]
pub(super) struct Pending {
    writes: std::sync::Mutex<PendingWrites>,
    settled: Notify,
}

#[derive(Default)]
struct PendingWrites {
    /// The number of the last write applied.
    last: u64,
    by_key: HashMap<String, BTreeSet<u64>>,
}

/// A write whose copies are on their way, until dropped.
pub(super) struct InFlight<'a> {
    pending: &'a Pending,
    number: u64,
    keys: Vec<String>,
}

impl Pending {
    /// Marks a write to `keys` as having copies on their way until the answer is dropped.
    /// Call it under the store's lock, with the write.
    pub(super) fn start(&self, keys: Vec<String>) -> InFlight<'_> {
        let mut writes = lock(&self.writes);
        writes.last += 1;
        let number = writes.last;
        for key in &keys {
            writes.by_key.entry(key.clone()).or_default().insert(number);
        }
        InFlight {
            pending: self,
            number,
            keys,
        }
    }

    /// The number of the last write applied: call it under the store's lock, with the read
    /// whose answer must wait for the writes before it ([`Pending::settled`]).
    pub(super) fn mark(&self) -> u64 {
        lock(&self.writes).last
    }

    /// Resolves once no write to `key` numbered up to `mark` has copies on their way.
    pub(super) async fn settled(&self, key: &str, mark: u64) {
        loop {
            let settled = self.settled.notified();
            let waiting = lock(&self.writes)
                .by_key
                .get(key)
                .and_then(|numbers| numbers.first())
                .is_some_and(|first| *first <= mark);
            if !waiting {
                return;
            }
            settled.await;
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut writes = lock(&self.pending.writes);
        for key in &self.keys {
            if let Some(numbers) = writes.by_key.get_mut(key) {
                numbers.remove(&self.number);
                if numbers.is_empty() {
                    writes.by_key.remove(key);
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

    /// Gives up the lease of `epoch`, if it is this node's: stops applying writes under it and
    /// lets the lease go, so that the cache is taken over afresh, by this node or another (a
    /// newer primary fenced a holder, or a holder could not be gathered or copied to).
    pub(super) fn resign(&self, epoch: u64) {
        let mut primacy = lock(&self.primacy);
        // Not a lease that has ended already: the term may be taking its next one.
        if primacy.epoch == epoch && primacy.until_ns > 0 {
            primacy.serving = false;
            lock(&self.term).cancel();
        }
    }

    /// Whether this node holds, or last held, the lease of `epoch`.
    pub(super) fn led(&self, epoch: u64) -> bool {
        lock(&self.primacy).epoch == epoch
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

/// How long a takeover may take to gather the holders' entries before the lease is given up.
const GATHER_PATIENCE: Duration = Duration::from_secs(10);

impl Caches {
    /// Holds the lease on `cache`'s writes whenever this node is elected for it, until the node
    /// stops, and takes the cache over under each new lease; a lease given up
    /// ([`Cache::resign`]) ends that term, and the next begins with a new election.
    pub(super) async fn lead(self: Arc<Self>, cache: Arc<Cache>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let subject = LeaseSubject::CachePrimary(cache.name.clone());
        while !self.shutdown.is_cancelled() {
            let term = self.shutdown.child_token();
            *lock(&cache.term) = term.clone();
            let (taken, mut takeovers) = watch::channel(0u64);
            let report = |event: LeaseEvent| {
                if let (LeaseEvent::Held { epoch, .. }, true) = (event, cache.leased(event)) {
                    taken.send_replace(epoch);
                }
            };
            let holding = lease_holder::hold(&cluster, &subject, &term, report);
            let taking_over = async {
                while takeovers.changed().await.is_ok() {
                    let epoch = *takeovers.borrow_and_update();
                    if let Err(why) = self.take_over(&cache, epoch).await {
                        info!(
                            "This node gives up the writes to cache {} (epoch {epoch}): {why}",
                            cache.name
                        );
                        cache.resign(epoch);
                    }
                }
            };
            tokio::select! {
                _ = holding => {}
                _ = taking_over => {}
            }
        }
    }

    /// Takes `cache` over as its primary under `epoch`: fences and gathers every holder in the
    /// view (again while new ones come), starts from the newest state among them, then applies
    /// writes. Fails if the lease ends first, a newer primary has fenced a holder, a holder
    /// does not answer in time, or the view falls below the quorum.
    async fn take_over(&self, cache: &Cache, epoch: u64) -> Result<(), String> {
        if !lock(&cache.store).fence(epoch) {
            return Err("a newer primary has fenced this node".to_string());
        }
        let give_up = Instant::now() + GATHER_PATIENCE;
        let mut asked = BTreeSet::from([self.node.clone()]);
        let mut gathered = Vec::new();
        loop {
            let holders = self.holders(cache);
            let left: Vec<String> = holders
                .into_iter()
                .filter(|holder| !asked.contains(holder))
                .collect();
            if left.is_empty() {
                break;
            }
            for holder in left {
                loop {
                    if !cache.holds(epoch) {
                        return Err("its lease ended".to_string());
                    }
                    if Instant::now() >= give_up {
                        return Err(format!("{holder} did not hand over its entries in time"));
                    }
                    match self.gather_from(cache, &holder, epoch).await {
                        Ok(Some(entries)) => {
                            gathered.push(entries);
                            break;
                        }
                        Ok(None) => break,
                        Err(NotGathered::Stale) => {
                            return Err(format!("a newer primary has fenced {holder}"));
                        }
                        Err(NotGathered::Retry) if !self.holders(cache).contains(&holder) => break,
                        Err(NotGathered::Retry) => tokio::time::sleep(ROUTE_RETRY).await,
                    }
                }
                asked.insert(holder);
            }
        }
        if let Err(error) = self.check_quorum(cache) {
            return Err(error.to_string());
        }
        let _saving = cache.saving.lock().await;
        let replaced = {
            let mut store = lock(&cache.store);
            if !cache.holds(epoch) || store.fenced() > epoch {
                return Err("its lease ended".to_string());
            }
            let base = gathered
                .iter()
                .map(|holder| holder.state.synced)
                .chain([store.synced])
                .max()
                .unwrap_or(0);
            // The outcomes count where their writes do: from a holder of the newest state, or
            // written under it or later.
            if store.synced < base {
                cache.applied.forget_before(base);
            }
            let mut sources = Vec::new();
            for holder in gathered {
                for record in holder.records {
                    if holder.state.synced == base || record.epoch >= base {
                        cache.applied.record(record);
                    }
                }
                sources.push(holder.state);
            }
            store.take_over(sources, epoch, now_ms())
        };
        cache.save_replaced(replaced).await;
        let mut primacy = lock(&cache.primacy);
        if primacy.epoch == epoch {
            primacy.serving = true;
            info!(
                "This node applies the writes to cache {} (epoch {epoch})",
                cache.name
            );
        }
        Ok(())
    }

    /// Fences `holder` with `epoch` and takes every entry it holds, page by page, with the
    /// epoch its state is of and the writes it knows the outcome of; none if it does not hold
    /// the cache.
    async fn gather_from(
        &self,
        cache: &Cache,
        holder: &str,
        epoch: u64,
    ) -> Result<Option<HolderState>, NotGathered> {
        let gather = |after| PeerRequest::Gather { epoch, after };
        match self.state_of(cache, holder, gather).await {
            Ok(state) => Ok(Some(state)),
            Err(Some(PeerAnswer::NotOpen {})) => Ok(None),
            Err(Some(PeerAnswer::Stale { fenced })) => {
                debug!(
                    "cache {}: {holder} follows a newer primary (epoch {fenced})",
                    cache.name
                );
                Err(NotGathered::Stale)
            }
            Err(answer) => {
                debug!("gathering cache {} from {holder}: {answer:?}", cache.name);
                Err(NotGathered::Retry)
            }
        }
    }
}
