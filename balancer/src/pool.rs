//! The balancer's connections to the nodes, one pool for each worker serving clients (so that a
//! request and the connection it goes on share a thread): HTTP/1.1 connections kept by node
//! address, one request at a time each, given back once the response has been read whole. A
//! connection is made within a second (a node whose host is gone is passed over in a second,
//! not in minutes), and one given up (its request sent elsewhere) is reset rather than closed,
//! so that a request it had not delivered yet is dropped, not delivered late, after a
//! partition heals, when another node has served it already.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long a connection to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The most idle connections kept for one node.
const MOST_IDLE: usize = 256;
/// How long a connection is kept unused: less than a node gives a client to send its next
/// request (hyper's 30 s).
const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// Connections to one node that are free, each with when it was freed.
type Free = Vec<(SendRequest<Body>, Instant)>;

/// Connections to the nodes, kept by address.
#[derive(Default)]
pub struct NodePool {
    idle: Mutex<HashMap<String, Free>>,
}

/// Why a request did not reach its node.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// Whether no connection could be made: the node is not there.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

impl NodePool {
    /// Sends `request` (its target a path) to the node at `address` over a connection of the
    /// pool (a new one if none is free). A pooled connection the node closed meanwhile is
    /// replaced, the request sent again on a new one.
    pub async fn send(
        self: &Arc<Self>,
        address: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let pooled = self.take(address);
            let (mut sender, reused) = match pooled {
                Some(sender) => (sender, true),
                None => (connect(address).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let (pool, address) = (Arc::downgrade(self), address.to_string());
                    // Free again once the response has been read whole (never, after an
                    // upgrade: that connection is the tunnel's now).
                    tokio::spawn(async move {
                        if sender.ready().await.is_ok()
                            && let Some(pool) = pool.upgrade()
                        {
                            let mut idle = immutant_foundation::sync::lock(&pool.idle);
                            let kept = idle.entry(address).or_default();
                            if kept.len() < MOST_IDLE {
                                kept.push((sender, Instant::now()));
                            }
                        }
                    });
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }
}

impl NodePool {
    /// The connection to `address` freed last, if one was within [`IDLE_LIMIT`]; those
    /// unused longer are let go.
    fn take(&self, address: &str) -> Option<SendRequest<Body>> {
        let mut idle = immutant_foundation::sync::lock(&self.idle);
        let kept = idle.get_mut(address)?;
        kept.retain(|(_, freed)| freed.elapsed() < IDLE_LIMIT);
        kept.pop().map(|(sender, _)| sender)
    }
}

/// A new connection to the node at `address`, served by a task of its own.
async fn connect(address: &str) -> Result<SendRequest<Body>, SendError> {
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
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}
