//! Membership on whichever engine runs: the view, where each app's singletons run, what
//! fencing an operation needs, the singleton driver, a clash of names, and leaving. One value,
//! so that a node is standalone, on the embedded engine, or on NATS, and never two at once.

use std::sync::Arc;

use immutant_contracts::status::{EngineKind, EngineStatus};
use immutant_foundation::shutdown::Shutdown;
use tokio::sync::watch;

use super::EngineError;
use crate::embedded::cluster::Cluster;
use crate::nats::NatsNode;
use crate::vocabulary::membership::View;
use crate::vocabulary::singletons::LeaseEvent;

/// What this node is a member of.
#[derive(Clone)]
pub enum Membership {
    /// No cluster: the node's singletons run here, under a lease that never lapses.
    Standalone { node_name: String },
    /// A cluster on the embedded engine: gossip among the members.
    Embedded(Arc<Cluster>),
    /// A cluster kept in NATS JetStream.
    Nats(Arc<NatsNode>),
}

/// What fencing an operation made under a singleton lease needs to know of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fencing {
    /// The newest epoch the cluster knows for the app's singletons.
    pub highest_epoch: Option<u64>,
    /// Whether this node's picture of the cluster can be trusted now (not just back from a
    /// pause).
    pub settled: bool,
}

impl Membership {
    /// Whether this node is in a cluster, on either engine.
    pub fn clustered(&self) -> bool {
        !matches!(self, Membership::Standalone { .. })
    }

    /// The cluster's view as it changes; none on a standalone node.
    pub fn view(&self) -> Option<watch::Receiver<View>> {
        match self {
            Membership::Standalone { .. } => None,
            Membership::Embedded(cluster) => Some(cluster.view()),
            Membership::Nats(nats) => Some(nats.membership.view()),
        }
    }

    /// The node that runs `app`'s singletons: in a cluster the elected one (the embedded
    /// engine) or the lease's holder as its heartbeat says (NATS), if any; on a standalone
    /// node, this one.
    pub fn singletons_on(&self, app: &str) -> Option<String> {
        match self {
            Membership::Standalone { node_name } => Some(node_name.clone()),
            Membership::Embedded(cluster) => cluster.singletons_on(app),
            Membership::Nats(nats) => nats.membership.singletons_on(app),
        }
    }

    /// What fencing an operation under `app`'s singleton lease needs; none on a standalone
    /// node, where nothing is fenced.
    pub fn fencing(&self, app: &str) -> Option<Fencing> {
        match self {
            Membership::Standalone { .. } => None,
            Membership::Embedded(cluster) => Some(Fencing {
                highest_epoch: cluster.highest_epoch(app),
                settled: cluster.settled(),
            }),
            Membership::Nats(nats) => Some(Fencing {
                highest_epoch: nats.leases.highest_epoch(app),
                settled: true,
            }),
        }
    }

    /// Runs the engine's singleton driver for `app` until `ended`, once `exclusive`, reporting
    /// each change of this node's lease to `report`. A standalone node has no driver: its
    /// singletons hold a lease that never lapses.
    pub async fn follow_singletons(
        &self,
        app: &str,
        exclusive: watch::Receiver<bool>,
        ended: &Shutdown,
        report: impl FnMut(LeaseEvent),
    ) {
        match self {
            Membership::Standalone { .. } => {}
            Membership::Embedded(cluster) => {
                crate::embedded::cluster::singletons::follow(cluster, app, exclusive, ended, report)
                    .await
            }
            Membership::Nats(nats) => {
                crate::nats::singletons::follow(nats, app, exclusive, ended, report).await
            }
        }
    }

    /// Resolves if this node cannot stay in its cluster (another live node has its name; on the
    /// embedded engine, also its gossip stopped): the node must then stop. Never on a
    /// standalone node.
    pub async fn expelled(&self) -> EngineError {
        match self {
            Membership::Standalone { .. } => std::future::pending().await,
            Membership::Embedded(cluster) => cluster.expelled().await.into(),
            Membership::Nats(nats) => nats.membership.name_clash().await.into(),
        }
    }

    /// Leaves the cluster at once, rather than waiting for the others to notice.
    pub async fn leave(&self) {
        match self {
            Membership::Standalone { .. } => {}
            Membership::Embedded(cluster) => cluster.leave().await,
            Membership::Nats(nats) => nats.membership.leave().await,
        }
    }

    /// The engine the cluster runs on, and how this node's link to it is; none on a
    /// standalone node.
    pub fn engine_status(&self) -> Option<EngineStatus> {
        match self {
            Membership::Standalone { .. } => None,
            Membership::Embedded(_) => Some(EngineStatus {
                kind: EngineKind::Embedded,
                url: None,
                connected: true,
                server_version: None,
            }),
            Membership::Nats(nats) => Some(EngineStatus {
                kind: EngineKind::Nats,
                url: Some(nats.nats.url.clone()),
                connected: nats.nats.connected(),
                server_version: Some(nats.nats.server_version()),
            }),
        }
    }
}
