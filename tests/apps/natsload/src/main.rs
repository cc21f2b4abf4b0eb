//! natsload: the load of the engines benchmark's clustered run (tests/apps/loadgen on two nodes
//! of the NATS engine), put on NATS JetStream by a plain async-nats client, so that the engine
//! can be compared with what the client alone moves on the same servers: a work-queue stream
//! on file storage with `NATSLOAD_REPLICAS` (3) replicas, 1 KB messages from 8 publishers on
//! one connection, each awaiting its ack before the next; `NATSLOAD_CONSUMERS` (2, one per
//! node of the engine's run) connections pulling from one durable consumer with explicit
//! acks. Reports throughput (first publish to last handled) and publish-to-handler latency.
//!
//! `cargo run --release --manifest-path tests/apps/natsload/Cargo.toml` with NATS at
//! `NATS_URL` (comma-separated servers); `LOADGEN_MESSAGES`, `LOADGEN_PUBLISHERS` as for
//! loadgen. The engines benchmark runs this against its own servers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use loadstats::{env_number, report, stamped_body};

const STREAM: &str = "NATSLOAD";
const SUBJECT: &str = "natsload";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let servers = servers(&url)?;
    let messages: usize = env_number("LOADGEN_MESSAGES", 20_000);
    let publishers: usize = env_number("LOADGEN_PUBLISHERS", 8);
    let consumers: usize = env_number("NATSLOAD_CONSUMERS", 2).max(1);
    let replicas: usize = env_number("NATSLOAD_REPLICAS", 3);

    let publishing = jetstream::new(async_nats::connect(servers.clone()).await?);
    // A run starts from an empty stream.
    let _ = publishing.delete_stream(STREAM).await;
    let stream = publishing
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        })
        .await?;

    let (took, mut counts) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..consumers {
        let stream = jetstream::new(async_nats::connect(servers.clone()).await?)
            .get_stream(STREAM)
            .await?;
        let consumer: consumer::PullConsumer = stream.get_consumer("workers").await?;
        let mut incoming = consumer.messages().await?;
        let took = took.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = incoming.next().await {
                let handled = loadstats::handled(&message.payload);
                if message.ack().await.is_err() || took.send(handled).is_err() {
                    break;
                }
            }
        });
    }
    drop(took);

    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let publishing = publishing.clone();
            let count = messages / publishers + usize::from(p < messages % publishers);
            tokio::spawn(async move {
                for _ in 0..count {
                    let body = stamped_body();
                    publishing.publish(SUBJECT, body.into()).await?.await?;
                }
                Ok::<_, async_nats::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }

    // Each message once; a run that stalls for ten seconds ends with what came.
    let mut handled = Vec::with_capacity(messages);
    while handled.len() < messages {
        match tokio::time::timeout(Duration::from_secs(10), counts.recv()).await {
            Ok(Some(one)) => handled.push(one),
            _ => break,
        }
    }
    if handled.len() < messages {
        return Err(format!("{} of {messages} messages came", handled.len()).into());
    }
    report("async-nats", &handled);
    let _ = publishing.delete_stream(STREAM).await;
    Ok(())
}

/// The servers in `url`: addresses separated by commas, `nats://` where none is given.
fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, async_nats::Error> {
    url.split(',')
        .map(|server| match server.trim() {
            given if given.contains("://") => Ok(given.parse()?),
            address => Ok(format!("nats://{address}").parse()?),
        })
        .collect()
}
