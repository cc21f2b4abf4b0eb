//! The node's side of an app's socket: answers the app's hello, then carries out each frame
//! (messaging through the broker, daemons, readiness) until the app goes away.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use immutant_protocol::{Frame, FrameCodec, Header, Outbox, PROTOCOL_VERSION, write_frames};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{info, warn};

use super::{AppContext, DaemonState, Deployment, Status, lock};
use crate::messaging::MessagingError;

/// Room for a frame's header besides the largest payload.
const HEADER_ROOM: usize = 64 * 1024;

/// Serves one app's socket until it closes.
pub async fn serve(socket: UnixStream, deployment: Arc<Deployment>, context: Arc<AppContext>) {
    let limit = context.broker.max_message_size() as usize + HEADER_ROOM;
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

    let connection = context.next_connection();
    context.broker.connect(connection, outbox.clone());
    *lock(&deployment.outbox) = Some(outbox.clone());
    let session = Session {
        connection,
        outbox,
        deployment: deployment.clone(),
        context: context.clone(),
    };
    while let Some(Ok(frame)) = frames.next().await {
        session.handle(frame).await;
    }
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
            } => {
                // Each publish waits for the journal on a task of its own, so that publishes
                // arriving together share one commit.
                let broker = broker.clone();
                let outbox = self.outbox.clone();
                let connection = self.connection;
                tokio::spawn(async move {
                    let published = broker
                        .publish(connection, &destination, options, frame.body)
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
                // A standalone node runs every daemon, singletons included.
                self.send(Header::StartDaemon { name, epoch: 1 });
            }
            Header::DaemonStatus { name, running } => {
                if let Some(daemon) = lock(&self.deployment.daemons).get_mut(&name) {
                    daemon.running = running;
                }
            }
            Header::Ready {} => {
                self.deployment.set_status(Status::Running);
                info!("Deployed \"{}\"", self.deployment.name);
            }
            _ => {}
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
        Err(error) => Header::Error {
            id,
            message: error.to_string(),
        },
    })
}
