//! Discovery by multicast, as JGroups' MPING did it for AS7: each node sends a beacon to the
//! cluster's group (230.0.0.4:45688 by default, not shifted by the port offset) through the
//! interface of its bind address, and gossips with every node of its cluster whose beacon it
//! hears. Beacons are sealed with the cluster's secret: one that is not is ignored. Nodes on
//! networks without multicast use seeds instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use super::seal::ClusterKey;

/// How often a node announces itself.
const BEACON_INTERVAL: Duration = Duration::from_millis(500);

/// What a beacon says.
#[derive(Debug, Serialize, Deserialize)]
struct Beacon {
    cluster: String,
    node: String,
    gossip: SocketAddr,
}

/// Announces this node and reports the gossip address of every other node of `cluster` heard,
/// until the socket fails.
pub async fn run(
    socket: UdpSocket,
    group: SocketAddr,
    (cluster, key): (String, Arc<ClusterKey>),
    node: String,
    gossip: SocketAddr,
    mut found: impl FnMut(SocketAddr),
) {
    let plain = serde_json::to_vec(&Beacon {
        cluster: cluster.clone(),
        node,
        gossip,
    })
    .unwrap_or_default();
    let mut beacon = None;
    let mut ticker = tokio::time::interval(BEACON_INTERVAL);
    let mut buffer = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if beacon.is_none() {
                    beacon = key.seal_beacon(&plain);
                }
                let Some(beacon) = &beacon else {
                    key.cannot_seal("a discovery beacon");
                    continue;
                };
                if let Err(error) = socket.send_to(beacon, group).await {
                    tracing::debug!("cannot send a discovery beacon: {error}");
                }
            }
            received = socket.recv_from(&mut buffer) => {
                let Ok((length, from)) = received else { continue };
                let Some(plain) = key.open_beacon(&mut buffer[..length], from) else { continue };
                if let Ok(heard) = serde_json::from_slice::<Beacon>(plain)
                    && heard.cluster == cluster
                    && heard.gossip != gossip
                {
                    found(heard.gossip);
                }
            }
        }
    }
}
