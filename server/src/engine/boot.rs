//! Booting the engine a node's properties choose: NATS JetStream when `immutant.engine` names
//! it (a clustered node only), else the embedded engine: the journal, and for a clustered node
//! the gossip cluster on the cluster port, its caches, and the mesh of links between members.

use std::sync::Arc;

use immutant_foundation::net::{self, NetError};
use immutant_foundation::shutdown::Shutdown;

use super::{Artifacts, CacheService, Engine, Membership, Messaging, Questions};
use crate::config::{ConfigError, Properties, ServerConfig};
use crate::embedded::artifacts::{ArtifactFetcher, ArtifactShelf};
use crate::embedded::cache::Caches;
use crate::embedded::cache::peer::Peers;
use crate::embedded::cluster::{Cluster, ClusterError};
use crate::embedded::mesh::{self, LinkServices};
use crate::embedded::messaging::Broker;
use crate::embedded::questions::MemberQuestions;
use crate::nats::artifacts::NatsArtifacts;
use crate::nats::caches::NatsCaches;
use crate::nats::membership::MembershipError;
use crate::nats::questions::NatsQuestions;
use crate::nats::queues::Queues;
use crate::nats::{EngineConfig, NatsNode};
use crate::vocabulary::messaging::MessagingError;
use crate::vocabulary::questions::AnswerDesk;

/// Why the engine could not start, or the node must stop.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// Starts the engine for the node `config` and `properties` describe, started at `generation`
/// (its age in the cluster), until `shutdown`.
pub async fn start(
    config: &ServerConfig,
    properties: &Properties,
    generation: u64,
    shutdown: &Shutdown,
) -> Result<Engine, EngineError> {
    let max_message_size = properties
        .get("immutant.messaging.max-message-size")
        .and_then(|value| value.parse().ok())
        .unwrap_or(16 * 1024 * 1024);
    let nats = match (EngineConfig::from_properties(properties)?, &config.cluster) {
        (None, _) => None,
        (Some(engine), Some(cluster)) => Some(
            NatsNode::start(
                &engine,
                &cluster.name,
                &config.node_name,
                generation,
                config.http_address(),
                config.management_url(),
                shutdown.clone(),
            )
            .await?,
        ),
        (Some(engine), None) => {
            return Err(EngineError::Config(ConfigError::InvalidProperty {
                name: "immutant.engine".to_string(),
                value: engine.url,
                expected: "embedded on a standalone node: NATS is a cluster's engine, so start the node with --clustered",
            }));
        }
    };
    let (messaging, journal) = match &nats {
        Some(nats) => {
            let queues = Queues::open(
                nats.nats.clone(),
                &config.node_name,
                generation,
                max_message_size,
                shutdown.clone(),
            )
            .await
            .map_err(MembershipError::from)?;
            (Messaging::Nats(queues), None)
        }
        None => {
            let broker = Arc::new(Broker::open(
                &config.data_dir,
                &config.node_name,
                max_message_size,
            )?);
            broker.set_quick_repair(properties.flag("immutant.messaging.quick-repair"));
            (Messaging::Embedded(broker.clone()), Some(broker))
        }
    };
    let peers = Arc::new(Peers::default());
    let answers = Arc::new(AnswerDesk::default());
    let (cluster, links) = match &config.cluster {
        // On NATS the cluster is there, not among the members.
        Some(_) if nats.is_some() => (None, None),
        Some(settings) => {
            let address = std::net::SocketAddr::new(config.bind_address, settings.port);
            let links = net::bind("cluster", address).await?;
            let cluster = Cluster::join(config, settings, generation).await?;
            (Some(cluster), Some(links))
        }
        None => (None, None),
    };
    let local_caches = Caches::start(
        &config.node_name,
        generation,
        cluster.clone(),
        peers.clone(),
        config.data_dir.clone(),
        max_message_size,
        shutdown.clone(),
    );
    if let (Some(cluster), Some(links), Some(broker)) = (&cluster, links, &journal) {
        let services = LinkServices {
            broker: broker.clone(),
            caches: local_caches.clone(),
            peers,
            artifacts: Arc::new(ArtifactShelf::new(&config.deployments)),
            answers: answers.clone(),
        };
        mesh::start(links, cluster.clone(), services, shutdown.clone());
    }
    let artifacts = match (&cluster, &nats) {
        (Some(cluster), _) => Some(Artifacts::Embedded(Arc::new(ArtifactFetcher::new(
            cluster.clone(),
            max_message_size,
        )))),
        (None, Some(nats)) => Some(Artifacts::Nats(
            NatsArtifacts::open(nats.nats.clone())
                .await
                .map_err(MembershipError::from)?,
        )),
        (None, None) => None,
    };
    let questions = match (&cluster, &nats) {
        (Some(cluster), _) => Some(Questions::Embedded(Arc::new(MemberQuestions::new(
            cluster.clone(),
        )))),
        (None, Some(nats)) => Some(Questions::Nats(
            NatsQuestions::start(
                nats.nats.clone(),
                &config.node_name,
                answers.clone(),
                shutdown.clone(),
            )
            .await
            .map_err(MembershipError::from)?,
        )),
        (None, None) => None,
    };
    let caches = match &nats {
        Some(nats) => {
            let shared = NatsCaches::open_registry(nats.nats.clone())
                .await
                .map_err(MembershipError::from)?;
            tokio::spawn(shared.clone().look_at_entries(shutdown.clone()));
            CacheService::Nats {
                shared,
                local: local_caches,
            }
        }
        None => CacheService::Embedded(local_caches),
    };
    let membership = match (cluster, nats) {
        (Some(cluster), _) => Membership::Embedded(cluster),
        (None, Some(nats)) => Membership::Nats(nats),
        (None, None) => Membership::Standalone {
            node_name: config.node_name.clone(),
        },
    };
    Ok(Engine {
        messaging,
        caches,
        membership,
        artifacts,
        questions,
        answers,
    })
}
