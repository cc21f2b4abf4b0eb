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

use support::{TempInstall, build_app, free_offset, median, run_clustered};

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
        let (rate, p50, p99) = run_clustered(&loadgen, &messages, &publishers, run, &[]);
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
