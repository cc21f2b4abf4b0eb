//! The lease this app's singletons run under. The node that runs them holds a lease from the
//! cluster and renews it while in contact; it tells the app how long each renewal lasts, as a
//! reading of the host's monotonic clock. The app keeps that deadline itself: the moment it
//! passes without a renewal, singleton daemons are cancelled and singleton jobs no longer run,
//! whether the node is frozen, cut off or gone ([`crate::fence`] holds them to it).

use immutant_protocol::clock::monotonic_ns;
use tokio::sync::watch;

use crate::error::{Error, Result};

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

    /// Whether singleton work under `epoch` may run now: refused as stale if a newer epoch
    /// exists, else as lapsed unless the lease covers it.
    pub fn may_run(&self, epoch: u64) -> Result<()> {
        if self.covers(epoch) {
            return Ok(());
        }
        self.check(epoch)?;
        Err(Error::LeaseLapsed { epoch })
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
}
