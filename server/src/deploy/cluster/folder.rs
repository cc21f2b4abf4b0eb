//! The install's deployments folder as the cluster's record sees it: whether what it holds of a
//! deployment is older than the record's, and keeping it tidy (artifacts no descriptor names,
//! arrivals the record moved past).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use immutant_contracts::descriptor::{self, MAX_DESCRIPTOR_BYTES};

use super::record::DeploymentRecord;
use crate::deploy::parse_descriptor;
use crate::vocabulary::artifacts::ArtifactRef;

/// Whether what the folder has of `name` is older than the record's `entry`: an earlier
/// version, or none while the entry is deployed, unless the scanner has `seen` one there (it
/// is being undeployed through this install, and the undeploy is recorded next).
pub fn folder_is_older(
    deployments: &Path,
    name: &str,
    entry: &DeploymentRecord,
    seen: bool,
) -> bool {
    let path = descriptor::path(deployments, name);
    let text = match std::fs::metadata(&path) {
        Ok(metadata) if metadata.is_file() && metadata.len() <= MAX_DESCRIPTOR_BYTES => {
            std::fs::read(&path)
                .ok()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        }
        Ok(_) => return false,
        Err(_) => None,
    };
    let Some(text) = text else {
        return entry.descriptor.is_some() && !seen;
    };
    if entry.descriptor.as_deref() == Some(text.as_str()) {
        return false;
    }
    // This install keeps it to itself.
    if parse_descriptor(name, &text).is_ok_and(|descriptor| descriptor.local) {
        return false;
    }
    version_of(name, &text) < entry.version()
}

/// What orders the descriptor `text` of `name` among versions: when it was deployed (never,
/// for one that cannot be read), then its text.
pub fn version_of<'a>(name: &str, text: &'a str) -> (u64, &'a str) {
    let at = parse_descriptor(name, text)
        .ok()
        .and_then(|descriptor| descriptor.deployed_at)
        .unwrap_or_default();
    (at, text)
}

/// Removes the artifacts no descriptor of the folder names (older builds, fetched or written
/// here), as `cargo immutant deploy` does, but those `in_use` by this node's apps; nothing if
/// a descriptor cannot be read. Call it holding the folder's lock.
pub fn prune_artifacts(deployments: &Path, in_use: &[PathBuf]) {
    if let Ok(descriptor::UnusedArtifacts::These(unused)) =
        descriptor::unused_artifacts(deployments)
    {
        for path in unused.iter().filter(|path| !in_use.contains(path)) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes from `incoming` what arrived, whole or in part, for artifacts not `wanted` any more
/// (a transfer the record moved past).
pub fn clear_incoming(incoming: &Path, wanted: &HashSet<String>) {
    for entry in std::fs::read_dir(incoming).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let sha256 = file.strip_suffix(".part").unwrap_or(&file);
        // One another node of the install is writing is left to it.
        let idle = std::fs::File::open(entry.path()).is_ok_and(|file| file.try_lock().is_ok());
        if !wanted.contains(sha256) && idle {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether the artifact in place is the one wanted.
pub async fn has_artifact(path: &Path, wanted: &ArtifactRef) -> bool {
    let path = path.to_path_buf();
    let sha256 = wanted.sha256.clone();
    tokio::task::spawn_blocking(move || {
        ArtifactRef::of_file(&path).is_ok_and(|found| found.sha256 == sha256)
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deployed_at: u64, descriptor: Option<&str>) -> DeploymentRecord {
        DeploymentRecord::test(deployed_at, descriptor)
    }

    #[test]
    fn the_folder_follows_only_a_later_record() {
        let folder = tempfile::tempdir().unwrap();
        let older = |entry: DeploymentRecord, seen: bool| {
            folder_is_older(folder.path(), "app", &entry, seen)
        };
        let text = |at: u64| {
            format!("name = \"app\"\nartifact = \".artifacts/app-1f\"\ndeployed-at = {at}\n")
        };
        // None in the folder: a deployed record is newer, an undeployed one is not; nor is a
        // deployed one while the scanner still sees it there (it is being undeployed).
        assert!(older(entry(5, Some(&text(5))), false));
        assert!(!older(entry(5, None), false));
        assert!(!older(entry(5, Some(&text(5))), true));
        std::fs::write(descriptor::path(folder.path(), "app"), text(5)).unwrap();
        assert!(!older(entry(5, Some(&text(5))), false));
        assert!(older(entry(6, Some(&text(6))), false));
        assert!(!older(entry(4, Some(&text(4))), false));
        assert!(older(entry(6, None), false));
        assert!(!older(entry(4, None), false));
        // The same time: the greater text wins, everywhere alike.
        let other = format!("{}context-path = \"/x\"\n", text(5));
        assert_eq!(
            older(entry(5, Some(&other)), false),
            other.as_str() > text(5).as_str()
        );
        // Kept to this install: never replaced.
        let local = format!("{}local = true\n", text(5));
        std::fs::write(descriptor::path(folder.path(), "app"), local).unwrap();
        assert!(!older(entry(9, Some(&text(9))), false));
        assert!(!older(entry(9, None), false));
    }
}
