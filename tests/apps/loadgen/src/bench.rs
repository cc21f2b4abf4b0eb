//! The cache and jobs benchmark's loads (server/benches/cache.rs).
//!
//! Deployed as `cacheload`, it opens the cache `bench` (`-Dloadgen.mode=local|replicated`) and,
//! unless `-Dloadgen.role=hold` (a node that only holds a copy), times `-Dloadgen.ops` puts of
//! 100-byte values from 8 concurrent tasks, then as many gets, and reports both. Deployed as
//! `jobclock`, it schedules a job every 50 ms, 200 times, and reports how late each firing's
//! function started against the time it was due.

use std::time::{Duration, Instant, SystemTime};

use immutant::App;
use immutant::cache::CacheMode;

use crate::setting;

const TASKS: usize = 8;

pub async fn cache_load(app: &App) -> immutant::Result<()> {
    let mode = match app.property("loadgen.mode") {
        Some("replicated") => CacheMode::Replicated,
        _ => CacheMode::Local,
    };
    let cache = app.cache("bench").mode(mode).lookup_or_create().await?;
    if app.property("loadgen.role") == Some("hold") {
        println!("holding the cache");
        return Ok(());
    }
    let ops = setting(app, "loadgen.ops", 20_000);
    tokio::time::sleep(Duration::from_millis(
        setting(app, "loadgen.wait-ms", 0) as u64
    ))
    .await;
    let value = vec![7u8; 100];
    let (writer, reader) = (cache.clone(), cache.clone());
    let put = timed(ops, move |n| {
        let (cache, value) = (writer.clone(), value.clone());
        async move { cache.put(format!("key-{n}"), &value).await }
    })
    .await?;
    let get = timed(ops, move |n| {
        let cache = reader.clone();
        async move {
            cache.get::<Vec<u8>>(format!("key-{n}")).await?;
            Ok(())
        }
    })
    .await?;
    println!("cache {mode}: put {put}; get {get}");
    Ok(())
}

/// Runs `op(0..ops)` from 8 concurrent tasks; answers "R ops/s, p50 A ms, p99 B ms".
async fn timed<F, Fut>(ops: usize, op: F) -> immutant::Result<String>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = immutant::Result<()>> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for n in (task..ops).step_by(TASKS) {
                    let began = Instant::now();
                    op(n).await?;
                    latencies.push(began.elapsed());
                }
                Ok::<_, immutant::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(ops);
    for task in tasks {
        latencies.extend(task.await.expect("a load task panicked")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    Ok(format!(
        "{:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms",
        ops as f64 / seconds,
        percentile(0.50).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3
    ))
}

pub async fn job_clock(app: &App) -> immutant::Result<()> {
    const FIRINGS: usize = 200;
    let delays = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(FIRINGS)));
    app.job("clock")
        .every(Duration::from_millis(50))
        .repeat(FIRINGS as u64 - 1)
        .schedule(move |run| {
            let late = SystemTime::now()
                .duration_since(run.scheduled)
                .unwrap_or_default();
            let delays = delays.clone();
            async move {
                let mut delays = delays.lock().unwrap();
                delays.push(late);
                if delays.len() == FIRINGS {
                    delays.sort();
                    let percentile = |p: f64| delays[((FIRINGS - 1) as f64 * p) as usize];
                    println!(
                        "job trigger delay over {FIRINGS} firings: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                        percentile(0.50).as_secs_f64() * 1e3,
                        percentile(0.99).as_secs_f64() * 1e3,
                        delays[FIRINGS - 1].as_secs_f64() * 1e3
                    );
                }
                Ok(())
            }
        })
        .await
}
