//! A singleton daemon never runs past its lease. The probe's `printer`, a singleton daemon that
//! prints `printer epoch=<epoch> at=<unix µs>` every 100 ms and never checks its lease itself,
//! runs on one of two clustered nodes. Each trial pauses that node whole (server and app) with
//! SIGSTOP until the other has taken over under a newer epoch, resumes it, and checks that
//! nothing the printer printed after the resume carries the old epoch: by then the printer's
//! timer and its lease's deadline have both passed, and the SDK must not poll it again.

use immutant_e2e::singletons::{TAKEOVER_BOUND, Tick, now_us, server_and_app, signal, single_runs};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered, eventually, free_offset, probe,
};

/// How many times the printer's node is paused: without the deadline check, a resumed
/// printer took one more step in about half of them.
const TRIALS: usize = 5;

/// The view of both nodes.
const BOTH: &str = "Cluster view: [one, two]";

/// A clustered node running the printer.
struct Node {
    name: &'static str,
    offset: u16,
    process: Proc,
}

impl Node {
    /// What its printer printed, in order.
    fn ticks(&self) -> Vec<Tick> {
        self.process
            .lines()
            .iter()
            .filter_map(|line| {
                let (epoch, at) = line.split_once("printer epoch=")?.1.split_once(" at=")?;
                Some(Tick {
                    at_us: at.parse().ok()?,
                    epoch: epoch.parse().ok()?,
                    node: self.name.to_string(),
                })
            })
            .collect()
    }

    /// How many of its lines say `what`.
    fn count(&self, what: &str) -> usize {
        let lines = self.process.lines();
        lines.iter().filter(|line| line.contains(what)).count()
    }

    /// Whether its printer said that its start under `epoch` ended: it says so after every
    /// line it printed under that epoch.
    fn ended(&self, epoch: u64) -> bool {
        let said = format!("printer ended epoch={epoch}");
        self.process
            .lines()
            .iter()
            .any(|line| line.ends_with(&said))
    }
}

/// The node printing under the newest epoch, once it has printed a few lines under it, and
/// that epoch.
fn printing(nodes: &[Node]) -> (&Node, u64) {
    let mut found = None;
    eventually("a printer printing", TAKEOVER_BOUND, || {
        let ticks: Vec<Tick> = nodes.iter().flat_map(Node::ticks).collect();
        let newest = ticks.iter().map(|tick| tick.epoch).max();
        found = newest
            .filter(|epoch| ticks.iter().filter(|tick| tick.epoch == *epoch).count() >= 3)
            .and_then(|epoch| ticks.iter().find(|tick| tick.epoch == epoch))
            .map(|tick| (tick.node.clone(), tick.epoch));
        found.is_some()
    });
    let (name, epoch) = found.expect("found");
    let node = nodes
        .iter()
        .find(|node| node.name == name)
        .expect("one of ours");
    (node, epoch)
}

#[test]
fn a_singleton_daemon_resumed_past_its_lease_prints_nothing_under_its_old_epoch() {
    let base = Base::installed();
    base.deploy(&probe(), Some("printer"));
    let cluster = cluster_name();
    let nodes = ["one", "two"].map(|name| {
        let offset = free_offset();
        let process = clustered(&base, name, offset, &cluster);
        Node {
            name,
            offset,
            process,
        }
    });
    for node in &nodes {
        node.process.wait_for(BOTH, PATIENCE);
        node.process
            .wait_for("Deployed \"printer\"", BUILD_PATIENCE);
    }
    for trial in 1..=TRIALS {
        let (holder, old) = printing(&nodes);
        let other = nodes
            .iter()
            .find(|node| node.name != holder.name)
            .expect("two");
        let views = other.count(BOTH);
        let paused = server_and_app(holder.offset);
        signal(&paused, libc::SIGSTOP);
        eventually("a takeover under a newer epoch", TAKEOVER_BOUND, || {
            other.ticks().iter().any(|tick| tick.epoch > old)
        });
        // Taken before the resume: whatever is printed after it is later than this.
        let resumed_us = now_us();
        signal(&paused, libc::SIGCONT);
        eventually("the resumed printer ending", PATIENCE, || holder.ended(old));
        let late: Vec<Tick> = holder
            .ticks()
            .into_iter()
            .filter(|tick| tick.epoch == old && tick.at_us >= resumed_us)
            .collect();
        assert!(
            late.is_empty(),
            "trial {trial}: node {} printed under its old epoch {old} after its resume: {late:?}",
            holder.name
        );
        println!(
            "trial {trial}: {} (epoch {old}) -> {}",
            holder.name, other.name
        );
        // The resumed node back in the view, to take over at the next trial.
        eventually("the resumed node rejoining", PATIENCE, || {
            other.count(BOTH) > views
        });
    }
    let ticks: Vec<Tick> = nodes.iter().flat_map(Node::ticks).collect();
    println!("runs: {:?}", single_runs(&ticks));
}
