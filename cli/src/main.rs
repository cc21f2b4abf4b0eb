//! `cargo-immutant`: the `cargo immutant` subcommand. Cargo runs it as
//! `cargo-immutant immutant ARGS`; it also works when called directly.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use cargo_immutant::control::{self, Action};
use cargo_immutant::deploy;
use cargo_immutant::install::{self, InstallRequest};
use cargo_immutant::locations::Locations;
use cargo_immutant::project::Overrides;
use cargo_immutant::{
    archive, balancer, console, env, list, logs, new, run, status, testing, undeploy, version,
    watch,
};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo-immutant",
    bin_name = "cargo immutant",
    version,
    about = "Install, run and deploy to Immutant, the Rust application server",
    after_help = "Installs live under $IMMUTANT_BASE_DIR (default: your data dir); the one in use is \
                  $IMMUTANT_HOME (default: <base>/current)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install a server: built from this CLI's source tree, or prebuilt with --from.
    Install {
        /// The version to install; it must be the one the source gives.
        version: Option<String>,
        /// Install here instead of <base>/releases/<version> (such an install is not linked).
        dir: Option<PathBuf>,
        /// A prebuilt immutant-server binary or .tar.gz release, by path or http(s) URL
        /// (a URL is verified against <URL>.sha256).
        #[arg(long, value_name = "PATH|URL")]
        from: Option<String>,
        /// Reinstall a version that is already installed.
        #[arg(long)]
        force: bool,
    },
    /// Run the installed server in the foreground (installing one first if there is none).
    ///
    /// Its own options become server arguments: --clustered is --server-config=standalone-ha.toml,
    /// --offset N (-o) is -Djboss.socket.binding.port-offset=N, --node-name X (-n) is
    /// -Djboss.node.name=X, --log-level L is -Djboss.logging.level=L. Every other argument goes to
    /// the server as it is: `cargo immutant run --help` shows the server's help. `--nodes N`
    /// starts N nodes of the install instead (one, two, ... at offsets 0, 100, ..., data dirs in
    /// <base>/nodes/), their output prefixed with their names: a local cluster with --clustered.
    #[command(disable_help_flag = true)]
    Run {
        /// [--clustered] [--nodes N] [--offset N] [--node-name X] [--log-level L] [SERVER ARGS...]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Generate a new app, NAME/ in the current folder, from a template.
    New {
        /// The app's name: its folder's and its crate's.
        name: String,
        /// The template to generate it from.
        #[arg(long, default_value = new::DEFAULT_TEMPLATE)]
        template: String,
    },
    /// Build the app in release mode and deploy it to the install's deployments folder, which
    /// every node of the install watches (installing a server first if there is none).
    Deploy {
        #[command(flatten)]
        app: AppOptions,
        #[command(flatten)]
        placement: Placement,
        /// Deploy this archive, made by `cargo immutant archive`, instead of building a project.
        #[arg(long, value_name = "FILE", conflicts_with = "path")]
        archive: Option<PathBuf>,
        /// The app's project folder.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Deploy the app, then build and deploy it again on every saved change; a build that fails
    /// leaves the running deployment alone.
    Watch {
        #[command(flatten)]
        app: AppOptions,
        #[command(flatten)]
        placement: Placement,
        /// The app's project folder.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Run the app's tests (`cargo test`) against a throwaway node of the installed server,
    /// started in a temporary folder on free ports and stopped afterwards; in the tests,
    /// `App::connect()` connects to it.
    Test {
        /// The app's project folder.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Remove deployments, and the artifacts only they used.
    Undeploy {
        /// The deployments to remove, by name; `*` and `?` match any characters and one
        /// (default: the package name in ./Cargo.toml).
        glob: Option<String>,
    },
    /// Build the app in release mode and pack it into <target dir>/<name>.ima, which
    /// `deploy --archive` deploys without the project.
    Archive {
        #[command(flatten)]
        app: AppOptions,
        /// The app's project folder.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Show where things are; with a key, print only that path.
    Env {
        /// One of base-dir, immutant-home, server, deployments.
        key: Option<String>,
    },
    /// List deployments, or with --installs the installed versions.
    List {
        /// List the installed versions, `*` marking the one in use.
        #[arg(short, long)]
        installs: bool,
    },
    /// Show the cluster at a glance: every node of the install and every member of their
    /// views (address, uptime, memory, load, view), apps, singletons, queues, jobs, caches, web
    /// contexts and balancers.
    Status {
        /// Print JSON for scripts instead of tables.
        #[arg(long)]
        json: bool,
        /// Redraw every second until interrupted (with --json, a document a line).
        #[arg(short, long)]
        watch: bool,
    },
    /// Print the logs of every node of the install, merged in time order, each line tagged with
    /// its node (apps' lines are there, prefixed with the app's name).
    Logs {
        /// Go on printing lines as the nodes write them.
        #[arg(short, long)]
        follow: bool,
        /// Only this node's lines.
        #[arg(long)]
        node: Option<String>,
        /// Only this app's lines.
        #[arg(long)]
        app: Option<String>,
        /// Only lines since then: a span back from now (30s, 10m, 2h, 1d) or a time
        /// (2026-11-30T12:00:00Z).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
    },
    /// Print the address of each running node's web console, with the node's management token
    /// (in the part of the address a browser never sends), for its buttons to work.
    Console {
        /// Only this node's console.
        #[arg(long)]
        node: Option<String>,
    },
    /// Show the CLI's and the installed server's versions.
    Version,
    /// Let balancers send a node's contexts every request again (undoes disable and stop).
    Enable(Target),
    /// Send no new sessions to a node's contexts; requests of sessions they have still come.
    Disable(Target),
    /// Send no request at all to a node's contexts; waits until those in flight have finished.
    Stop(Target),
    /// Run a balancer in front of clustered nodes, in the foreground (what httpd with
    /// mod_cluster was): nodes learn of it by its multicast advertisements (or
    /// -Dimmutant.modcluster.proxies) and tell it their contexts and load; it sends each
    /// request to a node that serves it, keeping sessions on their node.
    #[command(args_conflicts_with_subcommands = true)]
    Balancer {
        #[command(subcommand)]
        action: Option<BalancerAction>,
        /// The port clients send requests to.
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// The port nodes send MCMP to.
        #[arg(long, default_value_t = balancer::DEFAULT_MCMP_PORT)]
        mcmp_port: u16,
        /// The address both ports bind [default: 127.0.0.1].
        #[arg(short = 'b', long = "bind")]
        bind: Option<std::net::IpAddr>,
        /// Who may send MCMP: addresses or networks (ADDR/BITS), comma-separated (default:
        /// loopback).
        #[arg(long)]
        allow: Option<String>,
        /// Do not advertise the balancer by multicast (nodes then need it in
        /// -Dimmutant.modcluster.proxies).
        #[arg(long)]
        no_advertise: bool,
        /// How much it logs [default: INFO].
        #[arg(long, value_parser = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"], ignore_case = true)]
        log_level: Option<String>,
        #[command(flatten)]
        https: immutant_contracts::https::HttpsFlags,
    },
}

/// Which contexts of which nodes a control applies to.
#[derive(Debug, Args)]
struct Target {
    /// The node (default: every running node of the install).
    #[arg(long)]
    node: Option<String>,
    /// The context path (default: every context of the node).
    #[arg(long)]
    context: Option<String>,
}

#[derive(Debug, Subcommand)]
enum BalancerAction {
    /// Show every node a running balancer knows, with its contexts, state, load and requests.
    Status {
        /// The balancer's MCMP port.
        #[arg(long, default_value_t = balancer::DEFAULT_MCMP_PORT)]
        mcmp_port: u16,
        /// The balancer's host.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
    },
}

/// Settings of a deployment that win over the project's `[package.metadata.immutant]`.
#[derive(Debug, Args)]
struct AppOptions {
    /// The deployment's name (default: the package's).
    #[arg(long)]
    name: Option<String>,
    /// The web context the app is mounted under (default: /<name>).
    #[arg(long)]
    context_path: Option<String>,
    /// A host the app's web handlers answer for; repeat it for several.
    #[arg(long)]
    virtual_host: Vec<String>,
}

impl From<AppOptions> for Overrides {
    fn from(options: AppOptions) -> Self {
        Overrides {
            name: options.name,
            context_path: options.context_path,
            virtual_host: options.virtual_host,
            group: None,
            local: false,
            rolling: false,
        }
    }
}

/// Where a deployment runs.
#[derive(Debug, Args)]
struct Placement {
    /// Run it only on the nodes of this server group (nodes name theirs with
    /// -Dimmutant.node.groups=G); by default every node runs it.
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// Run it only on the nodes of this install (its deployments folder); by default a
    /// clustered node records it for the cluster, and every member runs it.
    #[arg(long)]
    local: bool,
    /// Replace a running app one member at a time, each once the earlier ones run the new
    /// build; a new build that fails stops the roll and leaves the rest on the old one.
    #[arg(long)]
    rolling: bool,
}

impl Placement {
    /// `app`'s overrides, with this placement.
    fn overrides(self, app: AppOptions) -> Overrides {
        Overrides {
            group: self.group,
            local: self.local,
            rolling: self.rolling,
            ..app.into()
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("immutant") {
        args.remove(1);
    }
    let cli = Cli::parse_from(args);
    match execute(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> Result<u8> {
    let locations = Locations::from_env()?;
    // `run` says what it runs first (the seed's promise), and this after.
    if !matches!(command, Command::Run { .. }) {
        locations.announce_base();
    }
    match command {
        Command::Install {
            version,
            dir,
            from,
            force,
        } => {
            install::install(
                &locations,
                &InstallRequest {
                    version,
                    dir,
                    from,
                    force,
                },
            )?;
        }
        Command::Run { args } => {
            let code = run::run(&locations, &run::plan(&args)?)?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
        Command::New { name, template } => {
            new::new(&locations, &name, &template)?;
        }
        Command::Deploy {
            app,
            placement,
            archive,
            path,
        } => {
            let source = match archive {
                Some(file) => deploy::Source::Archive(file),
                None => deploy::Source::Project(path),
            };
            deploy::deploy(&locations, &source, &placement.overrides(app))?;
        }
        Command::Test { path, cargo_args } => {
            let status = testing::test(&locations, &path, &cargo_args)?;
            return Ok(status
                .code()
                .map_or(1, |code| u8::try_from(code).unwrap_or(1)));
        }
        Command::Watch {
            app,
            placement,
            path,
        } => watch::watch(&locations, &path, &placement.overrides(app))?,
        Command::Undeploy { glob } => {
            undeploy::undeploy(&locations, glob.as_deref())?;
        }
        Command::Archive { app, path } => {
            archive::archive(&path, &app.into())?;
        }
        Command::Env { key } => env::print(&locations, key.as_deref())?,
        Command::List { installs: true } => list::print_installs(&locations)?,
        Command::List { installs: false } => list::print_deployments(&locations)?,
        Command::Status { json, watch } => {
            status::status(&locations, status::StatusOptions { json, watch })?;
        }
        Command::Logs {
            follow,
            node,
            app,
            since,
        } => {
            let since = since
                .map(|since| logs::parse_since(&since, chrono::Utc::now()))
                .transpose()?;
            let options = logs::LogsOptions {
                follow,
                node,
                app,
                since,
            };
            logs::logs(&locations, &options)?;
        }
        Command::Console { node } => console::print(&locations, node.as_deref())?,
        Command::Version => version::print(&locations),
        Command::Enable(target) => apply(&locations, Action::Enable, target)?,
        Command::Disable(target) => apply(&locations, Action::Disable, target)?,
        Command::Stop(target) => apply(&locations, Action::Stop, target)?,
        Command::Balancer {
            action: Some(BalancerAction::Status { mcmp_port, host }),
            ..
        } => balancer::print_status(&host, mcmp_port)?,
        Command::Balancer {
            action: None,
            port,
            mcmp_port,
            bind,
            allow,
            no_advertise,
            log_level,
            https,
        } => {
            let mut args = Vec::new();
            let bind = bind.map(|address| address.to_string());
            for (flag, value) in [
                ("--bind", bind),
                ("--allow", allow),
                ("--log-level", log_level),
            ] {
                if let Some(value) = value {
                    args.extend([flag.to_string(), value]);
                }
            }
            if no_advertise {
                args.push("--no-advertise".to_string());
            }
            args.extend(https.to_args().map_err(|file| {
                anyhow::anyhow!("{} is not a path the balancer can be given", file.display())
            })?);
            let options = balancer::BalancerOptions {
                port: Some(port),
                mcmp_port: Some(mcmp_port),
                args,
            };
            let code = balancer::run(&locations, &options)?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
    }
    Ok(0)
}

fn apply(locations: &Locations, action: Action, target: Target) -> Result<()> {
    control::control(
        locations,
        action,
        target.node.as_deref(),
        target.context.as_deref(),
    )
}
