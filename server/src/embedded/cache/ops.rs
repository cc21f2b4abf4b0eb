//! A call on a cache from an app of this node: carried out here (a local or invalidated cache,
//! or a plain `get` of a key this node holds), or sent to the cache's primary, which applies it
//! and copies it to the key's other owners before it answers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use immutant_protocol::{CacheMode, CacheOp, CacheOutcome};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::applied::{self, Turn};
use super::peer::{self, PeerAnswer, PeerRequest, Record, pack};
use super::rebalance::pages;
use super::store::{Entry, Executed, Store, Version, Writer};
use super::{Cache, Caches, ROUTE_PATIENCE, ROUTE_RETRY};
use crate::vocabulary::cache::CacheError;
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

/// How many times an invalidation is sent to a member that did not take it.
const INVALIDATE_ATTEMPTS: u32 = 40;
/// How long a primary keeps copying a write to an owner in its view that does not take it.
const COPY_PATIENCE: Duration = Duration::from_secs(10);

impl Caches {
    /// Carries out `op` on the cache `name` for an app of this node.
    pub async fn call(
        &self,
        name: &str,
        op: CacheOp,
        body: Bytes,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        let cache = self
            .get(name)
            .ok_or_else(|| CacheError::NotOpen(name.to_string()))?;
        metrics::counter!("immutant_cache_operations_total", "cache" => name.to_string(), "op" => op.kind())
            .increment(1);
        match cache.options.mode {
            CacheMode::Local => self.execute_here(&cache, &op, body).await,
            CacheMode::Invalidated => {
                let done = self.execute_here(&cache, &op, body).await?;
                if done.0.applied {
                    let request = match op {
                        CacheOp::Clear {} => PeerRequest::Op {
                            call: op,
                            request: None,
                        },
                        _ => PeerRequest::Invalidate {
                            keys: op.key().map(str::to_string).into_iter().collect(),
                        },
                    };
                    self.invalidate_elsewhere(&cache, request).await;
                }
                Ok(done)
            }
            CacheMode::Replicated | CacheMode::Distributed => self.route(&cache, op, body).await,
        }
    }

    /// Sends `request` (an invalidation) to every other holder of the cache, and waits for
    /// them if the cache is synchronous. A member that cannot be reached is leaving the view:
    /// it is not waited for.
    async fn invalidate_elsewhere(&self, cache: &Cache, request: PeerRequest) {
        let mut pending: Vec<String> = self
            .holders(cache)
            .into_iter()
            .filter(|node| *node != self.node)
            .collect();
        let call = |node: String| {
            let (peers, name, request) = (self.peers.clone(), cache.name.clone(), request.clone());
            async move {
                let answer = peers.call(&node, &name, request, Bytes::new()).await;
                let holds = !matches!(answer, Ok((PeerAnswer::NotOpen {}, _)));
                let done = matches!(answer, Ok((PeerAnswer::Done { .. }, _)));
                (node, done && holds)
            }
        };
        if !cache.options.sync {
            tokio::spawn(futures_util::future::join_all(
                pending.into_iter().map(call),
            ));
            return;
        }
        for _ in 0..INVALIDATE_ATTEMPTS {
            let answers = futures_util::future::join_all(pending.into_iter().map(call)).await;
            let holders = self.holders(cache);
            pending = answers
                .into_iter()
                .filter(|(node, done)| !done && holders.contains(node))
                .map(|(node, _)| node)
                .collect();
            if pending.is_empty() {
                return;
            }
            tokio::time::sleep(ROUTE_RETRY).await;
        }
        warn!(
            "cache {}: {pending:?} did not take an invalidation",
            cache.name
        );
    }

    /// Sends an operation to the cache's primary, this node or another, and tries again (under
    /// the same request id, so that it is applied once) while the primary changes, for up to
    /// [`ROUTE_PATIENCE`]. A plain `get` of a key this node holds is answered here.
    async fn route(
        &self,
        cache: &Cache,
        op: CacheOp,
        body: Bytes,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        let key = op.key().unwrap_or_default().to_string();
        let request_id = format!(
            "{}@{}/{}",
            self.node,
            self.writer,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        );
        let give_up = Instant::now() + ROUTE_PATIENCE;
        let mut tried = false;
        loop {
            match self.check_quorum(cache) {
                Ok(()) => {}
                // Nothing was sent yet: nothing was done.
                Err(error) if !tried => return Err(error),
                Err(_) => {
                    return Err(CacheError::Unavailable {
                        cache: cache.name.clone(),
                        key,
                    });
                }
            }
            tried = true;
            if let CacheOp::Get { .. } = op
                && self.owners(cache, &key).contains(&self.node)
            {
                return Ok(self.read_owned(cache, &key).await);
            }
            match self.primary(cache) {
                Some((primary, _)) if primary == self.node => {
                    match self
                        .as_primary(cache, &op, body.clone(), Some(&request_id))
                        .await
                    {
                        Err(CacheError::NotPrimary { .. }) => {}
                        done => return done,
                    }
                }
                Some((primary, _)) => {
                    let request = PeerRequest::Op {
                        call: op.clone(),
                        request: Some(request_id.clone()),
                    };
                    let answer = self
                        .peers
                        .call(&primary, &cache.name, request, body.clone());
                    match answer.await {
                        Ok((PeerAnswer::Done { outcome }, value)) => return Ok((outcome, value)),
                        Ok((PeerAnswer::Failed { reason }, _)) => {
                            debug!(
                                "{primary} did not carry out a call on {}: {reason}",
                                cache.name
                            );
                        }
                        _ => {}
                    }
                }
                None => {}
            }
            if Instant::now() >= give_up {
                return Err(CacheError::Unavailable {
                    cache: cache.name.clone(),
                    key,
                });
            }
            tokio::time::sleep(ROUTE_RETRY).await;
        }
    }

    /// Refuses operations on a side of the cluster smaller than the quorum: no primary is
    /// elected there.
    pub(super) fn check_quorum(&self, cache: &Cache) -> Result<(), CacheError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let quorum = cluster.singleton_quorum();
        let members = cluster.view().borrow().members.len();
        if (members as u32) < quorum {
            return Err(CacheError::NoQuorum {
                cache: cache.name.clone(),
                members,
                quorum,
            });
        }
        Ok(())
    }

    /// Carries out `op` as the cache's primary: refused (`NotPrimary`) unless this node applies
    /// the cache's writes now. A request carried out already, here or by an earlier primary,
    /// is answered as it was the first time.
    pub(super) async fn as_primary(
        &self,
        cache: &Cache,
        op: &CacheOp,
        body: Bytes,
        request: Option<&str>,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        let epoch = self.serving(cache)?;
        if let CacheOp::Get { key } | CacheOp::GetLatest { key } = op {
            let (read, mark) = {
                let mut store = lock(&cache.store);
                (read_in(&mut store, key), cache.pending.mark())
            };
            cache.pending.settled(key, mark).await;
            return self.answered(cache, epoch, read);
        }
        let Some(id) = request else {
            return self.write_as_primary(cache, op, body, None).await.0;
        };
        match cache.applied.take(id) {
            // Answered only while this node still applies the writes: the first try's write
            // stays in the state a newer primary gathers, or goes with this node's state.
            Turn::Retry(first) => match applied::answer_of(first).await {
                (PeerAnswer::Done { outcome }, value) => {
                    self.answered(cache, epoch, (outcome, value))
                }
                _ => Err(self.not_primary(cache)),
            },
            Turn::Mine(turn) => {
                let (done, applied) = self.write_as_primary(cache, op, body, Some(id)).await;
                // Once the write is in the store, its outcome is what a retry gets, even if
                // this answer is an error.
                let answer = match (&done, applied) {
                    (Err(_), Some(outcome)) => (PeerAnswer::Done { outcome }, Bytes::new()),
                    _ => peer::answer(&done),
                };
                cache.applied.done(id, turn, &answer);
                done
            }
        }
    }

    /// Applies `op` as the cache's primary (see [`Caches::apply_as_primary`]).
    async fn write_as_primary(
        &self,
        cache: &Cache,
        op: &CacheOp,
        body: Bytes,
        request: Option<&str>,
    ) -> (
        Result<(CacheOutcome, Bytes), CacheError>,
        Option<CacheOutcome>,
    ) {
        let expiry = cache.options.expiry;
        let apply = |store: &mut Store, writer| store.execute(op, body, expiry, writer, now_ms());
        self.apply_as_primary(cache, apply, op.key(), request).await
    }

    /// Applies a write (`apply`) as the cache's primary, copies what changed to the owners
    /// with this primary's epoch (and the request's outcome, for retries at a later primary),
    /// and answers only if the lease still holds once they have it. A write that changes
    /// nothing answers once the writes to `key` before it are copied. Also says what the write
    /// did to the store, if it changed it (whatever the answer).
    pub(super) async fn apply_as_primary(
        &self,
        cache: &Cache,
        apply: impl FnOnce(&mut Store, Writer) -> Executed,
        key: Option<&str>,
        request: Option<&str>,
    ) -> (
        Result<(CacheOutcome, Bytes), CacheError>,
        Option<CacheOutcome>,
    ) {
        let epoch = match self.serving(cache) {
            Ok(epoch) => epoch,
            Err(error) => return (Err(error), None),
        };
        let saving = match &cache.persistence {
            Some(_) => Some(cache.saving.lock().await),
            None => None,
        };
        let (executed, in_flight, mark) = {
            let mut store = lock(&cache.store);
            if store.fenced() > epoch {
                return (Err(self.not_primary(cache)), None);
            }
            let writer = Writer {
                epoch,
                id: self.writer,
            };
            let executed = apply(&mut store, writer);
            store.doubt(&executed.changes);
            if let Some(id) = request
                && !executed.changes.is_empty()
            {
                cache.applied.applied(id, epoch, executed.outcome);
            }
            let keys = executed.changes.iter().map(|(key, _)| key.clone());
            let in_flight = cache.pending.start(keys.collect());
            let mark = cache.pending.mark();
            (executed, in_flight, mark)
        };
        let answer = (executed.outcome, executed.value);
        if executed.changes.is_empty() {
            drop((saving, in_flight));
            // The answer rests on the key's value: on the writes to it still being copied.
            if let Some(key) = key {
                cache.pending.settled(key, mark).await;
            }
            return (self.answered(cache, epoch, answer), None);
        }
        let applied = Some(answer.0);
        let written: Vec<(String, Version)> = executed
            .changes
            .iter()
            .map(|(key, entry)| (key.clone(), entry.version))
            .collect();
        if let Some(persistence) = &cache.persistence
            && let Err(error) = persistence
                .save(&cache.name, executed.changes.clone())
                .await
        {
            // In memory but not on disk nor copied: not a write to answer for. Another
            // primary takes the cache over from what the holders have.
            cache.resign(epoch);
            return (Err(error), applied);
        }
        drop(saving);
        let record = request.map(|id| Record {
            id: id.to_string(),
            outcome: answer.0,
            epoch,
        });
        if let Err(error) = self.copy(cache, epoch, executed.changes, record).await {
            return (Err(error), applied);
        }
        drop(in_flight);
        let answered = self.answered(cache, epoch, answer);
        if answered.is_ok() {
            lock(&cache.store).confirm(&written);
        }
        (answered, applied)
    }

    /// The epoch this node applies the cache's writes under, or why it does not (it did not
    /// take the cache over, its lease lapsed, or its side of the cluster lost the quorum).
    fn serving(&self, cache: &Cache) -> Result<u64, CacheError> {
        self.check_quorum(cache)
            .map_err(|_| self.not_primary(cache))?;
        cache.serving_epoch().ok_or_else(|| self.not_primary(cache))
    }

    /// `answer`, if this node still applies the cache's writes under `epoch`: nothing is
    /// answered after the lease lapsed.
    fn answered(
        &self,
        cache: &Cache,
        epoch: u64,
        answer: (CacheOutcome, Bytes),
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        match cache.serving_epoch() {
            Some(serving) if serving == epoch => Ok(answer),
            _ => Err(self.not_primary(cache)),
        }
    }

    fn not_primary(&self, cache: &Cache) -> CacheError {
        CacheError::NotPrimary {
            cache: cache.name.clone(),
            node: self.node.clone(),
        }
    }

    /// Copies `changes` under `epoch` to every other owner of their keys, each owner's in
    /// pages; for a synchronous cache, waits until each has taken them or left the view, and
    /// fails if a newer primary fenced one or this node's lease ended meanwhile.
    async fn copy(
        &self,
        cache: &Cache,
        epoch: u64,
        changes: Vec<(String, Entry)>,
        record: Option<Record>,
    ) -> Result<(), CacheError> {
        let mut by_owner: BTreeMap<String, Vec<(String, Entry)>> = BTreeMap::new();
        for (key, entry) in changes {
            for owner in self.owners(cache, &key) {
                if owner != self.node {
                    by_owner
                        .entry(owner)
                        .or_default()
                        .push((key.clone(), entry.clone()));
                }
            }
        }
        if !cache.options.sync {
            // Sent once and not waited for: the write may be lost with the primary, as an
            // asynchronous cache's writes may be.
            for (owner, entries) in by_owner {
                let (peers, name) = (self.peers.clone(), cache.name.clone());
                let pages = pages(entries, self.page_bytes);
                let record = record.clone();
                tokio::spawn(async move {
                    for page in pages {
                        let (entries, values) = pack(&page);
                        let request = PeerRequest::Apply {
                            entries,
                            epoch: Some(epoch),
                            record: record.clone(),
                            missed: false,
                        };
                        let _ = peers.call(&owner, &name, request, values).await;
                    }
                });
            }
            return Ok(());
        }
        let copies = by_owner.into_iter().map(|(owner, entries)| {
            let record = record.clone();
            async move {
                for page in pages(entries, self.page_bytes) {
                    self.copy_to(cache, &owner, epoch, &page, record.clone())
                        .await?;
                }
                Ok::<(), CacheError>(())
            }
        });
        futures_util::future::try_join_all(copies).await?;
        Ok(())
    }

    /// Copies `entries` under `epoch` to `owner`, asking again while it is a holder in the
    /// view and this node's lease holds, for up to [`COPY_PATIENCE`]; past that, or if a newer
    /// primary fenced the owner, this node gives its lease up. An owner that left the view is
    /// not waited for, but told when it is copied to next that it missed writes.
    async fn copy_to(
        &self,
        cache: &Cache,
        owner: &str,
        epoch: u64,
        entries: &[(String, Entry)],
        record: Option<Record>,
    ) -> Result<(), CacheError> {
        let (wire, values) = pack(entries);
        let give_up = Instant::now() + COPY_PATIENCE;
        loop {
            if cache.serving_epoch() != Some(epoch) {
                return Err(self.not_primary(cache));
            }
            // How many writes it missed as this copy leaves: those missed meanwhile are told
            // with the next copy.
            let missed = lock(&cache.missed).get(owner).copied().unwrap_or(0);
            let request = PeerRequest::Apply {
                entries: wire.clone(),
                epoch: Some(epoch),
                record: record.clone(),
                missed: missed > 0,
            };
            let answer = self.peers.call(owner, &cache.name, request, values.clone());
            match answer.await {
                Ok((PeerAnswer::Done { .. }, _)) => {
                    let mut owners = lock(&cache.missed);
                    if let Some(count) = owners.get_mut(owner) {
                        *count -= missed.min(*count);
                        if *count == 0 {
                            owners.remove(owner);
                        }
                    }
                    return Ok(());
                }
                Ok((PeerAnswer::Stale { .. }, _)) => {
                    cache.resign(epoch);
                    return Err(self.not_primary(cache));
                }
                Ok((PeerAnswer::NotOpen {}, _)) => {
                    // It restarted: it takes the state in when it opens the cache again.
                    lock(&cache.joined).remove(owner);
                    return Ok(());
                }
                _ if !self.holders(cache).iter().any(|holder| holder == owner) => {
                    *lock(&cache.missed).entry(owner.to_string()).or_default() += 1;
                    return Ok(());
                }
                _ if Instant::now() >= give_up => {
                    warn!(
                        "cache {}: {owner} takes no copies, though in the view; this node gives up its writes",
                        cache.name
                    );
                    cache.resign(epoch);
                    return Err(self.not_primary(cache));
                }
                _ => tokio::time::sleep(ROUTE_RETRY).await,
            }
        }
    }

    /// The value of `key` as an owner reads it: its own copy, or, for a distributed cache
    /// where this node has never had the key, the copy of another owner: while entries move to
    /// new owners after a member went, a key may not have reached this one yet. (A key this
    /// node saw removed is not looked for elsewhere.)
    pub(super) async fn read_owned(&self, cache: &Cache, key: &str) -> (CacheOutcome, Bytes) {
        let read = self.read(cache, key);
        if read.0.found
            || cache.options.mode != CacheMode::Distributed
            || lock(&cache.store).has_entry(key)
        {
            return read;
        }
        let owners = self.owners(cache, key);
        self.read_elsewhere(cache, key, &owners)
            .await
            .unwrap_or(read)
    }

    /// The value of `key` on one of the other `owners`, if one has it.
    async fn read_elsewhere(
        &self,
        cache: &Cache,
        key: &str,
        owners: &[String],
    ) -> Option<(CacheOutcome, Bytes)> {
        for owner in owners.iter().filter(|owner| **owner != self.node) {
            let get = PeerRequest::Read {
                key: key.to_string(),
            };
            if let Ok((PeerAnswer::Done { outcome }, value)) =
                self.peers.call(owner, &cache.name, get, Bytes::new()).await
                && outcome.found
            {
                return Some((outcome, value));
            }
        }
        None
    }

    pub(super) fn read(&self, cache: &Cache, key: &str) -> (CacheOutcome, Bytes) {
        read_in(&mut lock(&cache.store), key)
    }

    /// Carries out `op` on this node's own entries (a local or invalidated cache), saving what
    /// changed if the cache persists.
    pub(super) async fn execute_here(
        &self,
        cache: &Cache,
        op: &CacheOp,
        body: Bytes,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        let _saving = match &cache.persistence {
            Some(_) => Some(cache.saving.lock().await),
            None => None,
        };
        let writer = Writer {
            epoch: 0,
            id: self.writer,
        };
        let executed = lock(&cache.store).execute(op, body, cache.options.expiry, writer, now_ms());
        if let Some(persistence) = &cache.persistence {
            persistence.save(&cache.name, executed.changes).await?;
        }
        Ok((executed.outcome, executed.value))
    }
}

/// The value of `key` in `store`, as a read answers it.
fn read_in(store: &mut Store, key: &str) -> (CacheOutcome, Bytes) {
    let value = store.get(key, now_ms());
    let outcome = CacheOutcome {
        found: value.is_some(),
        applied: false,
    };
    (outcome, value.unwrap_or_default())
}
