//! Running cargo: the one that ran `cargo immutant` (cargo says which in `$CARGO`), else the
//! one on the PATH.

use std::process::Command;

/// A `cargo` command, ready for its arguments.
pub fn command() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
