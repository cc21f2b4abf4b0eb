//! The management API: JSON about the node on its management port (9990 plus the offset), bound
//! apart from the other ports (`jboss.bind.address.management`, loopback by default). On
//! loopback reading is open to the host's processes; a change (`POST`) needs the node's
//! management token, which the node writes at boot to `management.token` in its data dir,
//! readable by its user alone, as `Authorization: Bearer <token>`. Bound beyond loopback, every
//! request needs it. Secrets' values are never shown.

mod console;
mod history;
mod log;
mod members;
mod metrics;
mod status;
mod tls;

pub use history::QueueHistory;
pub use metrics::install as install_metrics;
pub use tls::{PIN_FILE, TlsError, TlsFiles, server_config as tls_config};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::apps::Apps;
use crate::config::ServerConfig;
use crate::engine::Engine;
use immutant_foundation::mcmp::ContextState;

/// What the management API knows about its node.
pub struct NodeInfo {
    pub config: ServerConfig,
    pub properties: BTreeMap<String, String>,
    pub started: Instant,
    pub apps: Arc<Apps>,
    /// The engine's messaging, caches and membership.
    pub engine: Engine,
    pub web: Arc<crate::web::Web>,
    /// When the node started (unix ms): its generation in the cluster.
    pub generation: u64,
    /// Each queue's recent depths and rates.
    pub history: Arc<QueueHistory>,
    /// The metrics recorder's handle (none if the process has another recorder).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// What a change must carry.
    pub token: ManagementToken,
    /// The node's HTTPS port, if it serves one.
    pub https: Option<HttpsInfo>,
}

/// The node's HTTPS port: where it is, and what it serves.
pub struct HttpsInfo {
    /// Where the HTTPS port listens.
    pub address: std::net::SocketAddr,
    /// What it serves.
    pub certificates: Arc<immutant_foundation::tls::Certificates>,
}

/// The secret a change to the node must carry, kept in a file of the data dir that only the
/// node's user can read.
#[derive(Clone)]
pub struct ManagementToken(String);

impl ManagementToken {
    /// The token file's name in the data dir.
    pub const FILE: &str = immutant_contracts::data_dir::TOKEN_FILE;

    /// Makes a fresh token and writes it to `<data_dir>/management.token` (mode 0600).
    pub fn create(data_dir: &std::path::Path) -> std::io::Result<ManagementToken> {
        use std::io::{Read, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let path = data_dir.join(Self::FILE);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(token.as_bytes())?;
        Ok(ManagementToken(token))
    }

    /// Whether `headers` carry the token.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compared in full whatever differs, so that timing tells nothing.
        given.len() == self.0.len()
            && given
                .bytes()
                .zip(self.0.bytes())
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    }
}

/// The answer to `GET /`.
#[derive(Debug, Serialize)]
struct NodeReport {
    name: String,
    version: &'static str,
    pid: u32,
    uptime_ms: u128,
    config: String,
    bind_address: String,
    ports: Ports,
    data_dir: PathBuf,
    deployments: PathBuf,
    properties: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct Ports {
    offset: u16,
    http: u16,
    management: u16,
}

/// The management API's routes. Bound beyond loopback, every request needs the token.
pub fn router(info: Arc<NodeInfo>) -> Router {
    let guarded = !info.config.management_bind_address.is_loopback();
    let routes = readable()
        .route("/", get(node))
        .route("/metrics", get(metrics_text))
        .route("/members/{member}/{question}", get(members::ask))
        .route("/web/{action}", post(control_web))
        .route("/deployments/{name}/{action}", post(operate));
    // The log holds what apps print: the token's, even on loopback.
    let log =
        Router::new()
            .route("/log", get(log::log))
            .layer(axum::middleware::from_fn_with_state(
                info.clone(),
                token_required,
            ));
    let routes = routes.merge(log);
    let routes = match guarded {
        true => routes.layer(axum::middleware::from_fn_with_state(
            info.clone(),
            token_required,
        )),
        // Open to this host's processes: and only to them, not to a web page whose name was
        // made to lead to 127.0.0.1 (DNS rebinding), which a browser would let read the answers.
        false => routes.layer(axum::middleware::from_fn(local_host_required)),
    };
    routes.merge(console::routes()).with_state(info)
}

/// The routes that only read, which the other members may ask (see [`members`]).
fn readable() -> Router<Arc<NodeInfo>> {
    Router::new()
        .route("/status", get(node_status))
        .route("/deployments", get(deployments))
        .route("/queues", get(queues))
        .route("/daemons", get(daemons))
        .route("/caches", get(caches))
        .route("/jobs", get(jobs))
        .route("/web", get(web))
}

/// What answers the other members' questions to this node: its read-only routes and its log,
/// in-process (the asker's own node asked for its token).
pub fn answerer(info: Arc<NodeInfo>) -> crate::vocabulary::questions::Answerer {
    members::answerer(readable().route("/log", get(log::log)).with_state(info))
}

/// Turns away a request whose `Host` is neither an address nor `localhost`.
async fn local_host_required(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    if host.is_none_or(is_local_host) {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        "the management API answers requests for its address (or localhost) only\n",
    )
        .into_response()
}

/// Whether a `Host` header names an address or `localhost`, with or without a port.
fn is_local_host(host: &str) -> bool {
    let port_or_nothing = |rest: &str| {
        rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|port| port.parse::<u16>().is_ok())
    };
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split_once(']').is_some_and(|(address, rest)| {
            address.parse::<std::net::Ipv6Addr>().is_ok() && port_or_nothing(rest)
        });
    }
    let (name, rest) = host.find(':').map_or((host, ""), |at| host.split_at(at));
    port_or_nothing(rest)
        && (name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok())
}

/// Turns away a request without the node's management token.
async fn token_required(
    State(info): State<Arc<NodeInfo>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if info.token.admits(request.headers()) {
        return next.run(request).await;
    }
    (StatusCode::UNAUTHORIZED, info.token_needed()).into_response()
}

impl NodeInfo {
    /// What a request without the token is told.
    fn token_needed(&self) -> String {
        // The data dir is not named: the asker may be anyone who reaches the port.
        format!(
            "this needs the node's management token (the file {} in its data dir) as `Authorization: Bearer <token>`\n",
            ManagementToken::FILE
        )
    }
}

async fn node(State(info): State<Arc<NodeInfo>>) -> Json<NodeReport> {
    let config = &info.config;
    Json(NodeReport {
        name: config.node_name.clone(),
        version: crate::config::VERSION,
        pid: std::process::id(),
        uptime_ms: info.started.elapsed().as_millis(),
        config: config.name.clone(),
        bind_address: config.bind_address.to_string(),
        ports: Ports {
            offset: config.port_offset,
            http: config.http_port,
            management: config.management_port,
        },
        data_dir: config.data_dir.clone(),
        deployments: config.deployments.clone(),
        properties: info.properties.clone(),
    })
}

/// Everything about the node at once; `?history=true` adds each queue's recent depths.
async fn node_status(
    State(info): State<Arc<NodeInfo>>,
    Query(query): Query<status::StatusQuery>,
) -> Json<status::NodeStatus> {
    Json(status::status(&info, &query))
}

/// The node's metrics, in Prometheus's text format.
async fn metrics_text(State(info): State<Arc<NodeInfo>>) -> axum::response::Response {
    match metrics::render(&info) {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "this node records no metrics: another metrics recorder was installed in its process\n",
        )
            .into_response(),
    }
}

/// Every deployment: its status (with the reason when failed), process, daemons and the last
/// lines of its stderr.
async fn deployments(
    State(info): State<Arc<NodeInfo>>,
) -> Json<Vec<immutant_contracts::deployment::DeploymentReport>> {
    Json(info.apps.reports())
}

/// Every queue: depth, in flight, consumers, delivered, dead-lettered, expired.
async fn queues(
    State(info): State<Arc<NodeInfo>>,
) -> Json<Vec<crate::vocabulary::messaging::QueueStats>> {
    Json(info.engine.messaging.stats())
}

/// A daemon, and the app it belongs to.
#[derive(Debug, Serialize)]
struct DaemonReport {
    app: String,
    name: String,
    #[serde(flatten)]
    state: immutant_contracts::deployment::DaemonState,
}

/// Every daemon of every deployment, running or not.
async fn daemons(State(info): State<Arc<NodeInfo>>) -> Json<Vec<DaemonReport>> {
    let reports = info.apps.reports().into_iter().flat_map(|deployment| {
        deployment
            .daemons
            .into_iter()
            .map(move |(name, state)| DaemonReport {
                app: deployment.name.clone(),
                name,
                state,
            })
    });
    Json(reports.collect())
}

/// A job, the app it belongs to, and the node it fires on.
#[derive(Debug, Serialize)]
struct JobListing {
    app: String,
    /// The node that fires it: for a singleton, the node running the app's singletons (none
    /// while none does); otherwise this one.
    fires_on: Option<String>,
    #[serde(flatten)]
    job: immutant_contracts::deployment::JobReport,
}

/// Every job of every deployment: where it fires, its next firing, and its last run.
async fn jobs(State(info): State<Arc<NodeInfo>>) -> Json<Vec<JobListing>> {
    let node = info.config.node_name.clone();
    let listings = info.apps.reports().into_iter().flat_map(|deployment| {
        let (app, singletons_on) = (deployment.name, deployment.singletons_on);
        let node = node.clone();
        deployment.jobs.into_iter().map(move |job| JobListing {
            app: app.clone(),
            fires_on: match job.singleton {
                true => singletons_on.clone(),
                false => Some(node.clone()),
            },
            job,
        })
    });
    Json(listings.collect())
}

/// Every cache open on this node: mode, entries held here, hits and misses.
async fn caches(
    State(info): State<Arc<NodeInfo>>,
) -> Json<Vec<crate::vocabulary::cache::CacheStats>> {
    Json(info.engine.caches.stats())
}

/// Every web context of the node: where it is mounted, whether a process serves it, what
/// balancers may send it, and the requests in flight.
async fn web(
    State(info): State<Arc<NodeInfo>>,
) -> Json<Vec<immutant_contracts::status::ContextReport>> {
    Json(info.web.contexts())
}

/// `POST /deployments/<name>/undeploy|redeploy`: what `cargo immutant undeploy` does, and a
/// redeploy of the app as it is, on every node of the install.
async fn operate(
    State(info): State<Arc<NodeInfo>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    use crate::deploy::operations::{Operation, OperationError};
    if !info.token.admits(&headers) {
        return (StatusCode::UNAUTHORIZED, info.token_needed());
    }
    let Some(operation) = Operation::named(&action) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no such operation '{action}': use undeploy or redeploy\n"),
        );
    };
    let deployments = info.config.deployments.clone();
    let done = format!("{}\n", operation.done(&name));
    let applied = tokio::task::spawn_blocking(move || {
        operation.apply(&deployments, &name, immutant_foundation::clock::now_ms())
    });
    match applied.await {
        Ok(Ok(())) => (StatusCode::OK, done),
        Ok(Err(error @ OperationError::NotDeployed(_))) => {
            (StatusCode::NOT_FOUND, format!("{error}\n"))
        }
        Ok(Err(error)) => (StatusCode::CONFLICT, format!("{error}\n")),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

/// How long a control waits for every balancer to hear of it.
const BALANCER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Which context a control applies to; none: every context of the node.
#[derive(Debug, Deserialize)]
struct ControlQuery {
    context: Option<String>,
}

/// `POST /web/enable|disable|stop[?context=/path]`: what balancers may send the context, told
/// to them at once.
async fn control_web(
    State(info): State<Arc<NodeInfo>>,
    Path(action): Path<String>,
    Query(query): Query<ControlQuery>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    if !info.token.admits(&headers) {
        return (StatusCode::UNAUTHORIZED, info.token_needed());
    }
    let control = match action.as_str() {
        "enable" => ContextState::Enabled,
        "disable" => ContextState::Disabled,
        "stop" => ContextState::Stopped,
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("no such action '{other}': use enable, disable or stop\n"),
            );
        }
    };
    match info.web.set_control(query.context.as_deref(), control) {
        // Answered once every balancer has heard (a stop is then in effect there).
        Some(version) => match info.web.balancers_told(version, BALANCER_PATIENCE).await {
            true => (StatusCode::OK, "ok\n".to_string()),
            false => (
                StatusCode::OK,
                "ok, but a balancer has not heard yet (it may be unreachable, or gone); it hears when it is back\n"
                    .to_string(),
            ),
        },
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "no web app is mounted at {} on node {}\n",
                query.context.as_deref().unwrap_or("any context"),
                info.config.node_name
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn only_addresses_and_localhost_are_local_hosts() {
        for host in [
            "127.0.0.1:9990",
            "127.0.0.1",
            "localhost:9990",
            "LOCALHOST",
            "[::1]:9990",
            "[::1]",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "evil.example:9990",
            "evil.example",
            "127.0.0.1.evil.example",
            "[::1]evil",
            "localhost:x",
            "127.0.0.1:1:2",
            "[evil]:1",
            "",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }
}
