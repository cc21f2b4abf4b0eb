//! What a destination is in JetStream, by name: a queue is the stream `Q_<name>` on the subject
//! `q.<name>`, a topic `T_<name>` on `t.<name>` (within the cluster's names, see
//! [`Nats::name`](crate::nats::Nats::name)); the consumer its listeners or receivers pull from; and the subjects replies
//! to this node's apps travel on, over core NATS.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::GetStreamErrorKind;
use immutant_protocol::DestinationKind;

use super::state::Known;
use super::{ACK_WAIT, Queues, WORKERS, engine_error};
use crate::nats::{is_busy_consumer, token};
use crate::vocabulary::messaging::{ConsumerKey, MessagingError};
use immutant_foundation::sync::lock;

impl Queues {
    /// What `name` is, if any node started it.
    pub(super) async fn known(&self, name: &str) -> Result<Option<Known>, MessagingError> {
        if let Some(known) = lock(&self.state).known.get(name) {
            return Ok(Some(*known));
        }
        for kind in [DestinationKind::Queue, DestinationKind::Topic] {
            match self
                .nats
                .jetstream
                .get_stream(self.stream_name(name, kind))
                .await
            {
                Ok(_) => {
                    let known = Known { kind };
                    lock(&self.state).known.insert(name.to_string(), known);
                    return Ok(Some(known));
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        GetStreamErrorKind::JetStream(error)
                            if error.error_code() == ErrorCode::STREAM_NOT_FOUND
                    ) => {}
                Err(error) => {
                    return Err(engine_error(format!(
                        "cannot look up {name} in NATS: {error}"
                    )));
                }
            }
        }
        Ok(None)
    }

    pub(super) fn stream_name(&self, name: &str, kind: DestinationKind) -> String {
        self.nats.name(&stream_of(name, kind))
    }

    pub(super) fn subject_of(&self, name: &str, kind: DestinationKind) -> String {
        self.nats.subject(&subject_within(name, kind))
    }

    /// The JetStream consumer a listener or receiver of `destination` pulls from.
    pub(super) async fn consumer(
        &self,
        key: ConsumerKey,
        destination: &str,
        client_id: Option<&str>,
    ) -> Result<PullConsumer, MessagingError> {
        if !lock(&self.state).outboxes.contains_key(&key.0) {
            return Err(MessagingError::NotStarted(destination.to_string()));
        }
        let Some(known) = self.known(destination).await? else {
            return Err(MessagingError::NotStarted(destination.to_string()));
        };
        let stream_name = self.stream_name(destination, known.kind);
        let stream = self
            .nats
            .jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|error| engine_error(format!("cannot open {destination}: {error}")))?;
        let (name, config) = consumer_config(known.kind, client_id, || self.nats.unique())?;
        let what = format!("a consumer of {destination}");
        let made = self.nats.patiently(&what, is_busy_consumer, || async {
            match &name {
                Some(name) => stream.get_or_create_consumer(name, config.clone()).await,
                None => stream.create_consumer(config.clone()).await,
            }
        });
        made.await.map_err(|error| {
            engine_error(format!(
                "cannot make a consumer of {destination} in NATS: {error}"
            ))
        })
    }
}

/// The stream of the destination `name`, within the cluster's names.
pub(super) fn stream_of(name: &str, kind: DestinationKind) -> String {
    let prefix = match kind {
        DestinationKind::Queue => "Q",
        DestinationKind::Topic => "T",
    };
    format!("{prefix}_{}", token(name))
}

/// The subject of the destination `name`, within the cluster's subjects.
pub(super) fn subject_within(name: &str, kind: DestinationKind) -> String {
    let prefix = match kind {
        DestinationKind::Queue => "q",
        DestinationKind::Topic => "t",
    };
    format!("{prefix}.{}", token(name))
}

/// The name (none for an ephemeral one, made rather than looked up) and config of the consumer
/// a listener or receiver of a destination of `kind` pulls from: a queue's listeners all share
/// [`WORKERS`]; a durable subscriber to a topic has one of its client id's; any other has an
/// ephemeral one, named by `ephemeral`.
pub(super) fn consumer_config(
    kind: DestinationKind,
    client_id: Option<&str>,
    ephemeral: impl FnOnce() -> String,
) -> Result<(Option<String>, consumer::pull::Config), MessagingError> {
    let shared = |durable: String| consumer::pull::Config {
        durable_name: Some(durable),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        ..Default::default()
    };
    let named = match (kind, client_id) {
        (DestinationKind::Queue, _) => (Some(WORKERS.to_string()), shared(WORKERS.into())),
        (DestinationKind::Topic, Some(client))
            if client.is_empty() || client.contains(['#', '@']) =>
        {
            return Err(MessagingError::BadClientId(client.to_string()));
        }
        (DestinationKind::Topic, Some(client)) => {
            let name = format!("S_{}", token(client));
            // A new durable subscription starts at the next message, as on the embedded
            // engine (an existing one goes on where it was).
            let config = consumer::pull::Config {
                deliver_policy: DeliverPolicy::New,
                ..shared(name.clone())
            };
            (Some(name), config)
        }
        // Named here, not by the server, so that making it again after a request that
        // timed out (but landed) gives the same consumer, not a second one.
        (DestinationKind::Topic, None) => (
            None,
            consumer::pull::Config {
                name: Some(format!("E_{}", ephemeral())),
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: -1,
                inactive_threshold: Duration::from_secs(10),
                ..Default::default()
            },
        ),
    };
    Ok(named)
}

/// The subject (within the cluster's) a reply to `<node>/<connection>`, a requester's address
/// with its `@` taken off, travels on; none if `target` is no such address.
pub(super) fn reply_subject(target: &str) -> Option<String> {
    let (node, connection) = target.split_once('/')?;
    connection.parse::<u64>().ok()?;
    Some(replies_to(node, connection))
}

/// The subject (within the cluster's) of replies to the app on `connection` of `node`; `*`
/// for any of that node's.
pub(super) fn replies_to(node: &str, connection: &str) -> String {
    format!("reply.{}.{connection}", token(node))
}

/// The connection of the app a reply on `subject` is for.
pub(super) fn reply_connection(subject: &str) -> Option<u64> {
    subject
        .rsplit('.')
        .next()
        .and_then(|connection| connection.parse::<u64>().ok())
}
