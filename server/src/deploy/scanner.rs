//! The deployment scanner: looks at the deployments folder five times a second and reports
//! what changed. Reading a handful of small files is cheaper than any watcher, and works on
//! every filesystem the folder may be on.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use immutant_contracts::descriptor::deployment_of;
use immutant_foundation::shutdown::Shutdown;

const INTERVAL: Duration = Duration::from_millis(200);
/// The largest file taken for a descriptor (they are a few hundred bytes).
const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// A change in the deployments folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentEvent {
    /// The descriptor of `name` appeared or changed; `text` is what it says now.
    Deployed { name: String, text: String },
    /// The descriptor of `name` is gone.
    Undeployed { name: String },
}

/// Reports everything in `dir` as deployed now, then follows changes until `shutdown`. What
/// cannot be read is never taken for gone: a folder that cannot be read changes nothing (said
/// in the log once until it can be read again), nor does a descriptor that cannot be read.
pub async fn watch(dir: &Path, mut report: impl FnMut(DeploymentEvent), shutdown: Shutdown) {
    let mut known: HashMap<String, String> = HashMap::new();
    let mut unreadable = false;
    // Names already said in the log to be unreadable, so that each is said once.
    let mut warned = HashSet::new();
    loop {
        match read_descriptors(dir, &known, &mut warned) {
            Ok(present) => {
                unreadable = false;
                for (name, text) in &present {
                    if known.get(name) != Some(text) {
                        report(DeploymentEvent::Deployed {
                            name: name.clone(),
                            text: text.clone(),
                        });
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
/// cannot be read now keeps the text it had (`known`); a byte that is not UTF-8 (in a comment,
/// say) does not make a descriptor unreadable.
fn read_descriptors(
    dir: &Path,
    known: &HashMap<String, String>,
    warned: &mut HashSet<String>,
) -> std::io::Result<HashMap<String, String>> {
    let mut present = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = deployment_of(&file) else {
            continue;
        };
        // Only files, and small ones: a pipe or a link to a device named `x.toml` must not
        // hang or fill the node.
        let metadata = entry.metadata()?;
        if !metadata.is_file() || metadata.len() > MAX_DESCRIPTOR_BYTES {
            if warned.insert(name.to_string()) {
                tracing::warn!(
                    "{} is not a descriptor (not a file, or over {MAX_DESCRIPTOR_BYTES} bytes); it is left alone",
                    entry.path().display()
                );
            }
            continue;
        }
        let text = match std::fs::read(entry.path()) {
            Ok(bytes) => {
                warned.remove(name);
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // Gone between the listing and the read: gone.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                if warned.insert(name.to_string()) {
                    tracing::warn!("cannot read {} ({error})", entry.path().display());
                }
                match known.get(name) {
                    Some(text) => text.clone(),
                    None => continue,
                }
            }
        };
        present.insert(name.to_string(), text);
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
        assert!(read["app"].contains("name = \"app\""));
    }

    #[test]
    fn a_folder_that_cannot_be_read_is_an_error_not_an_empty_folder() {
        let missing = Path::new("/nonexistent/deployments");
        assert!(read_descriptors(missing, &HashMap::new(), &mut HashSet::new()).is_err());
    }
}
