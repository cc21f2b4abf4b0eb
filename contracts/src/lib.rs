//! # immutant-contracts
//!
//! What the Immutant CLI (`cargo-immutant`) and the node (`immutant-server`) agree on, defined
//! once so that neither side writes it again:
//!
//! - [`descriptor`]: the deployment descriptor, `deployments/<name>.toml`, which the CLI writes
//!   and every node of the install reads;
//! - [`status`] and [`deployment`]: the management API's JSON (`GET /status`, `/deployments`,
//!   `/web`), which the node serves and the CLI and the console read;
//! - [`https`]: the balancer's HTTPS flags, which the CLI takes and passes on to the server;
//! - [`data_dir`]: the files of a node's data dir that the CLI reads.
//!
//! Only shapes live here (serde and clap, no runtime): what either side does with them stays on
//! its side.
//! The JSON types read what is missing as its default, so that a CLI reads a node of another
//! version.

pub mod data_dir;
pub mod deployment;
pub mod descriptor;
pub mod https;
pub mod status;

pub use descriptor::Descriptor;
