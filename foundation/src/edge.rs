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
use tokio::net::TcpListener;
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
}

/// Marks a request that came over TLS.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Which of the [`Workers`] serves a request (0 without them): what a handler keeps per
/// worker (a pool of connections onward) is found by it.
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
/// What HSTS says: use HTTPS only, for a year.
const HSTS: &str = "max-age=31536000";

/// Which protocols a connection may speak.
#[derive(Clone, Copy)]
enum Protocols {
    Http1,
    Http2,
    Either,
}

/// Serves `router` to clients on `listener` (the port called `name`) as `port` says, until
/// `shutdown`; then lets the requests in flight finish.
pub fn serve_edge(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
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
                router: router.clone(),
                peer,
                worker: Worker(worker),
                over_tls: acceptor.is_some(),
                hsts: port.hsts && acceptor.is_some(),
            };
            let (shutdown, acceptor) = (shutdown.clone(), acceptor.clone());
            let protocols = match port.h2c {
                true => Protocols::Either,
                false => Protocols::Http1,
            };
            let serve = move |stream: tokio::net::TcpStream| async move {
                match acceptor {
                    None => serve_connection(stream, exchange, protocols, shutdown).await,
                    Some(acceptor) => serve_tls(stream, acceptor, exchange, shutdown).await,
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
        connections.wait().await;
        Ok(())
    })
}

/// Serves a connection over TLS: its handshake within [`HANDSHAKE_TIMEOUT`], then the protocol
/// its ALPN picked.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    exchange: Exchange,
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

/// What every request of one connection is served with.
#[derive(Clone)]
struct Exchange {
    router: axum::Router,
    peer: SocketAddr,
    worker: Worker,
    over_tls: bool,
    hsts: bool,
}

impl Exchange {
    async fn answer(self, mut request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        request.extensions_mut().insert(self.worker);
        if self.over_tls {
            request.extensions_mut().insert(OverTls);
        }
        let mut response = tower::ServiceExt::oneshot(self.router, request.map(Body::new)).await?;
        if self.hsts {
            response.headers_mut().insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS),
            );
        }
        Ok(response)
    }
}

/// Serves one connection's requests in `protocols` until the client goes, or, after
/// `shutdown`, until the requests in flight are answered.
async fn serve_connection<I>(io: I, exchange: Exchange, protocols: Protocols, shutdown: Shutdown)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let service = hyper::service::service_fn(move |request| exchange.clone().answer(request));
    match protocols {
        Protocols::Http1 => {
            // With a timer, a request's head must come within hyper's 30 s.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new());
            let connection = builder.serve_connection(io, service).with_upgrades();
            until_done(connection, shutdown, |connection| {
                connection.graceful_shutdown()
            })
            .await;
        }
        Protocols::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new()).enable_connect_protocol();
            let connection = builder.serve_connection(io, service);
            until_done(connection, shutdown, |connection| {
                connection.graceful_shutdown()
            })
            .await;
        }
        Protocols::Either => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            let connection = builder.serve_connection_with_upgrades(io, service);
            until_done(connection, shutdown, |connection| {
                connection.graceful_shutdown()
            })
            .await;
        }
    }
}

/// Drives `connection` to its end; once `shutdown` comes, asks it to finish what it has begun
/// and take nothing new.
async fn until_done<C: Future>(
    connection: C,
    shutdown: Shutdown,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = shutdown.cancelled() => graceful(connection.as_mut()),
    }
    let _ = connection.await;
}
