//! The write-ahead log: what the journal commits, appended to one of two preallocated files and
//! synced, so that a commit costs one sequential write and one `fdatasync` rather than the
//! database's scattered page writes and sync. The database takes each record in afterwards, off
//! the commit's path, and saves what it took durably now and then (a checkpoint); a file is
//! written over only once everything in it is checkpointed.
//!
//! A record is a header (magic, sequence number, length, CRC-32 of the payload) and the payload:
//! the changes of one group commit. Reading back stops at the first record that is torn or not
//! there; records from before the last checkpoint are skipped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes};

use super::JournalOp;

/// How large each of the two files is made (a record larger than a whole file grows it).
pub const FILE_BYTES: u64 = 32 << 20;
/// "IMWL": where a record starts.
const MAGIC: u32 = 0x494d_574c;
/// Magic, sequence number, payload length, payload CRC.
const HEADER: usize = 4 + 8 + 4 + 4;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const PUT_META: u8 = 3;

/// The log's two files and where the next record goes.
pub struct WriteAheadLog {
    files: [File; 2],
    size: u64,
    current: usize,
    offset: u64,
    /// The sequence number of the last record written to each file since it was opened.
    last_in: [u64; 2],
    /// The record being written (kept to reuse its allocation).
    buffer: Vec<u8>,
}

/// Where a record is in the log: its sequence number, file, and payload.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    pub seq: u64,
    file: usize,
    offset: u64,
    length: u32,
}

/// The paths of the log's files beside the database at `database`.
pub fn paths(database: &Path) -> [PathBuf; 2] {
    [0, 1].map(|file| database.with_extension(format!("wal{file}")))
}

impl WriteAheadLog {
    /// Opens the log's files at `paths` (creating them, `size` bytes each, readable by this
    /// user alone) and finds, in order, the records after sequence number `after` (read each
    /// with [`WriteAheadLog::read`]); and the highest sequence number of any record the files
    /// hold (the log must go on past it).
    pub fn open(
        paths: &[PathBuf; 2],
        size: u64,
        after: u64,
    ) -> io::Result<(Self, Vec<Located>, u64)> {
        let mut located = Vec::new();
        let mut files = Vec::with_capacity(2);
        for (index, path) in paths.iter().enumerate() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?;
            if file.metadata()?.len() < size {
                // Allocated up front, so that a sync has no file size to save.
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)?;
                file.sync_all()?;
            }
            located.extend(find_records(&file, index, after)?);
            files.push(file);
        }
        located.sort_by_key(|record| record.seq);
        located.dedup_by_key(|record| record.seq);
        let newest = located.last().map_or(after, |record| record.seq);
        // Only an unbroken run after the checkpoint: a record is written only once the one
        // before it is on disk, so anything past a gap is from a file's earlier round.
        let unbroken = located
            .iter()
            .zip(after + 1..)
            .take_while(|(record, expected)| record.seq == *expected)
            .count();
        located.truncate(unbroken);
        let files = <[File; 2]>::try_from(files).map_err(|_| io::ErrorKind::InvalidData)?;
        let log = WriteAheadLog {
            files,
            size,
            current: 0,
            offset: 0,
            last_in: [0, 0],
            buffer: Vec::new(),
        };
        Ok((log, located, newest))
    }

    /// The changes of a record found by [`WriteAheadLog::open`]; `None` if they are not ones
    /// this module wrote.
    pub fn read(&self, record: &Located) -> io::Result<Option<Vec<JournalOp>>> {
        let mut payload = vec![0; record.length as usize];
        self.files[record.file].read_exact_at(&mut payload, record.offset)?;
        Ok(decode(Bytes::from(payload)))
    }

    /// Makes record `seq` of `ops` ready to write: how many bytes it takes.
    pub fn prepare<'a>(&mut self, seq: u64, ops: impl Iterator<Item = &'a JournalOp>) -> u64 {
        self.buffer.clear();
        self.buffer.resize(HEADER, 0);
        for op in ops {
            encode(&mut self.buffer, op);
        }
        let payload = self.buffer.len() - HEADER;
        let crc = crc32fast::hash(&self.buffer[HEADER..]);
        let mut header = &mut self.buffer[..HEADER];
        header.put_u32(MAGIC);
        header.put_u64(seq);
        header.put_u32(u32::try_from(payload).unwrap_or(u32::MAX));
        header.put_u32(crc);
        self.buffer.len() as u64
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

    /// Writes the record prepared as sequence number `seq` and syncs it. On an error nothing
    /// moves on: the next record is written where this one was.
    pub fn write(&mut self, seq: u64) -> io::Result<()> {
        let file = &self.files[self.current];
        file.write_all_at(&self.buffer, self.offset)?;
        file.sync_data()?;
        self.offset += self.buffer.len() as u64;
        self.last_in[self.current] = seq;
        Ok(())
    }
}

/// Where the valid records of the log's file `index` after sequence number `after` are, from
/// its start to the first that is torn or not a record.
fn find_records(file: &File, index: usize, after: u64) -> io::Result<Vec<Located>> {
    let length = file.metadata()?.len();
    let mut located = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    while offset + HEADER as u64 <= length {
        file.read_exact_at(&mut header, offset)?;
        let mut fields = &header[..];
        let (magic, seq, payload_length, crc) = (
            fields.get_u32(),
            fields.get_u64(),
            fields.get_u32(),
            fields.get_u32(),
        );
        let start = offset + HEADER as u64;
        let end = start + u64::from(payload_length);
        if magic != MAGIC || end > length {
            break;
        }
        payload.resize(payload_length as usize, 0);
        file.read_exact_at(&mut payload, start)?;
        if crc32fast::hash(&payload) != crc {
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
        let first = log.read(&logged[0]).unwrap().unwrap();
        assert_eq!(format!("{first:?}"), format!("{ops:?}"));
        let (_, logged, _) = WriteAheadLog::open(&paths, 1024, 5).unwrap();
        assert_eq!(seqs(&logged), (6..=12).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_record_ends_the_log_and_a_file_written_over_keeps_only_its_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths(&dir.path().join("journal.redb"));
        {
            let (mut log, _, _) = WriteAheadLog::open(&paths, 1024, 0).unwrap();
            write(&mut log, 1..=6);
            // Back to the first file, as after a checkpoint of 1 to 6: 7 and 8 over 1 and 2.
            log.switch();
            log.switch();
            write(&mut log, 7..=8);
        }
        let (_, logged, _) = WriteAheadLog::open(&paths, 1024, 6).unwrap();
        assert_eq!(seqs(&logged), [7, 8]);

        // A record half written (its payload's last byte wrong) ends what is read back.
        let file = OpenOptions::new().write(true).open(&paths[0]).unwrap();
        let second = (HEADER + 1 + 4 + 8 + 8 + 4 + 100) as u64;
        file.write_all_at(&[0xff], 2 * second - 1).unwrap();
        let (_, logged, _) = WriteAheadLog::open(&paths, 1024, 6).unwrap();
        assert_eq!(seqs(&logged), [7]);
    }

    #[test]
    fn the_files_are_allocated_and_private() {
        use std::os::unix::fs::PermissionsExt;
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
