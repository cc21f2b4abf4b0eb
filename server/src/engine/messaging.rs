//! Messaging on whichever engine runs: the embedded broker (each node's journal, forwarding
//! over the mesh) or queues on NATS JetStream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use immutant_protocol::{DestinationKind, Outbox, PublishOptions};

use crate::embedded::messaging::Broker;
use crate::nats::queues::Queues;
use crate::vocabulary::messaging::{ConsumerKey, MessagingError, QueueStats};

/// A node's messaging, on whichever engine it runs.
#[derive(Clone)]
pub enum Messaging {
    Embedded(Arc<Broker>),
    Nats(Arc<Queues>),
}

impl Messaging {
    /// The largest payload a message may carry.
    pub fn max_message_size(&self) -> u64 {
        match self {
            Messaging::Embedded(broker) => broker.max_message_size(),
            Messaging::Nats(queues) => queues.max_message_size(),
        }
    }

    /// A number for a new app connection.
    pub fn next_connection(&self) -> u64 {
        match self {
            Messaging::Embedded(broker) => broker.next_connection(),
            Messaging::Nats(queues) => queues.next_connection(),
        }
    }

    /// Registers an app's connection, so that deliveries and replies can reach it.
    pub fn connect(&self, connection: u64, outbox: Outbox) {
        match self {
            Messaging::Embedded(broker) => broker.connect(connection, outbox),
            Messaging::Nats(queues) => queues.connect(connection, outbox),
        }
    }

    /// Forgets an app's connection: its consumers go, and what it had not acknowledged is
    /// redelivered.
    pub fn disconnect(&self, connection: u64) {
        match self {
            Messaging::Embedded(broker) => broker.disconnect(connection),
            Messaging::Nats(queues) => queues.disconnect(connection),
        }
    }

    /// Starts a destination; starting one that exists does nothing.
    pub async fn start(&self, name: &str, kind: DestinationKind) -> Result<(), MessagingError> {
        match self {
            Messaging::Embedded(broker) => broker.start(name, kind).await,
            Messaging::Nats(queues) => queues.start(name, kind).await,
        }
    }

    /// Publishes a message from the app on `connection`; a persistent one is kept when this
    /// returns. One made under a singleton lease is not tried after the lease's deadline
    /// `fence_ns` (on the boot clock).
    pub async fn publish(
        &self,
        connection: u64,
        destination: &str,
        options: PublishOptions,
        body: Bytes,
        fence_ns: Option<u64>,
    ) -> Result<(), MessagingError> {
        match self {
            // The journal commits at once, or fails: nothing is tried later.
            Messaging::Embedded(broker) => {
                broker.publish(connection, destination, options, body).await
            }
            Messaging::Nats(queues) => {
                queues
                    .publish(connection, destination, options, body, fence_ns)
                    .await
            }
        }
    }

    /// Registers a listener on a queue, or a subscriber to a topic (durable with a client id).
    pub async fn listen(
        &self,
        key: ConsumerKey,
        destination: &str,
        concurrency: u32,
        client_id: Option<&str>,
    ) -> Result<(), MessagingError> {
        match self {
            Messaging::Embedded(broker) => {
                broker
                    .listen(key, destination, concurrency, client_id)
                    .await
            }
            Messaging::Nats(queues) => {
                queues
                    .listen(key, destination, concurrency, client_id)
                    .await
            }
        }
    }

    /// Takes one message for the request `key.1`, answered with a `receipt`.
    pub async fn receive(
        &self,
        key: ConsumerKey,
        destination: &str,
        timeout: Option<Duration>,
        client_id: Option<&str>,
    ) -> Result<(), MessagingError> {
        match self {
            Messaging::Embedded(broker) => {
                broker.receive(key, destination, timeout, client_id).await
            }
            Messaging::Nats(queues) => queues.receive(key, destination, timeout, client_id).await,
        }
    }

    /// Removes a consumer.
    pub fn unlisten(&self, key: ConsumerKey) {
        match self {
            Messaging::Embedded(broker) => broker.unlisten(key),
            Messaging::Nats(queues) => queues.unlisten(key),
        }
    }

    /// The app's handler succeeded.
    pub fn ack(&self, connection: u64, delivery: u64) {
        match self {
            Messaging::Embedded(broker) => broker.ack(connection, delivery),
            Messaging::Nats(queues) => queues.ack(connection, delivery),
        }
    }

    /// The app's handler failed: the message is redelivered, or dead-lettered.
    pub fn nack(&self, connection: u64, delivery: u64, reason: &str) {
        match self {
            Messaging::Embedded(broker) => broker.nack(connection, delivery, reason),
            Messaging::Nats(queues) => queues.nack(connection, delivery, reason),
        }
    }

    /// What the management API shows of every queue.
    pub fn stats(&self) -> Vec<QueueStats> {
        match self {
            Messaging::Embedded(broker) => broker.stats(),
            Messaging::Nats(queues) => queues.stats(),
        }
    }

    /// Finishes what was sent: the node is stopping.
    pub async fn close(&self) {
        match self {
            Messaging::Embedded(broker) => broker.close().await,
            Messaging::Nats(queues) => queues.close().await,
        }
    }
}
