//! The broker's operations, as the engine facade calls them: open and close, start a
//! destination, connect an app, publish, reply, listen, receive, acknowledge, and the stats.
//! Each takes the state's lock for a moment, and waits for the journal outside it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use immutant_foundation::clock::now_ms;
use immutant_protocol::{DestinationKind, Frame, Header, MessageHeader, Outbox, PublishOptions};

use super::journal::{Journal, JournalOp};
use super::queue::{QueueRole, QueueState};
use super::state::{Consumer, Sink, State};
use super::{Broker, Message, Reply, send};
use crate::vocabulary::messaging::{
    ConsumerKey, DEAD_LETTER_QUEUE, MessagingError, QueueStats, check_publish, expires_at_ms,
    kept_reason, kind_name,
};

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

    /// Whether each checkpoint of the journal also makes reopening it after a crash quick (see
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
            expires_at_ms: expires_at_ms(options.ttl_ms, published_at_ms),
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
    pub(super) async fn store(
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
        let reason = kept_reason(reason);
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
                }
                .to_string(),
                depth: queue.depth() as u64,
                in_flight: state
                    .in_flight
                    .values()
                    .filter(|f| &f.queue == name)
                    .count() as u64,
                consumers: queue.consumer_count() as u64,
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
}
