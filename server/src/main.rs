//! `immutant-server`: starts a node. See the library's docs for what a node does.

use std::process::ExitCode;
use std::time::Instant;

use immutant_server::args::ServerArgs;

fn main() -> ExitCode {
    let started = Instant::now();
    let args = ServerArgs::from_env();
    match immutant_server::start(args, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ERROR: {error}");
            ExitCode::FAILURE
        }
    }
}
