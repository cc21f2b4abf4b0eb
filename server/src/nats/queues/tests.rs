//! Unit tests of what messaging on JetStream decides without a NATS server: names, consumers,
//! what a message carries, the bookkeeping of listeners and deliveries in flight, how much a
//! listener pulls, and when a message goes to the dead letter queue.
//!
//! Deliveries are real JetStream messages, on a client that never reaches a server (answering
//! one only queues the answer in the client).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use bytes::Bytes;
use immutant_protocol::{DestinationKind, Header, PublishOptions};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::dispatch::{dead_letters, to_ask};
use super::message::{Carried, carried, headers, message_header};
use super::state::{Counts, InFlight, Known, Listener, Pulling, State};
use super::streams::{
    consumer_config, replies_to, reply_connection, reply_subject, stream_of, subject_within,
};
use super::{ACK_WAIT, PULL_EXPIRES, WORKERS};
use crate::nats::untoken;
use crate::vocabulary::messaging::{DEAD_LETTER_QUEUE, MAX_DELIVERIES, MessagingError};
use immutant_foundation::shutdown::Shutdown;

#[test]
fn a_queue_and_a_topic_of_one_name_are_streams_and_subjects_of_their_own() {
    let name = "/queue/orders.eu";
    assert_ne!(
        stream_of(name, DestinationKind::Queue),
        stream_of(name, DestinationKind::Topic)
    );
    assert_ne!(
        subject_within(name, DestinationKind::Queue),
        subject_within(name, DestinationKind::Topic)
    );
    let stream = stream_of(name, DestinationKind::Queue);
    assert_eq!(untoken(stream.strip_prefix("Q_").unwrap()).unwrap(), name);
    let subject = subject_within(name, DestinationKind::Topic);
    // One token for the name, whatever it holds: a subject's dots are its own.
    let (kind, token) = subject.split_once('.').unwrap();
    assert_eq!((kind, untoken(token).unwrap().as_str()), ("t", name));
}

#[test]
fn a_reply_goes_on_a_subject_its_node_listens_to_and_its_connection_is_read_from() {
    let subject = reply_subject("node.one/42").unwrap();
    assert_eq!(subject, replies_to("node.one", "42"));
    assert_eq!(reply_connection(&format!("IMM_c.{subject}")), Some(42));
    // The node listens to `reply.<node>.*`: its name is one token, so `*` is the connection.
    let listened = replies_to("node.one", "*");
    let tokens = |subject: &str| subject.split('.').count();
    assert_eq!(tokens(&subject), tokens(&listened));
    assert_eq!(
        subject.rsplit_once('.').unwrap().0,
        listened.rsplit_once('.').unwrap().0
    );
}

#[test]
fn an_address_that_names_no_connection_has_no_reply_subject() {
    for target in ["node", "node/", "node/app", "node/-1"] {
        assert_eq!(reply_subject(target), None, "{target}");
    }
    assert_eq!(reply_connection("IMM_c.reply.node.app"), None);
}

#[test]
fn every_listener_of_a_queue_shares_one_consumer() {
    for client_id in [None, Some("billing")] {
        let (name, config) =
            consumer_config(DestinationKind::Queue, client_id, || unreachable!()).unwrap();
        assert_eq!(name.as_deref(), Some(WORKERS));
        assert_eq!(config.durable_name.as_deref(), Some(WORKERS));
        assert_eq!(config.ack_policy, AckPolicy::Explicit);
        assert_eq!(config.ack_wait, ACK_WAIT);
        // Redelivered without end by JetStream: the DLQ is this node's decision.
        assert_eq!(config.max_deliver, -1);
        assert_eq!(config.deliver_policy, DeliverPolicy::All);
    }
}

#[test]
fn a_durable_subscriber_has_a_consumer_of_its_client_id_from_the_next_message() {
    let (name, config) =
        consumer_config(DestinationKind::Topic, Some("bill ing"), || unreachable!()).unwrap();
    let name = name.unwrap();
    assert_eq!(
        untoken(name.strip_prefix("S_").unwrap()).unwrap(),
        "bill ing"
    );
    assert_eq!(config.durable_name, Some(name));
    assert_eq!(config.deliver_policy, DeliverPolicy::New);
    assert_eq!(config.ack_policy, AckPolicy::Explicit);
    assert_eq!(config.max_deliver, -1);
}

#[test]
fn any_other_subscriber_has_an_ephemeral_consumer_named_here() {
    let (name, config) =
        consumer_config(DestinationKind::Topic, None, || "unique".to_string()).unwrap();
    assert_eq!(name, None, "made, not looked up");
    assert_eq!(config.name.as_deref(), Some("E_unique"));
    assert_eq!(config.durable_name, None);
    assert_eq!(config.deliver_policy, DeliverPolicy::New);
    assert_eq!(config.inactive_threshold, Duration::from_secs(10));
    assert_eq!(config.ack_wait, ACK_WAIT);
}

#[test]
fn a_client_id_that_could_pass_for_a_subscription_of_another_kind_is_refused() {
    for client in ["", "a#b", "a@b"] {
        let refused = consumer_config(DestinationKind::Topic, Some(client), || unreachable!());
        assert!(
            matches!(refused, Err(MessagingError::BadClientId(ref id)) if id == client),
            "{client:?}"
        );
    }
}

fn options(ttl_ms: Option<u64>) -> PublishOptions {
    PublishOptions {
        ttl_ms,
        correlation_id: Some("c-1".to_string()),
        reply_to: Some("@node/3".to_string()),
        ..PublishOptions::default()
    }
}

#[test]
fn a_message_expires_its_time_to_live_after_it_was_published_and_a_ttl_of_0_never() {
    let carried = Carried::new(options(Some(500)), 1_000);
    assert!(!carried.is_expired(1_499));
    assert!(carried.is_expired(1_500));
    for forever in [None, Some(0)] {
        let carried = Carried::new(options(forever), 1_000);
        assert!(!carried.is_expired(u64::MAX));
    }
}

#[test]
fn what_a_message_carries_reads_back_from_its_header() {
    let mut published = options(Some(10));
    published
        .properties
        .insert("k".to_string(), "v".to_string());
    let read = carried(Some(&headers(&Carried::new(published.clone(), 7)))).unwrap();
    let header = message_header(12, "/queue/a", &read, 3);
    assert_eq!(header.id, 12);
    assert_eq!(header.destination, "/queue/a");
    assert_eq!(header.delivery_count, 3);
    assert_eq!(header.priority, published.priority);
    assert_eq!(header.properties, published.properties);
    assert_eq!(header.correlation_id, published.correlation_id);
    assert_eq!(header.reply_to, published.reply_to);
    assert_eq!(header.content_type, published.content_type);
    assert_eq!(header.published_at_ms, 7);
    assert!(!read.is_expired(16));
    assert!(read.is_expired(17));
    assert!(carried(None).is_none());
    let mut foreign = async_nats::HeaderMap::new();
    foreign.insert("Immutant-Message", "not json");
    assert!(carried(Some(&foreign)).is_none());
}

#[test]
fn a_dead_letter_says_why_and_where_it_was() {
    let mut carried = Carried::new(options(None), 0);
    carried.mark_dead_letter("/queue/a", "it failed".to_string());
    let properties = message_header(1, DEAD_LETTER_QUEUE, &carried, 1).properties;
    assert_eq!(properties["dead-letter-reason"], "it failed");
    assert_eq!(properties["original-destination"], "/queue/a");
}

#[test]
fn the_tenth_failure_moves_a_message_to_the_dead_letter_queue() {
    assert_eq!(MAX_DELIVERIES, 10);
    assert!(
        !dead_letters(MAX_DELIVERIES - 1),
        "the ninth is redelivered"
    );
    assert!(dead_letters(MAX_DELIVERIES));
}

#[test]
fn a_pull_waits_as_long_as_a_receive_has_left_and_no_longer_than_a_pull_lasts() {
    let now = Instant::now();
    let receive = |after: Duration| Pulling::Receive {
        deadline: Some(now + after),
    };
    assert_eq!(Pulling::Listen.expires(now), Some(PULL_EXPIRES));
    let no_deadline = Pulling::Receive { deadline: None };
    assert_eq!(no_deadline.expires(now), Some(PULL_EXPIRES));
    let soon = Duration::from_millis(300);
    assert_eq!(receive(soon).expires(now), Some(soon));
    assert_eq!(receive(PULL_EXPIRES * 5).expires(now), Some(PULL_EXPIRES));
    assert_eq!(receive(Duration::ZERO).expires(now), None, "its time is up");
    assert_eq!(receive(soon).expires(now + soon * 2), None);
}

/// A JetStream context on a client that never reaches a server.
async fn offline() -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("127.0.0.1:1")
        .await
        .expect("a client, connecting in the background");
    jetstream::new(client)
}

/// Stream message `sequence` as JetStream hands it out for the `delivered`th time.
fn message(context: &jetstream::Context, sequence: u64, delivered: u64) -> jetstream::Message {
    let carried = Carried::new(options(None), 0);
    let reply =
        format!("$JS.ACK.S.workers.{delivered}.{sequence}.{sequence}.1700000000000000000.0");
    jetstream::Message {
        message: async_nats::Message {
            subject: "IMM_c.q.a".into(),
            reply: Some(reply.into()),
            payload: Bytes::from_static(b"body"),
            headers: Some(headers(&carried)),
            status: None,
            description: None,
            length: 0,
        },
        context: context.clone(),
    }
}

fn in_flight(
    context: &jetstream::Context,
    connection: u64,
    sequence: u64,
    room: Option<&Arc<Semaphore>>,
) -> InFlight {
    InFlight {
        connection,
        destination: "/queue/a".to_string(),
        message: message(context, sequence, 1),
        room: room.cloned(),
    }
}

fn sequence(in_flight: &InFlight) -> u64 {
    in_flight.message.info().unwrap().stream_sequence
}

#[test]
fn a_listener_pulls_ahead_as_many_as_it_may_have_in_flight_and_no_more() {
    // Concurrency 4, as many ahead: nothing held, eight asked for.
    assert_eq!(to_ask(4, 4, 0, 0), 8);
    // Four at the app, four waiting: nothing.
    assert_eq!(to_ask(4, 4, 4, 4), 0);
    // One place free while three wait: not worth a pull yet.
    assert_eq!(to_ask(4, 4, 3, 4), 0);
    // Half of those ahead free: asked for before the waiting ones run out.
    assert_eq!(to_ask(4, 4, 2, 4), 2);
    assert_eq!(to_ask(4, 4, 1, 3), 4);
    // None waiting: whatever is free, at once.
    assert_eq!(to_ask(4, 4, 0, 4), 4);
    // A receive: one, and only while it holds none.
    assert_eq!(to_ask(1, 0, 0, 0), 1);
    assert_eq!(to_ask(1, 0, 1, 0), 0);
    assert_eq!(to_ask(1, 0, 0, 1), 0);
}

#[tokio::test]
async fn a_delivery_gives_its_listener_room_back_once_answered() {
    let context = offline().await;
    let room = Arc::new(Semaphore::new(4));
    let pulled: Vec<InFlight> = (1..=4)
        .map(|sequence| {
            room.try_acquire().unwrap().forget();
            in_flight(&context, 1, sequence, Some(&room))
        })
        .collect();
    assert_eq!(room.available_permits(), 0, "four at the app: no room");
    pulled[0].give_room_back();
    pulled[1].give_room_back();
    assert_eq!(room.available_permits(), 2);
    // A receive's delivery takes no listener's room.
    in_flight(&context, 1, 4, None).give_room_back();
    assert_eq!(room.available_permits(), 2);
}

#[tokio::test]
async fn only_the_app_a_delivery_went_to_answers_it_and_once() {
    let context = offline().await;
    let mut state = State::default();
    state
        .in_flight
        .insert(10, in_flight(&context, 1, 100, None));
    assert!(state.take_in_flight(2, 10).is_none(), "another app's");
    assert!(state.take_in_flight(1, 11).is_none(), "no such delivery");
    let taken = state.take_in_flight(1, 10).unwrap();
    assert_eq!(sequence(&taken), 100);
    assert!(state.take_in_flight(1, 10).is_none(), "answered already");
}

#[tokio::test]
async fn an_app_that_goes_away_stops_its_listeners_and_gives_back_what_it_held() {
    let context = offline().await;
    let mut state = State::default();
    let (outbox, _frames) = tokio::sync::mpsc::unbounded_channel();
    state.outboxes.insert(1, outbox.clone());
    state.outboxes.insert(2, outbox);
    let mut stops = Vec::new();
    for key in [(1, 1), (1, 2), (2, 1)] {
        let stop = Shutdown::new();
        stops.push((key, stop.clone()));
        let destination = "/queue/a".to_string();
        state.listeners.insert(key, Listener { destination, stop });
    }
    for (delivery, connection) in [(10, 1), (11, 2), (12, 1)] {
        let in_flight = in_flight(&context, connection, delivery * 10, None);
        state.in_flight.insert(delivery, in_flight);
    }
    let mut orphans: Vec<u64> = state.disconnect(1).iter().map(sequence).collect();
    orphans.sort();
    assert_eq!(orphans, [100, 120]);
    assert!(!state.outboxes.contains_key(&1));
    assert!(state.outboxes.contains_key(&2));
    assert_eq!(state.listeners.keys().collect::<Vec<_>>(), [&(2, 1)]);
    assert_eq!(state.in_flight.keys().collect::<Vec<_>>(), [&11]);
    for (key, stop) in stops {
        assert_eq!(stop.is_cancelled(), key.0 == 1, "{key:?}");
    }
}

#[tokio::test]
async fn a_delivery_is_counted_and_told_to_a_listener_or_a_receiver() {
    let context = offline().await;
    let mut state = State::default();
    for key in [(1, 5), (1, 6)] {
        let (destination, stop) = ("/queue/a".to_string(), Shutdown::new());
        state.listeners.insert(key, Listener { destination, stop });
    }
    let carried = Carried::new(options(None), 0);
    let header = |delivered| message_header(100, "/queue/a", &carried, delivered);
    let first = in_flight(&context, 1, 100, None);
    let told = state.hand_out((1, 5), 7, first, header(1), 1, Pulling::Listen);
    let expected = Header::Deliver {
        consumer: 5,
        delivery: 7,
        message: header(1),
    };
    assert_eq!(told, expected);
    assert!(
        state.listeners.contains_key(&(1, 5)),
        "it goes on listening"
    );
    let again = in_flight(&context, 1, 100, None);
    let receive = Pulling::Receive { deadline: None };
    let told = state.hand_out((1, 6), 8, again, header(2), 2, receive);
    let expected = Header::Receipt {
        id: 6,
        message: Some(header(2)),
        delivery: Some(8),
    };
    assert_eq!(told, expected);
    assert!(
        !state.listeners.contains_key(&(1, 6)),
        "a receive takes one"
    );
    assert_eq!(state.in_flight.len(), 2);
    let counts = state.counts["/queue/a"];
    assert_eq!((counts.delivered, counts.redelivered), (2, 1));
}

#[test]
fn the_stats_show_every_known_destination_by_name_with_what_this_node_saw() {
    let mut state = State::default();
    let queue = Known {
        kind: DestinationKind::Queue,
    };
    let topic = Known {
        kind: DestinationKind::Topic,
    };
    state.known.insert("/queue/b".to_string(), queue);
    state.known.insert("/topic/a".to_string(), topic);
    let counts = Counts {
        published: 5,
        delivered: 4,
        redelivered: 3,
        dead_lettered: 2,
        expired: 1,
    };
    state.counts.insert("/queue/b".to_string(), counts);
    state.counts.insert("/queue/unknown".to_string(), counts);
    state.depths.insert("/queue/b".to_string(), (6, 2));
    for (key, destination) in [((1, 1), "/queue/b"), ((1, 2), "/queue/b"), ((2, 1), "/x")] {
        let (destination, stop) = (destination.to_string(), Shutdown::new());
        state.listeners.insert(key, Listener { destination, stop });
    }
    let stats = state.stats();
    let names: Vec<&str> = stats.iter().map(|stats| stats.name.as_str()).collect();
    assert_eq!(names, ["/queue/b", "/topic/a"]);
    let (queue, topic) = (&stats[0], &stats[1]);
    assert_eq!(
        (queue.kind.as_str(), topic.kind.as_str()),
        ("queue", "topic")
    );
    assert_eq!((queue.depth, queue.in_flight, queue.consumers), (6, 2, 2));
    let seen = |stats: &crate::vocabulary::messaging::QueueStats| {
        (
            stats.published,
            stats.delivered,
            stats.redelivered,
            stats.dead_lettered,
            stats.expired,
        )
    };
    assert_eq!(seen(queue), (5, 4, 3, 2, 1));
    assert_eq!(seen(topic), (0, 0, 0, 0, 0));
    assert_eq!((topic.depth, topic.in_flight, topic.consumers), (0, 0, 0));
}
