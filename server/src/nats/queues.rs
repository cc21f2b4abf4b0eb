//! Messaging on JetStream, with the embedded broker's semantics where JetStream allows them.
//!
//! - A queue is a stream with work-queue retention and file storage; every listener on every
//!   node pulls from one durable consumer of it (`workers`), so JetStream balances the
//!   messages across nodes. A listener asks for no more than its concurrency less what it has
//!   in flight.
//! - A topic is a stream that keeps a message while a subscriber still has to take it
//!   (interest retention): a durable subscriber (with a client id) is a durable consumer that
//!   outlives it, any other an ephemeral consumer that starts at new messages.
//! - A delivery stays in flight until the app answers: this node tells JetStream it is still
//!   being worked on every [`PROGRESS_INTERVAL`], so only a dead node's deliveries come back
//!   (after [`ACK_WAIT`]). A failed one is redelivered at once, and the tenth failure moves it
//!   to `/queue/DLQ` (published with an id JetStream deduplicates on, then acknowledged).
//! - A message's time to live is kept in its header and checked at delivery: an expired one is
//!   dropped then. Priorities are carried but not ordered by: a stream is first in, first out.
//! - Replies to requests go over core NATS to the requester's node, as the embedded engine
//!   sends them over its links: not kept if no one takes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind, ErrorCode};
use bytes::Bytes;
use futures_util::StreamExt;
use immutant_protocol::{DestinationKind, Frame, Header, MessageHeader, PublishOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::{Nats, NatsError, is_busy_consumer, time_left, token};
use crate::vocabulary::messaging::{
    ConsumerKey, DEAD_LETTER_QUEUE, MAX_DELIVERIES, MessagingError, QueueStats, check_publish,
    kind_name,
};
use immutant_foundation::clock::now_ms;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;
use immutant_protocol::Outbox;

/// How long JetStream waits for an answer before it gives a delivery to another consumer.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How often this node tells JetStream its deliveries are still being worked on.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// How long one pull waits for messages before it is made again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How long a stopping node waits for NATS to take what it sent.
const STOP_PATIENCE: Duration = Duration::from_secs(2);
/// How long a publish waits for NATS (across reconnections) before it fails.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// The name of the consumer every listener of a queue shares.
const WORKERS: &str = "workers";
/// The header holding what a message carries besides its payload.
const MESSAGE_HEADER: &str = "Immutant-Message";
/// The longest failure reason a dead-lettered message keeps.
const MAX_REASON_CHARS: usize = 1024;
/// Room the NATS headers take in a message, besides its payload.
const HEADER_ROOM: u64 = 64 * 1024;

/// What a message carries besides its payload, in its NATS header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Carried {
    priority: u8,
    properties: std::collections::BTreeMap<String, String>,
    correlation_id: Option<String>,
    content_type: String,
    reply_to: Option<String>,
    published_at_ms: u64,
    expires_at_ms: Option<u64>,
}

/// A destination this node knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    kind: DestinationKind,
}

/// A delivery an app of this node has not answered yet.
struct InFlight {
    connection: u64,
    destination: String,
    message: jetstream::Message,
    /// The listener's room, given back when it is answered.
    room: Option<Arc<Semaphore>>,
}

/// Counts of what this node did with a destination's messages.
#[derive(Default, Clone, Copy)]
struct Counts {
    published: u64,
    delivered: u64,
    redelivered: u64,
    dead_lettered: u64,
    expired: u64,
}

#[derive(Default)]
struct State {
    known: HashMap<String, Known>,
    outboxes: HashMap<u64, Outbox>,
    /// Each listener's pulling, stopped by dropping it.
    listeners: HashMap<ConsumerKey, Listener>,
    in_flight: HashMap<u64, InFlight>,
    counts: HashMap<String, Counts>,
    /// What the streams held at the last look.
    depths: HashMap<String, (usize, usize)>,
}

struct Listener {
    destination: String,
    stop: Shutdown,
}

/// This node's messaging on JetStream.
pub struct Queues {
    nats: Arc<Nats>,
    node_name: String,
    /// Tells this node's messages apart in JetStream's deduplication.
    generation: u64,
    max_message_size: u64,
    state: std::sync::Mutex<State>,
    next_connection: AtomicU64,
    next_delivery: AtomicU64,
    next_publish: AtomicU64,
    shutdown: Shutdown,
}

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
            .subscribe(
                queues
                    .nats
                    .subject(&format!("reply.{}.*", token(node_name))),
            )
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
        let orphans: Vec<InFlight> = {
            let mut state = lock(&self.state);
            state.outboxes.remove(&connection);
            state.listeners.retain(|key, listener| {
                let keep = key.0 != connection;
                if !keep {
                    listener.stop.cancel();
                }
                keep
            });
            let deliveries: Vec<u64> = state
                .in_flight
                .iter()
                .filter(|(_, in_flight)| in_flight.connection == connection)
                .map(|(delivery, _)| *delivery)
                .collect();
            deliveries
                .into_iter()
                .filter_map(|delivery| state.in_flight.remove(&delivery))
                .collect()
        };
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

    /// What `name` is, if any node started it.
    async fn known(&self, name: &str) -> Result<Option<Known>, MessagingError> {
        if let Some(known) = lock(&self.state).known.get(name) {
            return Ok(Some(*known));
        }
        for kind in [DestinationKind::Queue, DestinationKind::Topic] {
            match self
                .nats
                .jetstream
                .get_stream(self.stream_name(name, kind))
                .await
            {
                Ok(_) => {
                    let known = Known { kind };
                    lock(&self.state).known.insert(name.to_string(), known);
                    return Ok(Some(known));
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        GetStreamErrorKind::JetStream(error)
                            if error.error_code() == ErrorCode::STREAM_NOT_FOUND
                    ) => {}
                Err(error) => {
                    return Err(engine_error(format!(
                        "cannot look up {name} in NATS: {error}"
                    )));
                }
            }
        }
        Ok(None)
    }

    fn stream_name(&self, name: &str, kind: DestinationKind) -> String {
        let prefix = match kind {
            DestinationKind::Queue => "Q",
            DestinationKind::Topic => "T",
        };
        self.nats.name(&format!("{prefix}_{}", token(name)))
    }

    fn subject_of(&self, name: &str, kind: DestinationKind) -> String {
        let prefix = match kind {
            DestinationKind::Queue => "q",
            DestinationKind::Topic => "t",
        };
        self.nats.subject(&format!("{prefix}.{}", token(name)))
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
        let carried = Carried {
            priority: options.priority,
            properties: options.properties,
            correlation_id: options.correlation_id,
            content_type: options.content_type,
            reply_to: options.reply_to,
            published_at_ms,
            expires_at_ms: options
                .ttl_ms
                .filter(|ttl| *ttl > 0)
                .map(|ttl| published_at_ms + ttl),
        };
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
        let Some((node, connection)) = target.split_once('/') else {
            return;
        };
        if connection.parse::<u64>().is_err() {
            return;
        }
        let subject = self
            .nats
            .subject(&format!("reply.{}.{connection}", token(node)));
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
            let Some(connection) = reply
                .subject
                .rsplit('.')
                .next()
                .and_then(|connection| connection.parse::<u64>().ok())
            else {
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

    /// The JetStream consumer a listener or receiver of `destination` pulls from.
    async fn consumer(
        &self,
        key: ConsumerKey,
        destination: &str,
        client_id: Option<&str>,
    ) -> Result<PullConsumer, MessagingError> {
        if !lock(&self.state).outboxes.contains_key(&key.0) {
            return Err(MessagingError::NotStarted(destination.to_string()));
        }
        let Some(known) = self.known(destination).await? else {
            return Err(MessagingError::NotStarted(destination.to_string()));
        };
        let stream_name = self.stream_name(destination, known.kind);
        let stream = self
            .nats
            .jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|error| engine_error(format!("cannot open {destination}: {error}")))?;
        let shared = |durable: String| consumer::pull::Config {
            durable_name: Some(durable),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            ..Default::default()
        };
        let (name, config) = match (known.kind, client_id) {
            (DestinationKind::Queue, _) => (Some(WORKERS.to_string()), shared(WORKERS.into())),
            (DestinationKind::Topic, Some(client))
                if client.is_empty() || client.contains(['#', '@']) =>
            {
                return Err(MessagingError::BadClientId(client.to_string()));
            }
            (DestinationKind::Topic, Some(client)) => {
                let name = format!("S_{}", token(client));
                // A new durable subscription starts at the next message, as on the embedded
                // engine (an existing one goes on where it was).
                let config = consumer::pull::Config {
                    deliver_policy: DeliverPolicy::New,
                    ..shared(name.clone())
                };
                (Some(name), config)
            }
            // Named here, not by the server, so that making it again after a request that
            // timed out (but landed) gives the same consumer, not a second one.
            (DestinationKind::Topic, None) => (
                None,
                consumer::pull::Config {
                    name: Some(format!("E_{}", self.nats.unique())),
                    deliver_policy: DeliverPolicy::New,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_deliver: -1,
                    inactive_threshold: Duration::from_secs(10),
                    ..Default::default()
                },
            ),
        };
        let what = format!("a consumer of {destination}");
        let made = self.nats.patiently(&what, is_busy_consumer, || async {
            match &name {
                Some(name) => stream.get_or_create_consumer(name, config.clone()).await,
                None => stream.create_consumer(config.clone()).await,
            }
        });
        made.await.map_err(|error| {
            engine_error(format!(
                "cannot make a consumer of {destination} in NATS: {error}"
            ))
        })
    }

    /// Pulls messages for one listener or receiver while it has room, until it is stopped.
    async fn pull(
        self: Arc<Self>,
        key: ConsumerKey,
        (destination, client_id): (String, Option<String>),
        mut consumer: PullConsumer,
        room: Arc<Semaphore>,
        stop: Shutdown,
        pulling: Pulling,
    ) {
        let mut failing = false;
        loop {
            let permit = tokio::select! {
                permit = room.clone().acquire_many_owned(1) => permit,
                _ = stop.cancelled() => return,
                _ = self.shutdown.cancelled() => return,
            };
            let Ok(permit) = permit else { return };
            permit.forget();
            let mut wanted = 1;
            while let Ok(more) = room.try_acquire() {
                more.forget();
                wanted += 1;
            }
            let expires = match pulling {
                Pulling::Receive {
                    deadline: Some(deadline),
                } => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        self.end_receive(key, None);
                        return;
                    }
                    left.min(PULL_EXPIRES)
                }
                _ => PULL_EXPIRES,
            };
            let batch = consumer
                .batch()
                .max_messages(wanted)
                .expires(expires)
                .messages()
                .await;
            let (mut taken, mut failed) = (0, None);
            match batch {
                Ok(mut batch) => loop {
                    let next = tokio::select! {
                        next = batch.next() => next,
                        _ = stop.cancelled() => None,
                    };
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            failed = Some(error.to_string());
                            break;
                        }
                        None => break,
                    };
                    let room = match pulling {
                        Pulling::Listen => Some(room.clone()),
                        Pulling::Receive { .. } => None,
                    };
                    if self.deliver(key, &destination, message, room, pulling) {
                        taken += 1;
                    }
                },
                Err(error) => failed = Some(error.to_string()),
            }
            room.add_permits(wanted - taken.min(wanted));
            if let Some(error) = failed {
                // The consumer may be gone (an ephemeral one forgotten while this node was cut
                // off, or lost with its server): made again after a pause.
                if !failing {
                    warn!("Cannot pull from {destination} in NATS ({error}); trying again");
                }
                failing = true;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                // Made again patiently, but no longer than the pull may last.
                let lapsed = async {
                    match pulling {
                        Pulling::Receive {
                            deadline: Some(deadline),
                        } => tokio::time::sleep_until(deadline).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    again = self.consumer(key, &destination, client_id.as_deref()) => {
                        if let Ok(again) = again {
                            consumer = again;
                        }
                    }
                    _ = lapsed => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            if failing {
                info!("Pulling from {destination} in NATS again");
                failing = false;
            }
            if matches!(pulling, Pulling::Receive { .. }) && taken > 0 {
                return;
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// Hands `message` to the app on `key.0`, or drops it if it expired, or dead-letters it if
    /// it was delivered too often: whether the app got it.
    fn deliver(
        &self,
        key: ConsumerKey,
        destination: &str,
        message: jetstream::Message,
        room: Option<Arc<Semaphore>>,
        pulling: Pulling,
    ) -> bool {
        let Ok(info) = message.info() else {
            return false;
        };
        let (sequence, delivered) = (info.stream_sequence, info.delivered.max(1) as u32);
        let Some(carried) = carried(message.headers.as_ref()) else {
            warn!("A message on {destination} has no Immutant header; dropping it");
            tokio::spawn(async move { message.ack_with(AckKind::Term).await });
            return false;
        };
        if carried.expires_at_ms.is_some_and(|at| at <= now_ms()) {
            self.count(destination, |counts| counts.expired += 1);
            tokio::spawn(async move { message.ack().await });
            return false;
        }
        if delivered > MAX_DELIVERIES {
            let reason = format!("it was delivered {MAX_DELIVERIES} times without an answer");
            self.dead_letter(destination.to_string(), message, carried, reason);
            return false;
        }
        let delivery = self.next_delivery.fetch_add(1, Ordering::Relaxed);
        let header = message_header(sequence, destination, &carried, delivered);
        let payload = message.payload.clone();
        let mut state = lock(&self.state);
        let Some(outbox) = state.outboxes.get(&key.0).cloned() else {
            drop(state);
            tokio::spawn(async move { message.ack_with(AckKind::Nak(None)).await });
            return false;
        };
        state.in_flight.insert(
            delivery,
            InFlight {
                connection: key.0,
                destination: destination.to_string(),
                message,
                room,
            },
        );
        let counts = state.counts.entry(destination.to_string()).or_default();
        counts.delivered += 1;
        if delivered > 1 {
            counts.redelivered += 1;
        }
        let frame_header = match pulling {
            Pulling::Listen => Header::Deliver {
                consumer: key.1,
                delivery,
                message: header,
            },
            Pulling::Receive { .. } => {
                state.listeners.remove(&key);
                Header::Receipt {
                    id: key.1,
                    message: Some(header),
                    delivery: Some(delivery),
                }
            }
        };
        let _ = outbox.send(Frame::with_body(frame_header, payload).into());
        true
    }

    /// A receive's time is up with nothing taken: answered with none.
    fn end_receive(&self, key: ConsumerKey, message: Option<MessageHeader>) {
        let mut state = lock(&self.state);
        state.listeners.remove(&key);
        if let Some(outbox) = state.outboxes.get(&key.0) {
            let receipt = Header::Receipt {
                id: key.1,
                message,
                delivery: None,
            };
            let _ = outbox.send(Frame::new(receipt).into());
        }
    }

    /// Stops a listener; what it has in flight stays with the app until it answers.
    pub fn unlisten(&self, key: ConsumerKey) {
        if let Some(listener) = lock(&self.state).listeners.remove(&key) {
            listener.stop.cancel();
        }
    }

    /// The app's handler succeeded: the message is done with.
    pub fn ack(&self, connection: u64, delivery: u64) {
        let Some(in_flight) = self.take_in_flight(connection, delivery) else {
            return;
        };
        if let Some(room) = &in_flight.room {
            room.add_permits(1);
        }
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
        if let Some(in_flight) = self.take_in_flight(connection, delivery) {
            self.failed(in_flight, reason);
        }
    }

    fn take_in_flight(&self, connection: u64, delivery: u64) -> Option<InFlight> {
        let mut state = lock(&self.state);
        match state.in_flight.get(&delivery) {
            Some(in_flight) if in_flight.connection == connection => {
                state.in_flight.remove(&delivery)
            }
            _ => None,
        }
    }

    /// A delivery failed: redelivered at once, or dead-lettered after its tenth.
    fn failed(&self, in_flight: InFlight, reason: &str) {
        if let Some(room) = &in_flight.room {
            room.add_permits(1);
        }
        let delivered = in_flight
            .message
            .info()
            .map(|info| info.delivered.max(1) as u32)
            .unwrap_or(1);
        let carried = carried(in_flight.message.headers.as_ref());
        match carried {
            Some(carried) if delivered >= MAX_DELIVERIES => {
                let reason = match reason.char_indices().nth(MAX_REASON_CHARS) {
                    Some((end, _)) => &reason[..end],
                    None => reason,
                };
                self.dead_letter(
                    in_flight.destination,
                    in_flight.message,
                    carried,
                    reason.to_string(),
                );
            }
            _ => {
                tokio::spawn(async move { in_flight.message.ack_with(AckKind::Nak(None)).await });
            }
        }
    }

    /// Moves `message` to the DLQ: published there with an id made of where it was (so that
    /// doing it twice puts it there once), then acknowledged where it was.
    fn dead_letter(
        &self,
        destination: String,
        message: jetstream::Message,
        mut carried: Carried,
        reason: String,
    ) {
        warn!(
            "a message on {destination} failed {MAX_DELIVERIES} deliveries, moving it to {DEAD_LETTER_QUEUE}: {reason}"
        );
        self.count(&destination, |counts| counts.dead_lettered += 1);
        carried
            .properties
            .insert("dead-letter-reason".to_string(), reason);
        carried
            .properties
            .insert("original-destination".to_string(), destination.clone());
        let id = message
            .info()
            .map(|info| format!("dlq-{}-{}", info.stream, info.stream_sequence))
            .unwrap_or_default();
        let subject = self.subject_of(DEAD_LETTER_QUEUE, DestinationKind::Queue);
        let nats = self.nats.clone();
        // Not acknowledged if the DLQ did not take it: it comes back, and goes again.
        tokio::spawn(async move {
            let body = message.payload.clone();
            if publish_once(&nats, &subject, &carried, body, &id)
                .await
                .is_ok()
            {
                let _ = message.ack().await;
            }
        });
    }

    /// Tells JetStream every delivery still in flight here is being worked on.
    async fn keep_in_flight_alive(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(PROGRESS_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let replies: Vec<_> = lock(&self.state)
                .in_flight
                .values()
                .filter_map(|in_flight| in_flight.message.reply.clone())
                .collect();
            for reply in replies {
                let _ = self
                    .nats
                    .client
                    .publish(reply, Bytes::from_static(b"+WPI"))
                    .await;
            }
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
        let state = lock(&self.state);
        let mut stats: Vec<QueueStats> = state
            .known
            .iter()
            .map(|(name, known)| {
                let counts = state.counts.get(name).copied().unwrap_or_default();
                let (depth, in_flight) = state.depths.get(name).copied().unwrap_or_default();
                QueueStats {
                    name: name.clone(),
                    kind: kind_name(known.kind),
                    depth,
                    in_flight,
                    consumers: state
                        .listeners
                        .values()
                        .filter(|listener| &listener.destination == name)
                        .count(),
                    published: counts.published,
                    delivered: counts.delivered,
                    redelivered: counts.redelivered,
                    dead_lettered: counts.dead_lettered,
                    expired: counts.expired,
                }
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Waits for what was sent to NATS to be flushed: the node is stopping. NATS out of
    /// reach does not keep it from stopping.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(STOP_PATIENCE, self.nats.client.flush()).await;
    }

    fn count(&self, destination: &str, change: impl FnOnce(&mut Counts)) {
        change(
            lock(&self.state)
                .counts
                .entry(destination.to_string())
                .or_default(),
        );
    }
}

/// What a puller is for.
#[derive(Debug, Clone, Copy)]
enum Pulling {
    Listen,
    /// One message, by `deadline` if there is one.
    Receive {
        deadline: Option<tokio::time::Instant>,
    },
}

/// Publishes to a stream once, and waits for JetStream's acknowledgement.
async fn publish_once(
    nats: &Nats,
    subject: &str,
    carried: &Carried,
    body: Bytes,
    id: &str,
) -> Result<(), String> {
    let message = jetstream::message::PublishMessage::build()
        .payload(body)
        .headers(headers(carried))
        .message_id(id);
    nats.jetstream
        .send_publish(subject.to_string(), message)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn headers(carried: &Carried) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        MESSAGE_HEADER,
        serde_json::to_string(carried).unwrap_or_default().as_str(),
    );
    headers
}

fn carried(headers: Option<&HeaderMap>) -> Option<Carried> {
    let value = headers?.get(MESSAGE_HEADER)?;
    serde_json::from_str(value.as_str()).ok()
}

fn message_header(id: u64, destination: &str, carried: &Carried, delivered: u32) -> MessageHeader {
    MessageHeader {
        id,
        destination: destination.to_string(),
        priority: carried.priority,
        properties: carried.properties.clone(),
        correlation_id: carried.correlation_id.clone(),
        content_type: carried.content_type.clone(),
        reply_to: carried.reply_to.clone(),
        delivery_count: delivered,
        published_at_ms: carried.published_at_ms,
    }
}

/// A refusal that comes from NATS rather than from what the app asked.
fn engine_error(message: String) -> MessagingError {
    MessagingError::Engine(message)
}
