//! Discovery by multicast, as JGroups' MPING did it for AS7: each node sends a beacon to the
//! cluster's group (230.0.0.4:45688 by default, not shifted by the port offset) through the
//! interface of its bind address, and gossips with every node of its cluster whose beacon it
//! hears. Beacons are sealed with the cluster's secret: one that is not is ignored. Nodes on
//! networks without multicast use seeds instead.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
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

/// Opens the multicast socket: bound to the group's port, member of the group on the bind
/// address's interface, and sending through that interface only.
pub fn open(group: IpAddr, port: u16, interface: IpAddr) -> std::io::Result<UdpSocket> {
    let (IpAddr::V4(group), IpAddr::V4(interface)) = (group, interface) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "multicast discovery needs an IPv4 bind address and group; use -Dimmutant.cluster.seeds",
        ));
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV4::new(group, port).into())?;
    let interface = if interface.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        interface
    };
    socket.join_multicast_v4(&group, &interface)?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(2)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
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
    let beacon = key.seal_beacon(
        &serde_json::to_vec(&Beacon {
            cluster: cluster.clone(),
            node,
            gossip,
        })
        .unwrap_or_default(),
    );
    let mut ticker = tokio::time::interval(BEACON_INTERVAL);
    let mut buffer = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(error) = socket.send_to(&beacon, group).await {
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
