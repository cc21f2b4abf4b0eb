//! The broker's unit tests: a receive no one takes, and a queue deeper than a page.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use immutant_protocol::{DestinationKind, Header, Outgoing, PublishOptions};
use tokio::sync::mpsc;

use super::Broker;

#[tokio::test]
async fn a_received_message_no_one_takes_goes_back_to_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), "one", 1024).unwrap());
    broker
        .start("/queue/a", DestinationKind::Queue)
        .await
        .unwrap();
    let (outbox, mut frames) = mpsc::unbounded_channel();
    broker.connect(1, outbox);
    broker
        .publish(
            1,
            "/queue/a",
            PublishOptions::default(),
            Bytes::from_static(b"1"),
        )
        .await
        .unwrap();
    broker
        .receive((1, 7), "/queue/a", None, None)
        .await
        .unwrap();
    let Some(Outgoing::Frame(frame)) = frames.recv().await else {
        panic!("a receipt")
    };
    let Header::Receipt {
        id: 7,
        delivery: Some(delivery),
        ..
    } = frame.header
    else {
        panic!("a receipt with its delivery: {:?}", frame.header)
    };
    let depth = |broker: &Broker| {
        broker
            .stats()
            .into_iter()
            .find(|q| q.name == "/queue/a")
            .unwrap()
            .depth
    };
    assert_eq!(depth(&broker), 0);
    broker.nack(1, delivery, "the receiver stopped waiting");
    assert_eq!(depth(&broker), 1, "back in line");
}

fn depth_of(broker: &Broker, queue: &str) -> usize {
    let stats = broker.stats();
    stats.into_iter().find(|q| q.name == queue).unwrap().depth as usize
}

#[tokio::test]
async fn a_deep_queue_stays_in_the_journal_and_is_delivered_whole_and_in_order() {
    use super::journal::PAGE_MESSAGES;
    let dir = tempfile::tempdir().unwrap();
    let deep = "/queue/deep";
    let total = 2 * PAGE_MESSAGES + 100;
    {
        let broker = Arc::new(Broker::open(dir.path(), "one", 1024).unwrap());
        broker.start(deep, DestinationKind::Queue).await.unwrap();
        let (outbox, _frames) = mpsc::unbounded_channel();
        broker.connect(1, outbox);
        // In batches that share commits, in order from batch to batch.
        for batch in (0..total).collect::<Vec<_>>().chunks(500) {
            let publishes = batch.iter().map(|n| {
                let body = Bytes::from(n.to_string());
                broker.publish(1, deep, PublishOptions::default(), body)
            });
            for published in futures_util::future::join_all(publishes).await {
                published.unwrap();
            }
        }
        let state = broker.lock();
        let queue = &state.queues[deep];
        assert!(queue.paged.is_some(), "past a page, it pages");
        assert_eq!(queue.depth(), total);
    }
    // After a restart only the first page is read back; the rest is counted meanwhile.
    let broker = Broker::reopen(dir.path(), "one");
    for _ in 0..100 {
        if depth_of(&broker, deep) == total {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(depth_of(&broker, deep), total);
    let (outbox, mut frames) = mpsc::unbounded_channel();
    broker.connect(2, outbox);
    broker.listen((2, 1), deep, 64, None).await.unwrap();
    let mut got = Vec::new();
    while got.len() < total {
        let Some(Outgoing::Frame(frame)) = frames.recv().await else {
            panic!("a delivery")
        };
        let Header::Deliver { delivery, .. } = frame.header else {
            continue;
        };
        got.push(
            String::from_utf8_lossy(&frame.body)
                .parse::<usize>()
                .unwrap(),
        );
        broker.ack(2, delivery);
    }
    // Each batch's publishes were stored in any order among themselves, batch after batch.
    assert!(
        got.windows(2).all(|pair| pair[0] / 500 <= pair[1] / 500),
        "in the order they were published"
    );
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, (0..total).collect::<Vec<_>>(), "every one, once");
    assert_eq!(depth_of(&broker, deep), 0);
}

impl Broker {
    /// Opens the broker of `data_dir` again, once the last journal's threads let go of the
    /// file (its database's thread saves what it took in first: a while on a busy machine).
    pub(crate) fn reopen(data_dir: &Path, node_name: &str) -> Broker {
        for _ in 0..1000 {
            if let Ok(broker) = Broker::open(data_dir, node_name, 1024) {
                return broker;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Broker::open(data_dir, node_name, 1024).expect("the journal opens again")
    }
}
