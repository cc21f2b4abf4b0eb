//! The cache and jobs benchmark's loads (server/benches/cache.rs).
//!
//! Deployed as `cacheload`, it opens the cache `bench` (`-Dloadgen.mode=local|replicated`) and,
//! unless `-Dloadgen.role=hold` (a node that only holds a copy), waits `-Dloadgen.wait-ms` (for
//! the other nodes to open the cache), makes one untimed put that it retries until it succeeds
//! (a clustered cache takes writes once its primary holds the cache's lease), then times
//! `-Dloadgen.ops` puts of 100-byte values to distinct keys from 8 concurrent tasks, then as
//! many gets, and reports both. On a replicated cache it then times as many compare-and-sets:
//! each task replaces the values of its own keys, which it knows (those its puts left), by new
//! ones; only replaces that answered true count as operations, and the report says how many
//! did. Deployed as `jobclock`, it schedules a job every 50 ms, 200 times, and reports how late
//! each firing's function started against the time it was due.

use std::time::{Duration, Instant, SystemTime};

use immutant::App;
use immutant::cache::{Cache, CacheMode};

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
    warm_up(&cache).await?;
    let value = vec![7u8; 100];
    let (writer, reader) = (cache.clone(), cache.clone());
    let put = timed(ops, move |n| {
        let (cache, value) = (writer.clone(), value.clone());
        async move {
            cache.put(format!("key-{n}"), &value).await?;
            Ok(true)
        }
    })
    .await?
    .0;
    let get = timed(ops, move |n| {
        let cache = reader.clone();
        async move {
            cache.get::<Vec<u8>>(format!("key-{n}")).await?;
            Ok(true)
        }
    })
    .await?
    .0;
    if mode == CacheMode::Local {
        println!("cache {mode}: put {put}; get {get}");
        return Ok(());
    }
    // Each task's keys hold what its puts left; each replace expects that value.
    let (old, new) = (vec![7u8; 100], vec![8u8; 100]);
    let (replace, replaced) = timed(ops, move |n| {
        let (cache, old, new) = (cache.clone(), old.clone(), new.clone());
        async move { cache.replace(format!("key-{n}"), &old, &new).await }
    })
    .await?;
    println!(
        "cache {mode}: put {put}; get {get}; replace {replace} ({replaced} of {ops} answered true)"
    );
    Ok(())
}

/// One put, not timed, tried until it succeeds (for up to a minute): the first write to a
/// clustered cache may wait for, or be refused until, its primary holds the cache's lease.
async fn warm_up(cache: &Cache) -> immutant::Result<()> {
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match cache.put("warm-up", &0u64).await {
            Ok(()) => break,
            Err(error) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("warm-up put {tries} failed: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error),
        }
    }
    println!(
        "first put succeeded after {} ms ({tries} tries)",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Runs `op(0..ops)` from 8 concurrent tasks, task `t` taking the `n` with `n % 8 == t`; only
/// operations that answered true count, and only theirs are timed. Answers "R ops/s, p50 A ms,
/// p99 B ms" and how many answered true.
async fn timed<F, Fut>(ops: usize, op: F) -> immutant::Result<(String, usize)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = immutant::Result<bool>> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for n in (task..ops).step_by(TASKS) {
                    let began = Instant::now();
                    if op(n).await? {
                        latencies.push(began.elapsed());
                    }
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
    let counted = latencies.len();
    if counted == 0 {
        return Ok(("0 ops/s, p50 0.000 ms, p99 0.000 ms".to_string(), 0));
    }
    latencies.sort();
    let percentile = |p: f64| latencies[((counted - 1) as f64 * p) as usize];
    let line = format!(
        "{:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms",
        counted as f64 / seconds,
        percentile(0.50).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3
    );
    Ok((line, counted))
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
