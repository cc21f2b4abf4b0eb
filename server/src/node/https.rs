//! The node's own HTTPS port, what JBoss's `https` socket binding (8443) was: on when
//! `-Dimmutant.http.tls.cert` and `-Dimmutant.http.tls.key` give a certificate chain and its key
//! (comma-separated for one certificate per virtual host, chosen by SNI), at
//! `immutant.http.tls.port` plus the port offset. The plain HTTP port can send clients there
//! (`immutant.http.tls.redirect-http`), but never the node's balancers, which reach it over
//! plain HTTP by design.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use immutant_contracts::https::DEFAULT_TLS_PORT;
use immutant_foundation::tls::{CertificateFiles, Certificates};

use super::NodeError;
use crate::config::{ConfigError, Properties, ServerConfig};

/// How the node serves HTTPS.
pub struct Https {
    /// Where it listens: the bind address, at the port with the offset applied.
    pub address: SocketAddr,
    /// What it serves, kept fresh while the node runs.
    pub certificates: Arc<Certificates>,
    /// Its TLS settings, serving those certificates.
    pub tls: Arc<rustls::ServerConfig>,
    /// The plain HTTP port sends clients (not balancers) here.
    pub redirect_http: bool,
    /// Answers over HTTPS say `Strict-Transport-Security`.
    pub hsts: bool,
}

const CERT: &str = "immutant.http.tls.cert";
const KEY: &str = "immutant.http.tls.key";

/// HTTPS as the properties give it, its certificates read and checked; none without a
/// certificate.
pub fn https(config: &ServerConfig, properties: &Properties) -> Result<Option<Https>, NodeError> {
    let list = |name: &str| -> Vec<PathBuf> {
        properties
            .get(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .collect()
    };
    let (certs, keys) = (list(CERT), list(KEY));
    let invalid = |name: &str, expected: &'static str| {
        NodeError::Config(ConfigError::InvalidProperty {
            name: name.to_string(),
            value: properties.get(name).unwrap_or_default(),
            expected,
        })
    };
    if certs.len() != keys.len() {
        return Err(invalid(
            KEY,
            "one PEM key file for each certificate of -Dimmutant.http.tls.cert, in the same order",
        ));
    }
    if certs.is_empty() {
        let needing = ["immutant.http.tls.redirect-http", "immutant.http.tls.hsts"];
        return match needing.iter().any(|name| properties.flag(name)) {
            true => Err(invalid(
                CERT,
                "a PEM certificate chain (with -Dimmutant.http.tls.key): redirecting to HTTPS, or HSTS, needs HTTPS",
            )),
            false => Ok(None),
        };
    }
    let port: u16 = properties
        .get("immutant.http.tls.port")
        .and_then(|port| port.parse().ok())
        .unwrap_or(DEFAULT_TLS_PORT);
    let port = port.checked_add(config.port_offset).ok_or_else(|| {
        invalid(
            "immutant.http.tls.port",
            "a port that stays below 65536 with the port offset added",
        )
    })?;
    let files = certs
        .into_iter()
        .zip(keys)
        .map(|(cert, key)| CertificateFiles { cert, key })
        .collect();
    let certificates = Certificates::load(files)?;
    Ok(Some(Https {
        address: SocketAddr::new(config.bind_address, port),
        tls: certificates.server_config()?,
        certificates,
        redirect_http: properties.flag("immutant.http.tls.redirect-http"),
        hsts: properties.flag("immutant.http.tls.hsts"),
    }))
}
