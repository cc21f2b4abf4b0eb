//! Handing messages out: each listener or receiver pulls from its JetStream consumer while it
//! has room (its concurrency less what it has in flight), and what comes is handed to its app,
//! or dropped if it expired, or moved to the dead letter queue if it failed its tenth delivery;
//! what is in flight is kept alive in JetStream until the app answers, and a failed one is
//! redelivered at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use immutant_protocol::{DestinationKind, Frame, Header, MessageHeader};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::message::{Carried, carried, message_header, publish_once};
use super::state::{InFlight, Pulling};
use super::{PROGRESS_INTERVAL, Queues};
use crate::vocabulary::messaging::{ConsumerKey, DEAD_LETTER_QUEUE, MAX_DELIVERIES, kept_reason};
use immutant_foundation::clock::now_ms;
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;

/// Takes all the room a puller has left, besides the place it waited for: how many messages it
/// asks for, its concurrency less what it has in flight.
pub(super) fn take_room(room: &Semaphore) -> usize {
    let mut wanted = 1;
    while let Ok(more) = room.try_acquire() {
        more.forget();
        wanted += 1;
    }
    wanted
}

/// Whether a message whose delivery failed `failures` times goes to the dead letter queue
/// rather than back in line.
pub(super) fn dead_letters(failures: u32) -> bool {
    failures >= MAX_DELIVERIES
}

impl Queues {
    /// Pulls messages for one listener or receiver while it has room, until it is stopped.
    pub(super) async fn pull(
        self: Arc<Self>,
        key: ConsumerKey,
        (destination, client_id): (String, Option<String>),
        mut consumer: PullConsumer,
        room: Arc<Semaphore>,
        stop: Shutdown,
        pulling: Pulling,
    ) {
        let mut failing = false;
        loop {
            let permit = tokio::select! {
                permit = room.clone().acquire_many_owned(1) => permit,
                _ = stop.cancelled() => return,
                _ = self.shutdown.cancelled() => return,
            };
            let Ok(permit) = permit else { return };
            permit.forget();
            let wanted = take_room(&room);
            let Some(expires) = pulling.expires(tokio::time::Instant::now()) else {
                self.end_receive(key, None);
                return;
            };
            let batch = consumer
                .batch()
                .max_messages(wanted)
                .expires(expires)
                .messages()
                .await;
            let (mut taken, mut failed) = (0, None);
            match batch {
                Ok(mut batch) => loop {
                    let next = tokio::select! {
                        next = batch.next() => next,
                        _ = stop.cancelled() => None,
                    };
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => {
                            failed = Some(error.to_string());
                            break;
                        }
                        None => break,
                    };
                    let room = match pulling {
                        Pulling::Listen => Some(room.clone()),
                        Pulling::Receive { .. } => None,
                    };
                    if self.deliver(key, &destination, message, room, pulling) {
                        taken += 1;
                    }
                },
                Err(error) => failed = Some(error.to_string()),
            }
            room.add_permits(wanted - taken.min(wanted));
            if let Some(error) = failed {
                // The consumer may be gone (an ephemeral one forgotten while this node was cut
                // off, or lost with its server): made again after a pause.
                if !failing {
                    warn!("Cannot pull from {destination} in NATS ({error}); trying again");
                }
                failing = true;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                // Made again patiently, but no longer than the pull may last.
                let lapsed = async {
                    match pulling {
                        Pulling::Receive {
                            deadline: Some(deadline),
                        } => tokio::time::sleep_until(deadline).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    again = self.consumer(key, &destination, client_id.as_deref()) => {
                        if let Ok(again) = again {
                            consumer = again;
                        }
                    }
                    _ = lapsed => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            if failing {
                info!("Pulling from {destination} in NATS again");
                failing = false;
            }
            if matches!(pulling, Pulling::Receive { .. }) && taken > 0 {
                return;
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// Hands `message` to the app on `key.0`, or drops it if it expired, or dead-letters it if
    /// it was delivered too often: whether the app got it.
    fn deliver(
        &self,
        key: ConsumerKey,
        destination: &str,
        message: jetstream::Message,
        room: Option<Arc<Semaphore>>,
        pulling: Pulling,
    ) -> bool {
        let Ok(info) = message.info() else {
            return false;
        };
        let (sequence, delivered) = (info.stream_sequence, info.delivered.max(1) as u32);
        let Some(carried) = carried(message.headers.as_ref()) else {
            warn!("A message on {destination} has no Immutant header; dropping it");
            tokio::spawn(async move { message.ack_with(AckKind::Term).await });
            return false;
        };
        if carried.is_expired(now_ms()) {
            self.count(destination, |counts| counts.expired += 1);
            tokio::spawn(async move { message.ack().await });
            return false;
        }
        // Each earlier delivery failed, or went unanswered (its node died, or moving it to the
        // DLQ did not land): as many failures.
        if dead_letters(delivered - 1) {
            let reason = format!("it was delivered {MAX_DELIVERIES} times without an answer");
            self.dead_letter(destination.to_string(), message, carried, reason);
            return false;
        }
        let delivery = self.next_delivery.fetch_add(1, Ordering::Relaxed);
        let header = message_header(sequence, destination, &carried, delivered);
        let payload = message.payload.clone();
        let mut state = lock(&self.state);
        let Some(outbox) = state.outboxes.get(&key.0).cloned() else {
            drop(state);
            tokio::spawn(async move { message.ack_with(AckKind::Nak(None)).await });
            return false;
        };
        let in_flight = InFlight {
            connection: key.0,
            destination: destination.to_string(),
            message,
            room,
        };
        let frame_header = state.hand_out(key, delivery, in_flight, header, delivered, pulling);
        let _ = outbox.send(Frame::with_body(frame_header, payload).into());
        true
    }

    /// A receive's time is up with nothing taken: answered with none.
    fn end_receive(&self, key: ConsumerKey, message: Option<MessageHeader>) {
        let mut state = lock(&self.state);
        state.listeners.remove(&key);
        if let Some(outbox) = state.outboxes.get(&key.0) {
            let receipt = Header::Receipt {
                id: key.1,
                message,
                delivery: None,
            };
            let _ = outbox.send(Frame::new(receipt).into());
        }
    }

    /// A delivery failed: redelivered at once, or dead-lettered after its tenth.
    pub(super) fn failed(&self, in_flight: InFlight, reason: &str) {
        in_flight.give_room_back();
        let delivered = in_flight
            .message
            .info()
            .map(|info| info.delivered.max(1) as u32)
            .unwrap_or(1);
        let carried = carried(in_flight.message.headers.as_ref());
        match carried {
            Some(carried) if dead_letters(delivered) => {
                self.dead_letter(
                    in_flight.destination,
                    in_flight.message,
                    carried,
                    kept_reason(reason).to_string(),
                );
            }
            _ => {
                tokio::spawn(async move { in_flight.message.ack_with(AckKind::Nak(None)).await });
            }
        }
    }

    /// Moves `message` to the DLQ: published there with an id made of where it was (so that
    /// doing it twice puts it there once), then acknowledged where it was.
    fn dead_letter(
        &self,
        destination: String,
        message: jetstream::Message,
        mut carried: Carried,
        reason: String,
    ) {
        warn!(
            "a message on {destination} failed {MAX_DELIVERIES} deliveries, moving it to {DEAD_LETTER_QUEUE}: {reason}"
        );
        self.count(&destination, |counts| counts.dead_lettered += 1);
        carried.mark_dead_letter(&destination, reason);
        let id = message
            .info()
            .map(|info| format!("dlq-{}-{}", info.stream, info.stream_sequence))
            .unwrap_or_default();
        let subject = self.subject_of(DEAD_LETTER_QUEUE, DestinationKind::Queue);
        let nats = self.nats.clone();
        // Not acknowledged if the DLQ did not take it: it comes back, and goes again.
        tokio::spawn(async move {
            let body = message.payload.clone();
            if publish_once(&nats, &subject, &carried, body, &id)
                .await
                .is_ok()
            {
                let _ = message.ack().await;
            }
        });
    }

    /// Tells JetStream every delivery still in flight here is being worked on.
    pub(super) async fn keep_in_flight_alive(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(PROGRESS_INTERVAL);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let replies: Vec<_> = lock(&self.state)
                .in_flight
                .values()
                .filter_map(|in_flight| in_flight.message.reply.clone())
                .collect();
            for reply in replies {
                let _ = self
                    .nats
                    .client
                    .publish(reply, Bytes::from_static(b"+WPI"))
                    .await;
            }
        }
    }
}
