//! Caches, in Infinispan's modes. Names are cluster-wide: a cache opened on one node is the
//! same cache on every member that opens it.
//!
//! - `local`: each node has its own entries (every cache of a standalone node is local);
//! - `replicated`: every member that has the cache holds every entry;
//! - `distributed`: each key lives on the cache's primary and on `owners - 1` more members
//!   chosen by rendezvous hashing over the members that have the cache;
//! - `invalidated`: each node has its own entries, and a write removes the key elsewhere.
//!
//! Every write to a replicated or distributed cache is applied by its primary: the one member
//! holding the cache's lease ([`primary`]), which copies it, with its epoch, to the key's other
//! owners; a synchronous write returns once every owner has it and only while the lease holds.
//! A node that opens a cache the cluster already has takes in the primary's entries before it
//! serves a read (state transfer), and when members come or go, distributed entries move to
//! their new owners.
//!
//! [`Caches`] is one type whose methods stand in several files: [`open`] (opening and looking
//! up a cache, joining it where the cluster has it), [`ops`] (a call on a cache from an app of
//! this node: carried out here, or sent to the cache's primary), [`primary`] (holding the
//! cache's lease, taking it over, and applying writes as its primary), [`serve`] (answering
//! other members' requests), [`placement`] (which members hold a cache, lead it and own a
//! key), [`rebalance`] (following a new primary, moving entries when members come or go) and
//! [`heal`] (what one side of a healed partition wrote, handed to the primary of the other).

mod applied;
mod heal;
mod open;
mod ops;
pub mod peer;
mod persist;
mod placement;
mod primary;
mod rebalance;
mod serve;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use immutant_protocol::{CacheMode, CacheOptions};

use tracing::warn;

use crate::embedded::cluster::Cluster;
use crate::vocabulary::cache::CacheStats;
use immutant_foundation::clock::now_ms;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;
use peer::Peers;
use persist::Persistence;
use placement::writer_id;
use rebalance::page_bytes;
use store::Store;

/// How long a write waits for the view to change after its primary did not answer.
const ROUTE_RETRY: Duration = Duration::from_millis(100);
/// How long an operation keeps looking for a primary that carries it out before giving up:
/// past a failover after a pause or a cut.
const ROUTE_PATIENCE: Duration = Duration::from_secs(20);
/// How often expired entries are swept away.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// One cache on this node.
struct Cache {
    name: String,
    options: CacheOptions,
    store: Mutex<Store>,
    /// Members that joined the cache through this node and that gossip may not show yet.
    joined: Mutex<BTreeSet<String>>,
    /// Owners this node, as primary, did not copy writes to because they were out of its view,
    /// with how many: they must take its state in again.
    missed: Mutex<BTreeMap<String, u64>>,
    /// This node's part as the cache's primary.
    primacy: Mutex<primary::Primacy>,
    /// Ends this node's current term of holding the cache's lease (see `Cache::resign`).
    term: Mutex<Shutdown>,
    /// The keys of writes applied here as primary whose copies are still on their way.
    pending: primary::Pending,
    /// The writes carried out by the cache's primaries, by request id.
    applied: applied::Applied,
    persistence: Option<Persistence>,
    /// Held from a write to its save, so that the disk sees writes in their order.
    saving: tokio::sync::Mutex<()>,
    /// The writes this node answered as the primary of its side of a partition, to hand to the
    /// primary of the side whose state it took in at the heal (see [`heal`]).
    side_writes: Mutex<Vec<(String, store::Entry)>>,
    /// Held while this node joins the cache's primary: one join at a time.
    following: tokio::sync::Mutex<()>,
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
    /// One lock per name being opened, so that two apps opening one name get one cache, while
    /// others open theirs meanwhile (a first open may wait on its primary for a while).
    opening: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Numbers this node's requests to the caches' primaries.
    next_request: std::sync::atomic::AtomicU64,
    shutdown: Shutdown,
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
            opening: Mutex::default(),
            next_request: std::sync::atomic::AtomicU64::new(0),
            shutdown: shutdown.clone(),
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

    /// Every cache of this node, for the management API.
    pub fn stats(&self) -> Vec<CacheStats> {
        let now = now_ms();
        lock(&self.caches)
            .values()
            .map(|cache| {
                let store = lock(&cache.store);
                CacheStats {
                    name: cache.name.clone(),
                    mode: cache.options.mode.to_string(),
                    owners: (cache.options.mode == CacheMode::Distributed)
                        .then_some(cache.options.owners),
                    persist: cache.options.persist,
                    entries: store.len(now) as u64,
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
