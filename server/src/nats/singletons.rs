//! The NATS engine's singleton driver: every node with the app tries to take its lease (see
//! [`super::leases`]) whenever no one holds it; the one that does runs the app's singleton
//! daemons while it renews the lease, and stops them when it cannot renew it in time. Each
//! deadline is reported, and the app stops them by itself if it passes (its node may be paused
//! or cut off from NATS).

use std::time::Duration;

use immutant_foundation::clock::monotonic_ns;
use immutant_foundation::shutdown::Shutdown;
use tokio::sync::watch;
use tracing::warn;

use super::NatsNode;
use super::leases::{Held, Renewal};
use crate::vocabulary::singletons::{LeaseEnd, LeaseEvent};

/// Follows `app`'s singletons on this node until `ended`, once `exclusive` (no earlier process
/// of the app still runs here), reporting each change of its lease to `report`.
pub async fn follow(
    nats: &NatsNode,
    app: &str,
    mut exclusive: watch::Receiver<bool>,
    ended: &Shutdown,
    mut report: impl FnMut(LeaseEvent),
) {
    nats.membership.set_app(app, true);
    tokio::select! {
        _ = exclusive.wait_for(|exclusive| *exclusive) => {}
        _ = ended.cancelled() => {
            nats.membership.set_app(app, false);
            return;
        }
    }
    let good_for = nats.leases.good_for().as_nanos() as u64;
    while let Some((mut held, taken_ns)) = take(nats, app, ended).await {
        let epoch = held.epoch;
        let mut until_ns = taken_ns + good_for;
        if monotonic_ns() >= until_ns {
            // Taken so slowly (NATS electing a leader) that the lease is already spent: it
            // lapses in NATS by itself, and is taken again.
            continue;
        }
        report(LeaseEvent::Held { epoch, until_ns });
        nats.membership.set_lease(app, Some(epoch));
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
            match tokio::time::timeout(left, nats.leases.renew(app, &mut held)).await {
                Ok(Renewal::Renewed) => {
                    until_ns = sent_ns + good_for;
                    report(LeaseEvent::Held { epoch, until_ns });
                }
                Ok(Renewal::Lost) => break LeaseEnd::Deposed,
                Ok(Renewal::Unanswered) | Err(_) => {}
            }
        };
        report(LeaseEvent::Ended { epoch, end });
        nats.membership.set_lease(app, None);
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
        nats.leases.release(app, &held).await;
        break;
    }
    nats.membership.set_app(app, false);
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
