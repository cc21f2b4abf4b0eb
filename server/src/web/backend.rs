//! One app process's web server, as the node reaches it: a Unix socket of the node's making in
//! a folder only the node's user can open, a pool of HTTP/1.1 connections to it, and a count of
//! the requests in flight so that a redeploy or undeploy can let them finish.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
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

/// Connects the pool to an app's socket.
#[derive(Clone)]
pub struct UnixConnector(Arc<PathBuf>);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(&*path).await?)) })
    }
}

/// An app process's web server.
pub struct Backend {
    path: PathBuf,
    pub client: Client<UnixConnector, Body>,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Backend {
    fn new(path: PathBuf) -> Backend {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(UnixConnector(Arc::new(path.clone())));
        Backend {
            path,
            client,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
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
                let idle = self.idle.notified();
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
    pub fn backend(&self) -> &Backend {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
