//! The apps' sections: each deployment on each node, where the apps' singletons run, and the
//! jobs each node fires.

use std::collections::BTreeSet;

use immutant_contracts::deployment::JobReport;
use immutant_contracts::status::{NodeStatus, SingletonStatus};

use super::table::{Rows, row};
use crate::list::span;

/// A row for each deployment on each node, sorted.
pub(super) fn apps(nodes: &[NodeStatus]) -> Rows {
    let mut rows = vec![row(["APP", "NODE", "STATUS", "RESTARTS"])];
    for node in nodes {
        rows.extend(node.deployments.iter().map(|app| {
            vec![
                app.name.clone(),
                node.name.clone(),
                app.status.to_string(),
                app.restarts.to_string(),
            ]
        }));
    }
    // The heading is sorted with the rows, as it always was.
    rows.sort();
    rows
}

/// A row for each app whose singletons run somewhere, as any node sees it.
pub(super) fn singletons(nodes: &[NodeStatus]) -> Rows {
    let singletons: BTreeSet<&SingletonStatus> = nodes.iter().flat_map(|n| &n.singletons).collect();
    let mut rows = vec![row(["SINGLETONS OF", "RUN ON", "EPOCH"])];
    rows.extend(singletons.into_iter().map(|singleton| {
        vec![
            singleton.app.clone(),
            singleton.node.clone(),
            singleton.epoch.to_string(),
        ]
    }));
    rows
}

/// A row for each job a node fires: when next, and how its last run went.
pub(super) fn jobs(nodes: &[NodeStatus], now_ms: u64) -> Rows {
    let mut rows = vec![row(["JOB", "FIRES ON", "SCHEDULE", "NEXT", "LAST RUN"])];
    for node in nodes {
        for app in &node.deployments {
            rows.extend(app.jobs.iter().filter(|job| job.fires_here).map(|job| {
                vec![
                    format!("{}/{}", app.name, job.name),
                    node.name.clone(),
                    job.schedule.clone(),
                    next(job, now_ms),
                    last(job, now_ms),
                ]
            }));
        }
    }
    rows
}

/// When the job fires next, or that it is done.
fn next(job: &JobReport, now_ms: u64) -> String {
    match (job.next_ms, job.done) {
        (Some(next), _) => format!("in {}", span(since(now_ms, next))),
        (None, true) => "done".to_string(),
        (None, false) => "-".to_string(),
    }
}

/// The job's last run: which, how long ago, and how it went.
fn last(job: &JobReport, now_ms: u64) -> String {
    job.last.as_ref().map_or("-".to_string(), |last| {
        format!(
            "#{} {} ago: {}",
            last.run,
            span(since(last.fired_ms, now_ms)),
            last.outcome.name()
        )
    })
}

/// Seconds from `from_ms` to `to_ms`.
fn since(from_ms: u64, to_ms: u64) -> f64 {
    (to_ms as f64 - from_ms as f64) / 1000.0
}
