//! Which NATS servers a node uses, and how it proves who it is to them: the engine's
//! `immutant.engine*` properties, checked.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;

use super::leases;
use crate::config::{ConfigError, Properties};

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

#[cfg(test)]
mod tests {
    use super::*;

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
