//! `GET /log`: the node's own log lines, for `cargo immutant logs` through another host's
//! install (which asks it as a member's question): the last `tail` lines of its log files, or
//! those written to the current file after a `cursor` an earlier answer gave. An answer holds
//! at most [`MAX_BYTES`] of lines: one that follows gives the rest at the next ask.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use immutant_foundation::logging::LOG_FILE;
use serde::{Deserialize, Serialize};

use super::NodeInfo;

/// The most lines one answer gives.
const MAX_LINES: usize = 10_000;
/// The most bytes of lines one answer gives (under what NATS carries by default).
const MAX_BYTES: usize = 512 * 1024;

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// How many of the last lines (at most 10,000; 1,000 by default).
    tail: Option<usize>,
    /// Where the last answer ended: the lines after it.
    after: Option<String>,
}

/// Lines of the log, and where they end.
#[derive(Debug, Serialize, PartialEq)]
pub struct LogLines {
    pub lines: Vec<String>,
    /// Give it as `after` to have the lines written next.
    pub cursor: String,
}

pub async fn log(
    State(info): State<Arc<NodeInfo>>,
    Query(query): Query<LogQuery>,
) -> Json<LogLines> {
    let folder = info.config.data_dir.join("log");
    let tail = query.tail.unwrap_or(1_000).min(MAX_LINES);
    let read = tokio::task::spawn_blocking(move || read(&folder, tail, query.after.as_deref()));
    Json(read.await.unwrap_or_else(|_| LogLines {
        lines: Vec::new(),
        cursor: String::new(),
    }))
}

/// The lines asked for from the log files in `folder`.
fn read(folder: &Path, tail: usize, after: Option<&str>) -> LogLines {
    let current = folder.join(LOG_FILE);
    let (inode, length) = std::fs::metadata(&current)
        .map(|metadata| (metadata.ino(), metadata.len()))
        .unwrap_or_default();
    let from = after
        .and_then(|cursor| cursor.split_once(':'))
        .and_then(|(file, offset)| Some((file.parse::<u64>().ok()?, offset.parse::<u64>().ok()?)))
        .filter(|(file, offset)| *file == inode && *offset <= length)
        .map(|(_, offset)| offset);
    let cursor = |end: u64| format!("{inode}:{end}");
    match from {
        // Following: what came since, from the start, as much as one answer holds.
        Some(offset) => {
            let bytes = read_from(&current, offset);
            let (lines, used) = whole_lines(&bytes, MAX_BYTES, MAX_LINES, false);
            LogLines {
                lines,
                cursor: cursor(offset + used as u64),
            }
        }
        // The last lines: of the current file, and of the rotated ones before it if need be.
        None => {
            let bytes = read_from(&current, 0);
            let (mut lines, used) = whole_lines(&bytes, MAX_BYTES, tail, true);
            for number in 1.. {
                if lines.len() >= tail {
                    break;
                }
                let rotated = folder.join(format!("{LOG_FILE}.{number}"));
                let Ok(older) = std::fs::read(&rotated) else {
                    break;
                };
                let room = MAX_BYTES.saturating_sub(lines.iter().map(|l| l.len() + 1).sum());
                let (mut before, _) = whole_lines(&older, room, tail - lines.len(), true);
                if before.is_empty() {
                    break;
                }
                before.append(&mut lines);
                lines = before;
            }
            LogLines {
                lines,
                cursor: cursor(used as u64),
            }
        }
    }
}

/// The bytes of `path` from `offset` on (none if it cannot be read).
fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.read_to_end(&mut bytes);
    }
    bytes
}

/// The whole lines of `bytes` (a line not finished yet is left for later), at most `lines` of
/// them and `room` bytes: the last ones if `last`, else the first. Also how many bytes of
/// `bytes` the lines taken and those before them span (where a follow goes on).
fn whole_lines(bytes: &[u8], room: usize, lines: usize, last: bool) -> (Vec<String>, usize) {
    let end = bytes
        .iter()
        .rposition(|byte| *byte == b'\n')
        .map_or(0, |at| at + 1);
    let text = String::from_utf8_lossy(&bytes[..end]);
    let all: Vec<&str> = text.lines().collect();
    let mut taken: Vec<String> = Vec::new();
    let mut size = 0;
    let in_order: Box<dyn Iterator<Item = &&str>> = match last {
        true => Box::new(all.iter().rev()),
        false => Box::new(all.iter()),
    };
    for line in in_order {
        size += line.len() + 1;
        if size > room || taken.len() >= lines {
            // A line longer than an answer holds is given cut, so that a follow moves past it.
            if !last && taken.is_empty() && lines > 0 {
                let cut = line
                    .char_indices()
                    .map(|(at, _)| at)
                    .take_while(|at| *at <= room)
                    .last()
                    .unwrap_or(0);
                taken.push(line[..cut].to_string());
            }
            break;
        }
        taken.push(line.to_string());
    }
    if last {
        taken.reverse();
        return (taken, end);
    }
    // By the file's bytes: a byte that is not UTF-8 is longer as its replacement.
    let used = byte_end_of(&bytes[..end], taken.len()).unwrap_or(0);
    (taken, used)
}

/// Where the first `count` lines of `bytes` end.
fn byte_end_of(bytes: &[u8], count: usize) -> Option<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
        .nth(count.checked_sub(1)?)
        .map(|(at, _)| at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_then_those_written_after_the_cursor_across_rotated_files() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("server.log.1"), "old 1\nold 2\n").unwrap();
        let current = folder.path().join(LOG_FILE);
        std::fs::write(&current, "new 1\nnew 2\nhal").unwrap();
        let last = read(folder.path(), 3, None);
        assert_eq!(last.lines, ["old 2", "new 1", "new 2"]);
        let none_new = read(folder.path(), 3, Some(&last.cursor));
        assert!(none_new.lines.is_empty());
        assert_eq!(none_new.cursor, last.cursor);

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&current)
            .unwrap();
        std::io::Write::write_all(&mut file, b"f\nnew \xff 3\n").unwrap();
        let next = read(folder.path(), 3, Some(&last.cursor));
        assert_eq!(next.lines, ["half", "new \u{fffd} 3"]);
        assert!(read(folder.path(), 3, Some(&next.cursor)).lines.is_empty());
        // A cursor of another file (rotated since) starts from the last lines again.
        assert_eq!(
            read(folder.path(), 1, Some("1:0")).lines,
            ["new \u{fffd} 3"]
        );
    }

    #[test]
    fn a_follow_takes_what_one_answer_holds_and_goes_on_from_there() {
        let bytes = b"aaaa\nbbbb\ncccc\n";
        assert_eq!(
            whole_lines(bytes, 10, 100, false),
            (vec!["aaaa".into(), "bbbb".into()], 10)
        );
        assert_eq!(whole_lines(bytes, 100, 1, false), (vec!["aaaa".into()], 5));
        assert_eq!(
            whole_lines(bytes, 100, 2, true),
            (vec!["bbbb".into(), "cccc".into()], 15)
        );
    }
}
