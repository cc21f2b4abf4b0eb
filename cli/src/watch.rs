//! `watch`: deploys the app in a project folder, then builds and deploys it again on every saved
//! change (changes within half a second of each other are one). A build that fails is shown and
//! deploys nothing: the deployment that runs keeps running.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, new_debouncer};

use crate::deploy::{self, Redeploy, Source};
use crate::locations::Locations;
use crate::project::{Overrides, Project};

/// Changes closer together than this are one.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Deploys the project in `path`, then again on every change, until interrupted.
pub fn watch(locations: &Locations, path: &Path, overrides: &Overrides) -> Result<()> {
    let project = Project::read(path)?;
    // Builds write there: what changes in them is not the developer's doing.
    let ignored = [project.target_dir.clone(), project.build_dir(locations)];
    let (changes, changed) = mpsc::channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(DEBOUNCE, changes).context("cannot watch for changes")?;
    debouncer
        .watcher()
        .watch(&project.root, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {} for changes", project.root.display()))?;
    let source = Source::Project(path.to_path_buf());
    deploy_once(locations, &source, overrides);
    println!(
        "Watching {} for changes (Ctrl-C stops)",
        project.root.display()
    );
    for result in changed {
        let paths = match result {
            Ok(events) => events.into_iter().map(|event| event.path).collect(),
            Err(error) => {
                eprintln!("Watching for changes failed for a moment: {error}");
                continue;
            }
        };
        let edited = edited(&project.root, &ignored, paths);
        if edited.is_empty() {
            continue;
        }
        let shown: Vec<String> = edited.iter().map(|p| p.display().to_string()).collect();
        println!("Changed: {}; building and deploying", shown.join(", "));
        deploy_once(locations, &source, overrides);
        println!("Watching for changes");
    }
    Ok(())
}

/// Deploys, saying so; a failure is said, and the deployment there keeps running.
fn deploy_once(locations: &Locations, source: &Source, overrides: &Overrides) {
    if let Err(error) = deploy::deploy_with(locations, source, overrides, Redeploy::IfChanged) {
        eprintln!("error: {error:#}; the deployment that runs (if any) keeps running");
    }
}

/// The paths of `changed` a developer edited, relative to `root`: not in a target dir, nor
/// hidden (`.git/`, editors' swap files), nor an editor's backup (`main.rs~`), nor the
/// `Cargo.lock` builds write.
fn edited(root: &Path, ignored: &[PathBuf], changed: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut edited: Vec<PathBuf> = changed
        .into_iter()
        .filter(|path| !ignored.iter().any(|dir| path.starts_with(dir)))
        .filter_map(|path| path.strip_prefix(root).ok().map(Path::to_path_buf))
        .filter(|relative| relative != Path::new("Cargo.lock"))
        .filter(|relative| {
            relative.components().all(|part| {
                let part = part.as_os_str().to_string_lossy();
                !part.starts_with('.') && !part.ends_with('~')
            })
        })
        .collect();
    edited.sort();
    edited.dedup();
    edited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_developer_edits_counts() {
        let root = Path::new("/work/app");
        let ignored = [root.join("target"), PathBuf::from("/base/target")];
        let changed = [
            "/work/app/src/main.rs",
            "/work/app/src/main.rs",
            "/work/app/Cargo.toml",
            "/work/app/Cargo.lock",
            "/work/app/target/release/app",
            "/base/target/release/app",
            "/work/app/.git/index",
            "/work/app/src/.main.rs.swp",
            "/work/app/src/main.rs~",
            "/elsewhere/x.rs",
        ]
        .map(PathBuf::from)
        .to_vec();
        assert_eq!(
            edited(root, &ignored, changed),
            [PathBuf::from("Cargo.toml"), PathBuf::from("src/main.rs")]
        );
    }
}
