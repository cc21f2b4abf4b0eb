//! `version`: the CLI's version and the installed server's.

use crate::install::release;
use crate::locations::Locations;

/// Prints both versions; a missing or broken server is said, not an error.
pub fn print(locations: &Locations) {
    println!("cargo-immutant {}", env!("CARGO_PKG_VERSION"));
    match release::server_version(&locations.server()) {
        Ok(version) => println!("Immutant {version} at {}", locations.home.display()),
        Err(_) => println!(
            "Unable to determine the Immutant version at {}",
            locations.home.display()
        ),
    }
}
