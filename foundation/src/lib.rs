//! # immutant-foundation
//!
//! What every server of the project stands on, below the node's engines and services and below
//! the balancer: nothing here knows of apps, clusters or messages. Start from the module that
//! names what you need:
//!
//! - [`sync`]: the one way a `std` mutex is locked.
//! - [`clock`]: wall-clock milliseconds, and the boot clock that leases are counted on.
//! - [`hash`]: a hash every member computes alike, whatever toolchain built it.
//! - [`shutdown`]: the signals that ask a server to stop, and the token that passes it down.
//! - [`net`]: ports bound and served, accept backoff, multicast sockets.
//! - [`edge`]: the ports clients reach, HTTP/1.1, or HTTP/2 over TLS.
//! - [`tls`]: the certificates those ports serve, chosen by SNI and reloaded.
//! - [`http`]: a request passed on to another HTTP server and its answer passed back.
//! - [`pool`]: the connections such requests go on, kept for the next.
//! - [`mcmp`]: mod_cluster's vocabulary, which the node and the balancer both speak.
//! - [`logging`]: a server's log, on standard output and in a rotated file.

pub mod clock;
pub mod edge;
pub mod hash;
pub mod http;
pub mod logging;
pub mod mcmp;
pub mod net;
pub mod pool;
pub mod shutdown;
pub mod sync;
pub mod tls;
