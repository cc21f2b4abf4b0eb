//! Setting JetStream up: opening (making if needed) a cluster's streams and key-value buckets,
//! asking again while JetStream is busy.

use std::time::Duration;

use async_nats::jetstream;
use tracing::warn;

use super::errors::is_busy_stream;
use super::{Nats, NatsError};

/// How long a node asks a busy JetStream again to set a stream, bucket or consumer up.
const SETUP_PATIENCE: Duration = Duration::from_secs(30);

impl Nats {
    /// Opens (making it if needed) one of this cluster's key-value buckets, keeping one
    /// value per key, each for `max_age` after it was written.
    pub async fn bucket(
        &self,
        what: &str,
        max_age: Duration,
    ) -> Result<jetstream::kv::Store, NatsError> {
        let bucket = self.name(what);
        // The stream a bucket is, made here: the client's own `create_key_value` first asks
        // for the account's details, which it cannot read from a 2.9 server.
        let stream = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            allow_rollup: true,
            deny_delete: true,
            // Reads from the bucket's leader: a direct get may be answered by a replica
            // behind it.
            allow_direct: false,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        let failed = |error: String| self.setup_error(format!("the bucket {bucket}"), error);
        self.stream(stream)
            .await
            .map_err(|error| failed(error.to_string()))?;
        self.jetstream
            .get_key_value(&bucket)
            .await
            .map_err(|error| failed(error.to_string()))
    }

    /// Opens the stream `config` names, making it if needed (see [`Nats::patiently`]).
    pub async fn stream(
        &self,
        config: jetstream::stream::Config,
    ) -> Result<jetstream::stream::Stream, jetstream::context::CreateStreamError> {
        let what = format!("the stream {}", config.name);
        self.patiently(&what, is_busy_stream, || {
            self.jetstream.get_or_create_stream(config.clone())
        })
        .await
    }

    /// Asks JetStream with `ask` again, for up to [`SETUP_PATIENCE`], while it answers `busy`
    /// (its request timed out, it had no leader, or not enough servers for the replicas): a
    /// NATS cluster that has just started or is electing answers soon. `ask` must be the same
    /// request each time, of a stream or consumer named by this node (making one that exists
    /// with the same config is no error), so that a request that timed out but landed and is
    /// made again does not make a second one.
    pub async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        what: &str,
        busy: fn(&E) -> bool,
        mut ask: impl FnMut() -> F,
    ) -> Result<T, E> {
        let started = std::time::Instant::now();
        let mut told = false;
        loop {
            match ask().await {
                Err(error) if busy(&error) && started.elapsed() < SETUP_PATIENCE => {
                    if !told {
                        warn!(
                            "NATS at {} did not set up {what} yet ({error}); asking again for up to {} s",
                            self.url,
                            SETUP_PATIENCE.as_secs()
                        );
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                answer => return answer,
            }
        }
    }

    /// The error of setting `what` up.
    pub fn setup_error(&self, what: String, error: impl std::fmt::Display) -> NatsError {
        NatsError::Setup {
            url: self.url.clone(),
            what,
            reason: error.to_string(),
        }
    }
}
