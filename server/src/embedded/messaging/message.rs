//! A message as the node holds it, and as the journal stores it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use immutant_protocol::MessageHeader;
use serde::{Deserialize, Serialize};

/// A message on a queue.
#[derive(Debug, Clone)]
pub struct Message {
    pub header: MessageHeader,
    pub body: Bytes,
    pub persistent: bool,
    /// Unix time in milliseconds after which the message is dropped undelivered.
    pub expires_at_ms: Option<u64>,
    /// Whether another node forwarded it here, for this node's consumers.
    pub forwarded: bool,
    /// For a forwarded message, who forwarded it: `<node>@<generation>/<id>`, the same on
    /// every retry of one forward.
    pub origin: Option<String>,
}

/// What the journal keeps besides the payload.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct StoredHeader {
    header: MessageHeader,
    expires_at_ms: Option<u64>,
    #[serde(default)]
    forwarded: bool,
    #[serde(default)]
    origin: Option<String>,
}

impl Message {
    /// The journal record: a u32 length, the header as JSON, then the payload.
    pub fn to_record(&self) -> Bytes {
        let header = serde_json::to_vec(&StoredHeader {
            header: self.header.clone(),
            expires_at_ms: self.expires_at_ms,
            forwarded: self.forwarded,
            origin: self.origin.clone(),
        })
        .expect("a message header is plain data");
        let mut record = BytesMut::with_capacity(4 + header.len() + self.body.len());
        record.put_u32(header.len() as u32);
        record.put_slice(&header);
        record.put_slice(&self.body);
        record.freeze()
    }

    /// Reads a journal record back; `None` if it is damaged.
    pub fn from_record(mut record: Bytes) -> Option<Message> {
        if record.len() < 4 {
            return None;
        }
        let length = record.get_u32() as usize;
        if length > record.len() {
            return None;
        }
        let stored: StoredHeader = serde_json::from_slice(&record[..length]).ok()?;
        record.advance(length);
        Some(Message {
            header: stored.header,
            body: record,
            persistent: true,
            expires_at_ms: stored.expires_at_ms,
            forwarded: stored.forwarded,
            origin: stored.origin,
        })
    }

    /// A reply that came from another node, for an app of this one.
    pub fn reply(header: MessageHeader, body: Bytes) -> Message {
        Message {
            header,
            body,
            persistent: false,
            expires_at_ms: None,
            forwarded: true,
            origin: None,
        }
    }

    /// Whether the message is for this node's apps alone: one another node forwarded here.
    pub fn is_local_only(&self) -> bool {
        self.forwarded
    }

    /// Whether the message has outlived its ttl at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|expires| expires <= now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn records_read_back_as_written() {
        let message = Message {
            header: MessageHeader {
                id: 9,
                destination: "/queue/a".into(),
                priority: 7,
                properties: BTreeMap::from([("k".to_string(), "v".to_string())]),
                correlation_id: Some("c".into()),
                content_type: "application/json".into(),
                reply_to: None,
                delivery_count: 0,
                published_at_ms: 5,
            },
            body: Bytes::from_static(b"\x00\x01payload"),
            persistent: true,
            expires_at_ms: Some(77),
            forwarded: true,
            origin: Some("one@1/7".into()),
        };
        let read = Message::from_record(message.to_record()).unwrap();
        assert_eq!(read.header, message.header);
        assert_eq!(read.body, message.body);
        assert_eq!(read.expires_at_ms, Some(77));
        assert_eq!(read.origin.as_deref(), Some("one@1/7"));
        assert!(read.forwarded);
        assert!(Message::from_record(Bytes::from_static(b"\x00\x00\x00\xffxx")).is_none());
    }
}
