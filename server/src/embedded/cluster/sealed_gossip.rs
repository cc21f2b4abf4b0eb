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
//! address (the relay's), and what it answers to that address goes back to that peer. A relay
//! is connected to chitchat's socket, so the kernel gives it nothing from anywhere else; and
//! chitchat's socket is heard only from a relay. Sending from a loopback address one does not
//! hold takes raw sockets (root, or `CAP_NET_RAW` in the node's network namespace), and the
//! kernel drops loopback sources that come from outside the host (unless `route_localnet` is
//! set): the README says what this leaves open.

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
/// A relay unused this long is let go when another is made.
const RELAY_IDLE: Duration = Duration::from_secs(60);
/// How long a message chitchat wrote may take to reach its relay on loopback: it is there at
/// once, so this only bounds the wait for one the kernel dropped, which is lost like any
/// datagram.
const RELAY_PATIENCE: Duration = Duration::from_millis(100);

/// Gossip over UDP, every datagram sealed (see the module's doc).
pub struct SealedUdp(pub Arc<ClusterKey>);

#[async_trait]
impl Transport for SealedUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let outside = TokioUdpSocket::bind(listen_addr).await?;
        let chitchat = UdpSocket::open(loopback()).await.map_err(|error| {
            anyhow::anyhow!("{error:#}; gossip needs the loopback interface (127.0.0.1) up")
        })?;
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

    /// chitchat writes the message to `to`'s relay, which seals it and sends it to `to`. Never
    /// an error: what cannot go is lost like any datagram, and chitchat gossips again.
    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let nothing = SendOutcome { num_bytes_sent: 0 };
        let relay = match self.relays.for_peer(to, self.chitchat_addr) {
            Ok(relay) => relay,
            Err(error) => {
                self.key.cannot_relay(&error);
                return Ok(nothing);
            }
        };
        if let Err(error) = self.chitchat.send(relay.address, envelope).await {
            self.key.cannot_relay(&error);
            return Ok(nothing);
        }
        let written =
            tokio::time::timeout(RELAY_PATIENCE, relay.socket.recv(&mut self.buffer)).await;
        let written = match written {
            Ok(Ok(written)) => written,
            Ok(Err(error)) => {
                self.key.cannot_relay(&error);
                return Ok(nothing);
            }
            // Lost on loopback: should it come late, it goes with the relay, never out as the
            // next message to `to`.
            Err(_) => {
                self.relays.let_go(to);
                return Ok(nothing);
            }
        };
        let Some(sealed) = self.key.seal_gossip(&self.buffer[..written]) else {
            self.key.cannot_seal("gossip");
            return Ok(nothing);
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

    /// Cancellable, as chitchat wants: nothing is awaited once a datagram is taken from a
    /// socket, so each is either still there or handed on.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            tokio::select! {
                heard = self.chitchat.recv() => {
                    let heard = heard?;
                    match self.relays.peer_of(heard.from_addr) {
                        Some(peer) => return Ok(RecvOutcome { from_addr: peer, ..heard }),
                        None => self.key.stray(heard.from_addr.ip()),
                    }
                }
                received = self.outside.recv_from(&mut self.buffer) => {
                    let (length, from) = match received {
                        Ok(received) => received,
                        // What chitchat's own socket passes over: an ICMP answer to an earlier
                        // send, or the kernel short of buffers for a moment.
                        Err(error) if matches!(
                            error.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::OutOfMemory
                        ) => continue,
                        Err(error) => return Err(error.into()),
                    };
                    let Some(plain) = self.key.open_gossip(&mut self.buffer[..length]) else {
                        self.key.complain(from.ip(), "a gossip datagram");
                        continue;
                    };
                    // Handed on without waiting (a full buffer drops it, as UDP does).
                    let handed = self
                        .relays
                        .for_peer(from, self.chitchat_addr)
                        .and_then(|relay| socket2::SockRef::from(&relay.socket).send(plain));
                    if let Err(error) = handed {
                        self.key.cannot_relay(&error);
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
    /// Connected to chitchat's socket: takes from nothing else.
    socket: TokioUdpSocket,
    address: SocketAddr,
    used: Instant,
}

impl Relays {
    /// `peer`'s relay, made if it has none (letting idle ones go, and the one unused longest
    /// at the bound).
    fn for_peer(&mut self, peer: SocketAddr, chitchat: SocketAddr) -> std::io::Result<&Relay> {
        if !self.by_peer.contains_key(&peer) {
            self.let_go_of_idle();
        }
        let relay = match self.by_peer.entry(peer) {
            Entry::Occupied(relay) => relay.into_mut(),
            Entry::Vacant(vacant) => {
                let socket = std::net::UdpSocket::bind(loopback())?;
                socket.connect(chitchat)?;
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
        Ok(relay)
    }

    /// The peer whose relay has `address`.
    fn peer_of(&self, address: SocketAddr) -> Option<SocketAddr> {
        self.peer_of_relay.get(&address).copied()
    }

    fn let_go(&mut self, peer: SocketAddr) {
        if let Some(relay) = self.by_peer.remove(&peer) {
            self.peer_of_relay.remove(&relay.address);
        }
    }

    /// Lets go of the relays unused for [`RELAY_IDLE`], and of the one unused longest if there
    /// are still [`MAX_RELAYS`].
    fn let_go_of_idle(&mut self) {
        let idle: Vec<SocketAddr> = self
            .by_peer
            .iter()
            .filter(|(_, relay)| relay.used.elapsed() >= RELAY_IDLE)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in idle {
            self.let_go(peer);
        }
        if self.by_peer.len() >= MAX_RELAYS {
            let oldest = self
                .by_peer
                .iter()
                .min_by_key(|(_, relay)| relay.used)
                .map(|(peer, _)| *peer);
            if let Some(peer) = oldest {
                self.let_go(peer);
            }
        }
    }
}

#[cfg(test)]
mod tests;
