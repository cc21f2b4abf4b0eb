//! loadgen: durable queue load for the messaging benchmark. Deployed as `consumer`, it listens to
//! /queue/bench with concurrency 4 and reports throughput and publish-to-handler latency once it
//! has every message (or, with `-Dloadgen.report=idle`, once no message has come for a second:
//! in a cluster each node's consumer gets a share); deployed as `producer`, it publishes 1 KB
//! persistent messages from several concurrent publishers. `-Dloadgen.messages` and
//! `-Dloadgen.publishers` size the run. The cache and jobs loads are in [`bench`].

mod bench;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use immutant::messaging::Raw;
use immutant::{App, PublishOptions};

const PAYLOAD: usize = 1024;

#[tokio::main]
async fn main() -> immutant::Result<()> {
    let app = App::connect().await?;
    let messages: usize = setting(&app, "loadgen.messages", 20_000);
    let queue = app.queue("/queue/bench").await?;
    match app.name() {
        "consumer" => {
            let latencies = Arc::new(Mutex::new(Vec::with_capacity(messages)));
            let on_idle = app.property("loadgen.report") == Some("idle");
            if on_idle {
                tokio::spawn(report_when_idle(latencies.clone()));
            }
            queue
                .listen(move |Raw(message)| {
                    let latencies = latencies.clone();
                    async move {
                        let sent = u128::from_be_bytes(message.body[..16].try_into()?);
                        let latency = now_nanos().saturating_sub(sent);
                        let mut latencies = latencies.lock().unwrap();
                        latencies.push((sent, latency));
                        if !on_idle && latencies.len() == messages {
                            report(&mut latencies);
                        }
                        Ok(())
                    }
                })
                .concurrency(4)
                .await?;
        }
        // A node given no publishers (-Dloadgen.publishers=0) only consumes.
        "producer" if setting(&app, "loadgen.publishers", 8) == 0 => {}
        "producer" => {
            let publishers: usize = setting(&app, "loadgen.publishers", 8);
            tokio::spawn(async move {
                let started = Instant::now();
                let tasks = (0..publishers).map(|p| {
                    let queue = queue.clone();
                    let count = messages / publishers + usize::from(p < messages % publishers);
                    tokio::spawn(async move {
                        for _ in 0..count {
                            let mut body = vec![0u8; PAYLOAD];
                            body[..16].copy_from_slice(&now_nanos().to_be_bytes());
                            if let Err(error) =
                                queue.publish_bytes(body, PublishOptions::default()).await
                            {
                                eprintln!("publish failed: {error}");
                            }
                        }
                    })
                });
                for task in tasks.collect::<Vec<_>>() {
                    let _ = task.await;
                }
                let seconds = started.elapsed().as_secs_f64();
                println!(
                    "published {messages} messages from {publishers} publishers in {seconds:.2} s: {:.0} msg/s",
                    messages as f64 / seconds
                );
            });
        }
        "cacheload" => bench::cache_load(&app).await?,
        "jobclock" => bench::job_clock(&app).await?,
        other => eprintln!("loadgen does not know what '{other}' should do"),
    }
    app.run().await
}

/// Reports once messages have come and then none for a second.
async fn report_when_idle(latencies: Arc<Mutex<Vec<(u128, u128)>>>) {
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut latencies = latencies.lock().unwrap();
        if !latencies.is_empty() && latencies.len() == seen {
            let last_handled = latencies
                .iter()
                .map(|(sent, latency)| sent + latency)
                .max()
                .unwrap_or(0);
            report_until(&mut latencies, last_handled);
            return;
        }
        seen = latencies.len();
    }
}

/// Prints throughput (first publish to last handler) and latency percentiles.
fn report(latencies: &mut [(u128, u128)]) {
    report_until(latencies, now_nanos());
}

/// Prints throughput from the first publish to `last_handled`, latency percentiles, and the
/// window (in unix nanoseconds) so that reports of several nodes can be combined.
fn report_until(latencies: &mut [(u128, u128)], last_handled: u128) {
    let first_sent = latencies.iter().map(|(sent, _)| *sent).min().unwrap_or(0);
    let seconds = Duration::from_nanos((last_handled - first_sent) as u64).as_secs_f64();
    latencies.sort_by_key(|(_, latency)| *latency);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].1 as f64 / 1e6;
    println!(
        "consumed {} messages in {seconds:.2} s: {:.0} msg/s; publish-to-handler latency p50 {:.2} ms, p99 {:.2} ms; window {first_sent} {last_handled}",
        latencies.len(),
        latencies.len() as f64 / seconds,
        percentile(0.50),
        percentile(0.99)
    );
}

fn setting(app: &App, name: &str, default: usize) -> usize {
    app.property(name)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}
