//! The logs of the cluster's members on other hosts (or of other installs), asked through a
//! node of this install: it asks each member for its lines over the cluster's own channels
//! (`/members/<name>/log`), so no token of theirs is needed. A member gives the last 10,000 lines
//! of its log files at first, then, when followed, what it wrote since.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{LineParser, LogLine};
use crate::list::{NodeRecord, running_nodes};
use crate::locations::Locations;

/// How many of its last lines a member gives at first.
const TAIL: usize = 10_000;
/// How long a member may take to answer.
const PATIENCE: Duration = Duration::from_secs(10);

/// A member's answer: lines, and where they end.
#[derive(Debug, Deserialize)]
struct Lines {
    lines: Vec<String>,
    cursor: String,
}

/// A member's log, read through a node of this install.
struct MemberLog {
    name: String,
    through: NodeRecord,
    /// Where its last answer ended; none before the first.
    cursor: Option<String>,
    parser: LineParser,
    /// Why it could not be read, as last said (said again only when it changes).
    failing: Option<String>,
}

/// The logs of the members not of this install, and what they are asked with.
pub struct MemberLogs {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    logs: Vec<MemberLog>,
}

impl MemberLogs {
    /// The members the install's nodes see that are not of this install (`local` names its
    /// nodes); only `only` if given. None if no node of the install runs.
    pub fn find(
        locations: &Locations,
        local: &BTreeSet<String>,
        only: Option<&str>,
    ) -> Result<MemberLogs> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start an async runtime")?;
        let client = crate::http::client(Some(PATIENCE))?;
        let mut logs = Vec::new();
        if let Some(through) = running_nodes(locations).into_iter().next() {
            let asked = runtime.block_on(async {
                let body = through
                    .get(&client, "/status")
                    .send()
                    .await?
                    .bytes()
                    .await?;
                anyhow::Ok(serde_json::from_slice::<serde_json::Value>(&body)?)
            });
            let status = asked
                .with_context(|| format!("cannot ask {} for the cluster's view", through.name))?;
            let names = status["cluster"]["view"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|member| member["name"].as_str())
                .filter(|name| !local.contains(*name) && only.is_none_or(|only| only == *name));
            logs = names
                .map(|name| MemberLog {
                    name: name.to_string(),
                    through: through.clone(),
                    cursor: None,
                    parser: LineParser::new(name),
                    failing: None,
                })
                .collect();
        }
        Ok(MemberLogs {
            runtime,
            client,
            logs,
        })
    }

    /// The members' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.logs.iter().map(|log| log.name.as_str())
    }

    /// The lines each member wrote since the last read (at first, its last ones). A member
    /// that cannot be read is said on stderr (once until that changes), and tried again at the
    /// next read.
    pub fn read_new(&mut self) -> Vec<LogLine> {
        let mut lines = Vec::new();
        for log in &mut self.logs {
            match self.runtime.block_on(ask(&self.client, log)) {
                Ok(answer) => {
                    log.failing = None;
                    log.cursor = Some(answer.cursor);
                    lines.extend(answer.lines.iter().map(|line| log.parser.parse(line)));
                }
                Err(error) => {
                    let said = format!("{error:#}");
                    if log.failing.as_ref() != Some(&said) {
                        eprintln!("Cannot read the log of {}: {said}", log.name);
                        log.failing = Some(said);
                    }
                }
            }
        }
        lines
    }
}

/// Asks the member of `log` for its lines since its cursor.
async fn ask(client: &reqwest::Client, log: &MemberLog) -> Result<Lines> {
    let path = match &log.cursor {
        Some(cursor) => format!("/members/{}/log?after={cursor}", log.name),
        None => format!("/members/{}/log?tail={TAIL}", log.name),
    };
    let response = log.through.get(client, &path).send().await?;
    let status = response.status();
    if !status.is_success() {
        let said = response.text().await.unwrap_or_default();
        bail!("it answered {status}: {}", said.trim());
    }
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}
