//! The nodes' sections: every node that answered (when it started, its uptime, memory, load,
//! engine and view), and those that were asked and did not.

use immutant_contracts::status::{EngineKind, EngineStatus, NodeStatus};

use super::Unreachable;
use super::table::{Rows, names, row};
use crate::list::span;

/// A row for each node that answered.
pub(super) fn nodes(nodes: &[NodeStatus]) -> Rows {
    let mut rows = vec![row([
        "NODE", "ADDRESS", "STARTED", "UPTIME", "MEMORY", "LOAD", "ENGINE", "VIEW",
    ])];
    rows.extend(nodes.iter().map(node));
    rows
}

fn node(node: &NodeStatus) -> Vec<String> {
    // When it started is its age in the cluster: the view lists the oldest first.
    let started = chrono::DateTime::from_timestamp_millis(node.started_ms as i64)
        .map_or("-".to_string(), |at| at.format("%H:%M:%S").to_string());
    vec![
        node.name.clone(),
        node.bind_address.clone(),
        started,
        span(node.uptime_ms as f64 / 1000.0),
        node.memory_bytes.map_or("-".into(), mebibytes),
        node.load
            .map_or("-".into(), |load| format!("{:.2}", load[0])),
        node.cluster
            .as_ref()
            .map_or("-".into(), |cluster| engine(&cluster.engine)),
        match &node.cluster {
            Some(cluster) => names(cluster.view.iter().map(|member| &member.name)),
            None => "(standalone)".to_string(),
        },
    ]
}

/// The engine, and whether the node reaches it (the embedded one always does).
fn engine(engine: &EngineStatus) -> String {
    match (engine.kind, engine.connected) {
        (EngineKind::Nats, true) => "nats (connected)".to_string(),
        (EngineKind::Nats, false) => "nats (NOT CONNECTED)".to_string(),
        (kind, _) => kind.to_string(),
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A row for each node that was asked and did not answer, with why.
pub(super) fn unreachable(unreachable: &[Unreachable]) -> Rows {
    let mut rows = vec![row(["NOT ANSWERING", "MANAGEMENT", "WHY"])];
    rows.extend(unreachable.iter().map(|node| {
        vec![
            node.name.clone(),
            node.management.clone(),
            node.error.clone(),
        ]
    }));
    rows
}
