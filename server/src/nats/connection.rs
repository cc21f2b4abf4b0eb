//! A node's connection to NATS: made with the node's credentials and CA, watched (pings,
//! reconnects), and checked for JetStream and for a server that replicated leases and caches can
//! rely on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};
use tracing::{info, warn};

use super::errors::is_tls_failure;
use super::naming::cluster_prefix;
use super::{EngineConfig, NatsError};

/// How often a node pings its NATS server.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long a node waits for NATS at boot before saying it cannot reach it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's connection to NATS, and the names of its cluster's streams and buckets.
pub struct Nats {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    /// The servers' URLs, without credentials, for messages.
    pub url: String,
    /// This cluster's prefix on every stream, bucket and subject.
    pub(super) prefix: String,
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
            prefix: cluster_prefix(cluster_name),
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

    /// A name no other client of NATS makes (a NUID, as the client's inboxes have).
    pub fn unique(&self) -> String {
        let inbox = self.client.new_inbox();
        inbox.rsplit('.').next().unwrap_or(&inbox).to_string()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_writes_are_serialized_from_2_9_21() {
        for old in ["2.9.10", "2.9.20", "v2.8.4", "garbage"] {
            assert!(!serializes_replicated_writes(old), "{old}");
        }
        for new in ["2.9.21", "2.10.0", "2.15.1", "v3.0.0-beta"] {
            assert!(serializes_replicated_writes(new), "{new}");
        }
    }
}
