//! One app process's web server, as the node reaches it: a Unix socket of the node's making in
//! a folder only the node's user can open, a pool of HTTP/1.1 connections to it (one
//! connection per request at a time, given back when its response has been read: see
//! [`immutant_foundation::pool`]), a count of the requests in flight so that a redeploy or
//! undeploy can let them finish, and the socket pair client connections are handed to the
//! process over (see [`super::handoff`]).

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use immutant_foundation::pool::{ConnectionPool, SendError, handshake};
use immutant_protocol::handoff::HandoffChannel;
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

    /// A new listening socket for an app process, the process's end of its hand-off pair (see
    /// [`immutant_protocol::handoff`]), and the backend that reaches it.
    pub fn listen(&self) -> Result<(UnixListener, OwnedFd, Arc<Backend>), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{n}.sock"));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "the web socket path {} is longer than Unix sockets allow ({MAX_SOCKET_PATH} bytes); give the node a shorter data dir with -Djboss.server.data.dir=DIR",
                path.display()
            ));
        }
        let listener = UnixListener::bind(&path)
            .map_err(|error| format!("cannot make its web socket {}: {error}", path.display()))?;
        let (node_end, app_end) = HandoffChannel::pair()
            .map_err(|error| format!("cannot make its hand-off socket pair: {error}"))?;
        Ok((listener, app_end, Arc::new(Backend::new(path, node_end))))
    }
}

/// An app process's web server.
pub struct Backend {
    path: PathBuf,
    /// Connections to it.
    pool: Arc<ConnectionPool<()>>,
    /// The requests the node passes on to it now, and the connections being handed to it.
    in_flight: AtomicUsize,
    idle_notify: Notify,
    /// The node's end of the process's hand-off pair, until the app says it serves the
    /// connections it is handed; then the channel over it, while the node hands connections
    /// over it (see [`super::handoff::follow`]).
    handoff_end: Mutex<Option<OwnedFd>>,
    handoff: Mutex<Option<Arc<HandoffChannel>>>,
    /// The requests in flight on the connections the app serves itself, as it last said.
    reported_in_flight: AtomicUsize,
}

impl Backend {
    fn new(path: PathBuf, handoff_end: OwnedFd) -> Backend {
        Backend {
            path,
            pool: Arc::default(),
            in_flight: AtomicUsize::new(0),
            idle_notify: Notify::new(),
            handoff_end: Mutex::new(Some(handoff_end)),
            handoff: Mutex::new(None),
            reported_in_flight: AtomicUsize::new(0),
        }
    }

    /// The app serves the connections it is handed: the channel to hand them over, the first
    /// time (it is opened on the current runtime); `None` after, or if it cannot be opened.
    pub(super) fn open_handoff(&self) -> Option<Arc<HandoffChannel>> {
        let end = immutant_foundation::sync::lock(&self.handoff_end).take()?;
        Some(Arc::new(HandoffChannel::new(end).ok()?))
    }

    /// Connections are handed over `channel` from now on (`None`: no more).
    pub(super) fn hand_over(&self, channel: Option<Arc<HandoffChannel>>) {
        *immutant_foundation::sync::lock(&self.handoff) = channel;
    }

    /// The channel client connections are handed to the app over, if they are.
    pub(super) fn handoff(&self) -> Option<Arc<HandoffChannel>> {
        immutant_foundation::sync::lock(&self.handoff).clone()
    }

    /// What the app says is in flight on the connections it serves itself.
    pub fn report_in_flight(&self, in_flight: u64) {
        let in_flight = usize::try_from(in_flight).unwrap_or(usize::MAX);
        self.reported_in_flight.store(in_flight, Ordering::SeqCst);
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

    /// The requests in flight now: those the node passes on, and those on the connections
    /// the app serves itself (as it last said).
    pub fn in_flight(&self) -> usize {
        self.passing_on() + self.reported_in_flight.load(Ordering::SeqCst)
    }

    /// The requests the node passes on to the app now (and connections being handed to it).
    pub fn passing_on(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no request the node passes on is in flight, or `limit` passes; true if
    /// drained. (The app lets the requests on its own connections finish when it stops.)
    pub async fn drained(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.idle_notify.notified();
                if self.passing_on() == 0 {
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
