//! The install's record of its running nodes: `<home>/nodes/<name>.json` while a node runs, so
//! that `cargo immutant list` can ask each one how its deployments are. A node killed with
//! `kill -9` leaves its file behind; readers check that its pid still lives. And
//! `<home>/logs/<name>`, a link to the node's log folder that stays after it stops, so that
//! `cargo immutant logs` finds the logs of every node the install ran.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::ServerConfig;

/// What a running node tells about itself.
#[derive(Serialize)]
struct NodeRecord<'a> {
    name: &'a str,
    pid: u32,
    management: String,
    data_dir: &'a Path,
}

/// A node's entry, removed when dropped.
pub struct Registration {
    path: PathBuf,
}

impl Registration {
    /// Records the node in `<home>/nodes/`. Failing to is only worth a warning: the node runs
    /// the same without it.
    pub fn record(home: &Path, config: &ServerConfig) -> Option<Registration> {
        let dir = home.join("nodes");
        let path = dir.join(format!("{}.json", config.node_name));
        let record = NodeRecord {
            name: &config.node_name,
            pid: std::process::id(),
            management: config.management_url(),
            data_dir: &config.data_dir,
        };
        link_log(home, config);
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(
                &path,
                serde_json::to_vec_pretty(&record).unwrap_or_default(),
            )
        });
        match written {
            Ok(()) => Some(Registration { path }),
            Err(error) => {
                tracing::warn!(
                    "cannot record this node in {} ({error}); `cargo immutant list` will not see it",
                    dir.display()
                );
                None
            }
        }
    }
}

/// Links `<home>/logs/<name>` to the node's log folder (a link left by an earlier node of that
/// name is replaced).
fn link_log(home: &Path, config: &ServerConfig) {
    let logs = home.join("logs");
    let link = logs.join(&config.node_name);
    let linked = std::fs::create_dir_all(&logs).and_then(|()| {
        match std::fs::remove_file(&link) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        std::os::unix::fs::symlink(config.data_dir.join("log"), &link)
    });
    if let Err(error) = linked {
        tracing::warn!(
            "cannot link this node's log folder as {} ({error}); `cargo immutant logs` will not see it",
            link.display()
        );
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
