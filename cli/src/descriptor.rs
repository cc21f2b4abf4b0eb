//! The deployment descriptor on the CLI's side: the form it takes inside an archive
//! ([`ArchivedDescriptor`]), and finding, reading and checking descriptors in a deployments
//! folder. The descriptor itself, and the folder's layout, are what the CLI and the nodes agree
//! on: [`immutant_contracts::descriptor`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
pub use immutant_contracts::descriptor::{
    ARTIFACTS, Descriptor, MAX_DESCRIPTOR_BYTES, UnusedArtifacts, path, unused_artifacts,
};
use serde::{Deserialize, Serialize};

/// A deployment as an archive carries it (`descriptor.toml` in a `.ima`): what the app is, but
/// not yet where it runs from. Deploying the archive completes it into a [`Descriptor`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ArchivedDescriptor {
    /// The name to deploy as (unless `deploy --name` says otherwise).
    pub name: String,
    /// The context path, when the project or `archive --context-path` gave one; deploying
    /// defaults it to `/<name>`.
    pub context_path: Option<String>,
    #[serde(default)]
    pub virtual_host: Vec<String>,
    /// The project's `[package.metadata.immutant]` table, verbatim.
    #[serde(default)]
    pub settings: toml::Table,
}

/// The descriptors in `deployments`, by path, sorted by name: the deployment names are their
/// file stems.
pub fn paths(deployments: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(deployments) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", deployments.display()));
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", deployments.display()))?
            .path();
        let is_descriptor = path.file_name().is_some_and(|name| {
            immutant_contracts::descriptor::deployment_of(&name.to_string_lossy()).is_some()
        });
        if is_descriptor && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Reads the descriptor at `path`.
pub fn read(path: &Path) -> Result<Descriptor> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the descriptor {}", path.display()))?;
    toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid deployment descriptor; remove it or deploy the app again",
            path.display()
        )
    })
}

/// Checks that `name` can name a deployment (and so a file): ASCII letters, digits, `-` and
/// `_`, at least one of them.
pub fn check_name(name: &str) -> Result<()> {
    if !immutant_protocol::names::is_deployment_name(name) {
        bail!(
            "'{name}' cannot name a deployment: use only ASCII letters, digits, - and _ (give another with --name)"
        );
    }
    Ok(())
}

/// The server group of the descriptor at `path`, if it names one: read only if it is a file
/// of a descriptor's size (a pipe or a huge file named `x.toml` is not read).
pub fn group_of(path: &Path) -> Option<String> {
    let metadata = std::fs::metadata(path).ok()?;
    if !metadata.is_file() || metadata.len() > MAX_DESCRIPTOR_BYTES {
        return None;
    }
    read(path).ok()?.group
}

/// Checks that `group` can name a server group: what may name a deployment.
pub fn check_group(group: &str) -> Result<()> {
    if !immutant_protocol::names::is_deployment_name(group) {
        bail!(
            "'{group}' cannot name a server group: use only ASCII letters, digits, - and _, as the nodes' -Dimmutant.node.groups does"
        );
    }
    Ok(())
}

/// Checks that `context_path` is one: it starts with `/`.
pub fn check_context_path(context_path: &str) -> Result<()> {
    if !context_path.starts_with('/') {
        bail!("the context path '{context_path}' must start with /, as in /{context_path}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_names() {
        assert!(check_name("my-app_2").is_ok());
        for bad in ["", "my app", "../x", "a.b", "é"] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.contains("letters, digits, - and _"), "{error}");
        }
    }

    #[test]
    fn context_paths_start_with_a_slash() {
        assert!(check_context_path("/").is_ok());
        let error = check_context_path("ham").unwrap_err().to_string();
        assert!(error.contains("as in /ham"), "{error}");
    }
}
