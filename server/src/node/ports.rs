//! Binding the node's ports, with errors that say what to do about a port in use.

use std::io::ErrorKind;
use std::net::SocketAddr;

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
