//! The management API: JSON about the node on its management port (9990 plus the offset).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::apps::Apps;
use crate::cache::Caches;
use crate::config::ServerConfig;
use crate::messaging::Broker;

/// What the management API knows about its node.
pub struct NodeInfo {
    pub config: ServerConfig,
    pub properties: BTreeMap<String, String>,
    pub started: Instant,
    pub apps: Arc<Apps>,
    pub broker: Arc<Broker>,
    pub caches: Arc<Caches>,
}

/// The answer to `GET /`.
#[derive(Debug, Serialize)]
struct NodeReport {
    name: String,
    version: &'static str,
    pid: u32,
    uptime_ms: u128,
    config: String,
    bind_address: String,
    ports: Ports,
    data_dir: PathBuf,
    deployments: PathBuf,
    properties: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct Ports {
    offset: u16,
    http: u16,
    management: u16,
}

/// The management API's routes.
pub fn router(info: Arc<NodeInfo>) -> Router {
    Router::new()
        .route("/", get(node))
        .route("/deployments", get(deployments))
        .route("/queues", get(queues))
        .route("/daemons", get(daemons))
        .route("/caches", get(caches))
        .route("/jobs", get(jobs))
        .with_state(info)
}

async fn node(State(info): State<Arc<NodeInfo>>) -> Json<NodeReport> {
    let config = &info.config;
    Json(NodeReport {
        name: config.node_name.clone(),
        version: crate::VERSION,
        pid: std::process::id(),
        uptime_ms: info.started.elapsed().as_millis(),
        config: config.name.clone(),
        bind_address: config.bind_address.to_string(),
        ports: Ports {
            offset: config.port_offset,
            http: config.http_port,
            management: config.management_port,
        },
        data_dir: config.data_dir.clone(),
        deployments: config.deployments.clone(),
        properties: info.properties.clone(),
    })
}

/// Every deployment: its status (with the reason when failed), process, daemons and the last
/// lines of its stderr.
async fn deployments(
    State(info): State<Arc<NodeInfo>>,
) -> Json<Vec<crate::apps::DeploymentReport>> {
    Json(info.apps.reports())
}

/// Every queue: depth, in flight, consumers, delivered, dead-lettered, expired.
async fn queues(State(info): State<Arc<NodeInfo>>) -> Json<Vec<crate::messaging::QueueStats>> {
    Json(info.broker.stats())
}

/// A daemon, and the app it belongs to.
#[derive(Debug, Serialize)]
struct DaemonReport {
    app: String,
    name: String,
    #[serde(flatten)]
    state: crate::apps::DaemonState,
}

/// Every daemon of every deployment, running or not.
async fn daemons(State(info): State<Arc<NodeInfo>>) -> Json<Vec<DaemonReport>> {
    let reports = info.apps.reports().into_iter().flat_map(|deployment| {
        deployment
            .daemons
            .into_iter()
            .map(move |(name, state)| DaemonReport {
                app: deployment.name.clone(),
                name,
                state,
            })
    });
    Json(reports.collect())
}

/// A job, the app it belongs to, and the node it fires on.
#[derive(Debug, Serialize)]
struct JobListing {
    app: String,
    /// The node that fires it: for a singleton, the node running the app's singletons (none
    /// while none does); otherwise this one.
    fires_on: Option<String>,
    #[serde(flatten)]
    job: crate::jobs::JobReport,
}

/// Every job of every deployment: where it fires, its next firing, and its last run.
async fn jobs(State(info): State<Arc<NodeInfo>>) -> Json<Vec<JobListing>> {
    let node = info.config.node_name.clone();
    let listings = info.apps.reports().into_iter().flat_map(|deployment| {
        let (app, singletons_on) = (deployment.name, deployment.singletons_on);
        let node = node.clone();
        deployment.jobs.into_iter().map(move |job| JobListing {
            app: app.clone(),
            fires_on: match job.singleton {
                true => singletons_on.clone(),
                false => Some(node.clone()),
            },
            job,
        })
    });
    Json(listings.collect())
}

/// Every cache open on this node: mode, entries held here, hits and misses.
async fn caches(State(info): State<Arc<NodeInfo>>) -> Json<Vec<crate::cache::CacheStats>> {
    Json(info.caches.stats())
}
