//! The broker's state under its one lock: the queues and topics, the consumers and what each
//! has in flight, the apps' connections; how a destination's name resolves to the queues a
//! message goes to or a consumer reads; and how it is all put back from the journal at boot.

use std::collections::HashMap;

use immutant_protocol::{DestinationKind, Outbox};
use tokio::sync::mpsc;
use tracing::warn;

use super::forwards::{Forward, Reply, Seen};
use super::journal::{PageRead, Recovered};
use super::message::Message;
use super::queue::{QueueRole, QueueState, TakenPage};
use crate::vocabulary::messaging::{ConsumerKey, MessagingError};

/// Everything the broker holds in memory.
#[derive(Default)]
pub(super) struct State {
    pub(super) queues: HashMap<String, QueueState>,
    /// Each topic's subscription queues.
    pub(super) topics: HashMap<String, Vec<String>>,
    pub(super) consumers: HashMap<ConsumerKey, Consumer>,
    pub(super) in_flight: HashMap<u64, InFlight>,
    pub(super) outboxes: HashMap<u64, Outbox>,
    pub(super) next_delivery: u64,
    /// What other nodes forwarded here, by origin, so that a retried forward is taken once.
    pub(super) seen: Seen,
    /// When each queue last had a consumer of an app of this node, while it has none.
    pub(super) unattended_since: HashMap<String, std::time::Instant>,
    /// Where replies for apps on other nodes go (the cluster's links), in a cluster.
    pub(super) replies: Option<mpsc::UnboundedSender<Reply>>,
    /// How many messages each queue that pages held in the journal at boot beyond its first
    /// page, as the count made after boot comes in (none in a state not opened from a journal).
    pub(super) counted: Option<std::sync::mpsc::Receiver<(String, u64)>>,
    /// The journaled messages being stored now, by sequence number: page reads stop short of
    /// the lowest, which may land in the journal after higher ones.
    pub(super) storing: std::collections::BTreeSet<u64>,
    /// Queues whose last page read stopped short of a message being stored: read again once
    /// it is.
    pub(super) starved: std::collections::HashSet<String>,
}

/// Where a consumer's messages go.
pub(super) enum Sink {
    /// An app of this node, over its socket.
    App(Outbox),
    /// Another node, over the link to it: a bridge that forwards what the round robin gives it.
    Peer(mpsc::UnboundedSender<Forward>),
}

pub(super) struct Consumer {
    pub(super) queue: String,
    pub(super) sink: Sink,
    /// How many more messages it may be handed before it acknowledges some.
    pub(super) credit: u32,
    /// For a `receive`: the request to answer with the one message it takes.
    pub(super) receive: Option<u64>,
}

pub(super) struct InFlight {
    pub(super) queue: String,
    pub(super) consumer: ConsumerKey,
    pub(super) message: Message,
}

/// A page read from `queue`'s journal from sequence number `from`, decoded; a damaged record is
/// skipped, and said.
pub(super) fn decode_page(queue: &str, page: PageRead, from: u64) -> TakenPage {
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
    TakenPage {
        records,
        messages,
        through,
        more: page.more,
    }
}

impl State {
    /// Puts back what the journal held.
    pub(super) fn restore(&mut self, recovered: Recovered) {
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
    pub(super) fn take_counts(&mut self) {
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

    pub(super) fn kind_of(&self, name: &str) -> Option<DestinationKind> {
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
    pub(super) fn targets(&self, destination: &str) -> Result<Vec<(String, bool)>, MessagingError> {
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
    pub(super) fn queue_for(
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
    pub(super) fn drop_unused_subscription(&mut self, queue: &str) {
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
    pub(super) fn remove_consumer(&mut self, key: ConsumerKey) -> Option<Consumer> {
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
    pub(super) fn take_in_flight(&mut self, connection: u64, delivery: u64) -> Option<InFlight> {
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
