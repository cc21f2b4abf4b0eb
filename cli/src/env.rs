//! `env`: where things are, for people and for scripts.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::locations::Locations;

/// One thing `env` tells: its key, its path, and the variable that gave it, if one did.
struct Entry {
    key: &'static str,
    path: PathBuf,
    from: Option<&'static str>,
}

fn entries(locations: &Locations) -> [Entry; 4] {
    [
        Entry {
            key: "base-dir",
            path: locations.base.clone(),
            from: locations.base_from,
        },
        Entry {
            key: "immutant-home",
            path: locations.home.clone(),
            from: locations.home_from,
        },
        Entry {
            key: "server",
            path: locations.server(),
            from: None,
        },
        Entry {
            key: "deployments",
            path: locations.deployments(),
            from: None,
        },
    ]
}

/// Prints every key with its path; or, given a key, only that path and no newline, for scripts.
pub fn print(locations: &Locations, key: Option<&str>) -> Result<()> {
    let entries = entries(locations);
    let Some(key) = key else {
        for entry in entries {
            let missing = if entry.path.exists() {
                ""
            } else {
                " (NOT FOUND)"
            };
            let from = entry
                .from
                .map(|variable| format!(" (from: {variable})"))
                .unwrap_or_default();
            println!("{:>14}: {}{missing}{from}", entry.key, entry.path.display());
        }
        return Ok(());
    };
    match entries.iter().find(|entry| entry.key == key) {
        Some(entry) => print!("{}", entry.path.display()),
        None => {
            let keys: Vec<&str> = entries.iter().map(|entry| entry.key).collect();
            bail!(
                "{key} is an unknown env key. Valid keys are: {}",
                keys.join(", ")
            )
        }
    }
    Ok(())
}
