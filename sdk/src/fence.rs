//! Fencing: singleton work runs only under its lease. A singleton daemon's `start` and a
//! singleton job's run are cancelled once the lease of their epoch lapses; and operations made
//! under a fence (publishes, cache calls) carry its epoch, so the node refuses them once a
//! newer epoch exists.

use std::future::Future;

use crate::error::{Error, Result};
use crate::lease::lease;

/// Whether the current task may act: outside any fence always; under one while its lease
/// holds.
pub(crate) fn may_act() -> bool {
    Fence::current().is_none_or(|fence| lease().covers(fence.epoch))
}

/// The fencing epoch an operation made now carries: the current task's fence, if it has one
/// and it may still act; refused if its lease lapsed or a newer epoch exists.
pub(crate) fn operation_epoch() -> Result<Option<u64>> {
    match Fence::current() {
        Some(fence) => lease().check(fence.epoch).map(|()| Some(fence.epoch)),
        None => Ok(None),
    }
}

/// Runs singleton `work` under the lease of `epoch`: not at all unless the lease covers it
/// now, and cancelled the moment it lapses.
pub(crate) async fn under_lease<F: Future>(epoch: u64, work: F) -> Result<F::Output> {
    let lease = lease();
    lease.may_run(epoch)?;
    tokio::select! {
        done = Fence::new(epoch).scope(work) => Ok(done),
        _ = lease.lapsed(epoch) => Err(Error::LeaseLapsed { epoch }),
    }
}

tokio::task_local! {
    static FENCE: u64;
}

/// The fencing epoch the current task works under: set inside a singleton daemon's `start` and
/// a singleton job's run, or by [`Fence::scope`]. Publishes and cache calls made under it carry
/// it, and are refused once the lease has lapsed or a newer epoch exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    epoch: u64,
}

impl Fence {
    /// A fence for `epoch`: work handed over from a singleton (say, in a message) can carry the
    /// epoch it was made under, and be refused like the singleton's own once that is stale.
    pub fn new(epoch: u64) -> Self {
        Fence { epoch }
    }

    /// The fence of the current task, if it works under one.
    pub fn current() -> Option<Fence> {
        FENCE.try_with(|epoch| Fence { epoch: *epoch }).ok()
    }

    /// Its epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Runs `work` under this fence: what it publishes or writes carries the epoch. A task
    /// spawned from a singleton does not inherit its fence; this passes it on.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        FENCE.scope(self.epoch, work).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fence_is_the_tasks_own() {
        assert_eq!(Fence::current(), None);
        let inside = Fence::new(4).scope(async { Fence::current() }).await;
        assert_eq!(inside.map(|fence| fence.epoch()), Some(4));
    }
}
