//! Holding a lease on one [`LeaseSubject`] while this node is elected for it ([`super::election`]):
//! takes it when elected and free to (see [`super::lease_protocol`]), renews it, reports each
//! deadline the cluster confirms, and lets it go when it lapses, the node is deposed, or the
//! holding `ends`. The singleton driver ([`super::singletons`]) and each cache's primary run it.

use std::time::Duration;

use immutant_foundation::clock::monotonic_ns;
use immutant_foundation::shutdown::Shutdown;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Cluster;
use super::election::{HeldLease, LeaseSubject, SingletonElection};
use super::lease_protocol::RENEW_INTERVAL;
use crate::vocabulary::membership::View;
use crate::vocabulary::singletons::{LeaseEnd, LeaseEvent};

/// How long a node waits, once elected, before it takes a lease.
const SETTLE_TIME: Duration = Duration::from_millis(250);

/// Holds `subject`'s lease whenever this node is elected for it, until `ended`, reporting each
/// change of the lease to `report`. Call it once the node has discovered the cluster.
pub async fn hold(
    cluster: &Cluster,
    subject: &LeaseSubject,
    ended: &Shutdown,
    mut report: impl FnMut(LeaseEvent),
) {
    let key = subject.key();
    let quorum = cluster.singleton_quorum();
    let election = SingletonElection::new(quorum);
    let mut view = cluster.view();
    loop {
        if !wait_until_ours(&election, cluster, subject, &mut view, ended).await {
            return;
        }
        // The clock first: the lease must not be thought to start later than its first renewal
        // went out.
        let taken_ns = monotonic_ns();
        let epoch = cluster.take_epoch(&key).await;
        match subject {
            LeaseSubject::Singletons(app) => {
                metrics::counter!("immutant_singleton_handovers_total", "app" => app.clone())
                    .increment(1)
            }
            LeaseSubject::CachePrimary(cache) => {
                metrics::counter!("immutant_cache_primary_handovers_total", "cache" => cache.clone())
                    .increment(1)
            }
        }
        let mut lease = HeldLease::new(epoch, taken_ns);
        debug!("Taking over {subject} (epoch {epoch}) once the cluster confirms it");
        let mut renewals = tokio::time::interval(RENEW_INTERVAL);
        renewals.tick().await;
        let mut ran = false;
        let end = loop {
            tokio::select! {
                _ = renewals.tick() => {}
                _ = ended.cancelled() => break LeaseEnd::AppEnded,
            }
            // Stopping early is always safe; a newer lease elsewhere cannot be confirmed while
            // this one is, so only losing the quorum deposes a holder.
            if (view.borrow().members.len() as u32) < quorum {
                break LeaseEnd::Deposed;
            }
            let now = monotonic_ns();
            if lease.lapsed(now) {
                break LeaseEnd::Lapsed;
            }
            if let Some(until_ns) = lease.confirmed(cluster.answered(&key, epoch)) {
                ran = true;
                report(LeaseEvent::Held { epoch, until_ns });
            }
            cluster.renew(&key, lease.renew(now)).await;
        };
        report(LeaseEvent::Ended { epoch, end });
        match end {
            LeaseEnd::Lapsed if ran => warn!(
                "{}: the cluster did not confirm its lease in time",
                subject.lost()
            ),
            LeaseEnd::Deposed if ran => info!(
                "{}: this side of the cluster has fewer than {quorum} members",
                subject.lost()
            ),
            _ => {}
        }
        // Let go only once the holding certainly ended here, whatever became of what it
        // guards: an app's connection may have ended with the process still alive.
        if let Some(until_ns) = lease.until_ns() {
            let left = until_ns.saturating_sub(monotonic_ns());
            tokio::time::sleep(Duration::from_nanos(left)).await;
        }
        cluster.release(&key).await;
        if end == LeaseEnd::AppEnded {
            return;
        }
    }
}

/// Waits until this node is elected for `subject`, has let the view settle, was not just
/// paused, and is free to take it over (no promise binds it); false if the holding ended first.
async fn wait_until_ours(
    election: &SingletonElection,
    cluster: &Cluster,
    subject: &LeaseSubject,
    view: &mut watch::Receiver<View>,
    ended: &Shutdown,
) -> bool {
    let key = subject.key();
    loop {
        if election.here(&view.borrow_and_update(), subject) {
            // Let the view settle before taking over: a candidate that came at the same moment
            // may be older, and its news a gossip round away.
            tokio::select! {
                _ = tokio::time::sleep(SETTLE_TIME) => {}
                _ = ended.cancelled() => return false,
            }
            if election.here(&view.borrow(), subject)
                && cluster.settled()
                && cluster.free_to_take(&key).await
            {
                return true;
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return false },
            // A promise runs out without the view changing.
            _ = tokio::time::sleep(RENEW_INTERVAL) => {}
            _ = ended.cancelled() => return false,
        }
    }
}
