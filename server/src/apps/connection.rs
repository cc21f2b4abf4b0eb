//! The node's side of an app's socket: answers the app's hello, then carries out each frame
//! (messaging through the broker, daemons, readiness) until the app goes away.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use immutant_protocol::{Frame, FrameCodec, Header, Outbox, PROTOCOL_VERSION, write_frames};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use super::{AppContext, DaemonState, Deployment, Status};
use crate::embedded::cluster::Cluster;
use crate::embedded::cluster::lease::RENEW_INTERVAL;
use crate::jobs::JobContext;
use crate::singleton::{HeldLease, SingletonElection};
use crate::vocabulary::messaging::MessagingError;
use immutant_foundation::clock::monotonic_ns;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;

/// How long a node waits, once elected, before it starts an app's singletons.
const SETTLE_TIME: Duration = Duration::from_millis(250);

/// Room for a frame's header besides the largest payload.
const HEADER_ROOM: usize = 64 * 1024;

/// Serves one app's socket until it closes.
pub async fn serve(socket: UnixStream, deployment: Arc<Deployment>, context: Arc<AppContext>) {
    let limit = (context.broker.max_message_size() as usize).saturating_add(HEADER_ROOM);
    let (read, write) = socket.into_split();
    let mut frames = FramedRead::new(read, FrameCodec::new(limit));
    let (outbox, outgoing) = mpsc::unbounded_channel();
    tokio::spawn(write_frames(
        FramedWrite::new(write, FrameCodec::new(limit)),
        outgoing,
    ));

    match frames.next().await {
        Some(Ok(Frame {
            header: Header::Hello { protocol, .. },
            ..
        })) if protocol == PROTOCOL_VERSION => {
            let welcome = Header::Welcome {
                node: context.node_name.clone(),
                app: deployment.name.clone(),
                max_message_size: context.broker.max_message_size(),
                context_path: deployment.context_path(),
                properties: context.properties.clone(),
                settings: lock(&deployment.descriptor)
                    .as_ref()
                    .and_then(|descriptor| serde_json::to_value(&descriptor.settings).ok())
                    .unwrap_or_default(),
            };
            let _ = outbox.send(Frame::new(welcome).into());
        }
        Some(Ok(Frame {
            header: Header::Hello { protocol, .. },
            ..
        })) => {
            let message = format!(
                "this node speaks protocol {PROTOCOL_VERSION}, the app speaks {protocol}; rebuild the app against this node's SDK and deploy it again"
            );
            warn!("{}: {message}", deployment.name);
            let _ = outbox.send(Frame::new(Header::Error { id: 0, message }).into());
            return;
        }
        _ => return,
    }

    if !context.clustered() {
        // Standalone: the singletons run here, under a lease that never lapses.
        let lease = Header::Lease {
            epoch: 1,
            until_ns: Some(u64::MAX),
        };
        let _ = outbox.send(Frame::new(lease).into());
    }
    let connection = context.broker.next_connection();
    context.broker.connect(connection, outbox.clone());
    *lock(&deployment.outbox) = Some(outbox.clone());
    let build = lock(&deployment.descriptor)
        .as_ref()
        .and_then(|descriptor| descriptor.artifact.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let jobs = JobContext {
        app: deployment.name.clone(),
        build,
        outbox: outbox.clone(),
        singleton_epoch: deployment.singleton_epoch.subscribe(),
        caches: context.clustered().then(|| context.caches.clone()),
        misfire_threshold_ms: context.misfire_threshold_ms,
        exclusive: deployment.exclusive.subscribe(),
    };
    let session = Session {
        connection,
        outbox,
        deployment: deployment.clone(),
        context: context.clone(),
        jobs,
        ended: Shutdown::new(),
    };
    if !*deployment.exclusive.borrow() {
        tokio::spawn(start_daemons_when_exclusive(
            deployment.clone(),
            session.outbox.clone(),
            context.clustered(),
            session.ended.clone(),
        ));
    }
    while let Some(Ok(frame)) = frames.next().await {
        session.handle(frame).await;
    }
    session.ended.cancel();
    deployment.jobs.stop_all();
    context.broker.disconnect(connection);
    *lock(&deployment.outbox) = None;
    for daemon in lock(&deployment.daemons).values_mut() {
        daemon.running = false;
    }
}

/// One app connection's frames, handled.
struct Session {
    connection: u64,
    outbox: Outbox,
    deployment: Arc<Deployment>,
    context: Arc<AppContext>,
    /// What the app's jobs need.
    jobs: JobContext,
    /// Cancelled when the app's connection ends.
    ended: Shutdown,
}

impl Session {
    async fn handle(&self, frame: Frame) {
        let broker = &self.context.broker;
        match frame.header {
            Header::Start {
                id,
                destination,
                kind,
            } => {
                let started = broker.start(&destination, kind).await;
                self.answer(id, started);
            }
            Header::Publish {
                id,
                destination,
                options,
                epoch,
            } => {
                let fence = match self.fenced(epoch) {
                    Ok(fence) => fence,
                    Err(stale) => return self.send(refusal(id, stale)),
                };
                // Each publish waits for the journal on a task of its own, so that publishes
                // arriving together share one commit.
                let broker = broker.clone();
                let outbox = self.outbox.clone();
                let connection = self.connection;
                tokio::spawn(async move {
                    let published = broker
                        .publish(connection, &destination, options, frame.body, fence)
                        .await;
                    let _ = outbox.send(answer(id, published).into());
                });
            }
            Header::Listen {
                id,
                destination,
                concurrency,
                client_id,
            } => {
                let listening = broker
                    .listen(
                        (self.connection, id),
                        &destination,
                        concurrency,
                        client_id.as_deref(),
                    )
                    .await;
                self.answer(id, listening);
            }
            Header::Unlisten { id, consumer } => {
                broker.unlisten((self.connection, consumer));
                self.answer(id, Ok(()));
            }
            Header::Ack { delivery } => broker.ack(self.connection, delivery),
            Header::Nack { delivery, reason } => broker.nack(self.connection, delivery, &reason),
            Header::Receive {
                id,
                destination,
                timeout_ms,
                client_id,
            } => {
                let timeout = timeout_ms.map(Duration::from_millis);
                let receiving = broker
                    .receive(
                        (self.connection, id),
                        &destination,
                        timeout,
                        client_id.as_deref(),
                    )
                    .await;
                if receiving.is_err() {
                    self.answer(id, receiving);
                }
            }
            Header::RegisterDaemon {
                id,
                name,
                singleton,
            } => {
                lock(&self.deployment.daemons).insert(
                    name.clone(),
                    DaemonState {
                        singleton,
                        running: false,
                    },
                );
                self.answer(id, Ok(()));
                if let Some(epoch) = self.start_epoch(singleton) {
                    self.send(Header::StartDaemon { name, epoch });
                }
            }
            Header::DaemonStatus { name, running } => {
                if let Some(daemon) = lock(&self.deployment.daemons).get_mut(&name) {
                    daemon.running = running;
                }
            }
            Header::Schedule {
                id,
                name,
                spec,
                singleton,
            } => {
                let scheduled = self
                    .deployment
                    .jobs
                    .schedule(&self.jobs, &name, spec, singleton);
                let header = match scheduled {
                    Ok(()) => Header::Ok { id },
                    Err(error) => refusal(id, error),
                };
                self.send(header);
            }
            Header::Unschedule { id, name } => {
                let (deployment, jobs) = (self.deployment.clone(), self.jobs.clone());
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    let found = deployment.jobs.unschedule(&jobs, &name).await;
                    let _ = outbox.send(Frame::new(Header::Found { id, found }).into());
                });
            }
            Header::JobDone { name, run, error } => {
                self.deployment.jobs.finished(&name, run, error);
            }
            Header::OpenCache {
                id,
                name,
                open,
                options,
            } => {
                let caches = self.context.caches.clone();
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    let header = match caches.open(&name, open, options).await {
                        Ok(options) => Header::CacheOpened { id, options },
                        Err(error) => refusal(id, error),
                    };
                    let _ = outbox.send(Frame::new(header).into());
                });
            }
            Header::CacheCall {
                id,
                cache,
                call,
                epoch,
            } => {
                let fence = match self.fenced(epoch) {
                    Ok(fence) => fence,
                    Err(stale) => return self.send(refusal(id, stale)),
                };
                let caches = self.context.caches.clone();
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    let frame = match caches.call(&cache, call, frame.body, fence).await {
                        Ok((outcome, value)) => {
                            Frame::with_body(Header::CacheReply { id, outcome }, value)
                        }
                        Err(error) => Frame::new(refusal(id, error)),
                    };
                    let _ = outbox.send(frame.into());
                });
            }
            Header::Web { id } => {
                let deployment = &self.deployment;
                deployment.web.store(true, Ordering::Relaxed);
                self.context.web.mount(&deployment.mount());
                if *deployment.status.borrow() == Status::Running {
                    self.serve_web();
                }
                self.answer(id, Ok(()));
            }
            Header::Ready {} => {
                // Web requests go to this process before anyone hears it is ready (a redeploy
                // stops the old process then).
                if self.deployment.web.load(Ordering::Relaxed) {
                    self.serve_web();
                }
                self.deployment.set_status(Status::Running);
                info!("Deployed \"{}\"", self.deployment.name);
                let (deployment, outbox) = (self.deployment.clone(), self.outbox.clone());
                let ended = self.ended.clone();
                if let Some(cluster) = &self.context.cluster {
                    let cluster = cluster.clone();
                    tokio::spawn(follow_singletons(deployment, cluster, outbox, ended));
                } else if let Some(nats) = &self.context.nats {
                    let nats = nats.clone();
                    tokio::spawn(super::nats_singletons::follow(
                        deployment, nats, outbox, ended,
                    ));
                }
            }
            _ => {}
        }
    }

    /// The epoch to start a daemon under now, if it should start now: a daemon that is not a
    /// singleton, or any daemon of a standalone node, at once; a singleton once this node is
    /// elected to run the app's singletons.
    fn start_epoch(&self, singleton: bool) -> Option<u64> {
        if !*self.deployment.exclusive.borrow() {
            return None;
        }
        if !singleton || !self.context.clustered() {
            return Some(1);
        }
        *self.deployment.singleton_epoch.borrow()
    }

    /// Refuses an operation made under the singleton lease of `epoch` once the cluster knows a
    /// newer one: its runner was deposed, and must not change anything. Otherwise the deadline
    /// (on the boot clock) by which it must be done, if it is made under this node's lease: an
    /// engine that tries again (NATS, while it is out of reach) gives up then.
    fn fenced(&self, epoch: Option<u64>) -> Result<Option<u64>, String> {
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        let app = &self.deployment.name;
        let (highest, settled) = match (&self.context.cluster, &self.context.nats) {
            (Some(cluster), _) => (cluster.highest_epoch(app), cluster.settled()),
            (None, Some(nats)) => (nats.leases.highest_epoch(app), true),
            (None, None) => return Ok(None),
        };
        let deployment = &self.deployment;
        let held = *deployment.singleton_epoch.borrow() == Some(epoch);
        // This node's own lease, once its deadline has passed: before the holder's loop notices.
        let until_ns = deployment.lease_until.load(Ordering::Relaxed);
        let lapsed = held && monotonic_ns() >= until_ns;
        if lapsed || !settled {
            return Err(format!(
                "the lease of epoch {epoch} on the singletons of {app} has lapsed on this node, so the work was not done"
            ));
        }
        match highest {
            Some(current) if current > epoch => Err(format!(
                "epoch {epoch} is stale: the singletons of {app} run under epoch {current} now, so the work was not done"
            )),
            // Before gossip says who took over, this node knows it let that lease go.
            _ if epoch <= self.deployment.let_go.load(Ordering::Relaxed) => Err(format!(
                "epoch {epoch} is stale: this node no longer runs the singletons of {app}, so the work was not done"
            )),
            _ => Ok(held.then_some(until_ns)),
        }
    }

    /// Routes the app's web requests to this process.
    fn serve_web(&self) {
        if let Some(backend) = lock(&self.deployment.backend).clone() {
            self.context.web.up(&self.deployment.mount(), backend);
        }
    }

    fn send(&self, header: Header) {
        let _ = self.outbox.send(Frame::new(header).into());
    }

    fn answer(&self, id: u64, outcome: Result<(), MessagingError>) {
        let _ = self.outbox.send(answer(id, outcome).into());
    }
}

/// The frame answering request `id`.
fn answer(id: u64, outcome: Result<(), MessagingError>) -> Frame {
    Frame::new(match outcome {
        Ok(()) => Header::Ok { id },
        Err(error) => refusal(id, error),
    })
}

/// The header refusing request `id`, saying why.
fn refusal(id: u64, error: impl std::fmt::Display) -> Header {
    Header::Error {
        id,
        message: error.to_string(),
    }
}

/// Starts the daemons that need no election once the app's earlier process on this node has
/// stopped (a web app's redeploy runs both for a moment).
async fn start_daemons_when_exclusive(
    deployment: Arc<Deployment>,
    outbox: Outbox,
    clustered: bool,
    ended: Shutdown,
) {
    let mut exclusive = deployment.exclusive.subscribe();
    tokio::select! {
        _ = exclusive.wait_for(|exclusive| *exclusive) => {}
        _ = ended.cancelled() => return,
    }
    let free: Vec<String> = lock(&deployment.daemons)
        .iter()
        .filter(|(_, daemon)| !daemon.singleton || !clustered)
        .map(|(name, _)| name.clone())
        .collect();
    for name in free {
        let _ = outbox.send(Frame::new(Header::StartDaemon { name, epoch: 1 }).into());
    }
}

/// While the app runs, tells the cluster it runs here, and runs its singletons while this node
/// holds their lease: takes it when elected and free to (see [`crate::embedded::cluster::lease`]), renews
/// it, tells the app each confirmed deadline, starts the singleton daemons at the first, and lets
/// the lease go when it lapses, the node is deposed, or the app ends.
async fn follow_singletons(
    deployment: Arc<Deployment>,
    cluster: Arc<Cluster>,
    outbox: Outbox,
    ended: Shutdown,
) {
    let app = deployment.name.clone();
    cluster.set_app(&app, true).await;
    let mut exclusive = deployment.exclusive.subscribe();
    let ready = async {
        cluster.discovered().await;
        let _ = exclusive.wait_for(|exclusive| *exclusive).await;
    };
    tokio::select! {
        _ = ready => {}
        _ = ended.cancelled() => {
            cluster.set_app(&app, false).await;
            return;
        }
    }
    let quorum = cluster.singleton_quorum();
    let election = SingletonElection::new(quorum);
    let mut view = cluster.view();
    loop {
        if !wait_until_ours(&election, &cluster, &app, &mut view, &ended).await {
            break;
        }
        // The clock first: the lease must not be thought to start later than its first renewal
        // went out.
        let taken_ns = monotonic_ns();
        let epoch = cluster.take_epoch(&app).await;
        let mut lease = HeldLease::new(epoch, taken_ns);
        debug!("Taking over the singletons of {app} (epoch {epoch}) once the cluster confirms it");
        let mut renewals = tokio::time::interval(RENEW_INTERVAL);
        renewals.tick().await;
        let end = loop {
            tokio::select! {
                _ = renewals.tick() => {}
                _ = ended.cancelled() => break LeaseEnd::AppEnded,
            }
            // Stopping early is always safe; a newer lease elsewhere cannot be confirmed while
            // this one is, so only losing the quorum deposes a holder.
            if (view.borrow().members.len() as u32) < quorum {
                break LeaseEnd::Deposed;
            }
            let now = monotonic_ns();
            if lease.lapsed(now) {
                break LeaseEnd::Lapsed;
            }
            if let Some(until_ns) = lease.confirmed(cluster.answered(&app, epoch)) {
                deployment.lease_until.store(until_ns, Ordering::Relaxed);
                send(
                    &outbox,
                    Header::Lease {
                        epoch,
                        until_ns: Some(until_ns),
                    },
                );
                if deployment
                    .singleton_epoch
                    .send_replace(Some(epoch))
                    .is_none()
                {
                    info!("The singletons of {app} run on this node now (epoch {epoch})");
                    for name in singleton_daemons(&deployment) {
                        send(&outbox, Header::StartDaemon { name, epoch });
                    }
                }
            }
            cluster.renew(&app, lease.renew(now)).await;
        };
        let ran = let_go(&deployment, &outbox, epoch, end);
        match end {
            LeaseEnd::Lapsed if ran => warn!(
                "The singletons of {app} no longer run on this node: the cluster did not confirm its lease in time"
            ),
            LeaseEnd::Deposed if ran => info!(
                "The singletons of {app} no longer run on this node: this side of the cluster has fewer than {quorum} members"
            ),
            _ => {}
        }
        // Let go only once the app cannot be running them, whatever became of it: its
        // connection may have ended with the process still alive.
        if let Some(until_ns) = lease.until_ns() {
            let left = until_ns.saturating_sub(monotonic_ns());
            tokio::time::sleep(Duration::from_nanos(left)).await;
        }
        cluster.release(&app).await;
        if end == LeaseEnd::AppEnded {
            break;
        }
    }
    deployment.singleton_epoch.send_replace(None);
    cluster.set_app(&app, false).await;
}

/// Why this node stopped holding an app's singletons' lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseEnd {
    /// The app's process ended.
    AppEnded,
    /// This side of the cluster lost its quorum.
    Deposed,
    /// The cluster did not confirm a renewal in time.
    Lapsed,
}

/// Waits until this node is elected for `app`'s singletons, has let the view settle, was not
/// just paused, and is free to take them over (no promise binds it); false if the app ended
/// first.
async fn wait_until_ours(
    election: &SingletonElection,
    cluster: &Cluster,
    app: &str,
    view: &mut tokio::sync::watch::Receiver<crate::vocabulary::membership::View>,
    ended: &Shutdown,
) -> bool {
    loop {
        if election.here(&view.borrow_and_update(), app) {
            // Let the view settle before taking over: a member that deployed the app at the
            // same moment may be older, and its news a gossip round away.
            tokio::select! {
                _ = tokio::time::sleep(SETTLE_TIME) => {}
                _ = ended.cancelled() => return false,
            }
            if election.here(&view.borrow(), app)
                && cluster.settled()
                && cluster.free_to_take(app).await
            {
                return true;
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return false },
            // A promise runs out without the view changing.
            _ = tokio::time::sleep(RENEW_INTERVAL) => {}
            _ = ended.cancelled() => return false,
        }
    }
}

/// Lets this node's lease of `epoch` on the app's singletons go, as it ended: from now on work
/// under the epoch is refused here, and the app (unless it ended) is told to stop them at once
/// (or it does by the deadline by itself if it cannot hear). Whether they ran here.
pub(super) fn let_go(deployment: &Deployment, outbox: &Outbox, epoch: u64, end: LeaseEnd) -> bool {
    // Refused first, from the moment the epoch stops being current.
    deployment.let_go.fetch_max(epoch, Ordering::Relaxed);
    let ran = deployment.singleton_epoch.send_replace(None).is_some();
    if end != LeaseEnd::AppEnded {
        let until_ns = None;
        send(outbox, Header::Lease { epoch, until_ns });
        for name in singleton_daemons(deployment) {
            send(outbox, Header::StopDaemon { name });
        }
    }
    ran
}

/// The names of the app's singleton daemons.
pub(super) fn singleton_daemons(deployment: &Deployment) -> Vec<String> {
    lock(&deployment.daemons)
        .iter()
        .filter(|(_, daemon)| daemon.singleton)
        .map(|(name, _)| name.clone())
        .collect()
}

pub(super) fn send(outbox: &Outbox, header: Header) {
    let _ = outbox.send(Frame::new(header).into());
}
