//! The journal: every persistent message, and the destinations and durable subscriptions that
//! hold them, in an embedded database (redb) in the node's data dir.
//!
//! One writer thread applies changes in batches: whatever arrived while the last commit was
//! being synced goes into the next transaction, so many concurrent publishes share one fsync
//! (group commit). [`Journal::commit`] returns once its changes are on disk;
//! [`Journal::submit`] queues changes that may be lost in a crash without harm (acknowledgements:
//! a message whose ack is lost is only redelivered).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

/// Messages by (queue, sequence number).
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// Destinations and subscriptions by key.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the journal {path} cannot be opened: {source}; if another node uses this data dir, give this one its own with -Djboss.server.data.dir"
    )]
    Open { path: String, source: redb::Error },
    #[error("the journal failed: {0}")]
    Storage(String),
    #[error("the journal has stopped")]
    Stopped,
}

impl From<redb::Error> for JournalError {
    fn from(error: redb::Error) -> Self {
        JournalError::Storage(error.to_string())
    }
}

/// One change to the journal.
#[derive(Debug, Clone)]
pub enum JournalOp {
    Put {
        queue: String,
        seq: u64,
        record: Bytes,
    },
    Delete {
        queue: String,
        seq: u64,
    },
    PutMeta {
        key: String,
        value: Bytes,
    },
    DeleteMeta {
        key: String,
    },
}

/// Changes to apply together, and who waits for them to be on disk.
struct Batch {
    ops: Vec<JournalOp>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Everything the journal held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Each queue's records, in sequence order.
    pub messages: BTreeMap<String, Vec<(u64, Bytes)>>,
    pub meta: BTreeMap<String, Bytes>,
    /// The highest sequence number used so far.
    pub max_seq: u64,
}

/// The handle to the journal's writer. Cheap to clone; the writer stops when every handle is
/// dropped, after applying what was sent.
#[derive(Clone)]
pub struct Journal {
    batches: mpsc::Sender<Batch>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads back what it holds.
    pub fn open(path: &Path) -> Result<(Journal, Recovered), JournalError> {
        let database = Database::create(path).map_err(|source| JournalError::Open {
            path: path.display().to_string(),
            source: source.into(),
        })?;
        let recovered = recover(&database)?;
        let (batches, incoming) = mpsc::channel();
        std::thread::Builder::new()
            .name("journal".to_string())
            .spawn(move || write_batches(database, incoming))
            .map_err(|error| JournalError::Storage(error.to_string()))?;
        Ok((Journal { batches }, recovered))
    }

    /// Applies `ops` and returns once they are on disk.
    pub async fn commit(&self, ops: Vec<JournalOp>) -> Result<(), JournalError> {
        let (done, committed) = oneshot::channel();
        self.batches
            .send(Batch {
                ops,
                done: Some(done),
            })
            .map_err(|_| JournalError::Stopped)?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(JournalError::Storage(message)),
            Err(_) => Err(JournalError::Stopped),
        }
    }

    /// Applies `ops` with the next commit, without waiting for it.
    pub fn submit(&self, ops: Vec<JournalOp>) {
        let _ = self.batches.send(Batch { ops, done: None });
    }
}

fn recover(database: &Database) -> Result<Recovered, redb::Error> {
    // Make sure the tables exist, so an empty journal reads back as empty.
    let setup = database.begin_write()?;
    setup.open_table(MESSAGES)?;
    setup.open_table(META)?;
    setup.commit()?;

    let mut recovered = Recovered::default();
    let read = database.begin_read()?;
    for entry in read.open_table(MESSAGES)?.iter()? {
        let (key, value) = entry?;
        let (queue, seq) = key.value();
        recovered.max_seq = recovered.max_seq.max(seq);
        recovered
            .messages
            .entry(queue.to_string())
            .or_default()
            .push((seq, Bytes::copy_from_slice(value.value())));
    }
    for entry in read.open_table(META)?.iter()? {
        let (key, value) = entry?;
        recovered.meta.insert(
            key.value().to_string(),
            Bytes::copy_from_slice(value.value()),
        );
    }
    Ok(recovered)
}

/// The writer thread: takes every batch waiting, applies them in one transaction, syncs once,
/// and tells each waiter.
fn write_batches(database: Database, incoming: mpsc::Receiver<Batch>) {
    while let Ok(first) = incoming.recv() {
        let mut batches = vec![first];
        batches.extend(incoming.try_iter());
        let outcome = apply(&database, &batches).map_err(|error| {
            tracing::error!("the journal cannot commit: {error}");
            error.to_string()
        });
        for batch in batches {
            if let Some(done) = batch.done {
                let _ = done.send(outcome.clone());
            }
        }
    }
}

fn apply(database: &Database, batches: &[Batch]) -> Result<(), redb::Error> {
    let transaction = database.begin_write()?;
    {
        let mut messages = transaction.open_table(MESSAGES)?;
        let mut meta = transaction.open_table(META)?;
        for op in batches.iter().flat_map(|batch| &batch.ops) {
            match op {
                JournalOp::Put { queue, seq, record } => {
                    messages.insert((queue.as_str(), *seq), record.as_ref())?;
                }
                JournalOp::Delete { queue, seq } => {
                    messages.remove((queue.as_str(), *seq))?;
                }
                JournalOp::PutMeta { key, value } => {
                    meta.insert(key.as_str(), value.as_ref())?;
                }
                JournalOp::DeleteMeta { key } => {
                    meta.remove(key.as_str())?;
                }
            }
        }
    }
    transaction.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(queue: &str, seq: u64, text: &str) -> JournalOp {
        JournalOp::Put {
            queue: queue.to_string(),
            seq,
            record: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[tokio::test]
    async fn what_is_committed_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        {
            let (journal, recovered) = Journal::open(&path).unwrap();
            assert!(recovered.messages.is_empty());
            journal
                .commit(vec![put("/queue/a", 1, "one"), put("/queue/a", 2, "two")])
                .await
                .unwrap();
            journal
                .commit(vec![
                    put("/queue/b", 3, "three"),
                    JournalOp::PutMeta {
                        key: "destination:/queue/a".into(),
                        value: Bytes::from_static(b"queue"),
                    },
                ])
                .await
                .unwrap();
            journal.submit(vec![JournalOp::Delete {
                queue: "/queue/a".into(),
                seq: 1,
            }]);
            // A commit after a submit means the submit is on disk too.
            journal.commit(vec![]).await.unwrap();
        }
        // The writer thread lets go of the file once its handles are dropped.
        let (_, recovered) = reopen(&path);
        assert_eq!(recovered.max_seq, 3);
        assert_eq!(
            recovered.messages["/queue/a"],
            [(2, Bytes::from_static(b"two"))]
        );
        assert_eq!(
            recovered.messages["/queue/b"],
            [(3, Bytes::from_static(b"three"))]
        );
        assert_eq!(
            recovered.meta["destination:/queue/a"],
            Bytes::from_static(b"queue")
        );
    }

    #[tokio::test]
    async fn concurrent_commits_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        {
            let (journal, _) = Journal::open(&path).unwrap();
            let commits = (0..200u64).map(|seq| {
                let journal = journal.clone();
                tokio::spawn(async move { journal.commit(vec![put("/queue/c", seq, "x")]).await })
            });
            for commit in commits {
                commit.await.unwrap().unwrap();
            }
        }
        let (_, recovered) = reopen(&path);
        assert_eq!(recovered.messages["/queue/c"].len(), 200);
    }

    /// Opens the journal again, waiting for the last writer thread to let go of the file.
    fn reopen(path: &Path) -> (Journal, Recovered) {
        for _ in 0..100 {
            if let Ok(opened) = Journal::open(path) {
                return opened;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Journal::open(path).unwrap()
    }
}
