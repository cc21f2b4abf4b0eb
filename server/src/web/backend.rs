//! One app process's web server, as the node reaches it: a Unix socket of the node's making in
//! a folder only the node's user can open, a pool of HTTP/1.1 connections to it (one
//! connection per request at a time, given back when its response has been read: see
//! [`immutant_foundation::pool`]), and a count of the requests in flight so that a redeploy or
//! undeploy can let them finish.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use immutant_foundation::pool::{ConnectionPool, SendError, handshake};
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// The longest path a Unix socket can be bound at (`sun_path` less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// Where the node makes its apps' web sockets: a folder of the data dir, private to the node's
/// user. A socket left behind by a node that was killed is removed at the next start.
pub struct SocketDir {
    dir: PathBuf,
    next: AtomicU64,
}

impl SocketDir {
    /// Makes (or empties) `dir`, private to this user.
    pub fn open(dir: PathBuf) -> std::io::Result<SocketDir> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(SocketDir {
            dir,
            next: AtomicU64::new(1),
        })
    }

    /// A new listening socket for an app process, and the backend that reaches it.
    pub fn listen(&self) -> Result<(std::os::unix::net::UnixListener, Arc<Backend>), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{n}.sock"));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "the web socket path {} is longer than Unix sockets allow ({MAX_SOCKET_PATH} bytes); give the node a shorter data dir with -Djboss.server.data.dir=DIR",
                path.display()
            ));
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|error| format!("cannot make its web socket {}: {error}", path.display()))?;
        Ok((listener, Arc::new(Backend::new(path))))
    }
}

/// An app process's web server.
pub struct Backend {
    path: PathBuf,
    /// Connections to it.
    pool: Arc<ConnectionPool<()>>,
    in_flight: AtomicUsize,
    idle_notify: Notify,
}

impl Backend {
    fn new(path: PathBuf) -> Backend {
        Backend {
            path,
            pool: Arc::default(),
            in_flight: AtomicUsize::new(0),
            idle_notify: Notify::new(),
        }
    }

    /// Sends `request` to the app over a connection of the pool (a new one if none is free).
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, SendError> {
        self.pool.send(&(), request, || self.connect()).await
    }

    /// A new connection to the app's socket.
    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(SendError::Connect)?;
        handshake(stream).await
    }

    /// Counts a request in flight until the guard is dropped (its response sent, or its
    /// tunnel closed).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// The requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight, or `limit` passes; true if drained.
    pub async fn drained(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.idle_notify.notified();
                if self.in_flight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A request in flight to a backend.
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle_notify.notify_waiters();
        }
    }
}
