//! Gossip over UDP with every datagram sealed with the cluster's secret, using chitchat as
//! published: chitchat writes and reads its own messages, on a socket of its own on loopback,
//! and a relay here carries them between that socket and the cluster port, sealing what goes
//! out and opening what comes in. What a stranger sends to the cluster port does not open and
//! goes no further.
//!
//! ```text
//!   peer P ──sealed──▶ cluster port ──opened──▶ relay for P ──plain──▶ chitchat's socket
//!   peer P ◀──sealed── cluster port ◀──sealed── relay for P ◀──plain── chitchat's socket
//! ```
//!
//! Each peer has a relay socket of its own on loopback, so chitchat sees each peer as one
//! address (the relay's), and what it answers to that address goes back to that peer. The
//! relay takes from chitchat's socket only, and chitchat's socket is heard only from a relay:
//! a datagram from anywhere else on loopback is dropped, since only root can send from a
//! loopback address it does not hold, and the kernel drops loopback sources that come from
//! outside the host.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use tokio::net::UdpSocket as TokioUdpSocket;

use super::seal::{ClusterKey, MAX_DATAGRAM};

/// How many peers have a relay at once; the one unused longest goes first. (A stranger
/// replaying recorded datagrams from many ports makes relays too; this bounds them.)
const MAX_RELAYS: usize = 256;
/// How long a message chitchat wrote may take to reach its relay on loopback: it is there at
/// once, so this only bounds the wait for one the kernel dropped (a relay's buffer filled by a
/// stranger), which is lost like any datagram.
const RELAY_PATIENCE: Duration = Duration::from_millis(100);

/// Gossip over UDP, every datagram sealed (see the module's doc).
pub struct SealedUdp(pub Arc<ClusterKey>);

#[async_trait]
impl Transport for SealedUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let outside = TokioUdpSocket::bind(listen_addr).await?;
        let chitchat = UdpSocket::open(loopback()).await?;
        let chitchat_addr = chitchat.local_addr()?;
        Ok(Box::new(SealedUdpSocket {
            outside,
            chitchat,
            chitchat_addr,
            relays: Relays::default(),
            key: self.0.clone(),
            buffer: vec![0u8; MAX_DATAGRAM],
        }))
    }
}

/// An address on loopback, its port chosen by the system.
fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

struct SealedUdpSocket {
    /// The cluster port: sealed datagrams to and from peers.
    outside: TokioUdpSocket,
    /// chitchat's own socket, on loopback: plain datagrams to and from the relays.
    chitchat: UdpSocket,
    chitchat_addr: SocketAddr,
    relays: Relays,
    key: Arc<ClusterKey>,
    buffer: Vec<u8>,
}

#[async_trait]
impl Socket for SealedUdpSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.outside.local_addr()?)
    }

    /// chitchat writes the message to `to`'s relay, which seals it and sends it to `to`.
    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let relay = self.relays.for_peer(to)?;
        self.chitchat.send(relay.local_addr()?, envelope).await?;
        let written = tokio::time::timeout(RELAY_PATIENCE, async {
            loop {
                let (length, from) = relay.recv_from(&mut self.buffer).await?;
                // Anything else on the relay's port is a stranger's, never sealed.
                if from == self.chitchat_addr {
                    return std::io::Result::Ok(length);
                }
            }
        })
        .await;
        let Ok(written) = written else {
            tracing::warn!("gossip for {to} did not reach its relay; it is dropped");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        let Some(sealed) = self.key.seal_gossip(&self.buffer[..written?]) else {
            self.key.cannot_seal("gossip");
            return Ok(SendOutcome { num_bytes_sent: 0 });
        };
        let num_bytes_sent = match self.outside.send_to(&sealed, to).await {
            Ok(sent) => sent,
            // A datagram that cannot go (no route, or too large) is lost like any other; the
            // transport itself is fine. Said, since a state too large to gossip stops syncing.
            Err(error) => {
                tracing::warn!("cannot send gossip to {to}: {error}");
                0
            }
        };
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancellable, as chitchat wants: a datagram is either still in a socket or handed on.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            tokio::select! {
                heard = self.chitchat.recv() => {
                    let heard = heard?;
                    match self.relays.peer_of(heard.from_addr) {
                        Some(peer) => return Ok(RecvOutcome { from_addr: peer, ..heard }),
                        None => self.key.complain(heard.from_addr.ip(), "a gossip datagram to the node's loopback gossip socket"),
                    }
                }
                received = self.outside.recv_from(&mut self.buffer) => {
                    let (length, from) = match received {
                        Ok(received) => received,
                        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                        Err(error) => return Err(error.into()),
                    };
                    let Some(plain) = self.key.open_gossip(&mut self.buffer[..length]) else {
                        self.key.complain(from.ip(), "a gossip datagram");
                        continue;
                    };
                    let relay = self.relays.for_peer(from)?;
                    // Lost like any datagram if it cannot go; chitchat gossips again.
                    if let Err(error) = relay.send_to(plain, self.chitchat_addr).await {
                        tracing::warn!("cannot hand gossip from {from} to chitchat: {error}");
                    }
                }
            }
        }
    }
}

/// The relays, one per peer, by the peer's address and by the relay's.
#[derive(Default)]
struct Relays {
    by_peer: HashMap<SocketAddr, Relay>,
    peer_of_relay: HashMap<SocketAddr, SocketAddr>,
}

struct Relay {
    socket: TokioUdpSocket,
    address: SocketAddr,
    used: Instant,
}

impl Relays {
    /// `peer`'s relay, made if it has none (letting the one unused longest go, at the bound).
    fn for_peer(&mut self, peer: SocketAddr) -> std::io::Result<&TokioUdpSocket> {
        if !self.by_peer.contains_key(&peer) && self.by_peer.len() >= MAX_RELAYS {
            self.let_go_of_oldest();
        }
        let relay = match self.by_peer.entry(peer) {
            Entry::Occupied(relay) => relay.into_mut(),
            Entry::Vacant(vacant) => {
                let socket = std::net::UdpSocket::bind(loopback())?;
                socket.set_nonblocking(true)?;
                let socket = TokioUdpSocket::from_std(socket)?;
                let address = socket.local_addr()?;
                self.peer_of_relay.insert(address, peer);
                vacant.insert(Relay {
                    socket,
                    address,
                    used: Instant::now(),
                })
            }
        };
        relay.used = Instant::now();
        Ok(&relay.socket)
    }

    /// The peer whose relay has `address`.
    fn peer_of(&self, address: SocketAddr) -> Option<SocketAddr> {
        self.peer_of_relay.get(&address).copied()
    }

    fn let_go_of_oldest(&mut self) {
        let oldest = self
            .by_peer
            .iter()
            .min_by_key(|(_, relay)| relay.used)
            .map(|(peer, relay)| (*peer, relay.address));
        if let Some((peer, address)) = oldest {
            self.by_peer.remove(&peer);
            self.peer_of_relay.remove(&address);
        }
    }
}
