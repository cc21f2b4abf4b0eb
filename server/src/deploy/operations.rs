//! What an operator does to a deployment from the management API (the console's buttons):
//! undeploy and redeploy. Both change the deployments folder, as `cargo immutant` does and under
//! the same lock (`deployments/.lock`), so every node of the install follows, as it follows the
//! CLI. An undeployed app's artifact stays in `.artifacts/` until the CLI next prunes it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use immutant_contracts::descriptor;

use super::parse_descriptor;

/// Why an operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("no deployment is called {0}; `cargo immutant list` shows those there are")]
    NotDeployed(String),
    #[error("the descriptor of {name} cannot be redeployed: {reason}")]
    Invalid { name: String, reason: String },
    #[error("cannot change the deployments folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an operator can do to a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Undeploy,
    Redeploy,
}

impl Operation {
    /// The operation called `name` (`undeploy`, `redeploy`), if there is one.
    pub fn named(name: &str) -> Option<Operation> {
        match name {
            "undeploy" => Some(Operation::Undeploy),
            "redeploy" => Some(Operation::Redeploy),
            _ => None,
        }
    }

    /// Does it to the deployment `name` in `deployments`; `now_ms` is the time a redeploy
    /// gives it.
    pub fn apply(self, deployments: &Path, name: &str, now_ms: u64) -> Result<(), OperationError> {
        match self {
            Operation::Undeploy => undeploy(deployments, name),
            Operation::Redeploy => redeploy(deployments, name, now_ms),
        }
    }

    /// What was done, for the operator.
    pub fn done(self, name: &str) -> String {
        match self {
            Operation::Undeploy => format!("undeployed {name}"),
            Operation::Redeploy => format!("redeploying {name}"),
        }
    }
}

/// Removes the deployment `name`: every node of the install undeploys it.
pub fn undeploy(deployments: &Path, name: &str) -> Result<(), OperationError> {
    let _lock = lock(deployments)?;
    let path = descriptor_path(deployments, name)?;
    std::fs::remove_file(&path).map_err(|source| folder_error(deployments, source))
}

/// Deploys `name` again as it is: a new `deployed-at` in its descriptor, which every node of
/// the install takes as a new deployment (its process is stopped and started anew).
pub fn redeploy(deployments: &Path, name: &str, now_ms: u64) -> Result<(), OperationError> {
    let _lock = lock(deployments)?;
    let path = descriptor_path(deployments, name)?;
    let text =
        std::fs::read_to_string(&path).map_err(|source| folder_error(deployments, source))?;
    let permissions = std::fs::metadata(&path)
        .map_err(|source| folder_error(deployments, source))?
        .permissions();
    let invalid = |reason: String| OperationError::Invalid {
        name: name.to_string(),
        reason,
    };
    let mut descriptor = parse_descriptor(name, &text).map_err(invalid)?;
    descriptor.deployed_at = Some(now_ms.max(descriptor.deployed_at.unwrap_or(0) + 1));
    let text = toml::to_string(&descriptor).map_err(|error| invalid(error.to_string()))?;
    write_descriptor(deployments, name, &text, permissions)
        .map_err(|source| folder_error(deployments, source))
}

/// Writes `text` as the descriptor of `name`, whole or not at all: beside it under a hidden
/// name (the scanner skips those), synced, then put in its place. Call it holding the
/// folder's [`lock`].
pub(super) fn write_descriptor(
    deployments: &Path,
    name: &str,
    text: &str,
    permissions: std::fs::Permissions,
) -> std::io::Result<()> {
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(deployments)?;
    file.write_all(text.as_bytes())?;
    file.as_file().set_permissions(permissions)?;
    file.as_file().sync_all()?;
    file.persist(descriptor::path(deployments, name))
        .map_err(|error| error.error)?;
    Ok(())
}

/// `<name>.toml`, if the deployment is there.
fn descriptor_path(deployments: &Path, name: &str) -> Result<PathBuf, OperationError> {
    let path = descriptor::path(deployments, name);
    match immutant_protocol::names::is_deployment_name(name) && path.is_file() {
        true => Ok(path),
        false => Err(OperationError::NotDeployed(name.to_string())),
    }
}

/// The deployments folder's lock, which `cargo immutant deploy` and `undeploy` take too.
pub(super) fn lock(deployments: &Path) -> Result<File, OperationError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(deployments.join(".lock"))
        .map_err(|source| folder_error(deployments, source))?;
    file.lock()
        .map_err(|source| folder_error(deployments, source))?;
    Ok(file)
}

fn folder_error(deployments: &Path, source: std::io::Error) -> OperationError {
    OperationError::Folder {
        path: deployments.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeploy_changes_only_when_it_was_deployed_and_undeploy_removes_it() {
        let folder = tempfile::tempdir().unwrap();
        let descriptor = folder.path().join("app.toml");
        std::fs::write(
            &descriptor,
            "name = \"app\"\nartifact = \".artifacts/app-1f\"\ndeployed-at = 5\ncontext-path = \"/x\"\n",
        )
        .unwrap();
        redeploy(folder.path(), "app", 1_000).unwrap();
        let after =
            parse_descriptor("app", &std::fs::read_to_string(&descriptor).unwrap()).unwrap();
        assert_eq!(after.deployed_at, Some(1_000));
        assert_eq!(after.context_path.as_deref(), Some("/x"));
        // A clock that went back still makes it new.
        redeploy(folder.path(), "app", 10).unwrap();
        let again =
            parse_descriptor("app", &std::fs::read_to_string(&descriptor).unwrap()).unwrap();
        assert_eq!(again.deployed_at, Some(1_001));
        let hidden: Vec<_> = std::fs::read_dir(folder.path())
            .unwrap()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(".app"))
            .collect();
        assert!(hidden.is_empty(), "no leftover: {hidden:?}");

        for name in ["other", "../app", ""] {
            assert!(matches!(
                redeploy(folder.path(), name, 1),
                Err(OperationError::NotDeployed(_))
            ));
        }
        undeploy(folder.path(), "app").unwrap();
        assert!(!descriptor.exists());
        assert!(matches!(
            undeploy(folder.path(), "app"),
            Err(OperationError::NotDeployed(_))
        ));
    }
}
