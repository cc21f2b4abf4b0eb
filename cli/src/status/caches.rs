//! The caches' section: each cache on each node, its entries, hit ratio and holders.

use immutant_contracts::status::{CacheStats, NodeStatus};

use super::table::{Rows, names, row};

/// A row for each cache on each node.
pub(super) fn caches(nodes: &[NodeStatus]) -> Rows {
    let mut rows = vec![row([
        "CACHE",
        "NODE",
        "MODE",
        "ENTRIES",
        "HIT RATIO",
        "HELD BY",
    ])];
    for node in nodes {
        rows.extend(node.caches.iter().map(|cache| {
            let stats = &cache.stats;
            vec![
                stats.name.clone(),
                node.name.clone(),
                stats.mode.clone(),
                stats.entries.to_string(),
                hit_ratio(stats),
                names(&cache.held_by),
            ]
        }));
    }
    rows
}

/// The share of reads that found their entry, or `-` before the first read.
fn hit_ratio(stats: &CacheStats) -> String {
    match stats.hits + stats.misses {
        0 => "-".to_string(),
        reads => format!("{:.0}%", 100.0 * stats.hits as f64 / reads as f64),
    }
}
