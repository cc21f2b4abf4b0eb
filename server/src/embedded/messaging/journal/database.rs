//! The journal's database (redb): messages by queue and sequence number, and metadata by key.
//! It takes the log's records in without syncing, and saves them durably at a checkpoint,
//! which also records the last log record it holds.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::mpsc;

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{JournalError, JournalOp, PAGE_BYTES, PAGE_MESSAGES, PageRead, Recovered};

/// Messages by (queue, sequence number).
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// Destinations and subscriptions by key.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The memory the database may cache its pages in (redb's default is 1 GiB, which a deep
/// queue's writes would fill).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The META key of the highest sequence number ever journaled: kept so that one is never used
/// again after a restart, even once its record is gone.
const HIGHEST_SEQ: &str = "highest-seq";
/// The META key of the last log record the database holds durably.
const CHECKPOINT: &str = "log-checkpoint";

/// Opens (or creates) the database at `path`, with its tables.
pub fn open(path: &Path) -> Result<Database, JournalError> {
    let database = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| JournalError::Open {
            path: path.display().to_string(),
            source: source.into(),
        })?;
    // Make sure the tables exist, so an empty journal reads back as empty: once, since a
    // commit here would be the last before a crash, and one without quick repair makes the
    // next opening walk the whole file.
    let read = database.begin_read().map_err(redb::Error::from)?;
    if read.open_table(MESSAGES).is_err() || read.open_table(META).is_err() {
        drop(read);
        let setup = database.begin_write().map_err(redb::Error::from)?;
        setup.open_table(MESSAGES).map_err(redb::Error::from)?;
        setup.open_table(META).map_err(redb::Error::from)?;
        setup.commit().map_err(redb::Error::from)?;
    }
    Ok(database)
}

/// A number kept in META (big-endian), 0 if it is not there.
fn be_u64(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|value| Some(u64::from_be_bytes(value.try_into().ok()?)))
        .unwrap_or(0)
}

/// The last log record the database holds durably, and the highest sequence number journaled.
pub fn checkpointed(database: &Database) -> Result<(u64, u64), redb::Error> {
    let read = database.begin_read()?;
    let meta = read.open_table(META)?;
    Ok((
        be_u64(meta.get(CHECKPOINT)?.as_ref().map(|value| value.value())),
        be_u64(meta.get(HIGHEST_SEQ)?.as_ref().map(|value| value.value())),
    ))
}

/// Takes `ops` in without syncing (a crash forgets them back to the last checkpoint, and the
/// log has them), keeping the highest sequence number ever journaled (`highest`) in META.
pub fn apply<'a>(
    database: &Database,
    ops: impl DoubleEndedIterator<Item = &'a JournalOp> + Clone,
    highest: &mut u64,
) -> Result<(), redb::Error> {
    let newest = ops
        .clone()
        .filter_map(|op| match op {
            JournalOp::Put { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut transaction = database.begin_write()?;
    transaction.set_durability(Durability::None)?;
    {
        let mut messages = transaction.open_table(MESSAGES)?;
        let mut meta = transaction.open_table(META)?;
        if newest > *highest {
            meta.insert(HIGHEST_SEQ, newest.to_be_bytes().as_slice())?;
        }
        for op in worth_making(ops) {
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

/// The changes worth making, in order: a message put and deleted again among `ops` (published
/// and acknowledged while its record waited to be taken in) is not written at all; its delete
/// still is, for a record from before.
fn worth_making<'a>(ops: impl DoubleEndedIterator<Item = &'a JournalOp>) -> Vec<&'a JournalOp> {
    let mut deleted = HashSet::new();
    let mut kept: Vec<&JournalOp> = ops
        .rev()
        .filter(|op| match op {
            JournalOp::Delete { queue, seq } => {
                deleted.insert((queue.as_str(), *seq));
                true
            }
            JournalOp::Put { queue, seq, .. } => !deleted.contains(&(queue.as_str(), *seq)),
            JournalOp::PutMeta { .. } => true,
        })
        .collect();
    kept.reverse();
    kept
}

/// Saves everything taken in so far durably, as holding the log up to record `log`; saving the
/// allocator's state too with `quick_repair` (so that opening it after a crash is quick).
pub fn checkpoint(database: &Database, log: u64, quick_repair: bool) -> Result<(), redb::Error> {
    let mut transaction = database.begin_write()?;
    transaction.set_quick_repair(quick_repair);
    transaction
        .open_table(META)?
        .insert(CHECKPOINT, log.to_be_bytes().as_slice())?;
    transaction.commit()?;
    Ok(())
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

/// Up to a page of `queue`'s records from sequence number `from` on, and below `below`.
pub fn read(
    database: &Database,
    queue: &str,
    from: u64,
    below: u64,
) -> Result<PageRead, redb::Error> {
    let read = database.begin_read()?;
    let table = read.open_table(MESSAGES)?;
    read_page(&table, queue, from..below)
}

/// What the database holds: its metadata, and the first page of each queue.
pub fn recover(database: &Database) -> Result<Recovered, redb::Error> {
    let read = database.begin_read()?;
    let mut meta = BTreeMap::new();
    for entry in read.open_table(META)?.iter()? {
        let (key, value) = entry?;
        meta.insert(
            key.value().to_string(),
            Bytes::copy_from_slice(value.value()),
        );
    }
    let mut max_seq = be_u64(meta.get(HIGHEST_SEQ).map(Bytes::as_ref));
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
