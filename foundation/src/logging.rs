//! The node's log: one line per event on standard output, as JBoss's console handler wrote it,
//! and the same lines in `<data dir>/log/server.log`, as its file handler did, rotated by size
//! (`server.log.1` is the newest of the older files) so that `cargo immutant logs` can read and
//! follow every node of an install.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The log file's name in its folder.
pub const LOG_FILE: &str = "server.log";
/// A log file is rotated once it passes this size.
const ROTATE_BYTES: usize = 10 * 1024 * 1024;
/// How many lines may wait for the log file's writer; more wait for room.
const QUEUED_LINES: usize = 1024;
/// How many rotated files are kept beside the current one.
const KEPT_FILES: usize = 5;

/// Starts logging at `level` to standard output (apps' lines, prefixed with their names, among
/// the node's own) and, given a folder, to a rotated file in it. The file is written by a thread
/// of its own (nothing waits on the disk) until the guard returned is dropped, which writes what
/// is left.
pub fn init(level: tracing::Level, folder: Option<&Path>) -> Option<WorkerGuard> {
    // The NATS client's own news (each connection made) is said by the node, in its words.
    // chitchat's socket warns of every datagram it cannot parse: the node says so of strangers
    // now and then instead (a flood must not fill the log).
    let filter = Targets::new()
        .with_default(LevelFilter::from_level(level))
        .with_target(
            "async_nats",
            LevelFilter::WARN.min(LevelFilter::from_level(level)),
        )
        .with_target(
            "chitchat::transport::udp",
            LevelFilter::ERROR.min(LevelFilter::from_level(level)),
        );
    let console = fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout)
        .with_filter(filter.clone());
    let (file, unusable) = match folder.map(open) {
        Some(Ok(writer)) => (Some(writer), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };
    // Lines wait for the writer rather than being dropped when it falls behind.
    let (file, guard) = match file {
        Some(writer) => {
            // A bounded queue of lines: its default (128,000) takes megabytes from the start.
            let (writer, guard) = NonBlockingBuilder::default()
                .lossy(false)
                .buffered_lines_limit(QUEUED_LINES)
                .finish(writer);
            (Some(writer), Some(guard))
        }
        None => (None, None),
    };
    let file = file.map(|writer| {
        fmt::layer()
            .with_target(false)
            .with_ansi(false)
            .with_writer(writer)
            .with_filter(filter.clone())
    });
    tracing_subscriber::registry()
        .with(console)
        .with(file)
        .init();
    if let Some(error) = unusable {
        tracing::warn!("{error}; this node logs to standard output only");
    }
    guard
}

/// The rotated log file in `folder` (made private to this user), or why it cannot be written.
fn open(folder: &Path) -> Result<FileRotate<AppendCount>, String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let unusable =
        |error: std::io::Error| format!("cannot write the log in {}: {error}", folder.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
        .map_err(unusable)?;
    let path: PathBuf = folder.join(LOG_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).create(true).append(true).mode(0o600);
    // Tried first: FileRotate gives up silently on a file it cannot open.
    options.open(&path).map_err(unusable)?;
    Ok(FileRotate::new(
        path,
        AppendCount::new(KEPT_FILES),
        ContentLimit::BytesSurpassed(ROTATE_BYTES),
        Compression::None,
        Some(options),
    ))
}
