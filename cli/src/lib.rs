//! # cargo-immutant
//!
//! `cargo immutant`: the toolchain for Immutant, the Rust application server, after
//! lein-immutant. Each command in `main.rs` only parses its arguments and calls a function here:
//!
//! - [`locations`]: where the base dir, the Immutant home and the server are;
//! - [`install`]: builds or fetches a server and installs it under `<base>/releases`;
//! - [`run`]: runs the installed server in the foreground;
//! - [`new`]: scaffolds an app from a template;
//! - [`deploy`], [`undeploy`]: put an app into the home's deployments folder, and take it out;
//!   [`descriptor`] finds and reads what they write there (its format is
//!   `immutant_contracts::descriptor`); [`project`] reads and builds the app's project;
//! - [`archive`]: packs an app into a file that deploys without its project;
//! - [`watch`]: deploys an app again on every saved change;
//! - [`testing`]: runs an app's tests against a throwaway node (`test`);
//! - [`env`], [`list`], [`version`]: tell what is where;
//! - [`status`], [`logs`], [`console`]: the cluster at a glance, every node's log merged, and
//!   the address of each node's web console;
//! - [`balancer`]: runs a balancer in front of clustered nodes, and shows what it knows;
//!   [`control`] enables, disables and stops nodes' web contexts at their balancers.

pub mod archive;
pub mod balancer;
pub mod cargo;
pub mod console;
pub mod control;
pub mod deploy;
pub mod descriptor;
pub mod env;
pub mod http;
pub mod install;
pub mod list;
pub mod locations;
pub mod logs;
pub mod new;
pub mod project;
pub mod run;
pub mod status;
pub mod testing;
pub mod undeploy;
pub mod version;
pub mod watch;
