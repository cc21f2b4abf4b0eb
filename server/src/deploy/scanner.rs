//! The deployment scanner: looks at the deployments folder five times a second and tells the
//! apps what changed. Reading a handful of small files is cheaper than any watcher, and works on
//! every filesystem the folder may be on.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::apps::Apps;
use crate::shutdown::Shutdown;

const INTERVAL: Duration = Duration::from_millis(200);

/// Deploys everything in `dir` now, then follows changes until `shutdown`.
pub async fn watch(dir: &Path, apps: Arc<Apps>, shutdown: Shutdown) {
    let mut known: HashMap<String, String> = HashMap::new();
    loop {
        let present = read_descriptors(dir);
        for (name, text) in &present {
            if known.get(name) != Some(text) {
                apps.deploy(name, text);
            }
        }
        for name in known.keys().filter(|name| !present.contains_key(*name)) {
            apps.undeploy(name);
        }
        known = present;
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Every `<name>.toml` in `dir` (hidden files, such as ones being written, left out).
fn read_descriptors(dir: &Path) -> HashMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".toml")?;
            if name.starts_with('.') || name.is_empty() {
                return None;
            }
            let text = std::fs::read_to_string(entry.path()).ok()?;
            Some((name.to_string(), text))
        })
        .collect()
}
