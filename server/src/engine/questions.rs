//! Questions to another member's management, on whichever engine runs: over a sealed link on
//! the embedded engine, as a NATS request on NATS. What answers them here is the node's
//! [`AnswerDesk`](crate::vocabulary::questions::AnswerDesk).

use std::sync::Arc;

use crate::embedded::questions::MemberQuestions;
use crate::nats::questions::NatsQuestions;
use crate::vocabulary::questions::{Answer, AskError};

/// How a clustered node asks the other members.
#[derive(Clone)]
pub enum Questions {
    Embedded(Arc<MemberQuestions>),
    Nats(Arc<NatsQuestions>),
}

impl Questions {
    /// The answer of the member `member`'s management to `path` (with its query).
    pub async fn ask(&self, member: &str, path: &str) -> Result<Answer, AskError> {
        match self {
            Questions::Embedded(questions) => questions.ask(member, path).await,
            Questions::Nats(questions) => questions.ask(member, path).await,
        }
    }
}
