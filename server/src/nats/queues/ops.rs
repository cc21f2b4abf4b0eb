//! The operations of messaging on JetStream, as the engine facade calls them: open and close,
//! start a destination, connect an app, publish, reply, listen, receive, acknowledge, and the
//! stats. What waits for NATS waits outside the state's lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use bytes::Bytes;
use futures_util::StreamExt;
use immutant_protocol::{DestinationKind, Frame, Header, Outbox, PublishOptions};
use tokio::sync::Semaphore;
use tracing::warn;

use super::message::{Carried, carried, headers, message_header, publish_once};
use super::state::Pulling;
use super::state::{Known, Listener, State};
use super::streams::{replies_to, reply_connection, reply_subject};
use super::{HEADER_ROOM, PUBLISH_PATIENCE, Queues, STOP_PATIENCE, WORKERS, engine_error};
use crate::nats::{Nats, NatsError, time_left};
use crate::vocabulary::messaging::{
    ConsumerKey, DEAD_LETTER_QUEUE, MessagingError, QueueStats, check_publish, kind_name,
};
use immutant_foundation::clock::now_ms;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;

impl Queues {
    /// Starts messaging on `nats`: the dead letter queue, replies to this node's apps, and
    /// keeping deliveries alive.
    pub async fn open(
        nats: Arc<Nats>,
        node_name: &str,
        generation: u64,
        max_message_size: u64,
        shutdown: Shutdown,
    ) -> Result<Arc<Queues>, NatsError> {
        // Headers count towards the server's limit on a message.
        let server_limit = nats.client.server_info().max_payload as u64;
        let queues = Arc::new(Queues {
            max_message_size: max_message_size.min(server_limit.saturating_sub(HEADER_ROOM)),
            nats,
            node_name: node_name.to_string(),
            generation,
            state: std::sync::Mutex::new(State::default()),
            next_connection: AtomicU64::new(1),
            next_delivery: AtomicU64::new(1),
            next_publish: AtomicU64::new(1),
            shutdown,
        });
        queues
            .start(DEAD_LETTER_QUEUE, DestinationKind::Queue)
            .await
            .map_err(|error| {
                queues
                    .nats
                    .setup_error(DEAD_LETTER_QUEUE.to_string(), error)
            })?;
        let replies = queues
            .nats
            .client
            .subscribe(queues.nats.subject(&replies_to(node_name, "*")))
            .await
            .map_err(|error| queues.nats.setup_error("replies".to_string(), error))?;
        tokio::spawn(queues.clone().take_replies(replies));
        tokio::spawn(queues.clone().keep_in_flight_alive());
        tokio::spawn(queues.clone().look_at_depths());
        Ok(queues)
    }

    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    pub fn next_connection(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub fn connect(&self, connection: u64, outbox: Outbox) {
        lock(&self.state).outboxes.insert(connection, outbox);
    }

    /// Forgets an app's connection: its listeners stop, and what it had not answered is
    /// redelivered.
    pub fn disconnect(&self, connection: u64) {
        let orphans = lock(&self.state).disconnect(connection);
        for in_flight in orphans {
            self.failed(in_flight, "the app ended before acknowledging it");
        }
    }

    /// Starts a destination: its stream, made if no node made it yet.
    pub async fn start(&self, name: &str, kind: DestinationKind) -> Result<(), MessagingError> {
        if name.is_empty() || name.starts_with('@') {
            return Err(MessagingError::BadName(name.to_string()));
        }
        if let Some(known) = self.known(name).await? {
            if known.kind == kind {
                return Ok(());
            }
            return Err(MessagingError::KindMismatch {
                name: name.to_string(),
                is: kind_name(known.kind),
                asked: kind_name(kind),
            });
        }
        let config = stream::Config {
            name: self.stream_name(name, kind),
            subjects: vec![self.subject_of(name, kind)],
            retention: match kind {
                DestinationKind::Queue => RetentionPolicy::WorkQueue,
                DestinationKind::Topic => RetentionPolicy::Interest,
            },
            storage: StorageType::File,
            num_replicas: self.nats.replicas,
            max_message_size: self.max_message_size.saturating_add(HEADER_ROOM) as i32,
            ..Default::default()
        };
        self.nats
            .stream(config)
            .await
            .map_err(|error| engine_error(format!("cannot make the stream of {name}: {error}")))?;
        tracing::info!("Starting {}: {name}", kind_name(kind));
        lock(&self.state)
            .known
            .insert(name.to_string(), Known { kind });
        Ok(())
    }

    /// Publishes a message from the app on `connection`: in JetStream (on the servers' disks)
    /// when this returns. While NATS is out of reach it waits, up to [`PUBLISH_PATIENCE`].
    pub async fn publish(
        &self,
        connection: u64,
        destination: &str,
        mut options: PublishOptions,
        body: Bytes,
        fence_ns: Option<u64>,
    ) -> Result<(), MessagingError> {
        let limit = self.max_message_size;
        check_publish(&mut options, body.len(), limit, &self.node_name, connection)?;
        let published_at_ms = now_ms();
        let carried = Carried::new(options, published_at_ms);
        if let Some(target) = destination.strip_prefix('@') {
            self.send_reply(target, &carried, body).await;
            return Ok(());
        }
        let Some(known) = self.known(destination).await? else {
            return Err(MessagingError::NotStarted(destination.to_string()));
        };
        let id = format!(
            "{}-{}-{}",
            self.node_name,
            self.generation,
            self.next_publish.fetch_add(1, Ordering::Relaxed)
        );
        let subject = self.subject_of(destination, known.kind);
        self.publish_stored(&subject, &carried, body, &id, fence_ns)
            .await?;
        self.count(destination, |counts| counts.published += 1);
        Ok(())
    }

    /// Publishes to a stream and waits for JetStream's acknowledgement, again (with the same
    /// id, which JetStream deduplicates on) while NATS is out of reach: up to
    /// [`PUBLISH_PATIENCE`], and not past `fence_ns` (a singleton lease's deadline, on the boot
    /// clock), after which a deposed runner's message must not land. (One already sent when the
    /// deadline passes may still.)
    async fn publish_stored(
        &self,
        subject: &str,
        carried: &Carried,
        body: Bytes,
        id: &str,
        fence_ns: Option<u64>,
    ) -> Result<(), MessagingError> {
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE.min(time_left(fence_ns));
        let mut pause = Duration::from_millis(50);
        loop {
            match publish_once(&self.nats, subject, carried, body.clone(), id).await {
                Ok(()) => return Ok(()),
                Err(error) if tokio::time::Instant::now() + pause >= deadline => {
                    return Err(engine_error(format!(
                        "NATS at {} did not take the message within {} s: {error}",
                        self.nats.url,
                        PUBLISH_PATIENCE.as_secs()
                    )));
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Sends a reply to `<node>/<connection>` over core NATS; dropped if no one takes it.
    async fn send_reply(&self, target: &str, carried: &Carried, body: Bytes) {
        let Some(reply) = reply_subject(target) else {
            return;
        };
        let subject = self.nats.subject(&reply);
        let _ = self
            .nats
            .client
            .publish_with_headers(subject, headers(carried), body)
            .await;
    }

    /// Hands replies for this node's apps to them.
    async fn take_replies(self: Arc<Self>, mut replies: async_nats::Subscriber) {
        loop {
            let reply = tokio::select! {
                reply = replies.next() => reply,
                _ = self.shutdown.cancelled() => return,
            };
            let Some(reply) = reply else { return };
            let Some(connection) = reply_connection(&reply.subject) else {
                continue;
            };
            let Some(carried) = carried(reply.headers.as_ref()) else {
                continue;
            };
            let header = message_header(0, "", &carried, 1);
            let frame = Frame::with_body(
                Header::Deliver {
                    consumer: 0,
                    delivery: 0,
                    message: header,
                },
                reply.payload,
            );
            if let Some(outbox) = lock(&self.state).outboxes.get(&connection) {
                let _ = outbox.send(frame.into());
            }
        }
    }

    /// Registers a listener on a queue or a subscriber to a topic (durable with a client id).
    pub async fn listen(
        self: &Arc<Self>,
        key: ConsumerKey,
        destination: &str,
        concurrency: u32,
        client_id: Option<&str>,
    ) -> Result<(), MessagingError> {
        self.consume(key, destination, client_id, concurrency, Pulling::Listen)
            .await
    }

    /// Takes one message for the request `key.1`, answered with a `receipt` when one comes, or
    /// with none after `timeout`.
    pub async fn receive(
        self: &Arc<Self>,
        key: ConsumerKey,
        destination: &str,
        timeout: Option<Duration>,
        client_id: Option<&str>,
    ) -> Result<(), MessagingError> {
        let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
        let pulling = Pulling::Receive { deadline };
        self.consume(key, destination, client_id, 1, pulling).await
    }

    /// Starts pulling from `destination` for the consumer `key`, up to `room` messages at once.
    async fn consume(
        self: &Arc<Self>,
        key: ConsumerKey,
        destination: &str,
        client_id: Option<&str>,
        room: u32,
        pulling: Pulling,
    ) -> Result<(), MessagingError> {
        let consumer = self.consumer(key, destination, client_id).await?;
        let stop = Shutdown::new();
        lock(&self.state).listeners.insert(
            key,
            Listener {
                destination: destination.to_string(),
                stop: stop.clone(),
            },
        );
        let room = Arc::new(Semaphore::new(room.max(1) as usize));
        let named = (destination.to_string(), client_id.map(str::to_string));
        tokio::spawn(self.clone().pull(key, named, consumer, room, stop, pulling));
        Ok(())
    }

    /// Stops a listener; what it has in flight stays with the app until it answers.
    pub fn unlisten(&self, key: ConsumerKey) {
        if let Some(listener) = lock(&self.state).listeners.remove(&key) {
            listener.stop.cancel();
        }
    }

    /// The app's handler succeeded: the message is done with.
    pub fn ack(&self, connection: u64, delivery: u64) {
        let Some(in_flight) = lock(&self.state).take_in_flight(connection, delivery) else {
            return;
        };
        in_flight.give_room_back();
        tokio::spawn(async move {
            if let Err(error) = in_flight.message.ack().await {
                warn!(
                    "Could not acknowledge a message of {} to NATS ({error}); it will be delivered again",
                    in_flight.destination
                );
            }
        });
    }

    /// The app's handler failed: the message is redelivered, or dead-lettered.
    pub fn nack(&self, connection: u64, delivery: u64, reason: &str) {
        let taken = lock(&self.state).take_in_flight(connection, delivery);
        if let Some(in_flight) = taken {
            self.failed(in_flight, reason);
        }
    }

    /// Reads how many messages each known stream holds, every second, for [`Queues::stats`].
    async fn look_at_depths(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.shutdown.cancelled() => return,
            }
            let known: Vec<(String, Known)> = lock(&self.state)
                .known
                .iter()
                .map(|(name, known)| (name.clone(), *known))
                .collect();
            for (name, known) in known {
                let Ok(mut stream) = self
                    .nats
                    .jetstream
                    .get_stream(self.stream_name(&name, known.kind))
                    .await
                else {
                    continue;
                };
                let Ok(info) = stream.info().await else {
                    continue;
                };
                let depth = info.state.messages as usize;
                let pending = match known.kind {
                    DestinationKind::Queue => match stream.consumer_info(WORKERS).await {
                        Ok(info) => info.num_ack_pending,
                        Err(_) => 0,
                    },
                    DestinationKind::Topic => 0,
                };
                lock(&self.state)
                    .depths
                    .insert(name, (depth.saturating_sub(pending), pending));
            }
        }
    }

    /// What the management API shows of every destination this node knows.
    pub fn stats(&self) -> Vec<QueueStats> {
        lock(&self.state).stats()
    }

    /// Sends what this node still has for NATS, waiting [`STOP_PATIENCE`] at most: NATS out of
    /// reach does not keep it from stopping.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(STOP_PATIENCE, self.nats.client.flush()).await;
    }
}
