//! Writes carried out by a cache's primary, by the caller's request id, so that a caller's retry
//! (sent after a timeout, when the first had arrived after all) is answered with what the first
//! did rather than applied again: a `replace` retried must not be reported as failed because it
//! already succeeded.
//!
//! A write's outcome is noted the moment it changes the store, under the store's lock
//! ([`Applied::applied`]): so whatever snapshot of the store holds the write also holds its
//! outcome. The primary copies each outcome to the other holders with the write itself
//! ([`Record`]), and a new primary gathers them with the entries, so a write retried at the next
//! primary is not applied twice either. Remembered in memory, for 30 s and within bounds.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use immutant_protocol::CacheOutcome;
use tokio::sync::watch;

use super::peer::{PeerAnswer, Record};
use immutant_foundation::sync::lock;

/// How many requests are remembered at most.
const REMEMBERED: usize = 16_384;
/// How long a request is remembered: longer than a caller retries within (20 s).
const REMEMBERED_FOR: Duration = Duration::from_secs(30);
/// How many bytes of answers (previous values) are kept at most.
const REMEMBERED_BYTES: usize = 64 << 20;

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
    /// The writes among them that changed the store, with the primary's epoch and the outcome.
    outcomes: HashMap<String, (u64, CacheOutcome)>,
    /// Their ids with when they were taken and the size of their answers, oldest first, to
    /// forget the oldest.
    order: VecDeque<(String, Instant, usize)>,
    /// The bytes of the answers kept.
    bytes: usize,
}

impl Remembered {
    /// Forgets the oldest requests while there are too many, too old or too large; never one
    /// still being carried out, whose retries must wait for its answer.
    fn trim(&mut self) {
        while let Some((id, taken, size)) = self.order.front().cloned() {
            let over = self.order.len() > REMEMBERED
                || taken.elapsed() > REMEMBERED_FOR
                || self.bytes > REMEMBERED_BYTES;
            let answered = self
                .answers
                .get(&id)
                .is_none_or(|answer| answer.borrow().is_some() || answer.has_changed().is_err());
            if !over || !answered {
                break;
            }
            self.order.pop_front();
            self.answers.remove(&id);
            self.outcomes.remove(&id);
            self.bytes -= size;
        }
    }

    /// Forgets the request `id` now.
    fn forget(&mut self, id: &str) {
        self.answers.remove(id);
        self.outcomes.remove(id);
        if let Some(at) = self.order.iter().rposition(|(taken, _, _)| taken == id)
            && let Some((_, _, size)) = self.order.remove(at)
        {
            self.bytes -= size;
        }
    }

    /// Remembers `id` as carried out with `outcome` under `epoch`, answered already.
    fn insert_done(&mut self, id: &str, epoch: u64, outcome: CacheOutcome) {
        let answer = (PeerAnswer::Done { outcome }, Bytes::new());
        let (_, receiver) = watch::channel(Some(answer));
        self.answers.insert(id.to_string(), receiver);
        self.outcomes.insert(id.to_string(), (epoch, outcome));
        self.order.push_back((id.to_string(), Instant::now(), 0));
    }
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
        let mut remembered = lock(&self.remembered);
        remembered.trim();
        if let Some(answer) = remembered.answers.get(id) {
            // A first try that ended without an answer (interrupted) is tried afresh.
            let interrupted = answer.borrow().is_none() && answer.has_changed().is_err();
            if !interrupted {
                return Turn::Retry(answer.clone());
            }
            remembered.forget(id);
        }
        let (sender, receiver) = watch::channel(None);
        remembered.answers.insert(id.to_string(), receiver);
        remembered
            .order
            .push_back((id.to_string(), Instant::now(), 0));
        Turn::Mine(sender)
    }

    /// Notes that the request `id` changed the store under `epoch` with `outcome`: call it
    /// under the store's lock, with the write.
    pub(super) fn applied(&self, id: &str, epoch: u64, outcome: CacheOutcome) {
        let mut remembered = lock(&self.remembered);
        if remembered.answers.contains_key(id) {
            remembered.outcomes.insert(id.to_string(), (epoch, outcome));
        }
    }

    /// The request `id` came to `answer`. A failure of a write that changed nothing is
    /// forgotten, so that a retry is carried out afresh; anything else is what its retries are
    /// answered with.
    pub(super) fn done(&self, id: &str, turn: watch::Sender<Answer>, answer: &(PeerAnswer, Bytes)) {
        {
            let mut remembered = lock(&self.remembered);
            let changed = remembered.outcomes.contains_key(id);
            if matches!(answer.0, PeerAnswer::Failed { .. }) && !changed {
                remembered.forget(id);
            } else if let Some(entry) = remembered
                .order
                .iter_mut()
                // The newest first: a request is done soon after it was taken.
                .rev()
                .find(|(taken, _, _)| taken == id)
            {
                entry.2 = answer.1.len();
                remembered.bytes += answer.1.len();
            }
        }
        turn.send_replace(Some(answer.clone()));
    }

    /// Remembers that the request `record` names was carried out, as the primary that did it
    /// says.
    pub(super) fn record(&self, record: Record) {
        let mut remembered = lock(&self.remembered);
        remembered.trim();
        if !remembered.answers.contains_key(&record.id) {
            remembered.insert_done(&record.id, record.epoch, record.outcome);
        }
    }

    /// Forgets the outcomes of writes carried out under epochs before `epoch`: this node took
    /// in a newer state, which may not have them.
    pub(super) fn forget_before(&self, epoch: u64) {
        let mut remembered = lock(&self.remembered);
        let Remembered {
            answers,
            outcomes,
            order,
            bytes,
        } = &mut *remembered;
        order.retain(|(id, _, size)| {
            let old = outcomes
                .get(id)
                .is_some_and(|(carried_out, _)| *carried_out < epoch);
            if old {
                answers.remove(id);
                outcomes.remove(id);
                *bytes -= size;
            }
            !old
        });
    }

    /// The writes that changed the store, newest first, at most `limit` of them, for a new
    /// primary or a joining holder to take over. Call it under the store's lock, with the
    /// snapshot they go with.
    pub(super) fn records(&self, limit: usize) -> Vec<Record> {
        let remembered = lock(&self.remembered);
        remembered
            .order
            .iter()
            .rev()
            .filter_map(|(id, _, _)| {
                let (epoch, outcome) = *remembered.outcomes.get(id)?;
                Some(Record {
                    id: id.clone(),
                    outcome,
                    epoch,
                })
            })
            .take(limit)
            .collect()
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

    fn done(outcome: CacheOutcome) -> (PeerAnswer, Bytes) {
        (PeerAnswer::Done { outcome }, Bytes::from_static(b"v"))
    }

    fn failed() -> (PeerAnswer, Bytes) {
        let reason = "no".to_string();
        (PeerAnswer::Failed { reason }, Bytes::new())
    }

    #[tokio::test]
    async fn a_retry_gets_the_first_answer_and_a_failure_is_tried_afresh() {
        let applied = Applied::default();
        let Turn::Mine(first) = applied.take("a") else {
            panic!("the first try is the caller's")
        };
        let Turn::Retry(retry) = applied.take("a") else {
            panic!("a retry is not carried out again")
        };
        applied.done("a", first, &done(CacheOutcome::default()));
        let (got, value) = answer_of(retry).await;
        assert!(matches!(got, PeerAnswer::Done { .. }));
        assert_eq!(value, "v");

        let Turn::Mine(failing) = applied.take("b") else {
            panic!()
        };
        applied.done("b", failing, &failed());
        assert!(matches!(applied.take("b"), Turn::Mine(_)), "tried afresh");

        let Turn::Mine(interrupted) = applied.take("c") else {
            panic!()
        };
        drop(interrupted);
        assert!(
            matches!(applied.take("c"), Turn::Mine(_)),
            "an interrupted try is tried afresh"
        );
    }

    #[tokio::test]
    async fn a_write_in_the_store_is_not_tried_afresh_and_its_outcome_travels() {
        let applied = Applied::default();
        let outcome = CacheOutcome {
            found: true,
            applied: true,
        };
        let Turn::Mine(first) = applied.take("a") else {
            panic!()
        };
        applied.applied("a", 4, outcome);
        // Gathered while its copies are on their way: the outcome goes with the entry.
        assert_eq!(applied.records(10)[0].epoch, 4);
        // Its copies failed, but it is in the store: a retry is not carried out again.
        applied.done("a", first, &done(outcome));
        assert!(matches!(applied.take("a"), Turn::Retry(_)));
        applied.forget_before(5);
        assert!(applied.records(10).is_empty(), "a newer state replaced it");
    }

    #[tokio::test]
    async fn a_record_from_the_primary_answers_a_retry_here() {
        let applied = Applied::default();
        let outcome = CacheOutcome {
            found: true,
            applied: true,
        };
        applied.record(Record {
            id: "a".into(),
            outcome,
            epoch: 4,
        });
        let Turn::Retry(retry) = applied.take("a") else {
            panic!("a write the old primary did is not done again")
        };
        assert!(
            matches!(answer_of(retry).await.0, PeerAnswer::Done { outcome: got } if got == outcome)
        );
        assert_eq!(applied.records(10).len(), 1);
    }
}
