//! Handing a client's connection to the app it is for, so that the app serves its requests
//! itself (no second HTTP hop through the node; see [`immutant_protocol::handoff`]). The node
//! looks at the connection's first request without reading it (`MSG_PEEK`), routes it as it
//! would pass it on, and sends the connection to that app's process when the process takes
//! connections. Anything else is served here as before: a connection from a balancer (its
//! requests are for every app), a first request whose head is not whole in the first look
//! (up to 4 KiB), one for no app, or for one that is starting or down (the node's pages), and
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

use super::backend::{Backend, InFlight};
use super::routes::Target;
use super::{Web, router};

/// The most of a first request's head looked at: one that is longer is served here.
const HEAD_LOOKED_AT: usize = 4096;
/// How long a client has to send its first request (hyper's limit for a request head).
const FIRST_REQUEST_LIMIT: Duration = Duration::from_secs(30);
/// Headers a first request may have to be looked at.
const MAX_HEADERS: usize = 64;
/// How long handing a connection over may take before it is served here instead (the app's
/// process is not taking them in).
const HANDING_LIMIT: Duration = Duration::from_secs(1);

/// Takes connections off the node's HTTP port for the apps they are for.
pub struct AppClaim {
    pub(super) web: Arc<Web>,
}

impl Claim for AppClaim {
    fn claim(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<TcpStream>> + Send + '_>> {
        Box::pin(claim(&self.web, stream, peer))
    }
}

/// Hands `stream` to the app its first request is for, or gives it back to be served here;
/// `None` when it was handed, or closed (or silent for 30 s) before it said anything.
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
    // Counted in flight until it is handed: a drain of the app waits for it, so the app is
    // not asked to stop before it has it.
    let Some(in_flight) = routed(web, &head[..looked]) else {
        return Some(stream);
    };
    let Some(channel) = in_flight.backend().handoff() else {
        return Some(stream);
    };
    let handed = channel.send_connection(&[], stream.as_fd());
    match tokio::time::timeout(HANDING_LIMIT, handed).await {
        // The app has its own descriptor of the connection; this one closes.
        Ok(Ok(())) => None,
        Ok(Err(error)) => {
            tracing::debug!("a connection could not be handed to its app: {error}");
            Some(stream)
        }
        Err(_) => {
            tracing::debug!("a connection could not be handed to its app: it takes none now");
            Some(stream)
        }
    }
}

/// A request in flight to the process a connection whose first bytes are `head` is handed
/// to: the one serving the app its first request is for, if the whole head is there, the
/// app's process takes connections, and nothing in the request needs the node (see the
/// module's doc).
fn routed(web: &Web, head: &[u8]) -> Option<InFlight> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(head) else {
        return None;
    };
    // Origin form only: `OPTIONS *` and absolute targets are the node's to answer.
    let target = request.path.filter(|target| target.starts_with('/'))?;
    let mut host = None;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).ok()?;
        if header.name.eq_ignore_ascii_case("host") {
            // Two hosts: which one is meant is the node's to say.
            if host.replace(value).is_some() {
                return None;
            }
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
    let route = routes.find(&host_name(host.unwrap_or("")), path)?;
    match &route.target {
        Target::Up(backend) => Some(backend.begin()),
        _ => None,
    }
}

/// Follows the app's process behind `backend`, which takes connections over `channel`: tells
/// it where every app is mounted, then hands it connections, and tells it again whenever that
/// changes; serves the connections it gives back; until the process closes its end. Then (or
/// if it cannot be told the routes) no more connections are handed to it.
pub(super) async fn follow(
    web: Arc<Web>,
    backend: Arc<Backend>,
    channel: Arc<HandoffChannel>,
    shutdown: Shutdown,
) {
    let mut changes = web.changes();
    let mut buffer = Vec::new();
    let mut told = None;
    loop {
        let mounted = web.routes().mounted();
        if told.as_ref() != Some(&mounted) {
            let telling = channel.send_routes(&mounted);
            match tokio::time::timeout(HANDING_LIMIT, telling).await {
                Ok(Ok(())) if told.is_none() => backend.hand_over(Some(channel.clone())),
                Ok(Ok(())) => {}
                // No more connections for it; what it gives back is still served.
                failed => {
                    let why = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => "it does not read them".to_string(),
                    };
                    tracing::warn!(
                        "cannot tell an app's process where apps are mounted ({why}); the node passes its requests on"
                    );
                    backend.hand_over(None);
                }
            }
            told = Some(mounted);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            received = channel.recv(&mut buffer) => match received {
                Ok(Some(Handoff::Connection { read, stream })) => {
                    serve_given_back(&web, read, stream, &shutdown);
                }
                Ok(Some(Handoff::Lost)) => {
                    tracing::warn!("a connection an app gave back was lost: the node has no descriptor left for it");
                }
                // Where apps are mounted is the node's to say.
                Ok(Some(Handoff::Routes(_))) => {}
                Ok(None) | Err(_) => break,
            },
        }
    }
    backend.hand_over(None);
}

/// Serves a connection an app gave back, of which it read `read`, as the node serves its own
/// (a port that hands connections over never redirects to HTTPS).
fn serve_given_back(
    web: &Arc<Web>,
    read: Vec<u8>,
    stream: std::os::fd::OwnedFd,
    shutdown: &Shutdown,
) {
    let Ok((stream, peer)) = immutant_protocol::handoff::tcp_stream(stream) else {
        return;
    };
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
