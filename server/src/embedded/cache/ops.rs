//! A call on a cache from an app of this node: carried out here (a local or invalidated cache,
//! or a key this node is the primary owner of), or routed to the key's primary owner, and
//! copied to the other owners or holders.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use immutant_protocol::{CacheMode, CacheOp, CacheOutcome};
use tracing::{debug, warn};

use super::peer::{PeerAnswer, PeerRequest, pack};
use super::{Cache, Caches, ROUTE_RETRY};
use crate::vocabulary::cache::CacheError;
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

/// How many times a write looks for its primary owner before giving up.
const ROUTE_ATTEMPTS: u32 = 40;

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
        match (cache.options.mode, &op) {
            (CacheMode::Local, _) => self.execute(&cache, &op, body, false).await,
            (CacheMode::Invalidated, _) => {
                let done = self.execute(&cache, &op, body, false).await?;
                if done.0.applied {
                    let keys: Vec<String> = match op.key() {
                        Some(key) => vec![key.to_string()],
                        None => Vec::new(),
                    };
                    let others = self.holders(&cache);
                    let request = match op {
                        CacheOp::Clear {} => PeerRequest::Op {
                            call: op,
                            request: None,
                        },
                        _ => PeerRequest::Invalidate { keys },
                    };
                    self.send_all(&cache, &others, request, Bytes::new()).await;
                }
                Ok(done)
            }
            (_, CacheOp::Clear {}) => {
                let done = self.execute(&cache, &op, body, false).await?;
                let others = self.holders(&cache);
                let clear = PeerRequest::Op {
                    call: op,
                    request: None,
                };
                self.send_all(&cache, &others, clear, Bytes::new()).await;
                Ok(done)
            }
            _ => self.route(&cache, op, body).await,
        }
    }

    /// Sends `request` to each of `nodes` but this one, and waits for them if the cache is
    /// synchronous. A member that cannot be reached is leaving the view: it is not waited for.
    async fn send_all(&self, cache: &Cache, nodes: &[String], request: PeerRequest, body: Bytes) {
        let mut pending: Vec<String> = nodes
            .iter()
            .filter(|node| **node != self.node)
            .cloned()
            .collect();
        let call = |node: String| {
            let (peers, name) = (self.peers.clone(), cache.name.clone());
            let (request, body) = (request.clone(), body.clone());
            async move {
                let answer = peers.call(&node, &name, request, body).await;
                let holds = !matches!(answer, Ok((PeerAnswer::NotOpen {}, _)));
                let done = matches!(answer, Ok((PeerAnswer::Done { .. }, _)));
                (node, done, holds)
            }
        };
        if !cache.options.sync {
            tokio::spawn(futures_util::future::join_all(
                pending.into_iter().map(call),
            ));
            return;
        }
        // A member that did not take the copy is asked again while it is still a holder.
        for _ in 0..ROUTE_ATTEMPTS {
            let answers = futures_util::future::join_all(pending.into_iter().map(call)).await;
            // A node that does not hold the cache (it restarted) wants no copy.
            for (node, _, holds) in &answers {
                if !holds {
                    lock(&cache.joined).remove(node);
                }
            }
            let holders = self.holders(cache);
            pending = answers
                .into_iter()
                .filter(|(node, done, holds)| !done && *holds && holders.contains(node))
                .map(|(node, _, _)| node)
                .collect();
            if pending.is_empty() {
                return;
            }
            tokio::time::sleep(ROUTE_RETRY).await;
        }
        warn!("cache {}: {pending:?} did not take a copy", cache.name);
    }

    /// Sends a keyed operation to its primary owner, this node or another; tries again while
    /// the view changes under it.
    async fn route(
        &self,
        cache: &Cache,
        op: CacheOp,
        body: Bytes,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        let key = op.key().unwrap_or_default().to_string();
        // One name for every try of this request: the primary carries it out once.
        let request_id = format!(
            "{}@{}/{}",
            self.node,
            self.writer,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        );
        for _ in 0..ROUTE_ATTEMPTS {
            let owners = self.owners(cache, &key);
            if let CacheOp::Get { .. } = op
                && owners.contains(&self.node)
            {
                return Ok(self.read_owned(cache, &key).await);
            }
            let primary = owners.first().cloned().unwrap_or_else(|| self.node.clone());
            if primary == self.node {
                return self.execute(cache, &op, body, true).await;
            }
            let request = PeerRequest::Op {
                call: op.clone(),
                request: Some(request_id.clone()),
            };
            match self
                .peers
                .call(&primary, &cache.name, request, body.clone())
                .await
            {
                Ok((PeerAnswer::Done { outcome }, value)) => return Ok((outcome, value)),
                Ok((PeerAnswer::Failed { reason }, _)) => {
                    debug!("{primary} cannot take a write to {}: {reason}", cache.name);
                }
                Ok((PeerAnswer::Entries { .. } | PeerAnswer::NotOpen {}, _)) | Err(_) => {}
            }
            tokio::time::sleep(ROUTE_RETRY).await;
        }
        Err(CacheError::Unavailable {
            cache: cache.name.clone(),
            key,
        })
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
        let value = lock(&cache.store).get(key, now_ms());
        let outcome = CacheOutcome {
            found: value.is_some(),
            applied: false,
        };
        (outcome, value.unwrap_or_default())
    }

    /// Carries out `op` here as its primary owner, saves what changed if the cache persists,
    /// and, if `replicate`, copies it to the key's other owners. The owners are counted after
    /// the write: a member joining meanwhile either is among them or has the write in the
    /// entries it was given.
    pub(super) async fn execute(
        &self,
        cache: &Cache,
        op: &CacheOp,
        body: Bytes,
        replicate: bool,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        let saving = match &cache.persistence {
            Some(_) => Some(cache.saving.lock().await),
            None => None,
        };
        let executed =
            lock(&cache.store).execute(op, body, cache.options.expiry, self.writer, now_ms());
        if let Some(persistence) = &cache.persistence {
            persistence
                .save(&cache.name, executed.changes.clone())
                .await?;
        }
        drop(saving);
        let owners = match op.key() {
            Some(key) if replicate && !executed.changes.is_empty() => self.owners(cache, key),
            _ => Vec::new(),
        };
        if owners.iter().any(|owner| *owner != self.node) {
            let (entries, values) = pack(&executed.changes);
            self.send_all(cache, &owners, PeerRequest::Apply { entries }, values)
                .await;
        }
        Ok((executed.outcome, executed.value))
    }
}
