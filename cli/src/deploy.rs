//! `deploy`: builds an app in release mode and deploys it into the Immutant home's deployments
//! folder as an immutable artifact (the binary, named for its content) and a descriptor that
//! names it; or deploys an archive made by `archive` without building. Also what `undeploy`
//! shares with it: keeping the deployments folder tidy under its lock.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::archive;
use crate::descriptor::{self, ARTIFACTS, ArchivedDescriptor, Descriptor};
use crate::install;
use crate::locations::Locations;
use crate::project::{Overrides, Project};

/// What to deploy.
#[derive(Debug, Clone)]
pub enum Source {
    /// The project in this folder, built first.
    Project(PathBuf),
    /// An `.ima` archive made by `cargo immutant archive`, deployed as it is.
    Archive(PathBuf),
}

/// Whether a deploy of what is deployed already redeploys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeploy {
    /// Every deploy restarts the app (`deploy`).
    Always,
    /// Only a deploy that changes the app or its settings does (`watch`, whose own builds touch
    /// files too).
    IfChanged,
}

/// Deploys `source` to the home's deployments folder (installing a server first if there is
/// none) and returns the descriptor's path. Every deploy redeploys.
pub fn deploy(locations: &Locations, source: &Source, overrides: &Overrides) -> Result<PathBuf> {
    deploy_with(locations, source, overrides, Redeploy::Always)
}

/// [`deploy`], redeploying as `redeploy` says.
pub fn deploy_with(
    locations: &Locations,
    source: &Source,
    overrides: &Overrides,
    redeploy: Redeploy,
) -> Result<PathBuf> {
    // Before anything is built.
    if let Some(group) = &overrides.group {
        descriptor::check_group(group)?;
    }
    match source {
        Source::Project(path) => {
            let project = Project::read(path)?;
            let app = project.app(overrides)?;
            install::ensure_installed(locations)?;
            let build_dir = project.build_dir(locations);
            std::fs::create_dir_all(&build_dir)
                .with_context(|| format!("cannot create {}", build_dir.display()))?;
            // Apps sharing the build dir and a binary's name (`release/<name>`) would take each
            // other's binary: one build and deploy at a time there (cargo builds one at a time
            // in a target dir anyway).
            let _building = lock_file(&build_dir.join(".immutant-deploy.lock"))?;
            let binary = project.build(&build_dir).context("nothing was deployed")?;
            let built = Built {
                root: &project.root,
                binary: &binary,
            };
            write_deployment(&locations.deployments(), app, built, overrides, redeploy)
        }
        Source::Archive(file) => {
            let unpacked = archive::unpack(file)?;
            let app = overrides.apply(unpacked.app.clone())?;
            install::ensure_installed(locations)?;
            let built = Built {
                root: &unpacked.root,
                binary: &unpacked.binary,
            };
            write_deployment(&locations.deployments(), app, built, overrides, redeploy)
        }
    }
}

/// Writes `binary` as an artifact and then the descriptor naming it, under the folder's lock,
/// and removes the artifacts no descriptor names any more. Returns the descriptor's path.
fn write_deployment(
    deployments: &Path,
    app: ArchivedDescriptor,
    Built { root, binary }: Built,
    overrides: &Overrides,
    redeploy: Redeploy,
) -> Result<PathBuf> {
    let group = overrides.group.clone();
    std::fs::create_dir_all(deployments.join(ARTIFACTS))
        .with_context(|| format!("cannot create {}", deployments.display()))?;
    let _lock = lock(deployments)?;
    let artifact = write_artifact(deployments, &app.name, binary)?;
    let path = descriptor::path(deployments, &app.name);
    let previous = descriptor::read(&path).ok();
    let descriptor = Descriptor {
        artifact,
        root: Some(root.to_path_buf()),
        deployed_at: Some(deployed_at(previous.as_ref())?),
        context_path: Some(app.context_path.unwrap_or_else(|| format!("/{}", app.name))),
        virtual_host: app.virtual_host,
        group,
        local: overrides.local,
        rolling: overrides.rolling,
        settings: app.settings,
        name: app.name,
    };
    let unchanged = previous.is_some_and(|previous| {
        Descriptor {
            deployed_at: descriptor.deployed_at,
            ..previous
        } == descriptor
    });
    if unchanged && redeploy == Redeploy::IfChanged {
        println!("{} is unchanged, not redeployed", descriptor.name);
        return Ok(path);
    }
    let text = toml::to_string(&descriptor).context("cannot write the descriptor as TOML")?;
    write_atomically(&path, text.as_bytes(), 0o644)?;
    // The members a rolling redeploy has not reached yet still run the old build: its
    // artifact goes at the next deploy or undeploy that is not rolling.
    if !descriptor.rolling {
        prune_artifacts(deployments)?;
    }
    println!("Deployed {} to {}", descriptor.name, path.display());
    Ok(path)
}

/// An app ready to deploy: where it came from, and its binary.
struct Built<'a> {
    root: &'a Path,
    binary: &'a Path,
}

/// Now in milliseconds since the Unix epoch, and always later than the previous deploy, so that
/// every deploy changes the descriptor.
fn deployed_at(previous: Option<&Descriptor>) -> Result<u64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is set before 1970")?
        .as_millis();
    let now = u64::try_from(now).context("the system clock is set too far ahead")?;
    Ok(previous
        .and_then(|previous| previous.deployed_at)
        .map_or(now, |previous| now.max(previous.saturating_add(1))))
}

/// Copies `binary` to `.artifacts/<name>-<hash>` unless that artifact is there already (it is
/// immutable: the same name means the same content). Returns its path relative to `deployments`.
fn write_artifact(deployments: &Path, name: &str, binary: &Path) -> Result<PathBuf> {
    let content =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let digest = Sha256::digest(&content);
    let hash: String = digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let relative = Path::new(ARTIFACTS).join(format!("{name}-{hash}"));
    let path = deployments.join(&relative);
    if !path.is_file() {
        write_atomically(&path, &content, 0o755)?;
    }
    Ok(relative)
}

/// Writes `content` to `path` whole or not at all: to a temporary file beside it, synced to
/// disk, then renamed over it.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file to write needs a folder")?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut temporary = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    temporary
        .write_all(content)
        .and_then(|()| temporary.as_file().sync_all())
        .with_context(|| format!("cannot write {}", temporary.path().display()))?;
    std::fs::set_permissions(temporary.path(), std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", temporary.path().display()))?;
    temporary
        .persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Takes the deployments folder's lock, so that two deploys or undeploys never interleave (one
/// could otherwise remove the artifact the other is about to name). Held until the file closes.
pub fn lock(deployments: &Path) -> Result<File> {
    lock_file(&deployments.join(".lock"))
}

/// Takes the lock of the file `path`, made if missing; held until the file closes.
fn lock_file(path: &Path) -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// Removes the artifacts that no descriptor names, and leftovers of interrupted writes. Call it
/// holding the folder's [`lock`]. If a descriptor cannot be read, nothing is removed: what it
/// names is unknown.
pub fn prune_artifacts(deployments: &Path) -> Result<()> {
    let found = descriptor::unused_artifacts(deployments)
        .with_context(|| format!("cannot read {}", deployments.display()))?;
    let unused = match found {
        descriptor::UnusedArtifacts::These(unused) => unused,
        descriptor::UnusedArtifacts::Unknown(path) => {
            eprintln!(
                "Not removing unused artifacts: {} is not a descriptor that can be read",
                path.display()
            );
            return Ok(());
        }
    };
    for path in unused {
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the unused {}", path.display()))?;
    }
    Ok(())
}
