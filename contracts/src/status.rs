//! `GET /status`: everything about a node at once (itself, the cluster view it sees, its apps,
//! singletons, queues, caches, web contexts and balancers), for `cargo immutant status` and the
//! console. Its parts are also what `/queues`, `/caches` and `/web` answer.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::deployment::DeploymentReport;

/// The node and all it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    pub name: String,
    pub version: String,
    pub pid: u32,
    /// When it started (unix ms): its age in the cluster, the older the lower.
    pub started_ms: u64,
    pub uptime_ms: u64,
    pub bind_address: String,
    pub http: String,
    /// Its HTTPS address, when it serves one.
    pub https: Option<String>,
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
    /// The certificates its HTTPS port serves.
    pub certificates: Vec<CertificateReport>,
}

/// The cluster as a node sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    pub name: String,
    /// What carries the cluster's state.
    pub engine: EngineStatus,
    /// Its members, oldest first.
    pub view: Vec<ViewMember>,
}

/// The engine a cluster runs on, and how the node's link to it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineStatus {
    pub kind: EngineKind,
    /// The NATS servers (without credentials).
    pub url: Option<String>,
    /// Whether the node is connected to them now (always, for the embedded engine).
    pub connected: bool,
    /// The version of the NATS server the node is connected to.
    pub server_version: Option<String>,
}

/// Which engine carries a cluster's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The nodes' own: gossip, links and their own stores.
    #[default]
    Embedded,
    Nats,
}

/// `embedded` or `nats`, as the JSON gives it.
impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Embedded => "embedded",
            EngineKind::Nats => "nats",
        })
    }
}

/// A member of the view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViewMember {
    pub name: String,
    pub started_ms: u64,
    pub address: String,
    /// Its management API, as it gossips it.
    pub management: Option<String>,
    pub apps: Vec<String>,
}

/// Where an app's singletons run, under which lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct SingletonStatus {
    pub app: String,
    pub node: String,
    /// The lease's fencing epoch (a standalone node's is always 1).
    pub epoch: u64,
}

/// A queue, its rates, and (asked for) its depth over the last minutes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueStatus {
    #[serde(flatten)]
    pub stats: QueueStats,
    #[serde(flatten)]
    pub rates: Rates,
    /// `[unix ms, depth]` pairs, oldest first (`/status?history=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth_history: Option<Vec<[u64; 2]>>,
}

/// A queue's counts (`GET /queues`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueStats {
    pub name: String,
    /// `queue`, `topic`, `subscription` or `durable-subscription`.
    pub kind: String,
    pub depth: u64,
    pub in_flight: u64,
    pub consumers: u64,
    pub published: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    pub expired: u64,
}

/// A queue's messages per second, in and out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rates {
    pub rate_in: f64,
    pub rate_out: f64,
}

/// A cache, and the members of the view that hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheStatus {
    #[serde(flatten)]
    pub stats: CacheStats,
    pub held_by: Vec<String>,
}

/// A cache on a node (`GET /caches`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheStats {
    pub name: String,
    /// `local`, `replicated`, `distributed` or `invalidated`.
    pub mode: String,
    /// How many members hold each entry (distributed caches).
    pub owners: Option<u32>,
    pub persist: bool,
    /// Entries held on this node.
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
}

/// A mounted web context (`GET /web`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContextReport {
    pub app: String,
    pub context_path: String,
    pub hosts: Vec<String>,
    /// Whether a process serves it.
    pub serving: bool,
    /// What balancers may send it, as an operator said.
    pub control: ContextState,
    /// Requests being served now.
    pub in_flight: u64,
}

/// What balancers may send a context, as an operator says (mod_cluster's enable, disable and
/// stop), and what a balancer sends a node's context. Its discriminant is mod_cluster's
/// number for the state, less one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextState {
    /// Every request.
    #[default]
    Enabled = 0,
    /// Requests of the sessions it has; no new sessions.
    Disabled = 1,
    /// No requests.
    Stopped = 2,
}

impl ContextState {
    /// Its name, as the JSON and pages give it.
    pub fn name(self) -> &'static str {
        match self {
            ContextState::Enabled => "enabled",
            ContextState::Disabled => "disabled",
            ContextState::Stopped => "stopped",
        }
    }
}

/// `enabled`, `disabled` or `stopped`, as the JSON gives it.
impl fmt::Display for ContextState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A balancer a node speaks to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalancerReport {
    /// Its MCMP address.
    pub address: String,
    /// Whether it has been told of the node's contexts as they are now.
    pub up_to_date: bool,
}

/// Days before its expiry from which a certificate is warned about (in the log, `status` and
/// the console).
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// A certificate a port serves to clients over TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertificateReport {
    /// The file it was read from.
    pub file: String,
    /// The host names it is chosen for (by SNI); the first certificate is served for the rest.
    pub names: Vec<String>,
    /// When it expires (unix seconds).
    pub not_after: i64,
    /// Whole days until it expires (negative once it has).
    pub days_left: i64,
}

impl CertificateReport {
    /// Whether it expires within the days people are warned before.
    pub fn expires_soon(&self) -> bool {
        self.days_left < EXPIRY_WARNING_DAYS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_status_is_the_json_the_console_reads() {
        let status = NodeStatus {
            name: "one".into(),
            version: "0.1.0".into(),
            cluster: Some(ClusterStatus {
                name: "demo".into(),
                engine: EngineStatus {
                    kind: EngineKind::Nats,
                    connected: true,
                    ..EngineStatus::default()
                },
                view: Vec::new(),
            }),
            queues: vec![QueueStatus {
                stats: QueueStats {
                    name: "/queue/q".into(),
                    kind: "queue".into(),
                    depth: 2,
                    ..QueueStats::default()
                },
                rates: Rates {
                    rate_in: 1.5,
                    rate_out: 0.0,
                },
                depth_history: None,
            }],
            caches: vec![CacheStatus {
                stats: CacheStats {
                    name: "c".into(),
                    mode: "local".into(),
                    ..CacheStats::default()
                },
                held_by: vec!["one".into()],
            }],
            web: vec![ContextReport {
                control: ContextState::Disabled,
                ..ContextReport::default()
            }],
            ..NodeStatus::default()
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"name":"one","version":"0.1.0","pid":0,"started_ms":0,"uptime_ms":0,"#,
                r#""bind_address":"","http":"","https":null,"management":"","memory_bytes":null,"load":null,"#,
                r#""cluster":{"name":"demo","engine":{"kind":"nats","url":null,"connected":true,"server_version":null},"view":[]},"#,
                r#""deployments":[],"singletons":[],"#,
                r#""queues":[{"name":"/queue/q","kind":"queue","depth":2,"in_flight":0,"consumers":0,"published":0,"delivered":0,"redelivered":0,"dead_lettered":0,"expired":0,"rate_in":1.5,"rate_out":0.0}],"#,
                r#""caches":[{"name":"c","mode":"local","owners":null,"persist":false,"entries":0,"hits":0,"misses":0,"held_by":["one"]}],"#,
                r#""web":[{"app":"","context_path":"","hosts":[],"serving":false,"control":"disabled","in_flight":0}],"#,
                r#""balancers":[],"certificates":[]}"#
            )
        );
        assert_eq!(serde_json::from_str::<NodeStatus>(&json).unwrap(), status);
    }

    #[test]
    fn what_a_node_leaves_out_reads_as_its_default() {
        let status: NodeStatus = serde_json::from_str(
            r#"{"name":"one","queues":[{"name":"/queue/q","rate_in":2}],"cluster":{"name":"c"}}"#,
        )
        .unwrap();
        assert_eq!(status.queues[0].stats.name, "/queue/q");
        assert_eq!(status.queues[0].rates.rate_in, 2.0);
        assert_eq!(status.cluster.unwrap().engine.kind, EngineKind::Embedded);
        assert_eq!(ContextState::Stopped.to_string(), "stopped");
        assert_eq!(EngineKind::Nats.to_string(), "nats");
    }
}
