//! `list`: what is deployed to the Immutant home, and (`--installs`) which versions are installed.

use std::path::PathBuf;

use anyhow::Result;

use crate::install::release;
use crate::locations::Locations;

/// Prints the installed versions, `*` marking the one in use.
pub fn print_installs(locations: &Locations) -> Result<()> {
    let via = match locations.home_from {
        Some(variable) => variable.to_string(),
        None => locations.current().display().to_string(),
    };
    println!(
        "The following versions of Immutant are installed to {}\n(* is currently active via {via}):",
        locations.base.display()
    );
    let active = std::fs::canonicalize(&locations.home).ok();
    for dir in installs(locations) {
        let mark = if std::fs::canonicalize(&dir).ok() == active {
            "*"
        } else {
            " "
        };
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let from =
            release::record(&dir).map_or_else(|| "unknown".to_string(), |record| record.from);
        println!(" {mark} {name:<50} (from: {from})");
    }
    Ok(())
}

/// The managed installs, by version.
fn installs(locations: &Locations) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(locations.releases())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| release::is_installed(dir))
        .collect();
    dirs.sort();
    dirs
}

/// Prints what is in the home's deployments folder.
pub fn print_deployments(locations: &Locations) -> Result<()> {
    println!(
        "The following applications are deployed to {}:",
        locations.home.display()
    );
    let mut names: Vec<String> = std::fs::read_dir(locations.deployments())
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        println!("  {name}");
    }
    Ok(())
}
