//! The attach socket, `<data dir>/attach.sock`, of a node started with `-Dimmutant.attach=NAME`
//! (the throwaway node `cargo immutant test` starts): a process that connects to it, such as an
//! app's test, is served as a deployment of NAME of its own while it is connected. Only the
//! node's user can connect: the data dir is theirs alone, and so is the socket (umask 077).

use std::path::Path;
use std::sync::Arc;

use super::Apps;
use immutant_foundation::shutdown::Shutdown;

/// The socket's name in the data dir.
pub const SOCKET: &str = "attach.sock";

/// Listens on `<data_dir>/attach.sock` until `shutdown`, serving what connects as `name`.
pub fn listen(
    data_dir: &Path,
    apps: Arc<Apps>,
    name: String,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let path = data_dir.join(SOCKET);
    // Left by a node that was killed: this node holds the data dir's lock now.
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    tracing::info!(
        "Serving processes that connect to {} as apps called {name}",
        path.display()
    );
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => apps.attach(&name, socket),
                    Err(error) => {
                        tracing::warn!("cannot accept on the attach socket: {error}");
                        tokio::time::sleep(immutant_foundation::net::ACCEPT_BACKOFF).await;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok(())
}
