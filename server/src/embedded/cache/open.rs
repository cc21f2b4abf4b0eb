//! Opening a cache on this node, or looking it up: made anew, or joined where the cluster
//! already has it, taking in every entry its holders have (state transfer) before it serves.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use immutant_protocol::{CacheMode, CacheOptions, Open};
use tracing::{debug, warn};

use super::peer::{PeerAnswer, PeerRequest};
use super::persist::Persistence;
use super::store::Store;
use super::{Cache, Caches, ROUTE_RETRY};
use crate::vocabulary::cache::{CacheError, check_name};
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

impl Caches {
    /// Opens the cache `name` as `open` says; answers its options (those it was created with,
    /// when it exists), or none if `lookup` found no cache.
    pub async fn open(
        &self,
        name: &str,
        open: Open,
        options: CacheOptions,
    ) -> Result<Option<CacheOptions>, CacheError> {
        check_name(name)?;
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
    pub(super) async fn join(&self, cache: &Cache, holder: &str) {
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
}
