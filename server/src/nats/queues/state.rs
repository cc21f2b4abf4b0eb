//! What this node holds in memory of its messaging on JetStream, under one lock: the
//! destinations it knows, its apps' connections, their listeners and the deliveries they have
//! not answered, and its counts; and the bookkeeping on it (a delivery handed out, answered, or
//! orphaned by an app that went away), none of which talks to NATS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use immutant_protocol::{DestinationKind, Header, MessageHeader, Outbox};
use tokio::sync::Semaphore;

use super::PULL_EXPIRES;

use crate::vocabulary::messaging::{ConsumerKey, QueueStats, kind_name};
use immutant_foundation::shutdown::Shutdown;

/// A destination this node knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Known {
    pub(super) kind: DestinationKind,
}

/// A delivery an app of this node has not answered yet.
pub(super) struct InFlight {
    pub(super) connection: u64,
    pub(super) destination: String,
    pub(super) message: jetstream::Message,
    /// The listener's room, given back when it is answered.
    pub(super) room: Option<Arc<Semaphore>>,
}

impl InFlight {
    /// Gives the listener back the room this delivery took: it was answered.
    pub(super) fn give_room_back(&self) {
        if let Some(room) = &self.room {
            room.add_permits(1);
        }
    }
}

/// Counts of what this node did with a destination's messages.
#[derive(Default, Clone, Copy)]
pub(super) struct Counts {
    pub(super) published: u64,
    pub(super) delivered: u64,
    pub(super) redelivered: u64,
    pub(super) dead_lettered: u64,
    pub(super) expired: u64,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) known: HashMap<String, Known>,
    pub(super) outboxes: HashMap<u64, Outbox>,
    /// Each listener's pulling, stopped by dropping it.
    pub(super) listeners: HashMap<ConsumerKey, Listener>,
    pub(super) in_flight: HashMap<u64, InFlight>,
    pub(super) counts: HashMap<String, Counts>,
    /// What the streams held at the last look.
    pub(super) depths: HashMap<String, (usize, usize)>,
}

pub(super) struct Listener {
    pub(super) destination: String,
    pub(super) stop: Shutdown,
}

impl State {
    /// Forgets the app on `connection`: its listeners stop, and what it had not answered is
    /// given back, to be redelivered.
    pub(super) fn disconnect(&mut self, connection: u64) -> Vec<InFlight> {
        self.outboxes.remove(&connection);
        self.listeners.retain(|key, listener| {
            let keep = key.0 != connection;
            if !keep {
                listener.stop.cancel();
            }
            keep
        });
        let deliveries: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, in_flight)| in_flight.connection == connection)
            .map(|(delivery, _)| *delivery)
            .collect();
        deliveries
            .into_iter()
            .filter_map(|delivery| self.in_flight.remove(&delivery))
            .collect()
    }

    /// Puts `delivery` in flight for the consumer `key`, counted (as a redelivery too if the
    /// message was `delivered` before), and says what tells the app: a `deliver` to a listener,
    /// or a `receipt` to a receiver, whose pulling is done with.
    pub(super) fn hand_out(
        &mut self,
        key: ConsumerKey,
        delivery: u64,
        in_flight: InFlight,
        header: MessageHeader,
        delivered: u32,
        pulling: Pulling,
    ) -> Header {
        let counts = self
            .counts
            .entry(in_flight.destination.clone())
            .or_default();
        counts.delivered += 1;
        if delivered > 1 {
            counts.redelivered += 1;
        }
        self.in_flight.insert(delivery, in_flight);
        match pulling {
            Pulling::Listen => Header::Deliver {
                consumer: key.1,
                delivery,
                message: header,
            },
            Pulling::Receive { .. } => {
                self.listeners.remove(&key);
                Header::Receipt {
                    id: key.1,
                    message: Some(header),
                    delivery: Some(delivery),
                }
            }
        }
    }

    /// Takes a delivery the app on `connection` answered; none if it is not in flight to it.
    pub(super) fn take_in_flight(&mut self, connection: u64, delivery: u64) -> Option<InFlight> {
        match self.in_flight.get(&delivery) {
            Some(in_flight) if in_flight.connection == connection => {
                self.in_flight.remove(&delivery)
            }
            _ => None,
        }
    }

    /// What the management API shows of every destination this node knows.
    pub(super) fn stats(&self) -> Vec<QueueStats> {
        let mut stats: Vec<QueueStats> = self
            .known
            .iter()
            .map(|(name, known)| {
                let counts = self.counts.get(name).copied().unwrap_or_default();
                let (depth, in_flight) = self.depths.get(name).copied().unwrap_or_default();
                QueueStats {
                    name: name.clone(),
                    kind: kind_name(known.kind).to_string(),
                    depth: depth as u64,
                    in_flight: in_flight as u64,
                    consumers: self
                        .listeners
                        .values()
                        .filter(|listener| &listener.destination == name)
                        .count() as u64,
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
}

/// What a puller is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pulling {
    Listen,
    /// One message, by `deadline` if there is one.
    Receive {
        deadline: Option<tokio::time::Instant>,
    },
}

impl Pulling {
    /// How long the next pull waits for messages: none once a receive's deadline has passed
    /// at `now`.
    pub(super) fn expires(self, now: tokio::time::Instant) -> Option<Duration> {
        match self {
            Pulling::Receive {
                deadline: Some(deadline),
            } => {
                let left = deadline.saturating_duration_since(now);
                (!left.is_zero()).then(|| left.min(PULL_EXPIRES))
            }
            _ => Some(PULL_EXPIRES),
        }
    }
}
