//! The deployment descriptor: the TOML file `<deployments>/<name>.toml` that says a deployment is
//! there, which artifact it runs and with which settings; and the form it takes inside an archive.
//!
//! The deployments folder, which every node of an install watches, holds:
//!
//! ```text
//! deployments/
//!   <name>.toml                      one descriptor per deployment (a Descriptor)
//!   .artifacts/<name>-<hash>         the app binaries, immutable, named for their content
//!   .lock                            taken by the CLI while it changes the folder
//! ```
//!
//! Only `*.toml` files whose names do not start with a dot are descriptors; everything else
//! (dot-files, temporary files, `.artifacts/`) belongs to the CLI. A descriptor is always
//! replaced whole (written beside its final name, then renamed), so a reader never sees half of
//! one, and the artifact it names is in place before it is. An artifact stays as long as a
//! descriptor names it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The file extension of a descriptor.
pub const EXTENSION: &str = "toml";

/// The deployments folder's subfolder for artifacts.
pub const ARTIFACTS: &str = ".artifacts";

/// A deployment, as `cargo immutant deploy` writes it to `<deployments>/<name>.toml`. Every
/// write of a descriptor is a (re)deploy: `deployed-at` changes each time, even when nothing
/// else does.
///
/// ```toml
/// name = "example"
/// artifact = ".artifacts/example-3f2a9c0d1e4b5a6f"
/// root = "/home/me/example"
/// deployed-at = 1764250280601
/// context-path = "/example"
/// virtual-host = []
///
/// [settings]
/// context-path = "/example"
/// greeting = "hi"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Descriptor {
    /// The deployment's name; the same as the descriptor's file stem. ASCII letters, digits,
    /// `-` and `_` only.
    pub name: String,
    /// The app binary to run, relative to the deployments folder:
    /// `.artifacts/<name>-<first 16 hex digits of the binary's SHA-256>`. Executable, and never
    /// changed once written.
    pub artifact: PathBuf,
    /// Where the app came from, absolute: its project folder, or the `.ima` archive it was
    /// deployed from. Apps may read it; the node needs nothing from it to run the app.
    pub root: PathBuf,
    /// When it was deployed, in milliseconds since the Unix epoch.
    pub deployed_at: u64,
    /// The web context the app's handlers are mounted under: `[package.metadata.immutant]`'s
    /// `context-path`, or `--context-path`; default `/<name>`. Always starts with `/`.
    pub context_path: String,
    /// The virtual hosts the app's web handlers answer for; empty for any host.
    #[serde(default)]
    pub virtual_host: Vec<String>,
    /// The app's `[package.metadata.immutant]` table, verbatim: Immutant's own keys
    /// (`context-path`, `virtual-host`) as the project gave them, and any of the app's own, for
    /// the app to read at run time.
    #[serde(default)]
    pub settings: toml::Table,
}

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

/// The path of the descriptor of deployment `name`.
pub fn path(deployments: &Path, name: &str) -> PathBuf {
    deployments.join(format!("{name}.{EXTENSION}"))
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
        let is_hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if !is_hidden && path.extension().is_some_and(|ext| ext == EXTENSION) && path.is_file() {
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
    fn a_descriptor_is_kebab_case_toml_with_its_settings_last() {
        let mut settings = toml::Table::new();
        settings.insert("greeting".into(), "hi".into());
        let descriptor = Descriptor {
            name: "hello".into(),
            artifact: ".artifacts/hello-0123456789abcdef".into(),
            root: "/apps/hello".into(),
            deployed_at: 1_764_250_280_601,
            context_path: "/hello".into(),
            virtual_host: vec!["example.com".into()],
            settings,
        };
        let text = toml::to_string(&descriptor).unwrap();
        assert_eq!(
            text,
            "name = \"hello\"\n\
             artifact = \".artifacts/hello-0123456789abcdef\"\n\
             root = \"/apps/hello\"\n\
             deployed-at = 1764250280601\n\
             context-path = \"/hello\"\n\
             virtual-host = [\"example.com\"]\n\
             \n\
             [settings]\n\
             greeting = \"hi\"\n"
        );
        assert_eq!(toml::from_str::<Descriptor>(&text).unwrap(), descriptor);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "name = \"a\"\nartifact = \"x\"\nroot = \"/\"\ndeployed-at = 1\n\
                    context-path = \"/a\"\ncontext = \"/b\"\n";
        let error = toml::from_str::<Descriptor>(text).unwrap_err().to_string();
        assert!(error.contains("unknown field `context`"), "{error}");
    }

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
