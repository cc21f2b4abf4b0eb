//! The ports clients reach: a node's HTTP and HTTPS ports, and the balancer's. Each connection
//! is served HTTP/1.1 (upgrades included) or, over TLS, HTTP/2 when the client's ALPN picks it
//! (WebSockets over it by extended CONNECT, RFC 8441); HTTP/2 without TLS (h2c) only when asked
//! for, since nothing in a browser speaks it and it is one more protocol for a stranger to
//! try. Every request carries its client's address (`ConnectInfo<SocketAddr>`), the
//! [`Worker`] serving it and, when it came over TLS, [`OverTls`]; every answer over TLS says
//! HSTS when asked to. With [`Workers`], each connection is served whole on one thread of its
//! own runtime, as nginx's workers serve theirs: its requests, and whatever they start there
//! (a connection onward), never wait on another thread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::net::{ACCEPT_BACKOFF, NetError};
use crate::shutdown::Shutdown;

/// How a port clients reach is served.
#[derive(Clone, Default)]
pub struct EdgePort {
    /// TLS, with the settings of [`crate::tls::Certificates::server_config`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Plain HTTP/2 (prior knowledge) beside HTTP/1.1 on a port without TLS.
    pub h2c: bool,
    /// `Strict-Transport-Security` on every answer over TLS.
    pub hsts: bool,
    /// The threads connections are served on (none: the runtime's own).
    pub workers: Option<Arc<Workers>>,
    /// What may take a connection before it is served here (a port without TLS only).
    pub claim: Option<Arc<dyn Claim>>,
}

/// What may take a client's connection off a port before the port serves it (a node hands a
/// connection whole to the app its first request is for); it gives back what it does not take.
pub trait Claim: Send + Sync + 'static {
    fn claim(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<TcpStream>> + Send + '_>>;
}

/// Marks a request that came over TLS.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Which of the [`Workers`] serves a request (its number; 0 without them): what a handler
/// keeps per worker (a pool of connections onward) is found by it.
#[derive(Debug, Clone, Copy)]
pub struct Worker(pub usize);

/// Threads that serve connections, each running a single-threaded runtime of its own; new
/// connections are dealt to them in turn. They end when this is dropped.
pub struct Workers {
    runtimes: Vec<tokio::runtime::Handle>,
    /// Dropped, they end their threads' runtimes.
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (at least one), their threads named `name-N`.
    pub fn start(name: &str, count: usize) -> std::io::Result<Arc<Workers>> {
        let mut runtimes = Vec::new();
        let mut stops = Vec::new();
        for number in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtimes.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("{name}-{number}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    })
                })?;
        }
        Ok(Arc::new(Workers {
            runtimes,
            _stops: stops,
            next: AtomicUsize::new(0),
        }))
    }

    /// As many workers as the machine has cores.
    pub fn per_core(name: &str) -> std::io::Result<Arc<Workers>> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Workers::start(name, cores)
    }

    /// How many there are.
    pub fn count(&self) -> usize {
        self.runtimes.len()
    }

    /// The next worker in turn: its number and runtime.
    fn deal(&self) -> (usize, &tokio::runtime::Handle) {
        let number = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len();
        (number, &self.runtimes[number])
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/2 connection may go without a request open before it is closed (an
/// HTTP/1.1 connection has hyper's 30 s to send its next request's head).
const HTTP2_IDLE_LIMIT: Duration = Duration::from_secs(60);
/// How often an HTTP/2 peer is pinged, and how long it has to answer.
const HTTP2_PING: Duration = Duration::from_secs(20);
/// How long a port, once stopping, waits for the requests in flight (and open tunnels) to end
/// before it lets them go.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// What HSTS says: use HTTPS only, for a year.
const HSTS: &str = "max-age=31536000";

/// Which protocols a connection may speak.
#[derive(Clone, Copy)]
enum Protocols {
    Http1,
    Http2,
    Either,
}

/// What answers a port's requests: an axum `Router`, or a handler of its own (the balancer's
/// proxy, which needs no routing in front of it).
pub trait Answerer: Clone + Send + Sync + 'static {
    fn answer(&self, request: Request<Body>) -> impl Future<Output = Response<Body>> + Send;
}

impl Answerer for axum::Router {
    fn answer(&self, request: Request<Body>) -> impl Future<Output = Response<Body>> + Send {
        let answered = tower::ServiceExt::oneshot(self.clone(), request);
        async move {
            match answered.await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    }
}

/// Serves `answerer` to clients on `listener` (the port called `name`) as `port` says, until
/// `shutdown`; then lets the requests in flight finish.
pub fn serve_edge<A: Answerer>(
    name: &'static str,
    listener: TcpListener,
    answerer: A,
    port: EdgePort,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<Result<(), NetError>> {
    tokio::spawn(async move {
        let connections = TaskTracker::new();
        let acceptor = port.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!("the {name} port could not accept a connection: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (worker, runtime) = match &port.workers {
                Some(workers) => {
                    let (number, runtime) = workers.deal();
                    (number, Some(runtime.clone()))
                }
                None => (0, None),
            };
            let exchange = Exchange {
                answerer: answerer.clone(),
                peer,
                worker: Worker(worker),
                over_tls: acceptor.is_some(),
                hsts: port.hsts && acceptor.is_some(),
                activity: None,
            };
            let (shutdown, acceptor) = (shutdown.clone(), acceptor.clone());
            let protocols = match port.h2c {
                true => Protocols::Either,
                false => Protocols::Http1,
            };
            let claim = port.claim.clone();
            let serve = move |stream: TcpStream| async move {
                match (acceptor, claim) {
                    (None, None) => serve_connection(stream, exchange, protocols, shutdown).await,
                    (None, Some(claim)) => {
                        if let Some(stream) = claim.claim(stream, peer).await {
                            serve_connection(stream, exchange, protocols, shutdown).await;
                        }
                    }
                    (Some(acceptor), _) => serve_tls(stream, acceptor, exchange, shutdown).await,
                }
            };
            let Some(runtime) = runtime else {
                connections.spawn(serve(stream));
                continue;
            };
            // Handed over as a plain socket: it is registered with the runtime that serves it.
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            connections.spawn_on(
                async move {
                    if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                        serve(stream).await;
                    }
                },
                &runtime,
            );
        }
        connections.close();
        let _ = tokio::time::timeout(DRAIN_LIMIT, connections.wait()).await;
        Ok(())
    })
}

/// Serves HTTP/1.1 on a plain connection from `peer` that was taken off a port (see [`Claim`])
/// and given back, of which `read` has been read already, until the client goes or, after
/// `shutdown`, until its request in flight is answered.
pub async fn serve_returned<A: Answerer>(
    stream: TcpStream,
    read: Vec<u8>,
    peer: SocketAddr,
    answerer: A,
    shutdown: Shutdown,
) {
    let exchange = Exchange {
        answerer,
        peer,
        worker: Worker(0),
        over_tls: false,
        hsts: false,
        activity: None,
    };
    let stream = immutant_protocol::handoff::Prefixed::new(read, stream);
    serve_connection(stream, exchange, Protocols::Http1, shutdown).await;
}

/// Serves a connection over TLS: its handshake within [`HANDSHAKE_TIMEOUT`], then the protocol
/// its ALPN picked.
async fn serve_tls<A: Answerer>(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    exchange: Exchange<A>,
    shutdown: Shutdown,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let shaken = tokio::select! {
        shaken = handshake => shaken,
        _ = shutdown.cancelled() => return,
    };
    let Ok(Ok(stream)) = shaken else { return };
    let protocols = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocols::Http2,
        _ => Protocols::Http1,
    };
    serve_connection(stream, exchange, protocols, shutdown).await;
}

/// What every request of one connection is served with, and (HTTP/2, where nothing else
/// closes an idle connection) what the connection is doing.
#[derive(Clone)]
struct Exchange<A> {
    answerer: A,
    peer: SocketAddr,
    worker: Worker,
    over_tls: bool,
    hsts: bool,
    activity: Option<Arc<Activity>>,
}

/// The requests a connection has open now, and how many it has answered (no clock is read per
/// request: the idle watch notes when that count last moved).
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    answered: AtomicUsize,
}

/// A request open on a connection, until its answer's head is given (or it is dropped, the
/// client gone).
struct Open(Arc<Activity>);

impl Open {
    fn begin(activity: &Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::AcqRel);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<A: Answerer> Exchange<A> {
    async fn answer(self, mut request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let _open = self.activity.as_ref().map(Open::begin);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        request.extensions_mut().insert(self.worker);
        if self.over_tls {
            request.extensions_mut().insert(OverTls);
        }
        let mut response = self.answerer.answer(request.map(Body::new)).await;
        if self.hsts {
            // The app's own word, if it says one, stands.
            response
                .headers_mut()
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert(HeaderValue::from_static(HSTS));
        }
        Ok(response)
    }
}

/// Serves one connection's requests in `protocols` until the client goes, or, after
/// `shutdown`, until the requests in flight are answered.
async fn serve_connection<I, A>(
    io: I,
    mut exchange: Exchange<A>,
    protocols: Protocols,
    shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Answerer,
{
    let io = TokioIo::new(io);
    let activity = match protocols {
        Protocols::Http1 => None,
        Protocols::Http2 | Protocols::Either => Some(Arc::<Activity>::default()),
    };
    exchange.activity = activity.clone();
    let service = hyper::service::service_fn(move |request| exchange.clone().answer(request));
    match protocols {
        Protocols::Http1 => {
            // With a timer, a request's head must come within hyper's 30 s.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new());
            let connection = builder.serve_connection(io, service).with_upgrades();
            until_done(connection, shutdown, None, |connection| {
                connection.graceful_shutdown()
            })
            .await;
        }
        Protocols::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .enable_connect_protocol()
                .keep_alive_interval(HTTP2_PING)
                .keep_alive_timeout(HTTP2_PING);
            let connection = builder.serve_connection(io, service);
            until_done(connection, shutdown, activity, |connection| {
                connection.graceful_shutdown()
            })
            .await;
        }
        Protocols::Either => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(HTTP2_PING)
                .keep_alive_timeout(HTTP2_PING);
            let connection = builder.serve_connection_with_upgrades(io, service);
            until_done(connection, shutdown, activity, |connection| {
                connection.graceful_shutdown()
            })
            .await;
        }
    }
}

/// Drives `connection` to its end; once `shutdown` comes, or it has had no request open for
/// [`HTTP2_IDLE_LIMIT`] (with `activity`: one that says nothing, or nothing more, does not
/// hold its socket and task for ever), asks it to finish what it has begun and take nothing
/// new.
async fn until_done<C: Future>(
    connection: C,
    shutdown: Shutdown,
    activity: Option<Arc<Activity>>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) {
    let mut connection = std::pin::pin!(connection);
    let idle = async {
        let Some(activity) = activity else {
            return std::future::pending().await;
        };
        let mut looks = tokio::time::interval(HTTP2_IDLE_LIMIT / 6);
        // How many requests it had answered when that count last moved, and since when.
        let (mut answered, mut quiet_since) = (0, tokio::time::Instant::now());
        loop {
            looks.tick().await;
            let now_answered = activity.answered.load(Ordering::Acquire);
            if activity.open.load(Ordering::Acquire) != 0 || now_answered != answered {
                (answered, quiet_since) = (now_answered, tokio::time::Instant::now());
            } else if quiet_since.elapsed() >= HTTP2_IDLE_LIMIT {
                return;
            }
        }
    };
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = shutdown.cancelled() => graceful(connection.as_mut()),
        _ = idle => graceful(connection.as_mut()),
    }
    let _ = connection.await;
}
