//! # immutant-server
//!
//! The Immutant node: what JBoss AS7 with Immutant's modules was, as one Rust binary. A node
//! reads its properties and config (`config`), locks its data dir and binds its ports (`node`),
//! starts the engine its cluster runs on (`engine`: the `embedded` one, or `nats`, which speak
//! the `vocabulary`), deploys the apps in its install's deployments folder (`deploy`) and runs
//! each as a supervised process (`apps`) with durable messaging, caches and singletons from the
//! engine and scheduled jobs (`jobs`), and answers on its HTTP port (`web`) and its management
//! port (`management`) until SIGINT or SIGTERM stops it gracefully. The same binary runs the
//! balancer (`immutant-balancer`).
//!
//! The layers, and what each may import, are in docs/architecture.md. Start from [`start`],
//! which `main` calls with the parsed command line ([`args`]).

pub mod apps;
pub mod args;
pub mod config;
pub mod deploy;
pub mod embedded;
pub mod engine;
pub mod jobs;
pub mod management;
pub mod modcluster;
pub mod nats;
pub mod node;
pub mod vocabulary;
pub mod web;

use std::time::Instant;

use tracing::warn;

use args::ServerArgs;
use config::{Properties, ServerConfig, properties};
use immutant_foundation::logging;
use immutant_foundation::shutdown::Signals;
use node::NodeError;

/// Runs a node from its command line until a signal stops it. `started` is when the process
/// began. Errors are ready to show the user as they are.
pub fn start(args: ServerArgs, started: Instant) -> Result<(), NodeError> {
    if let Some(args::Role::Balancer(balancer)) = args.role {
        return start_balancer(balancer);
    }
    let properties = Properties::new(args.given_properties(), default_home())?;
    let (config, referenced) = ServerConfig::load(&args.server_config, &properties)?;
    // Kept until the node has stopped: the log file's last lines are written as it drops.
    let _log = logging::init(config.log_level, Some(&config.data_dir.join("log")));
    for name in properties
        .unknown_given()
        .filter(|name| !referenced.iter().any(|r| r == name))
    {
        match properties::nearest_known(name) {
            Some(known) => warn!("unknown property {name}; did you mean {known}?"),
            None => warn!(
                "unknown property {name}; `immutant-server --help` lists the properties a node knows"
            ),
        }
    }
    let runtime = tokio::runtime::Runtime::new().map_err(NodeError::Runtime)?;
    runtime.block_on(async {
        let mut signals = Signals::listen().map_err(NodeError::Runtime)?;
        node::run(config, &properties, started, async move {
            signals.recv().await.to_string()
        })
        .await
    })
}

/// Runs a balancer until a signal stops it.
fn start_balancer(args: args::BalancerArgs) -> Result<(), NodeError> {
    let _log = logging::init(args.log_level, None);
    let config = immutant_balancer::BalancerConfig {
        bind: args.bind,
        port: args.port,
        mcmp_port: args.mcmp_port,
        allow: args.allow,
        advertise: !args.no_advertise,
        tls: args::balancer_tls(&args.https).map_err(NodeError::Usage)?,
        h2c: args.https.h2c,
    };
    // Its own work (MCMP, health checks, advertising) is light; clients are served on workers
    // of their own, one per core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    runtime.block_on(async {
        let mut signals = Signals::listen().map_err(NodeError::Runtime)?;
        immutant_balancer::run(config, async move { signals.recv().await.to_string() })
            .await
            .map_err(NodeError::from)
    })
}

/// The install this binary belongs to: the parent of the `bin/` it sits in.
fn default_home() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let bin = exe.parent().unwrap_or(std::path::Path::new("."));
    match bin.file_name() {
        Some(name) if name == "bin" => bin.parent().unwrap_or(bin).to_path_buf(),
        _ => bin.to_path_buf(),
    }
}
