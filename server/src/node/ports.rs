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
