//! Messaging on JetStream, with the embedded broker's semantics where JetStream allows them.
//!
//! - A queue is a stream with work-queue retention and file storage; every listener on every
//!   node pulls from one durable consumer of it (`workers`), so JetStream balances the
//!   messages across nodes. A listener keeps as many messages pulled ahead as its concurrency
//!   (waiting for room at the app, kept alive like those in flight), so that room is filled
//!   without a pull's round trip.
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
//!
//! # Where things are
//!
//! The files line up with the embedded engine's (`embedded/messaging/`), where the concept is
//! the same:
//!
//! - [`Queues`] (here) is one node's messaging on JetStream, and the timings it keeps.
//! - `ops.rs`: what the engine facade calls, the public operations (open, start, connect,
//!   publish, reply, listen, receive, unlisten, ack, nack, stats, close).
//! - `dispatch.rs`: pulling for each listener or receiver while it has room, handing what comes
//!   to the app, keeping deliveries in flight alive, and redelivering or dead-lettering a failed
//!   one.
//! - `state.rs`: what this node holds in memory (the destinations it knows, its apps'
//!   connections, listeners and deliveries in flight, its counts), and the bookkeeping on it.
//! - `streams.rs`: what a destination is in JetStream: its stream and subject, the consumer its
//!   listeners pull from, and the subjects replies travel on.
//! - `message.rs`: what a message carries besides its payload, in its NATS header, and
//!   publishing it to a stream.
//!
//! Unlike the embedded engine, nothing here is stored by this node: JetStream keeps the
//! messages, and the state under the lock is what this node's apps are doing with them.

mod dispatch;
mod message;
mod ops;
mod state;
mod streams;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::Nats;
use crate::vocabulary::messaging::MessagingError;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;
use state::{Counts, State};

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
/// Room the NATS headers take in a message, besides its payload.
const HEADER_ROOM: u64 = 64 * 1024;

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
    /// Changes what this node counted of `destination`'s messages.
    fn count(&self, destination: &str, change: impl FnOnce(&mut Counts)) {
        change(
            lock(&self.state)
                .counts
                .entry(destination.to_string())
                .or_default(),
        );
    }
}

/// A refusal that comes from NATS rather than from what the app asked.
fn engine_error(message: String) -> MessagingError {
    MessagingError::Engine(message)
}
