//! Caches on JetStream key-value buckets. Every cache but a local one is a bucket of its own,
//! held by `immutant.engine.replicas` NATS servers: each node reads and writes it there, so
//! every mode that shares entries (replicated, distributed, invalidated) is the same strongly
//! consistent store, and `owners` is NATS's replica count. A local cache is not here: it stays
//! on its node, in the embedded engine's local caches.
//!
//! Each write is a compare-and-set on the key's revision, made again if another node wrote the
//! key in between: `put_if_absent`, `replace` (swap) and `remove` are atomic across the cluster.
//! Entries carry their own expiry (a 2.9 server has no per-key TTL): an expired entry reads as
//! absent and is written over as if absent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation, Store};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use immutant_protocol::{CacheOp, CacheOptions, CacheOutcome, Expiry, Open};

use super::{Nats, is_conflict, time_left, token};
use crate::vocabulary::cache::{CacheError, CacheStats, check_name};
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

/// How many times a write is tried while other nodes keep writing the same key.
const WRITE_ATTEMPTS: u32 = 100;
/// Bytes before a stored value: when it expires (unix ms, 0 never), its idle time (ms, 0 none)
/// and when it was last read or written (unix ms).
const ENVELOPE: usize = 24;

/// One cache on NATS, as this node has it open.
struct NatsCache {
    options: CacheOptions,
    kv: Store,
    /// How many entries (values and removals) its bucket held at the last look.
    entries: usize,
    hits: u64,
    misses: u64,
}

/// The caches of a node whose cluster runs on NATS.
pub struct NatsCaches {
    nats: Arc<Nats>,
    /// Which caches exist in the cluster, with their options.
    registry: Store,
    open: std::sync::Mutex<HashMap<String, NatsCache>>,
}

impl NatsCaches {
    pub async fn open_registry(nats: Arc<Nats>) -> Result<Arc<NatsCaches>, super::NatsError> {
        let registry = nats.bucket("caches", Duration::ZERO).await?;
        Ok(Arc::new(NatsCaches {
            nats,
            registry,
            open: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// Opens the cache `name` as `open` says: the options it has, or none if it was only
    /// looked up and does not exist.
    pub async fn open(
        &self,
        name: &str,
        open: Open,
        options: CacheOptions,
    ) -> Result<Option<CacheOptions>, CacheError> {
        check_name(name)?;
        let key = token(name);
        let registered = || async {
            let entry = self.registry.entry(&key).await.map_err(storage)?;
            Ok::<_, CacheError>(
                entry.and_then(|entry| serde_json::from_slice::<CacheOptions>(&entry.value).ok()),
            )
        };
        let existing = match open {
            Open::Lookup => match registered().await? {
                Some(existing) => Some(existing),
                None => return Ok(None),
            },
            Open::Create | Open::LookupOrCreate => {
                let value = Bytes::from(serde_json::to_vec(&options).unwrap_or_default());
                match self.registry.create(&key, value).await {
                    Ok(_) => None,
                    Err(error) if is_conflict(&error) => registered().await?,
                    Err(error) => return Err(storage(error)),
                }
            }
        };
        let options = match (open, existing) {
            (Open::Create, Some(existing)) => {
                return Err(CacheError::Exists {
                    name: name.to_string(),
                    mode: existing.mode,
                });
            }
            (_, Some(existing)) => existing,
            (_, None) => options,
        };
        if !lock(&self.open).contains_key(name) {
            let kv = self.nats.bucket(&format!("C_{key}"), Duration::ZERO).await;
            let kv = kv.map_err(|error| CacheError::Storage(error.to_string()))?;
            lock(&self.open)
                .entry(name.to_string())
                .or_insert(NatsCache {
                    options: options.clone(),
                    kv,
                    entries: 0,
                    hits: 0,
                    misses: 0,
                });
        }
        Ok(Some(options))
    }

    /// Carries out `op` on the cache `name`: the outcome, and the value before.
    pub async fn call(
        &self,
        name: &str,
        op: CacheOp,
        body: Bytes,
        fence_ns: Option<u64>,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        let found = lock(&self.open)
            .get(name)
            .map(|cache| (cache.kv.clone(), cache.options.expiry));
        let Some((kv, defaults)) = found else {
            return Err(CacheError::NotOpen(name.to_string()));
        };
        metrics::counter!("immutant_cache_operations_total", "cache" => name.to_string(), "op" => op.kind())
            .increment(1);
        if let CacheOp::Clear {} = op {
            return clear(&kv).await;
        }
        let key = token(op.key().unwrap_or_default());
        for _ in 0..WRITE_ATTEMPTS {
            // A deposed singleton runner's write must not land after its lease's deadline.
            if time_left(fence_ns).is_zero() {
                return Err(CacheError::Invalid(format!(
                    "the singleton lease this {} on cache '{name}' was made under lapsed before it could be done, so it was not done",
                    op.kind()
                )));
            }
            let now = now_ms();
            let entry = kv.entry(&key).await.map_err(storage)?;
            let stored = entry.as_ref().and_then(|entry| live(entry, now));
            let decided = decide(&op, stored.as_ref().map(|stored| &stored.value), &body);
            // A get is answered by the bucket's stream leader (no direct gets): it is the
            // latest already.
            if let CacheOp::Get { .. } | CacheOp::GetLatest { .. } = op {
                self.counted(name, stored.is_some());
                if let Some(stored) = &stored
                    && stored.idle_ms > 0
                    && let Some(entry) = &entry
                {
                    // Kept alive by the read; lost to a concurrent write, which does the same.
                    let touched = stored.clone().touched(now);
                    let _ = kv.update(&key, touched.encode(), entry.revision).await;
                }
            }
            let Some(write) = decided.write else {
                return Ok((decided.outcome, decided.previous));
            };
            let revision = entry.as_ref().map(|entry| entry.revision);
            let expiry = match &op {
                CacheOp::Put { expiry, .. }
                | CacheOp::PutIfAbsent { expiry, .. }
                | CacheOp::Replace { expiry, .. } => expiry.unwrap_or(defaults),
                _ => Expiry::default(),
            };
            let written = match (write, revision) {
                (Some(value), Some(revision)) => {
                    let value = Stored::new(value, expiry, now).encode();
                    Written::of(kv.update(&key, value, revision).await.map(|_| ()))
                }
                (Some(value), None) => {
                    let value = Stored::new(value, expiry, now).encode();
                    Written::of(kv.create(&key, value).await.map(|_| ()))
                }
                (None, revision) => Written::of(kv.delete_expect_revision(&key, revision).await),
            };
            match written {
                Written::Done => return Ok((decided.outcome, decided.previous)),
                // Another node wrote the key first: decide again on what it wrote.
                Written::Raced => continue,
                Written::Failed(reason) => {
                    return Err(CacheError::Storage(format!(
                        "NATS at {} did not take the write: {reason}",
                        self.nats.url
                    )));
                }
            }
        }
        Err(CacheError::Unavailable {
            cache: name.to_string(),
            key: op.key().unwrap_or_default().to_string(),
        })
    }

    fn counted(&self, name: &str, hit: bool) {
        if let Some(cache) = lock(&self.open).get_mut(name) {
            if hit {
                cache.hits += 1;
            } else {
                cache.misses += 1;
            }
        }
    }

    /// What the management API shows of the caches open on this node.
    pub fn stats(&self) -> Vec<CacheStats> {
        lock(&self.open)
            .iter()
            .map(|(name, cache)| CacheStats {
                name: name.clone(),
                mode: cache.options.mode.to_string(),
                owners: Some(self.nats.replicas as u32),
                persist: true,
                entries: cache.entries as u64,
                hits: cache.hits,
                misses: cache.misses,
            })
            .collect()
    }

    /// How many NATS servers hold each cache.
    pub fn replicas(&self) -> usize {
        self.nats.replicas
    }

    /// Whether the cache `name` is open here, shared through NATS.
    pub fn holds(&self, name: &str) -> bool {
        lock(&self.open).contains_key(name)
    }
}

impl NatsCaches {
    /// Looks how many entries each open cache holds, every two seconds, for
    /// [`NatsCaches::stats`].
    pub async fn look_at_entries(
        self: Arc<Self>,
        shutdown: immutant_foundation::shutdown::Shutdown,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.cancelled() => return,
            }
            let open: Vec<(String, Store)> = lock(&self.open)
                .iter()
                .map(|(name, cache)| (name.clone(), cache.kv.clone()))
                .collect();
            for (name, kv) in open {
                let mut stream = kv.stream;
                if let Ok(info) = stream.info().await {
                    let entries = info.state.messages as usize;
                    if let Some(cache) = lock(&self.open).get_mut(&name) {
                        cache.entries = entries;
                    }
                }
            }
        }
    }
}

/// What became of a conditional write.
enum Written {
    Done,
    /// Another node wrote the key since it was read.
    Raced,
    Failed(String),
}

impl Written {
    fn of<E: std::error::Error + 'static>(result: Result<(), E>) -> Written {
        match result {
            Ok(()) => Written::Done,
            Err(error) if is_conflict(&error) => Written::Raced,
            Err(error) => Written::Failed(error.to_string()),
        }
    }
}

/// Removes every entry.
async fn clear(kv: &Store) -> Result<(CacheOutcome, Bytes), CacheError> {
    kv.stream.purge().await.map_err(storage)?;
    let outcome = CacheOutcome {
        found: false,
        applied: true,
    };
    Ok((outcome, Bytes::new()))
}

/// What an operation does to a key given its live value: its outcome, the value before, and
/// the write it makes (`Some(None)`: a removal), if any.
struct Decided {
    outcome: CacheOutcome,
    previous: Bytes,
    write: Option<Option<Bytes>>,
}

fn decide(op: &CacheOp, current: Option<&Bytes>, body: &Bytes) -> Decided {
    let found = current.is_some();
    let write = match op {
        CacheOp::Get { .. } | CacheOp::GetLatest { .. } | CacheOp::Clear {} => None,
        CacheOp::Put { .. } => Some(Some(body.clone())),
        CacheOp::PutIfAbsent { .. } => (!found).then(|| Some(body.clone())),
        CacheOp::Replace { expected_len, .. } => {
            let split = (*expected_len as usize).min(body.len());
            (current == Some(&body.slice(..split))).then(|| Some(body.slice(split..)))
        }
        CacheOp::Remove { .. } => found.then_some(None),
    };
    Decided {
        outcome: CacheOutcome {
            found,
            applied: write.is_some(),
        },
        previous: current.cloned().unwrap_or_default(),
        write,
    }
}

/// A value as the bucket holds it, with its expiry.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    expires_at_ms: u64,
    idle_ms: u64,
    touched_ms: u64,
    value: Bytes,
}

impl Stored {
    fn new(value: Bytes, expiry: Expiry, now: u64) -> Stored {
        Stored {
            expires_at_ms: expiry.ttl_ms.map_or(0, |ttl| now.saturating_add(ttl)),
            idle_ms: expiry.idle_ms.unwrap_or(0),
            touched_ms: now,
            value,
        }
    }

    fn touched(mut self, now: u64) -> Stored {
        self.touched_ms = now;
        self
    }

    fn encode(&self) -> Bytes {
        let mut bytes = BytesMut::with_capacity(ENVELOPE + self.value.len());
        bytes.put_u64(self.expires_at_ms);
        bytes.put_u64(self.idle_ms);
        bytes.put_u64(self.touched_ms);
        bytes.put_slice(&self.value);
        bytes.freeze()
    }

    fn decode(mut bytes: Bytes) -> Option<Stored> {
        if bytes.len() < ENVELOPE {
            return None;
        }
        Some(Stored {
            expires_at_ms: bytes.get_u64(),
            idle_ms: bytes.get_u64(),
            touched_ms: bytes.get_u64(),
            value: bytes,
        })
    }

    fn is_live(&self, now: u64) -> bool {
        (self.expires_at_ms == 0 || now < self.expires_at_ms)
            && (self.idle_ms == 0 || now < self.touched_ms.saturating_add(self.idle_ms))
    }
}

/// The live value an entry holds, if any.
fn live(entry: &Entry, now: u64) -> Option<Stored> {
    if entry.operation != Operation::Put {
        return None;
    }
    Stored::decode(entry.value.clone()).filter(|stored| stored.is_live(now))
}

fn storage(error: impl std::fmt::Display) -> CacheError {
    CacheError::Storage(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        "k".to_string()
    }

    #[test]
    fn operations_decide_as_the_embedded_store_does() {
        let old = Bytes::from_static(b"old");
        let new = Bytes::from_static(b"new");
        let put = decide(
            &CacheOp::Put {
                key: key(),
                expiry: None,
            },
            Some(&old),
            &new,
        );
        assert_eq!((put.outcome.found, put.outcome.applied), (true, true));
        assert_eq!(put.previous, old);
        let absent = CacheOp::PutIfAbsent {
            key: key(),
            expiry: None,
        };
        assert!(decide(&absent, Some(&old), &new).write.is_none());
        assert_eq!(decide(&absent, None, &new).write, Some(Some(new.clone())));
        let swap = CacheOp::Replace {
            key: key(),
            expected_len: 3,
            expiry: None,
        };
        let body = Bytes::from_static(b"oldnew");
        assert_eq!(
            decide(&swap, Some(&old), &body).write,
            Some(Some(new.clone()))
        );
        assert!(decide(&swap, Some(&new), &body).write.is_none());
        assert!(decide(&swap, None, &body).write.is_none());
        let remove = CacheOp::Remove { key: key() };
        assert_eq!(decide(&remove, Some(&old), &Bytes::new()).write, Some(None));
        assert!(decide(&remove, None, &Bytes::new()).write.is_none());
    }

    #[test]
    fn a_stored_value_keeps_its_expiry_and_lapses() {
        let expiry = Expiry {
            ttl_ms: Some(1000),
            idle_ms: Some(100),
        };
        let stored = Stored::new(Bytes::from_static(b"v"), expiry, 5000);
        let decoded = Stored::decode(stored.encode()).unwrap();
        assert_eq!(decoded, stored);
        assert!(decoded.is_live(5099));
        assert!(!decoded.is_live(5100), "idle");
        assert!(decoded.clone().touched(5900).is_live(5950));
        assert!(!decoded.touched(5990).is_live(6000), "its time to live");
        let forever = Stored::new(Bytes::new(), Expiry::default(), 1);
        assert!(forever.is_live(u64::MAX - 1));
        assert!(Stored::decode(Bytes::from_static(b"short")).is_none());
    }
}
