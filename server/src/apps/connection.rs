//! The node's side of an app's socket: answers the app's hello, sets up the app's session, has
//! it carry out each frame ([`super::session`]) until the app goes away, then cleans up.

use std::sync::Arc;

use futures_util::StreamExt;
use immutant_protocol::{Frame, FrameCodec, Header, Outbox, PROTOCOL_VERSION, write_frames};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::warn;

use super::session::Session;
use super::{AppContext, Deployment};
use crate::jobs::JobContext;
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
