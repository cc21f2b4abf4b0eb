//! probe: an app for the end-to-end tests. It does what its deployment name says, so one build
//! serves every test; each behaviour prints lines the tests wait for.

use std::time::Duration;

use immutant::cache::{CacheMode, Expiry};
use immutant::jobs::JobRun;
use immutant::messaging::Raw;
use immutant::{App, Daemon, PublishOptions};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> immutant::Result<()> {
    let app = App::connect().await?;
    match app.name() {
        "dlq" => dead_letters(&app).await?,
        "crashonce" => crash_once(&app),
        "crashloop" => {
            eprintln!("always broken: the probe cannot find its config");
            std::process::exit(2);
        }
        "daemon" => {
            app.daemon(
                "worker",
                Worker {
                    stop: Notify::new(),
                },
            )
            .await?;
        }
        "runner" => runner(&app).await?,
        "printer" => {
            app.daemon(
                "printer",
                Printer {
                    stop: Notify::new(),
                },
            )
            .await?;
        }
        "wire" => wire(&app).await?,
        "loadq" => load_queue(&app).await?,
        "filler" => fill_queue(&app).await?,
        "reqrep" => request_reply(&app).await?,
        "reader" => read_news(&app).await?,
        "publisher" => publish_news(&app).await?,
        "errors" => refusals(&app).await?,
        "ordering" => ordering(&app).await?,
        "herald" => herald(&app).await?,
        "drain" => drain(&app).await?,
        "asker" => ask_across(&app).await?,
        "ticker" => ticker(&app).await?,
        "repeater" => repeater(&app).await?,
        "badcron" => bad_cron(&app).await?,
        "swapper" => swapper(&app).await?,
        "sharer" => sharer(&app).await?,
        "expiry" => expiry(&app).await?,
        "persister" => persister(&app).await?,
        "distributor" => distributor(&app).await?,
        "invalidator" => invalidator(&app).await?,
        "fickle" => fickle(&app).await?,
        "casclient" => cas_client(&app).await?,
        "fastjob" => {
            let node = app.node_name().to_string();
            app.job("fast")
                .every(Duration::from_millis(100))
                .schedule(move |run| {
                    print_run("fast", &node, &run);
                    async { Ok(()) }
                })
                .await?;
        }
        other => eprintln!("probe does not know what '{other}' should do"),
    }
    println!("settings: {}", app.settings());
    if let Some(echo) = app.property("probe.echo") {
        println!("probe.echo: {} bytes", echo.len());
    }
    println!(
        "cluster secret visible: {}",
        app.property("immutant.cluster.secret").is_some()
    );
    app.run().await
}

/// A listener that always fails: its message ends in /queue/DLQ after 10 deliveries.
/// `-Dprobe.attempt-ms=N` makes each attempt take N ms; `-Dprobe.publish=no` publishes nothing
/// (a restart goes on with the message already queued).
async fn dead_letters(app: &App) -> immutant::Result<()> {
    let failing = app.queue("/queue/failing").await?;
    let pause = app
        .property("probe.attempt-ms")
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    failing
        .listen(move |Raw(message)| async move {
            println!("attempt {}", message.header.delivery_count);
            tokio::time::sleep(pause).await;
            Err("the handler always fails".into())
        })
        .await?;
    let dead = app.queue("/queue/DLQ").await?;
    dead.listen(|Raw(message)| async move {
        let payload: String = message.decode()?;
        let reason = message
            .header
            .properties
            .get("dead-letter-reason")
            .cloned()
            .unwrap_or_default();
        println!("dead-lettered: {payload} because {reason}");
        Ok(())
    })
    .await?;
    match app.property("probe.publish") {
        Some("no") => Ok(()),
        _ => failing.publish(&"doomed").await,
    }
}

/// Crashes on its first start only (it leaves a marker in the dir the test gives it).
fn crash_once(app: &App) {
    let dir = app
        .property("probe.dir")
        .expect("the test sets -Dprobe.dir");
    let marker = std::path::Path::new(dir).join("crashed-once");
    if !marker.exists() {
        std::fs::write(&marker, b"").expect("the marker can be written");
        eprintln!("crashing on purpose");
        std::process::exit(3);
    }
    println!("up after a crash");
}

struct Worker {
    stop: Notify,
}

impl Daemon for Worker {
    async fn start(&self) {
        let epoch = immutant::daemon::epoch().unwrap_or_default();
        println!(
            "worker started in pid {} under epoch {epoch}",
            std::process::id()
        );
        self.stop.notified().await;
    }

    async fn stop(&self) {
        println!("worker stopped cleanly");
        self.stop.notify_one();
    }
}

/// Notes `item` as taken in the file `-Dprobe.taken-file` names, if any, before its handler
/// returns: the line the handler prints goes through its node, and a kill -9 of the node right
/// after the message's acknowledgement can lose it; the file keeps what was written to it.
fn note_taken(file: Option<&str>, item: &str) {
    let Some(file) = file else { return };
    let noted = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut notes| {
            std::io::Write::write_all(&mut notes, format!("{item}\n").as_bytes())
        });
    if let Err(error) = noted {
        eprintln!("cannot note {item} in {file}: {error}");
    }
}

/// A persistent topic across nodes, as its node's `-Dprobe.role` says: `publisher` publishes
/// `<pid>-<n>` to /topic/wire every 50 ms and prints `wired: <pid>-<n>` once each publish
/// returned; `subscriber` subscribes durably and prints `got: <item>` (and notes it: see
/// [`note_taken`]).
async fn wire(app: &App) -> immutant::Result<()> {
    let topic = app.topic("/topic/wire").await?;
    let taken_file = app.property("probe.taken-file").map(str::to_string);
    match app.property("probe.role") {
        Some("publisher") => {
            tokio::spawn(async move {
                for n in 0u64.. {
                    let item = format!("{}-{n}", std::process::id());
                    if topic.publish(&item).await.is_ok() {
                        println!("wired: {item}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
        Some("subscriber") => {
            topic
                .subscribe_durable("wire", move |item: String| {
                    let taken_file = taken_file.clone();
                    async move {
                        println!("got: {item}");
                        note_taken(taken_file.as_deref(), &item);
                        Ok(())
                    }
                })
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Load on one queue from every node: publishes `<node>-<pid>-<n>` to /queue/load as fast as
/// each publish returns (printing `loaded: <item>` once it has), and takes what comes
/// (`took: <item>`, and noted: see [`note_taken`]).
async fn load_queue(app: &App) -> immutant::Result<()> {
    let queue = app.queue("/queue/load").await?;
    let taken_file = app.property("probe.taken-file").map(str::to_string);
    queue
        .listen(move |item: String| {
            let taken_file = taken_file.clone();
            async move {
                println!("took: {item}");
                note_taken(taken_file.as_deref(), &item);
                Ok(())
            }
        })
        .concurrency(4)
        .await?;
    let node = app.node_name().to_string();
    tokio::spawn(async move {
        for n in 0u64.. {
            let item = format!("{node}-{}-{n}", std::process::id());
            if queue.publish(&item).await.is_ok() {
                println!("loaded: {item}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    Ok(())
}

/// Publishes to /queue/fill, which nobody listens to, ten times a second: its depth grows.
async fn fill_queue(app: &App) -> immutant::Result<()> {
    let queue = app.queue("/queue/fill").await?;
    tokio::spawn(async move {
        for n in 0u64.. {
            if queue.publish(&n).await.is_ok() {
                println!("filled: {n}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(())
}

/// A singleton daemon that records each instant it runs; and, once it has lost its lease, a
/// publish under the epoch it ran under (a deposed runner trying to change something).
async fn runner(app: &App) -> immutant::Result<()> {
    let ticks = app
        .property("probe.ticks")
        .map(std::path::PathBuf::from)
        .expect("-Dprobe.ticks names the file the runner records in");
    let ran_under = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    app.daemon(
        "runner",
        Runner {
            node: app.node_name().to_string(),
            ticks,
            ran_under: ran_under.clone(),
            stop: Notify::new(),
        },
    )
    .await?;
    let out = app.queue("/queue/deposed").await?;
    tokio::spawn(async move {
        let mut tried = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let epoch = ran_under.load(std::sync::atomic::Ordering::Relaxed);
            let fence = immutant::Fence::new(epoch);
            if epoch == tried || fence.scope(async { immutant::daemon::lease_held() }).await {
                continue;
            }
            tried = epoch;
            let published = fence.scope(out.publish(&"from a deposed runner")).await;
            match published {
                Ok(()) => println!("publish under old epoch {epoch}: accepted"),
                Err(error) => println!("publish under old epoch {epoch}: {error}"),
            }
        }
    });
    Ok(())
}

/// Records, every 5 ms while its lease holds, `<unix µs> <epoch> <node>` in the ticks file: the
/// instants it ran, for the tests to look for two runners at once.
struct Runner {
    node: String,
    ticks: std::path::PathBuf,
    ran_under: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: Notify,
}

impl Daemon for Runner {
    async fn start(&self) {
        use std::io::Write;
        let epoch = immutant::daemon::epoch().unwrap_or_default();
        println!("runner started under epoch {epoch}");
        self.ran_under
            .store(epoch, std::sync::atomic::Ordering::Relaxed);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.ticks)
            .expect("the ticks file opens");
        loop {
            // The instant first, then the lease: if it holds now, it held at that instant.
            let now = unix_us();
            if immutant::daemon::lease_held() {
                let _ = file.write_all(format!("{now} {epoch} {}\n", self.node).as_bytes());
            }
            tokio::select! {
                _ = self.stop.notified() => return,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }

    async fn stop(&self) {
        self.stop.notify_one();
    }
}

/// A singleton daemon that prints `printer epoch=<epoch> at=<unix µs>` every 100 ms and never
/// checks its lease itself: only the SDK keeps it from running past the lease. It says when
/// its start ends (returned, cancelled or aborted), after every line it printed.
struct Printer {
    stop: Notify,
}

impl Daemon for Printer {
    async fn start(&self) {
        let epoch = immutant::daemon::epoch().unwrap_or_default();
        let _ended = PrinterEnded(epoch);
        loop {
            tokio::select! {
                _ = self.stop.notified() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            println!("printer epoch={epoch} at={}", unix_us());
        }
    }

    async fn stop(&self) {
        self.stop.notify_one();
    }
}

/// Dropped with the printer's start, however that ends.
struct PrinterEnded(u64);

impl Drop for PrinterEnded {
    fn drop(&mut self) {
        println!("printer ended epoch={}", self.0);
    }
}

/// Microseconds since the Unix epoch now.
fn unix_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// Answers requests on /queue/echo, then asks itself one.
async fn request_reply(app: &App) -> immutant::Result<()> {
    let echo = app.queue("/queue/echo").await?;
    echo.respond(|text: String| async move { Ok(format!("echo: {text}")) })
        .await?;
    let reply: String = echo.request(&"hello", Duration::from_secs(10)).await?;
    println!("reply: {reply}");
    let inbox = app.queue("/queue/inbox").await?;
    // Only a message past its time to live: the receive gets none, once its time is up.
    let expired = PublishOptions {
        ttl_ms: Some(1),
        ..PublishOptions::default()
    };
    inbox.publish_with(&"expired", expired).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let nothing: Option<String> = inbox.receive(Some(Duration::from_millis(200))).await?;
    println!("receive on an empty queue: {nothing:?}");
    inbox.publish(&"parcel").await?;
    let parcel: Option<String> = inbox.receive(Some(Duration::from_secs(10))).await?;
    println!("receive: {parcel:?}");
    Ok(())
}

/// Publishes `<node>:<n>` to /topic/heralds three times a second, and prints what it hears.
async fn herald(app: &App) -> immutant::Result<()> {
    let heralds = app.topic("/topic/heralds").await?;
    heralds
        .subscribe(|item: String| async move {
            println!("heard: {item}");
            Ok(())
        })
        .await?;
    let node = app.node_name().to_string();
    tokio::spawn(async move {
        for n in 0u64.. {
            let _ = heralds.publish(&format!("{node}:{n}")).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    Ok(())
}

/// On the node given `-Dprobe.drain=listen`, listens to /queue/drain; on the others, publishes
/// ten messages there once the cluster has had time to form.
async fn drain(app: &App) -> immutant::Result<()> {
    let queue = app.queue("/queue/drain").await?;
    if app.property("probe.drain") == Some("listen") {
        queue
            .listen(|item: String| async move {
                println!("drained: {item}");
                Ok(())
            })
            .await?;
        return Ok(());
    }
    let node = app.node_name().to_string();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        for n in 0..10 {
            if queue.publish(&format!("{node}-{n}")).await.is_ok() {
                println!("queued: {node}-{n}");
            }
        }
    });
    Ok(())
}

/// On the node given `-Dprobe.respond=yes`, answers on /queue/ask; on the others, asks there
/// once the cluster has had time to form, so that the question and its answer cross nodes.
async fn ask_across(app: &App) -> immutant::Result<()> {
    let queue = app.queue("/queue/ask").await?;
    let node = app.node_name().to_string();
    if app.property("probe.respond") == Some("yes") {
        queue
            .respond(move |question: String| {
                let node = node.clone();
                async move { Ok(format!("{question} answered by {node}")) }
            })
            .await?;
        return Ok(());
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        match queue
            .request::<_, String>(&format!("ping from {node}"), Duration::from_secs(20))
            .await
        {
            Ok(answer) => println!("answer: {answer}"),
            Err(error) => println!("no answer: {error}"),
        }
    });
    Ok(())
}

/// Messages wait by priority, and one past its ttl is never delivered.
async fn ordering(app: &App) -> immutant::Result<()> {
    let queue = app.queue("/queue/ordering").await?;
    let with = |priority, ttl_ms| PublishOptions {
        priority,
        ttl_ms,
        ..PublishOptions::default()
    };
    queue.publish_with(&"low", with(1, None)).await?;
    queue.publish_with(&"expired", with(9, Some(1))).await?;
    queue.publish_with(&"high", with(9, None)).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    queue
        .listen(|item: String| async move {
            println!("ordered: {item}");
            Ok(())
        })
        .await?;
    Ok(())
}

/// A durable subscriber to /topic/news, and one that only hears what comes while it runs.
async fn read_news(app: &App) -> immutant::Result<()> {
    let news = app.topic("/topic/news").await?;
    news.subscribe_durable("reader", |item: String| async move {
        println!("news: {item}");
        Ok(())
    })
    .await?;
    news.subscribe(|item: String| async move {
        println!("live: {item}");
        Ok(())
    })
    .await?;
    Ok(())
}

/// Publishes news-0, news-1, ... to /topic/news twice a second.
async fn publish_news(app: &App) -> immutant::Result<()> {
    let news = app.topic("/topic/news").await?;
    tokio::spawn(async move {
        for n in 0u64.. {
            let item = format!("news-{n}");
            if news.publish(&item).await.is_ok() {
                println!("published: {item}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Ok(())
}

/// What the node refuses, and says why.
async fn refusals(app: &App) -> immutant::Result<()> {
    let queue = app.queue("/queue/limits").await?;
    let big = vec![7u8; 4096];
    match queue.publish_bytes(big, PublishOptions::default()).await {
        Ok(()) => println!("big message accepted"),
        Err(error) => println!("big message refused: {error}"),
    }
    match queue.publish(&"small").await {
        Ok(()) => println!("small message accepted"),
        Err(error) => println!("small message refused: {error}"),
    }
    match app
        .lookup_queue("/queue/nobody-started")
        .publish(&"lost")
        .await
    {
        Ok(()) => println!("unstarted destination accepted"),
        Err(error) => println!("unstarted destination refused: {error}"),
    }
    Ok(())
}

/// Milliseconds since the Unix epoch of a job's time.
fn unix_ms(time: std::time::SystemTime) -> u128 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

/// Prints what a firing of a job saw.
fn print_run(label: &str, node: &str, run: &JobRun) {
    println!(
        "{label} run={} scheduled={} fired={} epoch={} node={node}",
        run.run,
        unix_ms(run.scheduled),
        unix_ms(run.fired),
        run.epoch
    );
}

/// A singleton job firing every second.
async fn ticker(app: &App) -> immutant::Result<()> {
    let node = app.node_name().to_string();
    app.job("tick")
        .cron("*/1 * * * * ?")
        .schedule(move |run| {
            print_run("tick", &node, &run);
            async { Ok(()) }
        })
        .await
}

/// A singleton job firing every second, 6 times in all.
async fn repeater(app: &App) -> immutant::Result<()> {
    let node = app.node_name().to_string();
    app.job("six")
        .every(Duration::from_secs(1))
        .repeat(5)
        .schedule(move |run| {
            print_run("repeat", &node, &run);
            async { Ok(()) }
        })
        .await
}

/// Schedules a job with an invalid cron expression, and prints the refusal.
async fn bad_cron(app: &App) -> immutant::Result<()> {
    let refused = app
        .job("broken")
        .cron("*/5 * 25 * * ?")
        .schedule(|_| async { Ok(()) })
        .await;
    match refused {
        Ok(()) => println!("bad cron accepted"),
        Err(error) => println!("refused: {error}"),
    }
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    let never = app
        .job("late")
        .after(Duration::from_secs(1))
        .until(past)
        .schedule(|_| async { Ok(()) })
        .await;
    match never {
        Ok(()) => println!("a job that never fires accepted"),
        Err(error) => println!("never: {error}"),
    }
    Ok(())
}

/// Adds 1 to the distributed counter `total` `-Dprobe.swaps` times (100 by default), 10 at a
/// time, then prints the total it sees until it stops changing.
async fn swapper(app: &App) -> immutant::Result<()> {
    let counters = app.cache("counters").lookup_or_create().await?;
    let swaps: u64 = app
        .property("probe.swaps")
        .and_then(|swaps| swaps.parse().ok())
        .unwrap_or(100);
    // Give the other members time to join before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let workers: Vec<_> = (0..10)
        .map(|_| {
            let counters = counters.clone();
            tokio::spawn(async move {
                for _ in 0..swaps / 10 {
                    counters
                        .swap("total", |total: Option<u64>| total.unwrap_or(0) + 1)
                        .await?;
                }
                Ok::<(), immutant::Error>(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a swap worker panicked")?;
    }
    println!("swaps done");
    print_changes(Duration::from_millis(200), move || {
        let counters = counters.clone();
        async move {
            let total: Option<u64> = counters.get("total").await.ok().flatten();
            format!("total: {}", total.unwrap_or(0))
        }
    });
    Ok(())
}

/// Prints the line `line` makes, every `every`, whenever it differs from the last one.
fn print_changes<F, Fut>(every: Duration, line: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let now = line().await;
            if last.as_ref() != Some(&now) {
                println!("{now}");
                last = Some(now);
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// Shares the replicated cache `shared`: the first node to get there writes ten entries; every
/// node then says who wrote them and how many it sees.
async fn sharer(app: &App) -> immutant::Result<()> {
    let shared = app
        .cache("shared")
        .mode(CacheMode::Replicated)
        .lookup_or_create()
        .await?;
    let node = app.node_name().to_string();
    if shared.put_if_absent("writer", &node).await?.is_none() {
        for n in 0..10 {
            shared.put(format!("entry-{n}"), &n).await?;
        }
    }
    let writer: Option<String> = shared.get("writer").await?;
    let mut entries = 0;
    for n in 0..10 {
        if shared.get::<u32>(format!("entry-{n}")).await?.is_some() {
            entries += 1;
        }
    }
    println!(
        "shared: writer={} entries={entries}",
        writer.unwrap_or_default()
    );
    Ok(())
}

/// Entries with a time to live: one for the cache's ttl, one for its own.
async fn expiry(app: &App) -> immutant::Result<()> {
    let brief = app
        .cache("brief")
        .ttl(Duration::from_millis(500))
        .lookup_or_create()
        .await?;
    brief.put("short", &"lived").await?;
    let own = Expiry {
        ttl_ms: Some(3_000),
        idle_ms: None,
    };
    brief.put_with("longer", &"lived", own).await?;
    let exists = match app.cache("brief").create().await {
        Ok(_) => "accepted".to_string(),
        Err(error) => error.to_string(),
    };
    println!(
        "fresh: {:?} {:?}",
        brief.get::<String>("short").await?,
        brief.get::<String>("longer").await?
    );
    println!("create again: {exists}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    println!(
        "later: {:?} {:?}",
        brief.get::<String>("short").await?,
        brief.get::<String>("longer").await?
    );
    Ok(())
}

/// Counts its starts in a persisted cache: the count outlives a restart of the node.
async fn persister(app: &App) -> immutant::Result<()> {
    let kept = app
        .cache("kept")
        .mode(CacheMode::Local)
        .persist(true)
        .lookup_or_create()
        .await?;
    let boots = kept
        .swap("boots", |boots: Option<u64>| boots.unwrap_or(0) + 1)
        .await?;
    println!("boots: {boots}");
    Ok(())
}

/// Shares the distributed cache `spread` (two owners a key): the first node to get there writes
/// 30 entries; every node then prints how many it can read, whenever that changes.
async fn distributor(app: &App) -> immutant::Result<()> {
    let spread = app.cache("spread").lookup_or_create().await?;
    let node = app.node_name().to_string();
    if spread.put_if_absent("writer", &node).await?.is_none() {
        for n in 0..30 {
            spread.put(format!("entry-{n}"), &n).await?;
        }
    }
    print_changes(Duration::from_millis(300), move || {
        let spread = spread.clone();
        async move {
            let mut readable = 0;
            for n in 0..30 {
                if let Ok(Some(_)) = spread.get::<u32>(format!("entry-{n}")).await {
                    readable += 1;
                }
            }
            format!("readable: {readable}")
        }
    });
    Ok(())
}

/// Writes its node's name under `k` in the invalidated cache `near`, and `mine` under a key of
/// its own, then prints the value it has for each whenever that changes: a write on another
/// node removes `k` here, a clear on another node (made on the node given `-Dprobe.clear=yes`,
/// after 2 s) removes both.
async fn invalidator(app: &App) -> immutant::Result<()> {
    let near = app
        .cache("near")
        .mode(CacheMode::Invalidated)
        .lookup_or_create()
        .await?;
    near.put("k", &app.node_name()).await?;
    // A key of this node's own, which no other node writes: only a clear elsewhere takes it.
    let own = format!("own-{}", app.node_name());
    near.put(&own, &"mine").await?;
    if app.property("probe.clear") == Some("yes") {
        let near = near.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            match near.clear().await {
                Ok(()) => println!("cleared"),
                Err(error) => println!("clear: {error}"),
            }
        });
    }
    let watched = near.clone();
    print_changes(Duration::from_millis(100), move || {
        let near = watched.clone();
        async move {
            let value: Option<String> = near.get("k").await.ok().flatten();
            format!("k: {value:?}")
        }
    });
    print_changes(Duration::from_millis(100), move || {
        let (near, own) = (near.clone(), own.clone());
        async move {
            let value: Option<String> = near.get(&own).await.ok().flatten();
            format!("own: {value:?}")
        }
    });
    Ok(())
}

/// On the node given `-Dprobe.fickle=slow`, consumes /queue/fickle slowly for two seconds and
/// then stops; on the others, consumes it quickly and publishes 30 messages there once the
/// cluster has had time to form. What was forwarded to the slow node and not consumed there
/// moves on to the others once it has had no consumer for a second.
async fn fickle(app: &App) -> immutant::Result<()> {
    let queue = app.queue("/queue/fickle").await?;
    let node = app.node_name().to_string();
    let slow = app.property("probe.fickle") == Some("slow");
    let listener = queue
        .listen(move |n: u32| {
            let node = node.clone();
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                println!("fickle {n} consumed on {node}");
                Ok(())
            }
        })
        .await?;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if slow {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = listener.unlisten().await;
            println!("fickle stopped listening");
            return;
        }
        for n in 0..30u32 {
            let _ = queue.publish(&n).await;
        }
        println!("fickle published 30");
    });
    Ok(())
}

/// Issue 26's compare-and-set clients: four tasks that each, until the file named by
/// `-Dprobe.cas.stop` exists, read `counter` in the cache `cas` with `get_latest` and add one to
/// it by compare-and-set (`put_if_absent` of 1 when it has no value, `replace(v, v + 1)`
/// otherwise). Every invocation and response goes to the history file
/// `<probe.cas.dir>/<node>-<pid>.history` as it happens, one `write(2)` per line on a file
/// opened for appending, so that what was recorded survives a kill -9 of the app:
///
/// ```text
/// invoke <client> <id> <ns> read | cas <expected|-> <new> | final
/// ok <id> <ns> read <value|-> | cas <true|false> | final <value|->
/// err <id> <ns> <error>
/// ```
///
/// `<client>` is `<pid>:<task>`, `<ns>` nanoseconds since the Unix epoch; an `err` answer
/// leaves the operation's outcome unknown. `-Dprobe.cas.mode=distributed` makes the cache
/// distributed (replicated by default); `-Dprobe.cas.pace-ms=N` makes each client wait N ms
/// after each compare-and-set (none by default), for shorter histories. It prints `casclient ready` once the cache is open, and
/// its clients start once the file `<probe.cas.stop>.go` exists (the test makes it once the
/// cluster has formed). Once its clients have stopped it prints `casclient stopped`; then, once
/// the file `<probe.cas.stop>.final` exists (the test makes it when every client everywhere has
/// stopped), it reads the counter once more (recorded as `final`) and prints
/// `casclient final: <value|->`.
async fn cas_client(app: &App) -> immutant::Result<()> {
    let mode = match app.property("probe.cas.mode") {
        Some("distributed") => CacheMode::Distributed,
        _ => CacheMode::Replicated,
    };
    let dir = std::path::PathBuf::from(
        app.property("probe.cas.dir")
            .expect("-Dprobe.cas.dir names the folder of the histories"),
    );
    let stop = std::path::PathBuf::from(
        app.property("probe.cas.stop")
            .expect("-Dprobe.cas.stop names the file that stops the clients"),
    );
    let pace = Duration::from_millis(
        app.property("probe.cas.pace-ms")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0),
    );
    let cache = app.cache("cas").mode(mode).lookup_or_create().await?;
    let pid = std::process::id();
    let path = dir.join(format!("{}-{pid}.history", app.node_name()));
    let history = CasHistory {
        file: std::sync::Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?,
        ),
        next: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    println!("casclient ready");
    tokio::spawn(async move {
        let go = std::path::PathBuf::from(format!("{}.go", stop.display()));
        while !go.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let clients: Vec<_> = (0..4)
            .map(|task| {
                let client = format!("{pid}:{task}");
                tokio::spawn(cas_loop(
                    cache.clone(),
                    history.clone(),
                    client,
                    stop.clone(),
                    pace,
                ))
            })
            .collect();
        for client in clients {
            let _ = client.await;
        }
        println!("casclient stopped");
        let last = std::path::PathBuf::from(format!("{}.final", stop.display()));
        while !last.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let client = format!("{pid}:final");
        let mut error = String::new();
        for _ in 0..100 {
            let id = history.invoke(&client, "final");
            match cache.get_latest::<u64>("counter").await {
                Ok(value) => {
                    history.ok(id, &format!("final {}", shown(value)));
                    println!("casclient final: {}", shown(value));
                    return;
                }
                Err(failed) => {
                    error = failed.to_string();
                    history.err(id, &error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        println!("casclient final: unknown ({error})");
    });
    Ok(())
}

/// One client of [`cas_client`]: reads the counter and adds one to it by compare-and-set, then
/// waits `pace`, until `stop` exists.
async fn cas_loop(
    cache: immutant::cache::Cache,
    history: CasHistory,
    client: String,
    stop: std::path::PathBuf,
    pace: Duration,
) {
    /// How long a client waits after an error answer.
    const AFTER_ERROR: Duration = Duration::from_millis(50);
    while !stop.exists() {
        let id = history.invoke(&client, "read");
        let value = match cache.get_latest::<u64>("counter").await {
            Ok(value) => {
                history.ok(id, &format!("read {}", shown(value)));
                value
            }
            Err(error) => {
                history.err(id, &error.to_string());
                tokio::time::sleep(AFTER_ERROR).await;
                continue;
            }
        };
        let new = value.map_or(1, |v| v + 1);
        let id = history.invoke(&client, &format!("cas {} {new}", shown(value)));
        let swapped = match value {
            None => cache
                .put_if_absent("counter", &new)
                .await
                .map(|had: Option<u64>| had.is_none()),
            Some(v) => cache.replace("counter", &v, &new).await,
        };
        match swapped {
            Ok(swapped) => history.ok(id, &format!("cas {swapped}")),
            Err(error) => {
                history.err(id, &error.to_string());
                tokio::time::sleep(AFTER_ERROR).await;
            }
        }
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
}

/// A value of the counter as the history writes it: `-` for none.
fn shown(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The history file of [`cas_client`], shared by its clients.
#[derive(Clone)]
struct CasHistory {
    /// Opened for appending: each line is one `write(2)`, whole in the file even if the
    /// process is killed right after.
    file: std::sync::Arc<std::fs::File>,
    /// The next operation's id, unique in the file.
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CasHistory {
    /// Records that `client` invokes `what` now (before it does); answers the operation's id.
    fn invoke(&self, client: &str, what: &str) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.line(&format!("invoke {client} {id} {} {what}\n", unix_ns()));
        id
    }

    /// Records operation `id`'s answer, `what`, now (after it came).
    fn ok(&self, id: u64, what: &str) {
        self.line(&format!("ok {id} {} {what}\n", unix_ns()));
    }

    /// Records that operation `id` was answered with `error`: its outcome is unknown.
    fn err(&self, id: u64, error: &str) {
        let error = error.replace(['\n', '\r'], " ");
        self.line(&format!("err {id} {} {error}\n", unix_ns()));
    }

    fn line(&self, line: &str) {
        use std::io::Write;
        // One write(2): `&File` is unbuffered.
        (&*self.file)
            .write_all(line.as_bytes())
            .expect("the history file is written");
    }
}

/// Nanoseconds since the Unix epoch now.
fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}
