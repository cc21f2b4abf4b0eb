//! Handing messages out: each listener or receiver pulls from its JetStream consumer (a
//! listener as many ahead as its concurrency, waiting for room at the app), and what is handed
//! to its app is handed as room frees,
//! or dropped if it expired, or moved to the dead letter queue if it failed its tenth delivery;
//! what is in flight is kept alive in JetStream until the app answers, and a failed one is
//! redelivered at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
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

/// Whether a message whose delivery failed `failures` times goes to the dead letter queue
/// rather than back in line.
pub(super) fn dead_letters(failures: u32) -> bool {
    failures >= MAX_DELIVERIES
}

/// How many more messages a puller asks for: room for `concurrency` at the app and `ahead`
/// more pulled and waiting for room, less the `waiting` and `in_flight` ones it has; none while
/// less than half of `ahead` is free and some wait (one pull for a few messages, and the next
/// one out before the waiting ones run out).
pub(super) fn to_ask(concurrency: usize, ahead: usize, waiting: usize, in_flight: usize) -> usize {
    let free = (concurrency + ahead).saturating_sub(waiting + in_flight);
    if waiting == 0 || free >= ahead.div_ceil(2).max(1) {
        free
    } else {
        0
    }
}

impl Queues {
    /// Pulls messages for one listener or receiver until it is stopped (a receiver: until it
    /// took one, or its time is up). A listener keeps as many pulled ahead as it may have in
    /// flight, so that an answer's room is filled at once rather than after a pull's round
    /// trip; those waiting are kept alive in JetStream as deliveries in flight are, and given
    /// back (for other consumers at once) when it stops or a pull fails.
    pub(super) async fn pull(
        self: Arc<Self>,
        key: ConsumerKey,
        (destination, client_id): (String, Option<String>),
        mut consumer: PullConsumer,
        room: Arc<Semaphore>,
        stop: Shutdown,
        pulling: Pulling,
    ) {
        let concurrency = room.available_permits();
        let ahead = match pulling {
            Pulling::Listen => concurrency,
            Pulling::Receive { .. } => 0,
        };
        let mut waiting: VecDeque<jetstream::Message> = VecDeque::new();
        let mut batch: Option<Batch> = None;
        // Twice as often as deliveries in flight: a message may wait almost a tick before
        // it is delivered, and its first tick in flight comes up to a tick after that.
        let every = PROGRESS_INTERVAL / 2;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            let in_flight = concurrency.saturating_sub(room.available_permits());
            let wanted = to_ask(concurrency, ahead, waiting.len(), in_flight);
            let mut failed = None;
            if batch.is_none() && wanted > 0 {
                let Some(expires) = pulling.expires(tokio::time::Instant::now()) else {
                    self.end_receive(key, None);
                    return;
                };
                let asked = consumer.batch().max_messages(wanted).expires(expires);
                match asked.messages().await {
                    Ok(opened) => batch = Some(opened),
                    Err(error) => failed = Some(error.to_string()),
                }
            }
            if failed.is_none() {
                tokio::select! {
                    next = next_message(&mut batch) => match next {
                        Some(Ok(message)) => {
                            waiting.push_back(message);
                            self.pulling_again(&destination, &mut failing);
                        }
                        Some(Err(error)) => failed = Some(error.to_string()),
                        None => {
                            batch = None;
                            self.pulling_again(&destination, &mut failing);
                        }
                    },
                    permit = room.clone().acquire_owned(), if !waiting.is_empty() => {
                        let (Ok(permit), Some(message)) = (permit, waiting.pop_front()) else {
                            give_back(waiting, batch);
                            return;
                        };
                        permit.forget();
                        let listener_room = match pulling {
                            Pulling::Listen => Some(room.clone()),
                            Pulling::Receive { .. } => None,
                        };
                        if !self.deliver(key, &destination, message, listener_room, pulling) {
                            // Not handed to the app (expired, or dead-lettered): room for another.
                            room.add_permits(1);
                        } else if matches!(pulling, Pulling::Receive { .. }) {
                            give_back(waiting, batch);
                            return;
                        }
                    }
                    _ = progress.tick(), if !waiting.is_empty() => {
                        self.keep_alive(waiting.iter());
                    }
                    _ = stop.cancelled() => {
                        give_back(waiting, batch);
                        return;
                    }
                    _ = self.shutdown.cancelled() => {
                        give_back(waiting, batch);
                        return;
                    }
                }
            }
            if let Some(error) = failed {
                // What waits is given back now: its acks could not be sent to a consumer made
                // again, and it would not be kept alive meanwhile.
                give_back(std::mem::take(&mut waiting), batch.take());
                let named = (destination.as_str(), client_id.as_deref(), pulling);
                match self.pull_again(key, named, &stop, error, failing).await {
                    Some(again) => consumer = again.unwrap_or(consumer),
                    None => return,
                }
                failing = true;
            }
        }
    }

    /// A pull answered after pulls failed (`failing`): said, and no longer failing.
    fn pulling_again(&self, destination: &str, failing: &mut bool) {
        if std::mem::take(failing) {
            info!("Pulling from {destination} in NATS again");
        }
    }

    /// Tells JetStream each of `messages` is being worked on (sent from a task of its own, so
    /// that a slow connection holds no puller up).
    fn keep_alive<'a>(&self, messages: impl Iterator<Item = &'a jetstream::Message>) {
        let replies: Vec<_> = messages
            .filter_map(|message| message.reply.clone())
            .collect();
        let client = self.nats.client.clone();
        tokio::spawn(async move {
            for reply in replies {
                let _ = client.publish(reply, Bytes::from_static(b"+WPI")).await;
            }
        });
    }

    /// After a pull failed (`error`): said once (`failing`: already said), then, after a pause,
    /// the consumer made again (the old one may be gone: an ephemeral one forgotten while this
    /// node was cut off, or lost with its server), patiently but no longer than a receive may
    /// last. None when the puller is stopped meanwhile; Some(None) when the consumer could not
    /// be made again (the old one is tried again).
    async fn pull_again(
        &self,
        key: ConsumerKey,
        (destination, client_id, pulling): (&str, Option<&str>, Pulling),
        stop: &Shutdown,
        error: String,
        failing: bool,
    ) -> Option<Option<PullConsumer>> {
        if !failing {
            warn!("Cannot pull from {destination} in NATS ({error}); trying again");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return None,
        }
        let lapsed = async {
            match pulling {
                Pulling::Receive {
                    deadline: Some(deadline),
                } => tokio::time::sleep_until(deadline).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            again = self.consumer(key, destination, client_id) => Some(again.ok()),
            _ = lapsed => Some(None),
            _ = stop.cancelled() => None,
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
            let state = lock(&self.state);
            self.keep_alive(state.in_flight.values().map(|in_flight| &in_flight.message));
        }
    }
}

/// The next message of the pull under way; never, while none is.
async fn next_message(
    batch: &mut Option<Batch>,
) -> Option<Result<jetstream::Message, async_nats::Error>> {
    match batch {
        Some(batch) => batch.next().await,
        None => std::future::pending().await,
    }
}

/// Gives messages pulled but not handed out back to JetStream, for another consumer at once:
/// those `waiting`, and those the pull under way (`batch`) has already received.
fn give_back(mut waiting: VecDeque<jetstream::Message>, batch: Option<Batch>) {
    if let Some(mut batch) = batch {
        while let Some(Some(Ok(message))) = batch.next().now_or_never() {
            waiting.push_back(message);
        }
    }
    if waiting.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for message in waiting {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    });
}
