//! Fencing: singleton work runs only under its lease. A singleton daemon's `start` and a
//! singleton job's run are polled only while the lease of their epoch covers them, checked
//! against the boot clock before every poll; and operations made under a fence (publishes,
//! cache calls) carry its epoch, so the node refuses them once a newer epoch exists.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, Result};
use crate::lease::{Lease, lease};

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
/// now, never polled past its deadline, and cancelled the moment it lapses.
pub(crate) async fn under_lease<F: Future>(epoch: u64, work: F) -> Result<F::Output> {
    within(lease(), epoch, work).await
}

/// [`under_lease`], under `lease`.
async fn within<F: Future>(lease: &Lease, epoch: u64, work: F) -> Result<F::Output> {
    tokio::select! {
        // The work first: its own check says why it may not run (a newer epoch, or a lapse).
        biased;
        done = WithinLease::new(lease, epoch, Fence::new(epoch).scope(work)) => done,
        // Wakes work that waits on something else when the deadline passes.
        _ = lease.lapsed(epoch) => Err(Error::LeaseLapsed { epoch }),
    }
}

/// A future polled only while the lease of `epoch` covers it: past the deadline it resolves
/// as refused instead, without polling the work. Timers that all fired at once (a node frozen
/// past its lease, then resumed) may wake the work before anything sees the lapse; this check,
/// on the clock itself, is what keeps its next step from running.
struct WithinLease<'a, F> {
    lease: &'a Lease,
    epoch: u64,
    // Boxed to be polled without an unsafe pin projection; one allocation per run.
    work: Pin<Box<F>>,
}

impl<'a, F: Future> WithinLease<'a, F> {
    fn new(lease: &'a Lease, epoch: u64, work: F) -> Self {
        WithinLease {
            lease,
            epoch,
            work: Box::pin(work),
        }
    }
}

impl<F: Future> Future for WithinLease<'_, F> {
    type Output = Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Err(refused) = self.lease.may_run(self.epoch) {
            return Poll::Ready(Err(refused));
        }
        self.work.as_mut().poll(cx).map(Ok)
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
    use std::cell::Cell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;

    use immutant_protocol::clock::monotonic_ns;

    use super::*;

    fn in_ms(ms: u64) -> u64 {
        monotonic_ns() + ms * 1_000_000
    }

    /// A future that makes progress at every poll (it counts them), and never ends.
    fn counting(polls: &Cell<u32>) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            cx.waker().wake_by_ref();
            Poll::Pending
        })
    }

    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn work_is_not_polled_once_its_lease_deadline_has_passed() {
        let lease = Lease::default();
        let polls = Cell::new(0);
        lease.set(5, Some(in_ms(20)));
        let mut work = WithinLease::new(&lease, 5, counting(&polls));
        assert!(poll_once(&mut work).is_pending());
        assert_eq!(polls.get(), 1, "polled while the lease holds");
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(
            poll_once(&mut work),
            Poll::Ready(Err(Error::LeaseLapsed { epoch: 5 }))
        ));
        assert_eq!(polls.get(), 1, "not polled past the deadline");
    }

    #[test]
    fn work_under_a_stale_epoch_is_never_polled() {
        let lease = Lease::default();
        let polls = Cell::new(0);
        lease.set(6, Some(in_ms(1_000)));
        let mut work = WithinLease::new(&lease, 5, counting(&polls));
        assert!(matches!(
            poll_once(&mut work),
            Poll::Ready(Err(Error::StaleEpoch {
                epoch: 5,
                current: 6
            }))
        ));
        assert_eq!(polls.get(), 0);
    }

    /// The node frozen past the lease, then resumed: the work's timer and the lease's have
    /// both fired by the time the task runs again, and the work must not take its next step.
    #[tokio::test]
    async fn work_woken_with_its_lapse_does_not_take_its_next_step() {
        // Leaked: the task that runs under it must be 'static.
        let lease: &'static Lease = Box::leak(Box::default());
        lease.set(8, Some(in_ms(30)));
        let (started, steps) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let (starting, stepping) = (started.clone(), steps.clone());
        let task = tokio::spawn(within(lease, 8, async move {
            starting.store(true, Ordering::Relaxed);
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                stepping.fetch_add(1, Ordering::Relaxed);
            }
        }));
        // Its first poll starts both timers; then the whole runtime is frozen past both.
        tokio::task::yield_now().await;
        assert!(started.load(Ordering::Relaxed), "polled before the freeze");
        std::thread::sleep(Duration::from_millis(60));
        let outcome = task.await.expect("the task ends");
        assert!(matches!(outcome, Err(Error::LeaseLapsed { epoch: 8 })));
        assert_eq!(
            steps.load(Ordering::Relaxed),
            0,
            "a step ran past the deadline"
        );
    }

    #[tokio::test]
    async fn a_fence_is_the_tasks_own() {
        assert_eq!(Fence::current(), None);
        let inside = Fence::new(4).scope(async { Fence::current() }).await;
        assert_eq!(inside.map(|fence| fence.epoch()), Some(4));
    }
}
