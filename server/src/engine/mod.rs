//! The engine facade: one face for everything an app or the node needs of the engine a
//! cluster runs on, the embedded one ([`crate::embedded`]) or NATS JetStream ([`crate::nats`]).
//! [`Messaging`], [`CacheService`], [`Membership`], [`Artifacts`] and [`Questions`] are each an enum over the two engines,
//! dispatched statically; nothing above this module names an engine. [`start`] boots the one
//! the node's properties choose.

use std::sync::Arc;

use crate::vocabulary::questions::AnswerDesk;

mod artifacts;
mod boot;
mod caches;
mod membership;
mod messaging;
mod questions;

pub use artifacts::Artifacts;
pub use boot::{EngineError, start};
pub use caches::CacheService;
pub use membership::{Fencing, Membership};
pub use messaging::Messaging;
pub use questions::Questions;

/// Everything an app or the node needs of the engine.
#[derive(Clone)]
pub struct Engine {
    pub messaging: Messaging,
    pub caches: CacheService,
    pub membership: Membership,
    /// How the members hand each other the apps' binaries; none on a standalone node.
    pub artifacts: Option<Artifacts>,
    /// How this node asks the other members' management; none on a standalone node.
    pub questions: Option<Questions>,
    /// What answers the other members' questions to this node's management (the management
    /// API opens it once it is up).
    pub answers: Arc<AnswerDesk>,
}
