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
    // Everything the node writes (its journal, caches, registry entry, sockets) is its user's
    // alone: files 0600, folders 0700. Its apps inherit the same.
    // SAFETY: umask only sets this process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    // Every client connection, and every one an app gives back, holds a descriptor.
    immutant_protocol::handoff::raise_open_files_limit();
    let args = ServerArgs::from_env();
    match immutant_server::start(args, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ERROR: {error}");
            ExitCode::FAILURE
        }
    }
}
