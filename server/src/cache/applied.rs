//! Writes this node carried out as a key's primary, by the caller's request id, so that a
//! caller's retry (sent after a timeout, when the first had arrived after all) is answered with
//! what the first did rather than applied again: a `replace` retried must not fail because it
//! already succeeded, and a `swap` must not run its function twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::watch;

use super::lock;
use super::peer::PeerAnswer;

/// How many requests are remembered: far more than a caller retries within.
const REMEMBERED: usize = 4096;

/// An answer, once there is one.
type Answer = Option<(PeerAnswer, Bytes)>;

/// The requests carried out (or being carried out).
#[derive(Default)]
pub(super) struct Applied {
    remembered: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    answers: HashMap<String, watch::Receiver<Answer>>,
    /// Their ids, oldest first, to forget the oldest.
    order: VecDeque<String>,
}

/// Whether a request is this caller's to carry out, or a retry of one already taken.
pub(super) enum Turn {
    /// Carry it out, then say what came of it with [`Applied::done`].
    Mine(watch::Sender<Answer>),
    /// Carried out (or being carried out) already: the answer to give.
    Retry(watch::Receiver<Answer>),
}

impl Applied {
    /// Takes the request `id`: the first time, it is the caller's to carry out.
    pub(super) fn take(&self, id: &str) -> Turn {
        let mut guard = lock(&self.remembered);
        let Remembered { answers, order } = &mut *guard;
        if let Some(answer) = answers.get(id) {
            return Turn::Retry(answer.clone());
        }
        let (sender, receiver) = watch::channel(None);
        answers.insert(id.to_string(), receiver);
        order.push_back(id.to_string());
        while order.len() > REMEMBERED {
            if let Some(oldest) = order.pop_front() {
                answers.remove(&oldest);
            }
        }
        Turn::Mine(sender)
    }

    /// The request `id` came to `answer`. A failure is forgotten, so that a retry is carried
    /// out afresh; anything else is what its retries are answered with.
    pub(super) fn done(&self, id: &str, turn: watch::Sender<Answer>, answer: &(PeerAnswer, Bytes)) {
        if matches!(answer.0, PeerAnswer::Failed { .. }) {
            lock(&self.remembered).answers.remove(id);
        }
        turn.send_replace(Some(answer.clone()));
    }
}

/// What a retry is answered with: the first's answer, once it has one.
pub(super) async fn answer_of(mut first: watch::Receiver<Answer>) -> (PeerAnswer, Bytes) {
    match first.wait_for(Option::is_some).await {
        Ok(answer) => answer.clone().unwrap_or_else(interrupted),
        Err(_) => interrupted(),
    }
}

fn interrupted() -> (PeerAnswer, Bytes) {
    let reason = "the first try of this request was interrupted; try again".to_string();
    (PeerAnswer::Failed { reason }, Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use immutant_protocol::CacheOutcome;

    #[tokio::test]
    async fn a_retry_gets_the_first_answer_and_a_failure_is_tried_afresh() {
        let applied = Applied::default();
        let Turn::Mine(first) = applied.take("a") else {
            panic!("the first try is the caller's")
        };
        let Turn::Retry(retry) = applied.take("a") else {
            panic!("a retry is not carried out again")
        };
        let answer = (
            PeerAnswer::Done {
                outcome: CacheOutcome::default(),
            },
            Bytes::from_static(b"v"),
        );
        applied.done("a", first, &answer);
        let (got, value) = answer_of(retry).await;
        assert!(matches!(got, PeerAnswer::Done { .. }));
        assert_eq!(value, "v");

        let Turn::Mine(failing) = applied.take("b") else {
            panic!()
        };
        let failed = (
            PeerAnswer::Failed {
                reason: "no".to_string(),
            },
            Bytes::new(),
        );
        applied.done("b", failing, &failed);
        assert!(matches!(applied.take("b"), Turn::Mine(_)), "tried afresh");
    }
}
