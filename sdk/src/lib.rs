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

// The modules from the bottom up, in groups; each imports only from groups before its own:
// the foundations (`error` under everything, `lease` under `fence`), the connection to the
// node, the services over it, `orders` (what the node asks of daemons and jobs, carried out),
// and the app on top.
mod error;
mod fence;
mod inherited;
mod lease;
mod sync;

mod connection;

pub mod cache;
pub mod daemon;
pub mod jobs;
pub mod messaging;
#[cfg(feature = "web")]
pub mod web;

mod orders;

mod app;

pub use app::App;
pub use cache::Cache;
pub use daemon::Daemon;
pub use error::{BoxError, Error, Result};
pub use fence::Fence;
pub use immutant_protocol::{BYTES, JSON, PROTOCOL_VERSION, PublishOptions};
pub use messaging::{Message, Queue, Topic};
