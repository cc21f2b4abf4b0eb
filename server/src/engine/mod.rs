//! The engine facade: one face for everything an app or the node needs of the engine a
//! cluster runs on, the embedded one ([`crate::embedded`]) or NATS JetStream ([`crate::nats`]).
//! [`Messaging`], [`CacheService`], [`Membership`] and [`Artifacts`] are each an enum over the two engines,
//! dispatched statically; nothing above this module names an engine. [`start`] boots the one
//! the node's properties choose.

mod artifacts;
mod boot;
mod caches;
mod membership;
mod messaging;

pub use artifacts::Artifacts;
pub use boot::{EngineError, start};
pub use caches::CacheService;
pub use membership::{Fencing, Membership};
pub use messaging::Messaging;

/// Everything an app or the node needs of the engine.
#[derive(Clone)]
pub struct Engine {
    pub messaging: Messaging,
    pub caches: CacheService,
    pub membership: Membership,
    /// How the members hand each other the apps' binaries; none on a standalone node.
    pub artifacts: Option<Artifacts>,
}
