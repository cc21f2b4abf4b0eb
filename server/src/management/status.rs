//! `GET /status`: everything about the node at once (itself, the cluster view it sees, its
//! apps, singletons, queues, caches, web contexts and balancers), for `cargo immutant status`
//! and the console.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::NodeInfo;
use crate::apps::DeploymentReport;
use crate::vocabulary::cache::CacheStats;
use crate::vocabulary::messaging::QueueStats;
use crate::web::{BalancerReport, ContextReport};

/// The node and all it runs.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub version: &'static str,
    pub pid: u32,
    /// When it started (unix ms): its age in the cluster, the older the lower.
    pub started_ms: u64,
    pub uptime_ms: u128,
    pub bind_address: String,
    pub http: String,
    pub management: String,
    /// Its resident memory, apps not included.
    pub memory_bytes: Option<u64>,
    /// The host's load averages over 1, 5 and 15 minutes.
    pub load: Option<[f64; 3]>,
    /// The cluster it is a member of, if it is clustered.
    pub cluster: Option<ClusterStatus>,
    pub deployments: Vec<DeploymentReport>,
    pub singletons: Vec<SingletonStatus>,
    pub queues: Vec<QueueStatus>,
    pub caches: Vec<CacheStatus>,
    pub web: Vec<ContextReport>,
    pub balancers: Vec<BalancerReport>,
}

/// The cluster as this node sees it.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    /// What carries the cluster's state.
    pub engine: EngineStatus,
    /// Its members, oldest first.
    pub view: Vec<ViewMember>,
}

/// The engine a cluster runs on, and how this node's link to it is.
#[derive(Debug, Serialize)]
pub struct EngineStatus {
    /// `embedded` or `nats`.
    pub kind: &'static str,
    /// The NATS servers (without credentials).
    pub url: Option<String>,
    /// Whether this node is connected to them now (always, for the embedded engine).
    pub connected: bool,
    /// The version of the NATS server this node is connected to.
    pub server_version: Option<String>,
}

impl EngineStatus {
    fn of(engine: Option<&crate::nats::Nats>) -> EngineStatus {
        match engine {
            None => EngineStatus {
                kind: "embedded",
                url: None,
                connected: true,
                server_version: None,
            },
            Some(nats) => EngineStatus {
                kind: "nats",
                url: Some(nats.url.clone()),
                connected: nats.client.connection_state()
                    == async_nats::connection::State::Connected,
                server_version: Some(nats.client.server_info().version),
            },
        }
    }
}

/// A member of the view.
#[derive(Debug, Serialize)]
pub struct ViewMember {
    pub name: String,
    pub started_ms: u64,
    pub address: String,
    /// Its management API, as it gossips it.
    pub management: Option<String>,
    pub apps: Vec<String>,
}

/// Where an app's singletons run, under which lease.
#[derive(Debug, Serialize)]
pub struct SingletonStatus {
    pub app: String,
    pub node: String,
    /// The lease's fencing epoch (a standalone node's is always 1).
    pub epoch: u64,
}

/// A queue, its rates, and (asked for) its depth over the last minutes.
#[derive(Debug, Serialize)]
pub struct QueueStatus {
    #[serde(flatten)]
    pub stats: QueueStats,
    #[serde(flatten)]
    pub rates: super::history::Rates,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth_history: Option<Vec<[u64; 2]>>,
}

/// A cache, and the members of the view that hold it.
#[derive(Debug, Serialize)]
pub struct CacheStatus {
    #[serde(flatten)]
    pub stats: CacheStats,
    pub held_by: Vec<String>,
}

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
    let view = info.view.as_ref().map(|view| view.borrow().clone());
    let deployments = info.apps.reports();
    // Every app of a cluster has a lease; those deployed here without singletons are left out.
    let without_singletons = |app: &str| {
        deployments.iter().any(|deployment| {
            deployment.name == app
                && deployment.status == crate::apps::Status::Running
                && deployment.singletons_on.is_none()
        })
    };
    let singletons = match &view {
        Some(view) => view
            .members
            .iter()
            .flat_map(|member| {
                member.leases.iter().map(|(app, epoch)| SingletonStatus {
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
        .broker
        .stats()
        .into_iter()
        .map(|stats| QueueStatus {
            rates: info.history.rates(&stats.name),
            depth_history: query.history.then(|| info.history.depths(&stats.name)),
            stats,
        })
        .collect();
    let caches = info
        .caches
        .stats()
        .into_iter()
        .map(|stats| CacheStatus {
            held_by: match (&view, &info.engine) {
                // Shared caches are NATS's, wherever its replicas are.
                (_, Some(nats)) if stats.mode != immutant_protocol::CacheMode::Local => {
                    vec![format!("NATS ({} replicas)", nats.replicas)]
                }
                (Some(view), _) => view
                    .members
                    .iter()
                    .filter(|member| member.caches.contains_key(&stats.name))
                    .map(|member| member.name.clone())
                    .collect(),
                (None, _) => vec![config.node_name.clone()],
            },
            stats,
        })
        .collect();
    NodeStatus {
        name: config.node_name.clone(),
        version: crate::VERSION,
        pid: std::process::id(),
        started_ms: info.generation,
        uptime_ms: info.started.elapsed().as_millis(),
        bind_address: config.bind_address.to_string(),
        http: config.http_address().to_string(),
        management: config.management_address().to_string(),
        memory_bytes: resident_memory(),
        load: load_averages(Path::new("/proc/loadavg")),
        cluster: config
            .cluster
            .as_ref()
            .zip(view)
            .map(|(settings, view)| ClusterStatus {
                name: settings.name.clone(),
                engine: EngineStatus::of(info.engine.as_deref()),
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
