//! `undeploy`: removes the deployments whose names match a glob (`*` for any run of characters,
//! `?` for one), by default the current project's, and then the artifacts no deployment needs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::deploy;
use crate::descriptor;
use crate::locations::Locations;

/// Undeploys the deployments matching `glob`, or if none is given, the one named like the
/// package in `./Cargo.toml`. Returns the descriptors removed; none is an error.
pub fn undeploy(locations: &Locations, glob: Option<&str>) -> Result<Vec<PathBuf>> {
    let glob = match glob {
        Some(glob) => glob.to_string(),
        None => package_name(Path::new("Cargo.toml"))?,
    };
    let deployments = locations.deployments();
    let not_deployed = || {
        format!(
            "No action taken: {glob} is not deployed to {}",
            deployments.display()
        )
    };
    if !deployments.is_dir() {
        bail!(not_deployed());
    }
    let _lock = deploy::lock(&deployments)?;
    let pattern: Vec<char> = glob.chars().collect();
    let matching: Vec<PathBuf> = descriptor::paths(&deployments)?
        .into_iter()
        .filter(|path| {
            let name: Vec<char> = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .chars()
                .collect();
            matches(&pattern, &name)
        })
        .collect();
    if matching.is_empty() {
        bail!(not_deployed());
    }
    for path in &matching {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        println!("Undeployed {}", path.display());
    }
    deploy::prune_artifacts(&deployments)?;
    Ok(matching)
}

/// The package name in the manifest `manifest`.
fn package_name(manifest: &Path) -> Result<String> {
    let ask = "give the name (or a glob, such as 'h*') of the deployment to undeploy, or run \
               undeploy in an app's folder";
    let text = match std::fs::read_to_string(manifest) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("there is no Cargo.toml here; {ask}")
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", manifest.display()));
        }
    };
    let manifest_toml: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
    manifest_toml
        .get("package")
        .and_then(|package| package.get("name"))
        .and_then(toml::Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("{} names no package; {ask}", manifest.display()))
}

/// Whether `name` matches `glob`, where `*` stands for any run of characters and `?` for one.
fn matches(glob: &[char], name: &[char]) -> bool {
    // The classic two-pointer walk: on a mismatch, let the last `*` swallow one more character.
    let (mut g, mut n) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while n < name.len() {
        match glob.get(g) {
            Some('*') => {
                last_star = Some((g, n));
                g += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                g += 1;
                n += 1;
            }
            _ => match last_star {
                Some((star, swallowed)) => {
                    last_star = Some((star, swallowed + 1));
                    g = star + 1;
                    n = swallowed + 1;
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob_matches(glob: &str, name: &str) -> bool {
        let glob: Vec<char> = glob.chars().collect();
        let name: Vec<char> = name.chars().collect();
        matches(&glob, &name)
    }

    #[test]
    fn globs_match_whole_names() {
        for (glob, name) in [
            ("ham", "ham"),
            ("h*", "ham"),
            ("*", "ham"),
            ("*m", "ham"),
            ("h?m", "ham"),
            ("h*m*", "hammam"),
            ("*a*a*", "banana"),
        ] {
            assert!(glob_matches(glob, name), "{glob} should match {name}");
        }
        for (glob, name) in [
            ("ham", "hamster"),
            ("h?", "ham"),
            ("x*", "ham"),
            ("*x", "ham"),
            ("", "ham"),
        ] {
            assert!(!glob_matches(glob, name), "{glob} should not match {name}");
        }
    }

    #[test]
    fn the_package_name_comes_from_the_manifest() {
        let folder = tempfile::tempdir().unwrap();
        let manifest = folder.path().join("Cargo.toml");
        std::fs::write(&manifest, "[package]\nname = \"hello\"\n").unwrap();
        assert_eq!(package_name(&manifest).unwrap(), "hello");
        let error = package_name(&folder.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("give the name"), "{error}");
    }
}
