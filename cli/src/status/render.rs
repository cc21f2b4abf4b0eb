//! The tables `status` prints: a heading, the nodes, then a section for each thing they run,
//! each drawn by a function of its own (a section with nothing in it is left out), and last
//! what each balancer sees.

use std::collections::BTreeSet;

use immutant_contracts::status::NodeStatus;

use super::table::{section, table};
use super::{ClusterStatus, apps, caches, nodes, queues, typed, web};

/// The tables `status` prints.
pub fn render(found: &ClusterStatus) -> String {
    let nodes = by_age(found);
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut out = heading(&nodes);
    table(&mut out, nodes::nodes(&nodes));
    let sections = [
        nodes::unreachable(&found.unreachable),
        apps::apps(&nodes),
        apps::singletons(&nodes),
        queues::queues(&nodes),
        apps::jobs(&nodes, now_ms),
        caches::caches(&nodes),
        web::contexts(&nodes),
        web::balancers(&nodes),
        web::certificates(&nodes),
    ];
    for rows in sections {
        section(&mut out, rows);
    }
    out.push_str(&web::balancer_views(&found.balancers));
    out
}

/// The nodes that answered, oldest first: the order of a cluster's view.
fn by_age(found: &ClusterStatus) -> Vec<NodeStatus> {
    let mut nodes: Vec<NodeStatus> = found.nodes.iter().map(typed).collect();
    nodes.sort_by(|a, b| (a.started_ms, &a.name).cmp(&(b.started_ms, &b.name)));
    nodes
}

/// The first line: the clusters the nodes are members of, or that they are standalone, or that
/// none runs.
fn heading(nodes: &[NodeStatus]) -> String {
    let clusters: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|node| Some(node.cluster.as_ref()?.name.as_str()))
        .collect();
    match (nodes.len(), clusters.len()) {
        (0, _) => "No node of this install is running.\n".to_string(),
        (_, 0) => "Standalone nodes (not clustered):\n".to_string(),
        _ => format!(
            "Cluster {}:\n",
            clusters.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}
