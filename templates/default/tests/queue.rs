//! {{name}}'s tests. They talk to a node as the app does: run them with `cargo immutant test`,
//! which starts a throwaway node for them and stops it afterwards (plain `cargo test` has no
//! node to connect to).

use std::time::Duration;

#[tokio::test]
async fn what_is_published_to_the_queue_can_be_received() -> immutant::Result<()> {
    let app = immutant::App::connect().await?;
    let queue = app.queue("/queue/msg").await?;
    queue.publish(&42u64).await?;
    let received: Option<u64> = queue.receive(Some(Duration::from_secs(5))).await?;
    assert_eq!(received, Some(42));
    Ok(())
}
