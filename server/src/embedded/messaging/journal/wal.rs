//! The write-ahead log: what the journal commits, appended to one of two preallocated files and
//! synced, so that a commit costs one sequential write and one `fdatasync` rather than the
//! database's scattered page writes and sync. The database takes each record in afterwards, off
//! the commit's path, and saves what it took durably now and then (a checkpoint); a file is
//! written over only once everything in it is checkpointed.
//!
//! A record is a header (magic, sequence number, length, and a CRC-32 of the number, length and
//! payload, so that a header torn over an older record's never passes) and the payload:
//! the changes of one group commit. Records are numbered one after another, and a record is
//! written only once the one before it is on disk: reading a file back stops at the first record
//! that is torn, not there, or not the next number (the rest of the file is from its earlier
//! round); records up to the last checkpoint are skipped. A write or sync that fails stops the
//! log for good (the journal then refuses commits until the node restarts), since what a failed
//! `fdatasync` left on disk cannot be known.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes};

use super::JournalOp;

/// How large each of the two files is made (a record larger than a whole file grows it).
pub const FILE_BYTES: u64 = 32 << 20;
/// "IMWL": where a record starts.
const MAGIC: u32 = 0x494d_574c;
/// Magic, sequence number, payload length, CRC (of the number, the length and the payload).
const HEADER: usize = 4 + 8 + 8 + 4;
/// How far ahead of its records a file's first round is written with zeros. Blocks that were
/// only allocated (fallocate) are converted to written ones by the file system when first
/// written, and a sync after that must also commit the conversion, at almost twice the cost:
/// with zeros ahead that happens once per 64 KiB of records instead of at every sync.
const ZEROS_AHEAD: usize = 64 << 10;
static ZEROS: [u8; ZEROS_AHEAD] = [0; ZEROS_AHEAD];

const PUT: u8 = 1;
const DELETE: u8 = 2;
const PUT_META: u8 = 3;

/// The log's two files and where the next record goes.
pub struct WriteAheadLog {
    files: [File; 2],
    size: u64,
    current: usize,
    offset: u64,
    /// How far each file has been written at least once (beyond, its blocks may be only
    /// allocated).
    written: [u64; 2],
    /// The sequence number of the last record written to each file since it was opened.
    last_in: [u64; 2],
    /// The record being written (kept to reuse its allocation).
    buffer: Vec<u8>,
    /// Why the log stopped: a write or sync failed.
    failed: Option<String>,
}

/// What can be wrong with the log when it is opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A record past the checkpoint that cannot be taken in: the files were damaged or mixed
    /// with others (a crash alone never leaves this).
    #[error(
        "record {seq} is {problem}, and what follows it cannot be trusted; to start anyway, move journal.wal0 and journal.wal1 out of the data dir (keep them for inspection): the node then starts from the journal's last checkpoint, without the changes committed after it"
    )]
    Damaged { seq: u64, problem: &'static str },
}

/// Where a record is in the log: its sequence number, file, and payload.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    pub seq: u64,
    file: usize,
    offset: u64,
    length: u64,
}

/// The paths of the log's files beside the database at `database`.
pub fn paths(database: &Path) -> [PathBuf; 2] {
    [0, 1].map(|file| database.with_extension(format!("wal{file}")))
}

impl WriteAheadLog {
    /// Opens the log's files at `paths` (creating them, `size` bytes each, readable by this
    /// user alone) and finds, in order, the records after sequence number `after` (read each
    /// with [`WriteAheadLog::read`]); and the number of the last of them (`after` if none). The
    /// log then writes from the start of its first file: the caller must have everything found
    /// checkpointed before it writes.
    pub fn open(
        paths: &[PathBuf; 2],
        size: u64,
        after: u64,
    ) -> Result<(Self, Vec<Located>, u64), LogError> {
        let mut located = Vec::new();
        let mut files = Vec::with_capacity(2);
        let mut written = [0; 2];
        for (index, path) in paths.iter().enumerate() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            if file.metadata()?.len() < size {
                allocate(&file, path, size)?;
            }
            written[index] = written_up_to(&file);
            located.extend(find_records(&file, index, after)?);
            files.push(file);
        }
        located.sort_by_key(|record| record.seq);
        if let Some(record) = located.windows(2).find(|pair| pair[0].seq == pair[1].seq) {
            let seq = record[0].seq;
            return Err(LogError::Damaged {
                seq,
                problem: "in both of the log's files",
            });
        }
        // A crash leaves the log's end torn at most; a record missing before others is damage.
        if let Some(expected) = located
            .iter()
            .zip(after + 1..)
            .find_map(|(record, expected)| (record.seq != expected).then_some(expected))
        {
            return Err(LogError::Damaged {
                seq: expected,
                problem: "missing",
            });
        }
        let newest = located.last().map_or(after, |record| record.seq);
        let files = <[File; 2]>::try_from(files)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let log = WriteAheadLog {
            files,
            size,
            current: 0,
            offset: 0,
            written,
            last_in: [0, 0],
            buffer: Vec::new(),
            failed: None,
        };
        Ok((log, located, newest))
    }

    /// The changes of a record found by [`WriteAheadLog::open`].
    pub fn read(&self, record: &Located) -> Result<Vec<JournalOp>, LogError> {
        let mut payload = vec![0; record.length as usize];
        self.files[record.file].read_exact_at(&mut payload, record.offset)?;
        decode(Bytes::from(payload)).ok_or(LogError::Damaged {
            seq: record.seq,
            problem: "not one this version of the journal wrote",
        })
    }

    /// Makes record `seq` of `ops` ready to write.
    pub fn prepare<'a>(&mut self, seq: u64, ops: impl Iterator<Item = &'a JournalOp>) {
        self.buffer.clear();
        self.buffer.resize(HEADER, 0);
        for op in ops {
            encode(&mut self.buffer, op);
        }
        let payload = self.buffer.len() - HEADER;
        let crc = checksum(seq, payload as u64, &self.buffer[HEADER..]);
        let mut header = &mut self.buffer[..HEADER];
        header.put_u32(MAGIC);
        header.put_u64(seq);
        header.put_u64(payload as u64);
        header.put_u32(crc);
    }

    /// Whether the record prepared fits in what is left of the current file.
    pub fn fits(&self) -> bool {
        self.offset + self.buffer.len() as u64 <= self.size
    }

    /// The sequence number of the last record in the file a switch goes to: it must be
    /// checkpointed before [`WriteAheadLog::switch`] writes over it.
    pub fn last_in_next(&self) -> u64 {
        self.last_in[1 - self.current]
    }

    /// Goes on at the start of the other file.
    pub fn switch(&mut self) {
        self.current = 1 - self.current;
        self.offset = 0;
    }

    /// Writes the record prepared as sequence number `seq` (in a file's first round, with zeros
    /// ahead of it) and syncs it. After an error, this and every later write fail.
    pub fn write(&mut self, seq: u64) -> Result<(), String> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let file = &self.files[self.current];
        let end = self.offset + self.buffer.len() as u64;
        // Past the record, this file holds only what is checkpointed (see `open` and
        // `switch`): zeros there lose nothing. They are only an optimisation: if they cannot
        // be written (a full disk where the file is sparse), the next record tries again.
        let zeros = match end > self.written[self.current] {
            true => self.size.saturating_sub(end).min(ZEROS_AHEAD as u64) as usize,
            false => 0,
        };
        let written = file.write_all_at(&self.buffer, self.offset).and_then(|()| {
            if file.write_all_at(&ZEROS[..zeros], end).is_ok() {
                self.written[self.current] = self.written[self.current].max(end + zeros as u64);
            }
            file.sync_data()
        });
        if let Err(error) = written {
            let failed = format!(
                "the journal cannot write its log ({error}); it takes no more messages until the node restarts"
            );
            self.failed = Some(failed.clone());
            return Err(failed);
        }
        self.offset = end;
        self.last_in[self.current] = seq;
        Ok(())
    }
}

/// The CRC-32 of a record's number, length and payload.
fn checksum(seq: u64, length: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_be_bytes());
    hasher.update(&length.to_be_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Gives `file` its `size` up front, so that a sync has no file size to save, and makes its
/// entry in the data dir durable.
fn allocate(file: &File, path: &Path, size: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => {}
        // A file system without fallocate: a sparse file does too, a little slower.
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => file.set_len(size)?,
        Err(error) => return Err(error.into()),
    }
    file.sync_all()?;
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// How far `file` has been written at least once: up to its first hole (where blocks were only
/// allocated, the file system reports a hole), or nowhere if that cannot be told (a file
/// system that reports no holes at all says everywhere: then no zeros are written ahead).
fn written_up_to(file: &File) -> u64 {
    rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(0)).unwrap_or(0)
}

/// Where the valid records of the log's file `index` after sequence number `after` are: from
/// its start to the first that is torn, not a record, or not the next number.
fn find_records(file: &File, index: usize, after: u64) -> io::Result<Vec<Located>> {
    let length = file.metadata()?.len();
    let mut located = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    let mut previous = None;
    while offset + HEADER as u64 <= length {
        file.read_exact_at(&mut header, offset)?;
        let mut fields = &header[..];
        let (magic, seq, payload_length, crc) = (
            fields.get_u32(),
            fields.get_u64(),
            fields.get_u64(),
            fields.get_u32(),
        );
        let start = offset + HEADER as u64;
        let end = start.saturating_add(payload_length);
        let next = previous.is_none_or(|previous: u64| seq == previous + 1);
        if magic != MAGIC || end > length || !next {
            break;
        }
        payload.resize(payload_length as usize, 0);
        file.read_exact_at(&mut payload, start)?;
        if checksum(seq, payload_length, &payload) != crc {
            break;
        }
        if seq > after {
            located.push(Located {
                seq,
                file: index,
                offset: start,
                length: payload_length,
            });
        }
        previous = Some(seq);
        offset = end;
    }
    Ok(located)
}

fn put_bytes(buffer: &mut Vec<u8>, bytes: &[u8]) {
    buffer.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    buffer.put_slice(bytes);
}

fn encode(buffer: &mut Vec<u8>, op: &JournalOp) {
    match op {
        JournalOp::Put { queue, seq, record } => {
            buffer.put_u8(PUT);
            put_bytes(buffer, queue.as_bytes());
            buffer.put_u64(*seq);
            put_bytes(buffer, record);
        }
        JournalOp::Delete { queue, seq } => {
            buffer.put_u8(DELETE);
            put_bytes(buffer, queue.as_bytes());
            buffer.put_u64(*seq);
        }
        JournalOp::PutMeta { key, value } => {
            buffer.put_u8(PUT_META);
            put_bytes(buffer, key.as_bytes());
            put_bytes(buffer, value);
        }
    }
}

/// The changes in a record's payload; `None` if it is not one this module wrote.
fn decode(mut payload: Bytes) -> Option<Vec<JournalOp>> {
    fn take_bytes(payload: &mut Bytes) -> Option<Bytes> {
        let length = payload.try_get_u32().ok()? as usize;
        (payload.remaining() >= length).then(|| payload.split_to(length))
    }
    fn take_string(payload: &mut Bytes) -> Option<String> {
        String::from_utf8(take_bytes(payload)?.to_vec()).ok()
    }
    let mut ops = Vec::new();
    while payload.has_remaining() {
        let op = match payload.get_u8() {
            PUT => JournalOp::Put {
                queue: take_string(&mut payload)?,
                seq: payload.try_get_u64().ok()?,
                record: take_bytes(&mut payload)?,
            },
            DELETE => JournalOp::Delete {
                queue: take_string(&mut payload)?,
                seq: payload.try_get_u64().ok()?,
            },
            PUT_META => JournalOp::PutMeta {
                key: take_string(&mut payload)?,
                value: take_bytes(&mut payload)?,
            },
            _ => return None,
        };
        ops.push(op);
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(seq: u64) -> JournalOp {
        JournalOp::Put {
            queue: "/queue/w".into(),
            seq,
            record: Bytes::from(vec![seq as u8; 100]),
        }
    }

    /// The size of a record of one [`put`].
    const RECORD: usize = HEADER + 1 + 4 + 8 + 8 + 4 + 100;

    fn seqs(located: &[Located]) -> Vec<u64> {
        located.iter().map(|record| record.seq).collect()
    }

    /// Writes records `seqs` (one put each) through `log`, switching files as they fill.
    fn write(log: &mut WriteAheadLog, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            let op = put(seq);
            log.prepare(seq, std::iter::once(&op));
            if !log.fits() {
                log.switch();
            }
            log.write(seq).unwrap();
        }
    }

    /// A log of 1 KB files whose first file holds 1 to 6, then, back at its start (as after a
    /// checkpoint of 1 to 6), 7 over 1.
    fn written_over(paths: &[PathBuf; 2]) -> WriteAheadLog {
        let (mut log, _, _) = WriteAheadLog::open(paths, 1024, 0).unwrap();
        write(&mut log, 1..=6);
        log.switch();
        log.switch();
        write(&mut log, 7..=7);
        log
    }

    #[test]
    fn records_read_back_in_order_across_both_files_and_past_the_checkpoint_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(&dir.path().join("journal.redb"));
        let ops = vec![
            put(7),
            JournalOp::Delete {
                queue: "/queue/w".into(),
                seq: 3,
            },
            JournalOp::PutMeta {
                key: "destination:/queue/w".into(),
                value: Bytes::from_static(b"queue"),
            },
        ];
        {
            let (mut log, logged, _) = WriteAheadLog::open(&paths, 1024, 0).unwrap();
            assert!(logged.is_empty());
            log.prepare(1, ops.iter());
            log.write(1).unwrap();
            // 2 to 12 fill the rest of the first file and go on in the second.
            write(&mut log, 2..=12);
            assert_eq!(log.current, 1);
        }
        let (log, logged, newest) = WriteAheadLog::open(&paths, 1024, 0).unwrap();
        assert_eq!(seqs(&logged), (1..=12).collect::<Vec<_>>());
        assert_eq!(newest, 12);
        let first = log.read(&logged[0]).unwrap();
        assert_eq!(format!("{first:?}"), format!("{ops:?}"));
        let (_, logged, _) = WriteAheadLog::open(&paths, 1024, 5).unwrap();
        assert_eq!(seqs(&logged), (6..=12).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_record_ends_the_log_and_a_file_written_over_keeps_only_its_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(&dir.path().join("journal.redb"));
        {
            let mut log = written_over(&paths);
            write(&mut log, 8..=8);
        }
        let (_, logged, _) = WriteAheadLog::open(&paths, 1024, 6).unwrap();
        assert_eq!(seqs(&logged), [7, 8]);

        // A record half written (its payload's last byte wrong) ends what is read back.
        let file = OpenOptions::new().write(true).open(&paths[0]).unwrap();
        file.write_all_at(&[0xff], 2 * RECORD as u64 - 1).unwrap();
        let (_, logged, _) = WriteAheadLog::open(&paths, 1024, 6).unwrap();
        assert_eq!(seqs(&logged), [7]);
    }

    #[test]
    fn a_header_torn_over_an_older_record_is_not_read_as_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(&dir.path().join("journal.redb"));
        let mut log = written_over(&paths);
        // Record 8 torn after its magic and number, over record 2 of the same size: what
        // follows is 2's length, checksum and payload.
        let op = put(8);
        log.prepare(8, std::iter::once(&op));
        log.files[0]
            .write_all_at(&log.buffer[..12], log.offset)
            .unwrap();
        drop(log);
        let (_, logged, _) = WriteAheadLog::open(&paths, 1024, 6).unwrap();
        assert_eq!(seqs(&logged), [7]);
    }

    #[test]
    fn a_file_is_written_with_zeros_ahead_in_its_first_round_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(&dir.path().join("journal.redb"));
        let size = 4 * ZEROS_AHEAD as u64;
        let (mut log, _, _) = WriteAheadLog::open(&paths, size, 0).unwrap();
        // Files just allocated read as holes (on Linux's local file systems and tmpfs).
        assert_eq!(log.written, [0, 0]);
        write(&mut log, 1..=1);
        assert_eq!(log.written[0], (RECORD + ZEROS_AHEAD) as u64);
        write(&mut log, 2..=2);
        assert_eq!(log.written[0], (RECORD + ZEROS_AHEAD) as u64);
        drop(log);
        // Opened again: the records before the zeros read back, and each file counts as
        // written as far as it was, rounded up to the file system's block (or further, where
        // pages read back are cached), the other file still a hole.
        let (mut log, logged, _) = WriteAheadLog::open(&paths, size, 0).unwrap();
        assert_eq!(seqs(&logged), [1, 2]);
        assert!(
            log.written[0] >= (RECORD + ZEROS_AHEAD) as u64,
            "{:?}",
            log.written
        );
        assert!(log.written[1] < size, "{:?}", log.written);
        // Written over from its start (its second round): no zeros ahead.
        let before = log.written[0];
        write(&mut log, 3..=3);
        assert_eq!(log.written[0], before);
    }

    #[test]
    fn a_record_missing_before_others_is_damage_that_stops_the_opening() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(&dir.path().join("journal.redb"));
        {
            let (mut log, _, _) = WriteAheadLog::open(&paths, 1024, 0).unwrap();
            write(&mut log, 1..=3);
            log.switch();
            write(&mut log, 5..=6);
        }
        let error = WriteAheadLog::open(&paths, 1024, 0).err().unwrap();
        assert!(matches!(error, LogError::Damaged { seq: 4, .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("move journal.wal0 and journal.wal1")
        );
        // Past the checkpoint of 1 to 4 it is whole again.
        let (_, logged, newest) = WriteAheadLog::open(&paths, 1024, 4).unwrap();
        assert_eq!((seqs(&logged), newest), (vec![5, 6], 6));
    }

    #[test]
    fn the_files_are_allocated_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(&dir.path().join("journal.redb"));
        WriteAheadLog::open(&paths, 4096, 0).unwrap();
        for path in &paths {
            let metadata = std::fs::metadata(path).unwrap();
            assert_eq!(metadata.len(), 4096);
            assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        }
    }
}
