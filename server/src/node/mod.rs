//! A node's life: lock its data dir, bind its ports, serve until asked to stop, stop gracefully.

mod data_dir;
mod https;
mod registry;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use crate::apps::{AppContext, Apps};
use crate::config::{ConfigError, Properties, ServerConfig};
use crate::engine::{self, Engine, EngineError};
use crate::management::{self, NodeInfo};
use crate::{deploy, web};
pub use data_dir::DataDirLock;
use immutant_contracts::status::EngineStatus;
use immutant_foundation::edge::{EdgePort, serve_edge};
use immutant_foundation::net::{self, NetError, serve_guarded, served};
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
    #[error(transparent)]
    Balancer(#[from] immutant_balancer::BalancerError),
    #[error(transparent)]
    Certificate(#[from] immutant_foundation::tls::CertificateError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the node's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    ManagementTls(#[from] crate::management::TlsError),
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
    // Before anything of the node is seen: a certificate it cannot have stops it here.
    let management_tls = management_tls(&config, properties)?;
    let https = https::https(&config, properties)?;
    let http = net::bind("HTTP", config.http_address()).await?;
    let https_listener = match &https {
        Some(https) => Some(net::bind("HTTPS", https.address).await?),
        None => None,
    };
    let management = net::bind("management", config.management_address()).await?;

    let shutdown = Shutdown::new();
    // The node's generation is when it started: a restarted node is the youngest member.
    let generation = immutant_foundation::clock::now_ms();
    let engine = engine::start(&config, properties, generation, &shutdown).await?;
    let web_dir = config.data_dir.join("web");
    let web = Arc::new(
        web::Web::new(config.node_name.clone(), web_dir.clone()).map_err(in_data_dir(web_dir))?,
    );
    let apps = Arc::new(Apps::new(AppContext {
        engine: engine.clone(),
        node_name: config.node_name.clone(),
        properties: properties.for_apps(),
        deployments_dir: config.deployments.clone(),
        groups: config.groups.clone(),
        misfire_threshold_ms: properties
            .get("immutant.jobs.misfire-threshold")
            .and_then(|value| value.parse().ok())
            .unwrap_or(60_000),
        web: web.clone(),
    }));
    attach(&config, properties, &apps, &shutdown)?;
    let registration = registry::Registration::record(&properties.home(), &config);

    // On a clustered node the folder first catches up with the cluster's record (for a while
    // at most), so that a member back from being down never starts what was undeployed
    // meanwhile; the node does not wait for it to say it started.
    let following = follow_the_cluster(&config, &engine, &apps);
    let scanner = {
        let (deployments, apps, shutdown) =
            (config.deployments.clone(), apps.clone(), shutdown.clone());
        tokio::spawn(async move {
            let seen = match following {
                Some(mut following) => {
                    tokio::select! {
                        caught_up = tokio::time::timeout(CATCH_UP_PATIENCE, following.catch_up()) => {
                            if caught_up.is_err() {
                                tracing::warn!(
                                    "the install's deployments could not be brought in line with the cluster's record within {} s: they run as the folder has them until they are",
                                    CATCH_UP_PATIENCE.as_secs()
                                );
                            }
                        }
                        _ = shutdown.cancelled() => return,
                    }
                    let (seen, events) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(following.run(events, shutdown.clone()));
                    Some(seen)
                }
                None => None,
            };
            let report = |event: deploy::DeploymentEvent| {
                if let Some(seen) = &seen {
                    let _ = seen.send(event.clone());
                }
                apps.apply(event)
            };
            deploy::watch(&deployments, report, shutdown).await
        })
    };
    let info = Arc::new(NodeInfo {
        config: config.clone(),
        properties: properties.shown(),
        started,
        apps: apps.clone(),
        engine: engine.clone(),
        web: web.clone(),
        generation,
        history: management::QueueHistory::start(engine.messaging.clone(), shutdown.clone()),
        metrics: management::install_metrics(&shutdown),
        token: crate::management::ManagementToken::create(&config.data_dir)
            .map_err(in_data_dir(config.data_dir.clone()))?,
        https: https.as_ref().map(|https| management::HttpsInfo {
            address: https.address,
            certificates: https.certificates.clone(),
        }),
    });
    engine.answers.open(management::answerer(info.clone()));
    if config.cluster.is_some() && properties.was_given("immutant.cluster.secret") {
        tracing::warn!(
            "the cluster secret was given on the command line, which other users of this host can read (ps, /proc); give it with -Dimmutant.cluster.secret-file=PATH instead"
        );
    }
    let redirect = https
        .as_ref()
        .filter(|https| https.redirect_http)
        .map(|https| https.address.port());
    // A port that sends its clients to HTTPS has nothing to hand to an app.
    let hand_off = properties.flag("immutant.http.handoff") && redirect.is_none();
    let plain = EdgePort {
        h2c: properties.flag("immutant.http.h2c"),
        claim: hand_off.then(|| web.hand_off_connections(shutdown.clone())),
        ..EdgePort::default()
    };
    let mut servers = vec![
        serve_edge(
            "HTTP",
            http,
            web::router(web.clone(), redirect),
            plain,
            shutdown.clone(),
        ),
        serve_guarded(
            management,
            management::router(info),
            management_tls,
            shutdown.clone(),
        ),
    ];
    // Balancers hear of the node once its HTTP port serves (they look at it before they send
    // it anything), and hear it leave before it stops taking requests, so none is sent to it
    // while it stops.
    let leaving = Shutdown::new();
    let balancers = modcluster_config(&config, properties)
        .map(|settings| crate::modcluster::start(settings, web.clone(), leaving.clone()));
    if let (Some(https), Some(listener)) = (&https, https_listener) {
        let port = EdgePort {
            tls: Some(https.tls.clone()),
            h2c: false,
            hsts: https.hsts,
            workers: None,
            claim: None,
        };
        let router = web::router(web, None);
        servers.push(serve_edge(
            "HTTPS",
            listener,
            router,
            port,
            shutdown.clone(),
        ));
        tokio::spawn(https.certificates.clone().keep_fresh(shutdown.clone()));
    }

    say_started(
        &config,
        &engine,
        started,
        https.as_ref().map(|https| https.address),
    );

    let expelled = async { NodeError::from(engine.membership.expelled().await) };
    let (reason, failure) = tokio::select! {
        reason = stop => (reason, None),
        error = expelled => ("it cannot stay in its cluster".to_string(), Some(error)),
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
    engine.membership.leave().await;
    engine.messaging.close().await;
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

/// On a clustered node: what keeps the install's deployments folder and the cluster's record
/// of deployments in line.
fn follow_the_cluster(
    config: &ServerConfig,
    engine: &Engine,
    apps: &Arc<Apps>,
) -> Option<deploy::cluster::ClusterDeployments> {
    let artifacts = engine.artifacts.clone()?;
    let (refused, running) = (apps.clone(), apps.clone());
    Some(deploy::cluster::ClusterDeployments::new(
        engine.caches.clone(),
        artifacts,
        config.deployments.clone(),
        config.node_name.clone(),
        move |event| refused.apply(event),
        move || running.artifacts_in_use(),
    ))
}

/// How long a clustered node waits for the cluster's record of deployments before it deploys
/// what its install's folder holds.
const CATCH_UP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// TLS for the management API bound beyond loopback: the certificate and key given with
/// properties, or the data dir's (made at the first boot, for the management address, this
/// host's name, `localhost` and `127.0.0.1`); none on loopback.
fn management_tls(
    config: &ServerConfig,
    properties: &Properties,
) -> Result<Option<Arc<rustls::ServerConfig>>, NodeError> {
    if !config.management_tls() {
        return Ok(None);
    }
    let file = |name: &str| properties.get(name).filter(|path| !path.is_empty());
    let (cert, key) = (
        "immutant.management.tls.cert-file",
        "immutant.management.tls.key-file",
    );
    let given = match (file(cert), file(key)) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (None, None) => None,
        (given, _) => {
            let missing = if given.is_some() { key } else { cert };
            return Err(NodeError::Config(ConfigError::InvalidProperty {
                name: missing.to_string(),
                value: String::new(),
                expected: "a PEM file: the management API's certificate and its key are given together",
            }));
        }
    };
    let files = management::TlsFiles::new(&config.data_dir, given);
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !config.management_bind_address.is_unspecified() {
        names.push(config.management_bind_address.to_string());
    }
    // A host name a certificate cannot carry is left out.
    let host = gethostname::gethostname().into_string().ok();
    names.extend(host.filter(|host| host.is_ascii() && !host.is_empty()));
    let pin = config.data_dir.join(management::PIN_FILE);
    Ok(Some(management::tls_config(&files, &names, &pin)?))
}

/// An error about the data dir's `path`.
fn in_data_dir(path: PathBuf) -> impl FnOnce(std::io::Error) -> NodeError {
    move |source| NodeError::DataDir { path, source }
}

/// Lets `cargo immutant test` attach a test process to this node as the app that
/// `immutant.attach` names, if it names one.
fn attach(
    config: &ServerConfig,
    properties: &Properties,
    apps: &Arc<Apps>,
    shutdown: &Shutdown,
) -> Result<(), NodeError> {
    let Some(name) = properties
        .get("immutant.attach")
        .filter(|name| !name.is_empty())
    else {
        return Ok(());
    };
    if !immutant_protocol::names::is_deployment_name(&name) {
        return Err(NodeError::Config(ConfigError::InvalidProperty {
            name: "immutant.attach".to_string(),
            value: name,
            expected: "an app's name (ASCII letters, digits, - and _)",
        }));
    }
    crate::apps::attach::listen(&config.data_dir, apps.clone(), name, shutdown.clone())
        .map_err(in_data_dir(config.data_dir.clone()))
}

/// The boot line: the node's name, version, boot time, config, addresses and cluster.
fn say_started(
    config: &ServerConfig,
    engine: &Engine,
    started: Instant,
    https: Option<std::net::SocketAddr>,
) {
    let clustering = match (&config.cluster, engine.membership.engine_status()) {
        (Some(cluster), Some(EngineStatus { url: Some(url), .. })) => {
            format!(", cluster {} on NATS at {url}", cluster.name)
        }
        (Some(cluster), _) => format!(
            ", cluster {} on {}:{}",
            cluster.name, config.bind_address, cluster.port
        ),
        (None, _) => String::new(),
    };
    let https = https
        .map(|address| format!(", https https://{address}"))
        .unwrap_or_default();
    info!(
        "Immutant {} node {} started in {} ms (config {}, http http://{}{https}, management {}, data {}{clustering})",
        crate::config::VERSION,
        config.node_name,
        started.elapsed().as_millis(),
        config.name,
        config.http_address(),
        config.management_url(),
        config.data_dir.display(),
    );
}
