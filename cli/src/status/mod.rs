//! `status`: the cluster at a glance. Every running node of the install is asked for its
//! `/status` (with its management token), and so is every other member of the views they see
//! whose management API answers from here (`gather`); the answers are shown as tables
//! (`render`), or as JSON.
//!
//! The tables are drawn one section at a time, each by a function of its own: the nodes and
//! those not answering (`nodes`), apps, singletons and jobs (`apps`), queues (`queues`),
//! caches (`caches`), web contexts and balancers (`web`); `table` lays out their rows.

mod apps;
mod caches;
mod gather;
mod nodes;
mod queues;
mod render;
mod table;
#[cfg(test)]
mod tests;
mod web;

use std::time::Duration;

use anyhow::Result;
use immutant_contracts::status::NodeStatus;
use serde::Serialize;

pub use self::gather::gather;
pub use self::render::render;
use crate::locations::Locations;

/// How `status` shows what it found.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusOptions {
    /// JSON for scripts instead of tables.
    pub json: bool,
    /// Redraw every second until interrupted.
    pub watch: bool,
}

/// What `status` found: every node that answered, those that did not, and what the balancers
/// the nodes speak to know.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub nodes: Vec<serde_json::Value>,
    pub unreachable: Vec<Unreachable>,
    pub balancers: Vec<BalancerView>,
}

/// A balancer's view of the nodes, or why it could not be had.
#[derive(Debug, Serialize)]
pub struct BalancerView {
    /// Its MCMP address.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A node that was asked and did not answer.
#[derive(Debug, Serialize)]
pub struct Unreachable {
    pub name: String,
    pub management: String,
    pub error: String,
}

/// Shows the status once, or (`watch`) every second until interrupted.
pub fn status(locations: &Locations, options: StatusOptions) -> Result<()> {
    loop {
        let found = gather(locations)?;
        let text = match options.json {
            true => serde_json::to_string(&found)?,
            false => render(&found),
        };
        if !options.watch {
            println!("{text}");
            return Ok(());
        }
        match options.json {
            // One document a line: a stream a script can read as it comes.
            true => println!("{text}"),
            // Home, clear, then the tables: the terminal shows the latest alone.
            false => println!("\x1b[H\x1b[2J{text}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A node's `/status` as the contract reads it; what it cannot read is left out.
fn typed(status: &serde_json::Value) -> NodeStatus {
    serde_json::from_value(status.clone()).unwrap_or_default()
}
