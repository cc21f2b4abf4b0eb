//! One queue's state: the messages waiting, by priority then age; its consumers, served round
//! robin; and its counters. A queue holds at most a page of messages in memory: beyond that its
//! persistent messages stay in the journal only ([`Paged`]) and are read back a page at a time
//! as it drains, in the order they were published (priorities order each page, not the whole
//! queue).

use std::collections::BTreeMap;

use super::journal::{PAGE_BYTES, PAGE_MESSAGES};
use super::message::Message;
use crate::vocabulary::messaging::ConsumerKey;

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
    /// The bytes of their bodies.
    ready_bytes: usize,
    /// Its persistent messages that are in the journal only, if any.
    pub paged: Option<Paged>,
    /// The highest sequence number it ever held in memory: paging starts past it, so that no
    /// page read brings back one it held (waiting, in flight or done).
    highest_in_memory: u64,
    consumers: Vec<ConsumerKey>,
    next_consumer: usize,
    /// Messages put in it: published to it, or dead-lettered to it.
    pub published: u64,
    pub delivered: u64,
    /// Deliveries that failed and were put back in line.
    pub redelivered: u64,
    pub dead_lettered: u64,
    pub expired: u64,
}

/// A queue's persistent messages in the journal only: those from sequence number `from` on.
#[derive(Debug, Clone, Copy)]
pub struct Paged {
    pub from: u64,
    /// How many, as far as known: the count of what the journal held at boot arrives later
    /// (and pages may be read back before it does, hence signed).
    pub count: i64,
    /// Whether that count is still to come.
    pub counting: bool,
}

/// A page read back from the journal, for [`QueueState::take_page`].
pub struct TakenPage {
    pub records: usize,
    pub messages: Vec<Message>,
    pub through: u64,
    pub more: bool,
}

impl QueueState {
    pub fn new(role: QueueRole) -> Self {
        QueueState {
            role,
            ready: BTreeMap::new(),
            ready_bytes: 0,
            paged: None,
            highest_in_memory: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            published: 0,
            delivered: 0,
            redelivered: 0,
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
        self.ready_bytes += message.body.len();
        self.highest_in_memory = self.highest_in_memory.max(message.header.id);
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
        let (_, message) = self.ready.pop_first()?;
        self.ready_bytes -= message.body.len();
        Some(message)
    }

    /// The messages waiting, in memory and in the journal only.
    pub fn depth(&self) -> usize {
        self.ready.len() + self.paged.map_or(0, |paged| paged.count.max(0) as usize)
    }

    /// Admits a message just stored (in the journal if `journaled`): true if it goes in line
    /// in memory; false if it stays in the journal only, past what memory holds (the queue
    /// starts paging if it did not yet). No page read has read it: reads stop short of a
    /// message being stored.
    pub fn admit(&mut self, message: &Message, journaled: bool) -> bool {
        self.published += 1;
        let seq = message.header.id;
        if !journaled {
            return true;
        }
        if self.paged.is_none()
            && (self.ready.len() >= PAGE_MESSAGES || self.ready_bytes >= PAGE_BYTES)
        {
            self.paged = Some(Paged {
                from: seq.max(self.highest_in_memory + 1),
                count: 0,
                counting: false,
            });
        }
        match &mut self.paged {
            Some(paged) if seq >= paged.from => {
                paged.count += 1;
                false
            }
            _ => true,
        }
    }

    /// Where to read its next page from, if it pages and has room for one now.
    pub fn wants_page(&self) -> Option<u64> {
        let room = self.ready.len() < PAGE_MESSAGES / 2 && self.ready_bytes < PAGE_BYTES / 2;
        self.paged.filter(|_| room).map(|paged| paged.from)
    }

    /// Puts in line a page read back from the journal: `records` read (`messages`, those of
    /// them that could be decoded) up to sequence number `through`; `more` if the journal may
    /// hold more after it. At boot, the queue's first page (`counting`: the rest is being
    /// counted).
    pub fn take_page(&mut self, page: TakenPage) {
        let TakenPage {
            records,
            messages,
            through,
            more,
        } = page;
        for message in messages {
            self.enqueue(message);
        }
        self.paged = match (self.paged, more) {
            (Some(paged), true) => Some(Paged {
                from: through + 1,
                count: paged.count - records as i64,
                ..paged
            }),
            (None, true) => Some(Paged {
                from: through + 1,
                count: 0,
                counting: true,
            }),
            (_, false) => None,
        };
        // Every message it paged is read back (the count is exact once the boot count is in).
        if self
            .paged
            .is_some_and(|paged| paged.count <= 0 && !paged.counting)
        {
            self.paged = None;
        }
    }

    /// Whether no message waits in memory.
    pub fn ready_is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Adds the count, made after boot, of what the journal held beyond its first page.
    pub fn counted(&mut self, count: u64) {
        if let Some(paged) = &mut self.paged
            && paged.counting
        {
            paged.count += count as i64;
            paged.counting = false;
        }
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
