//! The embedded engine's singleton driver: while an app runs, tells the cluster it runs here,
//! and holds the lease on its singletons while this node is elected ([`super::election`]): takes
//! it when elected and free to (see [`super::lease_protocol`]), renews it, reports each deadline the
//! cluster confirms, and lets it go when it lapses, the node is deposed, or the app ends.

use std::time::Duration;

use immutant_foundation::clock::monotonic_ns;
use immutant_foundation::shutdown::Shutdown;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Cluster;
use super::election::{HeldLease, SingletonElection};
use super::lease_protocol::RENEW_INTERVAL;
use crate::vocabulary::membership::View;
use crate::vocabulary::singletons::{LeaseEnd, LeaseEvent};

/// How long a node waits, once elected, before it starts an app's singletons.
const SETTLE_TIME: Duration = Duration::from_millis(250);

/// Follows `app`'s singletons on this node until `ended`, once `exclusive` (no earlier process
/// of the app still runs here), reporting each change of its lease to `report`.
pub async fn follow(
    cluster: &Cluster,
    app: &str,
    mut exclusive: watch::Receiver<bool>,
    ended: &Shutdown,
    mut report: impl FnMut(LeaseEvent),
) {
    cluster.set_app(app, true).await;
    let ready = async {
        cluster.discovered().await;
        let _ = exclusive.wait_for(|exclusive| *exclusive).await;
    };
    tokio::select! {
        _ = ready => {}
        _ = ended.cancelled() => {
            cluster.set_app(app, false).await;
            return;
        }
    }
    let quorum = cluster.singleton_quorum();
    let election = SingletonElection::new(quorum);
    let mut view = cluster.view();
    loop {
        if !wait_until_ours(&election, cluster, app, &mut view, ended).await {
            break;
        }
        // The clock first: the lease must not be thought to start later than its first renewal
        // went out.
        let taken_ns = monotonic_ns();
        let epoch = cluster.take_epoch(app).await;
        let mut lease = HeldLease::new(epoch, taken_ns);
        debug!("Taking over the singletons of {app} (epoch {epoch}) once the cluster confirms it");
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
            if let Some(until_ns) = lease.confirmed(cluster.answered(app, epoch)) {
                ran = true;
                report(LeaseEvent::Held { epoch, until_ns });
            }
            cluster.renew(app, lease.renew(now)).await;
        };
        report(LeaseEvent::Ended { epoch, end });
        match end {
            LeaseEnd::Lapsed if ran => warn!(
                "The singletons of {app} no longer run on this node: the cluster did not confirm its lease in time"
            ),
            LeaseEnd::Deposed if ran => info!(
                "The singletons of {app} no longer run on this node: this side of the cluster has fewer than {quorum} members"
            ),
            _ => {}
        }
        // Let go only once the app cannot be running them, whatever became of it: its
        // connection may have ended with the process still alive.
        if let Some(until_ns) = lease.until_ns() {
            let left = until_ns.saturating_sub(monotonic_ns());
            tokio::time::sleep(Duration::from_nanos(left)).await;
        }
        cluster.release(app).await;
        if end == LeaseEnd::AppEnded {
            break;
        }
    }
    cluster.set_app(app, false).await;
}

/// Waits until this node is elected for `app`'s singletons, has let the view settle, was not
/// just paused, and is free to take them over (no promise binds it); false if the app ended
/// first.
async fn wait_until_ours(
    election: &SingletonElection,
    cluster: &Cluster,
    app: &str,
    view: &mut watch::Receiver<View>,
    ended: &Shutdown,
) -> bool {
    loop {
        if election.here(&view.borrow_and_update(), app) {
            // Let the view settle before taking over: a member that deployed the app at the
            // same moment may be older, and its news a gossip round away.
            tokio::select! {
                _ = tokio::time::sleep(SETTLE_TIME) => {}
                _ = ended.cancelled() => return false,
            }
            if election.here(&view.borrow(), app)
                && cluster.settled()
                && cluster.free_to_take(app).await
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
