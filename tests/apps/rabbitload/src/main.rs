//! rabbitload: the load of loadgen (tests/apps/loadgen), against RabbitMQ, so that the two can be
//! compared on one machine: a durable queue, 1 KB persistent messages from 8 publishers, each
//! waiting for its publisher confirm before the next (or with up to `LOADGEN_WINDOW` unconfirmed
//! at once); a consumer with manual acks and a prefetch of `RABBITLOAD_PREFETCH` (256). Reports
//! throughput (first publish to last handler) and publish-to-handler latency.
//!
//! `cargo run --release --manifest-path tests/apps/rabbitload/Cargo.toml` with a RabbitMQ on
//! 127.0.0.1:5672 (`AMQP_ADDR` to change it); `LOADGEN_MESSAGES`, `LOADGEN_PUBLISHERS` as for
//! loadgen. The messaging benchmark starts a RabbitMQ of its own and runs this against it.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const PAYLOAD: usize = 1024;
const QUEUE: &str = "rabbitload";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let messages: usize = env_number("LOADGEN_MESSAGES", 20_000);
    let publishers: usize = env_number("LOADGEN_PUBLISHERS", 8);
    let window: usize = env_number("LOADGEN_WINDOW", 1).max(1);
    let prefetch: u16 = env_number("RABBITLOAD_PREFETCH", 256).try_into()?;
    let connection = Connection::connect(&addr, ConnectionProperties::default()).await?;

    let setup = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    setup
        .queue_declare(QUEUE.into(), durable, FieldTable::default())
        .await?;
    setup
        .queue_purge(QUEUE.into(), QueuePurgeOptions::default())
        .await?;

    let consuming = connection.create_channel().await?;
    consuming
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consuming
        .basic_consume(
            QUEUE.into(),
            "rabbitload".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let received = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(messages);
        while latencies.len() < messages {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let sent = u128::from_be_bytes(delivery.data[..16].try_into().unwrap_or_default());
            latencies.push((sent, now_nanos().saturating_sub(sent)));
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        latencies
    });

    let mut tasks = Vec::new();
    for p in 0..publishers {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let count = messages / publishers + usize::from(p < messages % publishers);
        tasks.push(tokio::spawn(async move {
            let persistent = BasicProperties::default().with_delivery_mode(2);
            let mut unconfirmed = VecDeque::with_capacity(window);
            for _ in 0..count {
                if unconfirmed.len() == window
                    && let Some(oldest) = unconfirmed.pop_front()
                {
                    let _ = oldest.await;
                }
                let mut body = vec![0u8; PAYLOAD];
                body[..16].copy_from_slice(&now_nanos().to_be_bytes());
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        QUEUE.into(),
                        BasicPublishOptions::default(),
                        &body,
                        persistent.clone(),
                    )
                    .await;
                if let Ok(confirm) = confirm {
                    unconfirmed.push_back(confirm);
                }
            }
            for confirm in unconfirmed {
                let _ = confirm.await;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let mut latencies = received.await?;
    let first_sent = latencies.iter().map(|(sent, _)| *sent).min().unwrap_or(0);
    let last = latencies
        .iter()
        .map(|(sent, latency)| sent + latency)
        .max()
        .unwrap_or(0);
    let seconds = Duration::from_nanos((last - first_sent) as u64).as_secs_f64();
    latencies.sort_by_key(|(_, latency)| *latency);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].1 as f64 / 1e6;
    println!(
        "RabbitMQ: consumed {} messages in {seconds:.2} s: {:.0} msg/s; publish-to-handler latency p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / seconds,
        percentile(0.50),
        percentile(0.99)
    );
    Ok(())
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}
