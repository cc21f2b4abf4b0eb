//! The log's thread (`journal`): takes every batch waiting, writes them to the log as one record
//! and syncs it (group commit), tells each waiter, and passes the record on to the database's
//! thread.

use std::sync::mpsc;

use super::wal::WriteAheadLog;
use super::{Batch, JournalOp, Shared, ToDatabase, Waiter};

/// Runs until every handle to the journal is gone; `last` is the last record number used.
pub(super) fn write_log(
    mut log: WriteAheadLog,
    incoming: mpsc::Receiver<Batch>,
    records: mpsc::SyncSender<ToDatabase>,
    shared: &Shared,
    mut last: u64,
) {
    let _failing = shared.fails_if_this_panics("log");
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
            false => append(&mut log, &ops, &records, shared, last + 1).map(Some),
        });
        if let Ok(Some(seq)) = outcome {
            last = seq;
            // Passed on before anyone is answered, so that a read made right after finds it on
            // its way. Blocks while the database is RECORDS_AHEAD behind.
            let _ = records.send(ToDatabase::Record(seq, ops));
        }
        for batch in batches {
            let answer = outcome.clone().map(|_| ());
            match batch.done {
                Waiter::Nobody => {}
                Waiter::Task(done) => {
                    let _ = done.send(answer);
                }
                Waiter::Thread(done) => {
                    let _ = done.send(answer);
                }
            }
        }
    }
}

/// Writes `ops` to the log as record `seq` and syncs it, moving on to the log's other file
/// when this one is full. The other file is written over once the database holds what it has
/// durably: the checkpoint for it was asked for when the log left it, a whole file ago, so
/// this rarely waits. A failure stops the journal.
fn append(
    log: &mut WriteAheadLog,
    ops: &[JournalOp],
    records: &mpsc::SyncSender<ToDatabase>,
    shared: &Shared,
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
    if let Err(failed) = log.write(seq) {
        tracing::error!("{failed}");
        shared.fail(&failed);
        return Err(failed);
    }
    metrics::histogram!("immutant_journal_commit_seconds").record(started.elapsed().as_secs_f64());
    shared.advance(|progress| progress.synced = seq);
    Ok(seq)
}
