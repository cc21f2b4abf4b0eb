//! The embedded engine's singleton driver: while an app runs, tells the cluster it runs here,
//! and holds the lease on its singletons while this node is elected ([`super::lease_holder`]),
//! reporting each deadline the cluster confirms, until the app ends.

use immutant_foundation::shutdown::Shutdown;
use tokio::sync::watch;

use super::Cluster;
use super::election::LeaseSubject;
use super::lease_holder;
use crate::vocabulary::singletons::LeaseEvent;

/// Follows `app`'s singletons on this node until `ended`, once `exclusive` (no earlier process
/// of the app still runs here), reporting each change of its lease to `report`.
pub async fn follow(
    cluster: &Cluster,
    app: &str,
    mut exclusive: watch::Receiver<bool>,
    ended: &Shutdown,
    report: impl FnMut(LeaseEvent),
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
    let subject = LeaseSubject::Singletons(app.to_string());
    lease_holder::hold(cluster, &subject, ended, report).await;
    cluster.set_app(app, false).await;
}
