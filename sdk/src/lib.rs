//! # immutant
//!
//! The SDK an Immutant app links. An app is a Rust binary whose `main` is its bootstrap (what
//! `immutant.clj` was): it connects to the node that started it, starts queues and topics,
//! registers listeners and daemons, then hands control to the node with [`App::run`]:
//!
//! ```no_run
//! use immutant::App;
//!
//! #[tokio::main]
//! async fn main() -> immutant::Result<()> {
//!     let app = App::connect().await?;
//!     let queue = app.queue("/queue/work").await?;
//!     queue.listen(|job: String| async move {
//!         println!("working on {job}");
//!         Ok(())
//!     }).concurrency(4).await?;
//!     queue.publish(&"first job").await?;
//!     app.run().await
//! }
//! ```
//!
//! - [`messaging`]: [`Queue`] and [`Topic`]: publish, listen, receive, request and respond.
//! - [`daemon`]: long-running services with a start and a stop; singletons in a cluster.
//! - [`jobs`]: jobs the node fires on a cron schedule or at intervals; singletons in a cluster.
//! - [`cache`]: local, replicated or distributed caches shared across the cluster.
//! - `web` (with the `web` feature): an axum router served at the app's context path.
//!
//! The node runs the app as a child process and the two talk over an inherited Unix socket
//! with the frames of [`immutant_protocol`] (see `docs/protocol.md`).

mod app;
pub mod cache;
mod connection;
pub mod daemon;
pub mod jobs;
mod lease;
pub mod messaging;
#[cfg(feature = "web")]
pub mod web;

pub use app::App;
pub use cache::Cache;
pub use daemon::Daemon;
pub use immutant_protocol::{BYTES, JSON, PROTOCOL_VERSION, PublishOptions};
pub use lease::Fence;
pub use messaging::{Message, Queue, Topic};

/// What a handler may fail with: any error, which the node records as the failure's reason.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The result of this SDK's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this app was not started by an Immutant node ({0} is not set); deploy it with `cargo immutant deploy` and run a node with `cargo immutant run`, or run its tests with `cargo immutant test`"
    )]
    NotInNode(&'static str),
    #[error("the node refused: {0}")]
    Node(String),
    #[error("the connection to the node is closed")]
    Closed,
    #[error(
        "the singleton lease of epoch {epoch} has lapsed: this node no longer runs the app's singletons, so the work was not done"
    )]
    LeaseLapsed { epoch: u64 },
    #[error(
        "epoch {epoch} is stale: the app's singletons run under epoch {current} now, so the work was not done"
    )]
    StaleEpoch { epoch: u64, current: u64 },
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    #[error(
        "a payload of {size} bytes is over the node's limit of {limit} bytes; send less, or raise -Dimmutant.messaging.max-message-size on every node"
    )]
    TooLarge { size: usize, limit: u64 },
    #[error("cannot encode or decode a payload as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the node's socket failed: {0}")]
    Protocol(#[from] immutant_protocol::ProtocolError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
