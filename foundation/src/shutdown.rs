//! Graceful shutdown: the signals that ask for it, and the token that passes it down.

use tokio::signal::unix::{Signal, SignalKind, signal};
pub use tokio_util::sync::CancellationToken as Shutdown;

/// SIGINT and SIGTERM, listened for from the moment this is made: a signal that comes during
/// boot still stops the node gracefully once it is up.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts listening. Must be called inside the tokio runtime.
    pub fn listen() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal and says which one came.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
