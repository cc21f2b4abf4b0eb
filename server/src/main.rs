//! `immutant-server`: starts a node. See the library's docs for what a node does.

use std::process::ExitCode;
use std::time::Instant;

use immutant_server::args::ServerArgs;

// Requests through the node allocate and free many small buffers; mimalloc does that in about
// half the time glibc's allocator takes (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
