//! Serving the client connections the node hands the app whole (see
//! [`immutant_protocol::handoff`]): the node routed a connection's first request here, and the
//! app answers it and every later request that is its own by the node's rules, with the routes
//! the node tells it. A request for another app goes back to the node with the connection and
//! the bytes read of it, as does a connection when the app stops (once it is idle); the node
//! serves them. Each request gets the path and headers the node would give it, and is counted
//! for the node's metrics ([`counts`]).

mod connection;
mod counts;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use immutant_protocol::Frame;
use immutant_protocol::handoff::{Handoff, HandoffChannel};
use immutant_protocol::web::{Mounted, host_name, is_upgrade, remove_hop_by_hop, set_forwarded};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::connection::Connection;
use connection::{ConnectionState, GIVE_BACK, LOOK, Recorded, Recording, STOP};
use counts::{Answering, Counts, Tracked};

/// How long a connection may go without a request's head while it has nothing to be answered;
/// it is closed after one to two of these (as hyper closes one that sends no head in time).
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How often the app tells the node what it answered, when it answered anything.
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// How long giving a connection back may take before the node is taken for gone.
const GIVE_BACK_LIMIT: Duration = Duration::from_secs(1);

/// What every connection the app is handed is served with.
pub(crate) struct Served {
    /// Where this app is mounted (its hosts aside: the routes say them).
    mounted: Mounted,
    router: Router,
    /// Where every app of the node is mounted, as the node said last (none yet: `None`), and
    /// how many times it has said so.
    routes: RwLock<Option<Arc<Vec<Mounted>>>>,
    routes_version: AtomicU64,
    counts: Counts,
    channel: HandoffChannel,
    /// The connections being served, to signal.
    connections: Mutex<HashMap<u64, Weak<ConnectionState>>>,
    next_connection: AtomicU64,
    /// The app stops: a connection that begins now is told at once.
    stopping: AtomicBool,
}

impl Served {
    pub(crate) fn new(
        app: &str,
        context_path: &str,
        router: Router,
        channel: HandoffChannel,
    ) -> Arc<Served> {
        immutant_protocol::handoff::raise_open_files_limit();
        Arc::new(Served {
            mounted: Mounted {
                app: app.to_string(),
                context_path: context_path.to_string(),
                hosts: Vec::new(),
            },
            router,
            routes: RwLock::default(),
            routes_version: AtomicU64::new(0),
            counts: Counts::default(),
            channel,
            connections: Mutex::default(),
            next_connection: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        })
    }

    fn routes(&self) -> Option<Arc<Vec<Mounted>>> {
        self.routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_routes(&self, routes: Vec<Mounted>) {
        let mut held = self
            .routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = Some(Arc::new(routes));
        self.routes_version.fetch_add(1, Ordering::AcqRel);
    }

    /// Signals every connection being served; STOP also those that begin after.
    fn signal_all(&self, signal: u8) {
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if signal & STOP != 0 {
            self.stopping.store(true, Ordering::Release);
        }
        for connection in connections.values().filter_map(Weak::upgrade) {
            connection.signal(signal);
        }
    }
}

/// Takes the connections the node hands over until `stop`; then gives back every connection as
/// it becomes idle (and whatever is still handed over), until all are.
pub(crate) async fn serve(served: Arc<Served>, mut stop: watch::Receiver<bool>) {
    let connections = TaskTracker::new();
    let mut buffer = Vec::new();
    let mut silences =
        tokio::time::interval_at(tokio::time::Instant::now() + IDLE_LIMIT, IDLE_LIMIT);
    loop {
        tokio::select! {
            received = served.channel.recv(&mut buffer) => match received {
                Ok(Some(Handoff::Connection { read, stream })) => {
                    connections.spawn(serve_connection(served.clone(), read, stream));
                }
                Ok(Some(Handoff::Routes(routes))) => served.set_routes(routes),
                Ok(Some(Handoff::Lost)) => {
                    eprintln!("immutant: a client connection handed over was lost: no descriptor left for it");
                }
                Ok(None) | Err(_) => break,
            },
            _ = silences.tick() => served.signal_all(LOOK),
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    served.signal_all(STOP);
    connections.close();
    // The node hands nothing over once it has asked the app to stop, but what it handed
    // before may still be on its way: it goes back.
    let finished = connections.wait();
    tokio::pin!(finished);
    loop {
        tokio::select! {
            biased;
            received = served.channel.recv(&mut buffer) => match received {
                Ok(Some(Handoff::Connection { read, stream })) => {
                    give_back(&served, &read, stream.as_fd()).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return finished.await,
            },
            _ = &mut finished => return,
        }
    }
}

/// Tells the node what the app answered, every [`REPORT_EVERY`] that it answered anything,
/// until `done` (once the app's connections are all finished or given back), and once more
/// then.
pub(crate) async fn report(
    served: Arc<Served>,
    connection: Connection,
    done: impl Future<Output = ()>,
) {
    let mut every = tokio::time::interval(REPORT_EVERY);
    tokio::pin!(done);
    loop {
        let finished = tokio::select! {
            _ = every.tick() => false,
            _ = &mut done => true,
        };
        if let Some(counts) = served.counts.take()
            && connection.send(Frame::new(counts)).is_err()
        {
            return;
        }
        if finished {
            return;
        }
    }
}

/// What ended a wait of the task serving a connection.
enum Event {
    /// hyper is done with the connection.
    Done,
    Signals(u8),
    /// The app stops and the connection is idle: what was read of its next request.
    Idle(Vec<u8>),
    /// The app stops, nothing is being answered, and the connection cannot go back (where its
    /// next request begins is not known): it ends.
    Unplaceable,
}

/// Serves one connection the node handed over, of which it read `read`: until the client goes,
/// or a request is another app's, or the app stops (the connection goes back to the node once
/// it is idle).
async fn serve_connection(served: Arc<Served>, read: Vec<u8>, stream: OwnedFd) {
    let Ok((stream, peer)) = immutant_protocol::handoff::tcp_stream(stream) else {
        return;
    };
    let fd = stream.as_raw_fd();
    let state = Arc::new(ConnectionState::new(served.clone()));
    let number = served.next_connection.fetch_add(1, Ordering::Relaxed);
    let registered = Registered::new(&served, number, &state);
    let io = Recorded::observed(read, stream, Recording(state.clone()));
    let service = {
        let state = state.clone();
        // Counted as it is handed over, before its answer is first polled.
        hyper::service::service_fn(move |request| {
            state.dispatched(&request);
            answer(state.clone(), Answering::begin(&state), peer, request)
        })
    };
    // No timer for hyper (one armed for every request's head costs more than the request):
    // a look for silence every IDLE_LIMIT (from `serve`) closes a silent connection.
    let builder = hyper::server::conn::http1::Builder::new();
    let mut connection = Box::pin(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades(),
    );
    // Not silent before the first look has seen it.
    let (mut stopping, mut begun) = (false, u64::MAX);
    loop {
        // The signals first: a request to give back is never left for a graceful end.
        let event = std::future::poll_fn(|cx| {
            if let Some(signals) = state.poll_signals(cx) {
                return Poll::Ready(Event::Signals(signals));
            }
            if connection.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Done);
            }
            if !stopping {
                return Poll::Pending;
            }
            if let Some(read) = state.idle() {
                return Poll::Ready(Event::Idle(read));
            }
            match state.can_go_back() || state.answering.load(Ordering::Acquire) != 0 {
                true => Poll::Pending,
                false => Poll::Ready(Event::Unplaceable),
            }
        })
        .await;
        let read = match event {
            Event::Done => return,
            Event::Idle(read) => read,
            Event::Unplaceable => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(IDLE_LIMIT, connection).await;
                break;
            }
            Event::Signals(signals) if signals & GIVE_BACK != 0 => {
                let Some((read, told)) = state.taken_back() else {
                    continue;
                };
                // SAFETY: the connection, which owns the descriptor, is alive until after this.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                let went = give_back(&served, &read, fd).await;
                let _ = told.send(went);
                if went {
                    break;
                }
                continue;
            }
            Event::Signals(signals) if signals & STOP != 0 && !state.can_go_back() => {
                // Where its next request would begin is not known: it ends once what it has
                // begun is answered.
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(IDLE_LIMIT, connection).await;
                break;
            }
            Event::Signals(signals) => {
                stopping |= signals & STOP != 0;
                let silent = state.begun.load(Ordering::Acquire) == begun
                    && state.answering.load(Ordering::Acquire) == 0;
                begun = state.begun.load(Ordering::Acquire);
                if let Some(read) = stopping.then(|| state.idle()).flatten() {
                    read
                } else if signals & LOOK != 0 && silent {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(IDLE_LIMIT, connection).await;
                    break;
                } else {
                    continue;
                }
            }
        };
        // SAFETY: as above.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if !give_back(&served, &read, fd).await {
            // The node is gone: what the connection has begun ends, and nothing more.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(IDLE_LIMIT, connection).await;
        }
        break;
    }
    drop(registered);
}

/// Gives the connection `fd` back to the node, with `read`; whether it went.
async fn give_back(served: &Served, read: &[u8], fd: BorrowedFd<'_>) -> bool {
    let sent = served.channel.send_connection(read, fd);
    matches!(
        tokio::time::timeout(GIVE_BACK_LIMIT, sent).await,
        Ok(Ok(()))
    )
}

/// A connection among those [`Served`] signals, until dropped.
struct Registered<'a> {
    served: &'a Served,
    number: u64,
}

impl<'a> Registered<'a> {
    fn new(served: &'a Served, number: u64, state: &Arc<ConnectionState>) -> Registered<'a> {
        let mut connections = served
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        connections.insert(number, Arc::downgrade(state));
        // Under the same lock as the stop is told: this connection hears it either way.
        if served.stopping.load(Ordering::Acquire) {
            state.signal(STOP);
        }
        Registered { served, number }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut connections = self
            .served
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        connections.remove(&self.number);
    }
}

/// Answers one request of a handed connection: this app's, or back to the node with it.
async fn answer(
    state: Arc<ConnectionState>,
    mut answering: Answering,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    state.begun.fetch_add(1, Ordering::Relaxed);
    let host = request.headers().get(header::HOST).cloned();
    let name = host.as_ref().and_then(|host| host.to_str().ok());
    let name = host_name(name.unwrap_or(""));
    if !state.serves(&name, request.uri().path()) {
        if let Some(went) = state.give_back()
            && !matches!(went.await, Ok(false))
        {
            // The connection went back to the node, and this request with it.
            return std::future::pending().await;
        }
        let again = ask_again(request.uri());
        state.served.counts.answered(again.status(), Duration::ZERO);
        return Ok(again.map(|body| Tracked::answer(body, answering)));
    }
    let served = &state.served;
    let relative = served.mounted.relative(request.uri().path());
    // The path relative to the context, and always in origin form, as through the node.
    if relative.len() != request.uri().path().len() || request.uri().authority().is_some() {
        let uri = match request.uri().query() {
            Some(query) => format!("{relative}?{query}"),
            None => relative.to_string(),
        };
        if let Ok(uri) = Uri::from_maybe_shared(bytes::Bytes::from(uri)) {
            *request.uri_mut() = uri;
        }
    }
    let headers = request.headers_mut();
    let upgrading = is_upgrade(headers);
    remove_hop_by_hop(headers, upgrading);
    let context_path = &served.mounted.context_path;
    set_forwarded(headers, peer.ip(), host, context_path, "http", false);
    let request = match hyper::body::Body::is_end_stream(request.body()) {
        true => request.map(Body::new),
        false => request.map(|body| answering.watch(Body::new(body))),
    };
    let started = Instant::now();
    let response = tower::ServiceExt::oneshot(served.router.clone(), request).await;
    let response = match response {
        Ok(response) => response,
        Err(never) => match never {},
    };
    served.counts.answered(response.status(), started.elapsed());
    Ok(response.map(|body| Tracked::answer(body, answering)))
}

/// The answer to a request for another app that cannot go back to the node with its
/// connection (what was read of it is not the request alone): ask again, on a new connection,
/// which the node routes.
fn ask_again(uri: &Uri) -> Response<Body> {
    let target = uri.path_and_query().map_or("/", |target| target.as_str());
    // One slash in front: `//host/x` (or `/\\host/x`, to a browser) would send the client to
    // another host.
    let target = format!("/{}", target.trim_start_matches(['/', '\\']));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(&target) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
