//! An app's project, as `deploy` and `archive` read it: its package, its binary and its
//! `[package.metadata.immutant]` settings (`cargo metadata`), the settings given on the command
//! line that win over them ([`Overrides`]), and its release build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::descriptor::{self, ArchivedDescriptor};
use crate::locations::Locations;

/// Settings given on the command line, which win over the project's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The deployment's name instead of the package's.
    pub name: Option<String>,
    pub context_path: Option<String>,
    /// Replaces the project's virtual hosts when not empty.
    pub virtual_host: Vec<String>,
    /// The server group whose nodes run the deployment (not part of an archive: where an app
    /// runs is said when it is deployed).
    pub group: Option<String>,
    /// Keep it on this install's nodes rather than deploy it to the whole cluster.
    pub local: bool,
    /// Replace it one member at a time.
    pub rolling: bool,
}

impl Overrides {
    /// `app` with these overrides applied, and checked.
    pub fn apply(&self, mut app: ArchivedDescriptor) -> Result<ArchivedDescriptor> {
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
