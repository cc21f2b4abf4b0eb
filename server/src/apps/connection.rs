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
use tracing::{info, warn};

use super::{AppContext, DaemonState, Deployment, Status, singletons};
use crate::engine::Fencing;
use crate::jobs::JobContext;
use crate::vocabulary::messaging::MessagingError;
use immutant_foundation::clock::monotonic_ns;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;

/// Room for a frame's header besides the largest payload.
const HEADER_ROOM: usize = 64 * 1024;

/// Serves one app's socket until it closes.
pub async fn serve(socket: UnixStream, deployment: Arc<Deployment>, context: Arc<AppContext>) {
    let limit = (context.engine.messaging.max_message_size() as usize).saturating_add(HEADER_ROOM);
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
                max_message_size: context.engine.messaging.max_message_size(),
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

    if !context.engine.membership.clustered() {
        // Standalone: the singletons run here, under a lease that never lapses.
        let lease = Header::Lease {
            epoch: 1,
            until_ns: Some(u64::MAX),
        };
        let _ = outbox.send(Frame::new(lease).into());
    }
    let connection = context.engine.messaging.next_connection();
    context.engine.messaging.connect(connection, outbox.clone());
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
        caches: context
            .engine
            .membership
            .clustered()
            .then(|| context.engine.caches.clone()),
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
            context.engine.membership.clustered(),
            session.ended.clone(),
        ));
    }
    while let Some(Ok(frame)) = frames.next().await {
        session.handle(frame).await;
    }
    session.ended.cancel();
    deployment.jobs.stop_all();
    context.engine.messaging.disconnect(connection);
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
        let broker = &self.context.engine.messaging;
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
                let caches = self.context.engine.caches.clone();
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
                let caches = self.context.engine.caches.clone();
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
                let (context, ended) = (self.context.clone(), self.ended.clone());
                if context.engine.membership.clustered() {
                    tokio::spawn(singletons::follow(deployment, context, outbox, ended));
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
        if !singleton || !self.context.engine.membership.clustered() {
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
        let Some(Fencing {
            highest_epoch: highest,
            settled,
        }) = self.context.engine.membership.fencing(app)
        else {
            return Ok(None);
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
