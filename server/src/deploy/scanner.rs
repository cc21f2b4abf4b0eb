//! The deployment scanner: looks at the deployments folder five times a second and reports
//! what changed. Reading a handful of small files is cheaper than any watcher, and works on
//! every filesystem the folder may be on.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use immutant_contracts::descriptor::{MAX_DESCRIPTOR_BYTES, deployment_of};
use immutant_foundation::shutdown::Shutdown;

const INTERVAL: Duration = Duration::from_millis(200);

/// A change in the deployments folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentEvent {
    /// The descriptor of `name` appeared or changed; `text` is what it says now.
    Deployed { name: String, text: String },
    /// A file named as the descriptor of `name` appeared or changed, but is not one (not a
    /// file, or too large to be one): `reason` says which.
    Refused { name: String, reason: String },
    /// The descriptor of `name` is gone.
    Undeployed { name: String },
}

/// What the scanner found under a descriptor's name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Descriptor(String),
    NotADescriptor(String),
}

impl Found {
    fn event(&self, name: &str) -> DeploymentEvent {
        let name = name.to_string();
        match self {
            Found::Descriptor(text) => DeploymentEvent::Deployed {
                name,
                text: text.clone(),
            },
            Found::NotADescriptor(reason) => DeploymentEvent::Refused {
                name,
                reason: reason.clone(),
            },
        }
    }
}

/// Reports everything in `dir` as deployed now, then follows changes until `shutdown`. What
/// cannot be read is never taken for gone: a folder that cannot be read changes nothing (said
/// in the log once until it can be read again), nor does a descriptor that cannot be read.
pub async fn watch(dir: &Path, mut report: impl FnMut(DeploymentEvent), shutdown: Shutdown) {
    let mut known: HashMap<String, Found> = HashMap::new();
    let mut unreadable = false;
    // Names already said in the log to be unreadable, so that each is said once.
    let mut warned = HashSet::new();
    loop {
        match read_descriptors(dir, &known, &mut warned) {
            Ok(present) => {
                unreadable = false;
                for (name, found) in &present {
                    if known.get(name) != Some(found) {
                        report(found.event(name));
                    }
                }
                for name in known.keys().filter(|name| !present.contains_key(*name)) {
                    report(DeploymentEvent::Undeployed { name: name.clone() });
                }
                known = present;
            }
            Err(error) if !unreadable => {
                tracing::error!(
                    "cannot read the deployments folder {} ({error}); what runs keeps running",
                    dir.display()
                );
                unreadable = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Every `<name>.toml` in `dir` (hidden files, such as ones being written, left out). One that
/// cannot be read now keeps what it was found to be (`known`); a byte that is not UTF-8 (in a
/// comment, say) does not make a descriptor unreadable.
fn read_descriptors(
    dir: &Path,
    known: &HashMap<String, Found>,
    warned: &mut HashSet<String>,
) -> std::io::Result<HashMap<String, Found>> {
    let mut present = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = deployment_of(&file) else {
            continue;
        };
        // Only files (a link is followed), and small ones: a pipe or a link to a device named
        // `x.toml` must not hang or fill the node.
        let metadata = match std::fs::metadata(entry.path()) {
            Ok(metadata) => metadata,
            // Gone between the listing and now (or a link to nothing): gone.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        // Said without the size, which a growing file changes at every look.
        let refused = if !metadata.is_file() {
            Some("it is not a file".to_string())
        } else if metadata.len() > MAX_DESCRIPTOR_BYTES {
            Some(format!(
                "it is over the {MAX_DESCRIPTOR_BYTES} bytes a descriptor may have"
            ))
        } else {
            None
        };
        if let Some(reason) = refused {
            let reason = format!(
                "{} is not a descriptor: {reason}; replace it with the descriptor `cargo immutant deploy` writes",
                entry.path().display()
            );
            present.insert(name.to_string(), Found::NotADescriptor(reason));
            continue;
        }
        let found = match std::fs::read(entry.path()) {
            Ok(bytes) => {
                warned.remove(name);
                Found::Descriptor(String::from_utf8_lossy(&bytes).into_owned())
            }
            // Gone between the listing and the read: gone.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                if warned.insert(name.to_string()) {
                    tracing::warn!("cannot read {} ({error})", entry.path().display());
                }
                match known.get(name) {
                    Some(found) => found.clone(),
                    None => continue,
                }
            }
        };
        present.insert(name.to_string(), found);
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_with_a_byte_that_is_not_utf8_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.toml"), b"# caf\xe9\nname = \"app\"\n").unwrap();
        let read = read_descriptors(dir.path(), &HashMap::new(), &mut HashSet::new()).unwrap();
        let Found::Descriptor(text) = &read["app"] else {
            panic!("{read:?}")
        };
        assert!(text.contains("name = \"app\""));
    }

    #[test]
    fn a_file_too_large_or_not_a_file_is_found_as_not_a_descriptor_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let big = std::fs::File::create(dir.path().join("big.toml")).unwrap();
        big.set_len(MAX_DESCRIPTOR_BYTES + 1).unwrap();
        std::fs::create_dir(dir.path().join("folder.toml")).unwrap();
        let read = read_descriptors(dir.path(), &HashMap::new(), &mut HashSet::new()).unwrap();
        let reason = |name: &str| match &read[name] {
            Found::NotADescriptor(reason) => reason.clone(),
            found => panic!("{found:?}"),
        };
        assert!(
            reason("big").contains("over the 1048576"),
            "{}",
            reason("big")
        );
        assert!(
            reason("folder").contains("it is not a file"),
            "{}",
            reason("folder")
        );
    }

    #[test]
    fn a_folder_that_cannot_be_read_is_an_error_not_an_empty_folder() {
        let missing = Path::new("/nonexistent/deployments");
        assert!(read_descriptors(missing, &HashMap::new(), &mut HashSet::new()).is_err());
    }
}
