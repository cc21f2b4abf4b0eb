//! Clustering: nodes started with `standalone-ha.toml` find each other ([`discovery`] by
//! multicast, or seeds), agree on who is alive through gossip with phi-accrual failure detection
//! (the chitchat library, on the cluster port, every datagram sealed with the cluster's secret:
//! [`seal`], [`sealed_gossip`]), and share small state: each member's start time, management URL and running apps.
//! From that every member computes the same [`View`], oldest first, which singletons are
//! elected on ([`election`]), and the singletons' holder keeps its lease ([`lease_protocol`]).
//!
//! [`Cluster`] is one type whose methods stand in two files: [`gossip`] (joining, the view,
//! suspects, pauses, what this node tells the others, leaving) and [`leases`] (taking, renewing
//! and letting go of singleton leases, and answering the others' renewals with promises, by
//! [`lease_protocol`]'s rules).

mod discovery;
pub mod election;
mod gossip;
mod keys;
pub mod lease_holder;
pub mod lease_protocol;
mod leases;
pub mod seal;
mod sealed_gossip;
pub mod singletons;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{ChitchatHandle, ChitchatId, NodeState};
use lease_protocol::Promise;
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::vocabulary::membership::View;

/// Why a node cannot be, or stay, in its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot gossip on the cluster port {address}: {reason}; if another node uses it, shift this node's ports with -Djboss.socket.binding.port-offset=100"
    )]
    Gossip { address: SocketAddr, reason: String },
    #[error(
        "gossip on the cluster port {address} stopped ({reason}); this node cannot stay in its cluster"
    )]
    GossipStopped { address: SocketAddr, reason: String },
    #[error(
        "another live node in the cluster is named '{name}' (at {other}); give each node its own name with -Djboss.node.name"
    )]
    NameClash { name: String, other: SocketAddr },
}

/// This node's membership in its cluster.
pub struct Cluster {
    handle: ChitchatHandle,
    view: watch::Receiver<View>,
    clash: watch::Receiver<Option<SocketAddr>>,
    config: ClusterConfig,
    node_name: String,
    /// When this node started: its age in the cluster.
    generation: u64,
    joined: tokio::time::Instant,
    /// The keys gossip, beacons and links are sealed with.
    key: Arc<seal::ClusterKey>,
    /// Members whose link dropped and could not be opened again, by name and generation, with
    /// when: out of the view at once, before gossip notices (what FD_SOCK did for JGroups).
    suspects: watch::Sender<BTreeMap<(String, u64), tokio::time::Instant>>,
    /// How many processes of each app run here: two overlap while a web app is redeployed.
    app_processes: std::sync::Mutex<BTreeMap<String, usize>>,
    /// This node's identity in the gossip.
    me: ChitchatId,
    /// The live members' gossiped state, as it changes.
    live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    /// The highest epoch each app's singletons were taken with, by a live member.
    epochs: std::sync::Mutex<BTreeMap<String, u64>>,
    /// The promises this node made by answering holders' renewals, per app.
    promises: std::sync::Mutex<BTreeMap<String, Promise>>,
    /// Members proven dead (their link closed and their port refused), by name and generation,
    /// oldest first.
    dead: std::sync::Mutex<std::collections::VecDeque<(String, u64)>>,
    pauses: std::sync::Mutex<Pauses>,
}

/// A gap this long between two ticks of a 50 ms timer means the process was paused (SIGSTOP, a
/// frozen VM) or starved.
const PAUSE_GAP: Duration = Duration::from_millis(500);

/// When this process last ran its pause watch, and when it last came back from a pause (on the
/// host's boot clock, in nanoseconds: it counts a suspended host's sleep too).
#[derive(Debug, Clone, Copy)]
struct Pauses {
    last_tick_ns: u64,
    resumed_ns: Option<u64>,
}

impl Cluster {
    /// The keys the mesh's links are sealed with.
    pub fn key(&self) -> &seal::ClusterKey {
        &self.key
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// When this node started: its age in the cluster.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The members a side of the cluster needs for its singletons to run.
    pub fn singleton_quorum(&self) -> u32 {
        self.config.singleton_quorum
    }
}
