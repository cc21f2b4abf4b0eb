//! The journal: every persistent message, and the destinations and durable subscriptions that
//! hold them, in an embedded database (redb) in the node's data dir.
//!
//! One writer thread applies changes in batches: whatever arrived while the last commit was
//! being synced goes into the next transaction, so many concurrent publishes share one fsync
//! (group commit). [`Journal::commit`] returns once its changes are on disk;
//! [`Journal::submit`] queues changes that may be lost in a crash without harm (acknowledgements:
//! a message whose ack is lost is only redelivered).
//!
//! The journal pages: opening it reads back only the first page of each queue
//! ([`PAGE_MESSAGES`] or [`PAGE_BYTES`]), and the broker reads the rest with [`Journal::read`]
//! as its queues drain, so a deep queue stays on disk rather than in memory.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, mpsc};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

/// Messages by (queue, sequence number).
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// Destinations and subscriptions by key.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// How much of a queue is read into memory at once (a page): this many messages, or this many
/// bytes of them, whichever comes first.
pub const PAGE_MESSAGES: usize = 4096;
pub const PAGE_BYTES: usize = 16 * 1024 * 1024;
/// The memory the database may cache its pages in (redb's default is 1 GiB, which a deep
/// queue's writes would fill).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

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

impl From<JournalError> for crate::vocabulary::messaging::MessagingError {
    fn from(error: JournalError) -> Self {
        Self::Storage(Box::new(error))
    }
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
}

/// Changes to apply together, and who waits for them to be on disk.
struct Batch {
    ops: Vec<JournalOp>,
    done: Waiter,
}

/// Who waits for a batch to be on disk.
enum Waiter {
    Nobody,
    Task(oneshot::Sender<Result<(), String>>),
    /// A thread that blocks for it (the broker reading a page back under its lock).
    Thread(mpsc::Sender<Result<(), String>>),
}

/// The META key of the highest sequence number ever journaled: kept so that one is never used
/// again after a restart, even once its record is gone.
const HIGHEST_SEQ: &str = "highest-seq";

/// What the journal held when it was opened: its metadata, and the first page of each queue.
#[derive(Debug)]
pub struct Recovered {
    /// Each queue's first page.
    pub pages: BTreeMap<String, PageRead>,
    pub meta: BTreeMap<String, Bytes>,
    /// The highest sequence number ever journaled.
    pub max_seq: u64,
    /// How many records each queue with more than its first page held beyond it when the
    /// journal was opened, as a thread counts them (a deep queue takes a while).
    pub beyond_first_page: mpsc::Receiver<(String, u64)>,
}

/// Up to a page of one queue's records, in sequence order.
#[derive(Debug, Default)]
pub struct PageRead {
    pub records: Vec<(u64, Bytes)>,
    /// Whether the queue has more records after these.
    pub more: bool,
}

/// Reads up to a page of `queue`'s records with sequence numbers in `seqs`.
fn read_page(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    queue: &str,
    seqs: std::ops::Range<u64>,
) -> Result<PageRead, redb::Error> {
    let mut page = PageRead::default();
    let mut bytes = 0;
    for entry in table.range((queue, seqs.start)..(queue, seqs.end))? {
        let (key, value) = entry?;
        if page.records.len() >= PAGE_MESSAGES || bytes >= PAGE_BYTES {
            page.more = true;
            break;
        }
        bytes += value.value().len();
        page.records
            .push((key.value().1, Bytes::copy_from_slice(value.value())));
    }
    Ok(page)
}

/// The database, shared by the writer and page reads; taken out (and closed) by
/// [`Journal::close`].
type Shared = Arc<std::sync::RwLock<Option<Database>>>;

/// The handle to the journal's writer, and to read pages back. Cheap to clone; the writer stops
/// when every handle is dropped, after applying what was sent.
#[derive(Clone)]
pub struct Journal {
    batches: mpsc::Sender<Batch>,
    /// The database, until the journal is closed.
    database: Shared,
    /// Whether each commit also saves the allocator's state (see [`Journal::set_quick_repair`]).
    quick_repair: Arc<std::sync::atomic::AtomicBool>,
    /// Whether a message was submitted (not waited for) since the last flush.
    unflushed: Arc<std::sync::atomic::AtomicBool>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads back what it holds.
    pub fn open(path: &Path) -> Result<(Journal, Recovered), JournalError> {
        let database = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| JournalError::Open {
                path: path.display().to_string(),
                source: source.into(),
            })?;
        let recovered = recover(&database)?;
        let database: Shared = Arc::new(std::sync::RwLock::new(Some(database)));
        let (batches, incoming) = mpsc::channel();
        let (writer, highest) = (database.clone(), recovered.max_seq);
        let quick_repair = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quick = quick_repair.clone();
        std::thread::Builder::new()
            .name("journal".to_string())
            .spawn(move || write_batches(&writer, incoming, (highest, &quick)))
            .map_err(|error| JournalError::Storage(error.to_string()))?;
        let journal = Journal {
            batches,
            database,
            quick_repair,
            unflushed: Default::default(),
        };
        Ok((journal, recovered))
    }

    /// Whether each commit from now on also saves the allocator's state, so that opening the
    /// journal after a crash is quick; without, it walks the whole file (seconds per
    /// gigabyte). Commits take about twice as long.
    pub fn set_quick_repair(&self, quick: bool) {
        self.quick_repair
            .store(quick, std::sync::atomic::Ordering::Relaxed);
    }

    /// Up to a page of `queue`'s records from sequence number `from` on, and below `below`, as
    /// committed now.
    pub fn read(&self, queue: &str, from: u64, below: u64) -> Result<PageRead, JournalError> {
        let database = self
            .database
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let database = database.as_ref().ok_or(JournalError::Stopped)?;
        let read = database.begin_read().map_err(redb::Error::from)?;
        let table = read.open_table(MESSAGES).map_err(redb::Error::from)?;
        Ok(read_page(&table, queue, from..below)?)
    }

    /// Writes what was sent, then closes the database, so that it opens again without a
    /// repair (which walks the whole file after a crash). Nothing is written after.
    pub async fn close(&self) {
        if let Err(error) = self.commit(Vec::new()).await {
            tracing::warn!("the journal could not flush: {error}");
        }
        let database = self
            .database
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(database);
    }

    /// Blocks the calling thread until every message submitted so far is on disk, if one was
    /// since the last time.
    pub fn flush_submitted(&self) -> Result<(), JournalError> {
        use std::sync::atomic::Ordering;
        if !self.unflushed.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        self.flush_blocking()
            .inspect_err(|_| self.unflushed.store(true, Ordering::Relaxed))
    }

    /// Blocks the calling thread until every change sent so far is on disk.
    fn flush_blocking(&self) -> Result<(), JournalError> {
        let (done, flushed) = mpsc::channel();
        let batch = Batch {
            ops: Vec::new(),
            done: Waiter::Thread(done),
        };
        self.batches
            .send(batch)
            .map_err(|_| JournalError::Stopped)?;
        match flushed.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(JournalError::Storage(message)),
            Err(_) => Err(JournalError::Stopped),
        }
    }

    /// Applies `ops` and returns once they are on disk.
    pub async fn commit(&self, ops: Vec<JournalOp>) -> Result<(), JournalError> {
        let (done, committed) = oneshot::channel();
        self.batches
            .send(Batch {
                ops,
                done: Waiter::Task(done),
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
        if ops.iter().any(|op| matches!(op, JournalOp::Put { .. })) {
            self.unflushed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = self.batches.send(Batch {
            ops,
            done: Waiter::Nobody,
        });
    }
}

fn recover(database: &Database) -> Result<Recovered, redb::Error> {
    // Make sure the tables exist, so an empty journal reads back as empty.
    let setup = database.begin_write()?;
    setup.open_table(MESSAGES)?;
    setup.open_table(META)?;
    setup.commit()?;

    let read = database.begin_read()?;
    let mut meta = BTreeMap::new();
    for entry in read.open_table(META)?.iter()? {
        let (key, value) = entry?;
        meta.insert(
            key.value().to_string(),
            Bytes::copy_from_slice(value.value()),
        );
    }
    let mut max_seq = meta
        .get(HIGHEST_SEQ)
        .and_then(|value| Some(u64::from_be_bytes(value.as_ref().try_into().ok()?)))
        .unwrap_or(0);
    let messages = read.open_table(MESSAGES)?;
    // Queue by queue: its first page, and its last record (for the highest sequence number),
    // then on to the first record past its last.
    let mut pages = BTreeMap::new();
    let mut next = messages.first()?.map(|(key, _)| key.value().0.to_string());
    while let Some(queue) = next {
        let page = read_page(&messages, &queue, 0..u64::MAX)?;
        let last = messages
            .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))?
            .next_back()
            .transpose()?
            .map_or(0, |(key, _)| key.value().1);
        max_seq = max_seq.max(last);
        next = messages
            .range::<(&str, u64)>((
                Bound::Excluded((queue.as_str(), u64::MAX)),
                Bound::Unbounded,
            ))?
            .next()
            .transpose()?
            .map(|(key, _)| key.value().0.to_string());
        pages.insert(queue, page);
    }
    // Counted in this same snapshot: a page read back meanwhile is one it counts.
    let deep: Vec<(String, u64)> = pages
        .iter()
        .filter(|(_, page)| page.more)
        .filter_map(|(queue, page)| Some((queue.clone(), page.records.last()?.0 + 1)))
        .collect();
    let (counts, beyond_first_page) = mpsc::channel();
    if !deep.is_empty() {
        let _ = std::thread::Builder::new()
            .name("journal-count".to_string())
            .spawn(move || {
                for (queue, from) in deep {
                    match count(&messages, &queue, from) {
                        Ok(count) => {
                            let _ = counts.send((queue, count));
                        }
                        Err(error) => tracing::warn!("cannot count {queue}'s messages: {error}"),
                    }
                }
            });
    }
    Ok(Recovered {
        pages,
        meta,
        max_seq,
        beyond_first_page,
    })
}

/// How many of `queue`'s records have sequence numbers from `from` on.
fn count(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    queue: &str,
    from: u64,
) -> Result<u64, redb::Error> {
    let mut count = 0;
    for entry in table.range((queue, from)..=(queue, u64::MAX))? {
        entry?;
        count += 1;
    }
    Ok(count)
}

/// The writer thread: takes every batch waiting, applies them in one transaction, syncs once,
/// and tells each waiter.
fn write_batches(
    database: &Shared,
    incoming: mpsc::Receiver<Batch>,
    (mut highest, quick_repair): (u64, &std::sync::atomic::AtomicBool),
) {
    while let Ok(first) = incoming.recv() {
        let mut batches = vec![first];
        batches.extend(incoming.try_iter());
        let quick = quick_repair.load(std::sync::atomic::Ordering::Relaxed);
        let outcome = match database
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            Some(database) => {
                let started = std::time::Instant::now();
                let applied = apply(database, &batches, (&mut highest, quick));
                metrics::histogram!("immutant_journal_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                applied.map_err(|error| {
                    tracing::error!("the journal cannot commit: {error}");
                    error.to_string()
                })
            }
            None => Err(JournalError::Stopped.to_string()),
        };
        for batch in batches {
            match batch.done {
                Waiter::Nobody => {}
                Waiter::Task(done) => {
                    let _ = done.send(outcome.clone());
                }
                Waiter::Thread(done) => {
                    let _ = done.send(outcome.clone());
                }
            }
        }
    }
}

/// Applies the batches in one transaction, keeping the highest sequence number ever journaled
/// (`highest`) in META; saving the allocator's state too with `quick_repair`.
fn apply(
    database: &Database,
    batches: &[Batch],
    (highest, quick_repair): (&mut u64, bool),
) -> Result<(), redb::Error> {
    let newest = batches
        .iter()
        .flat_map(|batch| &batch.ops)
        .filter_map(|op| match op {
            JournalOp::Put { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut transaction = database.begin_write()?;
    transaction.set_quick_repair(quick_repair);
    {
        let mut messages = transaction.open_table(MESSAGES)?;
        let mut meta = transaction.open_table(META)?;
        if newest > *highest {
            meta.insert(HIGHEST_SEQ, newest.to_be_bytes().as_slice())?;
        }
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
            }
        }
    }
    transaction.commit()?;
    *highest = (*highest).max(newest);
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
            assert!(recovered.pages.is_empty());
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
            // A number used and gone is never used again.
            journal
                .commit(vec![put("/queue/z", 10, "z")])
                .await
                .unwrap();
            journal.submit(vec![JournalOp::Delete {
                queue: "/queue/z".into(),
                seq: 10,
            }]);
            // A commit after a submit means the submit is on disk too.
            journal.commit(vec![]).await.unwrap();
        }
        // The writer thread lets go of the file once its handles are dropped.
        let (_, recovered) = reopen(&path);
        assert_eq!(recovered.max_seq, 10);
        assert!(!recovered.pages.contains_key("/queue/z"));
        assert_eq!(
            recovered.pages["/queue/a"].records,
            [(2, Bytes::from_static(b"two"))]
        );
        assert_eq!(
            recovered.pages["/queue/b"].records,
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
        assert_eq!(recovered.pages["/queue/c"].records.len(), 200);
    }

    #[tokio::test]
    async fn a_deep_queue_is_read_back_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let deep = PAGE_MESSAGES as u64 * 2 + 10;
        {
            let (journal, _) = Journal::open(&path).unwrap();
            let ops = (1..=deep).map(|seq| put("/queue/deep", seq, "x")).collect();
            journal
                .commit(vec![put("/queue/after", deep + 1, "y")])
                .await
                .unwrap();
            journal.commit(ops).await.unwrap();
        }
        let (journal, recovered) = reopen(&path);
        assert_eq!(recovered.max_seq, deep + 1);
        let first = &recovered.pages["/queue/deep"];
        assert_eq!(first.records.len(), PAGE_MESSAGES);
        assert!(first.more);
        assert!(!recovered.pages["/queue/after"].more);
        let second = journal
            .read("/queue/deep", PAGE_MESSAGES as u64 + 1, u64::MAX)
            .unwrap();
        assert_eq!(second.records[0].0, PAGE_MESSAGES as u64 + 1);
        assert!(second.more);
        let last = journal
            .read("/queue/deep", 2 * PAGE_MESSAGES as u64 + 1, u64::MAX)
            .unwrap();
        assert_eq!(last.records.len(), 10);
        assert!(!last.more);
        // Short of a message being stored.
        let short = journal.read("/queue/deep", 1, 6).unwrap();
        assert_eq!(short.records.len(), 5);
        // What lay beyond the first page was counted.
        let (queue, count) = recovered.beyond_first_page.recv().unwrap();
        let beyond = deep - PAGE_MESSAGES as u64;
        assert_eq!((queue.as_str(), count), ("/queue/deep", beyond));
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
