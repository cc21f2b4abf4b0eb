//! The database's thread (`journal-db`): takes in each record the log's thread sends, without
//! syncing, and saves what it took in durably (a checkpoint) when the log asks (it needs a file
//! back), after a second with nothing to take in, and when the log's thread is gone. And, when
//! the journal opens, taking in again what the log holds past the last checkpoint.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::Database;

use super::wal::{self, LogError, WriteAheadLog};
use super::{JournalOp, RECORDS_AHEAD, Shared, ToDatabase, database};

/// How long the database waits for more records after one arrives, to take them in together
/// (fewer, larger transactions; a message acknowledged meanwhile is never written at all). A
/// page read does not wait for it.
const GATHER: Duration = Duration::from_millis(4);
/// How long the database waits with nothing to take in before it saves what it has durably.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);
/// How much of the log is taken in again per transaction when the journal opens.
const REPLAY_BYTES: usize = 16 << 20;

/// Runs until the log's thread is gone; `highest` is the highest sequence number journaled.
pub(super) fn take_in(records: mpsc::Receiver<ToDatabase>, shared: &Shared, mut highest: u64) {
    let _failing = shared.fails_if_this_panics("database");
    loop {
        let first = match records.recv_timeout(IDLE_CHECKPOINT) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                checkpoint(shared);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let (taken, last, asked) = gather(first, &records);
        if shared.progress().failed.is_some() {
            // Nothing is taken in past a failure, so that no checkpoint can pass over it.
            continue;
        }
        let database = shared.database();
        let outcome = match (database.as_ref(), last) {
            // Closed: what came after its last checkpoint stays in the log for the next opening.
            (None, _) | (Some(_), None) => Ok(()),
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
            let failed = format!("the journal's database cannot take in its log: {error}");
            tracing::error!("{failed}");
            shared.fail(&failed);
        }
    }
    checkpoint(shared);
}

/// `first` and what else arrives within [`GATHER`] (or until a reader hurries it): the records'
/// changes, the last record's number, and whether a checkpoint was asked for.
fn gather(
    first: ToDatabase,
    records: &mpsc::Receiver<ToDatabase>,
) -> (Vec<Vec<JournalOp>>, Option<u64>, bool) {
    let until = Instant::now() + GATHER;
    let (mut taken, mut last, mut asked) = (Vec::new(), None, false);
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match item {
            ToDatabase::Record(seq, ops) => {
                taken.push(ops);
                last = Some(seq);
            }
            ToDatabase::Checkpoint => asked = true,
            ToDatabase::Hurry => break,
        }
        if taken.len() < RECORDS_AHEAD {
            next = records
                .recv_timeout(until.saturating_duration_since(Instant::now()))
                .ok();
        }
    }
    (taken, last, asked)
}

/// Saves what the database has taken in durably, if it is open and has not failed.
fn checkpoint(shared: &Shared) {
    if let Some(database) = shared.database().as_ref()
        && let Err(error) = shared.checkpoint(database)
    {
        tracing::warn!(
            "the journal's database cannot save what it took in: {error}; the log keeps it"
        );
    }
}

/// Takes the log's records `logged` into the database, in transactions of about
/// [`REPLAY_BYTES`] each (a few large ones are much quicker than one per record).
pub(super) fn take_in_again(
    database: &Database,
    log: &WriteAheadLog,
    path: &Path,
    logged: &[wal::Located],
    highest: &mut u64,
) -> Result<(), super::JournalError> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for record in logged {
        let ops = log.read(record).map_err(|error| log_error(path, error))?;
        bytes += ops.iter().map(op_bytes).sum::<usize>();
        chunk.push(ops);
        if bytes >= REPLAY_BYTES {
            database::apply(database, chunk.iter().flatten(), highest)?;
            (chunk, bytes) = (Vec::new(), 0);
        }
    }
    database::apply(database, chunk.iter().flatten(), highest)?;
    if !logged.is_empty() {
        tracing::info!("took in {} records from the journal's log", logged.len());
    }
    Ok(())
}

/// The journal's error for what is wrong with its log (whose first file is at `path`).
pub(super) fn log_error(path: &Path, source: LogError) -> super::JournalError {
    super::JournalError::Log {
        path: path.display().to_string(),
        source,
    }
}

fn op_bytes(op: &JournalOp) -> usize {
    match op {
        JournalOp::Put { record, .. } => record.len(),
        JournalOp::Delete { .. } => 0,
        JournalOp::PutMeta { value, .. } => value.len(),
    }
}
