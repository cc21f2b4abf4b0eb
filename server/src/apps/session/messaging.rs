//! The app's messaging: destinations started, messages published (fenced when made under a
//! singleton lease), consumers registered and removed, deliveries acknowledged.

use std::time::Duration;

use bytes::Bytes;
use immutant_protocol::{DestinationKind, PublishOptions};

use super::{Session, answer, refusal};

impl Session {
    pub(super) async fn start(&self, id: u64, destination: &str, kind: DestinationKind) {
        let started = self.context.engine.messaging.start(destination, kind).await;
        self.answer(id, started);
    }

    pub(super) fn publish(
        &self,
        id: u64,
        destination: String,
        options: PublishOptions,
        epoch: Option<u64>,
        body: Bytes,
    ) {
        let fence = match self.fenced(epoch) {
            Ok(fence) => fence,
            Err(stale) => return self.send(refusal(id, stale)),
        };
        // Each publish waits for the journal on a task of its own, so that publishes arriving
        // together share one commit.
        let messaging = self.context.engine.messaging.clone();
        let outbox = self.outbox.clone();
        let connection = self.connection;
        tokio::spawn(async move {
            let published = messaging
                .publish(connection, &destination, options, body, fence)
                .await;
            let _ = outbox.send(answer(id, published).into());
        });
    }

    pub(super) async fn listen(
        &self,
        id: u64,
        destination: &str,
        concurrency: u32,
        client_id: Option<&str>,
    ) {
        let listening = self
            .context
            .engine
            .messaging
            .listen((self.connection, id), destination, concurrency, client_id)
            .await;
        self.answer(id, listening);
    }

    pub(super) fn unlisten(&self, id: u64, consumer: u64) {
        self.context
            .engine
            .messaging
            .unlisten((self.connection, consumer));
        self.answer(id, Ok(()));
    }

    pub(super) fn ack(&self, delivery: u64) {
        self.context.engine.messaging.ack(self.connection, delivery);
    }

    pub(super) fn nack(&self, delivery: u64, reason: &str) {
        self.context
            .engine
            .messaging
            .nack(self.connection, delivery, reason);
    }

    /// Takes one message for the request `id`; the engine answers with a receipt, or this with
    /// a refusal.
    pub(super) async fn receive(
        &self,
        id: u64,
        destination: &str,
        timeout_ms: Option<u64>,
        client_id: Option<&str>,
    ) {
        let timeout = timeout_ms.map(Duration::from_millis);
        let receiving = self
            .context
            .engine
            .messaging
            .receive((self.connection, id), destination, timeout, client_id)
            .await;
        if receiving.is_err() {
            self.answer(id, receiving);
        }
    }
}
