//! What an app may ask of messaging, on either engine: why a request is refused, the checks
//! every publish passes, the dead-letter rule, and what the management API shows of a queue.

use immutant_protocol::{DestinationKind, PublishOptions};

/// Where failed messages go.
pub const DEAD_LETTER_QUEUE: &str = "/queue/DLQ";
/// Deliveries a message gets before it is dead-lettered.
pub const MAX_DELIVERIES: u32 = 10;

/// The longest failure reason a dead-lettered message keeps.
pub const MAX_REASON_CHARS: usize = 1024;

/// `reason` cut to the [`MAX_REASON_CHARS`] a dead-lettered message keeps of it.
pub fn kept_reason(reason: &str) -> &str {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((end, _)) => &reason[..end],
        None => reason,
    }
}

/// When a message published at `published_at_ms` with a time to live of `ttl_ms` expires (unix
/// ms); none without one, or with 0.
pub fn expires_at_ms(ttl_ms: Option<u64>, published_at_ms: u64) -> Option<u64> {
    ttl_ms
        .filter(|ttl| *ttl > 0)
        .map(|ttl| published_at_ms + ttl)
}

/// Who a consumer is: its app connection and its id there.
pub type ConsumerKey = (u64, u64);

/// Why a messaging request was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error(
        "the destination {0} was never started; start it first, as app.queue(\"{0}\") or app.topic(\"{0}\")"
    )]
    NotStarted(String),
    #[error("{name} is a {is}, not a {asked}; use another name for the {asked}")]
    KindMismatch {
        name: String,
        is: &'static str,
        asked: &'static str,
    },
    #[error(
        "'{0}' is not a destination name: use a name like /queue/work or /topic/news, not empty and not starting with @"
    )]
    BadName(String),
    #[error(
        "'{0}' is not a durable subscriber's client id: use one that is not empty and has no # or @"
    )]
    BadClientId(String),
    #[error(
        "a message of {size} bytes is over the limit of {limit} bytes; send less, or raise -Dimmutant.messaging.max-message-size"
    )]
    TooLarge { size: usize, limit: u64 },
    #[error("priority {0} is out of range: use 0 (lowest) to 9 (highest)")]
    BadPriority(u8),
    /// What the embedded engine's journal could not do.
    #[error(transparent)]
    Storage(Box<dyn std::error::Error + Send + Sync>),
    /// What the NATS engine could not do.
    #[error("{0}")]
    Engine(String),
}

/// What the management API shows of a queue: the contract's type.
pub use immutant_contracts::status::QueueStats;

/// Checks what an app publishes from `connection` (its size against `limit`, its priority), and
/// puts in the address that reaches the app for a reply to itself (`@`), on either engine.
pub fn check_publish(
    options: &mut PublishOptions,
    size: usize,
    limit: u64,
    node_name: &str,
    connection: u64,
) -> Result<(), MessagingError> {
    if size as u64 > limit {
        return Err(MessagingError::TooLarge { size, limit });
    }
    if options.priority > 9 {
        return Err(MessagingError::BadPriority(options.priority));
    }
    if options.reply_to.as_deref() == Some("@") {
        options.reply_to = Some(format!("@{node_name}/{connection}"));
    }
    Ok(())
}

/// A destination kind's name, as messages and the management API say it.
pub fn kind_name(kind: DestinationKind) -> &'static str {
    match kind {
        DestinationKind::Queue => "queue",
        DestinationKind::Topic => "topic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_first_1024_characters_of_its_reason() {
        assert_eq!(kept_reason("short"), "short");
        let long = "é".repeat(MAX_REASON_CHARS + 10);
        assert_eq!(kept_reason(&long).chars().count(), MAX_REASON_CHARS);
        assert!(long.starts_with(kept_reason(&long)));
    }

    #[test]
    fn a_ttl_of_0_never_expires() {
        assert_eq!(expires_at_ms(Some(500), 1_000), Some(1_500));
        assert_eq!(expires_at_ms(Some(0), 1_000), None);
        assert_eq!(expires_at_ms(None, 1_000), None);
    }
}
