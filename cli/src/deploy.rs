//! `deploy`: builds an app in release mode and deploys it into the Immutant home's deployments
//! folder as an immutable artifact (the binary, named for its content) and a descriptor that
//! names it; or deploys an archive made by `archive` without building. Also what `archive` and
//! `undeploy` share with it: reading and building an app's project, and keeping the deployments
//! folder tidy under its lock.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::archive;
use crate::descriptor::{self, ARTIFACTS, ArchivedDescriptor, Descriptor};
use crate::install;
use crate::locations::Locations;

/// What to deploy.
#[derive(Debug, Clone)]
pub enum Source {
    /// The project in this folder, built first.
    Project(PathBuf),
    /// An `.ima` archive made by `cargo immutant archive`, deployed as it is.
    Archive(PathBuf),
}

/// Settings given on the command line, which win over the project's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The deployment's name instead of the package's.
    pub name: Option<String>,
    pub context_path: Option<String>,
    /// Replaces the project's virtual hosts when not empty.
    pub virtual_host: Vec<String>,
}

impl Overrides {
    /// `app` with these overrides applied, and checked.
    fn apply(&self, mut app: ArchivedDescriptor) -> Result<ArchivedDescriptor> {
        if let Some(name) = &self.name {
            app.name = name.clone();
        }
        if let Some(context_path) = &self.context_path {
            app.context_path = Some(context_path.clone());
        }
        if !self.virtual_host.is_empty() {
            app.virtual_host = self.virtual_host.clone();
        }
        descriptor::check_name(&app.name)?;
        if let Some(context_path) = &app.context_path {
            descriptor::check_context_path(context_path)?;
        }
        Ok(app)
    }
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
            write_deployment(&locations.deployments(), app, built, redeploy)
        }
        Source::Archive(file) => {
            let unpacked = archive::unpack(file)?;
            let app = overrides.apply(unpacked.app.clone())?;
            install::ensure_installed(locations)?;
            let built = Built {
                root: &unpacked.root,
                binary: &unpacked.binary,
            };
            write_deployment(&locations.deployments(), app, built, redeploy)
        }
    }
}

/// Writes `binary` as an artifact and then the descriptor naming it, under the folder's lock,
/// and removes the artifacts no descriptor names any more. Returns the descriptor's path.
fn write_deployment(
    deployments: &Path,
    app: ArchivedDescriptor,
    Built { root, binary }: Built,
    redeploy: Redeploy,
) -> Result<PathBuf> {
    std::fs::create_dir_all(deployments.join(ARTIFACTS))
        .with_context(|| format!("cannot create {}", deployments.display()))?;
    let _lock = lock(deployments)?;
    let artifact = write_artifact(deployments, &app.name, binary)?;
    let path = descriptor::path(deployments, &app.name);
    let previous = descriptor::read(&path).ok();
    let descriptor = Descriptor {
        artifact,
        root: root.to_path_buf(),
        deployed_at: deployed_at(previous.as_ref())?,
        context_path: app.context_path.unwrap_or_else(|| format!("/{}", app.name)),
        virtual_host: app.virtual_host,
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
    prune_artifacts(deployments)?;
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
    Ok(previous.map_or(now, |previous| {
        now.max(previous.deployed_at.saturating_add(1))
    }))
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
    let mut named = Vec::new();
    for path in descriptor::paths(deployments)? {
        match descriptor::read(&path) {
            Ok(descriptor) => named.push(deployments.join(descriptor.artifact)),
            Err(error) => {
                eprintln!("Not removing unused artifacts: {error:#}");
                return Ok(());
            }
        }
    }
    let artifacts = deployments.join(ARTIFACTS);
    let Ok(entries) = std::fs::read_dir(&artifacts) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", artifacts.display()))?
            .path();
        if path.is_file() && !named.contains(&path) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the unused {}", path.display()))?;
        }
    }
    Ok(())
}

/// An app's project, as `cargo metadata` describes it.
#[derive(Debug)]
pub struct Project {
    /// The project's folder, absolute.
    pub root: PathBuf,
    manifest: PathBuf,
    package_id: String,
    package: String,
    /// The binary target that is the app.
    bin: String,
    /// Cargo's target folder for the project.
    pub target_dir: PathBuf,
    /// Its workspace's folder (its own, if it is not part of another).
    workspace_root: PathBuf,
    /// `[package.metadata.immutant]`.
    settings: toml::Table,
}

impl Project {
    /// Reads the project in the folder `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let manifest = path.join("Cargo.toml");
        if !manifest.is_file() {
            bail!(
                "{} has no Cargo.toml; run this in an app's folder, or give the folder's path",
                std::path::absolute(path)
                    .unwrap_or_else(|_| path.to_path_buf())
                    .display()
            );
        }
        let manifest = std::fs::canonicalize(&manifest)
            .with_context(|| format!("cannot resolve {}", manifest.display()))?;
        let output = crate::cargo::command()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .arg("--manifest-path")
            .arg(&manifest)
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run `cargo metadata`; is cargo on your PATH?")?;
        if !output.status.success() {
            bail!(
                "`cargo metadata` cannot read {} (its error is above)",
                manifest.display()
            );
        }
        let metadata: Metadata = serde_json::from_slice(&output.stdout)
            .context("cannot read `cargo metadata`'s output")?;
        Self::from_metadata(metadata, manifest)
    }

    fn from_metadata(metadata: Metadata, manifest: PathBuf) -> Result<Self> {
        let package = metadata
            .packages
            .into_iter()
            .find(|package| {
                std::fs::canonicalize(&package.manifest_path).is_ok_and(|path| path == manifest)
            })
            .with_context(|| {
                format!(
                    "{} is a workspace without a package of its own; give the path of the app's folder",
                    manifest.display()
                )
            })?;
        let bins: Vec<&str> = package
            .targets
            .iter()
            .filter(|target| target.kind.iter().any(|kind| kind == "bin"))
            .map(|target| target.name.as_str())
            .collect();
        let bin = match bins.as_slice() {
            [] => bail!(
                "{} has no binary; an Immutant app is a binary crate (with a src/main.rs)",
                package.name
            ),
            [bin] => bin.to_string(),
            _ if bins.contains(&package.name.as_str()) => package.name.clone(),
            _ => bail!(
                "{} has several binaries ({}) and none is called {0}; name the app's binary {0}",
                package.name,
                bins.join(", ")
            ),
        };
        let settings = match package
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.get("immutant"))
        {
            None => toml::Table::new(),
            Some(immutant) => match toml::Value::try_from(immutant) {
                Ok(toml::Value::Table(table)) => table,
                _ => bail!(
                    "[package.metadata.immutant] in {} must be a table of settings",
                    manifest.display()
                ),
            },
        };
        Ok(Project {
            root: manifest.parent().unwrap_or(&manifest).to_path_buf(),
            manifest,
            package_id: package.id,
            package: package.name,
            bin,
            target_dir: metadata.target_directory,
            workspace_root: metadata.workspace_root,
            settings,
        })
    }

    /// The app as the project describes it: named like the package, with its settings and
    /// their `context-path` and `virtual-host`; then with `overrides` applied.
    pub fn app(&self, overrides: &Overrides) -> Result<ArchivedDescriptor> {
        let invalid = |key: &str, what: &str| {
            format!(
                "`{key}` in [package.metadata.immutant] of {} must be {what}",
                self.manifest.display()
            )
        };
        let context_path = match self.settings.get("context-path") {
            None => None,
            Some(toml::Value::String(path)) => Some(path.clone()),
            Some(_) => bail!(invalid("context-path", "a string, such as \"/hello\"")),
        };
        let virtual_host = match self.settings.get("virtual-host") {
            None => Vec::new(),
            Some(toml::Value::String(host)) => vec![host.clone()],
            Some(toml::Value::Array(hosts)) => hosts
                .iter()
                .map(|host| host.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .with_context(|| invalid("virtual-host", "a host name or a list of them"))?,
            Some(_) => bail!(invalid("virtual-host", "a host name or a list of them")),
        };
        overrides.apply(ArchivedDescriptor {
            name: self.package.clone(),
            context_path,
            virtual_host,
            settings: self.settings.clone(),
        })
    }

    /// Where to build the app for the install at `locations`: `<base>/target`, which every
    /// app deployed from the base's installs shares, so that the next app reuses what the first
    /// compiled (the SDK, tokio, ...); but the project's own target dir if it chose one
    /// (`CARGO_TARGET_DIR`, or `build.target-dir` in a cargo config).
    pub fn build_dir(&self, locations: &Locations) -> PathBuf {
        match self.target_dir == self.workspace_root.join("target") {
            true => locations.base.join("target"),
            false => self.target_dir.clone(),
        }
    }

    /// Builds the app in release mode in `target_dir`, cargo's progress and errors showing,
    /// and returns its binary.
    pub fn build(&self, target_dir: &Path) -> Result<PathBuf> {
        let mut child = crate::cargo::command()
            .env("CARGO_TARGET_DIR", target_dir)
            .args([
                "build",
                "--release",
                "--message-format=json-render-diagnostics",
                "--bin",
                &self.bin,
                "--manifest-path",
            ])
            .arg(&self.manifest)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run `cargo build`; is cargo on your PATH?")?;
        let stdout = child.stdout.take().context("cargo's output is not piped")?;
        let mut binary = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("cannot read cargo's output")?;
            let Ok(message) = serde_json::from_str::<ArtifactMessage>(&line) else {
                continue;
            };
            let is_the_app = message.reason == "compiler-artifact"
                && message.package_id.as_deref() == Some(self.package_id.as_str())
                && message.target.as_ref().is_some_and(|target| {
                    target.name == self.bin && target.kind.iter().any(|kind| kind == "bin")
                });
            if is_the_app && message.executable.is_some() {
                binary = message.executable;
            }
        }
        let status = child.wait().context("lost track of `cargo build`")?;
        if !status.success() {
            bail!(
                "building {} failed (cargo's errors are above)",
                self.package
            );
        }
        binary.with_context(|| format!("cargo built no binary {} for {}", self.bin, self.package))
    }
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    target_directory: PathBuf,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
    metadata: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

/// The part of cargo's JSON messages that tells which binary a build made.
#[derive(Deserialize)]
struct ArtifactMessage {
    reason: String,
    package_id: Option<String>,
    target: Option<Target>,
    executable: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(target_directory: &str) -> Project {
        let mut metadata: Metadata = serde_json::from_value(serde_json::json!({
            "packages": [{
                "id": "path+file:///work/hello#0.1.0", "name": "hello",
                "manifest_path": "/nonexistent/hello/Cargo.toml",
                "targets": [{"name": "hello", "kind": ["bin"]}], "metadata": null,
            }],
            "target_directory": target_directory,
            "workspace_root": "/nonexistent/hello",
        }))
        .unwrap();
        // The manifest is matched by its real path: point it at one that exists.
        let manifest = std::fs::canonicalize("Cargo.toml").unwrap();
        metadata.packages[0].manifest_path = manifest.clone();
        Project::from_metadata(metadata, manifest).unwrap()
    }

    #[test]
    fn apps_build_in_the_base_unless_the_project_chose_a_target_dir() {
        let locations = Locations {
            base: PathBuf::from("/base"),
            base_from: None,
            home: PathBuf::from("/base/current"),
            home_from: None,
        };
        assert_eq!(
            project("/nonexistent/hello/target").build_dir(&locations),
            Path::new("/base/target")
        );
        assert_eq!(
            project("/elsewhere/target").build_dir(&locations),
            Path::new("/elsewhere/target")
        );
    }
}
