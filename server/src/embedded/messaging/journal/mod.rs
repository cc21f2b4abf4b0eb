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

mod database;
mod wal;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

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
/// How much of the log is taken in again per transaction when the journal opens.
const REPLAY_BYTES: usize = 16 << 20;
/// How long the database waits for more records after one arrives, to take them in together
/// (a page read waits as long at most).
const GATHER: Duration = Duration::from_millis(4);
/// How long the database waits with nothing to take in before it saves what it has durably.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the journal {path} cannot be opened: {source}; if another node uses this data dir, give this one its own with -Djboss.server.data.dir"
    )]
    Open { path: String, source: redb::Error },
    #[error(
        "the journal's log {path} cannot be opened or read: {source}; check that the data dir is writable by this user and its disk has room"
    )]
    Log {
        path: String,
        source: std::io::Error,
    },
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
    /// Why the journal takes no more changes (the database failed, or it was closed).
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

    fn database(&self) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
        self.database.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Saves what the database has taken in durably, if it has not yet, unless it has failed.
    fn checkpoint(&self, database: &Database) -> Result<(), redb::Error> {
        let (applied, checkpointed) = {
            let progress = self.progress();
            (progress.applied, progress.checkpointed)
        };
        if applied > checkpointed {
            let quick = self.quick_repair.load(Ordering::Relaxed);
            database::checkpoint(database, applied, quick)?;
            self.advance(|progress| progress.checkpointed = applied);
        }
        Ok(())
    }
}

/// What the log's thread sends the database's.
enum ToDatabase {
    /// A record on disk in the log: its number and its changes.
    Record(u64, Vec<JournalOp>),
    /// Save everything sent before durably (the log is about to need the file it is in).
    Checkpoint,
}

/// The handle to the journal's writer, and to read pages back. Cheap to clone; the writer stops
/// when every handle is dropped, after applying what was sent.
#[derive(Clone)]
pub struct Journal {
    batches: mpsc::Sender<Batch>,
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
        let (log, logged, newest) =
            WriteAheadLog::open(&paths, log_bytes, checkpointed).map_err(|source| {
                JournalError::Log {
                    path: paths[0].display().to_string(),
                    source,
                }
            })?;
        // What was committed after the last checkpoint is taken in again and saved, and the
        // log goes on past anything it holds.
        take_in_again(&database, &log, &logged, &mut highest).map_err(|source| {
            JournalError::Log {
                path: paths[0].display().to_string(),
                source,
            }
        })?;
        let last = checkpointed.max(newest);
        if last > checkpointed {
            database::checkpoint(&database, last, false)?;
        }
        let recovered = database::recover(&database)?;
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                synced: last,
                applied: last,
                checkpointed: last,
                failed: None,
            }),
            changed: Condvar::new(),
            database: RwLock::new(Some(database)),
            quick_repair: AtomicBool::new(false),
        });
        let (batches, incoming) = mpsc::channel();
        let (records, taken) = mpsc::sync_channel(RECORDS_AHEAD);
        let writer = shared.clone();
        spawn("journal", move || {
            write_log(log, incoming, records, &writer, last);
        })?;
        let taker = shared.clone();
        spawn("journal-db", move || take_in(taken, &taker, highest))?;
        let journal = Journal {
            batches,
            shared,
            unflushed: Default::default(),
        };
        Ok((journal, recovered))
    }

    /// Whether each checkpoint from now on also saves the allocator's state, so that opening
    /// the journal after a crash is quick; without, it walks the whole database (seconds per
    /// gigabyte). Checkpoints take about twice as long.
    pub fn set_quick_repair(&self, quick: bool) {
        self.shared.quick_repair.store(quick, Ordering::Relaxed);
    }

    /// Up to a page of `queue`'s records from sequence number `from` on, and below `below`, as
    /// committed now (blocking until the database has taken in every commit that returned).
    pub fn read(&self, queue: &str, from: u64, below: u64) -> Result<PageRead, JournalError> {
        let progress = self
            .shared
            .wait_until(|progress| progress.applied >= progress.synced);
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
            drop(shared.wait_until(|progress| progress.applied >= progress.synced));
            let mut database = shared
                .database
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let saved = match database.as_ref() {
                Some(open) => shared.checkpoint(open),
                None => Ok(()),
            };
            shared.advance(|progress| {
                progress.failed = Some(JournalError::Stopped.to_string());
            });
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

/// Takes the log's records `logged` into the database, in transactions of about
/// [`REPLAY_BYTES`] each (a few large ones are much quicker than one per record).
fn take_in_again(
    database: &Database,
    log: &WriteAheadLog,
    logged: &[wal::Located],
    highest: &mut u64,
) -> std::io::Result<()> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for record in logged {
        let Some(ops) = log.read(record)? else {
            tracing::warn!("the journal's log has a record it cannot read past: {record:?}");
            break;
        };
        bytes += ops.iter().map(op_bytes).sum::<usize>();
        chunk.push(ops);
        if bytes >= REPLAY_BYTES {
            database::apply(database, chunk.iter().flatten(), highest)
                .map_err(std::io::Error::other)?;
            (chunk, bytes) = (Vec::new(), 0);
        }
    }
    database::apply(database, chunk.iter().flatten(), highest).map_err(std::io::Error::other)?;
    if !logged.is_empty() {
        tracing::info!("took in {} records from the journal's log", logged.len());
    }
    Ok(())
}

fn op_bytes(op: &JournalOp) -> usize {
    match op {
        JournalOp::Put { record, .. } => record.len(),
        JournalOp::Delete { .. } => 0,
        JournalOp::PutMeta { value, .. } => value.len(),
    }
}

fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), JournalError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(run)
        .map(drop)
        .map_err(|error| JournalError::Storage(error.to_string()))
}

/// The log's thread: takes every batch waiting, writes them as one record (after `last`) and
/// syncs it, tells each waiter, and passes the record on to the database.
fn write_log(
    mut log: WriteAheadLog,
    incoming: mpsc::Receiver<Batch>,
    records: mpsc::SyncSender<ToDatabase>,
    shared: &Shared,
    mut last: u64,
) {
    while let Ok(first) = incoming.recv() {
        let mut batches = vec![first];
        batches.extend(incoming.try_iter());
        let ops: Vec<JournalOp> = batches
            .iter_mut()
            .flat_map(|batch| std::mem::take(&mut batch.ops))
            .collect();
        let outcome = match &shared.progress().failed {
            Some(failed) => Err(failed.clone()),
            None => Ok(()),
        };
        // With no changes there is nothing to write: every batch before is on disk already.
        let outcome = outcome.and_then(|()| match ops.is_empty() {
            true => Ok(None),
            false => append(&mut log, &ops, (&records, shared), last + 1).map(Some),
        });
        for batch in batches {
            match batch.done {
                Waiter::Nobody => {}
                Waiter::Task(done) => {
                    let _ = done.send(outcome.clone().map(|_| ()));
                }
                Waiter::Thread(done) => {
                    let _ = done.send(outcome.clone().map(|_| ()));
                }
            }
        }
        if let Ok(Some(seq)) = outcome {
            last = seq;
            // Blocks while the database is RECORDS_AHEAD behind.
            let _ = records.send(ToDatabase::Record(seq, ops));
        }
    }
}

/// Writes `ops` to the log as record `seq` and syncs it, moving on to the log's other file
/// when this one is full (once the database holds what that one has durably).
fn append(
    log: &mut WriteAheadLog,
    ops: &[JournalOp],
    (records, shared): (&mpsc::SyncSender<ToDatabase>, &Shared),
    seq: u64,
) -> Result<u64, String> {
    let started = std::time::Instant::now();
    log.prepare(seq, ops.iter());
    if !log.fits() {
        let _ = records.send(ToDatabase::Checkpoint);
        let over = log.last_in_next();
        if let Some(failed) = &shared
            .wait_until(|progress| progress.checkpointed >= over)
            .failed
        {
            return Err(failed.clone());
        }
        log.switch();
    }
    log.write(seq).map_err(|error| {
        tracing::error!("the journal cannot write its log: {error}");
        format!("the journal cannot write its log: {error}")
    })?;
    metrics::histogram!("immutant_journal_commit_seconds").record(started.elapsed().as_secs_f64());
    shared.advance(|progress| progress.synced = seq);
    Ok(seq)
}

/// The database's thread: takes in each record the log sends (those waiting together in one
/// transaction, keeping `highest`, the highest sequence number journaled), and checkpoints
/// when asked, when idle, and when the log's thread is gone.
fn take_in(records: mpsc::Receiver<ToDatabase>, shared: &Shared, mut highest: u64) {
    loop {
        let first = match records.recv_timeout(IDLE_CHECKPOINT) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                checkpoint(shared);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Records arriving within GATHER of the first go in with it: fewer, larger
        // transactions, and a message acknowledged meanwhile is never written to the database.
        let until = Instant::now() + GATHER;
        let mut items = vec![first];
        while items.len() < RECORDS_AHEAD {
            match records.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let (mut taken, mut last, mut asked) = (Vec::new(), None, false);
        for item in items {
            match item {
                ToDatabase::Record(seq, ops) => {
                    taken.push(ops);
                    last = Some(seq);
                }
                ToDatabase::Checkpoint => asked = true,
            }
        }
        let database = shared.database();
        let outcome = match (database.as_ref(), last) {
            (None, _) => Err(JournalError::Stopped.to_string()),
            (Some(_), None) => Ok(()),
            (Some(open), Some(seq)) => database::apply(open, taken.iter().flatten(), &mut highest)
                .map(|()| shared.advance(|progress| progress.applied = seq))
                .map_err(|error| error.to_string()),
        };
        let outcome = outcome.and_then(|()| match (database.as_ref(), asked) {
            (Some(open), true) => shared.checkpoint(open).map_err(|error| error.to_string()),
            _ => Ok(()),
        });
        drop(database);
        if let Err(error) = outcome {
            tracing::error!("the journal's database cannot take in its log: {error}");
            shared.advance(|progress| progress.failed = Some(error));
        }
    }
    checkpoint(shared);
}

/// Saves what the database has taken in durably, if it is open.
fn checkpoint(shared: &Shared) {
    if let Some(database) = shared.database().as_ref()
        && let Err(error) = shared.checkpoint(database)
    {
        tracing::warn!(
            "the journal's database cannot save what it took in: {error}; the log keeps it"
        );
    }
}

#[cfg(test)]
mod tests;
