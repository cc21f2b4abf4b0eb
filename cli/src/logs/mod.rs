//! `logs`: the logs of every node the install ran (each node links its log folder as
//! `<home>/logs/<node>`), merged in time order, each line tagged with its node; apps' lines are
//! there too, prefixed with the app's name; and those of the cluster's members elsewhere, asked
//! through a node of the install ([`members`]). `--follow` goes on printing lines as nodes
//! write them, through rotations, and picks up nodes that start meanwhile.

mod members;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};

use crate::list::running_nodes;
use crate::locations::Locations;
use members::MemberLogs;

/// The current log file's name in a node's log folder; rotated ones add `.1` (the newest),
/// `.2`, ...
const LOG_FILE: &str = "server.log";
/// How often a follow looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Which lines `logs` prints.
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    pub follow: bool,
    /// Only this node's lines.
    pub node: Option<String>,
    /// Only this app's lines.
    pub app: Option<String>,
    /// Only lines written from then on.
    pub since: Option<DateTime<Utc>>,
}

/// A line of a node's log, and when it was written (that of the line before, for a line that
/// does not begin with a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at: Option<DateTime<Utc>>,
    pub node: String,
    pub text: String,
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.node, self.text)
    }
}

/// How often a follow asks the members elsewhere for their new lines.
const FOLLOW_MEMBERS_EVERY: Duration = Duration::from_secs(1);

/// Prints the lines asked for, then (`follow`) those to come, until interrupted.
pub fn logs(locations: &Locations, options: &LogsOptions) -> Result<()> {
    let everyone = log_folders(locations)?;
    let local: BTreeSet<String> = everyone
        .keys()
        .cloned()
        .chain(running_nodes(locations).into_iter().map(|node| node.name))
        .collect();
    let mut members = match MemberLogs::find(locations, &local, options.node.as_deref()) {
        Ok(members) => Some(members),
        Err(error) => {
            eprintln!("The cluster's other members are left out: {error:#}");
            None
        }
    };
    let elsewhere: Vec<String> = members
        .iter()
        .flat_map(|members| members.names().map(str::to_string))
        .collect();
    let folders = only_node(locations, everyone, options.node.as_deref(), &elsewhere)?;
    if folders.is_empty() && elsewhere.is_empty() {
        eprintln!(
            "No node of the install in {} has logged yet{}",
            locations.home.display(),
            match options.follow {
                true => "; waiting for one to start",
                false => ": start one with `cargo immutant run`",
            }
        );
    }
    let mut lines = Vec::new();
    let mut followers = BTreeMap::new();
    for (node, folder) in &folders {
        // The current file is read through the follower, which goes on from where that read
        // ended: no line is lost or repeated between the two.
        let mut follower = Follower::from_start(node, folder);
        lines.extend(read_rotated(node, folder)?);
        lines.extend(follower.read_new());
        followers.insert(node.clone(), follower);
    }
    if let Some(members) = members.as_mut() {
        lines.extend(members.read_new());
    }
    let mut stdout = std::io::stdout().lock();
    print(&mut stdout, merge(lines), options);
    if !options.follow {
        return Ok(());
    }
    drop(stdout);
    let mut members_asked = std::time::Instant::now();
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        // Nodes that started since.
        let started = log_folders(locations).unwrap_or_default();
        let started = only_node(locations, started, options.node.as_deref(), &elsewhere);
        for (node, folder) in started.unwrap_or_default() {
            followers
                .entry(node.clone())
                .or_insert_with(|| Follower::from_start(&node, &folder));
        }
        let mut batch = Vec::new();
        for follower in followers.values_mut() {
            batch.extend(follower.read_new());
        }
        if let Some(members) = members.as_mut()
            && members_asked.elapsed() >= FOLLOW_MEMBERS_EVERY
        {
            batch.extend(members.read_new());
            members_asked = std::time::Instant::now();
        }
        print(&mut std::io::stdout().lock(), merge(batch), options);
    }
}

/// Parses `--since`: a span back from now (`30s`, `10m`, `2h`, `1d`) or a time
/// (`2026-11-30T12:00:00Z`).
pub fn parse_since(given: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(given) {
        return Ok(at.with_timezone(&Utc));
    }
    let unit_at = given
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(given.len());
    let (number, unit) = given.split_at(unit_at);
    let scale = match unit {
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        "d" => Some(86400),
        _ => None,
    };
    let since = number
        .parse::<i64>()
        .ok()
        .zip(scale)
        .and_then(|(n, scale)| n.checked_mul(scale))
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|span| now.checked_sub_signed(span));
    match since {
        Some(since) => Ok(since),
        None => bail!(
            "cannot read --since {given:?}: give a span back from now such as 30s, 10m, 2h or 1d, or a time such as 2026-11-30T12:00:00Z"
        ),
    }
}

/// Each node's log folder, by name.
fn log_folders(locations: &Locations) -> Result<BTreeMap<String, PathBuf>> {
    let dir = locations.home.join("logs");
    Ok(std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            )
        })
        .collect())
}

/// `folders`, or only `node`'s if given, which must have one or be among the members
/// `elsewhere`.
fn only_node(
    locations: &Locations,
    folders: BTreeMap<String, PathBuf>,
    node: Option<&str>,
    elsewhere: &[String],
) -> Result<BTreeMap<String, PathBuf>> {
    let Some(node) = node else {
        return Ok(folders);
    };
    match folders.get(node) {
        Some(folder) => Ok(BTreeMap::from([(node.to_string(), folder.clone())])),
        None if elsewhere.iter().any(|member| member == node) => Ok(BTreeMap::new()),
        None if folders.is_empty() => bail!(
            "no node of the install in {} has logged yet, and no member of a cluster it runs in is called {node}: start one with `cargo immutant run`",
            locations.home.display()
        ),
        None => bail!(
            "no node called {node} has logged in the install in {}, and no member of its cluster is called so; the nodes that have: {}",
            locations.home.display(),
            folders.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Every line of a node's rotated log files, oldest first.
fn read_rotated(node: &str, folder: &Path) -> Result<Vec<LogLine>> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let number = name
                .strip_prefix(LOG_FILE)?
                .strip_prefix('.')?
                .parse()
                .ok()?;
            Some((number, entry.path()))
        })
        .collect();
    rotated.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
    let mut lines = Vec::new();
    let mut parser = LineParser::new(node);
    for (_, path) in rotated {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // Rotated away meanwhile.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        // A line cut short by a crash may not be UTF-8: it is shown as well as it can be.
        for line in String::from_utf8_lossy(&bytes).lines() {
            lines.push(parser.parse(line));
        }
    }
    Ok(lines)
}

/// Gives each line its time: its own, or its predecessor's.
struct LineParser {
    node: String,
    last: Option<DateTime<Utc>>,
}

impl LineParser {
    fn new(node: &str) -> Self {
        LineParser {
            node: node.to_string(),
            last: None,
        }
    }

    fn parse(&mut self, text: &str) -> LogLine {
        let own = text
            .split_whitespace()
            .next()
            .and_then(|first| DateTime::parse_from_rfc3339(first).ok())
            .map(|at| at.with_timezone(&Utc));
        if own.is_some() {
            self.last = own;
        }
        LogLine {
            at: self.last,
            node: self.node.clone(),
            text: text.to_string(),
        }
    }
}

/// The lines in time order (a stable sort: each node's own order is kept among equal times).
pub fn merge(mut lines: Vec<LogLine>) -> Vec<LogLine> {
    lines.sort_by_key(|line| line.at);
    lines
}

/// Whether `line` is one `options` asks for.
pub fn wanted(line: &LogLine, options: &LogsOptions) -> bool {
    let recent = match (options.since, line.at) {
        (Some(since), Some(at)) => at >= since,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let of_app = options.app.as_ref().is_none_or(|app| {
        // `<time> <level> [app] ...`: the app's prefix is the third field.
        line.text.split_whitespace().nth(2).is_some_and(|field| {
            field.strip_prefix('[').and_then(|f| f.strip_suffix(']')) == Some(app)
        })
    });
    recent && of_app
}

fn print(out: &mut impl Write, lines: Vec<LogLine>, options: &LogsOptions) {
    for line in lines.iter().filter(|line| wanted(line, options)) {
        if writeln!(out, "{line}").is_err() {
            // The reader went (`logs | head`): nothing more to do.
            std::process::exit(0);
        }
    }
    out.flush().ok();
}

/// Reads what a node writes to its current log file, from where it was, across rotations.
struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    /// The end of a line not finished yet.
    partial: Vec<u8>,
    parser: LineParser,
}

impl Follower {
    /// Follows the node's current log file from its beginning.
    fn from_start(node: &str, folder: &Path) -> Follower {
        let path = folder.join(LOG_FILE);
        let file = File::open(&path).ok();
        let inode = file
            .as_ref()
            .and_then(|file| file.metadata().ok())
            .map_or(0, |metadata| metadata.ino());
        Follower {
            path,
            file,
            inode,
            partial: Vec::new(),
            parser: LineParser::new(node),
        }
    }

    /// The whole lines written since the last read.
    fn read_new(&mut self) -> Vec<LogLine> {
        let mut bytes = Vec::new();
        if let Some(file) = self.file.as_mut() {
            let _ = file.read_to_end(&mut bytes);
        }
        // Rotated (or made anew): the rest of the old file (the node may have written more to
        // it since the read above, before it moved on), then on with the new one.
        let now = std::fs::metadata(&self.path).map_or(0, |metadata| metadata.ino());
        if now != 0
            && now != self.inode
            && let Ok(mut file) = File::open(&self.path)
        {
            if let Some(old) = self.file.as_mut() {
                let _ = old.read_to_end(&mut bytes);
            }
            let _ = file.read_to_end(&mut bytes);
            self.file = Some(file);
            self.inode = now;
        }
        self.partial.extend_from_slice(&bytes);
        let Some(end) = self.partial.iter().rposition(|byte| *byte == b'\n') else {
            return Vec::new();
        };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        String::from_utf8_lossy(&whole)
            .lines()
            .map(|line| self.parser.parse(line))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn since_takes_a_span_back_or_a_time() {
        let now = at("2026-11-30T12:00:00Z");
        assert_eq!(parse_since("90s", now).unwrap(), at("2026-11-30T11:58:30Z"));
        assert_eq!(parse_since("10m", now).unwrap(), at("2026-11-30T11:50:00Z"));
        assert_eq!(parse_since("2h", now).unwrap(), at("2026-11-30T10:00:00Z"));
        assert_eq!(parse_since("1d", now).unwrap(), at("2026-11-29T12:00:00Z"));
        assert_eq!(
            parse_since("2026-11-30T08:00:00+01:00", now).unwrap(),
            at("2026-11-30T07:00:00Z")
        );
        for bad in [
            "",
            "10",
            "m",
            "10 minutes",
            "yesterday",
            "99999999999999999d",
        ] {
            let error = parse_since(bad, now).unwrap_err().to_string();
            assert!(error.contains("such as 30s, 10m"), "{error}");
        }
    }

    #[test]
    fn lines_of_nodes_merge_in_time_order_and_filter_by_app_and_time() {
        let mut one = LineParser::new("one");
        let mut two = LineParser::new("two");
        let lines = vec![
            one.parse("2026-11-30T12:00:01.000000Z  INFO [example] sending: 1"),
            one.parse("  a line of the same event"),
            one.parse("2026-11-30T12:00:03.000000Z  INFO Deployed \"example\""),
            two.parse("2026-11-30T12:00:02.000000Z  INFO [example] received: 1"),
        ];
        let merged: Vec<String> = merge(lines.clone())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            merged,
            [
                "[one] 2026-11-30T12:00:01.000000Z  INFO [example] sending: 1",
                "[one]   a line of the same event",
                "[two] 2026-11-30T12:00:02.000000Z  INFO [example] received: 1",
                "[one] 2026-11-30T12:00:03.000000Z  INFO Deployed \"example\"",
            ]
        );
        let of_app = LogsOptions {
            app: Some("example".to_string()),
            ..Default::default()
        };
        assert_eq!(lines.iter().filter(|l| wanted(l, &of_app)).count(), 2);
        let recent = LogsOptions {
            since: Some(at("2026-11-30T12:00:02Z")),
            ..Default::default()
        };
        assert_eq!(lines.iter().filter(|l| wanted(l, &recent)).count(), 2);
    }

    #[test]
    fn a_follower_reads_whole_lines_across_a_rotation() {
        let folder = tempfile::tempdir().unwrap();
        let log = folder.path().join(LOG_FILE);
        std::fs::write(&log, "2026-11-30T12:00:01Z  INFO old\n").unwrap();
        let mut follower = Follower::from_start("one", folder.path());
        assert_eq!(follower.read_new().len(), 1);
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        write!(
            file,
            "2026-11-30T12:00:02Z  INFO first\n2026-11-30T12:00:03Z  INFO hal"
        )
        .unwrap();
        let texts = |lines: Vec<LogLine>| lines.into_iter().map(|l| l.text).collect::<Vec<_>>();
        assert_eq!(
            texts(follower.read_new()),
            ["2026-11-30T12:00:02Z  INFO first"]
        );
        writeln!(file, "f").unwrap();
        std::fs::rename(&log, folder.path().join("server.log.1")).unwrap();
        std::fs::write(&log, "2026-11-30T12:00:04Z  INFO after the rotation\n").unwrap();
        assert_eq!(
            texts(follower.read_new()),
            [
                "2026-11-30T12:00:03Z  INFO half",
                "2026-11-30T12:00:04Z  INFO after the rotation"
            ]
        );
        let rotated = read_rotated("one", folder.path()).unwrap();
        assert_eq!(rotated.len(), 3, "{rotated:?}");
        assert_eq!(rotated[0].text, "2026-11-30T12:00:01Z  INFO old");
        std::fs::write(
            folder.path().join("server.log.2"),
            b"2026-11-30T11:00:00Z  INFO \xff\n",
        )
        .unwrap();
        let rotated = read_rotated("one", folder.path()).unwrap();
        assert_eq!(
            rotated.len(),
            4,
            "the oldest file first, read as well as it can be"
        );
        assert_eq!(rotated[0].text, "2026-11-30T11:00:00Z  INFO \u{fffd}");
    }
}
