//! `console`: the address of each running node's web console, with the node's management token
//! in the fragment (which the browser keeps to itself: it never reaches a server or a log), so
//! that the console's buttons work.

use anyhow::Result;

use crate::list::running_nodes_named;
use crate::locations::Locations;

/// Prints the console's address of every running node of the install, or of `node`.
pub fn print(locations: &Locations, node: Option<&str>) -> Result<()> {
    let nodes = running_nodes_named(locations, node)?;
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
