//! The deployment descriptor: the TOML file `<deployments>/<name>.toml` that says a deployment is
//! there, which artifact it runs and with which settings. `cargo immutant deploy` writes it;
//! every node of the install reads it.
//!
//! The deployments folder, which every node of an install watches, holds:
//!
//! ```text
//! deployments/
//!   <name>.toml                      one descriptor per deployment (a Descriptor)
//!   .artifacts/<name>-<hash>         the app binaries, immutable, named for their content
//!   .lock                            taken by whoever changes the folder (the CLI, a node)
//! ```
//!
//! Only `*.toml` files whose names do not start with a dot are descriptors
//! ([`deployment_of`]); everything else (dot-files, temporary files, `.artifacts/`) belongs to
//! the CLI. A descriptor is always replaced whole (written beside its final name, then
//! renamed), so a reader never sees half of one, and the artifact it names is in place before
//! it is. An artifact stays as long as a descriptor names it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file extension of a descriptor.
pub const EXTENSION: &str = "toml";

/// The deployments folder's subfolder of artifacts.
pub const ARTIFACTS: &str = ".artifacts";

/// The largest file read as a descriptor (they are a few hundred bytes).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// A deployment. Every write of a descriptor is a (re)deploy: `deployed-at` changes each time,
/// even when nothing else does. The CLI writes every field; a reader takes a missing optional
/// one as its default, and refuses a key it does not know.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// When it was deployed, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<u64>,
    /// The web context the app's handlers are mounted under: `[package.metadata.immutant]`'s
    /// `context-path`, or `--context-path`; `/<name>` when missing. Starts with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_path: Option<String>,
    /// The virtual hosts the app's web handlers answer for; empty for any host.
    #[serde(default)]
    pub virtual_host: Vec<String>,
    /// The server group whose nodes run it (a node names its groups with
    /// `-Dimmutant.node.groups`); every node when missing. Its queues and caches reach every
    /// node all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Whether it stays on the nodes of this install (`cargo immutant deploy --local`): kept
    /// off the cluster's record of deployments, which every member follows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// Whether a redeploy replaces it one member at a time (`cargo immutant deploy
    /// --rolling`), each waiting until the earlier ones run the new build; else every member
    /// replaces it at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolling: bool,
    /// The app's `[package.metadata.immutant]` table, verbatim: Immutant's own keys
    /// (`context-path`, `virtual-host`) as the project gave them, and any of the app's own, for
    /// the app to read at run time.
    #[serde(default)]
    pub settings: toml::Table,
}

/// The path of the descriptor of deployment `name` in the folder `deployments`.
pub fn path(deployments: &Path, name: &str) -> PathBuf {
    deployments.join(format!("{name}.{EXTENSION}"))
}

/// The deployment that the file `file_name` of the deployments folder describes, if it is a
/// descriptor: `<name>.toml`, not hidden.
pub fn deployment_of(file_name: &str) -> Option<&str> {
    let name = file_name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    (!name.is_empty() && !name.starts_with('.')).then_some(name)
}

/// What [`unused_artifacts`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum UnusedArtifacts {
    /// These files of `.artifacts/` are named by no descriptor.
    These(Vec<PathBuf>),
    /// The descriptor at this path cannot be read: what it names is unknown, so nothing may go.
    Unknown(PathBuf),
}

/// The artifacts in `deployments/.artifacts/` that no descriptor names (leftovers of
/// interrupted writes among them): what may be removed, holding the folder's lock.
pub fn unused_artifacts(deployments: &Path) -> std::io::Result<UnusedArtifacts> {
    let mut named = Vec::new();
    let entries = match std::fs::read_dir(deployments) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(UnusedArtifacts::These(Vec::new()));
        }
        entries => entries?,
    };
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        if name.as_deref().and_then(deployment_of).is_none() || !path.is_file() {
            continue;
        }
        let read = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| toml::from_str::<Descriptor>(&text).ok());
        match read {
            Some(descriptor) => named.push(deployments.join(descriptor.artifact)),
            None => return Ok(UnusedArtifacts::Unknown(path)),
        }
    }
    let artifacts = deployments.join(ARTIFACTS);
    let mut unused = Vec::new();
    for entry in std::fs::read_dir(&artifacts).into_iter().flatten() {
        let path = entry?.path();
        if path.is_file() && !named.contains(&path) {
            unused.push(path);
        }
    }
    Ok(UnusedArtifacts::These(unused))
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
            root: Some("/apps/hello".into()),
            deployed_at: Some(1_764_250_280_601),
            context_path: Some("/hello".into()),
            virtual_host: vec!["example.com".into()],
            group: None,
            local: false,
            rolling: false,
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
    fn only_the_name_and_the_artifact_are_required() {
        let text = "name = \"a\"\nartifact = \".artifacts/a-1f\"\n";
        let descriptor: Descriptor = toml::from_str(text).unwrap();
        assert_eq!(descriptor.root, None);
        assert_eq!(descriptor.deployed_at, None);
        assert_eq!(descriptor.context_path, None);
        assert_eq!(
            toml::to_string(&descriptor).unwrap(),
            format!("{text}virtual-host = []\n\n[settings]\n")
        );
        let error = toml::from_str::<Descriptor>("name = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing field `artifact`"), "{error}");
    }

    #[test]
    fn unused_artifacts_are_those_no_descriptor_names_unless_one_cannot_be_read() {
        let folder = tempfile::tempdir().unwrap();
        let deployments = folder.path();
        std::fs::create_dir(deployments.join(ARTIFACTS)).unwrap();
        for file in ["a-1", "a-2", ".a-3.tmp"] {
            std::fs::write(deployments.join(ARTIFACTS).join(file), "binary").unwrap();
        }
        std::fs::write(
            path(deployments, "a"),
            "name = \"a\"\nartifact = \".artifacts/a-2\"\n",
        )
        .unwrap();
        let UnusedArtifacts::These(mut unused) = unused_artifacts(deployments).unwrap() else {
            panic!("all descriptors read")
        };
        unused.sort();
        let artifacts = deployments.join(ARTIFACTS);
        assert_eq!(unused, [artifacts.join(".a-3.tmp"), artifacts.join("a-1")]);
        std::fs::write(path(deployments, "b"), "not a descriptor").unwrap();
        assert_eq!(
            unused_artifacts(deployments).unwrap(),
            UnusedArtifacts::Unknown(path(deployments, "b"))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "name = \"a\"\nartifact = \"x\"\nroot = \"/\"\ndeployed-at = 1\n\
                    context-path = \"/a\"\ncontext = \"/b\"\n";
        let error = toml::from_str::<Descriptor>(text).unwrap_err().to_string();
        assert!(error.contains("unknown field `context`"), "{error}");
    }

    #[test]
    fn descriptors_are_the_toml_files_that_are_not_hidden() {
        assert_eq!(deployment_of("my-app.toml"), Some("my-app"));
        assert_eq!(deployment_of("a.b.toml"), Some("a.b"));
        for other in [
            ".my-app.toml",
            ".toml",
            "toml",
            "my-app.toml~",
            "my-app.tom",
        ] {
            assert_eq!(deployment_of(other), None, "{other}");
        }
        assert_eq!(
            path(Path::new("/d"), "app"),
            Path::new("/d/app.toml").to_path_buf()
        );
    }
}
