//! The queues' section: each queue on each node, its depth, rates and consumers.

use immutant_contracts::status::NodeStatus;

use super::table::{Rows, row};

/// A row for each queue on each node.
pub(super) fn queues(nodes: &[NodeStatus]) -> Rows {
    let mut rows = vec![row([
        "QUEUE",
        "NODE",
        "DEPTH",
        "IN/S",
        "OUT/S",
        "CONSUMERS",
        "IN FLIGHT",
        "DEAD LETTERS",
    ])];
    for node in nodes {
        rows.extend(node.queues.iter().map(|queue| {
            let (stats, rates) = (&queue.stats, &queue.rates);
            vec![
                stats.name.clone(),
                node.name.clone(),
                stats.depth.to_string(),
                format!("{:.1}", rates.rate_in),
                format!("{:.1}", rates.rate_out),
                stats.consumers.to_string(),
                stats.in_flight.to_string(),
                stats.dead_lettered.to_string(),
            ]
        }));
    }
    rows
}
