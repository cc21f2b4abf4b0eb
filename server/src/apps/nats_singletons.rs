//! An app's singletons on a cluster that runs on NATS: every node with the app tries to take
//! its lease (see [`crate::nats::leases`]) whenever no one holds it; the one that does runs the
//! app's singleton daemons while it renews the lease, and stops them when it cannot renew it
//! in time. The app is told each deadline, and stops them by itself if it passes (its node may
//! be paused or cut off from NATS).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use immutant_foundation::clock::monotonic_ns;
use immutant_protocol::{Header, Outbox};
use tracing::{info, warn};

use super::Deployment;
use super::connection::{LeaseEnd, let_go, send, singleton_daemons};
use crate::nats::NatsNode;
use crate::nats::leases::{Held, Renewal};
use immutant_foundation::shutdown::Shutdown;

/// While the app runs, tells the cluster it runs here and runs its singletons while this node
/// holds their lease.
pub(super) async fn follow(
    deployment: Arc<Deployment>,
    nats: Arc<NatsNode>,
    outbox: Outbox,
    ended: Shutdown,
) {
    let app = deployment.name.clone();
    nats.membership.set_app(&app, true);
    let mut exclusive = deployment.exclusive.subscribe();
    tokio::select! {
        _ = exclusive.wait_for(|exclusive| *exclusive) => {}
        _ = ended.cancelled() => {
            nats.membership.set_app(&app, false);
            return;
        }
    }
    let good_for = nats.leases.good_for().as_nanos() as u64;
    while let Some((mut held, taken_ns)) = take(&nats, &app, &ended).await {
        let epoch = held.epoch;
        let mut until_ns = taken_ns + good_for;
        if monotonic_ns() >= until_ns {
            // Taken so slowly (NATS electing a leader) that the lease is already spent: it
            // lapses in NATS by itself, and is taken again.
            continue;
        }
        confirm(&deployment, &outbox, epoch, until_ns);
        deployment.singleton_epoch.send_replace(Some(epoch));
        info!("The singletons of {app} run on this node now (epoch {epoch})");
        nats.membership.set_lease(&app, Some(epoch));
        for name in singleton_daemons(&deployment) {
            send(&outbox, Header::StartDaemon { name, epoch });
        }
        let mut renewals = tokio::time::interval(nats.leases.renew_interval());
        renewals.tick().await;
        let end = loop {
            tokio::select! {
                _ = renewals.tick() => {}
                _ = ended.cancelled() => break LeaseEnd::AppEnded,
            }
            let sent_ns = monotonic_ns();
            if sent_ns >= until_ns {
                break LeaseEnd::Lapsed;
            }
            let left = Duration::from_nanos(until_ns - sent_ns);
            match tokio::time::timeout(left, nats.leases.renew(&app, &mut held)).await {
                Ok(Renewal::Renewed) => {
                    until_ns = sent_ns + good_for;
                    confirm(&deployment, &outbox, epoch, until_ns);
                }
                Ok(Renewal::Lost) => break LeaseEnd::Deposed,
                Ok(Renewal::Unanswered) | Err(_) => {}
            }
        };
        let_go(&deployment, &outbox, epoch, end);
        nats.membership.set_lease(&app, None);
        if end != LeaseEnd::AppEnded {
            warn!(
                "The singletons of {app} no longer run on this node: its lease in NATS was not renewed in time"
            );
            continue;
        }
        // Let go only once the app cannot be running them: its connection may have ended with
        // the process still alive.
        let left = until_ns.saturating_sub(monotonic_ns());
        tokio::time::sleep(Duration::from_nanos(left)).await;
        nats.leases.release(&app, &held).await;
        break;
    }
    nats.membership.set_app(&app, false);
}

/// Waits until this node takes `app`'s lease: the lease, and when the attempt began (the lease
/// cannot have started earlier); none if the app ended first.
async fn take(nats: &NatsNode, app: &str, ended: &Shutdown) -> Option<(Held, u64)> {
    loop {
        let taken_ns = monotonic_ns();
        if let Some(held) = nats.leases.try_take(app).await {
            return Some((held, taken_ns));
        }
        tokio::select! {
            _ = tokio::time::sleep(nats.leases.renew_interval()) => {}
            _ = ended.cancelled() => return None,
        }
    }
}

/// Records and tells the app that its lease of `epoch` holds until `until_ns`.
fn confirm(deployment: &Deployment, outbox: &Outbox, epoch: u64, until_ns: u64) {
    deployment.lease_until.store(until_ns, Ordering::Relaxed);
    send(
        outbox,
        Header::Lease {
            epoch,
            until_ns: Some(until_ns),
        },
    );
}
