//! Caches the node keeps for the app, shared with every app of the cluster that opens the same
//! name: `local`, `replicated` (every member holds every entry), `distributed` (each entry on
//! two members by default) or `invalidated`. A standalone node keeps every cache local.
//!
//! ```no_run
//! # async fn example(app: immutant::App) -> immutant::Result<()> {
//! use immutant::cache::CacheMode;
//!
//! let counts = app.cache("counts").mode(CacheMode::Replicated).lookup_or_create().await?;
//! counts.put("visits", &0u64).await?;
//! let visits = counts.swap("visits", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
//! assert_eq!(counts.get::<u64>("visits").await?, Some(visits));
//! # Ok(())
//! # }
//! ```
//!
//! Keys are anything serde can write (strings are used as they are); values are serde values
//! (as JSON) or raw bytes. In a cluster every write to a replicated or distributed cache is
//! applied by the cache's primary (one member at a time, under a lease) and returns once every
//! owner has it, unless the cache was made with `sync(false)`; compare-and-set (`replace`,
//! `put_if_absent`, `swap`) never loses an update. [`Cache::get`] reads the copy on this app's
//! node, which may lag a write another node just made; [`Cache::get_latest`] reads at the
//! primary and sees every write that returned before it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
pub use immutant_protocol::{CacheMode, Expiry};
use immutant_protocol::{CacheOp, CacheOptions, CacheOutcome, Frame, Header, Open};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::fence::operation_epoch;

/// A cache to open: `app.cache("name").mode(..).ttl(..).lookup_or_create().await`.
pub struct CacheBuilder {
    connection: Connection,
    name: String,
    options: CacheOptions,
}

impl CacheBuilder {
    pub(crate) fn new(connection: Connection, name: &str) -> Self {
        CacheBuilder {
            connection,
            name: name.to_string(),
            options: CacheOptions::default(),
        }
    }

    /// How the cluster keeps the entries; `distributed` by default.
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.options.mode = mode;
        self
    }

    /// How many members hold each entry of a distributed cache; 2 by default.
    pub fn owners(mut self, owners: u32) -> Self {
        self.options.owners = owners;
        self
    }

    /// Whether writes wait for every owner; true by default.
    pub fn sync(mut self, sync: bool) -> Self {
        self.options.sync = sync;
        self
    }

    /// Entries expire this long after they are written, unless a write says otherwise.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.expiry.ttl_ms = Some(ttl.as_millis() as u64);
        self
    }

    /// Entries expire after this long without a read or write.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.options.expiry.idle_ms = Some(idle.as_millis() as u64);
        self
    }

    /// Whether the node keeps the entries in its data dir, so that they outlive a restart.
    pub fn persist(mut self, persist: bool) -> Self {
        self.options.persist = persist;
        self
    }

    /// Makes the cache. Refused if a cache of this name exists in the cluster already: nothing
    /// is wiped (use [`lookup_or_create`](Self::lookup_or_create) to share it).
    pub async fn create(self) -> Result<Cache> {
        self.open(Open::Create).await
    }

    /// The cache of this name if the cluster has it (with the options it was made with), or
    /// a new one. What every app sharing a cache should call.
    pub async fn lookup_or_create(self) -> Result<Cache> {
        self.open(Open::LookupOrCreate).await
    }

    async fn open(self, open: Open) -> Result<Cache> {
        Cache::open(self.connection, &self.name, open, self.options)
            .await?
            .ok_or_else(|| Error::Node(format!("cache '{}' was not made", self.name)))
    }
}

/// A cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    connection: Connection,
    name: String,
    options: CacheOptions,
}

impl Cache {
    /// Opens the cache `name` as `open` says; none if a lookup found none.
    pub(crate) async fn open(
        connection: Connection,
        name: &str,
        open: Open,
        options: CacheOptions,
    ) -> Result<Option<Cache>> {
        let id = connection.next_id();
        let request = Header::OpenCache {
            id,
            name: name.to_string(),
            open,
            options,
        };
        let answer = connection.call(id, Frame::new(request)).await?;
        Ok(match answer.header {
            Header::CacheOpened {
                options: Some(options),
                ..
            } => Some(Cache {
                connection,
                name: name.to_string(),
                options,
            }),
            _ => None,
        })
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the cache keeps its entries (local on a standalone node, whatever was asked).
    pub fn mode(&self) -> CacheMode {
        self.options.mode
    }

    /// The value of `key`, if it has one.
    pub async fn get<V: DeserializeOwned>(&self, key: impl Serialize) -> Result<Option<V>> {
        decode(self.get_bytes(key).await?)
    }

    /// The value of `key` as bytes, if it has one.
    pub async fn get_bytes(&self, key: impl Serialize) -> Result<Option<Bytes>> {
        let key = key_of(key)?;
        self.read(CacheOp::Get { key }).await
    }

    /// The value of `key` as the cache's primary holds it: unlike [`Cache::get`], which reads
    /// the copy on this app's node and may miss a write another node just made, it sees every
    /// write that returned before it was called (a linearizable read), at the cost of a round
    /// trip to the primary.
    pub async fn get_latest<V: DeserializeOwned>(&self, key: impl Serialize) -> Result<Option<V>> {
        decode(self.get_latest_bytes(key).await?)
    }

    /// The value of `key` as bytes, as the cache's primary holds it (see [`Cache::get_latest`]).
    pub async fn get_latest_bytes(&self, key: impl Serialize) -> Result<Option<Bytes>> {
        let key = key_of(key)?;
        self.read(CacheOp::GetLatest { key }).await
    }

    async fn read(&self, get: CacheOp) -> Result<Option<Bytes>> {
        let (outcome, value) = self.run(get, Bytes::new()).await?;
        Ok(outcome.found.then_some(value))
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Serialize, value: &impl Serialize) -> Result<()> {
        self.put_bytes(key, encode(value)?, None).await
    }

    /// Sets `key` to `value`, expiring as `expiry` says rather than as the cache does.
    pub async fn put_with(
        &self,
        key: impl Serialize,
        value: &impl Serialize,
        expiry: Expiry,
    ) -> Result<()> {
        self.put_bytes(key, encode(value)?, Some(expiry)).await
    }

    /// Sets `key` to raw bytes (with its own expiry, if given).
    pub async fn put_bytes(
        &self,
        key: impl Serialize,
        value: Bytes,
        expiry: Option<Expiry>,
    ) -> Result<()> {
        let key = key_of(key)?;
        self.run(CacheOp::Put { key, expiry }, value).await?;
        Ok(())
    }

    /// Sets `key` to `value` unless it has a value; answers that value if it had one (and
    /// nothing was written), none if `value` was stored.
    pub async fn put_if_absent<V: Serialize + DeserializeOwned>(
        &self,
        key: impl Serialize,
        value: &V,
    ) -> Result<Option<V>> {
        self.put_if_absent_with(key, value, None).await
    }

    /// [`Cache::put_if_absent`], with an expiry of its own (if given) for what it stores.
    pub async fn put_if_absent_with<V: Serialize + DeserializeOwned>(
        &self,
        key: impl Serialize,
        value: &V,
        expiry: Option<Expiry>,
    ) -> Result<Option<V>> {
        let key = key_of(key)?;
        let op = CacheOp::PutIfAbsent { key, expiry };
        let (outcome, existing) = self.run(op, encode(value)?).await?;
        decode((!outcome.applied).then_some(existing))
    }

    /// Sets `key` to `new` only if its value is `expected` (compare and swap); true if it did.
    pub async fn replace<V: Serialize>(
        &self,
        key: impl Serialize,
        expected: &V,
        new: &V,
    ) -> Result<bool> {
        let (expected, new) = (encode(expected)?, encode(new)?);
        let (outcome, _) = self.set_if(key_of(key)?, Some(expected), new).await?;
        Ok(outcome.applied)
    }

    /// Sets `key` to `new` if its value is `expected` (none: if it has none). When it does not,
    /// the answer holds the value the key has (if `found`).
    async fn set_if(
        &self,
        key: String,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> Result<(CacheOutcome, Bytes)> {
        let Some(expected) = expected else {
            return self
                .run(CacheOp::PutIfAbsent { key, expiry: None }, new)
                .await;
        };
        let op = CacheOp::Replace {
            key,
            expected_len: expected.len() as u64,
            expiry: None,
        };
        let mut body = BytesMut::with_capacity(expected.len() + new.len());
        body.extend_from_slice(&expected);
        body.extend_from_slice(&new);
        self.run(op, body.freeze()).await
    }

    /// Removes `key`; true if it had a value.
    pub async fn remove(&self, key: impl Serialize) -> Result<bool> {
        let key = key_of(key)?;
        let (outcome, _) = self.run(CacheOp::Remove { key }, Bytes::new()).await?;
        Ok(outcome.applied)
    }

    /// Removes every entry, on every member.
    pub async fn clear(&self) -> Result<()> {
        self.run(CacheOp::Clear {}, Bytes::new()).await?;
        Ok(())
    }

    /// Sets `key` to `f` of its value (none if it has none), retrying if another writer got
    /// there first, so that no update is lost; answers the value written. `f` may run more
    /// than once.
    pub async fn swap<V, F>(&self, key: impl Serialize, mut f: F) -> Result<V>
    where
        V: Serialize + DeserializeOwned,
        F: FnMut(Option<V>) -> V,
    {
        let key = key_of(key)?;
        let get = CacheOp::Get { key: key.clone() };
        let (outcome, value) = self.run(get, Bytes::new()).await?;
        let mut current = outcome.found.then_some(value);
        loop {
            let old = current
                .as_ref()
                .map(|bytes| serde_json::from_slice(bytes))
                .transpose()?;
            let new = f(old);
            let (outcome, now) = self.set_if(key.clone(), current, encode(&new)?).await?;
            if outcome.applied {
                return Ok(new);
            }
            // Another writer got there first: go again from the value it left.
            current = outcome.found.then_some(now);
        }
    }

    async fn run(&self, call: CacheOp, body: Bytes) -> Result<(CacheOutcome, Bytes)> {
        self.connection.check_size(body.len())?;
        let epoch = operation_epoch()?;
        let id = self.connection.next_id();
        let request = Header::CacheCall {
            id,
            cache: self.name.clone(),
            call,
            epoch,
        };
        let answer = self
            .connection
            .call(id, Frame::with_body(request, body))
            .await?;
        match answer.header {
            Header::CacheReply { outcome, .. } => Ok((outcome, answer.body)),
            _ => Err(Error::Node(format!(
                "the node answered a call on cache '{}' with something else",
                self.name
            ))),
        }
    }
}

/// A key as the node keys entries: a string as it is, anything else as its JSON.
fn key_of(key: impl Serialize) -> Result<String> {
    Ok(match serde_json::to_value(key)? {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    })
}

fn encode(value: &impl Serialize) -> Result<Bytes> {
    Ok(serde_json::to_vec(value)?.into())
}

fn decode<V: DeserializeOwned>(value: Option<Bytes>) -> Result<Option<V>> {
    value
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_keys_are_kept_as_they_are_and_others_as_json() {
        assert_eq!(key_of("visits").unwrap(), "visits");
        assert_eq!(key_of(42).unwrap(), "42");
        assert_eq!(key_of(("a", 1)).unwrap(), r#"["a",1]"#);
    }
}
