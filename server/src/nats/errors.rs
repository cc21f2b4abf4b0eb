//! Why the NATS engine fails, and what JetStream's and the client's errors mean: a TLS
//! handshake that failed, a JetStream busy or without a leader, a conditional write that lost.

use std::path::PathBuf;

use async_nats::ConnectErrorKind;
use async_nats::jetstream;

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

/// Whether connecting failed in setting TLS up or in its handshake (the client reports a
/// failed handshake as an I/O error carrying rustls's).
pub(super) fn is_tls_failure(error: &async_nats::ConnectError) -> bool {
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
pub(super) fn is_busy_stream(error: &jetstream::context::CreateStreamError) -> bool {
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
