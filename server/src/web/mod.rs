//! Web hosting on the node's HTTP port (8080 plus the offset), what `immutant.web` on AS7 was.
//! An app mounts a handler with the SDK; the node routes each request by its host and the
//! longest context path that prefixes it ([`routes`]) to the app's process, over a Unix socket
//! the node made for that process ([`backend`]), streaming both ways ([`proxy`]).
//!
//! A mounted app's route lives as long as its deployment: `Starting` until the app is ready,
//! `Up` while a process serves it, `Down` (503, saying why) while it restarts or after it
//! failed. A redeploy switches the route to the new process once it is ready, and the old one
//! is stopped only when the requests it was serving have finished.

mod backend;
mod proxy;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use tracing::warn;

pub use backend::{Backend, SocketDir};
pub use routes::{Route, Routes, Target, normalize_context_path};

/// The web tier of a node: its routes, and where its apps' sockets are made.
pub struct Web {
    node_name: String,
    routes: RwLock<Routes>,
    pub sockets: SocketDir,
}

impl Web {
    /// The web tier of the node `node_name`, making app sockets in `sockets` (a folder of the
    /// data dir, emptied and made private to this user).
    pub fn new(node_name: String, sockets: PathBuf) -> std::io::Result<Web> {
        Ok(Web {
            node_name,
            routes: RwLock::new(Routes::default()),
            sockets: SocketDir::open(sockets)?,
        })
    }

    fn routes(&self) -> RwLockReadGuard<'_, Routes> {
        self.routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn routes_mut(&self) -> RwLockWriteGuard<'_, Routes> {
        self.routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `app` has mounted a handler at `context_path` for `hosts` (none: every host): until it
    /// is ready, requests for it are told it is starting. A route it already has (an earlier
    /// process still serving, during a redeploy) is left as it is.
    pub fn mount(&self, app: &str, context_path: &str, hosts: &[String]) {
        let mut routes = self.routes_mut();
        if routes.get_mut(app).is_some() {
            return;
        }
        let route = Route {
            app: app.to_string(),
            context_path: normalize_context_path(context_path),
            hosts: hosts.iter().map(|host| host.to_ascii_lowercase()).collect(),
            target: Target::Starting,
        };
        if let Some(other) = routes.clash(&route) {
            warn!(
                "{app} and {} are both mounted at {}; requests go to the one whose name sorts first",
                other.app,
                route.describe()
            );
        }
        routes.insert(route);
    }

    /// `app`'s process behind `backend` is ready: new requests go to it. Returns the backend
    /// that served the app until now, if another did, for the caller to drain.
    pub fn up(&self, app: &str, backend: Arc<Backend>) -> Option<Arc<Backend>> {
        let mut routes = self.routes_mut();
        let route = routes.get_mut(app)?;
        match std::mem::replace(&mut route.target, Target::Up(backend.clone())) {
            Target::Up(old) if !Arc::ptr_eq(&old, &backend) => Some(old),
            _ => None,
        }
    }

    /// `app`'s process behind `backend` is gone (`why`): unless another process serves the
    /// app already, requests are told why.
    pub fn down(&self, app: &str, backend: &Arc<Backend>, why: &str) {
        let mut routes = self.routes_mut();
        if let Some(route) = routes.get_mut(app) {
            let serving = match &route.target {
                Target::Up(current) => Arc::ptr_eq(current, backend),
                _ => true,
            };
            if serving {
                route.target = Target::Down(why.to_string());
            }
        }
    }

    /// Requests for `app` are told it cannot answer, and why.
    pub fn set_down(&self, app: &str, why: &str) {
        if let Some(route) = self.routes_mut().get_mut(app) {
            route.target = Target::Down(why.to_string());
        }
    }

    /// Whether a process serves `app`'s web requests now.
    pub fn serving(&self, app: &str) -> bool {
        self.routes()
            .get(app)
            .is_some_and(|route| matches!(route.target, Target::Up(_)))
    }

    /// Unmounts `app`: its requests are not found from now on. Returns the backend that was
    /// serving it, for the caller to drain.
    pub fn unmount(&self, app: &str) -> Option<Arc<Backend>> {
        match self.routes_mut().remove(app)?.target {
            Target::Up(backend) => Some(backend),
            _ => None,
        }
    }

    /// The context path and hosts `app` is mounted at, if it is.
    pub fn mounted_at(&self, app: &str) -> Option<String> {
        self.routes().get(app).map(|route| route.describe())
    }
}

/// The HTTP port's routes: every request goes to the app mounted for it.
pub fn router(web: Arc<Web>) -> Router {
    Router::new().fallback(
        move |ConnectInfo(client): ConnectInfo<SocketAddr>, request: Request<Body>| {
            proxy::handle(web.clone(), client, request)
        },
    )
}
