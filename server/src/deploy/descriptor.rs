//! A deployment descriptor as the node takes it: `deployments/<name>.toml`, written by `cargo
//! immutant deploy` in the format both agree on ([`immutant_contracts::Descriptor`], which the
//! node uses as it is), and the node's checks of it. It names an immutable artifact (the app's
//! binary) in the folder's `.artifacts/`, so a changed descriptor is a new deployment.
//!
//! Whoever can write the deployments folder can run code as the node's user, so the node runs
//! nothing but a file of `.artifacts/` itself: a descriptor whose artifact is elsewhere (an
//! absolute path, a climb out with `..`, a symlink that leads out), whose name is not a plain
//! name, or that has fields the node does not know, is refused with the reason, and never run.

use std::path::{Component, Path, PathBuf};

use immutant_contracts::descriptor::{ARTIFACTS, Descriptor};

/// Reads the descriptor `<name>.toml` and checks it; errors say what is wrong in terms of the
/// file.
pub fn parse_descriptor(name: &str, text: &str) -> Result<Descriptor, String> {
    let descriptor: Descriptor =
        toml::from_str(text).map_err(|error| format!("the descriptor is not valid: {error}"))?;
    if descriptor.name != name {
        return Err(format!(
            "the descriptor {name}.toml names the app '{}'; the names must match",
            descriptor.name
        ));
    }
    if !immutant_protocol::names::is_deployment_name(name) {
        return Err(format!(
            "'{name}' cannot name a deployment: use only ASCII letters, digits, - and _"
        ));
    }
    if let Some(group) = &descriptor.group
        && !immutant_protocol::names::is_deployment_name(group)
    {
        return Err(format!(
            "'{group}' cannot name a server group: use only ASCII letters, digits, - and _ (deploy with `cargo immutant deploy --group G`)"
        ));
    }
    let mut parts = descriptor.artifact.components();
    let confined = matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(Component::Normal(folder)), Some(Component::Normal(file)), None)
            if folder == ARTIFACTS && !file.to_string_lossy().starts_with('.')
    );
    if !confined {
        return Err(format!(
            "its artifact {} is not a file of the deployments folder's {ARTIFACTS}/; the node runs nothing else (deploy with `cargo immutant deploy`)",
            descriptor.artifact.display()
        ));
    }
    Ok(descriptor)
}

/// The path of the artifact of `descriptor` (one [`parse_descriptor`] took), once it is certain
/// to be a file of `deployments/.artifacts/` itself (a symlink there that leads elsewhere is
/// refused).
pub fn artifact_path(descriptor: &Descriptor, deployments: &Path) -> Result<PathBuf, String> {
    let path = deployments.join(&descriptor.artifact);
    let missing = || {
        format!(
            "its artifact {} is missing; deploy it again with `cargo immutant deploy`",
            path.display()
        )
    };
    let real = path.canonicalize().map_err(|_| missing())?;
    let folder = deployments
        .join(ARTIFACTS)
        .canonicalize()
        .map_err(|_| missing())?;
    if real.parent() != Some(folder.as_path()) {
        return Err(format!(
            "its artifact {} leads to {}, outside {ARTIFACTS}/; the node runs nothing else",
            path.display(),
            real.display()
        ));
    }
    if !real.is_file() {
        return Err(missing());
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(name: &str, artifact: &str) -> String {
        format!("name = \"{name}\"\nartifact = \"{artifact}\"\n")
    }

    #[test]
    fn only_an_artifact_of_the_artifacts_folder_is_accepted() {
        assert!(parse_descriptor("app", &descriptor("app", ".artifacts/app-1f")).is_ok());
        for artifact in [
            "/usr/bin/env",
            "../../bin/sh",
            ".artifacts/../../x",
            ".artifacts/sub/x",
            "app-1f",
            ".artifacts/.hidden",
        ] {
            let error = parse_descriptor("app", &descriptor("app", artifact)).unwrap_err();
            assert!(error.contains("nothing else"), "{artifact}: {error}");
        }
        let unknown = format!("{}command = \"rm\"\n", descriptor("app", ".artifacts/a"));
        assert!(parse_descriptor("app", &unknown).is_err());
        assert!(parse_descriptor("../x", &descriptor("../x", ".artifacts/a")).is_err());
    }

    #[test]
    fn a_descriptor_is_written_back_in_the_contracts_format() {
        let text = "name = \"app\"\nartifact = \".artifacts/app-1f\"\ndeployed-at = 7\n\
                    virtual-host = []\n\n[settings]\n";
        let descriptor = parse_descriptor("app", text).unwrap();
        assert_eq!(descriptor.deployed_at, Some(7));
        assert_eq!(toml::to_string(&descriptor).unwrap(), text);
    }

    #[test]
    fn a_symlink_out_of_the_artifacts_folder_is_refused() {
        let deployments = tempfile::tempdir().unwrap();
        let folder = deployments.path().join(ARTIFACTS);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("app-1f"), "binary").unwrap();
        std::os::unix::fs::symlink("/bin/sh", folder.join("app-2f")).unwrap();
        let parse = |artifact| parse_descriptor("app", &descriptor("app", artifact)).unwrap();
        assert!(artifact_path(&parse(".artifacts/app-1f"), deployments.path()).is_ok());
        let error = artifact_path(&parse(".artifacts/app-2f"), deployments.path()).unwrap_err();
        assert!(error.contains("outside"), "{error}");
    }
}
