//! Networking as every server of the project does it: ports bound with errors that say what to
//! do about a port in use, HTTP served until shutdown (guarded, for ports people and tools
//! use), accepting that backs off when it fails, and multicast sockets that send only through
//! the bind address's interface.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

use crate::shutdown::Shutdown;

/// Why a port could not be bound or served.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "the {name} port {address} is already in use, perhaps by another node; shift this node's ports with -Djboss.socket.binding.port-offset=100"
    )]
    PortInUse {
        name: &'static str,
        address: SocketAddr,
    },
    #[error(
        "cannot bind {address}: that address is not on this machine; set -Djboss.bind.address (or -b) to one of its addresses"
    )]
    AddressNotLocal { address: SocketAddr },
    #[error("cannot bind the {name} port {address}: {source}")]
    Bind {
        name: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {name} server failed: {source}")]
    Serve {
        name: &'static str,
        source: std::io::Error,
    },
}

/// Binds the port called `name` (for errors) at `address`.
pub async fn bind(name: &'static str, address: SocketAddr) -> Result<TcpListener, NetError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| match source.kind() {
            ErrorKind::AddrInUse => NetError::PortInUse { name, address },
            ErrorKind::AddrNotAvailable => NetError::AddressNotLocal { address },
            _ => NetError::Bind {
                name,
                address,
                source,
            },
        })
}

/// Serves `router` on `listener` (the port called `name`) until `shutdown`, then lets the
/// requests in flight finish.
pub fn serve(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<Result<(), NetError>> {
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(|source| NetError::Serve { name, source })
    })
}

/// The most connections the management port serves at once. At the bound, a new connection
/// takes the place of the one that has waited longest for a request's head; only if every
/// connection is in a request does it wait to be accepted.
const MAX_MANAGEMENT_CONNECTIONS: usize = 256;
/// How long a management client has to send a request's head (on a new connection, or the
/// next one on a kept-alive connection): one that says nothing is closed then.
const MANAGEMENT_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long accepting pauses after it fails (out of descriptors), on every port.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` as a port for people and tools, not traffic: at most
/// [`MAX_MANAGEMENT_CONNECTIONS`] connections at once, each TLS handshake (with `tls`) and each
/// request's head within [`MANAGEMENT_HEAD_TIMEOUT`], backing off when accepting fails; until
/// `shutdown`, then lets the requests in flight finish. Clients that hold connections without
/// finishing a handshake or a request (a slowloris: a head sent a byte at a time) cannot keep
/// others out: at the bound, the connection that has waited longest for a head is closed to
/// make room, and one whose head has come is never closed for another.
pub fn serve_guarded(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<Result<(), NetError>> {
    tokio::spawn(async move {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_MANAGEMENT_CONNECTIONS));
        let connections = std::sync::Arc::new(Connections::default());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            };
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => Ok(slot),
                Err(_) => {
                    connections.close_longest_waiting();
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => slot,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            let Ok(slot) = slot else { break };
            let (id, closed) = connections.open();
            let guarded = Guarded {
                id,
                closed,
                connections: connections.clone(),
                _slot: slot,
            };
            let watcher = graceful.watcher();
            let (router, acceptor) = (router.clone(), acceptor.clone());
            // Each connection's handshake and requests in a task of its own: none holds up
            // accepting.
            tokio::spawn(async move {
                match acceptor {
                    None => guarded.serve(stream, router, watcher).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(MANAGEMENT_HEAD_TIMEOUT, acceptor.accept(stream));
                        let shaken = tokio::select! {
                            shaken = handshake => shaken,
                            _ = guarded.closed.cancelled() => return,
                        };
                        if let Ok(Ok(stream)) = shaken {
                            guarded.serve(stream, router, watcher).await;
                        }
                    }
                }
            });
        }
        graceful.shutdown().await;
        Ok(())
    })
}

/// A connection the guarded port took: its number, what closes it, and its place among the
/// connections served at once. Dropped, it is forgotten and its place given back, however it
/// ended.
struct Guarded {
    id: u64,
    closed: tokio_util::sync::CancellationToken,
    connections: std::sync::Arc<Connections>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Guarded {
    /// Serves `router`'s HTTP/1.1 on `io` (HTTP/2 is not offered: telling it apart means
    /// waiting for bytes with no deadline), until the client goes or the port closes it;
    /// `watcher` lets its request finish at shutdown.
    async fn serve<I>(
        self,
        io: I,
        router: axum::Router,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let (id, connections) = (self.id, self.connections.clone());
        let service = hyper::service::service_fn(move |request| {
            connections.in_request(id);
            let answered = tower::ServiceExt::oneshot(router.clone(), request);
            let connections = connections.clone();
            async move {
                let response = answered.await;
                connections.between_requests(id);
                response
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(MANAGEMENT_HEAD_TIMEOUT);
        let connection = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::select! {
            _ = connection => {}
            _ = self.closed.cancelled() => {}
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.connections.forget(self.id);
    }
}

/// The guarded port's connections: since when each has waited for a request's head (none while
/// its handler runs), and how to close it.
#[derive(Default)]
struct Connections {
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<u64, Connection>>,
}

struct Connection {
    waiting_since: Option<std::time::Instant>,
    close: tokio_util::sync::CancellationToken,
}

impl Connections {
    /// A new connection, waiting for its first head: its number, and what closes it when
    /// cancelled.
    fn open(&self) -> (u64, tokio_util::sync::CancellationToken) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = tokio_util::sync::CancellationToken::new();
        let connection = Connection {
            waiting_since: Some(std::time::Instant::now()),
            close: close.clone(),
        };
        crate::sync::lock(&self.open).insert(id, connection);
        (id, close)
    }

    fn in_request(&self, id: u64) {
        if let Some(connection) = crate::sync::lock(&self.open).get_mut(&id) {
            connection.waiting_since = None;
        }
    }

    fn between_requests(&self, id: u64) {
        if let Some(connection) = crate::sync::lock(&self.open).get_mut(&id) {
            connection.waiting_since = Some(std::time::Instant::now());
        }
    }

    fn forget(&self, id: u64) {
        crate::sync::lock(&self.open).remove(&id);
    }

    /// Closes the connection that has waited longest for a head, if one waits (not one already
    /// being closed).
    fn close_longest_waiting(&self) {
        let open = crate::sync::lock(&self.open);
        let longest = open
            .values()
            .filter(|connection| !connection.close.is_cancelled())
            .filter_map(|connection| Some((connection.waiting_since?, &connection.close)))
            .min_by_key(|(since, _)| *since);
        if let Some((_, close)) = longest {
            close.cancel();
        }
    }
}

/// Waits for servers started with [`serve`] to end.
pub async fn served(
    servers: impl IntoIterator<Item = tokio::task::JoinHandle<Result<(), NetError>>>,
) -> Result<(), NetError> {
    for server in servers {
        server.await.map_err(|error| NetError::Serve {
            name: "server",
            source: std::io::Error::other(error),
        })??;
    }
    Ok(())
}

/// Opens a multicast socket: bound to the group's port, member of the group on the bind
/// address's interface, and sending through that interface only.
pub fn multicast_socket(group: IpAddr, port: u16, interface: IpAddr) -> std::io::Result<UdpSocket> {
    let (IpAddr::V4(group), IpAddr::V4(interface)) = (group, interface) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "multicast discovery needs an IPv4 bind address and group; use -Dimmutant.cluster.seeds",
        ));
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV4::new(group, port).into())?;
    let interface = if interface.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        interface
    };
    socket.join_multicast_v4(&group, &interface)?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(2)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_waiting_longest_is_closed_and_one_in_a_request_never() {
        let connections = Connections::default();
        let (busy, busy_closed) = connections.open();
        let (oldest, oldest_closed) = connections.open();
        let (_newest, newest_closed) = connections.open();
        connections.in_request(busy);
        connections.close_longest_waiting();
        assert!(oldest_closed.is_cancelled());
        assert!(!busy_closed.is_cancelled() && !newest_closed.is_cancelled());
        // The next goes to the next waiting longest, never the one in its request.
        connections.close_longest_waiting();
        assert!(newest_closed.is_cancelled());
        connections.close_longest_waiting();
        assert!(!busy_closed.is_cancelled());
        connections.forget(oldest);
        connections.between_requests(busy);
        connections.close_longest_waiting();
        assert!(busy_closed.is_cancelled());
    }
}
