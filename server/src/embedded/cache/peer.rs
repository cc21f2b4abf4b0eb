//! What nodes ask each other about caches over the peer links, and how entries travel: their
//! metadata in the frame's header, their values one after another in its body.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use immutant_protocol::{CacheOp, CacheOutcome};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::store::{Entry, Version};
use crate::vocabulary::cache::CacheError;

/// How long a node waits for another to answer a cache request.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A request on its way to another node, and where its answer goes.
pub struct PeerCall {
    pub cache: String,
    pub request: PeerRequest,
    pub body: Bytes,
    pub answer: oneshot::Sender<(PeerAnswer, Bytes)>,
}

/// The links to the other members, by name, as cache requests see them.
#[derive(Default)]
pub struct Peers {
    links: Mutex<HashMap<String, mpsc::UnboundedSender<PeerCall>>>,
}

impl Peers {
    /// The link to `node` takes calls from now on.
    pub fn link(&self, node: &str, calls: mpsc::UnboundedSender<PeerCall>) {
        super::lock(&self.links).insert(node.to_string(), calls);
    }

    /// The link `calls` to `node` is gone (a newer link to a restarted `node` stays).
    pub fn unlink(&self, node: &str, calls: &mpsc::UnboundedSender<PeerCall>) {
        let mut links = super::lock(&self.links);
        if links
            .get(node)
            .is_some_and(|linked| linked.same_channel(calls))
        {
            links.remove(node);
        }
    }

    /// Asks `node` to carry out `request` on `cache`, and waits for its answer.
    pub async fn call(
        &self,
        node: &str,
        cache: &str,
        request: PeerRequest,
        body: Bytes,
    ) -> Result<(PeerAnswer, Bytes), CacheError> {
        let unreachable = || CacheError::Unreachable(node.to_string());
        let (answer, answered) = oneshot::channel();
        let call = PeerCall {
            cache: cache.to_string(),
            request,
            body,
            answer,
        };
        let link = super::lock(&self.links).get(node).cloned();
        link.ok_or_else(unreachable)?
            .send(call)
            .map_err(|_| unreachable())?;
        let sent = std::time::Instant::now();
        match tokio::time::timeout(CALL_TIMEOUT, answered).await {
            Ok(Ok(answer)) => {
                metrics::histogram!("immutant_link_round_trip_seconds", "peer" => node.to_string())
                    .record(sent.elapsed().as_secs_f64());
                Ok(answer)
            }
            _ => Err(unreachable()),
        }
    }
}

/// A request from one node to another about one cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PeerRequest {
    /// Carry out `call` as the cache's primary (the body as the app sent it); a plain `get`
    /// is answered from the copy held. `request` names it, the same on every retry, so that it
    /// is carried out once.
    Op {
        call: CacheOp,
        #[serde(default)]
        request: Option<String>,
    },
    /// The value of `key` here, as this node holds it (no looking elsewhere).
    Read { key: String },
    /// Store these copies if they are newer (the body holds their values). `epoch` is the
    /// primary's that wrote them (or whose state the sender took in, when it moves entries to
    /// their new owners): refused under an older epoch than the holder was fenced with.
    /// `record` is the write's request and outcome, for retries at a later primary. `missed`:
    /// the primary did not copy some writes to this holder while it was out of its view, so
    /// the holder must take the primary's state in again.
    Apply {
        entries: Vec<WireEntry>,
        #[serde(default)]
        epoch: Option<u64>,
        #[serde(default)]
        record: Option<Record>,
        #[serde(default)]
        missed: bool,
    },
    /// Drop these keys: they were written elsewhere (an invalidated cache).
    Invalidate { keys: Vec<String> },
    /// Writes the caller answered as the primary of its side of a partition, which this
    /// node's side never saw: apply, as the cache's primary, each written later than what
    /// this node holds of its key (the body holds their values).
    SideWrites { entries: Vec<WireEntry> },
    /// The caller holds the cache and follows this node as its primary: include it in writes
    /// from now on, and answer with the entries held here, a page at a time: those whose keys
    /// come after `after`.
    Join {
        #[serde(default)]
        after: Option<String>,
    },
    /// The caller takes the cache over as its primary under `epoch`: refuse copies from older
    /// primaries from now on, and answer with the entries held here, a page at a time (the
    /// first with the requests carried out).
    Gather {
        epoch: u64,
        #[serde(default)]
        after: Option<String>,
    },
}

/// A write a primary carried out, named by its caller's request id, with its outcome and the
/// primary's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub outcome: CacheOutcome,
    pub epoch: u64,
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PeerAnswer {
    /// Done; for `op`, the outcome (and the value in the body).
    Done { outcome: CacheOutcome },
    /// A page of the entries held (the body holds their values); `more` if others follow.
    /// `synced` is the epoch of the primary whose state they are; `records` the writes whose
    /// outcome is known here.
    Entries {
        entries: Vec<WireEntry>,
        more: bool,
        #[serde(default)]
        synced: u64,
        #[serde(default)]
        records: Vec<Record>,
    },
    /// The request could not be carried out.
    Failed { reason: String },
    /// A newer primary (of epoch `fenced`) has taken the cache over: what an older one sends
    /// is refused.
    Stale { fenced: u64 },
    /// The node does not hold the cache (any more: it may have restarted).
    NotOpen {},
}

/// The answer to an operation carried out (or not).
pub fn answer(done: &Result<(CacheOutcome, Bytes), CacheError>) -> (PeerAnswer, Bytes) {
    match done {
        Ok((outcome, value)) => (PeerAnswer::Done { outcome: *outcome }, value.clone()),
        Err(error) => {
            let reason = error.to_string();
            (PeerAnswer::Failed { reason }, Bytes::new())
        }
    }
}

/// An entry's metadata on the wire (or on disk); `len` is none for a removed key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WireEntry {
    pub key: String,
    pub version: Version,
    pub len: Option<u64>,
    pub expires_at_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}

/// Entries as metadata and one body.
pub fn pack(entries: &[(String, Entry)]) -> (Vec<WireEntry>, Bytes) {
    let mut body = BytesMut::new();
    let metas = entries
        .iter()
        .map(|(key, entry)| {
            if let Some(value) = &entry.value {
                body.extend_from_slice(value);
            }
            WireEntry {
                key: key.clone(),
                version: entry.version,
                len: entry.value.as_ref().map(|value| value.len() as u64),
                expires_at_ms: entry.expires_at_ms,
                idle_ms: entry.idle_ms,
            }
        })
        .collect();
    (metas, body.freeze())
}

/// Entries back from metadata and a body; none if the body is shorter than they say.
pub fn unpack(metas: Vec<WireEntry>, mut body: Bytes, now: u64) -> Option<Vec<(String, Entry)>> {
    metas
        .into_iter()
        .map(|meta| {
            let value = match meta.len {
                Some(len) if (len as usize) <= body.len() => Some(body.split_to(len as usize)),
                Some(_) => return None,
                None => None,
            };
            let entry = Entry {
                value,
                version: meta.version,
                expires_at_ms: meta.expires_at_ms,
                idle_ms: meta.idle_ms,
                touched_ms: now,
            };
            Some((meta.key, entry))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_wire() {
        let entry = |value: Option<&'static str>, counter| Entry {
            value: value.map(|text: &'static str| Bytes::from_static(text.as_bytes())),
            version: Version {
                epoch: 3,
                counter,
                writer: 7,
            },
            expires_at_ms: Some(100),
            idle_ms: None,
            touched_ms: 5,
        };
        let entries = vec![
            ("a".to_string(), entry(Some("one"), 1)),
            ("b".to_string(), entry(None, 2)),
            ("c".to_string(), entry(Some("three"), 3)),
        ];
        let (metas, body) = pack(&entries);
        assert_eq!(unpack(metas.clone(), body.clone(), 5).unwrap(), entries);
        assert!(unpack(metas, body.slice(..4), 5).is_none());
    }
}
