//! The embedded engine's messaging, with HornetQ's semantics: queues and topics, persistent
//! messages on disk before a publish returns ([`journal`]), delivery to consumers round robin
//! with acknowledgement, redelivery when a handler fails or its app dies, and `/queue/DLQ` after
//! 10 deliveries.
//!
//! A topic is a set of subscription queues, one per subscriber: durable ones (with a client id,
//! `<topic>@<client>`) are journaled and outlive their subscriber; the others
//! (`<topic>#<connection>.<consumer>`) go away with it. Everything below is about queues, then:
//! a topic only decides which queues a message goes to.
//!
//! # Where things are
//!
//! - [`Broker`] (here) is one node's messaging: the journal, and the state behind one lock.
//! - `ops.rs`: what the engine facade calls, the broker's public operations (open, start,
//!   connect, publish, reply, listen, receive, unlisten, ack, nack, stats, close).
//! - `dispatch.rs`: handing a queue's messages to its consumers while they have credit,
//!   reading the journal's next page as it drains, and putting a failed message back in line or
//!   moving it to the dead letter queue.
//! - `state.rs`: the state under the lock (queues, topics, consumers, in-flight deliveries, the
//!   apps' connections), how a destination resolves to queues, and its restore from the journal.
//! - `queue.rs`: one queue (its messages by priority then age, its consumers' turns, its
//!   counters, its paging); `message.rs`: a message and its journal record; `journal/`: the
//!   journal on disk (a write-ahead log, and the database behind it); `bridge.rs`: messaging
//!   across the cluster (another node's consumers are a bridge here, one more consumer in the
//!   round robin).
//!
//! # A message's life
//!
//! [`Broker::publish`] checks the message, resolves its destination to queues, and (if it is
//! persistent) commits it to the journal of each durable one before it returns; then it is in
//! line, and `dispatch` hands it to the next consumer with credit, as a `deliver`
//! frame (or a `receipt`, for a `receive`), in flight under a delivery number. The app answers
//! with [`Broker::ack`] (done: removed from the journal) or [`Broker::nack`] (back in line, or to
//! the dead letter queue after its tenth delivery); an app that goes away
//! ([`Broker::disconnect`]) has what it held put back the same way. Replies to requests
//! (`@<node>/<connection>`) go straight to the requester, never through a queue.
//!
//! # Locking
//!
//! The whole state is behind one mutex, taken for a few map operations at a time and never
//! across an `await`: the journal's commits are awaited outside it, and what must not be read
//! back from the journal before it is there is marked as being stored meanwhile.

mod bridge;
mod dispatch;
mod forwards;
pub mod journal;
mod message;
mod ops;
mod queue;
mod state;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use immutant_protocol::{Frame, Outbox};

pub use forwards::{Forward, Reply};
use journal::Journal;
pub use message::Message;
use state::State;

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

impl Broker {
    fn lock(&self) -> MutexGuard<'_, State> {
        immutant_foundation::sync::lock(&self.state)
    }
}
