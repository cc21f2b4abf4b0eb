//! A message as it travels in NATS: its payload, and what it carries besides (priority,
//! properties, reply address, times) as JSON in one header; and publishing it to a stream.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use immutant_protocol::{MessageHeader, PublishOptions};
use serde::{Deserialize, Serialize};

use crate::nats::Nats;
use crate::vocabulary::messaging::expires_at_ms;

/// The header holding what a message carries besides its payload.
const MESSAGE_HEADER: &str = "Immutant-Message";

/// What a message carries besides its payload, in its NATS header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct Carried {
    priority: u8,
    properties: std::collections::BTreeMap<String, String>,
    correlation_id: Option<String>,
    content_type: String,
    reply_to: Option<String>,
    published_at_ms: u64,
    expires_at_ms: Option<u64>,
}

impl Carried {
    /// What a message published with `options` at `published_at_ms` carries: a time to live of
    /// 0 is none.
    pub(super) fn new(options: PublishOptions, published_at_ms: u64) -> Carried {
        Carried {
            priority: options.priority,
            properties: options.properties,
            correlation_id: options.correlation_id,
            content_type: options.content_type,
            reply_to: options.reply_to,
            published_at_ms,
            expires_at_ms: expires_at_ms(options.ttl_ms, published_at_ms),
        }
    }

    /// Whether the message's time to live is over at `now_ms`.
    pub(super) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Says, on a message moved to the dead letter queue, why and from where.
    pub(super) fn mark_dead_letter(&mut self, destination: &str, reason: String) {
        self.properties
            .insert("dead-letter-reason".to_string(), reason);
        self.properties
            .insert("original-destination".to_string(), destination.to_string());
    }
}

/// Publishes to a stream once, and waits for JetStream's acknowledgement.
pub(super) async fn publish_once(
    nats: &Nats,
    subject: &str,
    carried: &Carried,
    body: Bytes,
    id: &str,
) -> Result<(), String> {
    let message = jetstream::message::PublishMessage::build()
        .payload(body)
        .headers(headers(carried))
        .message_id(id);
    nats.jetstream
        .send_publish(subject.to_string(), message)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The NATS header carrying `carried`.
pub(super) fn headers(carried: &Carried) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        MESSAGE_HEADER,
        serde_json::to_string(carried).unwrap_or_default().as_str(),
    );
    headers
}

/// What the NATS headers say a message carries; none if they do not (or not readably).
pub(super) fn carried(headers: Option<&HeaderMap>) -> Option<Carried> {
    let value = headers?.get(MESSAGE_HEADER)?;
    serde_json::from_str(value.as_str()).ok()
}

/// The header an app is given with a message: `delivered` is how many times it was.
pub(super) fn message_header(
    id: u64,
    destination: &str,
    carried: &Carried,
    delivered: u32,
) -> MessageHeader {
    MessageHeader {
        id,
        destination: destination.to_string(),
        priority: carried.priority,
        properties: carried.properties.clone(),
        correlation_id: carried.correlation_id.clone(),
        content_type: carried.content_type.clone(),
        reply_to: carried.reply_to.clone(),
        delivery_count: delivered,
        published_at_ms: carried.published_at_ms,
    }
}
