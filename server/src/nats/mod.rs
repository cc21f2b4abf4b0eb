//! The NATS engine: a clustered node started with `-Dimmutant.engine=nats://...` keeps what the
//! cluster shares in NATS JetStream instead of among its members: its queues and topics as
//! streams ([`queues`]), its membership as heartbeats in a key-value bucket ([`membership`]), and
//! its apps' singleton leases as keys whose revisions are the fencing epochs ([`leases`]).
//!
//! Everything of one cluster lives under names made from the cluster's name, so clusters of
//! other names share a NATS deployment without meeting. Names the user gives (queues, apps,
//! nodes) are made into NATS tokens by [`token`], which is reversible.
//!
//! Where to start reading:
//!
//! - [`EngineConfig`] (`config.rs`): which NATS servers a node uses, read from its properties;
//! - [`Nats`] (`connection.rs`): the node's connection, made with its credentials and CA, and
//!   checked for JetStream; `setup.rs` opens its streams and buckets, asking a busy JetStream
//!   again; `naming.rs` names them after the cluster;
//! - [`NatsError`] (`errors.rs`): why the engine cannot start, and which of JetStream's answers
//!   mean "busy" or "written meanwhile";
//! - [`NatsNode`] (below): what a node on this engine shares its cluster through, and the
//!   services over it: [`membership`], [`leases`] and their [`singletons`] driver, [`queues`] and
//!   [`caches`];
//! - [`artifacts`]: the app binaries members hand each other, in an object store;
//! - [`questions`]: members' questions to each other's management, as NATS requests.

pub mod artifacts;
pub mod caches;
mod config;
mod connection;
mod errors;
pub mod leases;
pub mod membership;
mod naming;
pub mod questions;
pub mod queues;
mod setup;
pub mod singletons;

use std::sync::Arc;
use std::time::Duration;

pub use config::EngineConfig;
pub use connection::Nats;
pub use errors::{NatsError, is_busy_consumer, is_conflict};
pub use naming::{token, untoken};

/// What a node on the NATS engine shares its cluster through.
pub struct NatsNode {
    pub nats: Arc<Nats>,
    pub membership: Arc<membership::Membership>,
    pub leases: Arc<leases::Leases>,
}

impl NatsNode {
    /// Connects to NATS and joins the cluster there.
    pub async fn start(
        engine: &EngineConfig,
        cluster_name: &str,
        node_name: &str,
        generation: u64,
        http: std::net::SocketAddr,
        management: String,
        shutdown: immutant_foundation::shutdown::Shutdown,
    ) -> Result<Arc<NatsNode>, membership::MembershipError> {
        let nats = Nats::connect(engine, cluster_name, node_name).await?;
        let membership =
            membership::Membership::join(&nats, node_name, generation, http, management, shutdown)
                .await?;
        let leases = leases::Leases::open(&nats, node_name, engine.lease_time).await?;
        Ok(Arc::new(NatsNode {
            nats,
            membership,
            leases,
        }))
    }
}

/// The time until `fence_ns` on the boot clock (none: for ever).
pub fn time_left(fence_ns: Option<u64>) -> Duration {
    match fence_ns {
        Some(fence) => {
            Duration::from_nanos(fence.saturating_sub(immutant_foundation::clock::monotonic_ns()))
        }
        None => Duration::MAX,
    }
}
