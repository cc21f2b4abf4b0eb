//! Whether the balancer reaches its nodes: each node's HTTP port asked `OPTIONS *` every
//! couple of seconds (two answers missed in a row, and the node is passed over until it
//! answers again; unreachable and silent for 5 minutes, and it is forgotten), and the same
//! look for a STATUS or PING.

use std::sync::Arc;
use std::time::Duration;

use immutant_foundation::shutdown::Shutdown;
use tracing::{info, warn};

use super::Balancer;

/// How often the balancer checks that it reaches each node (two checks missed in a row, and
/// the node is passed over).
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Checks every couple of seconds that each node's HTTP port takes connections: one that does
/// not is passed over until it does again.
pub(crate) async fn check_health(balancer: Arc<Balancer>, shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
    // Checks each node has missed in a row: two make it unreachable (one late answer on a busy
    // machine does not).
    let mut missed: std::collections::HashMap<String, u32> = Default::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let nodes: Vec<(String, u64, String)> = balancer
            .table()
            .nodes()
            .map(|node| (node.route.clone(), node.id, node.address()))
            .collect();
        let began = std::time::Instant::now();
        // Every node at once: a dead one costs its second, not everyone's.
        let checks = nodes.into_iter().map(|(route, id, address)| async move {
            let reached = reaches(&address).await;
            (route, id, address, reached)
        });
        for (route, id, address, answered) in futures_util::future::join_all(checks).await {
            let mut table = balancer.table();
            // The route went to another process while the round was out: not the one looked at.
            if table.node(&route).is_none_or(|node| node.id != id) {
                missed.remove(&route);
                continue;
            }
            // A node a request found unreachable while this round was out stays so: the check
            // may have been answered just before it died.
            let answered = answered
                && table
                    .node(&route)
                    .and_then(|node| node.found_unreachable)
                    .is_none_or(|found| found < began);
            let misses = missed.entry(route.clone()).or_default();
            *misses = if answered { 0 } else { *misses + 1 };
            // Only an answer brings a node back (one a request found dead stays so); a node
            // that answered is passed over after two misses in a row.
            let was_healthy = table.node(&route).is_some_and(|node| node.healthy);
            let reached = answered || (*misses < 2 && was_healthy);
            if table
                .node(&route)
                .is_some_and(|node| node.healthy != reached)
            {
                match reached {
                    true => info!("node {route} answers again"),
                    false => warn!("node {route} does not answer at {address}; passing it over"),
                }
            }
            table.set_healthy(&route, reached);
            if answered {
                // A node that answers is not silent, however seldom it sends STATUS.
                table.heard(&route);
            }
        }
        for route in balancer.table().forget_unreachable(FORGET_AFTER) {
            missed.remove(&route);
            warn!(
                "node {route} has neither answered nor spoken for {} minutes; forgotten",
                FORGET_AFTER.as_secs() / 60
            );
        }
    }
}

/// How long a node may go unreachable and silent before the balancer forgets it.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// How long a node has to answer a health check, or the check a STATUS or PING makes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the node at `address` answers within [`PROBE_TIMEOUT`].
pub(crate) async fn reaches(address: &str) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, answers(address))
        .await
        .is_ok_and(|answered| answered)
}

/// Whether the node at `address` answers HTTP: `OPTIONS *`, which asks the server itself (a
/// paused node takes the connection, but does not answer).
async fn answers(address: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    let request = format!("OPTIONS * HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut status = [0u8; 12];
    // Any answer will do: a server that does not take `OPTIONS *` still answers.
    stream.read_exact(&mut status).await.is_ok() && status.starts_with(b"HTTP/1.")
}
