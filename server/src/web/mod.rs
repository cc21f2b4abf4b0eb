//! Web hosting on the node's HTTP port (8080 plus the offset), what `immutant.web` on AS7 was.
//! An app mounts a handler with the SDK; the node routes each request by its host and the
//! longest context path that prefixes it ([`routes`]) to the app's process, over a Unix socket
//! the node made for that process ([`backend`]), streaming both ways ([`proxy`]).
//!
//! A mounted app's route lives as long as its deployment: `Starting` until the app is ready,
//! `Up` while a process serves it, `Down` (503, saying why) while it restarts or after it
//! failed. A redeploy switches the route to the new process once it is ready, and the old one
//! is stopped once the requests it was serving have finished (within the stop limit).

mod backend;
mod handoff;
pub(crate) mod proxy;
mod routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use immutant_contracts::status::{BalancerReport, ContextReport};
use immutant_foundation::edge::Claim;
use immutant_foundation::mcmp::{ContextState, DEFAULT_HOST};
use immutant_foundation::shutdown::Shutdown;
use immutant_protocol::web::Mounted;
use tracing::warn;

pub use backend::{Backend, SocketDir};
pub use immutant_protocol::web::normalize_context_path;
pub use routes::{Route, Routes, Target};

/// The web tier of a node: its routes, and where its apps' sockets are made.
pub struct Web {
    node_name: String,
    routes: RwLock<Routes>,
    pub sockets: SocketDir,
    /// Bumped whenever the routes change, for balancers to hear of it at once.
    changes: watch::Sender<u64>,
    /// The change each balancer (by MCMP address) has been told of last.
    told: watch::Sender<BTreeMap<String, u64>>,
    /// The addresses of the balancers this node speaks to, and whether what each says of its
    /// clients' scheme and host is kept (only a listed one's is).
    balancers: RwLock<BTreeMap<std::net::IpAddr, bool>>,
    /// What an operator said of each context for balancers (enable, disable, stop), by
    /// context path; enabled unless said otherwise.
    control: Mutex<BTreeMap<String, ContextState>>,
    /// Whether client connections are handed to the apps they are for, and until when.
    handing_off: OnceLock<Shutdown>,
}

/// A context as balancers are told of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    pub context_path: String,
    /// Its virtual hosts, or JBoss's `default-host` and `localhost` for an app that names none.
    pub aliases: Vec<String>,
    pub state: ContextState,
}

impl Web {
    /// The web tier of the node `node_name`, making app sockets in `sockets` (a folder of the
    /// data dir, emptied and made private to this user).
    pub fn new(node_name: String, sockets: PathBuf) -> std::io::Result<Web> {
        Ok(Web {
            node_name,
            routes: RwLock::new(Routes::default()),
            sockets: SocketDir::open(sockets)?,
            changes: watch::channel(0).0,
            told: watch::channel(BTreeMap::new()).0,
            balancers: RwLock::default(),
            control: Mutex::new(BTreeMap::new()),
            handing_off: OnceLock::new(),
        })
    }

    fn routes(&self) -> RwLockReadGuard<'_, Routes> {
        self.routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The routes, to change: whoever follows the changes is told as the guard goes, and reads
    /// them changed (it waits for the routes until the guard is gone).
    fn routes_mut(&self) -> RoutesMut<'_> {
        RoutesMut {
            routes: self
                .routes
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            changes: &self.changes,
        }
    }

    /// From now until `shutdown`, the HTTP port's connections are handed to the apps their
    /// first requests are for (see [`handoff`]), when their processes take them: what takes
    /// them off the port. Only for a port that serves its clients (one that redirects them to
    /// HTTPS has nothing to hand over): connections given back are served so.
    pub fn hand_off_connections(self: &Arc<Self>, shutdown: Shutdown) -> Arc<dyn Claim> {
        let _ = self.handing_off.set(shutdown);
        Arc::new(handoff::AppClaim { web: self.clone() })
    }

    /// The app's process behind `backend` serves the client connections it is handed: it is
    /// told where apps are mounted, and handed connections from now on (if the node hands any).
    pub fn takes_connections(self: &Arc<Self>, backend: &Arc<Backend>) {
        let Some(shutdown) = self.handing_off.get() else {
            return;
        };
        if let Some(channel) = backend.open_handoff() {
            let follow = handoff::follow(self.clone(), backend.clone(), channel, shutdown.clone());
            tokio::spawn(follow);
        }
    }

    /// Hears of every change to the routes or their control (a number that grows).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Requests from `address` come from a balancer this node tells about itself; `trusted`:
    /// one it was told of, whose word on its clients' scheme and host is kept.
    pub fn tell(&self, address: std::net::IpAddr, trusted: bool) {
        let mut balancers = self
            .balancers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let kept = balancers.entry(address.to_canonical()).or_default();
        *kept |= trusted;
    }

    /// Whether requests from `address` come from a balancer this node was told of (its word
    /// on its clients is kept).
    pub fn trusts(&self, address: std::net::IpAddr) -> bool {
        self.balancer(address) == Some(true)
    }

    /// Whether `address` is a balancer's this node tells about itself (`Some`), and whether
    /// its word is kept.
    fn balancer(&self, address: std::net::IpAddr) -> Option<bool> {
        self.balancers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&address.to_canonical())
            .copied()
    }

    /// The balancer at `proxy` has been told everything up to change `version`.
    pub fn told(&self, proxy: &str, version: u64) {
        self.told.send_modify(|told| {
            told.insert(proxy.to_string(), version);
        });
    }

    /// Waits, up to `limit`, until every balancer this node speaks to has been told of change
    /// `version`; false if one had not by then.
    pub async fn balancers_told(&self, version: u64, limit: std::time::Duration) -> bool {
        let mut told = self.told.subscribe();
        let all = told.wait_for(|told| told.values().all(|seen| *seen >= version));
        tokio::time::timeout(limit, all).await.is_ok()
    }

    /// Every context as balancers should know it now: enabled (or as an operator said) while a
    /// process serves it, stopped while none does.
    pub fn published(&self) -> Vec<Published> {
        let control = immutant_foundation::sync::lock(&self.control).clone();
        let mut published: Vec<Published> = self
            .routes()
            .all()
            .map(|route| Published {
                context_path: route.context_path.clone(),
                aliases: match route.hosts.is_empty() {
                    true => vec![DEFAULT_HOST.to_string(), "localhost".to_string()],
                    false => route.hosts.clone(),
                },
                state: match route.target {
                    Target::Up(_) => control
                        .get(&route.context_path)
                        .copied()
                        .unwrap_or(ContextState::Enabled),
                    _ => ContextState::Stopped,
                },
            })
            .collect();
        published.sort();
        published
    }

    /// An operator's word on a context (`None`: every context): balancers hear of it at once.
    /// Answers the change's number (see [`Web::balancers_told`]), or none if no app is mounted
    /// there.
    pub fn set_control(&self, context_path: Option<&str>, state: ContextState) -> Option<u64> {
        let contexts: Vec<String> = match context_path {
            Some(path) => vec![normalize_context_path(path)],
            None => self
                .routes()
                .all()
                .map(|r| r.context_path.clone())
                .collect(),
        };
        let mounted = self
            .routes()
            .all()
            .any(|r| contexts.contains(&r.context_path));
        if !mounted {
            return None;
        }
        let mut control = immutant_foundation::sync::lock(&self.control);
        for context in contexts {
            match state {
                ContextState::Enabled => control.remove(&context),
                state => control.insert(context, state),
            };
        }
        drop(control);
        self.changes.send_modify(|version| *version += 1);
        Some(*self.changes.borrow())
    }

    /// Every balancer that has been told of this node, and whether it knows the latest.
    pub fn balancer_reports(&self) -> Vec<BalancerReport> {
        let latest = *self.changes.borrow();
        self.told
            .borrow()
            .iter()
            .map(|(proxy, seen)| BalancerReport {
                address: proxy.clone(),
                up_to_date: *seen >= latest,
            })
            .collect()
    }

    /// Every mounted context as the management API shows it.
    pub fn contexts(&self) -> Vec<ContextReport> {
        let control = immutant_foundation::sync::lock(&self.control).clone();
        self.routes()
            .all()
            .map(|route| ContextReport {
                app: route.app.clone(),
                context_path: route.context_path.clone(),
                hosts: route.hosts.clone(),
                serving: matches!(route.target, Target::Up(_)),
                control: control
                    .get(&route.context_path)
                    .copied()
                    .unwrap_or(ContextState::Enabled),
                in_flight: match &route.target {
                    Target::Up(backend) => backend.in_flight() as u64,
                    _ => 0,
                },
            })
            .collect()
    }

    /// The web requests in flight on this node now.
    pub fn in_flight(&self) -> usize {
        self.routes()
            .all()
            .filter_map(|route| match &route.target {
                Target::Up(backend) => Some(backend.in_flight()),
                _ => None,
            })
            .sum()
    }

    /// A deployment of an app has mounted a handler: until it is ready, requests for the
    /// app are told it is starting. A route the app has already (an earlier process still
    /// serving, during a redeploy) is left as it is.
    pub fn mount(&self, mount: &Mount) {
        let mut routes = self.routes_mut();
        if routes.get(&mount.app).is_none() {
            insert(&mut routes, mount, Target::Starting);
        }
    }

    /// The deployment's process behind `backend` is ready: new requests go to it, at the
    /// context path and hosts this deployment has. An older deployment of the app (whose
    /// process restarted while a newer one took over) does not take the route back.
    pub fn up(&self, mount: &Mount, backend: Arc<Backend>) {
        let mut routes = self.routes_mut();
        match routes.get_mut(&mount.app) {
            Some(route) if route.serial > mount.serial => {}
            _ => insert(&mut routes, mount, Target::Up(backend)),
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

    /// Unmounts `app`: its requests are not found from now on.
    pub fn unmount(&self, app: &str) {
        self.routes_mut().remove(app);
    }

    /// The context path `app` is mounted at, if it is.
    pub fn context_path(&self, app: &str) -> Option<String> {
        self.routes()
            .get(app)
            .map(|route| route.context_path.clone())
    }

    /// The context path and hosts `app` is mounted at, if it is.
    pub fn mounted_at(&self, app: &str) -> Option<String> {
        self.routes().get(app).map(|route| route.describe())
    }
}

/// The routes, held to change; dropping it tells whoever follows the changes.
struct RoutesMut<'a> {
    routes: RwLockWriteGuard<'a, Routes>,
    changes: &'a watch::Sender<u64>,
}

impl std::ops::Deref for RoutesMut<'_> {
    type Target = Routes;

    fn deref(&self) -> &Routes {
        &self.routes
    }
}

impl std::ops::DerefMut for RoutesMut<'_> {
    fn deref_mut(&mut self) -> &mut Routes {
        &mut self.routes
    }
}

impl Drop for RoutesMut<'_> {
    fn drop(&mut self) {
        // Told while the routes are still held: a follower that wakes reads them changed.
        self.changes.send_modify(|version| *version += 1);
    }
}

/// Where a deployment of an app mounts its handler. Deployments of one app are numbered in the
/// order they were made (`serial`): the route belongs to the newest that is ready.
pub struct Mount {
    pub app: String,
    pub serial: u64,
    /// `/` or `/name` (see [`normalize_context_path`]).
    pub context_path: String,
    /// The virtual hosts (none: every host).
    pub hosts: Vec<String>,
}

/// Mounts (or mounts again) the app of `mount`, at its context path and hosts, sending its
/// requests to `target`; warns when another app is mounted at the same place.
fn insert(routes: &mut Routes, mount: &Mount, target: Target) {
    let route = Route {
        mounted: Mounted {
            app: mount.app.clone(),
            context_path: normalize_context_path(&mount.context_path),
            hosts: mount
                .hosts
                .iter()
                .map(|host| host.to_ascii_lowercase())
                .collect(),
        },
        serial: mount.serial,
        target,
    };
    if let Some(other) = routes.clash(&route) {
        warn!(
            "{} and {} are both mounted at {}; requests go to the one whose name sorts first",
            route.app,
            other.app,
            route.describe()
        );
    }
    routes.insert(route);
}

/// The HTTP port's routes: every request goes to the app mounted for it. With `https_redirect`
/// (the HTTPS port), clients are sent there instead; the balancers the node tells about itself
/// (listed or advertised), which reach it over plain HTTP by design, and health checks are not.
pub fn router(web: Arc<Web>, https_redirect: Option<u16>) -> Router {
    Router::new().fallback(
        move |ConnectInfo(client): ConnectInfo<SocketAddr>, request: Request<Body>| {
            let web = web.clone();
            async move {
                let health_check =
                    request.method() == axum::http::Method::OPTIONS && request.uri() == "*";
                match https_redirect {
                    Some(port) if !health_check && web.balancer(client.ip()).is_none() => {
                        immutant_foundation::http::redirect_to_https(&request, port)
                    }
                    _ => proxy::handle(web, client, request).await,
                }
            }
        },
    )
}
