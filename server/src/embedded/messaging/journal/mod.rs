//! The journal: every persistent message, and the destinations and durable subscriptions that
//! hold them, on disk in the node's data dir.
//!
//! A commit goes to the write-ahead log ([`wal`]) first. One thread (`journal`) takes every
//! change waiting, writes it all as one record and syncs it once (group commit): many
//! concurrent publishes share one sequential write and one `fdatasync`. [`Journal::commit`]
//! returns once its changes are there; [`Journal::submit`] queues changes that may be lost in a
//! crash without harm (acknowledgements: a message whose ack is lost is only redelivered).
//! Another thread (`journal-db`) takes each record into an embedded database ([`database`],
//! redb) without syncing, and saves it durably at checkpoints: when the log moves on to its
//! other file (which it writes over only once that is done), after a second with nothing to
//! take in, and at close. Opening the journal takes in again what the log holds past the last
//! checkpoint.
//!
//! The journal pages: opening it reads back only the first page of each queue
//! ([`PAGE_MESSAGES`] or [`PAGE_BYTES`]), and the broker reads the rest with [`Journal::read`]
//! as its queues drain, so a deep queue stays on disk rather than in memory.

mod applier;
mod database;
mod wal;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};

use bytes::Bytes;
use redb::Database;
use tokio::sync::oneshot;

use wal::WriteAheadLog;

/// How much of a queue is read into memory at once (a page): this many messages, or this many
/// bytes of them, whichever comes first.
pub const PAGE_MESSAGES: usize = 4096;
pub const PAGE_BYTES: usize = 16 * 1024 * 1024;
/// How many log records the database may be behind the log before commits wait for it (so
/// that what is not yet taken in stays bounded in memory).
const RECORDS_AHEAD: usize = 64;

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the journal {path} cannot be opened: {source}; if another node uses this data dir, give this one its own with -Djboss.server.data.dir"
    )]
    Open { path: String, source: redb::Error },
    #[error("the journal's log {path} cannot be opened or read: {source}")]
    Log { path: String, source: wal::LogError },
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

/// How far the log and the database have got, by log record.
#[derive(Debug, Default)]
struct Progress {
    /// The last record on disk in the log.
    synced: u64,
    /// The last record the database has taken in: what reads see.
    applied: u64,
    /// The last record the database holds durably.
    checkpointed: u64,
    /// Why the journal takes no more changes (a log write or the database failed, or it was
    /// closed).
    failed: Option<String>,
}

/// What the journal's threads and its handles share.
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    /// The database, until the journal is closed.
    database: RwLock<Option<Database>>,
    /// Whether each checkpoint also saves the allocator's state (see
    /// [`Journal::set_quick_repair`]).
    quick_repair: AtomicBool,
}

impl Shared {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        immutant_foundation::sync::lock(&self.progress)
    }

    /// Blocks until `done` holds, or the journal has failed.
    fn wait_until(&self, done: impl Fn(&Progress) -> bool) -> MutexGuard<'_, Progress> {
        let mut progress = self.progress();
        while !done(&progress) && progress.failed.is_none() {
            progress = self
                .changed
                .wait(progress)
                .unwrap_or_else(PoisonError::into_inner);
        }
        progress
    }

    fn advance(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.progress());
        self.changed.notify_all();
    }

    /// Stops the journal: every commit and read from now on fails with `why`.
    fn fail(&self, why: &str) {
        self.advance(|progress| {
            progress.failed.get_or_insert_with(|| why.to_string());
        });
    }

    /// A guard that stops the journal if the thread holding it panics, so that nobody waits
    /// for that thread forever.
    fn fails_if_this_panics(&self, thread: &'static str) -> FailsOnPanic<'_> {
        FailsOnPanic(self, thread)
    }

    fn database(&self) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
        self.database.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves what the database has taken in durably, if it has not yet, unless the journal
    /// has failed (then the log keeps what the database may have missed).
    fn checkpoint(&self, database: &Database) -> Result<(), redb::Error> {
        let (applied, checkpointed, failed) = {
            let progress = self.progress();
            let failed = progress.failed.is_some();
            (progress.applied, progress.checkpointed, failed)
        };
        if applied > checkpointed && !failed {
            let quick = self.quick_repair.load(Ordering::Relaxed);
            database::checkpoint(database, applied, quick)?;
            self.advance(|progress| progress.checkpointed = applied);
        }
        Ok(())
    }
}

struct FailsOnPanic<'a>(&'a Shared, &'static str);

impl Drop for FailsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail(&format!("the journal's {} thread stopped", self.1));
        }
    }
}

/// What the database's thread is sent.
enum ToDatabase {
    /// A record on disk in the log: its number and its changes.
    Record(u64, Vec<JournalOp>),
    /// Save everything sent before durably (the log is about to need the file it is in).
    Checkpoint,
    /// Take in what has arrived without waiting for more: a read waits for it.
    Hurry,
}

/// The handle to the journal's writer, and to read pages back. Cheap to clone; the writer stops
/// when every handle is dropped, after applying what was sent.
#[derive(Clone)]
pub struct Journal {
    batches: mpsc::Sender<Batch>,
    /// To hurry the database's thread along when a read waits for it.
    hurry: mpsc::SyncSender<ToDatabase>,
    shared: Arc<Shared>,
    /// Whether a message was submitted (not waited for) since the last flush.
    unflushed: Arc<AtomicBool>,
}

impl Journal {
    /// Opens (or creates) the journal whose database is at `path` (its log beside it), and
    /// reads back what it holds.
    pub fn open(path: &Path) -> Result<(Journal, Recovered), JournalError> {
        Self::open_with_log(path, wal::FILE_BYTES)
    }

    /// [`Journal::open`], with log files of `log_bytes` each.
    fn open_with_log(path: &Path, log_bytes: u64) -> Result<(Journal, Recovered), JournalError> {
        let database = database::open(path)?;
        let (checkpointed, mut highest) = database::checkpointed(&database)?;
        let paths = wal::paths(path);
        // Both files, for messages.
        let log_files = path.with_extension("wal*");
        let (log, logged, newest) = WriteAheadLog::open(&paths, log_bytes, checkpointed)
            .map_err(|error| applier::log_error(&log_files, error))?;
        // What was committed after the last checkpoint is taken in again and saved, and the
        // log goes on past anything it holds.
        applier::take_in_again(&database, &log, &log_files, &logged, &mut highest)?;
        // Before anything is written: the log starts again at its first file.
        if newest > checkpointed {
            database::checkpoint(&database, newest, true)?;
        }
        let recovered = database::recover(&database)?;
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                synced: newest,
                applied: newest,
                checkpointed: newest,
                failed: None,
            }),
            changed: Condvar::new(),
            database: RwLock::new(Some(database)),
            quick_repair: AtomicBool::new(true),
        });
        let (batches, incoming) = mpsc::channel();
        let (records, taken) = mpsc::sync_channel(RECORDS_AHEAD);
        let (writer, hurry) = (shared.clone(), records.clone());
        spawn("journal", move || {
            writer::write_log(log, incoming, records, &writer, newest);
        })?;
        let taker = shared.clone();
        spawn("journal-db", move || {
            applier::take_in(taken, &taker, highest);
        })?;
        let journal = Journal {
            batches,
            hurry,
            shared,
            unflushed: Default::default(),
        };
        Ok((journal, recovered))
    }

    /// Whether each checkpoint from now on also saves the allocator's state (the default), so
    /// that opening the journal after a crash is quick; without, it walks the whole database
    /// (seconds per gigabyte). Checkpoints take about twice as long, off the commits' path.
    pub fn set_quick_repair(&self, quick: bool) {
        self.shared.quick_repair.store(quick, Ordering::Relaxed);
    }

    /// Up to a page of `queue`'s records from sequence number `from` on, and below `below`, as
    /// committed now (blocking until the database has taken in every commit that returned).
    pub fn read(&self, queue: &str, from: u64, below: u64) -> Result<PageRead, JournalError> {
        let target = self.shared.progress().synced;
        if self.shared.progress().applied < target {
            let _ = self.hurry.try_send(ToDatabase::Hurry);
        }
        let progress = self
            .shared
            .wait_until(|progress| progress.applied >= target);
        if let Some(failed) = &progress.failed {
            return Err(JournalError::Storage(failed.clone()));
        }
        drop(progress);
        let database = self.shared.database();
        let database = database.as_ref().ok_or(JournalError::Stopped)?;
        Ok(database::read(database, queue, from, below)?)
    }

    /// Writes what was sent, saves it in the database durably, then closes the database, so
    /// that it opens again without a repair (which walks the whole file after a crash) and
    /// with nothing to take in again. Nothing is written after.
    pub async fn close(&self) {
        if let Err(error) = self.commit(Vec::new()).await {
            tracing::warn!("the journal could not flush: {error}");
        }
        let shared = self.shared.clone();
        let closed = tokio::task::spawn_blocking(move || {
            let target = shared.progress().synced;
            drop(shared.wait_until(|progress| progress.applied >= target));
            let mut database = shared
                .database
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let saved = match database.as_ref() {
                Some(open) => shared.checkpoint(open),
                None => Ok(()),
            };
            shared.fail(&JournalError::Stopped.to_string());
            database.take();
            saved
        })
        .await;
        match closed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                "the journal could not save its last changes: {error}; they are taken in again from its log when the node starts"
            ),
            Err(error) => tracing::warn!("the journal could not close: {error}"),
        }
    }

    /// Blocks the calling thread until every message submitted so far is on disk, if one was
    /// since the last time.
    pub fn flush_submitted(&self) -> Result<(), JournalError> {
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
            self.unflushed.store(true, Ordering::Relaxed);
        }
        let _ = self.batches.send(Batch {
            ops,
            done: Waiter::Nobody,
        });
    }
}

fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), JournalError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(run)
        .map(drop)
        .map_err(|error| JournalError::Storage(error.to_string()))
}

#[cfg(test)]
mod tests;
