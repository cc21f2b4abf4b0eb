//! `GET /status`: everything about the node at once (itself, the cluster view it sees, its
//! apps, singletons, queues, caches, web contexts and balancers), for `cargo immutant status`
//! and the console. Its JSON is the one the CLI reads too ([`immutant_contracts::status`]): the
//! node's services report in the contract's types, and they are put together here.

use std::collections::BTreeMap;
use std::path::Path;

use immutant_contracts::deployment::Status;
pub use immutant_contracts::status::NodeStatus;
use immutant_contracts::status::{
    CacheStatus, ClusterStatus, QueueStatus, SingletonStatus, ViewMember,
};
use serde::Deserialize;

use super::NodeInfo;

/// What `GET /status` may be asked for.
#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    /// Each queue's depth over the last minutes too.
    #[serde(default)]
    pub history: bool,
}

/// The node's status now.
pub fn status(info: &NodeInfo, query: &StatusQuery) -> NodeStatus {
    let config = &info.config;
    let view = info
        .engine
        .membership
        .view()
        .map(|view| view.borrow().clone());
    let deployments = info.apps.reports();
    // Every app of a cluster has a lease; those deployed here without singletons are left out,
    // and those of a server group this node is not in (it cannot tell; its members show them).
    let without_singletons = |app: &str| {
        deployments.iter().any(|deployment| {
            deployment.name == app
                && match deployment.status {
                    Status::Running => deployment.singletons_on.is_none(),
                    Status::Elsewhere(_) => true,
                    _ => false,
                }
        })
    };
    let singletons = match &view {
        Some(view) => view
            .members
            .iter()
            .flat_map(|member| {
                member
                    .singleton_leases()
                    .map(|(app, epoch)| SingletonStatus {
                        app: app.clone(),
                        node: member.name.clone(),
                        epoch: *epoch,
                    })
            })
            .filter(|singleton| !without_singletons(&singleton.app))
            .collect(),
        None => deployments
            .iter()
            .filter_map(|deployment| {
                Some(SingletonStatus {
                    app: deployment.name.clone(),
                    node: deployment.singletons_on.clone()?,
                    epoch: 1,
                })
            })
            .collect(),
    };
    let queues = info
        .engine
        .messaging
        .stats()
        .into_iter()
        .map(|stats| QueueStatus {
            rates: info.history.rates(&stats.name),
            depth_history: query.history.then(|| info.history.depths(&stats.name)),
            stats,
        })
        .collect();
    let caches = info
        .engine
        .caches
        .stats()
        .into_iter()
        .map(|stats| CacheStatus {
            held_by: match (&view, info.engine.caches.kept_by_engine(&stats.name)) {
                (_, Some(engine)) => vec![engine],
                (Some(view), None) => view
                    .members
                    .iter()
                    .filter(|member| member.caches.contains_key(&stats.name))
                    .map(|member| member.name.clone())
                    .collect(),
                (None, None) => vec![config.node_name.clone()],
            },
            stats,
        })
        .collect();
    NodeStatus {
        name: config.node_name.clone(),
        version: crate::config::VERSION.to_string(),
        pid: std::process::id(),
        started_ms: info.generation,
        uptime_ms: u64::try_from(info.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        bind_address: config.bind_address.to_string(),
        http: config.http_address().to_string(),
        https: info.https.as_ref().map(|https| https.address.to_string()),
        management: config.management_address().to_string(),
        memory_bytes: resident_memory(),
        load: load_averages(Path::new("/proc/loadavg")),
        cluster: config
            .cluster
            .as_ref()
            .zip(view)
            .zip(info.engine.membership.engine_status())
            .map(|((settings, view), engine)| ClusterStatus {
                name: settings.name.clone(),
                engine,
                view: view
                    .members
                    .into_iter()
                    .map(|member| ViewMember {
                        name: member.name,
                        started_ms: member.generation,
                        address: member.gossip_addr.to_string(),
                        management: member.management,
                        apps: member.apps.into_iter().collect(),
                    })
                    .collect(),
            }),
        deployments,
        singletons,
        queues,
        caches,
        web: info.web.contexts(),
        balancers: info.web.balancer_reports(),
        certificates: info
            .https
            .as_ref()
            .map(|https| https.certificates.report())
            .unwrap_or_default(),
    }
}

/// This process's resident memory, from `/proc/self/status`.
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let fields: BTreeMap<&str, &str> = status
        .lines()
        .filter_map(|line| line.split_once(':'))
        .collect();
    let kilobytes: u64 = fields
        .get("VmRSS")?
        .trim()
        .strip_suffix(" kB")?
        .parse()
        .ok()?;
    Some(kilobytes * 1024)
}

/// The load averages `/proc/loadavg` gives.
fn load_averages(path: &Path) -> Option<[f64; 3]> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace().map(|field| field.parse().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_its_memory_and_the_hosts_load() {
        assert!(resident_memory().is_some_and(|bytes| bytes > 1024 * 1024));
        let loadavg = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(loadavg.path(), "0.52 0.58 0.59 1/467 12345\n").unwrap();
        assert_eq!(load_averages(loadavg.path()), Some([0.52, 0.58, 0.59]));
        std::fs::write(loadavg.path(), "garbage\n").unwrap();
        assert_eq!(load_averages(loadavg.path()), None);
    }
}
