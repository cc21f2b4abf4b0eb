//! `console`: the address of each running node's web console, with the node's management token
//! in the fragment (which the browser keeps to itself: it never reaches a server or a log), so
//! that the console's buttons work.

use anyhow::{Result, bail};

use crate::list::running_nodes;
use crate::locations::Locations;

/// Prints the console's address of every running node of the install, or of `node`.
pub fn print(locations: &Locations, node: Option<&str>) -> Result<()> {
    let nodes: Vec<_> = running_nodes(locations)
        .into_iter()
        .filter(|record| node.is_none_or(|name| record.name == name))
        .collect();
    if nodes.is_empty() {
        match node {
            Some(name) => bail!(
                "no node called {name} of the install in {} is running; `cargo immutant status` shows those that are",
                locations.home.display()
            ),
            None => bail!(
                "no node of the install in {} is running; start one with `cargo immutant run`",
                locations.home.display()
            ),
        }
    }
    for record in nodes {
        let address = format!("{}/console", record.management);
        match record.token() {
            Ok(token) => println!("{}: {address}#token={token}", record.name),
            Err(error) => println!(
                "{}: {address} (its token in {} cannot be read: {error}; the console shows, but cannot change anything)",
                record.name,
                record.token_file().display()
            ),
        }
    }
    Ok(())
}
