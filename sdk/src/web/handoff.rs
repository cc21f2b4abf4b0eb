//! Serving the client connections the node hands the app whole (see
//! [`immutant_protocol::handoff`]): the node routed a connection's first request here, and the
//! app answers it and every later request that is its own by the node's rules, with the routes
//! the node tells it. A request for another app goes back to the node with the connection and
//! the bytes read of it, as does a connection that is idle when the app stops; the node serves
//! them. Each request gets the path and `X-Forwarded-*` headers the node would give it, and is
//! counted for the node's metrics ([`Counts`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use immutant_protocol::handoff::{Handoff, HandoffChannel, MAX_READ};
use immutant_protocol::web::{Mounted, SECONDS_BUCKETS, find, host_name, set_forwarded};
use immutant_protocol::{Frame, Header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use crate::connection::Connection;

/// How long a connection may send nothing while it has nothing to be answered; it is closed
/// after one to two of these.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How often the app tells the node what it answered, when it answered anything.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// What every connection the app is handed is served with.
pub(crate) struct Served {
    /// Where this app is mounted (its hosts aside: the routes say them).
    mounted: Mounted,
    router: Router,
    /// Where every app of the node is mounted, as the node said last.
    routes: RwLock<Vec<Mounted>>,
    counts: Counts,
    channel: HandoffChannel,
}

impl Served {
    pub(crate) fn new(
        app: &str,
        context_path: &str,
        router: Router,
        channel: HandoffChannel,
    ) -> Arc<Served> {
        Arc::new(Served {
            mounted: Mounted {
                app: app.to_string(),
                context_path: context_path.to_string(),
                hosts: Vec::new(),
            },
            router,
            routes: RwLock::default(),
            counts: Counts::default(),
            channel,
        })
    }

    /// Whether a request for `host` and `path` is this app's, by the node's rules.
    fn serves(&self, host: &str, path: &str) -> bool {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if routes.is_empty() {
            // Nothing heard yet: the node routed the connection here.
            return true;
        }
        find(&routes, host, path).is_some_and(|mount| {
            mount.app == self.mounted.app && mount.context_path == self.mounted.context_path
        })
    }
}

/// Takes the connections the node hands over until `stop`; then hands back whatever it is
/// still handed while the connections it serves finish.
pub(crate) async fn serve(served: Arc<Served>, mut stop: watch::Receiver<bool>) {
    let connections = TaskTracker::new();
    let mut buffer = Vec::new();
    let stopping = stop.clone();
    let stopped = loop {
        tokio::select! {
            received = served.channel.recv(&mut buffer) => match received {
                Ok(Some(Handoff::Connection { read, stream })) => {
                    let serving = serve_connection(served.clone(), read, stream, stopping.clone());
                    connections.spawn(serving);
                }
                Ok(Some(Handoff::Routes(routes))) => {
                    *served.routes.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = routes;
                }
                Ok(None) | Err(_) => break false,
            },
            _ = stop.wait_for(|stop| *stop) => break true,
        }
    };
    connections.close();
    if !stopped {
        connections.wait().await;
        return;
    }
    let finished = connections.wait();
    tokio::pin!(finished);
    loop {
        tokio::select! {
            _ = &mut finished => return,
            received = served.channel.recv(&mut buffer) => match received {
                Ok(Some(Handoff::Connection { read, stream })) => {
                    let _ = served.channel.send_connection(&read, stream.as_fd()).await;
                }
                Ok(Some(Handoff::Routes(_))) => {}
                Ok(None) | Err(_) => return finished.await,
            },
        }
    }
}

/// Tells the node what the app answered, every [`REPORT_EVERY`] that it answered anything,
/// until `stop`, and once more then.
pub(crate) async fn report(
    served: Arc<Served>,
    connection: Connection,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(REPORT_EVERY);
    loop {
        let stopping = tokio::select! {
            _ = every.tick() => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        if let Some(counts) = served.counts.take()
            && connection.send(Frame::new(counts)).is_err()
        {
            return;
        }
        if stopping {
            return;
        }
    }
}

/// Serves one connection the node handed over, of which it read `read`: until the client goes,
/// or a request is another app's, or the app stops (an idle connection goes back to the node;
/// one with a request in flight ends once it is answered).
async fn serve_connection(
    served: Arc<Served>,
    read: Vec<u8>,
    stream: OwnedFd,
    mut stop: watch::Receiver<bool>,
) {
    let stream = std::net::TcpStream::from(stream);
    let stream = stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream));
    let Ok(stream) = stream else { return };
    let Ok(peer) = stream.peer_addr() else { return };
    let fd = stream.as_raw_fd();
    let state = Arc::new(ConnectionState::default());
    let io = Recorded {
        stream,
        given: read,
        offset: 0,
        state: state.clone(),
    };
    let service = {
        let (served, state) = (served.clone(), state.clone());
        hyper::service::service_fn(move |request| {
            answer(served.clone(), state.clone(), peer, request)
        })
    };
    // No timer for hyper: one armed for every request's head costs more than the request.
    let builder = hyper::server::conn::http1::Builder::new();
    let mut connection = Box::pin(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades(),
    );
    let mut looks = tokio::time::interval_at(tokio::time::Instant::now() + IDLE_LIMIT, IDLE_LIMIT);
    let mut begun = 0;
    let give_back = loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = state.giving_back.notified() => break true,
            _ = stop.wait_for(|stop| *stop) => break state.idle(),
            _ = looks.tick() => {
                // No request's head for a whole look, with nothing to answer: closed, as hyper
                // closes a connection that does not send its next request's head in time.
                let now = state.begun.load(Ordering::Acquire);
                if now == begun && state.answering.load(Ordering::Acquire) == 0 {
                    break false;
                }
                begun = now;
            }
        }
    };
    let read = give_back.then(|| state.read_since_answer()).flatten();
    let Some(read) = read else {
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
        return;
    };
    // SAFETY: the connection still owns the descriptor (it is dropped below), so it is open.
    let own = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned();
    drop(connection);
    if let Ok(own) = own {
        let _ = served.channel.send_connection(&read, own.as_fd()).await;
    }
}

/// Answers one request of a handed connection: this app's, or back to the node with it.
async fn answer(
    served: Arc<Served>,
    state: Arc<ConnectionState>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    state.begun.fetch_add(1, Ordering::Relaxed);
    let host = request.headers().get(header::HOST).cloned();
    let name = host
        .as_ref()
        .and_then(|host| host.to_str().ok())
        .map(host_name)
        .unwrap_or_default();
    if !served.serves(&name, request.uri().path()) {
        if state.can_give_back(request.method()) {
            state.giving_back.notify_one();
            // The connection goes back to the node, and this answer with it.
            return std::future::pending().await;
        }
        return Ok(ask_again(request.uri()));
    }
    let relative = served.mounted.relative(request.uri().path());
    let uri = match request.uri().query() {
        Some(query) => format!("{relative}?{query}"),
        None => relative.to_string(),
    };
    if let Ok(uri) = uri.parse() {
        *request.uri_mut() = uri;
    }
    let context_path = &served.mounted.context_path;
    set_forwarded(
        request.headers_mut(),
        peer.ip(),
        host,
        context_path,
        "http",
        false,
    );
    let guard = Answering::begin(&served, &state);
    let started = Instant::now();
    let response = tower::ServiceExt::oneshot(served.router.clone(), request.map(Body::new)).await;
    let response = match response {
        Ok(response) => response,
        Err(never) => match never {},
    };
    served.counts.answered(response.status(), started.elapsed());
    Ok(response.map(|body| {
        Body::new(Guarded {
            body,
            _guard: guard,
        })
    }))
}

/// The answer to a request for another app that cannot go back to the node with its
/// connection (what was read of it is not the request alone): ask again, on a new connection,
/// which the node routes.
fn ask_again(uri: &Uri) -> Response<Body> {
    let target = uri.path_and_query().map_or("/", |target| target.as_str());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(target) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What one handed connection is doing, as its requests and reads see it.
#[derive(Default)]
struct ConnectionState {
    /// What was read since the last answer was written: the request being read, if any.
    read: Mutex<Read>,
    /// An answer was written since the last read.
    wrote: AtomicBool,
    /// The last thing the connection did was wait for the client to send something.
    waiting: AtomicBool,
    /// Requests whose answers are not all written yet.
    answering: AtomicUsize,
    /// Requests whose heads came, ever.
    begun: AtomicU64,
    /// A request is another app's: the connection goes back to the node.
    giving_back: Notify,
}

#[derive(Default)]
struct Read {
    bytes: Vec<u8>,
    /// More than a hand-off carries was read since the last answer.
    overflowed: bool,
}

impl ConnectionState {
    fn recorded(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut read = self
            .read
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.wrote.swap(false, Ordering::AcqRel) {
            read.bytes.clear();
            read.overflowed = false;
        }
        if read.overflowed || read.bytes.len() + bytes.len() > MAX_READ {
            read.overflowed = true;
            read.bytes.clear();
        } else {
            read.bytes.extend_from_slice(bytes);
        }
    }

    /// What was read since the last answer, if a hand-off can carry it.
    fn read_since_answer(&self) -> Option<Vec<u8>> {
        if self.wrote.load(Ordering::Acquire) {
            return Some(Vec::new());
        }
        let read = self
            .read
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (!read.overflowed).then(|| read.bytes.clone())
    }

    /// Whether the request with `method` being answered can go back to the node with what was
    /// read since the last answer: that is where it begins (not so when a client sent requests
    /// without waiting for answers).
    fn can_give_back(&self, method: &Method) -> bool {
        self.read_since_answer().is_some_and(|read| {
            read.strip_prefix(method.as_str().as_bytes())
                .is_some_and(|rest| rest.starts_with(b" "))
        })
    }

    /// No request is being answered and the connection waits for the next: it may go back
    /// to the node with what was read of that one so far.
    fn idle(&self) -> bool {
        self.answering.load(Ordering::Acquire) == 0
            && self.waiting.load(Ordering::Acquire)
            && self.read_since_answer().is_some_and(|read| {
                read.is_empty() || read.iter().take_while(|b| b.is_ascii_uppercase()).count() > 0
            })
    }
}

/// A handed connection: what the node read of it first, then the socket; every read recorded
/// until an answer is written (see [`ConnectionState`]).
struct Recorded {
    stream: TcpStream,
    given: Vec<u8>,
    offset: usize,
    state: Arc<ConnectionState>,
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = match this.offset < this.given.len() {
            true => {
                let rest = &this.given[this.offset..];
                let taken = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..taken]);
                this.offset += taken;
                Poll::Ready(Ok(()))
            }
            false => Pin::new(&mut this.stream).poll_read(cx, buf),
        };
        match &polled {
            Poll::Ready(Ok(())) => {
                this.state.waiting.store(false, Ordering::Release);
                this.state.recorded(&buf.filled()[before..]);
            }
            Poll::Pending => this.state.waiting.store(true, Ordering::Release),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl Recorded {
    fn wrote(&self) {
        self.state.waiting.store(false, Ordering::Release);
        self.state.wrote.store(true, Ordering::Release);
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request being answered, until its answer's body is all given (or dropped).
struct Answering {
    served: Arc<Served>,
    state: Arc<ConnectionState>,
}

impl Answering {
    fn begin(served: &Arc<Served>, state: &Arc<ConnectionState>) -> Answering {
        state.answering.fetch_add(1, Ordering::AcqRel);
        served.counts.in_flight.fetch_add(1, Ordering::AcqRel);
        Answering {
            served: served.clone(),
            state: state.clone(),
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.state.answering.fetch_sub(1, Ordering::AcqRel);
        let counts = &self.served.counts;
        counts.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body, holding its request's [`Answering`] until it is all given.
struct Guarded {
    body: Body,
    _guard: Answering,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The number of statuses counted one by one (100 to 599).
const STATUSES: usize = 500;

/// What the app answered on its handed connections since it last told the node.
struct Counts {
    in_flight: AtomicU64,
    /// By status, from 100.
    statuses: [AtomicU64; STATUSES],
    /// By [`SECONDS_BUCKETS`], and one more for longer.
    seconds: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    /// What the node was told last of the requests in flight.
    told_in_flight: AtomicU64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            in_flight: AtomicU64::new(0),
            statuses: std::array::from_fn(|_| AtomicU64::new(0)),
            seconds: std::array::from_fn(|_| AtomicU64::new(0)),
            told_in_flight: AtomicU64::new(0),
        }
    }
}

impl Counts {
    /// A request answered with `status`, its answer's head after `took`.
    fn answered(&self, status: StatusCode, took: Duration) {
        if let Some(count) = self
            .statuses
            .get(usize::from(status.as_u16()).wrapping_sub(100))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let took = took.as_secs_f64();
        let bucket = SECONDS_BUCKETS
            .iter()
            .position(|upper| took <= *upper)
            .unwrap_or(SECONDS_BUCKETS.len());
        self.seconds[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// What to tell the node, if anything changed since it was last told.
    fn take(&self) -> Option<Header> {
        let statuses: Vec<(u16, u64)> = self
            .statuses
            .iter()
            .zip(100..)
            .filter_map(|(count, status)| {
                let count = count.swap(0, Ordering::Relaxed);
                (count > 0).then_some((status, count))
            })
            .collect();
        let seconds: Vec<u64> = self
            .seconds
            .iter()
            .map(|count| count.swap(0, Ordering::Relaxed))
            .collect();
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let told = self.told_in_flight.swap(in_flight, Ordering::AcqRel);
        if statuses.is_empty() && in_flight == told {
            return None;
        }
        Some(Header::WebCounts {
            in_flight,
            statuses,
            seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_told_once_and_by_bucket() {
        let counts = Counts::default();
        assert!(counts.take().is_none(), "nothing to tell");
        counts.answered(StatusCode::OK, Duration::from_micros(300));
        counts.answered(StatusCode::OK, Duration::from_millis(2));
        counts.answered(StatusCode::NOT_FOUND, Duration::from_secs(90));
        let Some(Header::WebCounts {
            statuses, seconds, ..
        }) = counts.take()
        else {
            panic!("counts to tell");
        };
        assert_eq!(statuses, vec![(200, 2), (404, 1)]);
        assert_eq!(seconds[0], 1, "under half a millisecond");
        assert_eq!(seconds[2], 1, "under 2.5 ms");
        assert_eq!(seconds[SECONDS_BUCKETS.len()], 1, "longer than a minute");
        assert!(counts.take().is_none(), "told once");
    }

    #[test]
    fn a_request_goes_back_only_from_its_beginning() {
        let state = ConnectionState::default();
        state.recorded(b"GET /other HTTP/1.1\r\n\r\n");
        assert!(state.can_give_back(&Method::GET));
        assert!(!state.can_give_back(&Method::POST));
        state.wrote.store(true, Ordering::Release);
        state.recorded(b"body of something else");
        assert!(!state.can_give_back(&Method::GET));
        state.wrote.store(true, Ordering::Release);
        state.recorded(&vec![b'x'; MAX_READ + 1]);
        assert_eq!(state.read_since_answer(), None, "too much to carry");
    }
}
