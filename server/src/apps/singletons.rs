//! An app's singletons on this node: runs the engine's singleton driver while the app's
//! process is connected, and turns the lease events it reports into frames for the app
//! (each deadline, start and stop), recording what fencing needs, without knowing which engine
//! sent them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;
use immutant_protocol::{Frame, Header, Outbox};
use tracing::info;

use super::{AppContext, Deployment};
use crate::vocabulary::singletons::{LeaseEnd, LeaseEvent};

/// While the app runs (until `ended`), follows its singletons on this node.
pub(super) async fn follow(
    deployment: Arc<Deployment>,
    context: Arc<AppContext>,
    outbox: Outbox,
    ended: Shutdown,
) {
    let exclusive = deployment.exclusive.subscribe();
    context
        .engine
        .membership
        .follow_singletons(&deployment.name, exclusive, &ended, |event| {
            on_lease(&deployment, &outbox, event)
        })
        .await;
    deployment.singleton_epoch.send_replace(None);
}

/// Carries out what a lease event means for the app.
fn on_lease(deployment: &Deployment, outbox: &Outbox, event: LeaseEvent) {
    match event {
        LeaseEvent::Held { epoch, until_ns } => {
            deployment.lease_until.store(until_ns, Ordering::Relaxed);
            send(
                outbox,
                Header::Lease {
                    epoch,
                    until_ns: Some(until_ns),
                },
            );
            // Watchers (the app's jobs) hear of a new epoch, not of every renewal.
            let mut first = false;
            deployment.singleton_epoch.send_if_modified(|current| {
                first = current.is_none();
                let changed = *current != Some(epoch);
                *current = Some(epoch);
                changed
            });
            if first {
                info!(
                    "The singletons of {} run on this node now (epoch {epoch})",
                    deployment.name
                );
                for name in singleton_daemons(deployment) {
                    send(outbox, Header::StartDaemon { name, epoch });
                }
            }
        }
        LeaseEvent::Ended { epoch, end } => let_go(deployment, outbox, epoch, end),
    }
}

/// Lets this node's lease of `epoch` on the app's singletons go, as it ended: from now on work
/// under the epoch is refused here, and the app (unless it ended) is told to stop them at once
/// (or it does by the deadline by itself if it cannot hear).
fn let_go(deployment: &Deployment, outbox: &Outbox, epoch: u64, end: LeaseEnd) {
    // Refused first, from the moment the epoch stops being current.
    deployment.let_go.fetch_max(epoch, Ordering::Relaxed);
    deployment.singleton_epoch.send_replace(None);
    if end != LeaseEnd::AppEnded {
        let until_ns = None;
        send(outbox, Header::Lease { epoch, until_ns });
        for name in singleton_daemons(deployment) {
            send(outbox, Header::StopDaemon { name });
        }
    }
}

/// The names of the app's singleton daemons.
fn singleton_daemons(deployment: &Deployment) -> Vec<String> {
    lock(&deployment.daemons)
        .iter()
        .filter(|(_, daemon)| daemon.singleton)
        .map(|(name, _)| name.clone())
        .collect()
}

fn send(outbox: &Outbox, header: Header) {
    let _ = outbox.send(Frame::new(header).into());
}
