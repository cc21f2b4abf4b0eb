//! A deployment descriptor: `deployments/<name>.toml`, written by `cargo immutant deploy`. It
//! names an immutable artifact (the app's binary) in the same folder, so a changed descriptor is
//! a new deployment.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a descriptor says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Descriptor {
    /// The deployment's name (the descriptor's file name without `.toml`).
    pub name: String,
    /// The app's binary, relative to the deployments folder.
    pub artifact: PathBuf,
    /// The project the app was built from, if it was.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// When it was deployed (unix ms); every deploy changes it, so every deploy redeploys.
    #[serde(default)]
    pub deployed_at: Option<u64>,
    #[serde(default)]
    pub context_path: Option<String>,
    #[serde(default)]
    pub virtual_host: Vec<String>,
    /// `[package.metadata.immutant]` of the app's Cargo.toml, for the app to read.
    #[serde(default)]
    pub settings: toml::Table,
}

impl Descriptor {
    /// Reads a descriptor's text; errors say what is wrong in terms of the file.
    pub fn parse(text: &str) -> Result<Descriptor, String> {
        toml::from_str(text).map_err(|error| format!("the descriptor is not valid: {error}"))
    }

    /// The artifact's path.
    pub fn artifact_path(&self, deployments: &Path) -> PathBuf {
        deployments.join(&self.artifact)
    }
}
