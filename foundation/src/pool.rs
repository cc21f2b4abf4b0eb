//! Pools of HTTP/1.1 connections onward, as the node keeps them to its apps and the balancer to
//! its nodes: by key (an app's socket, a node's address), one request at a time each, given
//! back once the response has been read whole, and let go after [`IDLE_LIMIT`] unused (before
//! the other side closes them: a request written just as it closes its connection would fail,
//! and could not always be sent again). A pooled connection the other side closed meanwhile is
//! replaced, its request sent again on a new one.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a connection is kept unused: less than a server gives a client to send its next
/// request (hyper's 30 s).
pub const IDLE_LIMIT: Duration = Duration::from_secs(20);
/// The most idle connections kept for one key.
const MOST_IDLE: usize = 256;

/// Why a request did not reach the server.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// Whether no connection could be made: the server is not there.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// Connections to one server that are free, each with when it was freed.
type Free = Vec<(SendRequest<Body>, Instant)>;

/// Connections kept by key.
pub struct ConnectionPool<K> {
    idle: Mutex<HashMap<K, Free>>,
}

impl<K> Default for ConnectionPool<K> {
    fn default() -> Self {
        ConnectionPool {
            idle: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> ConnectionPool<K> {
    /// Sends `request` (its target a path) to the server at `key` over a connection of the
    /// pool, or a new one `connect` makes if none is free.
    pub async fn send<C, F>(
        self: &Arc<Self>,
        key: &K,
        mut request: Request<Body>,
        connect: C,
    ) -> Result<Response<Incoming>, SendError>
    where
        C: Fn() -> F,
        F: Future<Output = Result<SendRequest<Body>, SendError>>,
    {
        loop {
            let (mut sender, reused) = match self.take(key) {
                Some(sender) => (sender, true),
                None => (connect().await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let (pool, key) = (Arc::downgrade(self), key.clone());
                    // Free again once the response has been read whole (never, after an
                    // upgrade: that connection is the tunnel's now).
                    tokio::spawn(async move {
                        if sender.ready().await.is_ok()
                            && let Some(pool) = pool.upgrade()
                        {
                            let mut idle = crate::sync::lock(&pool.idle);
                            let kept = idle.entry(key).or_default();
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

    /// The connection to `key` freed last, if one was within [`IDLE_LIMIT`]; those unused
    /// longer are let go.
    fn take(&self, key: &K) -> Option<SendRequest<Body>> {
        let mut idle = crate::sync::lock(&self.idle);
        let kept = idle.get_mut(key)?;
        // Kept in the order they were freed: those unused too long are at the front.
        let now = Instant::now();
        let stale = kept.partition_point(|(_, freed)| now.duration_since(*freed) >= IDLE_LIMIT);
        kept.drain(..stale);
        kept.pop().map(|(sender, _)| sender)
    }
}

/// HTTP/1.1 over `io`, served by a task of its own (upgrades included).
pub async fn handshake<I>(io: I) -> Result<SendRequest<Body>, SendError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1.1 server on loopback answering `ok`, and how many connections it took.
    async fn server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok")))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (address, accepted)
    }

    impl<K: Hash + Eq> ConnectionPool<K> {
        fn idle(&self, key: &K) -> usize {
            crate::sync::lock(&self.idle).get(key).map_or(0, Vec::len)
        }
    }

    #[tokio::test]
    async fn a_connection_is_used_again_once_its_response_has_been_read() {
        let (address, accepted) = server().await;
        let pool: Arc<ConnectionPool<()>> = Arc::default();
        let connect = || async {
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .map_err(SendError::Connect)?;
            handshake(stream).await
        };
        for round in 1..=3 {
            let request = Request::get("/").body(Body::empty()).unwrap();
            let response = pool.send(&(), request, connect).await.unwrap();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(&body[..], b"ok");
            // Given back by a task of its own once the response is read.
            let given_back = tokio::time::timeout(Duration::from_secs(5), async {
                while pool.idle(&()) == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            assert!(
                given_back.await.is_ok(),
                "round {round}: the connection came back"
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for all three"
        );
        let refused = pool
            .send(
                &(),
                Request::get("/").body(Body::empty()).unwrap(),
                || async {
                    Err(SendError::Connect(
                        std::io::ErrorKind::ConnectionRefused.into(),
                    ))
                },
            )
            .await;
        assert!(
            refused.is_ok(),
            "a free connection is taken before a new one is made"
        );
    }
}
