//! Questions members ask of each other's management: a read-only path of a member's management
//! API (`/status`, `/deployments`, `/log`, ...), carried by the cluster's own channels (a sealed
//! link on the embedded engine, a request through NATS), and answered by that member's
//! management API in-process. Members already trust each other with the cluster's secret (or
//! NATS credentials); no management token crosses the cluster.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// An answer: the HTTP status, and the body.
pub type Answer = (u16, Bytes);

/// What answers a question: the member's read-only management routes.
pub type Answerer =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// Where this node's answers come from: set once the management API is up (the engine, which
/// carries the questions, starts before it).
#[derive(Default)]
pub struct AnswerDesk(OnceLock<Answerer>);

impl AnswerDesk {
    /// From now on, `answerer` answers the questions that reach this node.
    pub fn open(&self, answerer: Answerer) {
        let _ = self.0.set(answerer);
    }

    /// The answer to `path` (with its query).
    pub async fn answer(&self, path: String) -> Answer {
        match self.0.get() {
            Some(answerer) => answerer(path).await,
            None => (503, Bytes::from_static(b"the node is starting; ask again")),
        }
    }
}

/// The largest answer a member sends (a log's lines, a status).
pub const MAX_ANSWER: usize = 4 << 20;

/// Why a member could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("{0} is not a member of the cluster now")]
    NotMember(String),
    #[error("{member} did not answer ({reason})")]
    NoAnswer { member: String, reason: String },
}
