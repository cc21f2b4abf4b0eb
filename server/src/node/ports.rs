//! Binding the node's ports, with errors that say what to do about a port in use.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use super::NodeError;

/// Binds the port called `name` (for errors) at `address`.
pub async fn bind(name: &'static str, address: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| match source.kind() {
            ErrorKind::AddrInUse => NodeError::PortInUse { name, address },
            ErrorKind::AddrNotAvailable => NodeError::AddressNotLocal { address },
            _ => NodeError::Bind {
                name,
                address,
                source,
            },
        })
}

/// Serves `router` on `listener` (the port called `name`) until `shutdown`, then lets the
/// requests in flight finish.
pub fn serve(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    shutdown: crate::shutdown::Shutdown,
) -> tokio::task::JoinHandle<Result<(), NodeError>> {
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|source| NodeError::Serve { name, source })
    })
}

/// The most connections the management port serves at once; more wait to be accepted.
const MAX_MANAGEMENT_CONNECTIONS: usize = 128;
/// How long a management client has to send a request's head (on a new connection, or the
/// next one on a kept-alive connection): one that says nothing is closed then.
const MANAGEMENT_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long accepting pauses after it fails (out of descriptors), on every port.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` as a port for people and tools, not traffic: at most [`MAX_MANAGEMENT_CONNECTIONS`] connections at once, each request's head
/// within [`MANAGEMENT_HEAD_TIMEOUT`], backing off when accepting fails; until `shutdown`,
/// then lets the requests in flight finish.
pub fn serve_guarded(
    listener: TcpListener,
    router: axum::Router,
    shutdown: crate::shutdown::Shutdown,
) -> tokio::task::JoinHandle<Result<(), NodeError>> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    tokio::spawn(async move {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_MANAGEMENT_CONNECTIONS));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // HTTP/1.1 only: telling HTTP/2 apart means waiting for bytes with no deadline.
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(MANAGEMENT_HEAD_TIMEOUT);
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                _ = shutdown.cancelled() => break,
            };
            let Ok(slot) = slot else { break };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let _ = connection.await;
                drop(slot);
            });
        }
        graceful.shutdown().await;
        Ok(())
    })
}

/// Waits for servers started with [`serve`] to end.
pub async fn served(
    servers: impl IntoIterator<Item = tokio::task::JoinHandle<Result<(), NodeError>>>,
) -> Result<(), NodeError> {
    for server in servers {
        server.await.map_err(|error| NodeError::Serve {
            name: "server",
            source: std::io::Error::other(error),
        })??;
    }
    Ok(())
}
