//! Handing a client's connection to the app it is for, so that the app serves its requests
//! itself (no second HTTP hop through the node; see [`immutant_protocol::handoff`]). The node
//! looks at the connection's first request without reading it (`MSG_PEEK`), routes it as it
//! would pass it on, and sends the connection to that app's process when the process takes
//! connections. Anything else is served here as before: a connection from a balancer (its
//! requests are for every app), a first request that has not fully arrived in its first
//! packet, one for no app, or for one that is starting or down (the node's pages), and
//! `OPTIONS *`.
//!
//! The app routes each later request of the connection by the same rules, with the routes the
//! node sends it whenever they change ([`follow`]); a request for another app, and an idle
//! connection when the app stops, come back to the node with what the app read of them, and
//! are served here.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use immutant_foundation::edge::{Claim, serve_returned};
use immutant_foundation::shutdown::Shutdown;
use immutant_protocol::handoff::{Handoff, HandoffChannel};
use immutant_protocol::web::host_name;
use tokio::net::TcpStream;

use super::backend::Backend;
use super::routes::Target;
use super::{Web, router};

/// The most of a first request's head looked at: one that is longer is served here.
const HEAD_LOOKED_AT: usize = 4096;
/// How long a client has to send its first request (hyper's limit for a request head).
const FIRST_REQUEST_LIMIT: Duration = Duration::from_secs(30);
/// Headers a first request may have to be looked at.
const MAX_HEADERS: usize = 64;

/// Takes connections off the node's HTTP port for the apps they are for.
pub struct HandOff {
    pub(super) web: Arc<Web>,
}

impl Claim for HandOff {
    fn claim(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<TcpStream>> + Send + '_>> {
        Box::pin(claim(&self.web, stream, peer))
    }
}

/// Hands `stream` to the app its first request is for, or gives it back to be served here;
/// `None` when it was handed, or closed before it said anything.
async fn claim(web: &Web, stream: TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    if web.balancer(peer.ip()).is_some() {
        return Some(stream);
    }
    let mut head = vec![0; HEAD_LOOKED_AT];
    let looked = tokio::time::timeout(FIRST_REQUEST_LIMIT, stream.peek(&mut head)).await;
    let looked = match looked {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
        Ok(Ok(looked)) => looked,
    };
    let Some(backend) = backend_for(web, &head[..looked]) else {
        return Some(stream);
    };
    let channel = backend.handoff()?.clone();
    match channel.send_connection(&[], stream.as_fd()).await {
        // The app has its own descriptor of the connection; this one closes.
        Ok(()) => None,
        Err(error) => {
            tracing::debug!("a connection could not be handed to its app: {error}");
            Some(stream)
        }
    }
}

/// The process a connection whose first bytes are `head` is handed to: the one serving the
/// app its first request is for, if the whole head is there, the app's process takes
/// connections, and nothing in the request needs the node (see the module's doc).
fn backend_for(web: &Web, head: &[u8]) -> Option<Arc<Backend>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(head) else {
        return None;
    };
    // Origin form only: `OPTIONS *` and absolute targets are the node's to answer.
    let target = request.path.filter(|target| target.starts_with('/'))?;
    let mut host = "";
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).ok()?;
        if header.name.eq_ignore_ascii_case("host") {
            host = value;
        }
        // Only a WebSocket is upgraded to, as when the node passes requests on.
        if header.name.eq_ignore_ascii_case("upgrade")
            && !value.trim().eq_ignore_ascii_case("websocket")
        {
            return None;
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    let routes = web.routes();
    let route = routes.find(&host_name(host), path)?;
    match &route.target {
        Target::Up(backend) if backend.handoff().is_some() => Some(backend.clone()),
        _ => None,
    }
}

/// Follows an app's process that takes connections over `channel`: tells
/// it where every app is mounted, at once and whenever that changes, and serves the
/// connections it gives back, until the process closes its end or the node stops.
pub(super) async fn follow(web: Arc<Web>, channel: Arc<HandoffChannel>, shutdown: Shutdown) {
    let mut changes = web.changes();
    let mut buffer = Vec::new();
    let mut told = None;
    loop {
        let mounted = web.routes().mounted();
        if told.as_ref() != Some(&mounted) {
            if channel.send_routes(&mounted).await.is_err() {
                return;
            }
            told = Some(mounted);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            received = channel.recv(&mut buffer) => match received {
                Ok(Some(Handoff::Connection { read, stream })) => {
                    serve_given_back(&web, read, stream, &shutdown);
                }
                // Where apps are mounted is the node's to say.
                Ok(Some(Handoff::Routes(_))) => {}
                Ok(None) | Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        }
    }
}

/// Serves a connection an app gave back, of which it read `read`, as the node serves its own.
fn serve_given_back(
    web: &Arc<Web>,
    read: Vec<u8>,
    stream: std::os::fd::OwnedFd,
    shutdown: &Shutdown,
) {
    let stream = std::net::TcpStream::from(stream);
    let stream = stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream));
    let Ok(stream) = stream else { return };
    let Ok(peer) = stream.peer_addr() else { return };
    let _ = stream.set_nodelay(true);
    let answerer = router(web.clone(), None);
    tokio::spawn(serve_returned(
        stream,
        read,
        peer,
        answerer,
        shutdown.clone(),
    ));
}
