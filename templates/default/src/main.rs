//! {{name}}: an Immutant app. `main` is its bootstrap: it starts the queue, listens to it, and
//! registers the singleton daemon `counter`, then hands control to the node.

use std::time::Duration;

use immutant::{App, Daemon, Queue};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> immutant::Result<()> {
    let app = App::connect().await?;
    let queue = app.queue("/queue/msg").await?;
    queue
        .listen(|n: u64| async move {
            println!("received: {n}");
            Ok(())
        })
        .await?;
    app.daemon("counter", Counter { queue, stop: Notify::new() })
        .singleton(true)
        .start()
        .await?;
    app.run().await
}

/// Publishes 0, 1, 2, ... to /queue/msg once a second until it is stopped.
struct Counter {
    queue: Queue,
    stop: Notify,
}

impl Daemon for Counter {
    async fn start(&self) {
        for n in 0u64.. {
            match self.queue.publish(&n).await {
                Ok(()) => println!("sending: {n}"),
                Err(error) => eprintln!("cannot publish {n}: {error}"),
            }
            tokio::select! {
                _ = self.stop.notified() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn stop(&self) {
        self.stop.notify_one();
    }
}
