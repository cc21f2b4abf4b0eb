//! Apps: each deployment runs as a supervised child process of the node, talking to it over an
//! inherited Unix socket ([`connection`]), whose frames its [`session`] carries out, one handler
//! per domain; its singletons run here while the engine's driver says this node holds their
//! lease ([`singletons`]). A crash restarts it with backoff, and five crashes in a row mark it
//! failed ([`supervisor`]). A rolling redeploy replaces it one member at a time ([`rolling`]).

pub mod attach;
mod connection;
mod rolling;
mod session;
mod singletons;
mod supervisor;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::deploy::{DeploymentEvent, Descriptor, parse_descriptor};
use crate::engine::Engine;
use crate::jobs::AppJobs;
use crate::web::{Backend, Mount, Web, normalize_context_path};
use immutant_contracts::deployment::{DaemonState, DeploymentReport, Status};
use immutant_foundation::sync::lock;
use immutant_protocol::Outbox;

/// How long an app's daemons may take to stop (Immutant's limit).
pub const DAEMON_STOP_LIMIT_MS: u64 = 20_000;

/// What every app of this node shares.
pub struct AppContext {
    /// The engine the node's messaging, caches and membership run on.
    pub engine: Engine,
    pub node_name: String,
    /// Every node property apps may read, as they get it in their welcome.
    pub properties: std::collections::BTreeMap<String, String>,
    pub deployments_dir: PathBuf,
    /// The server groups this node belongs to (`-Dimmutant.node.groups`).
    pub groups: Vec<String>,
    /// How late a job's firing may run before it counts as misfired.
    pub misfire_threshold_ms: u64,
    /// Where the apps' web handlers are mounted.
    pub web: Arc<Web>,
}

/// One deployment and what is known of it.
pub struct Deployment {
    pub name: String,
    /// Deployments are numbered in the order they were made: a newer one of an app wins its
    /// web route.
    serial: u64,
    descriptor: Mutex<Option<Descriptor>>,
    status: watch::Sender<Status>,
    daemons: Mutex<BTreeMap<String, DaemonState>>,
    stderr_tail: Mutex<VecDeque<String>>,
    outbox: Mutex<Option<Outbox>>,
    /// The epoch this node runs the app's singletons under, while it does.
    singleton_epoch: watch::Sender<Option<u64>>,
    /// The newest epoch this node ran the app's singletons under and let go: work under it or
    /// an older one is refused here.
    let_go: AtomicU64,
    /// Until when (on the host's boot clock, in nanoseconds) the lease this node holds on the
    /// app's singletons was last confirmed.
    lease_until: AtomicU64,
    /// The jobs the app scheduled.
    jobs: AppJobs,
    /// False while the process of an earlier deployment of the app still runs on this node
    /// (a web app's redeploy overlaps the two): until then this one's daemons and jobs wait.
    exclusive: watch::Sender<bool>,
    /// The web server of the app's current process.
    backend: Mutex<Option<Arc<Backend>>>,
    /// Whether the app mounted a web handler.
    web: std::sync::atomic::AtomicBool,
    pid: Mutex<Option<u32>>,
    restarts: AtomicU64,
}

/// The lines of an app's stderr kept to explain a failure.
const STDERR_TAIL: usize = 20;

impl Deployment {
    fn new(name: &str, exclusive: bool) -> Self {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        Deployment {
            name: name.to_string(),
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            descriptor: Mutex::new(None),
            status: watch::channel(Status::Deploying).0,
            daemons: Mutex::new(BTreeMap::new()),
            stderr_tail: Mutex::new(VecDeque::new()),
            outbox: Mutex::new(None),
            singleton_epoch: watch::channel(None).0,
            let_go: AtomicU64::new(0),
            lease_until: AtomicU64::new(0),
            jobs: AppJobs::default(),
            exclusive: watch::channel(exclusive).0,
            backend: Mutex::new(None),
            web: Default::default(),
            pid: Mutex::new(None),
            restarts: AtomicU64::new(0),
        }
    }

    fn set_status(&self, status: Status) {
        self.status.send_replace(status);
    }

    /// Where the app's web handler is (or would be) mounted: its descriptor's context path,
    /// else `/<name>`.
    fn context_path(&self) -> String {
        let descriptor = lock(&self.descriptor);
        let given = descriptor.as_ref().and_then(|d| d.context_path.as_deref());
        normalize_context_path(given.unwrap_or(&self.name))
    }

    /// Where this deployment mounts its web handler: its context path and virtual hosts.
    fn mount(&self) -> Mount {
        Mount {
            app: self.name.clone(),
            serial: self.serial,
            context_path: self.context_path(),
            hosts: lock(&self.descriptor)
                .as_ref()
                .map(|descriptor| descriptor.virtual_host.clone())
                .unwrap_or_default(),
        }
    }

    /// Waits until the app is ready, or has failed or stopped trying.
    async fn settled(&self) {
        let mut status = self.status.subscribe();
        let _ = status
            .wait_for(|status| !matches!(status, Status::Deploying))
            .await;
    }

    fn remember_stderr(&self, line: &str) {
        let mut tail = lock(&self.stderr_tail);
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    }

    fn report(&self, context: &AppContext) -> DeploymentReport {
        let descriptor = lock(&self.descriptor).clone();
        let daemons = lock(&self.daemons).clone();
        let jobs = self.jobs.reports();
        let has_singletons =
            daemons.values().any(|daemon| daemon.singleton) || jobs.iter().any(|job| job.singleton);
        DeploymentReport {
            name: self.name.clone(),
            status: self.status.borrow().clone(),
            pid: *lock(&self.pid),
            restarts: self.restarts.load(Ordering::Relaxed),
            artifact: descriptor.as_ref().map(|d| d.artifact.clone()),
            deployed_at: descriptor.as_ref().and_then(|d| d.deployed_at),
            group: descriptor.as_ref().and_then(|d| d.group.clone()),
            root: descriptor.and_then(|d| d.root),
            daemons,
            web: self
                .web
                .load(Ordering::Relaxed)
                .then(|| context.web.mounted_at(&self.name))
                .flatten(),
            singletons_on: has_singletons
                .then(|| context.engine.membership.singletons_on(&self.name))
                .flatten(),
            jobs,
            stderr_tail: lock(&self.stderr_tail).iter().cloned().collect(),
        }
    }
}

/// A deployment's supervisor, and how to stop it.
struct Running {
    stop: oneshot::Sender<()>,
    done: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// Every deployment of this node. Changes to one deployment happen in the order they were
/// asked for; different deployments change independently.
pub struct Apps {
    context: Arc<AppContext>,
    deployments: Mutex<BTreeMap<String, Arc<Deployment>>>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Running>>>>>,
    /// How many changes of each app were asked for: a change still waiting (its rolling turn)
    /// when a newer one comes is not made.
    changes: Mutex<HashMap<String, u64>>,
    /// Set once the node stops: no change waits any longer.
    stopping: std::sync::atomic::AtomicBool,
}

impl Apps {
    pub fn new(context: AppContext) -> Self {
        Apps {
            context: Arc::new(context),
            deployments: Mutex::new(BTreeMap::new()),
            slots: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            stopping: Default::default(),
        }
    }

    /// Counts a change of `name` asked for; its number.
    fn change(&self, name: &str) -> u64 {
        let mut changes = lock(&self.changes);
        let count = changes.entry(name.to_string()).or_default();
        *count += 1;
        *count
    }

    /// Whether a change of `name` newer than the change `number` was asked for, or the node
    /// stops.
    fn superseded(&self, name: &str, number: u64) -> bool {
        self.stopping.load(Ordering::Relaxed) || lock(&self.changes).get(name) != Some(&number)
    }

    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Option<Running>>> {
        lock(&self.slots)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Deploys (or redeploys) `name` from its descriptor's text. The old process, if any, is
    /// stopped gracefully before the new one starts; but a web app's new process starts first,
    /// takes the new requests once it is ready, and the old one stops when its requests in
    /// flight have finished.
    fn deploy(self: &Arc<Self>, name: &str, parsed: Result<Descriptor, String>) {
        let slot = self.slot(name);
        let apps = Arc::clone(self);
        let name = name.to_string();
        let elsewhere = parsed
            .as_ref()
            .ok()
            .and_then(|descriptor| self.not_for_this_node(descriptor));
        let change = self.change(&name);
        tokio::spawn(async move {
            let mut running = slot.lock().await;
            if let (Ok(descriptor), Some(_), None) = (&parsed, running.as_ref(), &elsewhere)
                && descriptor.rolling
            {
                let superseded = || apps.superseded(&name, change);
                match rolling::wait_for_turn(&apps.context, descriptor, superseded).await {
                    rolling::Turn::Go => {}
                    rolling::Turn::Stop(reason) => {
                        tracing::warn!(
                            "The rolling redeploy of {name} stops before this node: {reason}; it keeps the build it runs"
                        );
                        return;
                    }
                    rolling::Turn::Superseded => return,
                }
            }
            let old = running.take();
            let overlap = old.is_some()
                && apps.context.web.serving(&name)
                && parsed.is_ok()
                && elsewhere.is_none();
            let old = match old {
                Some(old) if !overlap => {
                    tracing::info!("Redeploying {name}");
                    old.stop().await;
                    // The new deployment mounts where it says, if it mounts at all.
                    apps.context.web.unmount(&name);
                    None
                }
                old => old,
            };
            let deployment = Arc::new(Deployment::new(&name, old.is_none()));
            lock(&apps.deployments).insert(name.clone(), deployment.clone());
            match (parsed, elsewhere) {
                (Ok(descriptor), Some(reason)) => {
                    *lock(&deployment.descriptor) = Some(descriptor);
                    tracing::info!("{name} is not run on this node: {reason}");
                    deployment.set_status(Status::Elsewhere(reason));
                }
                (Ok(descriptor), None) => {
                    *lock(&deployment.descriptor) = Some(descriptor.clone());
                    let (stop, stopped) = oneshot::channel();
                    let done = tokio::spawn(supervisor::supervise(
                        deployment.clone(),
                        descriptor,
                        apps.context.clone(),
                        stopped,
                    ));
                    *running = Some(Running { stop, done });
                }
                (Err(reason), _) => {
                    tracing::error!("cannot deploy {name}: {reason}");
                    deployment.set_status(Status::Failed(reason));
                }
            }
            if let Some(old) = old {
                tracing::info!(
                    "Redeploying {name}: the new process takes requests once it is ready"
                );
                // An app that never says it is ready does not keep the old one serving forever.
                let patience = Duration::from_millis(3 * DAEMON_STOP_LIMIT_MS);
                let _ = tokio::time::timeout(patience, deployment.settled()).await;
                old.stop().await;
                deployment.exclusive.send_replace(true);
                // The old process's route passes to the new one only if the new one mounted a
                // handler too; if it did but never got ready, requests are told why.
                let status = deployment.status.borrow().clone();
                match status {
                    _ if !deployment.web.load(Ordering::Relaxed) => apps.context.web.unmount(&name),
                    Status::Running => {}
                    Status::Deploying => apps.context.web.set_down(&name, "it is starting"),
                    _ => apps.context.web.set_down(&name, supervisor::FAILED_PAGE),
                }
            }
        });
    }

    /// Why `descriptor` is not for this node (deployed to a server group it is not in), if it
    /// is not.
    fn not_for_this_node(&self, descriptor: &Descriptor) -> Option<String> {
        let group = descriptor.group.as_ref()?;
        let groups = &self.context.groups;
        (!groups.contains(group)).then(|| match groups.is_empty() {
            true => format!(
                "it is deployed to group '{group}', and this node is in none (-Dimmutant.node.groups)"
            ),
            false => format!(
                "it is deployed to group '{group}', and this node is in {}",
                groups.join(", ")
            ),
        })
    }

    /// Serves a process the node did not start, connected to its attach socket (a test that
    /// `cargo immutant test` runs), as a deployment of `name` of its own while it is connected.
    pub fn attach(self: &Arc<Self>, name: &str, socket: tokio::net::UnixStream) {
        static ATTACHED: AtomicU64 = AtomicU64::new(1);
        // Its own entry: several tests of the app are connected at once.
        let entry = format!("{name}~{}", ATTACHED.fetch_add(1, Ordering::Relaxed));
        let deployment = Arc::new(Deployment::new(name, true));
        lock(&self.deployments).insert(entry.clone(), deployment.clone());
        let apps = Arc::clone(self);
        tokio::spawn(async move {
            connection::serve(socket, deployment, apps.context.clone()).await;
            lock(&apps.deployments).remove(&entry);
        });
    }

    /// Carries out a change the deployments folder's scanner reports.
    pub fn apply(self: &Arc<Self>, event: DeploymentEvent) {
        match event {
            DeploymentEvent::Deployed { name, text } => {
                self.deploy(&name, parse_descriptor(&name, &text))
            }
            DeploymentEvent::Refused { name, reason } => self.deploy(&name, Err(reason)),
            DeploymentEvent::Undeployed { name } => self.undeploy(&name),
        }
    }

    /// Undeploys `name`: its web requests in flight finish, then its process is stopped
    /// gracefully (its daemons' stop runs).
    fn undeploy(self: &Arc<Self>, name: &str) {
        self.change(name);
        let slot = self.slot(name);
        let apps = Arc::clone(self);
        let name = name.to_string();
        tokio::spawn(async move {
            let mut running = slot.lock().await;
            if let Some(old) = running.take() {
                old.stop().await;
            }
            apps.context.web.unmount(&name);
            lock(&apps.deployments).remove(&name);
            tracing::info!("Undeployed \"{name}\"");
        });
    }

    /// Stops every app gracefully, all at once (at node shutdown).
    pub async fn stop_all(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let slots: Vec<_> = lock(&self.slots).values().cloned().collect();
        let stops = slots.into_iter().map(|slot| async move {
            if let Some(running) = slot.lock().await.take() {
                running.stop().await;
            }
        });
        futures_util::future::join_all(stops).await;
    }

    /// The artifacts this node's deployments run now (an old build waiting for its rolling
    /// turn among them).
    pub fn artifacts_in_use(&self) -> Vec<PathBuf> {
        lock(&self.deployments)
            .values()
            .filter_map(|deployment| {
                let descriptor = lock(&deployment.descriptor);
                Some(
                    self.context
                        .deployments_dir
                        .join(&descriptor.as_ref()?.artifact),
                )
            })
            .collect()
    }

    /// What the management API shows of every deployment.
    pub fn reports(&self) -> Vec<DeploymentReport> {
        lock(&self.deployments)
            .values()
            .map(|deployment| deployment.report(&self.context))
            .collect()
    }
}
