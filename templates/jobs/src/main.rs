//! {{name}}: an Immutant app. `main` is its bootstrap: it opens the replicated cache `counts`,
//! and schedules the singleton job `increment`, which adds one to the counter in the cache
//! every second and prints it. In a cluster the job fires on one node at a time and the cache
//! is on every node, so the count goes on from where it was when a node dies.

use immutant::App;
use immutant::cache::CacheMode;

#[tokio::main]
async fn main() -> immutant::Result<()> {
    let app = App::connect().await?;
    // lookup_or_create: a second node shares the cache instead of starting a new one.
    let counts = app
        .cache("counts")
        .mode(CacheMode::Replicated)
        .lookup_or_create()
        .await?;
    app.job("increment")
        .cron("*/1 * * * * ?")
        .singleton(true)
        .schedule(move |_run| {
            let counts = counts.clone();
            async move {
                let count = counts
                    .swap("count", |count: Option<u64>| count.unwrap_or(0) + 1)
                    .await?;
                println!("count: {count}");
                Ok(())
            }
        })
        .await?;
    app.run().await
}
