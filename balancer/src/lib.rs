//! # immutant-balancer
//!
//! The balancer (`cargo immutant balancer`): what httpd with mod_cluster was for AS7 clusters,
//! run by the same `immutant-server` binary as the node, but standing on the foundation alone
//! (it knows nothing of apps, engines or clusters). It advertises itself by multicast
//! ([`advertise`], in mod_cluster's [`vocabulary`]); nodes send it MCMP ([`mcmp`]): who they
//! are, which contexts they serve, and how loaded they are; it keeps that in its [`table`] and
//! proxies each client request to a node that serves it ([`proxy`]): sticky by the session's
//! route, new sessions to the node with the most room. Given certificates, it also serves
//! HTTPS (HTTP/1.1 and HTTP/2, a certificate per host name chosen by SNI, reloaded when its
//! files change), and may send plain HTTP clients there. Its MCMP port takes
//! commands only from the addresses it is told (loopback by default), as httpd's `Require`
//! did; it also serves a status page there (HTML at `/`, JSON at `/status.json`).

mod health;
pub mod mcmp;
mod pool;
mod proxy;
pub mod table;

// mod_cluster's vocabulary, which the nodes speak too: advertising, context states.
use immutant_foundation::mcmp as vocabulary;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, Response, StatusCode, header};
use serde::Serialize;
use tracing::{info, warn};

use immutant_foundation::edge::{EdgePort, Worker, Workers, serve_edge};
use immutant_foundation::net::{self, NetError};
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::tls::{
    CertificateError, CertificateFiles, CertificateReport, Certificates,
};
use pool::NodePool;
use table::Table;

/// This balancer's version (the server's: they are built and installed together).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How a balancer runs.
#[derive(Debug, Clone)]
pub struct BalancerConfig {
    /// The address both ports bind.
    pub bind: IpAddr,
    /// Where clients' requests come.
    pub port: u16,
    /// Where nodes send MCMP.
    pub mcmp_port: u16,
    /// Who may send MCMP: addresses, or networks as `address/bits`.
    pub allow: Vec<(IpAddr, u8)>,
    /// Whether to advertise by multicast.
    pub advertise: bool,
    /// HTTPS beside the plain port.
    pub tls: Option<BalancerTls>,
    /// HTTP/2 without TLS (prior knowledge) on the plain port.
    pub h2c: bool,
}

/// How a balancer serves HTTPS.
#[derive(Debug, Clone)]
pub struct BalancerTls {
    /// Where clients send requests over HTTPS.
    pub port: u16,
    /// The certificates, the first served to clients that name no host another is for.
    pub certificates: Vec<CertificateFiles>,
    /// The plain port answers every request with a 308 to the same address over HTTPS.
    pub redirect_http: bool,
    /// Answers over HTTPS say `Strict-Transport-Security`.
    pub hsts: bool,
}

/// Why a balancer cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("cannot start the threads that serve the balancer's clients: {0}")]
    Workers(std::io::Error),
}

/// A running balancer.
pub struct Balancer {
    table: Mutex<Table>,
    /// The pools of connections to the nodes, one for each worker serving clients (a
    /// connection is used by the thread that made it).
    pools: Vec<Arc<NodePool>>,
    /// When it started, in microseconds since the epoch: the `id` of its STATUS answers.
    started_us: u128,
    /// What its HTTPS port serves, if it has one.
    certificates: Option<Arc<Certificates>>,
}

impl Balancer {
    fn table(&self) -> MutexGuard<'_, Table> {
        immutant_foundation::sync::lock(&self.table)
    }

    /// The pool of connections to the nodes of `worker`.
    fn pool(&self, worker: Worker) -> &Arc<NodePool> {
        &self.pools[worker.0 % self.pools.len()]
    }
}

/// Parses `address[/bits],...`, as `--allow` takes it.
pub fn parse_allow(text: &str) -> Result<Vec<(IpAddr, u8)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (address, bits) = item.split_once('/').unwrap_or((item, ""));
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("'{item}' is not an address or address/bits"))?;
            let most = if address.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                "" => most,
                bits => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|bits| *bits <= most)
                    .ok_or_else(|| format!("'{item}' has no valid prefix length (0-{most})"))?,
            };
            Ok((address, bits))
        })
        .collect()
}

/// Whether `peer` is in one of the `allow`ed networks.
fn allowed(allow: &[(IpAddr, u8)], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    allow.iter().any(|&(network, bits)| match (network, peer) {
        (IpAddr::V4(n), IpAddr::V4(p)) => {
            let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            u32::from(n) & mask == u32::from(p) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(p)) => {
            let mask = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            u128::from(n) & mask == u128::from(p) & mask
        }
        _ => false,
    })
}

/// Runs a balancer until `stop` resolves.
pub async fn run(
    config: BalancerConfig,
    stop: impl Future<Output = String>,
) -> Result<(), BalancerError> {
    // Before any port is bound: a certificate that cannot be served stops the start here.
    let certificates = match &config.tls {
        Some(tls) => Some(Certificates::load(tls.certificates.clone())?),
        None => None,
    };
    let http = net::bind("HTTP", SocketAddr::new(config.bind, config.port)).await?;
    let https = match (&config.tls, &certificates) {
        (Some(tls), Some(certificates)) => {
            let address = SocketAddr::new(config.bind, tls.port);
            Some((tls, certificates, net::bind("HTTPS", address).await?))
        }
        _ => None,
    };
    let mcmp_address = SocketAddr::new(config.bind, config.mcmp_port);
    let mcmp = net::bind("MCMP", mcmp_address).await?;
    let workers = Workers::per_core("balancer").map_err(BalancerError::Workers)?;
    let balancer = Arc::new(Balancer {
        table: Mutex::new(Table::default()),
        pools: (0..workers.count()).map(|_| Arc::default()).collect(),
        started_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
        certificates: certificates.clone(),
    });
    let shutdown = Shutdown::new();
    tokio::spawn(health::check_health(balancer.clone(), shutdown.clone()));
    if config.advertise {
        tokio::spawn(advertise(config.bind, mcmp_address, shutdown.clone()));
    }
    let proxying = proxy::Proxying(balancer.clone());
    let redirecting = config
        .tls
        .as_ref()
        .filter(|tls| tls.redirect_http)
        .map(|tls| {
            let port = tls.port;
            Router::new().fallback(move |request: Request| async move {
                immutant_foundation::http::redirect_to_https(&request, port)
            })
        });
    let managing = {
        let (balancer, allow) = (balancer.clone(), Arc::new(config.allow.clone()));
        Router::new().fallback(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, request: Request| {
                manage(balancer.clone(), allow.clone(), peer, request)
            },
        )
    };
    let plain_port = EdgePort {
        h2c: config.h2c,
        workers: Some(workers.clone()),
        ..EdgePort::default()
    };
    let plain = match redirecting {
        Some(router) => serve_edge("HTTP", http, router, plain_port, shutdown.clone()),
        None => serve_edge("HTTP", http, proxying.clone(), plain_port, shutdown.clone()),
    };
    let mut servers = vec![plain, net::serve("MCMP", mcmp, managing, shutdown.clone())];
    let mut https_address = String::new();
    if let Some((tls, certificates, listener)) = https {
        let port = EdgePort {
            tls: Some(certificates.server_config()?),
            h2c: false,
            hsts: tls.hsts,
            workers: Some(workers.clone()),
            claim: None,
        };
        servers.push(serve_edge(
            "HTTPS",
            listener,
            proxying,
            port,
            shutdown.clone(),
        ));
        tokio::spawn(certificates.clone().keep_fresh(shutdown.clone()));
        https_address = format!(", https https://{}:{}", config.bind, tls.port);
    }
    info!(
        "Immutant balancer {} started (http http://{}:{}{https_address}, mcmp http://{mcmp_address}, advertising {})",
        crate::VERSION,
        config.bind,
        config.port,
        if config.advertise {
            "on 224.0.1.105:23364"
        } else {
            "off"
        }
    );
    let reason = stop.await;
    info!("Stopping the balancer ({reason})");
    shutdown.cancel();
    Ok(net::served(servers).await?)
}

/// The MCMP port: commands from the allowed addresses, and the status page.
async fn manage(
    balancer: Arc<Balancer>,
    allow: Arc<Vec<(IpAddr, u8)>>,
    peer: SocketAddr,
    request: Request,
) -> Response<Body> {
    let method = request.method().as_str().to_ascii_uppercase();
    if !allowed(&allow, peer.ip()) {
        warn!("refused {method} from {peer}: not an allowed address");
        let mut refusal = mcmp::response(
            Err(mcmp::McmpError {
                kind: "GENERAL",
                message: format!(
                    "GENERAL: {} may not manage this balancer; start it with --allow to let it",
                    peer.ip()
                ),
            }),
            mcmp::Format::Text,
        );
        *refusal.status_mut() = StatusCode::FORBIDDEN;
        return refusal;
    }
    if request.method() == Method::GET {
        return status_page(&balancer, request.uri().path());
    }
    if !mcmp::COMMANDS.contains(&method.as_str()) {
        return mcmp::response(
            Err(mcmp::McmpError {
                kind: "SYNTAX",
                message: "SYNTAX: Command is not supported".to_string(),
            }),
            mcmp::Format::Text,
        );
    }
    let path = request.uri().path().to_string();
    let wildcard = path == "*" || path.ends_with("/*");
    let accept = request.headers().get(header::ACCEPT);
    let format = mcmp::Format::of(&method, accept.and_then(|accept| accept.to_str().ok()));
    let body = match axum::body::to_bytes(request.into_body(), mcmp::MAX_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return mcmp::response(
                Err(mcmp::McmpError {
                    kind: "SYNTAX",
                    message: format!("SYNTAX: {method} can't read POST data"),
                }),
                mcmp::Format::Text,
            );
        }
    };
    let execution = mcmp::execute(
        &mut balancer.table(),
        &method,
        wildcard,
        &body,
        balancer.started_us,
        format,
    );
    let answer = match execution {
        mcmp::Execution::Answered(answer) => answer,
        mcmp::Execution::Check(check) => {
            let reached = health::reaches(&check.address).await;
            check.finish(&mut balancer.table(), reached, balancer.started_us)
        }
    };
    if answer.is_ok() && !["STATUS", "PING", "INFO", "DUMP", "VERSION"].contains(&method.as_str()) {
        // Quoted: a node's words do not make lines of their own in the log.
        info!(
            "MCMP {method}{}: {:?}",
            if wildcard { " /*" } else { "" },
            String::from_utf8_lossy(&body)
        );
    }
    mcmp::response(answer, format)
}

/// What the status page shows.
#[derive(Serialize)]
struct Status {
    nodes: Vec<NodeStatus>,
    /// What its HTTPS port serves.
    certificates: Vec<CertificateReport>,
}

#[derive(Serialize)]
struct NodeStatus {
    #[serde(flatten)]
    node: table::Node,
    /// `up`, `standby`, `broken`, `silent` or `unreachable`.
    state: &'static str,
    in_flight: usize,
    contexts: Vec<ContextStatus>,
}

#[derive(Serialize)]
struct ContextStatus {
    #[serde(flatten)]
    context: table::Context,
    in_flight: usize,
}

fn status(balancer: &Balancer) -> Status {
    use std::sync::atomic::Ordering;
    let table = balancer.table();
    let nodes = table
        .nodes()
        .map(|node| NodeStatus {
            node: node.clone(),
            state: node.state(),
            in_flight: node.in_flight.load(Ordering::SeqCst),
            contexts: table
                .contexts()
                .filter(|context| context.route == node.route)
                .map(|context| ContextStatus {
                    context: context.clone(),
                    in_flight: context.in_flight.load(Ordering::SeqCst),
                })
                .collect(),
        })
        .collect();
    let certificates = balancer
        .certificates
        .as_ref()
        .map(|certificates| certificates.report())
        .unwrap_or_default();
    Status {
        nodes,
        certificates,
    }
}

/// `/status.json`, or the page at any other path.
fn status_page(balancer: &Balancer, path: &str) -> Response<Body> {
    let status = status(balancer);
    if path == "/status.json" {
        let json = serde_json::to_string_pretty(&status).unwrap_or_default();
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json))
            .unwrap_or_default();
    }
    use immutant_foundation::http::escape;
    let mut rows = String::new();
    for node in &status.nodes {
        rows.push_str(&format!(
            "<tr class=\"node\"><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&node.node.route),
            escape(&node.node.address()),
            node.state,
            node.node.load,
            node.node.elected,
            node.in_flight
        ));
        for context in &node.contexts {
            rows.push_str(&format!(
                "<tr class=\"context\"><td></td><td>{} ({})</td><td>{}</td><td></td><td>{}</td><td>{}</td></tr>\n",
                escape(&context.context.path),
                escape(&context.context.alias),
                context.context.state.name(),
                context.context.requests,
                context.in_flight
            ));
        }
    }
    let certificates = certificates_table(&status.certificates);
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Immutant balancer</title>\n<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{padding:4px 10px;text-align:left;border-bottom:1px solid #ddd}}tr.node{{background:#f4f4f4}}.soon{{color:#b00;font-weight:bold}}</style></head>\n<body><h1>Immutant balancer {}</h1>\n<table><tr><th>node</th><th>address / context</th><th>state</th><th>load factor</th><th>requests</th><th>in flight</th></tr>\n{rows}</table>\n{certificates}<p><a href=\"/status.json\">as JSON</a></p></body></html>\n",
        crate::VERSION
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from(html))
        .unwrap_or_default()
}

/// The certificates the HTTPS port serves, those expiring soon marked: none without HTTPS.
fn certificates_table(certificates: &[CertificateReport]) -> String {
    use immutant_foundation::http::escape;
    if certificates.is_empty() {
        return String::new();
    }
    let rows: String = certificates
        .iter()
        .map(|certificate| {
            let expires = chrono::DateTime::from_timestamp(certificate.not_after, 0)
                .map(|at| at.format("%Y-%m-%d").to_string())
                .unwrap_or_default();
            let class = if certificate.expires_soon() { " class=\"soon\"" } else { "" };
            format!(
                "<tr class=\"certificate\"><td>{}</td><td>{}</td><td{class}>{expires} (in {} days)</td></tr>\n",
                escape(&certificate.names.join(", ")),
                escape(&certificate.file),
                certificate.days_left
            )
        })
        .collect();
    format!(
        "<h2>HTTPS certificates</h2>\n<table><tr><th>names</th><th>file</th><th>expires</th></tr>\n{rows}</table>\n"
    )
}

/// Advertises the balancer's MCMP address on mod_cluster's group, through the bind address's
/// interface, every 10 s.
async fn advertise(bind: IpAddr, mcmp: SocketAddr, shutdown: Shutdown) {
    let group = IpAddr::V4(vocabulary::GROUP);
    let socket = match net::multicast_socket(group, vocabulary::PORT, bind) {
        Ok(socket) => socket,
        Err(error) => {
            warn!(
                "cannot advertise the balancer on 224.0.1.105:23364 ({error}); list it in the nodes' -Dimmutant.modcluster.proxies"
            );
            return;
        }
    };
    let server = vocabulary::server_id();
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut ticker = tokio::time::interval(vocabulary::INTERVAL);
    for sequence in 1u64.. {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let datagram = vocabulary::datagram(&server, mcmp, sequence, &date, &host);
        let target = SocketAddr::new(group, vocabulary::PORT);
        if let Err(error) = socket.send_to(datagram.as_bytes(), target).await {
            tracing::debug!("cannot send an advertisement: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_addresses_may_manage() {
        let allow = parse_allow("127.0.0.0/8, ::1, 10.1.2.3").unwrap();
        assert!(allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(allowed(&allow, "127.9.9.9".parse().unwrap()));
        assert!(allowed(&allow, "::1".parse().unwrap()));
        assert!(allowed(&allow, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(allowed(&allow, "10.1.2.3".parse().unwrap()));
        assert!(!allowed(&allow, "10.1.2.4".parse().unwrap()));
        assert!(!allowed(&allow, "192.168.1.1".parse().unwrap()));
        assert!(parse_allow("nonsense").is_err());
        assert!(parse_allow("10.0.0.0/33").is_err());
    }
}
