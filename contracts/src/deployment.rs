//! A deployment as the management API shows it (`GET /deployments`, and each of `/status`'s
//! `deployments`): its status, process, daemons, jobs and the last lines of its stderr.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One deployment on one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeploymentReport {
    pub name: String,
    /// `"status"`, and `"reason"` when it failed or stopped.
    #[serde(flatten)]
    pub status: Status,
    pub pid: Option<u32>,
    pub restarts: u64,
    /// The artifact it runs, relative to the deployments folder.
    pub artifact: Option<PathBuf>,
    /// When the build it runs was deployed (its descriptor's `deployed-at`): which build it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<u64>,
    /// The server group it is deployed to, if one (only that group's nodes run it).
    pub group: Option<String>,
    /// Where it came from (its descriptor's `root`).
    pub root: Option<PathBuf>,
    pub daemons: BTreeMap<String, DaemonState>,
    /// Where its web handler is mounted, if it mounted one.
    pub web: Option<String>,
    /// The node its singletons (daemons and jobs) run on, if it has any and they run.
    pub singletons_on: Option<String>,
    /// Its scheduled jobs.
    pub jobs: Vec<JobReport>,
    pub stderr_tail: Vec<String>,
}

/// Where a deployment is in its life.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "kebab-case")]
pub enum Status {
    /// Its process is starting or restarting and has not said it is ready.
    #[default]
    Deploying,
    Running,
    /// It crashed five times in a row, or could not start; the reason says why.
    Failed(String),
    Stopped(String),
    /// Not run on this node: it is deployed to a server group this node is not in; the reason
    /// says which.
    Elsewhere(String),
}

impl Status {
    /// Its name, as the JSON gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Deploying => "deploying",
            Status::Running => "running",
            Status::Failed(_) => "failed",
            Status::Stopped(_) => "stopped",
            Status::Elsewhere(_) => "elsewhere",
        }
    }
}

/// Its name, and the reason if there is one: `failed: <reason>`.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Failed(reason) | Status::Stopped(reason) | Status::Elsewhere(reason) => {
                write!(f, "{}: {reason}", self.name())
            }
            Status::Deploying | Status::Running => f.write_str(self.name()),
        }
    }
}

/// A daemon of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonState {
    pub singleton: bool,
    pub running: bool,
}

/// A scheduled job of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobReport {
    pub name: String,
    pub schedule: String,
    pub singleton: bool,
    /// Whether this node fires it now.
    pub fires_here: bool,
    /// When it fires next (unix ms), if it fires here.
    pub next_ms: Option<u64>,
    /// The last firing on this node.
    pub last: Option<LastRun>,
    /// Whether it has fired all the times it will.
    pub done: bool,
}

/// The last firing of a job on a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastRun {
    pub run: u64,
    pub scheduled_ms: u64,
    pub fired_ms: u64,
    /// `"outcome"`, and `"reason"` when it failed.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// How the last firing of a job went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "kebab-case")]
pub enum Outcome {
    #[default]
    Running,
    Ok,
    Failed(String),
}

impl Outcome {
    /// Its name, as the JSON gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// Its name, and the reason if there is one: `failed: <reason>`.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Failed(reason) => write!(f, "{}: {reason}", self.name()),
            Outcome::Running | Outcome::Ok => f.write_str(self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_and_an_outcome_are_a_name_and_a_reason_when_there_is_one() {
        let mut report = DeploymentReport {
            name: "app".into(),
            status: Status::Failed("it crashed".into()),
            jobs: vec![JobReport {
                name: "tick".into(),
                last: Some(LastRun {
                    run: 3,
                    scheduled_ms: 10,
                    fired_ms: 11,
                    outcome: Outcome::Ok,
                }),
                ..JobReport::default()
            }],
            ..DeploymentReport::default()
        };
        report.daemons.insert(
            "d".into(),
            DaemonState {
                singleton: true,
                running: false,
            },
        );
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"name":"app","status":"failed","reason":"it crashed","pid":null,"restarts":0,"artifact":null,"group":null,"root":null,"daemons":{"d":{"singleton":true,"running":false}},"web":null,"singletons_on":null,"jobs":[{"name":"tick","schedule":"","singleton":false,"fires_here":false,"next_ms":null,"last":{"run":3,"scheduled_ms":10,"fired_ms":11,"outcome":"ok"},"done":false}],"stderr_tail":[]}"#
        );
        assert_eq!(
            serde_json::from_str::<DeploymentReport>(&json).unwrap(),
            report
        );
        assert_eq!(report.status.to_string(), "failed: it crashed");
        assert_eq!(Status::Running.to_string(), "running");
        assert_eq!(
            Status::Elsewhere("for group g".into()).to_string(),
            "elsewhere: for group g"
        );
        assert_eq!(Outcome::Failed("no".into()).to_string(), "failed: no");
        assert_eq!(Outcome::Failed("no".into()).name(), "failed");
    }

    #[test]
    fn what_a_node_leaves_out_reads_as_its_default() {
        let report: DeploymentReport =
            serde_json::from_str(r#"{"name":"app","status":"running","jobs":[{"name":"j"}]}"#)
                .unwrap();
        assert_eq!(report.status, Status::Running);
        assert_eq!(report.jobs[0].name, "j");
        assert!(report.daemons.is_empty());
    }
}
