//! Caches on whichever engine runs: the embedded engine's replicated and distributed caches, or
//! buckets in NATS JetStream. A local cache stays on its node on both engines: the embedded
//! engine's local caches serve it.

use std::sync::Arc;

use bytes::Bytes;
use immutant_protocol::{CacheMode, CacheOp, CacheOptions, CacheOutcome, Open};

use crate::embedded::cache::Caches;
use crate::nats::caches::NatsCaches;
use crate::vocabulary::cache::{CacheError, CacheStats};

/// A node's caches, on whichever engine it runs.
#[derive(Clone)]
pub enum CacheService {
    Embedded(Arc<Caches>),
    /// Caches shared through NATS, and this node's local ones.
    Nats {
        shared: Arc<NatsCaches>,
        local: Arc<Caches>,
    },
}

impl CacheService {
    /// Opens the cache `name` as `open` says: the options it has, or none if it was only
    /// looked up and does not exist.
    pub async fn open(
        &self,
        name: &str,
        open: Open,
        options: CacheOptions,
    ) -> Result<Option<CacheOptions>, CacheError> {
        match self {
            CacheService::Nats { shared, .. } if options.mode != CacheMode::Local => {
                shared.open(name, open, options).await
            }
            CacheService::Embedded(caches) | CacheService::Nats { local: caches, .. } => {
                caches.open(name, open, options).await
            }
        }
    }

    /// Carries out `op` on the cache `name`: the outcome, and the value before. One made under
    /// a singleton lease is not tried after the lease's deadline `fence_ns` (on the boot
    /// clock).
    pub async fn call(
        &self,
        name: &str,
        op: CacheOp,
        body: Bytes,
        fence_ns: Option<u64>,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        match self {
            CacheService::Nats { shared, .. } if shared.holds(name) => {
                shared.call(name, op, body, fence_ns).await
            }
            // Its writes are done here or by a member at once: nothing is tried later.
            CacheService::Embedded(caches) | CacheService::Nats { local: caches, .. } => {
                caches.call(name, op, body).await
            }
        }
    }

    /// Where the engine keeps the cache `name` rather than among the members: NATS, for every
    /// cache shared through it (all but local ones).
    pub fn kept_by_engine(&self, name: &str) -> Option<String> {
        match self {
            CacheService::Nats { shared, .. } if shared.holds(name) => {
                Some(format!("NATS ({} replicas)", shared.replicas()))
            }
            _ => None,
        }
    }

    /// What the management API shows of the caches open on this node.
    pub fn stats(&self) -> Vec<CacheStats> {
        match self {
            CacheService::Embedded(caches) => caches.stats(),
            CacheService::Nats { shared, local } => {
                let mut stats = local.stats();
                stats.extend(shared.stats());
                stats.sort_by(|a, b| a.name.cmp(&b.name));
                stats
            }
        }
    }
}
