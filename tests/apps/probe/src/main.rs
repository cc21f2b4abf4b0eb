//! probe: an app for the end-to-end tests. It does what its deployment name says, so one build
//! serves every test; each behaviour prints lines the tests wait for.

use std::time::Duration;

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
        "reqrep" => request_reply(&app).await?,
        "reader" => read_news(&app).await?,
        "publisher" => publish_news(&app).await?,
        "errors" => refusals(&app).await?,
        "ordering" => ordering(&app).await?,
        "herald" => herald(&app).await?,
        "drain" => drain(&app).await?,
        "asker" => ask_across(&app).await?,
        other => eprintln!("probe does not know what '{other}' should do"),
    }
    println!("settings: {}", app.settings());
    app.run().await
}

/// A listener that always fails: its message ends in /queue/DLQ after 10 deliveries.
async fn dead_letters(app: &App) -> immutant::Result<()> {
    let failing = app.queue("/queue/failing").await?;
    failing
        .listen(|Raw(message)| async move {
            println!("attempt {}", message.header.delivery_count);
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
    failing.publish(&"doomed").await
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

/// Answers requests on /queue/echo, then asks itself one.
async fn request_reply(app: &App) -> immutant::Result<()> {
    let echo = app.queue("/queue/echo").await?;
    echo.respond(|text: String| async move { Ok(format!("echo: {text}")) })
        .await?;
    let reply: String = echo.request(&"hello", Duration::from_secs(10)).await?;
    println!("reply: {reply}");
    let inbox = app.queue("/queue/inbox").await?;
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
