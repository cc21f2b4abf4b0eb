//! Questions to another member's management on the NATS engine: a NATS request on the member's
//! own subject (`ask.<node>` under the cluster's prefix), answered by the member's
//! [`AnswerDesk`]. Only clients with the cluster's NATS credentials reach these subjects, as
//! only holders of the cluster's secret reach a member on the embedded engine.
//!
//! An answer travels as its status (2 bytes, big-endian) and then its body.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, RequestErrorKind, Subject, Subscriber};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use immutant_foundation::shutdown::Shutdown;
use tracing::debug;

use super::{Nats, NatsError, token};
use crate::vocabulary::questions::{Answer, AnswerDesk, AskError, MAX_ANSWER};

/// How long a member may take to answer.
const PATIENCE: Duration = Duration::from_secs(5);
/// The bytes of an answer's status, before its body.
const STATUS_LEN: usize = 2;

/// Answers the questions asked of this node, and asks the other members.
pub struct NatsQuestions {
    nats: Arc<Nats>,
}

impl NatsQuestions {
    /// Answers the questions asked of this node (`node_name`) with `desk`, until `shutdown`;
    /// and asks the others.
    pub async fn start(
        nats: Arc<Nats>,
        node_name: &str,
        desk: Arc<AnswerDesk>,
        shutdown: Shutdown,
    ) -> Result<Arc<NatsQuestions>, NatsError> {
        let questions = nats
            .client
            .subscribe(subject_of(&nats, node_name))
            .await
            .map_err(|error| nats.setup_error("questions".to_string(), error))?;
        tokio::spawn(answer_all(nats.client.clone(), questions, desk, shutdown));
        Ok(Arc::new(NatsQuestions { nats }))
    }

    /// The answer of member `member`'s management to `path` (path and query, e.g.
    /// "/status?history=true").
    pub async fn ask(&self, member: &str, path: &str) -> Result<Answer, AskError> {
        let no_answer = |reason: String| AskError::NoAnswer {
            member: member.to_string(),
            reason,
        };
        let asked = self.nats.client.request(
            subject_of(&self.nats, member),
            Bytes::copy_from_slice(path.as_bytes()),
        );
        let reply = match tokio::time::timeout(PATIENCE, asked).await {
            Ok(Ok(reply)) => reply,
            // No node listens on the member's subject: it is not up in the cluster.
            Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => {
                return Err(AskError::NotMember(member.to_string()));
            }
            Ok(Err(error)) => return Err(no_answer(format!("NATS: {error}"))),
            Err(_) => return Err(no_answer("no answer in time".to_string())),
        };
        decode(reply.payload).ok_or_else(|| no_answer("a garbled answer".to_string()))
    }
}

/// The subject on which `node_name` is asked.
fn subject_of(nats: &Nats, node_name: &str) -> String {
    nats.subject(&format!("ask.{}", token(node_name)))
}

/// Answers each question on `questions` in a task of its own (a slow one must not hold up the
/// others), until `shutdown`.
async fn answer_all(
    client: Client,
    mut questions: Subscriber,
    desk: Arc<AnswerDesk>,
    shutdown: Shutdown,
) {
    loop {
        let question = tokio::select! {
            question = questions.next() => question,
            _ = shutdown.cancelled() => break,
        };
        let Some(question) = question else { return };
        let Some(reply) = question.reply else {
            continue;
        };
        let Ok(path) = String::from_utf8(question.payload.into()) else {
            continue;
        };
        tokio::spawn(answer_one(client.clone(), reply, path, desk.clone()));
    }
    let _ = questions.unsubscribe().await;
}

/// Answers the question `path` on `reply`.
async fn answer_one(client: Client, reply: Subject, path: String, desk: Arc<AnswerDesk>) {
    let answer = desk.answer(path).await;
    let encoded = encode(answer, client.max_payload());
    if let Err(error) = client.publish(reply, encoded).await {
        debug!("Could not send an answer to a member's question over NATS: {error}");
    }
}

/// `answer` as it travels; a 507 instead if it is larger than a member sends, or than NATS
/// carries (`max_payload`, the server's limit on a message).
fn encode((status, body): Answer, max_payload: usize) -> Bytes {
    let (status, body) = if body.len() > MAX_ANSWER {
        (507, Bytes::from_static(b"the answer is too large to relay"))
    } else if STATUS_LEN + body.len() > max_payload {
        let too_large =
            format!("the answer is larger than NATS carries (max_payload {max_payload} bytes)");
        (507, Bytes::from(too_large))
    } else {
        (status, body)
    };
    let mut encoded = BytesMut::with_capacity(STATUS_LEN + body.len());
    encoded.put_u16(status);
    encoded.put_slice(&body);
    encoded.freeze()
}

/// The answer `encoded` carries, if it is one.
fn decode(mut encoded: Bytes) -> Option<Answer> {
    if encoded.len() < STATUS_LEN {
        return None;
    }
    let body = encoded.split_off(STATUS_LEN);
    Some((u16::from_be_bytes([encoded[0], encoded[1]]), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_travels_as_its_status_and_body() {
        let encoded = encode((200, Bytes::from_static(b"{}")), 1 << 20);
        assert_eq!(&encoded[..], b"\x00\xc8{}");
        assert_eq!(decode(encoded), Some((200, Bytes::from_static(b"{}"))));
        assert_eq!(
            decode(encode((404, Bytes::new()), 10)),
            Some((404, Bytes::new()))
        );
        assert_eq!(decode(Bytes::from_static(b"\x01")), None);
    }

    #[test]
    fn an_answer_larger_than_nats_carries_is_a_507() {
        let (status, body) = decode(encode((200, Bytes::from(vec![b'x'; 99])), 100)).unwrap();
        assert_eq!(status, 507);
        assert!(
            String::from_utf8_lossy(&body).contains("max_payload 100 bytes"),
            "{body:?}"
        );
        let fits = decode(encode((200, Bytes::from(vec![b'x'; 98])), 100)).unwrap();
        assert_eq!(fits.0, 200);
        let huge = decode(encode(
            (200, Bytes::from(vec![0; MAX_ANSWER + 1])),
            usize::MAX,
        ));
        assert_eq!(huge.unwrap().0, 507);
    }
}
