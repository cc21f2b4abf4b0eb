//! The data dir: where a node persists everything. It is locked while the node runs, so two
//! nodes never share one; the lock is the OS's, so a killed node leaves no stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::NodeError;

/// The lock file's name inside the data dir.
const LOCK_FILE: &str = "node.lock";

/// Holds a data dir for one node until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` if it is missing and locks it for the node `node_name`.
    pub fn acquire(dir: &Path, node_name: &str) -> Result<Self, NodeError> {
        let io_error = |source| NodeError::DataDir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_error)?;
        // The node's data (journal, caches, tokens) is its user's alone, also in a data dir an
        // older version made.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_error)?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(io_error)?;
                writeln!(file, "{node_name}\n{}", std::process::id()).map_err(io_error)?;
                Ok(DataDirLock { _file: file })
            }
            Err(TryLockError::WouldBlock) => Err(NodeError::DataDirInUse {
                path: dir.to_path_buf(),
                holder: describe_holder(&path),
            }),
            Err(TryLockError::Error(source)) => Err(io_error(source)),
        }
    }
}

/// Names the node holding a lock file, from what it wrote there.
fn describe_holder(lock: &PathBuf) -> String {
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(name), Some(pid)) => format!("node '{name}' (pid {pid})"),
        _ => "another node".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDirLock::acquire(&data, "one").unwrap();
        let error = DataDirLock::acquire(&data, "two").unwrap_err().to_string();
        assert!(
            error.contains(&format!("node 'one' (pid {})", std::process::id())),
            "{error}"
        );
        assert!(error.contains("-Djboss.server.data.dir"), "{error}");
        drop(first);
        DataDirLock::acquire(&data, "two").unwrap();
    }
}
