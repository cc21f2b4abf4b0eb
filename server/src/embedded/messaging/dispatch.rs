//! Handing messages out: a queue's waiting messages go to its consumers round robin while they
//! have credit (to an app over its socket, or to another node over a bridge), read back from the
//! journal a page at a time as the queue drains; an expired one is dropped, a failed one put
//! back in line, and one that failed its tenth delivery moved to the dead letter queue.

use std::sync::atomic::Ordering;

use immutant_foundation::clock::now_ms;
use immutant_protocol::{Frame, Header};
use tracing::warn;

use super::journal::JournalOp;
use super::queue::{QueueRole, QueueState};
use super::state::{Consumer, InFlight, Sink, State, decode_page};
use super::{Broker, Forward, Message, send};
use crate::vocabulary::messaging::{ConsumerKey, DEAD_LETTER_QUEUE, MAX_DELIVERIES};

impl Broker {
    /// Puts a message back in line after a failed delivery, or moves it to the dead letter
    /// queue once it has had its 10 deliveries.
    pub(super) fn return_message(
        &self,
        state: &mut State,
        queue_name: &str,
        message: Message,
        reason: &str,
    ) {
        let durable = state
            .queues
            .get(queue_name)
            .is_some_and(QueueState::is_durable);
        if message.header.delivery_count < MAX_DELIVERIES {
            // Its count goes to the journal with it, so that a poison message still reaches the
            // DLQ after its tenth delivery when the node restarted in between. (Not waited for:
            // a later acknowledgement's removal is written after it, in order.)
            if message.persistent && durable {
                self.journal.submit(vec![JournalOp::Put {
                    queue: queue_name.to_string(),
                    seq: message.header.id,
                    record: message.to_record(),
                }]);
            }
            if let Some(queue) = state.queues.get_mut(queue_name) {
                queue.redelivered += 1;
                queue.enqueue(message);
            }
            return;
        }
        warn!(
            "message {} on {queue_name} failed {} deliveries, moving it to {DEAD_LETTER_QUEUE}: {reason}",
            message.header.id, message.header.delivery_count
        );
        let mut dead = message.clone();
        dead.header.id = self.next_seq.fetch_add(1, Ordering::Relaxed);
        dead.header.delivery_count = 0;
        dead.header
            .properties
            .insert("dead-letter-reason".to_string(), reason.to_string());
        dead.header.properties.insert(
            "original-destination".to_string(),
            message.header.destination.clone(),
        );
        dead.header.destination = DEAD_LETTER_QUEUE.to_string();
        let mut ops = Vec::new();
        if message.persistent && durable {
            ops.push(JournalOp::Delete {
                queue: queue_name.to_string(),
                seq: message.header.id,
            });
        }
        if dead.persistent {
            ops.push(JournalOp::Put {
                queue: DEAD_LETTER_QUEUE.to_string(),
                seq: dead.header.id,
                record: dead.to_record(),
            });
        }
        self.journal.submit(ops);
        if let Some(queue) = state.queues.get_mut(queue_name) {
            queue.dead_lettered += 1;
        }
        if let Some(dlq) = state.queues.get_mut(DEAD_LETTER_QUEUE)
            && dlq.admit(&dead, dead.persistent)
        {
            dlq.enqueue(dead);
        }
        self.dispatch(state, DEAD_LETTER_QUEUE);
    }

    /// Adds a consumer to its queue, and hands it what waits there.
    pub(super) fn attach(&self, state: &mut State, key: ConsumerKey, consumer: Consumer) {
        let queue = consumer.queue.clone();
        if let Some(state_queue) = state.queues.get_mut(&queue) {
            state_queue.add_consumer(key);
        }
        state.consumers.insert(key, consumer);
        self.dispatch(state, &queue);
    }

    /// Reads the queue's next page back from the journal, if it pages and has room for one:
    /// how many records it read. Under the broker's lock, once every message submitted to the
    /// journal is on it (a dead letter is only submitted), and short of any message being
    /// stored: so none is missed or read twice.
    fn read_page(&self, state: &mut State, queue_name: &str) -> usize {
        let Some(from) = state
            .queues
            .get(queue_name)
            .and_then(QueueState::wants_page)
        else {
            return 0;
        };
        state.take_counts();
        let below = state.storing.first().copied();
        let read = self.journal.flush_submitted().and_then(|()| {
            self.journal
                .read(queue_name, from, below.unwrap_or(u64::MAX))
        });
        let mut page = match read {
            Ok(page) => decode_page(queue_name, page, from),
            Err(error) => {
                warn!("cannot read {queue_name}'s next messages from the journal: {error}");
                return 0;
            }
        };
        if below.is_some() {
            // What lies past the message being stored is read once it is.
            page.more = true;
            state.starved.insert(queue_name.to_string());
        }
        let records = page.records;
        if let Some(queue) = state.queues.get_mut(queue_name) {
            queue.take_page(page);
        }
        records
    }

    /// Hands the queue's waiting messages to its consumers while they have credit.
    pub(super) fn dispatch(&self, state: &mut State, queue_name: &str) {
        // Again while handing out emptied memory and pages read back bring more: expired
        // messages may have filled it, and made no room for a page before.
        let mut first = true;
        loop {
            let read = self.read_page(state, queue_name);
            self.hand_out(state, queue_name);
            let more = state
                .queues
                .get(queue_name)
                .is_some_and(|queue| queue.ready_is_empty() && queue.wants_page().is_some());
            if !more || (!first && read == 0) {
                break;
            }
            first = false;
        }
    }

    /// Hands what waits in memory to the queue's consumers while they have credit.
    fn hand_out(&self, state: &mut State, queue_name: &str) {
        let State {
            queues,
            consumers,
            in_flight,
            next_delivery,
            ..
        } = state;
        let Some(queue) = queues.get_mut(queue_name) else {
            return;
        };
        // Where a bridge forwards to: the queue itself, or for a topic's subscription, the topic.
        let (destination, topic) = match &queue.role {
            QueueRole::Subscription { topic, .. } => (topic.clone(), true),
            QueueRole::Queue => (queue_name.to_string(), false),
        };
        let now = now_ms();
        let mut received = false;
        while let Some(local_only) = queue.peek().map(Message::is_local_only) {
            let Some(key) = queue.consumers_in_turn().find(|key| {
                consumers.get(key).is_some_and(|consumer| {
                    consumer.credit > 0 && !(local_only && matches!(consumer.sink, Sink::Peer(_)))
                })
            }) else {
                break;
            };
            let Some(mut message) = queue.next_message() else {
                break;
            };
            if message.is_expired(now) {
                queue.expired += 1;
                if message.persistent && queue.is_durable() {
                    self.journal.submit(vec![JournalOp::Delete {
                        queue: queue_name.to_string(),
                        seq: message.header.id,
                    }]);
                }
                continue;
            }
            queue.served(key);
            let Some(consumer) = consumers.get_mut(&key) else {
                break;
            };
            let outbox = match &consumer.sink {
                Sink::App(outbox) => outbox,
                Sink::Peer(forwards) => {
                    consumer.credit -= 1;
                    *next_delivery += 1;
                    let forward = Forward {
                        delivery: *next_delivery,
                        destination: destination.clone(),
                        topic,
                        message: message.clone(),
                    };
                    let _ = forwards.send(forward);
                    let in_flight_message = InFlight {
                        queue: queue_name.to_string(),
                        consumer: key,
                        message,
                    };
                    in_flight.insert(*next_delivery, in_flight_message);
                    continue;
                }
            };
            message.header.delivery_count += 1;
            *next_delivery += 1;
            let delivery = *next_delivery;
            if let Some(request) = consumer.receive {
                // A receive takes one message, in flight until the app says it was taken.
                let receipt = Header::Receipt {
                    id: request,
                    message: Some(message.header.clone()),
                    delivery: Some(delivery),
                };
                send(outbox, Frame::with_body(receipt, message.body.clone()));
                consumers.remove(&key);
                queue.remove_consumer(key);
                received = true;
            } else {
                consumer.credit -= 1;
                let deliver = Header::Deliver {
                    consumer: key.1,
                    delivery,
                    message: message.header.clone(),
                };
                send(outbox, Frame::with_body(deliver, message.body.clone()));
            }
            in_flight.insert(
                delivery,
                InFlight {
                    queue: queue_name.to_string(),
                    consumer: key,
                    message,
                },
            );
        }
        // A receive from a topic had a subscription of its own, done with now.
        if received {
            state.drop_unused_subscription(queue_name);
        }
    }
}
