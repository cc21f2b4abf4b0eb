//! The NATS engine: a clustered node started with `-Dimmutant.engine=nats://...` keeps what the
//! cluster shares in NATS JetStream instead of among its members: its queues and topics as
//! streams ([`queues`]), its membership as heartbeats in a key-value bucket ([`membership`]), and
//! its apps' singleton leases as keys whose revisions are the fencing epochs ([`leases`]).
//!
//! Everything of one cluster lives under names made from the cluster's name, so clusters of
//! other names share a NATS deployment without meeting. Names the user gives (queues, apps,
//! nodes) are made into NATS tokens by [`token`], which is reversible.

pub mod caches;
pub mod leases;
pub mod membership;
pub mod queues;
pub mod singletons;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};
use tracing::{info, warn};

use crate::config::{ConfigError, Properties};

/// How often a node pings its NATS server.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long a node waits for NATS at boot before saying it cannot reach it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node asks a busy JetStream again to set a stream, bucket or consumer up.
const SETUP_PATIENCE: Duration = Duration::from_secs(30);

/// Which NATS servers a node uses, and how it proves who it is to them.
#[derive(Clone)]
pub struct EngineConfig {
    /// The servers' URLs, without credentials, for messages.
    pub url: String,
    pub servers: Vec<ServerAddr>,
    /// A file holding a `.creds` file's contents, an nkey seed or a token.
    pub credentials: Option<PathBuf>,
    /// The CA that signed the servers' certificates, trusted instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How many servers hold each stream and bucket.
    pub replicas: usize,
    /// How long a singleton lease lasts without a renewal (if this node makes the bucket).
    pub lease_time: Duration,
}

impl EngineConfig {
    /// The engine the properties ask for: `None` for the embedded one.
    pub fn from_properties(properties: &Properties) -> Result<Option<EngineConfig>, ConfigError> {
        let url = properties
            .get("immutant.engine")
            .unwrap_or_else(|| "embedded".to_string());
        if url == "embedded" {
            return Ok(None);
        }
        let invalid = |expected| ConfigError::InvalidProperty {
            name: "immutant.engine".to_string(),
            value: crate::config::properties::without_credentials(&url),
            expected,
        };
        let servers = parse_servers(&url).ok_or_else(|| {
            invalid("embedded, or nats://host:port[,host:port...] (tls://... for TLS)")
        })?;
        let file = |name: &str| {
            properties
                .get(name)
                .filter(|path| !path.is_empty())
                .map(PathBuf::from)
        };
        let replicas = properties
            .get("immutant.engine.replicas")
            .and_then(|value| value.parse::<usize>().ok())
            .unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            return Err(ConfigError::InvalidProperty {
                name: "immutant.engine.replicas".to_string(),
                value: replicas.to_string(),
                expected: "1 to 5 (JetStream's limit)",
            });
        }
        // Shown in logs and answers: without any user or password the URL carries.
        let shown: Vec<String> = servers
            .iter()
            .map(|server| format!("{}://{}:{}", server.scheme(), server.host(), server.port()))
            .collect();
        let lease_time = Duration::from_millis(
            properties
                .get("immutant.engine.lease-ms")
                .and_then(|value| value.parse().ok())
                .unwrap_or(1500),
        );
        if lease_time < leases::SHORTEST_LEASE {
            return Err(ConfigError::InvalidProperty {
                name: "immutant.engine.lease-ms".to_string(),
                value: lease_time.as_millis().to_string(),
                expected: "1000 or more milliseconds",
            });
        }
        Ok(Some(EngineConfig {
            lease_time,
            url: shown.join(","),
            servers,
            credentials: file("immutant.engine.credentials"),
            ca_file: file("immutant.engine.ca-file"),
            replicas,
        }))
    }
}

/// `nats://a:1,b:2` (a scheme on the first address carries to the others) as server addresses.
fn parse_servers(url: &str) -> Option<Vec<ServerAddr>> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "nats" | "tls") {
        return None;
    }
    rest.split(',')
        .map(|address| {
            let address = address.trim();
            let full = if address.contains("://") {
                address.to_string()
            } else {
                format!("{scheme}://{address}")
            };
            let parsed: ServerAddr = full.parse().ok()?;
            (!address.is_empty() && parsed.port() != 0).then_some(parsed)
        })
        .collect()
}

/// Why the NATS engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(
        "cannot reach NATS at {url}: {reason}; start nats-server there (with JetStream: nats-server -js), or point -Dimmutant.engine at yours"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "NATS at {url} refused this node ({reason}); give it what NATS asks for in a file, with -Dimmutant.engine.credentials=PATH (a .creds file, an nkey seed or a token)"
    )]
    Refused { url: String, reason: String },
    #[error(
        "NATS at {url} and this node could not agree on TLS ({reason}); if its certificates are signed by a CA of your own, give that CA's PEM file with -Dimmutant.engine.ca-file=PATH (and a tls:// URL for servers that speak only TLS)"
    )]
    Tls { url: String, reason: String },
    #[error(
        "cannot read the CA file {path}: {source}; give -Dimmutant.engine.ca-file a readable PEM file of the CA that signed the NATS servers' certificates"
    )]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read the NATS credentials {path}: {source}; give -Dimmutant.engine.credentials a readable .creds file, nkey seed or token file"
    )]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "NATS at {url} has no JetStream for this node ({reason}); start nats-server with -js (or jetstream {{}} in its config), and give this node's account JetStream"
    )]
    NoJetStream { url: String, reason: String },
    #[error(
        "nats-server {version} at {url} does not serialize compare-and-set writes on replicated streams (nats-server#4320, fixed in 2.9.21), which singleton leases and caches rely on: upgrade the NATS servers to 2.9.21 or newer, or keep one copy with -Dimmutant.engine.replicas=1"
    )]
    UnsafeReplicas { url: String, version: String },
    #[error("NATS at {url} refused to set up {what}: {reason}")]
    Setup {
        url: String,
        what: String,
        reason: String,
    },
}

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

/// A node's connection to NATS, and the names of its cluster's streams and buckets.
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    /// The servers' URLs, without credentials, for messages.
    pub url: String,
    /// This cluster's prefix on every stream, bucket and subject.
    prefix: String,
    pub replicas: usize,
}

impl Nats {
    /// Connects to the servers, and checks that JetStream is there for this node.
    pub async fn connect(
        config: &EngineConfig,
        cluster_name: &str,
        node_name: &str,
    ) -> Result<Arc<Nats>, NatsError> {
        let mut options = ConnectOptions::new();
        if let Some(path) = &config.credentials {
            options = credentials(options, path).await?;
        }
        if let Some(ca) = &config.ca_file {
            // Read here, so that a file that cannot be read is not taken for a failed handshake.
            if let Err(source) = std::fs::File::open(ca) {
                return Err(NatsError::CaFile {
                    path: ca.clone(),
                    source,
                });
            }
            options = options.add_root_certificates(ca.clone());
        }
        if config.servers.iter().any(ServerAddr::has_user_pass) {
            warn!(
                "the NATS URL carries credentials, which other users of this host can read (ps, /proc); give them in a file with -Dimmutant.engine.credentials=PATH instead"
            );
        }
        if config.servers.iter().any(|server| server.tls_required()) {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let url = config.url.clone();
        let told = url.clone();
        let client = options
            .name(format!("immutant {node_name}"))
            .connection_timeout(CONNECT_TIMEOUT)
            // A server cut off (rather than gone) is noticed after two unanswered pings.
            .ping_interval(PING_INTERVAL)
            .event_callback(move |event| {
                let url = told.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            warn!("Lost the connection to NATS at {url}; reconnecting")
                        }
                        async_nats::Event::Connected => info!("Connected to NATS at {url}"),
                        other => warn!("NATS at {url}: {other}"),
                    }
                }
            })
            .connect(config.servers.clone())
            .await
            .map_err(|error| {
                let (url, reason) = (url.clone(), error.to_string());
                match error.kind() {
                    ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                        NatsError::Refused { url, reason }
                    }
                    _ if is_tls_failure(&error) => NatsError::Tls { url, reason },
                    _ => NatsError::Unreachable { url, reason },
                }
            })?;
        let version = client.server_info().version;
        if config.replicas > 1 && !serializes_replicated_writes(&version) {
            return Err(NatsError::UnsafeReplicas { url, version });
        }
        let jetstream = jetstream::new(client.clone());
        jetstream_enabled(&client)
            .await
            .map_err(|reason| NatsError::NoJetStream {
                url: url.clone(),
                reason,
            })?;
        info!(
            "Connected to NATS at {url} (JetStream, {} replicas)",
            config.replicas
        );
        Ok(Arc::new(Nats {
            client,
            jetstream,
            url,
            prefix: format!("IMM_{}", token(cluster_name)),
            replicas: config.replicas,
        }))
    }

    /// Whether the node is connected to NATS now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The version of the NATS server the node is connected to.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// The name of a stream or bucket of this cluster: `IMM_<cluster>_<what>`.
    pub fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }

    /// A subject of this cluster: `IMM_<cluster>.<what>`.
    pub fn subject(&self, what: &str) -> String {
        format!("{}.{what}", self.prefix)
    }

    /// Opens (making it if needed) one of this cluster's key-value buckets, keeping one
    /// value per key, each for `max_age` after it was written.
    pub async fn bucket(
        &self,
        what: &str,
        max_age: Duration,
    ) -> Result<jetstream::kv::Store, NatsError> {
        let bucket = self.name(what);
        // The stream a bucket is, made here: the client's own `create_key_value` first asks
        // for the account's details, which it cannot read from a 2.9 server.
        let stream = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            allow_rollup: true,
            deny_delete: true,
            // Reads from the bucket's leader: a direct get may be answered by a replica
            // behind it.
            allow_direct: false,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        let failed = |error: String| self.setup_error(format!("the bucket {bucket}"), error);
        self.stream(stream)
            .await
            .map_err(|error| failed(error.to_string()))?;
        self.jetstream
            .get_key_value(&bucket)
            .await
            .map_err(|error| failed(error.to_string()))
    }

    /// Opens the stream `config` names, making it if needed (see [`Nats::patiently`]).
    pub async fn stream(
        &self,
        config: jetstream::stream::Config,
    ) -> Result<jetstream::stream::Stream, jetstream::context::CreateStreamError> {
        let what = format!("the stream {}", config.name);
        self.patiently(&what, is_busy_stream, || {
            self.jetstream.get_or_create_stream(config.clone())
        })
        .await
    }

    /// Asks JetStream with `ask` again, for up to [`SETUP_PATIENCE`], while it answers `busy`
    /// (its request timed out, it had no leader, or not enough servers for the replicas): a
    /// NATS cluster that has just started or is electing answers soon. `ask` must be the same
    /// request each time, of a stream or consumer named by this node (making one that exists
    /// with the same config is no error), so that a request that timed out but landed and is
    /// made again does not make a second one.
    pub async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        what: &str,
        busy: fn(&E) -> bool,
        mut ask: impl FnMut() -> F,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let mut told = false;
        loop {
            match ask().await {
                Err(error) if busy(&error) && started.elapsed() < SETUP_PATIENCE => {
                    if !told {
                        warn!(
                            "NATS at {} did not set up {what} yet ({error}); asking again for up to {} s",
                            self.url,
                            SETUP_PATIENCE.as_secs()
                        );
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                answer => return answer,
            }
        }
    }

    /// A name no other client of NATS makes (a NUID, as the client's inboxes have).
    pub fn unique(&self) -> String {
        let inbox = self.client.new_inbox();
        inbox.rsplit('.').next().unwrap_or(&inbox).to_string()
    }

    /// The error of setting `what` up.
    pub fn setup_error(&self, what: String, error: impl std::fmt::Display) -> NatsError {
        NatsError::Setup {
            url: self.url.clone(),
            what,
            reason: error.to_string(),
        }
    }
}

/// Whether connecting failed in setting TLS up or in its handshake (the client reports a
/// failed handshake as an I/O error carrying rustls's).
fn is_tls_failure(error: &async_nats::ConnectError) -> bool {
    if error.kind() == ConnectErrorKind::Tls {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = cause {
        let io = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if error.is::<rustls::Error>() || io.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Whether setting a stream up failed because JetStream was busy or had no leader, rather than
/// because of what was asked.
fn is_busy_stream(error: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind;
    match error.kind() {
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
        CreateStreamErrorKind::JetStream(error) => is_unavailable(&error),
        _ => false,
    }
}

/// Whether setting a consumer up failed because JetStream was busy or had no leader.
pub fn is_busy_consumer(error: &jetstream::stream::ConsumerError) -> bool {
    use jetstream::stream::ConsumerErrorKind;
    match error.kind() {
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => true,
        ConsumerErrorKind::JetStream(error) => is_unavailable(&error),
        _ => false,
    }
}

/// Whether JetStream answered that it cannot serve now: 503 (no leader, or not ready), or
/// 10005 (no suitable peers: fewer servers up, or known to the leader, than the replicas asked
/// for, as while a NATS cluster starts or a server restarts).
fn is_unavailable(error: &jetstream::Error) -> bool {
    error.code() == 503 || error.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS
}

/// Whether nats-server `version` checks a write's expected revision inside the replicated log
/// (2.9.21 and later) rather than only before it, where two writes can both pass.
fn serializes_replicated_writes(version: &str) -> bool {
    let numbers: Vec<u64> = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .take(3)
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    numbers.as_slice() >= [2, 9, 21].as_slice()
}

/// Whether JetStream answers this node's account: asked directly, as the client's own account
/// query does not read a 2.9 server's answer.
async fn jetstream_enabled(client: &async_nats::Client) -> Result<(), String> {
    let answer = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|error| error.to_string())?;
    let info: serde_json::Value =
        serde_json::from_slice(&answer.payload).map_err(|error| error.to_string())?;
    match info.get("error") {
        Some(error) => Err(error["description"]
            .as_str()
            .unwrap_or("JetStream refused")
            .to_string()),
        None => Ok(()),
    }
}

/// `options` with what the file at `path` holds: a `.creds` file, an nkey seed (`SU...`), or a
/// token.
async fn credentials(options: ConnectOptions, path: &PathBuf) -> Result<ConnectOptions, NatsError> {
    let unreadable = |source| NatsError::Credentials {
        path: path.clone(),
        source,
    };
    let text = tokio::fs::read_to_string(path).await.map_err(unreadable)?;
    let text = text.trim();
    if text.contains("-----BEGIN NATS USER JWT-----") {
        return options.credentials(text).map_err(unreadable);
    }
    // An nkey user seed: "SU" and 56 more letters and digits of base32.
    let seed = text.len() == 58
        && text.starts_with("SU")
        && text
            .bytes()
            .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit());
    Ok(if seed {
        options.nkey(text.to_string())
    } else {
        options.token(text.to_string())
    })
}

/// `name` as a NATS token (a stream name, a subject token, a key): ASCII letters, digits and
/// `-` stay, every other byte becomes `_` and its two hex digits.
pub fn token(name: &str) -> String {
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("_{byte:02X}"));
        }
    }
    token
}

/// The name [`token`] made `token` of.
pub fn untoken(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Whether a conditional write failed because the key was written since it was read (or
/// created already): JetStream's answer for that is error 10071, or 10164 from a server that
/// tracks writes still in its replicated log; the client tells neither apart from other
/// failures. (10163, "not ready to check yet", is not a conflict: the write may be made again.)
pub fn is_conflict(error: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::kv::{CreateError, CreateErrorKind, UpdateError, UpdateErrorKind};
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(update) = error.downcast_ref::<UpdateError>()
            && update.kind() == UpdateErrorKind::WrongLastRevision
        {
            return true;
        }
        if let Some(create) = error.downcast_ref::<CreateError>()
            && create.kind() == CreateErrorKind::AlreadyExists
        {
            return true;
        }
        if let Some(jetstream) = error.downcast_ref::<jetstream::Error>() {
            // Wrong last sequence; and the same from a server that tracks the writes to a key
            // still in its replicated log (another write to the key came first).
            return matches!(jetstream.error_code().0, 10071 | 10164);
        }
        next = error.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_of_letters_digits_and_dashes_and_undone() {
        for name in ["/queue/msg", "example", "a_b.c d*>", "ünï-code", ""] {
            let made = token(name);
            assert!(
                made.bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'),
                "{made}"
            );
            assert_eq!(untoken(&made).as_deref(), Some(name));
        }
        assert_eq!(token("/queue/msg"), "_2Fqueue_2Fmsg");
        assert_eq!(untoken("_2"), None);
    }

    #[test]
    fn replicated_writes_are_serialized_from_2_9_21() {
        for old in ["2.9.10", "2.9.20", "v2.8.4", "garbage"] {
            assert!(!serializes_replicated_writes(old), "{old}");
        }
        for new in ["2.9.21", "2.10.0", "2.15.1", "v3.0.0-beta"] {
            assert!(serializes_replicated_writes(new), "{new}");
        }
    }

    #[test]
    fn the_engine_url_names_every_server_with_its_scheme() {
        let servers = parse_servers("nats://127.0.0.1:4222,127.0.0.1:4232").unwrap();
        assert_eq!(servers.len(), 2);
        assert!(servers.iter().all(|server| server.port() > 4000));
        let tls = parse_servers("tls://nats.example:4222").unwrap();
        assert!(tls[0].tls_required());
        for bad in [
            "",
            "nats://",
            "http://a:1",
            "nats://a:1,,b:2",
            "127.0.0.1:4222",
        ] {
            assert!(parse_servers(bad).is_none(), "{bad}");
        }
    }
}
