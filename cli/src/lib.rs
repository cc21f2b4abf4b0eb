//! # cargo-immutant
//!
//! `cargo immutant`: the toolchain for Immutant, the Rust application server, after
//! lein-immutant. Each command in `main.rs` only parses its arguments and calls a function here:
//!
//! - [`locations`]: where the base dir, the Immutant home and the server are;
//! - [`install`]: builds or fetches a server and installs it under `<base>/releases`;
//! - [`run`]: runs the installed server in the foreground;
//! - [`env`], [`list`], [`version`]: tell what is where.

pub mod env;
pub mod install;
pub mod list;
pub mod locations;
pub mod run;
pub mod version;
