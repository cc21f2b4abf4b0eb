//! An installed release on disk: `bin/immutant-server`, `config/`, `deployments/`, the SDK's
//! sources under `sources/`, and a record of where it came from; staging one atomically, and
//! linking `current` to it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use include_dir::{Dir, DirEntry, include_dir};
use serde::{Deserialize, Serialize};

use crate::locations::SERVER_BINARY;

/// The configs every install has, as this source tree ships them. A tarball's own win.
const DEFAULT_CONFIGS: [(&str, &str); 2] = [
    (
        "standalone.toml",
        include_str!("../../../server/config/standalone.toml"),
    ),
    (
        "standalone-ha.toml",
        include_str!("../../../server/config/standalone-ha.toml"),
    ),
];

/// The crates an app builds against, as this source tree has them, by folder name: the SDK and
/// the protocol crate it depends on (as `../protocol`, so they keep their places side by side).
static SOURCES: [(&str, Dir<'static>); 2] = [
    ("sdk", include_dir!("$CARGO_MANIFEST_DIR/../sdk")),
    ("protocol", include_dir!("$CARGO_MANIFEST_DIR/../protocol")),
];

/// The folder of an install that holds [`SOURCES`].
const SOURCES_DIR: &str = "sources";

/// The record of an install, kept in its folder.
const RECORD: &str = "install.toml";

/// Where an install came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallRecord {
    pub version: String,
    /// Such as `source /path/to/tree` or `https://example.com/immutant-server.tar.gz`.
    pub from: String,
}

/// A server ready to install: its binary and, from a tarball, its own config folder.
#[derive(Debug)]
pub struct Artifact {
    pub binary: PathBuf,
    pub configs: Option<PathBuf>,
    pub record: InstallRecord,
}

/// Where the install in `dir` keeps the SDK's sources, for apps' `immutant` dependency.
pub fn sdk_sources(dir: &Path) -> PathBuf {
    dir.join(SOURCES_DIR).join("sdk")
}

/// Whether `dir` holds an install.
pub fn is_installed(dir: &Path) -> bool {
    dir.join(SERVER_BINARY).is_file()
}

/// The record of the install in `dir`, if it has one.
pub fn record(dir: &Path) -> Option<InstallRecord> {
    toml::from_str(&std::fs::read_to_string(dir.join(RECORD)).ok()?).ok()
}

/// The version a server binary reports (`immutant-server X` from `--version`).
pub fn server_version(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().strip_prefix("immutant-server ") {
        Some(version) if output.status.success() && !version.is_empty() => Ok(version.to_string()),
        _ => bail!(
            "{} is not an immutant-server binary: `--version` printed '{}'",
            binary.display(),
            text.trim()
        ),
    }
}

/// Installs `artifact` into `dir`, replacing what is there: everything is put together in a
/// folder beside it first, so `dir` is never half-written.
pub fn stage(artifact: &Artifact, dir: &Path) -> Result<()> {
    let parent = dir
        .parent()
        .context("an install dir needs a parent folder")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    let root = staging.path();
    for folder in ["bin", "config", "deployments"] {
        std::fs::create_dir_all(root.join(folder))?;
    }
    let binary = root.join(SERVER_BINARY);
    std::fs::copy(&artifact.binary, &binary)
        .with_context(|| format!("cannot copy {}", artifact.binary.display()))?;
    set_executable(&binary)?;
    for (name, text) in DEFAULT_CONFIGS {
        std::fs::write(root.join("config").join(name), text)?;
    }
    if let Some(configs) = &artifact.configs {
        for entry in std::fs::read_dir(configs)? {
            let entry = entry?;
            std::fs::copy(entry.path(), root.join("config").join(entry.file_name()))?;
        }
    }
    let previous = dir.join("config");
    super::secret::write(
        &root.join("config"),
        Some(previous.as_path()).filter(|dir| dir.is_dir()),
    )?;
    for (name, files) in &SOURCES {
        write_sources(files, &root.join(SOURCES_DIR).join(name))?;
    }
    std::fs::write(root.join(RECORD), toml::to_string(&artifact.record)?)?;
    if dir.exists() {
        // A reinstall keeps what the install holds besides the server: its deployments.
        let deployments = dir.join("deployments");
        if deployments.is_dir() {
            std::fs::remove_dir(root.join("deployments"))?;
            std::fs::rename(&deployments, root.join("deployments"))
                .with_context(|| format!("cannot keep the deployments of {}", dir.display()))?;
        }
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, dir)
        .with_context(|| format!("cannot move the install into {}", dir.display()))?;
    Ok(())
}

/// Writes the crate `files` into `dir`, leaving out its build output (`target/`).
fn write_sources(files: &Dir, dir: &Path) -> Result<()> {
    let folder = dir.join(files.path());
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    for entry in files.entries() {
        let path = dir.join(entry.path());
        match entry {
            DirEntry::Dir(_) if entry.path() == Path::new("target") => {}
            DirEntry::Dir(folder) => write_sources(folder, dir)?,
            DirEntry::File(file) => std::fs::write(&path, file.contents())
                .with_context(|| format!("cannot write {}", path.display()))?,
        }
    }
    Ok(())
}

/// Points the `current` link at `target`, replacing the old link in one step.
pub fn link_current(current: &Path, target: &Path) -> Result<()> {
    if std::fs::read_link(current).is_ok_and(|old| old == target) {
        return Ok(());
    }
    let fresh = current.with_extension(format!("new-{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    std::os::unix::fs::symlink(target, &fresh)
        .with_context(|| format!("cannot create {}", fresh.display()))?;
    std::fs::rename(&fresh, current)
        .with_context(|| format!("cannot replace {}", current.display()))?;
    println!("Linking {} to {}", current.display(), target.display());
    Ok(())
}

/// Makes a file executable by everyone, as a server binary must be.
pub fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}
