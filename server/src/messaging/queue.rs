//! One queue's state: the messages waiting, by priority then age; its consumers, served round
//! robin; and its counters.

use std::collections::BTreeMap;

use serde::Serialize;

use super::message::Message;

/// Who a consumer is: its app connection and its id there.
pub type ConsumerKey = (u64, u64);

/// What a queue is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRole {
    /// A queue an app started.
    Queue,
    /// A topic's subscription; durable ones outlive their subscriber.
    Subscription { topic: String, durable: bool },
}

/// A queue's messages and consumers.
#[derive(Debug)]
pub struct QueueState {
    pub role: QueueRole,
    /// Ready messages by (9 - priority, sequence): the highest priority first, then the oldest.
    ready: BTreeMap<(u8, u64), Message>,
    consumers: Vec<ConsumerKey>,
    next_consumer: usize,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub expired: u64,
}

/// What the management API shows of a queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub name: String,
    pub kind: &'static str,
    pub depth: usize,
    pub in_flight: usize,
    pub consumers: usize,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub expired: u64,
}

impl QueueState {
    pub fn new(role: QueueRole) -> Self {
        QueueState {
            role,
            ready: BTreeMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            delivered: 0,
            dead_lettered: 0,
            expired: 0,
        }
    }

    /// Whether messages published here go to the journal (if they are persistent).
    pub fn is_durable(&self) -> bool {
        match &self.role {
            QueueRole::Queue => true,
            QueueRole::Subscription { durable, .. } => *durable,
        }
    }

    /// Puts a message in line: a new one, or one coming back for redelivery (which keeps its
    /// place, ahead of younger ones).
    pub fn enqueue(&mut self, message: Message) {
        self.ready.insert(
            (9 - message.header.priority.min(9), message.header.id),
            message,
        );
    }

    /// The next message in line, left there.
    pub fn peek(&self) -> Option<&Message> {
        self.ready.first_key_value().map(|(_, message)| message)
    }

    /// Lets the messages other nodes forwarded here move on to nodes with consumers, as if they
    /// had been published here (redistribution, once this node's consumers are gone).
    pub fn release_forwarded(&mut self) -> usize {
        let mut released = 0;
        for message in self.ready.values_mut().filter(|message| message.forwarded) {
            message.forwarded = false;
            released += 1;
        }
        released
    }

    /// Whether any of the consumers is one of `consumers`.
    pub fn has_consumer_in(&self, consumers: impl Fn(&ConsumerKey) -> bool) -> bool {
        self.consumers.iter().any(consumers)
    }

    /// Takes the next message in line.
    pub fn next_message(&mut self) -> Option<Message> {
        self.ready.pop_first().map(|(_, message)| message)
    }

    pub fn depth(&self) -> usize {
        self.ready.len()
    }

    pub fn add_consumer(&mut self, key: ConsumerKey) {
        self.consumers.push(key);
    }

    pub fn remove_consumer(&mut self, key: ConsumerKey) {
        self.consumers.retain(|consumer| *consumer != key);
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// The consumers in round-robin order, starting after the one served last.
    pub fn consumers_in_turn(&self) -> impl Iterator<Item = ConsumerKey> + '_ {
        let count = self.consumers.len();
        (0..count).map(move |step| self.consumers[(self.next_consumer + step) % count])
    }

    /// Notes that `key` was just served, so the next turn starts after it.
    pub fn served(&mut self, key: ConsumerKey) {
        if let Some(position) = self.consumers.iter().position(|consumer| *consumer == key) {
            self.next_consumer = position + 1;
        }
    }
}
