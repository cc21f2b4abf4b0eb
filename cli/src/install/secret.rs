//! The cluster secret an install gives its nodes: a random one, written at install into
//! `config/standalone-ha.toml` as the default of `immutant.cluster.secret`, so that the nodes
//! of one install form a cluster with no configuration and nothing else can join it. A
//! reinstall keeps the secret the install had.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use ring::rand::{SecureRandom, SystemRandom};

/// The line of the shipped config that the secret goes into.
const PLACEHOLDER: &str = "secret = \"${immutant.cluster.secret:}\"";
/// How the line begins once it holds a secret.
const FILLED: &str = "secret = \"${immutant.cluster.secret:";

/// Writes a secret into the clustered config in `config` (the one the install at `previous`
/// had, if any; else a new random one), and makes the file private to this user.
pub fn write(config: &Path, previous: Option<&Path>) -> Result<()> {
    let path = config.join("standalone-ha.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    if !text.contains(PLACEHOLDER) {
        return Ok(());
    }
    let secret = match previous.and_then(read) {
        Some(secret) => secret,
        None => random()?,
    };
    // Private before the secret is in it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    let filled = text.replace(PLACEHOLDER, &format!("{FILLED}{secret}}}\""));
    std::fs::write(&path, filled).with_context(|| format!("cannot write {}", path.display()))
}

/// The secret the clustered config at `config` holds, if any.
fn read(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config.join("standalone-ha.toml")).ok()?;
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with(FILLED))?;
    let rest = &line.trim_start()[FILLED.len()..];
    let secret = rest.strip_suffix("}\"")?;
    (!secret.is_empty()).then(|| secret.to_string())
}

/// 32 random bytes, as hex.
fn random() -> Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system gave no random bytes for the cluster secret"))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../server/config/standalone-ha.toml");

    #[test]
    fn an_install_gets_a_random_secret_and_a_reinstall_keeps_it() {
        let (first, second, third) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        for dir in [&first, &second, &third] {
            std::fs::write(dir.path().join("standalone-ha.toml"), SHIPPED).unwrap();
        }
        write(first.path(), None).unwrap();
        write(second.path(), None).unwrap();
        let secret = read(first.path()).expect("a secret");
        assert_eq!(secret.len(), 64);
        assert_ne!(Some(&secret), read(second.path()).as_ref());
        write(third.path(), Some(first.path())).unwrap();
        assert_eq!(read(third.path()), Some(secret));
        let mode = std::fs::metadata(first.path().join("standalone-ha.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
