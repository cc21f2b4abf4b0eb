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

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use loadstats::{env_number, report, stamped_body};

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
        let mut handled = Vec::with_capacity(messages);
        while handled.len() < messages {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            handled.push(loadstats::handled(&delivery.data));
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        handled
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
                let body = stamped_body();
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
    report("RabbitMQ", &received.await?);
    Ok(())
}
