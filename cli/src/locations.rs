//! Where things are: the base dir (installs), the Immutant home (the install in use), and
//! inside the home, the server and the deployments folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The server binary's path inside an install.
pub const SERVER_BINARY: &str = "bin/immutant-server";

/// The base dir and Immutant home, and where each came from.
#[derive(Debug, Clone)]
pub struct Locations {
    pub base: PathBuf,
    /// The environment variable that gave the base dir, if one did.
    pub base_from: Option<&'static str>,
    pub home: PathBuf,
    /// The environment variable that gave the home, if one did.
    pub home_from: Option<&'static str>,
}

impl Locations {
    /// Says where the base dir came from, on stderr, when an environment variable gave it.
    pub fn announce_base(&self) {
        if let Some(variable) = self.base_from {
            eprintln!(
                "Using Immutant base dir from {variable}: {}",
                self.base.display()
            );
        }
    }

    /// `IMMUTANT_BASE_DIR` if set, else the data dir that `directories` gives for Immutant; the
    /// home is `IMMUTANT_HOME` if set, else `<base>/current`. Creates the base dir if missing.
    pub fn from_env() -> Result<Self> {
        let (base, base_from) = match non_empty_var("IMMUTANT_BASE_DIR") {
            Some(dir) => (dir, Some("$IMMUTANT_BASE_DIR")),
            None => {
                let dirs = directories::ProjectDirs::from("org", "immutant", "immutant").context(
                    "cannot tell where your home directory is; set IMMUTANT_BASE_DIR to where Immutant should keep its installs",
                )?;
                (dirs.data_dir().to_path_buf(), None)
            }
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        std::fs::create_dir_all(&base)
            .with_context(|| format!("cannot create the Immutant base dir {}", base.display()))?;
        let (home, home_from) = match non_empty_var("IMMUTANT_HOME") {
            Some(home) => (
                std::path::absolute(&home).unwrap_or(home),
                Some("$IMMUTANT_HOME"),
            ),
            None => (base.join("current"), None),
        };
        Ok(Locations {
            base,
            base_from,
            home,
            home_from,
        })
    }

    /// Where managed installs go, one folder per version.
    pub fn releases(&self) -> PathBuf {
        self.base.join("releases")
    }

    /// The link to the install in use.
    pub fn current(&self) -> PathBuf {
        self.base.join("current")
    }

    /// The server binary of the home.
    pub fn server(&self) -> PathBuf {
        self.home.join(SERVER_BINARY)
    }

    /// The home's deployments folder, which every node of that install watches.
    pub fn deployments(&self) -> PathBuf {
        self.home.join("deployments")
    }

    /// Whether `dir` is a managed install (inside the releases folder).
    pub fn is_managed(&self, dir: &Path) -> bool {
        dir.parent() == Some(self.releases().as_path())
    }
}

fn non_empty_var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}
