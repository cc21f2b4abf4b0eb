//! Web: the app's HTTP handler, which its node serves at the app's context path (`/<name>` by
//! default, or `context-path` in `[package.metadata.immutant]`) and virtual hosts.
//!
//! ```no_run
//! use immutant::web::axum::{Router, routing::get};
//!
//! # async fn example() -> immutant::Result<()> {
//! let app = immutant::App::connect().await?;
//! app.web(Router::new().route("/", get(|| async { "hello" }))).await?;
//! app.run().await
//! # }
//! ```
//!
//! The handler sees each path relative to the context path (a request for `/example/hi`
//! reaches the app of `/example` as `/hi`); [`ContextPath`], in every request's extensions,
//! and the `X-Forwarded-Prefix` header say what was taken off, for links. The node passes
//! `X-Forwarded-For`, `-Proto` and `-Host` too. Bodies stream both ways and WebSocket upgrades
//! pass through. The node hands the app each client connection whose first request is the
//! app's, and the app serves its requests itself; requests the node passes on (from balancers,
//! over HTTPS) come over a Unix socket the node made for this process alone: the app opens no
//! port.
//!
//! When the node stops the app, the web server stops taking connections and lets the requests
//! in flight finish (within the stop's limit) before daemons are stopped.

use std::time::Duration;

use axum::Router;
use immutant_protocol::handoff::HandoffChannel;
use immutant_protocol::{Frame, Header};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::inherited;

pub use axum;

mod handoff;
pub mod sessions;

/// The context path the app is mounted at (`/` or `/name`), in every request's extensions:
/// `Extension(ContextPath(prefix))` in a handler's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextPath(pub String);

/// The app's web server, while it runs.
pub(crate) struct WebServer {
    stop: watch::Sender<bool>,
    /// The server on the web socket, and (if the node hands it connections) the one serving
    /// those and its reports.
    done: Vec<JoinHandle<()>>,
}

impl WebServer {
    /// Serves `router` on the socket the node handed down, and the client connections the
    /// node hands over if it does (see [`handoff`]), and tells the node.
    pub(crate) async fn start(connection: &Connection, router: Router) -> Result<WebServer> {
        let fd = inherited::WEB
            .take()?
            .ok_or(Error::NotInNode(inherited::WEB.var()))?;
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let welcome = connection.welcome();
        let context_path = ContextPath(welcome.context_path.clone());
        let router = router.layer(axum::Extension(context_path));
        let (stop, stopped) = watch::channel(false);
        let mut done = Vec::new();
        let handoff = match inherited::WEB_HANDOFF.take()? {
            Some(end) => Some(HandoffChannel::new(end)?),
            None => None,
        };
        let handed = handoff.is_some();
        if let Some(channel) = handoff {
            let app = &welcome.app;
            let served = handoff::Served::new(app, &welcome.context_path, router.clone(), channel);
            let (finished, done_serving) = tokio::sync::oneshot::channel::<()>();
            let serving = handoff::serve(served.clone(), stopped.clone());
            done.push(tokio::spawn(async move {
                serving.await;
                drop(finished);
            }));
            let report = handoff::report(served, connection.clone(), async move {
                let _ = done_serving.await;
            });
            done.push(tokio::spawn(report));
        }
        let mut stopped = stopped;
        done.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let serving = axum::serve(listener, router.into_make_service())
                .with_graceful_shutdown(stopped)
                .await;
            if let Err(error) = serving {
                eprintln!("immutant: the web server failed: {error}");
            }
        }));
        let id = connection.next_id();
        let header = Header::Web {
            id,
            handoff: handed,
        };
        connection.call(id, Frame::new(header)).await?;
        Ok(WebServer { stop, done })
    }

    /// Stops taking requests and waits, up to `limit`, for those in flight to finish.
    pub(crate) async fn stop(self, limit: Duration) {
        self.stop.send_replace(true);
        let all = futures_util::future::join_all(self.done);
        if tokio::time::timeout(limit, all).await.is_err() {
            eprintln!("immutant: web requests still running after {limit:?}; stopping anyway");
        }
    }
}
