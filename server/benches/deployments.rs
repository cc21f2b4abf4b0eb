//! Cluster-wide deployments, medians of five trials: three clustered nodes, each of an install
//! of its own (sharing only the cluster's secret), and a 10 MiB artifact deployed through the
//! first install's folder (as `cargo immutant deploy` leaves it): the time from the descriptor
//! being in place to the app running on the last of the three members (each other member
//! fetches the artifact over a sealed link, verifies it and runs it); then a rolling redeploy
//! of it (`rolling = true`): the time to the last member running the new build, each member
//! replacing it once the earlier ones run it.
//!
//! `cargo bench -p immutant-server --bench deployments` builds the probe app (tests/apps/probe),
//! pads it to 10 MiB (an ELF binary runs with bytes after its end), and runs throwaway installs
//! of the release server, whose nodes bind 127.0.0.1 and find each other by multicast on the
//! loopback interface.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{TempInstall, build_app, free_offset, median};

const TRIALS: usize = 5;
/// The artifact's size.
const ARTIFACT_BYTES: u64 = 10 << 20;

fn main() {
    let probe = build_app("probe");
    let padded = tempfile::tempdir().unwrap();
    let artifact = padded.path().join("probe");
    std::fs::copy(&probe, &artifact).unwrap();
    std::fs::File::options()
        .append(true)
        .open(&artifact)
        .unwrap()
        .set_len(ARTIFACT_BYTES)
        .unwrap();
    let (mut spread, mut rolled) = (Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        let (deployed, rolling) = deploy_to_three(&artifact, trial);
        spread.push(deployed.as_secs_f64() * 1000.0);
        rolled.push(rolling.as_secs_f64() * 1000.0);
    }
    say(
        "10 MiB artifact deployed through one install, running on the last of 3 members",
        &mut spread,
    );
    say(
        "rolling redeploy of 3 members, to the last running the new build",
        &mut rolled,
    );
}

/// Prints the median, minimum and maximum of `times` (ms).
fn say(what: &str, times: &mut [f64]) {
    println!(
        "{what}: median {:.0} ms (min {:.0}, max {:.0})",
        median(times),
        times.iter().cloned().fold(f64::MAX, f64::min),
        times.iter().cloned().fold(0.0, f64::max),
    );
}

/// One trial: how long from the deployment in the first install's folder to the app running
/// on all three members; and from a rolling redeploy of it to the new build running on all
/// three.
fn deploy_to_three(artifact: &Path, trial: usize) -> (Duration, Duration) {
    let cluster = format!("bench-deploy-{}-{trial}", std::process::id());
    let installs = [TempInstall::new(), TempInstall::new(), TempInstall::new()];
    let mut offset = 1000;
    let nodes: Vec<_> = installs
        .iter()
        .enumerate()
        .map(|(i, install)| {
            offset = free_offset(offset + 100);
            install.start(&install.clustered_args(&format!("member{i}"), offset, &cluster))
        })
        .collect();
    for node in &nodes {
        node.wait_for("(3 members");
    }
    // The record's cache has its first primary (a second or two after the members meet), as
    // in a cluster that has run a while.
    let has_primary = |node: &support::Node| {
        node.lines()
            .iter()
            .any(|line| line.contains("applies the writes to cache immutant.deployments"))
    };
    while !nodes.iter().any(has_primary) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let deployed = Instant::now();
    installs[0].deploy(artifact, "daemon");
    let last = nodes
        .iter()
        .map(|node| node.wait_for("Deployed \"daemon\"").0)
        .max()
        .unwrap();
    let marks: Vec<usize> = nodes.iter().map(|node| node.mark()).collect();
    let rolling = Instant::now();
    installs[0].redeploy_rolling("daemon");
    let rolled = nodes
        .iter()
        .zip(marks)
        .map(|(node, mark)| node.wait_for_after(mark, "Deployed \"daemon\"").0)
        .max()
        .unwrap();
    for node in nodes {
        node.stop();
    }
    (last - deployed, rolled - rolling)
}
