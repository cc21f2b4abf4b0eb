//! The lease this app's singletons run under. The node that runs them holds a lease from the
//! cluster and renews it while in contact; it tells the app how long each renewal lasts, as a
//! reading of the host's monotonic clock. The app keeps that deadline itself: the moment it
//! passes without a renewal, singleton daemons are cancelled and singleton jobs no longer run,
//! whether the node is frozen, cut off or gone. Operations made under the lease (publishes, cache
//! calls) carry its fencing epoch, and are refused once it has lapsed or a newer epoch exists.

use std::future::Future;

use immutant_protocol::clock::monotonic_ns;
use tokio::sync::watch;

use crate::{Error, Result};

/// What the node last said about the lease: its epoch, and until when it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    epoch: u64,
    until_ns: u64,
}

/// The app's view of its singleton lease.
pub(crate) struct Lease {
    held: watch::Sender<Option<Held>>,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            held: watch::channel(None).0,
        }
    }
}

/// Why work under `epoch` may not go on now, if it may not.
fn refusal(held: Option<Held>, epoch: u64) -> Option<Error> {
    match held {
        Some(held) if held.epoch > epoch => Some(Error::StaleEpoch {
            epoch,
            current: held.epoch,
        }),
        Some(held) if held.epoch == epoch && monotonic_ns() < held.until_ns => None,
        Some(held) if held.epoch == epoch => Some(Error::LeaseLapsed { epoch }),
        // An epoch this app never held (handed in from elsewhere): the node judges it.
        Some(_) | None => None,
    }
}

impl Lease {
    /// What the node says now: the lease of `epoch` holds until `until_ns`, or not at all.
    pub fn set(&self, epoch: u64, until_ns: Option<u64>) {
        let held = until_ns.map(|until_ns| Held { epoch, until_ns });
        self.held.send_if_modified(|current| {
            // A renewal never shortens the lease it renews; a newer epoch replaces it.
            let newer = match (*current, held) {
                (Some(current), Some(held)) if current.epoch == held.epoch => {
                    held.until_ns > current.until_ns
                }
                _ => *current != held,
            };
            if newer {
                *current = held;
            }
            newer
        });
    }

    /// Whether singletons may run under `epoch` now.
    pub fn covers(&self, epoch: u64) -> bool {
        let held = *self.held.borrow();
        held.is_some_and(|held| held.epoch == epoch) && refusal(held, epoch).is_none()
    }

    /// Whether an operation made under `epoch` may go to the node.
    pub fn check(&self, epoch: u64) -> Result<()> {
        match refusal(*self.held.borrow(), epoch) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Resolves once the lease no longer covers `epoch`: at its deadline unless renewed first,
    /// or as soon as the node withdraws it.
    pub async fn lapsed(&self, epoch: u64) {
        let mut held = self.held.subscribe();
        loop {
            let deadline = match *held.borrow_and_update() {
                Some(current) if current.epoch == epoch => current.until_ns,
                _ => return,
            };
            let left = deadline.saturating_sub(monotonic_ns());
            if left == 0 {
                return;
            }
            // A standalone node's lease never lapses: sleep in bounded steps, not for centuries.
            let step =
                std::time::Duration::from_nanos(left).min(std::time::Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                changed = held.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// The lease of this process's app (an app process has one connection to its node).
pub(crate) fn lease() -> &'static Lease {
    static LEASE: std::sync::LazyLock<Lease> = std::sync::LazyLock::new(Lease::default);
    &LEASE
}

/// Whether the current task may act: outside any fence always; under one while its lease
/// holds.
pub(crate) fn may_act() -> bool {
    Fence::current().is_none_or(|fence| lease().covers(fence.epoch))
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

    fn in_ms(ms: u64) -> u64 {
        monotonic_ns() + ms * 1_000_000
    }

    #[test]
    fn a_lease_covers_its_epoch_until_its_deadline_and_refuses_older_ones() {
        let lease = Lease::default();
        assert!(!lease.covers(3));
        assert!(
            lease.check(3).is_ok(),
            "the node judges an epoch never held"
        );
        lease.set(3, Some(in_ms(1_000)));
        assert!(lease.covers(3));
        assert!(lease.check(3).is_ok());
        assert!(matches!(
            lease.check(2),
            Err(Error::StaleEpoch {
                epoch: 2,
                current: 3
            })
        ));
        // A late renewal with an earlier deadline does not shorten it.
        lease.set(3, Some(in_ms(10)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(lease.covers(3));
        lease.set(3, Some(monotonic_ns()));
        lease.set(3, None);
        assert!(!lease.covers(3));
    }

    #[tokio::test]
    async fn a_lease_lapses_at_its_deadline_without_a_renewal() {
        let lease = Lease::default();
        lease.set(7, Some(in_ms(50)));
        let started = std::time::Instant::now();
        lease.lapsed(7).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(45));
        assert!(!lease.covers(7));
        assert!(matches!(
            lease.check(7),
            Err(Error::LeaseLapsed { epoch: 7 })
        ));
    }

    #[tokio::test]
    async fn a_fence_is_the_tasks_own() {
        assert_eq!(Fence::current(), None);
        let inside = Fence::new(4).scope(async { Fence::current() }).await;
        assert_eq!(inside.map(|fence| fence.epoch()), Some(4));
    }
}
