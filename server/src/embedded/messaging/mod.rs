//! Messaging with HornetQ's semantics: queues and topics, persistent messages on disk before a
//! publish returns ([`journal`]), delivery to consumers round robin with acknowledgement,
//! redelivery when a handler fails or its app dies, and `/queue/DLQ` after 10 deliveries.
//!
//! A topic is a set of subscription queues, one per subscriber: durable ones (with a client id)
//! are journaled and outlive their subscriber; the others go away with it.

mod bridge;
pub mod journal;
mod message;
mod queue;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use immutant_protocol::{DestinationKind, Frame, Header, MessageHeader, PublishOptions};
use tokio::sync::mpsc;
use tracing::warn;

use crate::vocabulary::messaging::{
    ConsumerKey, DEAD_LETTER_QUEUE, MAX_DELIVERIES, MessagingError, QueueStats, check_publish,
    kind_name,
};
pub use bridge::{Forward, Reply};
use immutant_foundation::clock::now_ms;
use journal::{Journal, JournalOp, Recovered};
pub use message::Message;
use queue::{QueueRole, QueueState};

/// The longest failure reason a dead-lettered message keeps.
const MAX_REASON_CHARS: usize = 1024;

use immutant_protocol::Outbox;

/// Sends a frame to an app; one that has gone away is cleaned up by `disconnect`.
fn send(outbox: &Outbox, frame: Frame) {
    let _ = outbox.send(frame.into());
}

/// One node's messaging.
pub struct Broker {
    /// This node's name, which reply addresses carry.
    node_name: String,
    journal: Journal,
    state: Mutex<State>,
    next_seq: AtomicU64,
    next_connection: AtomicU64,
    max_message_size: u64,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, QueueState>,
    /// Each topic's subscription queues.
    topics: HashMap<String, Vec<String>>,
    consumers: HashMap<ConsumerKey, Consumer>,
    in_flight: HashMap<u64, InFlight>,
    outboxes: HashMap<u64, Outbox>,
    next_delivery: u64,
    /// What other nodes forwarded here, by origin, so that a retried forward is taken once.
    seen: bridge::Seen,
    /// When each queue last had a consumer of an app of this node, while it has none.
    unattended_since: HashMap<String, std::time::Instant>,
    /// Where replies for apps on other nodes go (the cluster's links), in a cluster.
    replies: Option<mpsc::UnboundedSender<Reply>>,
    /// How many messages each queue that pages held in the journal at boot beyond its first
    /// page, as the count made after boot comes in (none in a state not opened from a journal).
    counted: Option<std::sync::mpsc::Receiver<(String, u64)>>,
    /// The journaled messages being stored now, by sequence number: page reads stop short of
    /// the lowest, which may land in the journal after higher ones.
    storing: std::collections::BTreeSet<u64>,
    /// Queues whose last page read stopped short of a message being stored: read again once
    /// it is.
    starved: std::collections::HashSet<String>,
}

/// A journaled message being stored: page reads stop short of it until it is in line, or its
/// store failed or was given up (dropped half way).
struct PendingStore<'a> {
    broker: &'a Broker,
    seq: u64,
}

impl Drop for PendingStore<'_> {
    fn drop(&mut self) {
        let mut state = self.broker.lock();
        state.storing.remove(&self.seq);
        for queue in std::mem::take(&mut state.starved) {
            self.broker.dispatch(&mut state, &queue);
        }
    }
}

/// Where a consumer's messages go.
enum Sink {
    /// An app of this node, over its socket.
    App(Outbox),
    /// Another node, over the link to it: a bridge that forwards what the round robin gives it.
    Peer(mpsc::UnboundedSender<Forward>),
}

struct Consumer {
    queue: String,
    sink: Sink,
    /// How many more messages it may be handed before it acknowledges some.
    credit: u32,
    /// For a `receive`: the request to answer with the one message it takes.
    receive: Option<u64>,
}

struct InFlight {
    queue: String,
    consumer: ConsumerKey,
    message: Message,
}

impl Broker {
    /// Opens the journal in `data_dir` and puts back every message it holds.
    pub fn open(
        data_dir: &Path,
        node_name: &str,
        max_message_size: u64,
    ) -> Result<Broker, MessagingError> {
        let (journal, recovered) = Journal::open(&data_dir.join("journal.redb"))?;
        let next_seq = AtomicU64::new(recovered.max_seq + 1);
        let mut state = State::default();
        state.queues.insert(
            DEAD_LETTER_QUEUE.to_string(),
            QueueState::new(QueueRole::Queue),
        );
        state.restore(recovered);
        Ok(Broker {
            node_name: node_name.to_string(),
            journal,
            state: Mutex::new(state),
            next_seq,
            next_connection: AtomicU64::new(1),
            max_message_size,
        })
    }

    /// Whether each journal commit also makes reopening it after a crash quick (see
    /// [`Journal::set_quick_repair`]).
    pub fn set_quick_repair(&self, quick: bool) {
        self.journal.set_quick_repair(quick);
    }

    /// Writes what the journal was sent, and closes it: the node is stopping.
    pub async fn close(&self) {
        self.journal.close().await;
    }

    /// The largest payload a message may carry.
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a destination; starting one that exists does nothing.
    pub async fn start(&self, name: &str, kind: DestinationKind) -> Result<(), MessagingError> {
        if name.is_empty() || name.starts_with('@') {
            return Err(MessagingError::BadName(name.to_string()));
        }
        {
            let mut state = self.lock();
            // A topic's subscription is a queue of this name; it is not the app's to start.
            if state
                .queues
                .get(name)
                .is_some_and(|queue| queue.role != QueueRole::Queue)
            {
                return Err(MessagingError::BadName(name.to_string()));
            }
            match (state.kind_of(name), kind) {
                (Some(existing), asked) if existing == asked => return Ok(()),
                (Some(existing), asked) => {
                    return Err(MessagingError::KindMismatch {
                        name: name.to_string(),
                        is: kind_name(existing),
                        asked: kind_name(asked),
                    });
                }
                (None, DestinationKind::Queue) => {
                    state
                        .queues
                        .insert(name.to_string(), QueueState::new(QueueRole::Queue));
                }
                (None, DestinationKind::Topic) => {
                    state.topics.insert(name.to_string(), Vec::new());
                }
            }
        }
        tracing::info!("Starting {}: {name}", kind_name(kind));
        let value = Bytes::from_static(kind_name(kind).as_bytes());
        self.journal
            .commit(vec![JournalOp::PutMeta {
                key: format!("destination:{name}"),
                value,
            }])
            .await?;
        Ok(())
    }

    /// A number for a new connection (an app's, or a link to another node).
    pub fn next_connection(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers an app's connection, so that replies can reach it.
    pub fn connect(&self, connection: u64, outbox: Outbox) {
        self.lock().outboxes.insert(connection, outbox);
    }

    /// Forgets an app's connection: its consumers go, and the messages it had not acknowledged
    /// are redelivered to others.
    pub fn disconnect(&self, connection: u64) {
        let mut state = self.lock();
        state.outboxes.remove(&connection);
        let keys: Vec<ConsumerKey> = state
            .consumers
            .keys()
            .filter(|key| key.0 == connection)
            .copied()
            .collect();
        for key in keys {
            state.remove_consumer(key);
        }
        let orphans: Vec<u64> = state
            .in_flight
            .iter()
            .filter(|(_, in_flight)| in_flight.consumer.0 == connection)
            .map(|(delivery, _)| *delivery)
            .collect();
        for delivery in orphans {
            if let Some(in_flight) = state.in_flight.remove(&delivery) {
                let reason = "the app ended before acknowledging it";
                self.return_message(&mut state, &in_flight.queue, in_flight.message, reason);
            }
        }
        let names: Vec<String> = state.queues.keys().cloned().collect();
        for name in names {
            self.dispatch(&mut state, &name);
        }
    }

    /// Publishes a message from the app on `connection`. A persistent one is on disk when this
    /// returns.
    pub async fn publish(
        &self,
        connection: u64,
        destination: &str,
        mut options: PublishOptions,
        body: Bytes,
    ) -> Result<(), MessagingError> {
        let limit = self.max_message_size;
        check_publish(&mut options, body.len(), limit, &self.node_name, connection)?;
        let published_at_ms = now_ms();
        let message = Message {
            header: MessageHeader {
                id: self.next_seq.fetch_add(1, Ordering::Relaxed),
                destination: destination.to_string(),
                priority: options.priority,
                properties: options.properties,
                correlation_id: options.correlation_id,
                content_type: options.content_type,
                reply_to: options.reply_to,
                delivery_count: 0,
                published_at_ms,
            },
            body,
            persistent: options.persistent,
            expires_at_ms: options
                .ttl_ms
                .filter(|ttl| *ttl > 0)
                .map(|ttl| published_at_ms + ttl),
            forwarded: false,
            origin: None,
        };
        if let Some(target) = destination.strip_prefix('@') {
            self.route_reply(target, message);
            return Ok(());
        }
        let targets = self.lock().targets(destination)?;
        self.store(targets, message).await
    }

    /// Puts `message` on each of `targets` (queues, each with whether it is journaled): on disk
    /// first for the journaled ones if it is persistent, then in line for their consumers.
    async fn store(
        &self,
        targets: Vec<(String, bool)>,
        message: Message,
    ) -> Result<(), MessagingError> {
        let seq = message.header.id;
        let mut pending = None;
        if message.persistent {
            let record = message.to_record();
            let ops: Vec<JournalOp> = targets
                .iter()
                .filter(|(_, journaled)| *journaled)
                .map(|(queue, _)| JournalOp::Put {
                    queue: queue.clone(),
                    seq,
                    record: record.clone(),
                })
                .collect();
            if !ops.is_empty() {
                self.lock().storing.insert(seq);
                pending = Some(PendingStore { broker: self, seq });
                self.journal.commit(ops).await?;
            }
        }
        let mut state = self.lock();
        for (queue, journaled) in targets {
            if let Some(state_queue) = state.queues.get_mut(&queue) {
                // A queue that pages leaves it in the journal, to read back in turn.
                if state_queue.admit(&message, message.persistent && journaled) {
                    state_queue.enqueue(message.clone());
                }
                self.dispatch(&mut state, &queue);
            }
        }
        drop(state);
        drop(pending);
        Ok(())
    }

    /// Sends a reply to `<node>/<connection>` (the requester's address, `@` taken off): to the
    /// app on this node, or over the link to its node. A reply no one can take is dropped.
    fn route_reply(&self, target: &str, message: Message) {
        let Some((node, connection)) = target.split_once('/') else {
            return;
        };
        let Ok(connection) = connection.parse::<u64>() else {
            return;
        };
        if node == self.node_name {
            self.reply(connection, message);
        } else if let Some(replies) = self.lock().replies.as_ref() {
            let _ = replies.send(Reply {
                node: node.to_string(),
                connection,
                message,
            });
        }
    }

    /// Hands a reply straight to the app on `connection`; dropped if it is gone.
    pub fn reply(&self, connection: u64, message: Message) {
        let state = self.lock();
        let outbox = state.outboxes.get(&connection);
        if let Some(outbox) = outbox {
            send(
                outbox,
                Frame::with_body(
                    Header::Deliver {
                        consumer: 0,
                        delivery: 0,
                        message: message.header,
                    },
                    message.body,
                ),
            );
        }
    }

    /// Registers a consumer: a listener on a queue, or a subscriber to a topic (durable with a
    /// client id).
    pub async fn listen(
        &self,
        key: ConsumerKey,
        destination: &str,
        concurrency: u32,
        client_id: Option<&str>,
    ) -> Result<(), MessagingError> {
        self.add_consumer(key, destination, concurrency, client_id, None)
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
        self.add_consumer(key, destination, 1, client_id, Some(key.1))
            .await?;
        if let Some(timeout) = timeout {
            let broker = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let mut state = broker.lock();
                let waiting = state
                    .consumers
                    .get(&key)
                    .is_some_and(|consumer| consumer.receive.is_some());
                if let Some(Consumer {
                    sink: Sink::App(outbox),
                    ..
                }) = waiting.then(|| state.remove_consumer(key)).flatten()
                {
                    let receipt = Header::Receipt {
                        id: key.1,
                        message: None,
                        delivery: None,
                    };
                    send(&outbox, Frame::new(receipt));
                }
            });
        }
        Ok(())
    }

    async fn add_consumer(
        &self,
        key: ConsumerKey,
        destination: &str,
        credit: u32,
        client_id: Option<&str>,
        receive: Option<u64>,
    ) -> Result<(), MessagingError> {
        let durable_subscription = {
            let mut state = self.lock();
            let outbox = state
                .outboxes
                .get(&key.0)
                .cloned()
                .ok_or_else(|| MessagingError::NotStarted(destination.to_string()))?;
            let (queue, created) = state.queue_for(key, destination, client_id)?;
            let consumer = Consumer {
                queue: queue.clone(),
                sink: Sink::App(outbox),
                credit: credit.max(1),
                receive,
            };
            self.attach(&mut state, key, consumer);
            (created && client_id.is_some()).then_some(queue)
        };
        if let Some(queue) = durable_subscription {
            self.journal
                .commit(vec![JournalOp::PutMeta {
                    key: format!("subscription:{queue}"),
                    value: Bytes::copy_from_slice(destination.as_bytes()),
                }])
                .await?;
        }
        Ok(())
    }

    /// Removes a consumer; its unacknowledged messages stay with the app until it answers.
    pub fn unlisten(&self, key: ConsumerKey) {
        self.lock().remove_consumer(key);
    }

    /// The app's handler succeeded: the message is done with.
    pub fn ack(&self, connection: u64, delivery: u64) {
        let mut state = self.lock();
        let Some(in_flight) = state.take_in_flight(connection, delivery) else {
            return;
        };
        if let Some(queue) = state.queues.get_mut(&in_flight.queue) {
            queue.delivered += 1;
            if in_flight.message.persistent && queue.is_durable() {
                self.journal.submit(vec![JournalOp::Delete {
                    queue: in_flight.queue.clone(),
                    seq: in_flight.message.header.id,
                }]);
            }
        }
        self.dispatch(&mut state, &in_flight.queue);
    }

    /// The app's handler failed: the message is redelivered, or dead-lettered.
    pub fn nack(&self, connection: u64, delivery: u64, reason: &str) {
        // The reason travels with the message if it is dead-lettered: keep it a sensible size.
        let reason = match reason.char_indices().nth(MAX_REASON_CHARS) {
            Some((end, _)) => &reason[..end],
            None => reason,
        };
        let mut state = self.lock();
        let Some(in_flight) = state.take_in_flight(connection, delivery) else {
            return;
        };
        self.return_message(&mut state, &in_flight.queue, in_flight.message, reason);
        self.dispatch(&mut state, &in_flight.queue);
    }

    /// What the management API shows of every queue.
    pub fn stats(&self) -> Vec<QueueStats> {
        let mut state = self.lock();
        state.take_counts();
        let mut stats: Vec<QueueStats> = state
            .queues
            .iter()
            .map(|(name, queue)| QueueStats {
                name: name.clone(),
                kind: match queue.role {
                    QueueRole::Queue => "queue",
                    QueueRole::Subscription { durable: true, .. } => "durable-subscription",
                    QueueRole::Subscription { durable: false, .. } => "subscription",
                },
                depth: queue.depth(),
                in_flight: state
                    .in_flight
                    .values()
                    .filter(|f| &f.queue == name)
                    .count(),
                consumers: queue.consumer_count(),
                published: queue.published,
                delivered: queue.delivered,
                redelivered: queue.redelivered,
                dead_lettered: queue.dead_lettered,
                expired: queue.expired,
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Puts a message back in line after a failed delivery, or moves it to the dead letter
    /// queue once it has had its 10 deliveries.
    fn return_message(&self, state: &mut State, queue_name: &str, message: Message, reason: &str) {
        let durable = state
            .queues
            .get(queue_name)
            .is_some_and(QueueState::is_durable);
        if message.header.delivery_count < MAX_DELIVERIES {
            // Its count goes to the journal with it, so that a poison message still reaches the
            // DLQ after its tenth delivery when the node restarted in between. (Not waited for:
            // a later acknowledgement's removal is written after it, in order.)
            if message.persistent && durable {
                self.journal.submit(vec![JournalOp::Put {
                    queue: queue_name.to_string(),
                    seq: message.header.id,
                    record: message.to_record(),
                }]);
            }
            if let Some(queue) = state.queues.get_mut(queue_name) {
                queue.redelivered += 1;
                queue.enqueue(message);
            }
            return;
        }
        warn!(
            "message {} on {queue_name} failed {} deliveries, moving it to {DEAD_LETTER_QUEUE}: {reason}",
            message.header.id, message.header.delivery_count
        );
        let mut dead = message.clone();
        dead.header.id = self.next_seq.fetch_add(1, Ordering::Relaxed);
        dead.header.delivery_count = 0;
        dead.header
            .properties
            .insert("dead-letter-reason".to_string(), reason.to_string());
        dead.header.properties.insert(
            "original-destination".to_string(),
            message.header.destination.clone(),
        );
        dead.header.destination = DEAD_LETTER_QUEUE.to_string();
        let mut ops = Vec::new();
        if message.persistent && durable {
            ops.push(JournalOp::Delete {
                queue: queue_name.to_string(),
                seq: message.header.id,
            });
        }
        if dead.persistent {
            ops.push(JournalOp::Put {
                queue: DEAD_LETTER_QUEUE.to_string(),
                seq: dead.header.id,
                record: dead.to_record(),
            });
        }
        self.journal.submit(ops);
        if let Some(queue) = state.queues.get_mut(queue_name) {
            queue.dead_lettered += 1;
        }
        if let Some(dlq) = state.queues.get_mut(DEAD_LETTER_QUEUE)
            && dlq.admit(&dead, dead.persistent)
        {
            dlq.enqueue(dead);
        }
        self.dispatch(state, DEAD_LETTER_QUEUE);
    }

    /// Adds a consumer to its queue, and hands it what waits there.
    fn attach(&self, state: &mut State, key: ConsumerKey, consumer: Consumer) {
        let queue = consumer.queue.clone();
        if let Some(state_queue) = state.queues.get_mut(&queue) {
            state_queue.add_consumer(key);
        }
        state.consumers.insert(key, consumer);
        self.dispatch(state, &queue);
    }

    /// Reads the queue's next page back from the journal, if it pages and has room for one:
    /// how many records it read. Under the broker's lock, once every message submitted to the
    /// journal is on it (a dead letter is only submitted), and short of any message being
    /// stored: so none is missed or read twice.
    fn read_page(&self, state: &mut State, queue_name: &str) -> usize {
        let Some(from) = state
            .queues
            .get(queue_name)
            .and_then(QueueState::wants_page)
        else {
            return 0;
        };
        state.take_counts();
        let below = state.storing.first().copied();
        let read = self.journal.flush_submitted().and_then(|()| {
            self.journal
                .read(queue_name, from, below.unwrap_or(u64::MAX))
        });
        let mut page = match read {
            Ok(page) => decode_page(queue_name, page, from),
            Err(error) => {
                warn!("cannot read {queue_name}'s next messages from the journal: {error}");
                return 0;
            }
        };
        if below.is_some() {
            // What lies past the message being stored is read once it is.
            page.more = true;
            state.starved.insert(queue_name.to_string());
        }
        let records = page.records;
        if let Some(queue) = state.queues.get_mut(queue_name) {
            queue.take_page(page);
        }
        records
    }

    /// Hands the queue's waiting messages to its consumers while they have credit.
    fn dispatch(&self, state: &mut State, queue_name: &str) {
        // Again while handing out emptied memory and pages read back bring more: expired
        // messages may have filled it, and made no room for a page before.
        let mut first = true;
        loop {
            let read = self.read_page(state, queue_name);
            self.hand_out(state, queue_name);
            let more = state
                .queues
                .get(queue_name)
                .is_some_and(|queue| queue.ready_is_empty() && queue.wants_page().is_some());
            if !more || (!first && read == 0) {
                break;
            }
            first = false;
        }
    }

    /// Hands what waits in memory to the queue's consumers while they have credit.
    fn hand_out(&self, state: &mut State, queue_name: &str) {
        let State {
            queues,
            consumers,
            in_flight,
            next_delivery,
            ..
        } = state;
        let Some(queue) = queues.get_mut(queue_name) else {
            return;
        };
        // Where a bridge forwards to: the queue itself, or for a topic's subscription, the topic.
        let (destination, topic) = match &queue.role {
            QueueRole::Subscription { topic, .. } => (topic.clone(), true),
            QueueRole::Queue => (queue_name.to_string(), false),
        };
        let now = now_ms();
        let mut received = false;
        while let Some(local_only) = queue.peek().map(Message::is_local_only) {
            let Some(key) = queue.consumers_in_turn().find(|key| {
                consumers.get(key).is_some_and(|consumer| {
                    consumer.credit > 0 && !(local_only && matches!(consumer.sink, Sink::Peer(_)))
                })
            }) else {
                break;
            };
            let Some(mut message) = queue.next_message() else {
                break;
            };
            if message.is_expired(now) {
                queue.expired += 1;
                if message.persistent && queue.is_durable() {
                    self.journal.submit(vec![JournalOp::Delete {
                        queue: queue_name.to_string(),
                        seq: message.header.id,
                    }]);
                }
                continue;
            }
            queue.served(key);
            let Some(consumer) = consumers.get_mut(&key) else {
                break;
            };
            let outbox = match &consumer.sink {
                Sink::App(outbox) => outbox,
                Sink::Peer(forwards) => {
                    consumer.credit -= 1;
                    *next_delivery += 1;
                    let forward = Forward {
                        delivery: *next_delivery,
                        destination: destination.clone(),
                        topic,
                        message: message.clone(),
                    };
                    let _ = forwards.send(forward);
                    let in_flight_message = InFlight {
                        queue: queue_name.to_string(),
                        consumer: key,
                        message,
                    };
                    in_flight.insert(*next_delivery, in_flight_message);
                    continue;
                }
            };
            message.header.delivery_count += 1;
            *next_delivery += 1;
            let delivery = *next_delivery;
            if let Some(request) = consumer.receive {
                // A receive takes one message, in flight until the app says it was taken.
                let receipt = Header::Receipt {
                    id: request,
                    message: Some(message.header.clone()),
                    delivery: Some(delivery),
                };
                send(outbox, Frame::with_body(receipt, message.body.clone()));
                consumers.remove(&key);
                queue.remove_consumer(key);
                received = true;
            } else {
                consumer.credit -= 1;
                let deliver = Header::Deliver {
                    consumer: key.1,
                    delivery,
                    message: message.header.clone(),
                };
                send(outbox, Frame::with_body(deliver, message.body.clone()));
            }
            in_flight.insert(
                delivery,
                InFlight {
                    queue: queue_name.to_string(),
                    consumer: key,
                    message,
                },
            );
        }
        // A receive from a topic had a subscription of its own, done with now.
        if received {
            state.drop_unused_subscription(queue_name);
        }
    }
}

/// A page read from `queue`'s journal from sequence number `from`, decoded; a damaged record is
/// skipped, and said.
fn decode_page(queue: &str, page: journal::PageRead, from: u64) -> queue::TakenPage {
    // Nothing read: nothing from `from` on is taken for read.
    let through = page
        .records
        .last()
        .map_or(from.saturating_sub(1), |(seq, _)| *seq);
    let records = page.records.len();
    let messages = page
        .records
        .into_iter()
        .filter_map(|(seq, record)| {
            let message = Message::from_record(record);
            if message.is_none() {
                warn!("a damaged message ({seq}) on {queue} in the journal was skipped");
            }
            message
        })
        .collect();
    queue::TakenPage {
        records,
        messages,
        through,
        more: page.more,
    }
}

impl State {
    /// Puts back what the journal held.
    fn restore(&mut self, recovered: Recovered) {
        for (key, value) in &recovered.meta {
            let value = String::from_utf8_lossy(value);
            if let Some(name) = key.strip_prefix("destination:") {
                match value.as_ref() {
                    "topic" => {
                        self.topics.entry(name.to_string()).or_default();
                    }
                    _ => {
                        self.queues
                            .entry(name.to_string())
                            .or_insert_with(|| QueueState::new(QueueRole::Queue));
                    }
                }
            }
        }
        for (key, topic) in &recovered.meta {
            if let Some(queue) = key.strip_prefix("subscription:") {
                let topic = String::from_utf8_lossy(topic).into_owned();
                self.topics
                    .entry(topic.clone())
                    .or_default()
                    .push(queue.to_string());
                self.queues.insert(
                    queue.to_string(),
                    QueueState::new(QueueRole::Subscription {
                        topic,
                        durable: true,
                    }),
                );
            }
        }
        for (queue, page) in recovered.pages {
            let page = decode_page(&queue, page, 0);
            for origin in page
                .messages
                .iter()
                .filter_map(|message| message.origin.as_ref())
            {
                self.seen.insert(origin.clone());
            }
            self.queues
                .entry(queue)
                .or_insert_with(|| QueueState::new(QueueRole::Queue))
                .take_page(page);
        }
        self.counted = Some(recovered.beyond_first_page);
    }

    /// Adds the counts made after boot of the messages each paging queue held.
    fn take_counts(&mut self) {
        let Some(counted) = &self.counted else {
            return;
        };
        let counts: Vec<(String, u64)> = counted.try_iter().collect();
        for (queue, count) in counts {
            if let Some(queue) = self.queues.get_mut(&queue) {
                queue.counted(count);
            }
        }
    }

    fn kind_of(&self, name: &str) -> Option<DestinationKind> {
        if self.topics.contains_key(name) {
            Some(DestinationKind::Topic)
        } else if self
            .queues
            .get(name)
            .is_some_and(|queue| queue.role == QueueRole::Queue)
        {
            Some(DestinationKind::Queue)
        } else {
            None
        }
    }

    /// The queues a message published to `destination` goes to, each with whether it is
    /// journaled.
    fn targets(&self, destination: &str) -> Result<Vec<(String, bool)>, MessagingError> {
        match self.kind_of(destination) {
            Some(DestinationKind::Queue) => Ok(vec![(destination.to_string(), true)]),
            Some(DestinationKind::Topic) => Ok(self.topics[destination]
                .iter()
                .filter_map(|queue| {
                    self.queues
                        .get(queue)
                        .map(|state| (queue.clone(), state.is_durable()))
                })
                .collect()),
            None => Err(MessagingError::NotStarted(destination.to_string())),
        }
    }

    /// The queue a consumer of `destination` reads: the queue itself, or its own subscription
    /// to the topic (created if new, which the second value says).
    fn queue_for(
        &mut self,
        key: ConsumerKey,
        destination: &str,
        client_id: Option<&str>,
    ) -> Result<(String, bool), MessagingError> {
        match self.kind_of(destination) {
            Some(DestinationKind::Queue) => Ok((destination.to_string(), false)),
            Some(DestinationKind::Topic) => {
                let (queue, durable) = match client_id {
                    // Its queue's name must not pass for a bridge's.
                    Some(client) if client.is_empty() || client.contains(['#', '@']) => {
                        return Err(MessagingError::BadClientId(client.to_string()));
                    }
                    Some(client) => (format!("{destination}@{client}"), true),
                    None => (format!("{destination}#{}.{}", key.0, key.1), false),
                };
                if self.queues.contains_key(&queue) {
                    return Ok((queue, false));
                }
                let role = QueueRole::Subscription {
                    topic: destination.to_string(),
                    durable,
                };
                self.queues.insert(queue.clone(), QueueState::new(role));
                self.topics
                    .entry(destination.to_string())
                    .or_default()
                    .push(queue.clone());
                Ok((queue, true))
            }
            None => Err(MessagingError::NotStarted(destination.to_string())),
        }
    }

    /// Removes the subscription `queue` if it is not durable and has no consumer left.
    fn drop_unused_subscription(&mut self, queue: &str) {
        let Some(state) = self.queues.get(queue) else {
            return;
        };
        if let QueueRole::Subscription {
            topic,
            durable: false,
        } = &state.role
            && state.consumer_count() == 0
        {
            if let Some(subscriptions) = self.topics.get_mut(topic) {
                subscriptions.retain(|subscription| subscription != queue);
            }
            self.queues.remove(queue);
        }
    }

    /// Removes a consumer, and its subscription if that was not durable.
    fn remove_consumer(&mut self, key: ConsumerKey) -> Option<Consumer> {
        let consumer = self.consumers.remove(&key)?;
        let Some(queue) = self.queues.get_mut(&consumer.queue) else {
            return Some(consumer);
        };
        queue.remove_consumer(key);
        if let QueueRole::Subscription {
            topic,
            durable: false,
        } = &queue.role
        {
            let topic = topic.clone();
            self.queues.remove(&consumer.queue);
            if let Some(subscriptions) = self.topics.get_mut(&topic) {
                subscriptions.retain(|queue| *queue != consumer.queue);
            }
        }
        Some(consumer)
    }

    /// Takes a delivery the app on `connection` answered, giving its consumer the credit back.
    fn take_in_flight(&mut self, connection: u64, delivery: u64) -> Option<InFlight> {
        if self.in_flight.get(&delivery)?.consumer.0 != connection {
            return None;
        }
        let in_flight = self.in_flight.remove(&delivery)?;
        if let Some(consumer) = self.consumers.get_mut(&in_flight.consumer) {
            consumer.credit += 1;
        }
        Some(in_flight)
    }
}

#[cfg(test)]
impl Broker {
    /// Opens the broker of `data_dir` again, once the last journal writer let go of the file.
    pub(crate) fn reopen(data_dir: &Path, node_name: &str) -> Broker {
        for _ in 0..100 {
            if let Ok(broker) = Broker::open(data_dir, node_name, 1024) {
                return broker;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Broker::open(data_dir, node_name, 1024).expect("the journal opens again")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use immutant_protocol::{DestinationKind, Header, Outgoing, PublishOptions};
    use tokio::sync::mpsc;

    use super::Broker;

    #[tokio::test]
    async fn a_received_message_no_one_takes_goes_back_to_its_queue() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(Broker::open(dir.path(), "one", 1024).unwrap());
        broker
            .start("/queue/a", DestinationKind::Queue)
            .await
            .unwrap();
        let (outbox, mut frames) = mpsc::unbounded_channel();
        broker.connect(1, outbox);
        broker
            .publish(
                1,
                "/queue/a",
                PublishOptions::default(),
                Bytes::from_static(b"1"),
            )
            .await
            .unwrap();
        broker
            .receive((1, 7), "/queue/a", None, None)
            .await
            .unwrap();
        let Some(Outgoing::Frame(frame)) = frames.recv().await else {
            panic!("a receipt")
        };
        let Header::Receipt {
            id: 7,
            delivery: Some(delivery),
            ..
        } = frame.header
        else {
            panic!("a receipt with its delivery: {:?}", frame.header)
        };
        let depth = |broker: &Broker| {
            broker
                .stats()
                .into_iter()
                .find(|q| q.name == "/queue/a")
                .unwrap()
                .depth
        };
        assert_eq!(depth(&broker), 0);
        broker.nack(1, delivery, "the receiver stopped waiting");
        assert_eq!(depth(&broker), 1, "back in line");
    }

    fn depth_of(broker: &Broker, queue: &str) -> usize {
        let stats = broker.stats();
        stats.into_iter().find(|q| q.name == queue).unwrap().depth
    }

    #[tokio::test]
    async fn a_deep_queue_stays_in_the_journal_and_is_delivered_whole_and_in_order() {
        use super::journal::PAGE_MESSAGES;
        let dir = tempfile::tempdir().unwrap();
        let deep = "/queue/deep";
        let total = 2 * PAGE_MESSAGES + 100;
        {
            let broker = Arc::new(Broker::open(dir.path(), "one", 1024).unwrap());
            broker.start(deep, DestinationKind::Queue).await.unwrap();
            let (outbox, _frames) = mpsc::unbounded_channel();
            broker.connect(1, outbox);
            // In batches that share commits, in order from batch to batch.
            for batch in (0..total).collect::<Vec<_>>().chunks(500) {
                let publishes = batch.iter().map(|n| {
                    let body = Bytes::from(n.to_string());
                    broker.publish(1, deep, PublishOptions::default(), body)
                });
                for published in futures_util::future::join_all(publishes).await {
                    published.unwrap();
                }
            }
            let state = broker.lock();
            let queue = &state.queues[deep];
            assert!(queue.paged.is_some(), "past a page, it pages");
            assert_eq!(queue.depth(), total);
        }
        // After a restart only the first page is read back; the rest is counted meanwhile.
        let broker = Broker::reopen(dir.path(), "one");
        for _ in 0..100 {
            if depth_of(&broker, deep) == total {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(depth_of(&broker, deep), total);
        let (outbox, mut frames) = mpsc::unbounded_channel();
        broker.connect(2, outbox);
        broker.listen((2, 1), deep, 64, None).await.unwrap();
        let mut got = Vec::new();
        while got.len() < total {
            let Some(Outgoing::Frame(frame)) = frames.recv().await else {
                panic!("a delivery")
            };
            let Header::Deliver { delivery, .. } = frame.header else {
                continue;
            };
            got.push(
                String::from_utf8_lossy(&frame.body)
                    .parse::<usize>()
                    .unwrap(),
            );
            broker.ack(2, delivery);
        }
        // Each batch's publishes were stored in any order among themselves, batch after batch.
        assert!(
            got.windows(2).all(|pair| pair[0] / 500 <= pair[1] / 500),
            "in the order they were published"
        );
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, (0..total).collect::<Vec<_>>(), "every one, once");
        assert_eq!(depth_of(&broker, deep), 0);
    }
}
