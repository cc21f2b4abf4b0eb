//! Persisted caches: their entries in `caches.redb` in the node's data dir, written before a
//! write returns, and read back when the cache is opened after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::Cache;
use super::peer::{WireEntry, pack, unpack};
use super::store::{Entry, Replaced};
use crate::vocabulary::cache::CacheError;

/// Entries by cache and key: a length-prefixed JSON [`WireEntry`], then the value.
const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");

impl Cache {
    /// Saves what replacing its entries changed, if it persists (the caller holds `saving`).
    pub(super) async fn save_replaced(&self, replaced: Replaced) {
        let Some(persistence) = &self.persistence else {
            return;
        };
        let saved = persistence.save(&self.name, replaced.saved).await;
        let forgotten = persistence.forget(&self.name, replaced.forgotten).await;
        if let Err(error) = saved.and(forgotten) {
            tracing::warn!("cache {}: {error}", self.name);
        }
    }
}

/// The database of persisted caches.
#[derive(Clone)]
pub struct Persistence {
    database: Arc<Database>,
    path: PathBuf,
}

impl Persistence {
    pub fn open(data_dir: &Path) -> Result<Persistence, CacheError> {
        let path = data_dir.join("caches.redb");
        let failed = |error: &dyn std::fmt::Display| {
            CacheError::Storage(format!("{}: {error}", path.display()))
        };
        let database = Database::create(&path).map_err(|error| failed(&error))?;
        let setup = database.begin_write().map_err(|error| failed(&error))?;
        setup.open_table(ENTRIES).map_err(|error| failed(&error))?;
        setup.commit().map_err(|error| failed(&error))?;
        Ok(Persistence {
            database: Arc::new(database),
            path,
        })
    }

    fn failed(&self, error: impl std::fmt::Display) -> CacheError {
        CacheError::Storage(format!("{}: {error}", self.path.display()))
    }

    /// Every entry saved for `cache`.
    pub fn load(&self, cache: &str, now: u64) -> Result<Vec<(String, Entry)>, CacheError> {
        let read = self.database.begin_read().map_err(|e| self.failed(e))?;
        let table = read.open_table(ENTRIES).map_err(|e| self.failed(e))?;
        let mut entries = Vec::new();
        for row in table.range((cache, "")..).map_err(|e| self.failed(e))? {
            let (key, record) = row.map_err(|e| self.failed(e))?;
            if key.value().0 != cache {
                break;
            }
            let record = Bytes::copy_from_slice(record.value());
            if let Some(entry) = decode(record, now) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Saves `changes` to `cache`, removals (tombstones) included, so that a restarted node
    /// still knows a key was removed; on disk when this returns.
    pub async fn save(&self, cache: &str, changes: Vec<(String, Entry)>) -> Result<(), CacheError> {
        let changes = changes
            .into_iter()
            .map(|(key, entry)| (key, Some(entry)))
            .collect();
        self.write(cache, changes).await
    }

    /// Deletes `keys` of `cache` from disk (expired entries, forgotten tombstones).
    pub async fn forget(&self, cache: &str, keys: Vec<String>) -> Result<(), CacheError> {
        self.write(cache, keys.into_iter().map(|key| (key, None)).collect())
            .await
    }

    async fn write(
        &self,
        cache: &str,
        changes: Vec<(String, Option<Entry>)>,
    ) -> Result<(), CacheError> {
        if changes.is_empty() {
            return Ok(());
        }
        let (this, cache) = (self.clone(), cache.to_string());
        tokio::task::spawn_blocking(move || this.commit(&cache, &changes))
            .await
            .map_err(|e| self.failed(e))?
    }

    fn commit(&self, cache: &str, changes: &[(String, Option<Entry>)]) -> Result<(), CacheError> {
        let transaction = self.database.begin_write().map_err(|e| self.failed(e))?;
        {
            let mut table = transaction
                .open_table(ENTRIES)
                .map_err(|e| self.failed(e))?;
            for (name, change) in changes {
                let key = (cache, name.as_str());
                match change {
                    Some(entry) => {
                        let record = encode(name, entry);
                        table
                            .insert(key, record.as_ref())
                            .map_err(|e| self.failed(e))?;
                    }
                    None => {
                        table.remove(key).map_err(|e| self.failed(e))?;
                    }
                }
            }
        }
        transaction.commit().map_err(|e| self.failed(e))
    }
}

fn encode(key: &str, entry: &Entry) -> Bytes {
    let (mut metas, value) = pack(&[(key.to_string(), entry.clone())]);
    let meta = serde_json::to_vec(&metas.pop()).unwrap_or_default();
    let mut record = BytesMut::with_capacity(4 + meta.len() + value.len());
    record.put_u32(meta.len() as u32);
    record.put_slice(&meta);
    record.put_slice(&value);
    record.freeze()
}

fn decode(mut record: Bytes, now: u64) -> Option<(String, Entry)> {
    let length = u32::from_be_bytes(record.get(..4)?.try_into().ok()?) as usize;
    let _ = record.split_to(4);
    let meta: WireEntry = serde_json::from_slice(record.get(..length)?).ok()?;
    let value = record.split_off(length);
    unpack(vec![meta], value, now)?.pop()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::cache::store::Version;

    #[tokio::test]
    async fn saved_entries_and_removals_load_back_and_forgotten_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let persistence = Persistence::open(dir.path()).unwrap();
        let entry = |value: Option<&'static str>| Entry {
            value: value.map(|text: &'static str| Bytes::from_static(text.as_bytes())),
            version: Version {
                epoch: 2,
                counter: 1,
                writer: 1,
            },
            expires_at_ms: None,
            idle_ms: None,
            touched_ms: 0,
        };
        let saved = vec![
            ("a".to_string(), entry(Some("one"))),
            ("b".to_string(), entry(Some("two"))),
        ];
        persistence.save("c", saved.clone()).await.unwrap();
        persistence.save("other", saved.clone()).await.unwrap();
        let removal = ("b".to_string(), entry(None));
        persistence.save("c", vec![removal.clone()]).await.unwrap();
        persistence
            .forget("other", vec!["a".to_string()])
            .await
            .unwrap();
        drop(persistence);
        let reopened = Persistence::open(dir.path()).unwrap();
        // The removal is remembered as a tombstone; a forgotten key is gone.
        assert_eq!(reopened.load("c", 0).unwrap(), [saved[0].clone(), removal]);
        assert_eq!(reopened.load("other", 0).unwrap(), saved[1..]);
    }
}
