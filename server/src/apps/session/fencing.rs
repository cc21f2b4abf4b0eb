//! Fencing: an operation an app makes under a singleton lease (a publish, a cache write) is
//! refused once its lease is no longer current, so that a deposed runner changes nothing.

use std::sync::atomic::Ordering;

use immutant_foundation::clock::monotonic_ns;

use super::Session;
use crate::engine::Fencing;

impl Session {
    /// Refuses an operation made under the singleton lease of `epoch` once the cluster knows a
    /// newer one: its runner was deposed, and must not change anything. Otherwise the deadline
    /// (on the boot clock) by which it must be done, if it is made under this node's lease: an
    /// engine that tries again (NATS, while it is out of reach) gives up then.
    pub(super) fn fenced(&self, epoch: Option<u64>) -> Result<Option<u64>, String> {
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        let app = &self.deployment.name;
        let Some(Fencing {
            highest_epoch: highest,
            settled,
        }) = self.context.engine.membership.fencing(app)
        else {
            return Ok(None);
        };
        let deployment = &self.deployment;
        let held = *deployment.singleton_epoch.borrow() == Some(epoch);
        // This node's own lease, once its deadline has passed: before the holder's loop notices.
        let until_ns = deployment.lease_until.load(Ordering::Relaxed);
        let lapsed = held && monotonic_ns() >= until_ns;
        if lapsed || !settled {
            return Err(format!(
                "the lease of epoch {epoch} on the singletons of {app} has lapsed on this node, so the work was not done"
            ));
        }
        match highest {
            Some(current) if current > epoch => Err(format!(
                "epoch {epoch} is stale: the singletons of {app} run under epoch {current} now, so the work was not done"
            )),
            // Before gossip says who took over, this node knows it let that lease go.
            _ if epoch <= deployment.let_go.load(Ordering::Relaxed) => Err(format!(
                "epoch {epoch} is stale: this node no longer runs the singletons of {app}, so the work was not done"
            )),
            _ => Ok(held.then_some(until_ns)),
        }
    }
}
