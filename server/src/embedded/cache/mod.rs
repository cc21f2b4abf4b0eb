//! Caches, in Infinispan's modes. Names are cluster-wide: a cache opened on one node is the
//! same cache on every member that opens it.
//!
//! - `local`: each node has its own entries (every cache of a standalone node is local);
//! - `replicated`: every member that has the cache holds every entry; writes go through the
//!   oldest of them (the primary), which applies them and copies them to the others;
//! - `distributed`: each key lives on `owners` members chosen by rendezvous hashing over the
//!   members that have the cache; writes go through the first of them;
//! - `invalidated`: each node has its own entries, and a write removes the key elsewhere.
//!
//! A synchronous write returns once every owner has it. A node that opens a cache the cluster
//! already has receives every entry before it serves a read (state transfer), and when members
//! come or go, distributed entries move to their new owners.

mod applied;
pub mod peer;
mod persist;
mod placement;
mod rebalance;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use immutant_protocol::{CacheMode, CacheOp, CacheOptions, CacheOutcome, Open};

use tracing::{debug, warn};

use crate::embedded::cluster::Cluster;
use crate::vocabulary::cache::{CacheError, CacheStats};
use immutant_foundation::clock::now_ms;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;
use peer::{PeerAnswer, PeerRequest, Peers, pack, unpack};
use persist::Persistence;
use placement::writer_id;
use rebalance::{page_after, page_bytes};
use store::{Entry, Store};

/// How many times a write looks for its primary owner before giving up.
const ROUTE_ATTEMPTS: u32 = 40;
/// How long a write waits for the view to change after its primary did not answer.
const ROUTE_RETRY: Duration = Duration::from_millis(100);
/// How often expired entries are swept away.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// One cache on this node.
struct Cache {
    name: String,
    options: CacheOptions,
    store: Mutex<Store>,
    /// Members that joined the cache through this node and that gossip may not show yet.
    joined: Mutex<BTreeSet<String>>,
    /// Members this node has taken every entry from (a replicated cache).
    synced: Mutex<BTreeSet<String>>,
    persistence: Option<Persistence>,
    /// Held from a write to its save, so that the disk sees writes in their order.
    saving: tokio::sync::Mutex<()>,
    /// Set once the cache has taken in the cluster's entries: until then it takes copies from
    /// the other holders, but serves no reads, writes or joins.
    ready: AtomicBool,
}

/// Every cache of this node.
pub struct Caches {
    node: String,
    /// This node in entry versions: its generation, then a hash of its name to tell apart
    /// two nodes started in the same millisecond.
    writer: u64,
    /// How many bytes of entries go in one frame to another node.
    page_bytes: usize,
    cluster: Option<Arc<Cluster>>,
    peers: Arc<Peers>,
    data_dir: PathBuf,
    persistence: Mutex<Option<Persistence>>,
    caches: Mutex<BTreeMap<String, Arc<Cache>>>,
    /// Opens one cache at a time, so that two apps opening one name get one cache.
    opening: tokio::sync::Mutex<()>,
    /// Numbers this node's requests to other nodes' primaries.
    next_request: std::sync::atomic::AtomicU64,
    /// The requests this node carried out as a primary, so that retries are not applied again.
    applied: applied::Applied,
}

impl Caches {
    /// The caches of the node `node` (of `generation`, its frames to other nodes carrying up
    /// to `max_message_size` bytes), with sweeping of expired entries and, in a cluster,
    /// rebalancing going until `shutdown`.
    pub fn start(
        node: &str,
        generation: u64,
        cluster: Option<Arc<Cluster>>,
        peers: Arc<Peers>,
        data_dir: PathBuf,
        max_message_size: u64,
        shutdown: Shutdown,
    ) -> Arc<Caches> {
        let caches = Arc::new(Caches {
            node: node.to_string(),
            writer: writer_id(node, generation),
            page_bytes: page_bytes(max_message_size),
            cluster,
            peers,
            data_dir,
            persistence: Mutex::new(None),
            caches: Mutex::new(BTreeMap::new()),
            opening: tokio::sync::Mutex::new(()),
            next_request: std::sync::atomic::AtomicU64::new(0),
            applied: applied::Applied::default(),
        });
        tokio::spawn(caches.clone().sweep(shutdown.clone()));
        if caches.cluster.is_some() {
            tokio::spawn(caches.clone().rebalance(shutdown));
        }
        caches
    }

    fn get(&self, name: &str) -> Option<Arc<Cache>> {
        lock(&self.caches).get(name).cloned()
    }

    /// Opens the cache `name` as `open` says; answers its options (those it was created with,
    /// when it exists), or none if `lookup` found no cache.
    pub async fn open(
        &self,
        name: &str,
        open: Open,
        options: CacheOptions,
    ) -> Result<Option<CacheOptions>, CacheError> {
        if name.trim().is_empty() {
            return Err(CacheError::Invalid(
                "a cache needs a name; give it one, such as \"sessions\"".to_string(),
            ));
        }
        if options.owners == 0 {
            return Err(CacheError::Invalid(format!(
                "cache '{name}' cannot have 0 owners; give each entry at least 1 (2 by default)"
            )));
        }
        // Already open here (and done joining): nothing to wait for.
        if let Some(cache) = self.get(name)
            && open != Open::Create
            && cache.ready.load(Ordering::Acquire)
        {
            return Ok(Some(cache.options.clone()));
        }
        // A node that has just started first listens for the cluster: a cache the cluster
        // has must be joined, not made anew.
        if let Some(cluster) = &self.cluster {
            cluster.discovered().await;
        }
        let _opening = self.opening.lock().await;
        if let Some(cache) = self.get(name) {
            return match open {
                Open::Create => Err(CacheError::Exists {
                    name: name.to_string(),
                    mode: cache.options.mode,
                }),
                Open::Lookup | Open::LookupOrCreate => Ok(Some(cache.options.clone())),
            };
        }
        let elsewhere = self.cluster.as_ref().and_then(|cluster| {
            let view = cluster.view();
            let view = view.borrow();
            view.members
                .iter()
                .find_map(|member| member.caches.get(name).cloned())
        });
        match (open, elsewhere) {
            (Open::Create, Some(existing)) => Err(CacheError::Exists {
                name: name.to_string(),
                mode: existing.mode,
            }),
            (Open::Lookup, None) => Ok(None),
            (_, Some(existing)) => self.begin(name, existing).await.map(Some),
            (_, None) => self.begin(name, options).await.map(Some),
        }
    }

    /// Starts the cache on this node: reads what it persisted, receives the cluster's entries,
    /// then tells the cluster it holds the cache.
    async fn begin(
        &self,
        name: &str,
        mut options: CacheOptions,
    ) -> Result<CacheOptions, CacheError> {
        if self.cluster.is_none() && options.mode != CacheMode::Local {
            warn!(
                "cache {name}: {} caches need a cluster; it is local on this standalone node",
                options.mode
            );
            options.mode = CacheMode::Local;
        }
        let persistence = options.persist.then(|| self.persistence()).transpose()?;
        let cache = Arc::new(Cache {
            name: name.to_string(),
            options: options.clone(),
            store: Mutex::new(Store::default()),
            joined: Mutex::new(BTreeSet::new()),
            synced: Mutex::new(BTreeSet::new()),
            persistence,
            saving: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
        });
        let now = now_ms();
        if let Some(persistence) = &cache.persistence {
            let mut store = lock(&cache.store);
            for (key, entry) in persistence.load(name, now)? {
                store.merge(key, entry, now);
            }
        }
        // Visible before the transfer, so that writes copied here meanwhile are not lost.
        lock(&self.caches).insert(name.to_string(), cache.clone());
        if let Some(cluster) = &self.cluster {
            if matches!(options.mode, CacheMode::Replicated | CacheMode::Distributed) {
                self.transfer_state(&cache).await;
            }
            cache.ready.store(true, Ordering::Release);
            cluster.set_cache(name, &options).await;
        } else {
            cache.ready.store(true, Ordering::Release);
        }
        Ok(options)
    }

    /// Joins the cache on every member that holds it, taking in every entry they have.
    async fn transfer_state(&self, cache: &Cache) {
        let holders = self.members_where(|member| {
            member.name != self.node && member.caches.contains_key(&cache.name)
        });
        for holder in holders {
            self.join(cache, &holder).await;
        }
    }

    /// Joins the cache on `holder`, taking in every entry it has, page by page; gives up after
    /// ten failures in a row (about a second without an answer).
    async fn join(&self, cache: &Cache, holder: &str) {
        let mut after = None;
        let mut failures = 0;
        while failures < 10 {
            let request = PeerRequest::Join {
                after: after.clone(),
            };
            let call = self.peers.call(holder, &cache.name, request, Bytes::new());
            match call.await {
                Ok((PeerAnswer::Entries { entries, more }, values)) => {
                    failures = 0;
                    let last = entries.last().map(|entry| entry.key.clone());
                    self.merge(cache, entries, values).await;
                    if more && last.is_some() {
                        after = last;
                        continue;
                    }
                    lock(&cache.synced).insert(holder.to_string());
                    return;
                }
                answer => {
                    failures += 1;
                    debug!("joining cache {} on {holder}: {answer:?}", cache.name);
                    tokio::time::sleep(ROUTE_RETRY).await;
                }
            }
        }
    }

    fn persistence(&self) -> Result<Persistence, CacheError> {
        let mut persistence = lock(&self.persistence);
        if let Some(opened) = &*persistence {
            return Ok(opened.clone());
        }
        let opened = Persistence::open(&self.data_dir)?;
        *persistence = Some(opened.clone());
        Ok(opened)
    }

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
    async fn read_owned(&self, cache: &Cache, key: &str) -> (CacheOutcome, Bytes) {
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

    fn read(&self, cache: &Cache, key: &str) -> (CacheOutcome, Bytes) {
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
    async fn execute(
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

    /// Takes in copies from another node: those newer than this node's.
    async fn merge(&self, cache: &Cache, entries: Vec<peer::WireEntry>, values: Bytes) {
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

    /// Every cache of this node, for the management API.
    pub fn stats(&self) -> Vec<CacheStats> {
        let now = now_ms();
        lock(&self.caches)
            .values()
            .map(|cache| {
                let store = lock(&cache.store);
                CacheStats {
                    name: cache.name.clone(),
                    mode: cache.options.mode,
                    owners: (cache.options.mode == CacheMode::Distributed)
                        .then_some(cache.options.owners),
                    persist: cache.options.persist,
                    entries: store.len(now),
                    hits: store.hits,
                    misses: store.misses,
                }
            })
            .collect()
    }

    /// Forgets expired entries (and deletes them from disk) every second.
    async fn sweep(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                _ = shutdown.cancelled() => return,
            }
            let caches: Vec<Arc<Cache>> = lock(&self.caches).values().cloned().collect();
            let now = now_ms();
            for cache in caches {
                let _saving = cache.saving.lock().await;
                let gone = lock(&cache.store).sweep(now);
                if let Some(persistence) = &cache.persistence
                    && let Err(error) = persistence.forget(&cache.name, gone).await
                {
                    warn!("cache {}: {error}", cache.name);
                }
            }
        }
    }
}
