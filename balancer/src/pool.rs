//! The balancer's connections to the nodes: one [`ConnectionPool`] for each worker serving
//! clients (so that a request and the connection it goes on share a thread), kept by node
//! address. A connection is made within a second (a node whose host is gone is passed over in
//! a second, not in minutes), and one given up (its request sent elsewhere) is reset rather
//! than closed, so that a request it had not delivered yet is dropped, not delivered late,
//! after a partition heals, when another node has served it already.

use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use immutant_foundation::pool::{ConnectionPool, SendError, handshake};
use tokio::net::TcpStream;

/// How long a connection to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections to the nodes, by address.
pub type NodePool = ConnectionPool<String>;

/// A new connection to the node at `address`.
pub async fn connect(address: &str) -> Result<SendRequest<axum::body::Body>, SendError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| {
            SendError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            ))
        })?
        .map_err(SendError::Connect)?;
    let _ = stream.set_nodelay(true);
    // Closed, it is reset: see the module's doc.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    handshake(stream).await
}
