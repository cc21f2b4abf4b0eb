//! Messaging across the cluster, HornetQ's ON_DEMAND way: each node keeps its own copy of each
//! queue; another node that has consumers on a queue is one more consumer here, a bridge, in
//! the same round robin as the local ones. What the round robin gives a bridge is forwarded over
//! the link to that node, which stores it before it says so; only then is it done with here
//! (store and forward). A retried forward carries the same origin, and is taken once.
//!
//! A node whose consumers have gone lets the messages forwarded to it move on after a second
//! (redistribution). A topic's subscribers on other nodes get a subscription here, whose bridge
//! forwards each message to their node's topic. When some of them are durable, that
//! subscription is durable too (`<topic>#bridge.<node>`, journaled, kept while the node is away
//! or this one restarts, and for good: as a durable subscription is): a persistent message for a
//! durable subscriber elsewhere is stored here and forwarded, never held only in memory.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use tokio::sync::mpsc;

use super::Broker;
use super::forwards::{Forward, Reply};
use super::journal::JournalOp;
use super::message::Message;
use super::queue::{QueueRole, QueueState};
use super::state::{Consumer, Sink, State};
use crate::vocabulary::membership::Interest;
use crate::vocabulary::messaging::ConsumerKey;
use crate::vocabulary::messaging::MessagingError;

/// How many forwards a bridge may have waiting for the other node at once.
const BRIDGE_WINDOW: u32 = 256;
/// How long a queue without local consumers keeps what was forwarded to it.
pub const REDISTRIBUTION_DELAY: Duration = Duration::from_secs(1);
/// The consumer ids bridges get on a peer's connection: one per destination, from here up.
const FIRST_BRIDGE_ID: u64 = 1;

/// The name of a topic's subscription that forwards to `peer`: one per peer when durable (it
/// outlives the link), else one per link (a peer that restarts gets a new one, and the old one
/// goes with the old link). Node names have no `#`, so the two never meet.
fn bridge_subscription(topic: &str, peer: &str, connection: u64, durable: bool) -> String {
    match durable {
        true => format!("{topic}#bridge.{peer}"),
        false => format!("{topic}#bridge.{peer}#{connection}"),
    }
}

/// Whether `queue` is a subscription that forwards to another node.
pub fn is_bridge(queue: &str) -> bool {
    queue.contains("#bridge.")
}

impl Broker {
    /// Sends replies for apps on other nodes to `replies` (the links) from now on.
    pub fn route_replies(&self, replies: mpsc::UnboundedSender<Reply>) {
        self.lock().replies = Some(replies);
    }

    /// The destinations this node's apps consume from: queues they listen to or receive from,
    /// and topics they subscribe to (durable subscribers count while they are away, and mark
    /// their topic durable). Other nodes forward these here.
    pub fn interest(&self) -> Interest {
        let state = self.lock();
        let mut interest = Interest::new();
        for consumer in state
            .consumers
            .values()
            .filter(|consumer| matches!(consumer.sink, Sink::App(_)))
        {
            if let Some(queue) = state.queues.get(&consumer.queue) {
                let destination = match &queue.role {
                    QueueRole::Queue => consumer.queue.clone(),
                    QueueRole::Subscription { topic, .. } => topic.clone(),
                };
                interest.entry(destination).or_insert(false);
            }
        }
        for (name, queue) in &state.queues {
            if let QueueRole::Subscription {
                topic,
                durable: true,
            } = &queue.role
                && !is_bridge(name)
            {
                interest.insert(topic.clone(), true);
            }
        }
        interest
    }

    /// Makes the bridges to the peer `peer` on `connection` what its interest says: one
    /// consumer per queue here that it consumes from, and one subscription per topic it
    /// subscribes to, durable if any of its subscribers is.
    pub async fn set_bridges(
        &self,
        connection: u64,
        peer: &str,
        forwards: &mpsc::UnboundedSender<Forward>,
        interest: &Interest,
    ) -> Result<(), MessagingError> {
        // A new durable bridge is in the journal before anything is stored for it, so that a
        // restart finds it as what it is.
        let new_durable: Vec<(String, &String)> = {
            let state = self.lock();
            interest
                .iter()
                .filter(|(topic, durable)| {
                    **durable
                        && state.kind_of(topic) == Some(immutant_protocol::DestinationKind::Topic)
                })
                .map(|(topic, _)| (bridge_subscription(topic, peer, connection, true), topic))
                .filter(|(queue, _)| !state.queues.contains_key(queue))
                .collect()
        };
        if !new_durable.is_empty() {
            let entries = new_durable.iter().map(|(queue, topic)| JournalOp::PutMeta {
                key: format!("subscription:{queue}"),
                value: Bytes::copy_from_slice(topic.as_bytes()),
            });
            self.journal.commit(entries.collect()).await?;
        }
        let journaled: HashSet<&String> = new_durable.iter().map(|(queue, _)| queue).collect();
        let mut state = self.lock();
        let wanted: Vec<(String, Option<bool>)> = interest
            .iter()
            .filter_map(|(destination, durable)| match state.kind_of(destination) {
                Some(immutant_protocol::DestinationKind::Queue) => {
                    Some((destination.clone(), None))
                }
                Some(immutant_protocol::DestinationKind::Topic) => {
                    Some((destination.clone(), Some(*durable)))
                }
                None => None,
            })
            .collect();
        let bridge_queue = |destination: &str, topic: Option<bool>| match topic {
            Some(durable) => bridge_subscription(destination, peer, connection, durable),
            None => destination.to_string(),
        };
        let wanted_queues: HashSet<String> = wanted
            .iter()
            .map(|(d, topic)| bridge_queue(d, *topic))
            .collect();
        let stale: Vec<ConsumerKey> = state
            .consumers
            .iter()
            .filter(|(key, consumer)| {
                key.0 == connection && !wanted_queues.contains(&consumer.queue)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            state.remove_consumer(key);
        }
        let mut next_id = FIRST_BRIDGE_ID
            + state
                .consumers
                .keys()
                .filter(|key| key.0 == connection)
                .map(|key| key.1)
                .max()
                .unwrap_or(0);
        for (destination, topic) in wanted {
            let queue = bridge_queue(&destination, topic);
            if state
                .consumers
                .iter()
                .any(|(key, consumer)| key.0 == connection && consumer.queue == queue)
            {
                continue;
            }
            if let Some(durable) = topic
                && !state.queues.contains_key(&queue)
            {
                // One that became wanted while the others' entries were written waits for the
                // next round, to have its own first.
                if durable && !journaled.contains(&queue) {
                    continue;
                }
                let role = QueueRole::Subscription {
                    topic: destination.clone(),
                    durable,
                };
                state.queues.insert(queue.clone(), QueueState::new(role));
                state
                    .topics
                    .entry(destination.clone())
                    .or_default()
                    .push(queue.clone());
            }
            let key = (connection, next_id);
            next_id += 1;
            tracing::debug!("bridge {key:?} to {peer} for {queue}");
            let consumer = Consumer {
                queue,
                sink: Sink::Peer(forwards.clone()),
                credit: BRIDGE_WINDOW,
                receive: None,
            };
            self.attach(&mut state, key, consumer);
        }
        Ok(())
    }

    /// Takes a message another node forwarded (`origin` names the forward): stores it for this
    /// node's consumers of `destination` and returns once it is stored (on disk, if it is
    /// persistent). A forward seen before is taken once.
    pub async fn accept_forward(
        &self,
        origin: String,
        destination: &str,
        topic: bool,
        mut message: Message,
    ) -> Result<(), MessagingError> {
        let targets = loop {
            let mut first_copy = {
                let mut state = self.lock();
                match state.seen.being_stored(&origin) {
                    Some(first_copy) => first_copy,
                    None if state.seen.contains(&origin) => return Ok(()),
                    None => {
                        let targets = state.targets(destination)?;
                        // Taken now, so that a retry arriving while this one is stored is not
                        // stored too: it waits for this copy instead.
                        state.seen.begin(origin.clone());
                        break targets;
                    }
                }
            };
            // A retry while the first copy is being stored is answered once that copy is
            // stored, never before; if it failed, the retry stores it.
            let _ = first_copy.wait_for(|done| *done).await;
        };
        let storing = Storing {
            broker: self,
            origin: &origin,
            stored: false,
        };
        // A topic's message goes to this node's subscribers only, not on to other nodes.
        let targets = match topic {
            true => targets
                .into_iter()
                .filter(|(queue, _)| !is_bridge(queue))
                .collect(),
            false => targets,
        };
        message.header.id = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        message.forwarded = true;
        message.origin = Some(origin.clone());
        let stored = self.store(targets, message).await;
        let mut storing = storing;
        storing.stored = stored.is_ok();
        stored
    }

    /// Lets what was forwarded to a queue move on once the queue has had no consumer of this
    /// node's apps for [`REDISTRIBUTION_DELAY`]. Called every few hundred milliseconds.
    pub fn redistribute(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        let State {
            queues,
            unattended_since,
            ..
        } = &mut *state;
        unattended_since.retain(|name, _| queues.contains_key(name));
        let names: Vec<String> = state.queues.keys().cloned().collect();
        for name in names {
            let attended = state.is_attended(&name);
            let since = match attended {
                true => {
                    state.unattended_since.remove(&name);
                    continue;
                }
                false => *state.unattended_since.entry(name.clone()).or_insert(now),
            };
            let released = match state.queues.get_mut(&name) {
                Some(queue) if now.duration_since(since) >= REDISTRIBUTION_DELAY => {
                    queue.release_forwarded()
                }
                _ => 0,
            };
            if released > 0 {
                tracing::info!(
                    "Redistributing {released} messages of {name} to nodes with consumers"
                );
                self.dispatch(&mut state, &name);
            }
        }
    }
}

/// A forward being stored: its retries are answered when this goes (stored or not), even if
/// the store was given up half way.
struct Storing<'a> {
    broker: &'a Broker,
    origin: &'a str,
    stored: bool,
}

impl Drop for Storing<'_> {
    fn drop(&mut self) {
        self.broker.lock().seen.end(self.origin, self.stored);
    }
}

impl State {
    /// Whether an app of this node consumes from the queue `name`.
    fn is_attended(&self, name: &str) -> bool {
        let Some(queue) = self.queues.get(name) else {
            return false;
        };
        queue.has_consumer_in(|key| {
            self.consumers
                .get(key)
                .is_some_and(|consumer| matches!(consumer.sink, Sink::App(_)))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::vocabulary::membership::Interest;
    use bytes::Bytes;
    use immutant_protocol::{DestinationKind, PublishOptions};
    use tokio::sync::mpsc;

    use super::super::Broker;

    #[tokio::test]
    async fn a_bridge_takes_its_turn_with_requests_and_plain_messages() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(dir.path(), "one", 1024).unwrap();
        broker
            .start("/queue/ask", DestinationKind::Queue)
            .await
            .unwrap();
        let (forwards, mut forwarded) = mpsc::unbounded_channel();
        let interest = Interest::from([("/queue/ask".to_string(), false)]);
        broker
            .set_bridges(100, "two", &forwards, &interest)
            .await
            .unwrap();
        let request = PublishOptions {
            reply_to: Some("@".to_string()),
            correlation_id: Some("c1".to_string()),
            ..PublishOptions::default()
        };
        broker
            .publish(1, "/queue/ask", request, Bytes::from_static(b"\"ping\""))
            .await
            .unwrap();
        broker
            .publish(
                1,
                "/queue/ask",
                PublishOptions::default(),
                Bytes::from_static(b"1"),
            )
            .await
            .unwrap();
        let first = forwarded.try_recv().expect("the request is forwarded");
        assert_eq!(first.message.header.reply_to.as_deref(), Some("@one/1"));
        assert!(forwarded.try_recv().is_ok(), "so is the plain message");
    }

    #[tokio::test]
    async fn a_durable_subscriber_elsewhere_has_its_messages_kept_here_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let news = "/topic/news";
        let durable = Interest::from([(news.to_string(), true)]);
        let (forwards, forwarded) = mpsc::unbounded_channel();
        {
            let broker = Broker::open(dir.path(), "one", 1024).unwrap();
            broker.start(news, DestinationKind::Topic).await.unwrap();
            broker
                .set_bridges(100, "two", &forwards, &durable)
                .await
                .unwrap();
            // The link drops (two is away) and a message is published meanwhile.
            broker.disconnect(100);
            let body = Bytes::from_static(b"\"kept\"");
            broker
                .publish(1, news, PublishOptions::default(), body)
                .await
                .unwrap();
        }
        drop(forwarded);
        // This node restarts (once the last journal writer let go of the file); two links
        // again and gets what was kept for it.
        let broker = Broker::reopen(dir.path(), "one");
        let (forwards, mut forwarded) = mpsc::unbounded_channel();
        broker
            .set_bridges(101, "two", &forwards, &durable)
            .await
            .unwrap();
        let kept = forwarded.try_recv().expect("the message waited for two");
        assert_eq!(&kept.message.body[..], b"\"kept\"");
        assert!(kept.topic);
    }

    #[tokio::test]
    async fn a_retried_forward_is_answered_only_once_the_first_copy_is_on_disk() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(dir.path(), "two", 1024).unwrap();
        broker
            .start("/queue/q", DestinationKind::Queue)
            .await
            .unwrap();
        let message = || super::Message {
            header: immutant_protocol::MessageHeader {
                id: 0,
                destination: "/queue/q".to_string(),
                priority: 4,
                properties: Default::default(),
                correlation_id: None,
                content_type: "application/json".to_string(),
                reply_to: None,
                delivery_count: 0,
                published_at_ms: 0,
            },
            body: Bytes::from_static(b"1"),
            persistent: true,
            expires_at_ms: None,
            forwarded: false,
            origin: None,
        };
        let origin = "one@1/1".to_string();
        let mut first =
            Box::pin(broker.accept_forward(origin.clone(), "/queue/q", false, message()));
        assert!(
            (&mut first).now_or_never().is_none(),
            "the first copy is being committed"
        );
        let mut retry = Box::pin(broker.accept_forward(origin, "/queue/q", false, message()));
        assert!(
            (&mut retry).now_or_never().is_none(),
            "the retry waits for the first copy"
        );
        first.await.unwrap();
        retry.await.unwrap();
        let stats = broker.stats();
        let queue = stats.iter().find(|q| q.name == "/queue/q").unwrap();
        assert_eq!(queue.depth, 1, "stored once");
    }
}
