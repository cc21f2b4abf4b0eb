//! The node's log: one line per event on standard output, as JBoss's console handler wrote it.

use std::io::IsTerminal;

/// Starts logging at `level`. Apps' output and the node's own lines share standard output.
pub fn init(level: tracing::Level) {
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout)
        .init();
}
