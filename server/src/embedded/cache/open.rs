//! Opening a cache on this node, or looking it up: made anew, or joined where the cluster
//! already has it, taking in every entry its primary has (state transfer) before it serves.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use immutant_protocol::{CacheMode, CacheOptions, Open};
use tracing::{debug, warn};

use super::peer::{PeerAnswer, PeerRequest, Record, unpack};
use super::persist::Persistence;
use super::store::{Gathered, Store};
use super::{Cache, Caches, ROUTE_PATIENCE, ROUTE_RETRY};
use crate::vocabulary::cache::{CacheError, check_name};
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

impl Caches {
    /// Opens the cache `name` as `open` says; answers its options (those it was created with,
    /// when it exists), or none if `lookup` found no cache.
    pub async fn open(
        self: &Arc<Self>,
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
        let name_lock = lock(&self.opening)
            .entry(name.to_string())
            .or_default()
            .clone();
        let opened = {
            let _opening = name_lock.lock().await;
            self.open_alone(name, open, options).await
        };
        // The last one through forgets the name's lock.
        let mut locks = lock(&self.opening);
        if Arc::strong_count(&name_lock) == 2 {
            locks.remove(name);
        }
        opened
    }

    /// Opens the cache `name`, the only one opening it here.
    async fn open_alone(
        self: &Arc<Self>,
        name: &str,
        open: Open,
        options: CacheOptions,
    ) -> Result<Option<CacheOptions>, CacheError> {
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

    /// Starts the cache on this node: reads what it persisted, receives the primary's entries,
    /// then tells the cluster it holds the cache, and stands for its primary from then on.
    async fn begin(
        self: &Arc<Self>,
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
            store: Mutex::new(Store::opened(now_ms())),
            joined: Mutex::new(BTreeSet::new()),
            missed: Mutex::default(),
            primacy: Mutex::default(),
            term: Mutex::default(),
            pending: Default::default(),
            applied: Default::default(),
            side_writes: Mutex::default(),
            persistence,
            saving: tokio::sync::Mutex::new(()),
            following: tokio::sync::Mutex::new(()),
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
        let shared = matches!(options.mode, CacheMode::Replicated | CacheMode::Distributed);
        if let Some(cluster) = &self.cluster {
            // The primary's entries before any read: tried while a primary leads the cache,
            // for as long as an operation looks for one.
            let give_up = tokio::time::Instant::now() + ROUTE_PATIENCE;
            while shared && tokio::time::Instant::now() < give_up {
                let Some((primary, Some(_))) = self.primary(&cache) else {
                    break;
                };
                if self.follow(&cache, &primary, Some(give_up)).await {
                    break;
                }
            }
            cache.ready.store(true, Ordering::Release);
            cluster.set_cache(name, &options).await;
            if shared {
                tokio::spawn(self.clone().lead(cache));
            }
        } else {
            cache.ready.store(true, Ordering::Release);
        }
        Ok(options)
    }

    /// Joins the cache on its `primary`, taking in every entry it has, page by page, in place
    /// of what this node holds from older primaries; true once done. Gives up after ten failed
    /// tries in a row (each a refusal, or no answer within a call's timeout), or at `give_up`,
    /// to try again later.
    pub(super) async fn follow(
        &self,
        cache: &Cache,
        primary: &str,
        give_up: Option<tokio::time::Instant>,
    ) -> bool {
        let _following = cache.following.lock().await;
        let give_up = give_up.unwrap_or_else(|| tokio::time::Instant::now() + ROUTE_PATIENCE);
        for _ in 0..10 {
            lock(&cache.store).track();
            let join = |after| PeerRequest::Join { after };
            let fetched = self.state_of(cache, primary, join);
            let Ok(fetched) = tokio::time::timeout_at(give_up, fetched).await else {
                return false;
            };
            match fetched {
                Ok(state) => {
                    self.adopt(cache, state).await;
                    return true;
                }
                Err(answer) => {
                    debug!("joining cache {} on {primary}: {answer:?}", cache.name);
                    tokio::time::sleep(ROUTE_RETRY).await;
                }
            }
        }
        false
    }

    /// Every entry `holder` has of `cache`, with the epoch of the primary whose state they are
    /// and the outcomes of writes it knows, page by page as `request` asks for the page after a
    /// key; or the first answer that was not a page (none if no answer came, or a page was cut
    /// short).
    pub(super) async fn state_of(
        &self,
        cache: &Cache,
        holder: &str,
        request: impl Fn(Option<String>) -> PeerRequest,
    ) -> Result<HolderState, Option<PeerAnswer>> {
        let mut state = HolderState::default();
        let mut after = None;
        loop {
            let call = self
                .peers
                .call(holder, &cache.name, request(after), Bytes::new());
            match call.await {
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
                    let page = unpack(entries, values, now_ms()).ok_or(None)?;
                    state.state.entries.extend(page);
                    state.state.synced = synced;
                    state.records.extend(records);
                    if !more || last.is_none() {
                        return Ok(state);
                    }
                    after = last;
                }
                Ok((answer, _)) => return Err(Some(answer)),
                Err(_) => return Err(None),
            }
        }
    }

    /// Takes in `primary`'s state (its entries, and the outcomes it knows) in place of this
    /// node's.
    async fn adopt(&self, cache: &Cache, primary: HolderState) {
        let epoch = primary.state.synced;
        let _saving = cache.saving.lock().await;
        let (replaced, side_writes) = {
            let mut store = lock(&cache.store);
            // This node led a side of its own (a partition) under the state it holds: what it
            // answered there goes to the new primary (see `heal`). Not if the store refuses
            // the state (a newer primary fenced it since).
            let led = store.synced > 0 && cache.led(store.synced);
            let side_writes =
                if led && store.synced < epoch && epoch >= store.fenced() && self.sides_may_split()
                {
                    store.side_writes(&primary.state.entries, self.writer, now_ms())
                } else {
                    Vec::new()
                };
            let replaced = store.adopt(primary.state.entries, epoch, now_ms());
            if store.synced == epoch {
                cache.applied.forget_before(epoch);
                for record in primary.records {
                    cache.applied.record(record);
                }
            }
            (replaced, side_writes)
        };
        cache.save_replaced(replaced).await;
        // Handed by the rebalance that follows, not here: the primary's copies of them to a
        // persisted cache wait for this node's save lock, held until this join ends.
        lock(&cache.side_writes).extend(side_writes);
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

/// A holder's entries (with the epoch of the primary whose state they are) and the outcomes of
/// writes it knows, as a join or a gathering brings them.
#[derive(Debug, Default)]
pub(super) struct HolderState {
    pub state: Gathered,
    pub records: Vec<Record>,
}
