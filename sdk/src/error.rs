//! What the SDK's calls fail with, and what a handler may fail with: the one error type of the
//! crate, below every module that returns it.

/// What a handler may fail with: any error, which the node records as the failure's reason.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The result of this SDK's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this app was not started by an Immutant node ({0} is not set); deploy it with `cargo immutant deploy` and run a node with `cargo immutant run`, or run its tests with `cargo immutant test`"
    )]
    NotInNode(&'static str),
    #[error("the node refused: {0}")]
    Node(String),
    #[error("the connection to the node is closed")]
    Closed,
    #[error(
        "the singleton lease of epoch {epoch} has lapsed: this node no longer runs the app's singletons, so the work was not done"
    )]
    LeaseLapsed { epoch: u64 },
    #[error(
        "epoch {epoch} is stale: the app's singletons run under epoch {current} now, so the work was not done"
    )]
    StaleEpoch { epoch: u64, current: u64 },
    #[error(
        "{call} was called already in this process, and took the descriptor the node handed down in {var}; {instead}"
    )]
    AlreadyTaken {
        call: &'static str,
        var: &'static str,
        instead: &'static str,
    },
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    #[error(
        "a payload of {size} bytes is over the node's limit of {limit} bytes; send less, or raise -Dimmutant.messaging.max-message-size on every node"
    )]
    TooLarge { size: usize, limit: u64 },
    #[error("cannot encode or decode a payload as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the node's socket failed: {0}")]
    Protocol(#[from] immutant_protocol::ProtocolError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
