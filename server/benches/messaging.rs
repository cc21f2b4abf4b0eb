//! Durable queue throughput and latency on one node.
//!
//! `cargo bench -p immutant-server --bench messaging` builds the loadgen app
//! (tests/apps/loadgen), deploys it twice into a throwaway install of the release server: as
//! `consumer` (a listener with concurrency 4 on /queue/bench) and then as `producer` (8
//! concurrent publishers of 1 KB persistent messages, each waiting for its confirm). Every
//! message is on disk (group commit) before its publish returns. Three runs of 20,000 messages;
//! the medians are reported. Then the same on a cluster of two nodes: the publishers on one, a
//! listener on each, so that about half the messages are forwarded (stored on both nodes in
//! turn). `LOADGEN_MESSAGES` and `LOADGEN_PUBLISHERS` change the load.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{TempInstall, build_app, free_offset, median};

const RUNS: usize = 3;

fn main() {
    let loadgen = build_app("loadgen");
    let messages = std::env::var("LOADGEN_MESSAGES").unwrap_or_else(|_| "20000".into());
    let publishers = std::env::var("LOADGEN_PUBLISHERS").unwrap_or_else(|_| "8".into());
    let mut rates = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for run in 1..=RUNS {
        let line = run_once(&loadgen, &messages, &publishers);
        println!("run {run}: {line}");
        let numbers: Vec<f64> = line
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|word| word.parse().ok())
            .collect();
        // "consumed N messages in S s: R msg/s; ... p50 A ms, p99 B ms"
        rates.push(numbers[2]);
        p50s.push(numbers[4]);
        p99s.push(numbers[6]);
    }
    println!(
        "durable queue, 1 KB persistent, {publishers} publishers, listener concurrency 4: median {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms",
        median(&mut rates),
        median(&mut p50s),
        median(&mut p99s)
    );

    let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let (rate, p50, p99) = run_clustered(&loadgen, &messages, &publishers, run);
        println!("clustered run {run}: {rate:.0} msg/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
        rates.push(rate);
        p50s.push(p50);
        p99s.push(p99);
    }
    println!(
        "clustered, two nodes, publishers on one, a listener on each: median {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms (the slower node's)",
        median(&mut rates),
        median(&mut p50s),
        median(&mut p99s)
    );
}

/// Two clustered nodes: the producer's publishers on the first, the consumer on both (so the
/// first node forwards about half of what is published to the second). Returns the combined
/// throughput and the slower node's latency percentiles.
fn run_clustered(loadgen: &Path, messages: &str, publishers: &str, run: usize) -> (f64, f64, f64) {
    let install = TempInstall::new();
    let cluster = format!("bench-messaging-{}-{run}", std::process::id());
    let first_offset = free_offset(1000);
    let offsets = [first_offset, free_offset(first_offset + 100)];
    let nodes: Vec<_> = [("first", publishers), ("second", "0")]
        .iter()
        .zip(offsets)
        .map(|((name, publishers), offset)| {
            let mut args = install.clustered_args(name, offset, &cluster);
            args.extend([
                format!("-Dloadgen.messages={messages}"),
                format!("-Dloadgen.publishers={publishers}"),
                "-Dloadgen.report=idle".to_string(),
            ]);
            install.start(&args)
        })
        .collect();
    for node in &nodes {
        node.wait_for("(2 members");
    }
    install.deploy(loadgen, "consumer");
    for node in &nodes {
        node.wait_for("Deployed \"consumer\"");
    }
    // Let each node learn that the other consumes, so that bridges are in place.
    std::thread::sleep(Duration::from_secs(1));
    install.deploy(loadgen, "producer");
    // "consumed N messages in S s: R msg/s; ... p50 A ms, p99 B ms; window FIRST LAST"
    let reports: Vec<Vec<f64>> = nodes
        .iter()
        .map(|node| {
            let (_, line) = node.wait_for("consumed ");
            line[line.find("consumed ").unwrap_or(0)..]
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter_map(|word| word.parse().ok())
                .collect()
        })
        .collect();
    for node in nodes {
        node.stop();
    }
    let total: f64 = reports.iter().map(|numbers| numbers[0]).sum();
    let first = reports
        .iter()
        .map(|numbers| numbers[7])
        .fold(f64::MAX, f64::min);
    let last = reports.iter().map(|numbers| numbers[8]).fold(0.0, f64::max);
    let slowest = |index: usize| {
        reports
            .iter()
            .map(|numbers| numbers[index])
            .fold(0.0, f64::max)
    };
    (total / ((last - first) / 1e9), slowest(4), slowest(6))
}

/// One node, one consumer, one producer; returns the consumer's report.
fn run_once(loadgen: &Path, messages: &str, publishers: &str) -> String {
    let install = TempInstall::new();
    let node = install.start(&[
        format!("-Djboss.socket.binding.port-offset={}", free_offset(1000)),
        format!("-Dloadgen.messages={messages}"),
        format!("-Dloadgen.publishers={publishers}"),
    ]);
    node.wait_for("started in");
    install.deploy(loadgen, "consumer");
    node.wait_for("Deployed \"consumer\"");
    install.deploy(loadgen, "producer");
    let (_, report) = node.wait_for("consumed ");
    node.stop();
    report[report.find("consumed ").unwrap_or(0)..].to_string()
}
