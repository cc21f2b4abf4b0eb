//! A node's life: lock its data dir, bind its ports, serve until asked to stop, stop gracefully.

mod data_dir;
mod registry;

use std::future::Future;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use crate::apps::{AppContext, Apps};
use crate::config::{ConfigError, Properties, ServerConfig};
use crate::embedded::cache::Caches;
use crate::embedded::cache::peer::Peers;
use crate::embedded::cluster::{Cluster, ClusterError};
use crate::embedded::mesh::LinkServices;
use crate::embedded::messaging::Broker;
use crate::engine::{CacheService, Messaging};
use crate::management::{self, NodeInfo};
use crate::nats::caches::NatsCaches;
use crate::nats::membership::MembershipError;
use crate::nats::queues::Queues;
use crate::nats::{EngineConfig, NatsNode};
use crate::vocabulary::messaging::MessagingError;
use crate::{deploy, web};
pub use data_dir::DataDirLock;
use immutant_foundation::net::{self, NetError, serve, serve_guarded, served};
use immutant_foundation::shutdown::Shutdown;

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot use the data dir {path}: {source}; choose another with -Djboss.server.data.dir=DIR"
    )]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the data dir {path} is in use by {holder}; give this node a data dir of its own with -Djboss.server.data.dir=DIR"
    )]
    DataDirInUse { path: PathBuf, holder: String },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot start the node's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// How the node speaks to balancers, if it does: when it is clustered (and listens for their
/// advertisements) or has balancers listed in `immutant.modcluster.proxies`.
fn modcluster_config(
    config: &ServerConfig,
    properties: &Properties,
) -> Option<crate::modcluster::ModClusterConfig> {
    let proxies = properties
        .get("immutant.modcluster.proxies")
        .and_then(|proxies| crate::config::properties::parse_seeds(&proxies))
        .unwrap_or_default();
    if config.cluster.is_none() && proxies.is_empty() {
        return None;
    }
    // A node bound to every address tells each balancer the one it reaches it from.
    let http = config.http_address();
    let number = |name: &str, default: u64| {
        properties
            .get(name)
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    Some(crate::modcluster::ModClusterConfig {
        identity: crate::modcluster::Identity {
            route: config.node_name.clone(),
            http,
            balancer: properties
                .get("immutant.modcluster.balancer")
                .unwrap_or_else(|| "mycluster".to_string()),
        },
        proxies,
        advertise_on: config.cluster.as_ref().map(|_| config.bind_address),
        status_interval: std::time::Duration::from_millis(number(
            "immutant.modcluster.status-interval",
            10_000,
        )),
    })
}

/// Boots a node, serves until `stop` resolves (with the reason, such as the signal's name), then
/// stops it gracefully. `started` is when the process began, for the boot time.
pub async fn run(
    config: ServerConfig,
    properties: &Properties,
    started: Instant,
    stop: impl Future<Output = String>,
) -> Result<(), NodeError> {
    let lock = DataDirLock::acquire(&config.data_dir, &config.node_name)?;
    let http = net::bind("HTTP", config.http_address()).await?;
    let management = net::bind("management", config.management_address()).await?;

    let max_message_size = properties
        .get("immutant.messaging.max-message-size")
        .and_then(|value| value.parse().ok())
        .unwrap_or(16 * 1024 * 1024);
    let shutdown = Shutdown::new();
    // The node's generation is when it started: a restarted node is the youngest member.
    let generation = immutant_foundation::clock::now_ms();
    let nats = match (EngineConfig::from_properties(properties)?, &config.cluster) {
        (None, _) => None,
        (Some(engine), Some(cluster)) => Some(
            NatsNode::start(
                &engine,
                &cluster.name,
                &config.node_name,
                generation,
                config.http_address(),
                format!("http://{}", config.management_address()),
                shutdown.clone(),
            )
            .await?,
        ),
        (Some(engine), None) => {
            return Err(NodeError::Config(ConfigError::InvalidProperty {
                name: "immutant.engine".to_string(),
                value: engine.url,
                expected: "embedded on a standalone node: NATS is a cluster's engine, so start the node with --clustered",
            }));
        }
    };
    let (broker, journal) = match &nats {
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
            broker.set_quick_repair(
                properties.get("immutant.messaging.quick-repair").as_deref() == Some("true"),
            );
            (Messaging::Embedded(broker.clone()), Some(broker))
        }
    };
    let peers = Arc::new(Peers::default());
    let (cluster, links) = match &config.cluster {
        // On NATS the cluster is there, not among the members.
        Some(_) if nats.is_some() => (None, None),
        Some(settings) => {
            let address = std::net::SocketAddr::new(config.bind_address, settings.port);
            let links = net::bind("cluster", address).await?;
            let cluster = Cluster::join(&config, settings, generation).await?;
            (Some(cluster), Some(links))
        }
        None => (None, None),
    };
    let caches = Caches::start(
        &config.node_name,
        generation,
        cluster.clone(),
        peers.clone(),
        config.data_dir.clone(),
        max_message_size,
        shutdown.clone(),
    );
    let cache_service = match &nats {
        Some(nats) => {
            let service = NatsCaches::open_registry(nats.nats.clone(), caches.clone())
                .await
                .map_err(MembershipError::from)?;
            tokio::spawn(service.clone().look_at_entries(shutdown.clone()));
            CacheService::Nats(service)
        }
        None => CacheService::Embedded(caches.clone()),
    };
    if let (Some(cluster), Some(links), Some(broker)) = (&cluster, links, &journal) {
        let services = LinkServices {
            broker: broker.clone(),
            caches: caches.clone(),
            peers,
        };
        crate::embedded::mesh::start(links, cluster.clone(), services, shutdown.clone());
    }
    let web = Arc::new(
        web::Web::new(config.node_name.clone(), config.data_dir.join("web")).map_err(|source| {
            NodeError::DataDir {
                path: config.data_dir.join("web"),
                source,
            }
        })?,
    );
    let apps = Arc::new(Apps::new(AppContext {
        broker: broker.clone(),
        caches: cache_service.clone(),
        node_name: config.node_name.clone(),
        properties: properties.for_apps(),
        deployments_dir: config.deployments.clone(),
        cluster: cluster.clone(),
        nats: nats.clone(),
        misfire_threshold_ms: properties
            .get("immutant.jobs.misfire-threshold")
            .and_then(|value| value.parse().ok())
            .unwrap_or(60_000),
        web: web.clone(),
    }));
    if let Some(name) = properties
        .get("immutant.attach")
        .filter(|name| !name.is_empty())
    {
        if !immutant_protocol::names::is_deployment_name(&name) {
            return Err(NodeError::Config(ConfigError::InvalidProperty {
                name: "immutant.attach".to_string(),
                value: name,
                expected: "an app's name (ASCII letters, digits, - and _)",
            }));
        }
        crate::apps::attach::listen(&config.data_dir, apps.clone(), name, shutdown.clone())
            .map_err(|source| NodeError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
    }
    let registration = registry::Registration::record(&properties.home(), &config);
    // Balancers hear the node leave before it stops taking requests, so none is sent to it
    // while it stops.
    let leaving = Shutdown::new();
    let balancers = modcluster_config(&config, properties)
        .map(|settings| crate::modcluster::start(settings, web.clone(), leaving.clone()));

    let scanner = {
        let (deployments, apps, shutdown) =
            (config.deployments.clone(), apps.clone(), shutdown.clone());
        tokio::spawn(async move { deploy::watch(&deployments, apps, shutdown).await })
    };
    let info = Arc::new(NodeInfo {
        config: config.clone(),
        properties: properties.shown(),
        started,
        apps: apps.clone(),
        broker: broker.clone(),
        caches: cache_service,
        web: web.clone(),
        view: match (&cluster, &nats) {
            (Some(cluster), _) => Some(cluster.view()),
            (None, Some(nats)) => Some(nats.membership.view()),
            (None, None) => None,
        },
        engine: nats.as_ref().map(|nats| nats.nats.clone()),
        generation,
        history: management::QueueHistory::start(broker.clone(), shutdown.clone()),
        metrics: management::install_metrics(&shutdown),
        token: crate::management::ManagementToken::create(&config.data_dir).map_err(|source| {
            NodeError::DataDir {
                path: config.data_dir.clone(),
                source,
            }
        })?,
    });
    if config.cluster.is_some() && properties.was_given("immutant.cluster.secret") {
        tracing::warn!(
            "the cluster secret was given on the command line, which other users of this host can read (ps, /proc); give it with -Dimmutant.cluster.secret-file=PATH instead"
        );
    }
    let servers = [
        serve("HTTP", http, web::router(web), shutdown.clone()),
        serve_guarded(management, management::router(info), shutdown.clone()),
    ];

    let clustering = match (&config.cluster, &nats) {
        (Some(cluster), Some(nats)) => {
            format!(", cluster {} on NATS at {}", cluster.name, nats.nats.url)
        }
        (Some(cluster), None) => format!(
            ", cluster {} on {}:{}",
            cluster.name, config.bind_address, cluster.port
        ),
        (None, _) => String::new(),
    };
    info!(
        "Immutant {} node {} started in {} ms (config {}, http http://{}, management http://{}, data {}{clustering})",
        crate::VERSION,
        config.node_name,
        started.elapsed().as_millis(),
        config.name,
        config.http_address(),
        config.management_address(),
        config.data_dir.display(),
    );

    let name_clash = async {
        match (&cluster, &nats) {
            (Some(cluster), _) => NodeError::from(cluster.name_clash().await),
            (None, Some(nats)) => NodeError::from(nats.membership.name_clash().await),
            (None, None) => std::future::pending().await,
        }
    };
    let (reason, failure) = tokio::select! {
        reason = stop => (reason, None),
        clash = name_clash => ("its name is taken".to_string(), Some(clash)),
    };
    let stopping = Instant::now();
    info!("Stopping node {} ({reason})", config.node_name);
    leaving.cancel();
    if let Some(balancers) = balancers {
        // Each balancer is told the node leaves (a few seconds at most).
        let _ = balancers.await;
    }
    shutdown.cancel();
    let _ = scanner.await;
    apps.stop_all().await;
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    if let Some(nats) = &nats {
        nats.membership.leave().await;
    }
    broker.close().await;
    drop(registration);
    served(servers).await?;
    drop(lock);
    info!(
        "Node {} stopped in {} ms",
        config.node_name,
        stopping.elapsed().as_millis()
    );
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
