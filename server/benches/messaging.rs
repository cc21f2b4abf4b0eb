//! Durable queue throughput and latency on one node and on two, against RabbitMQ.
//!
//! `cargo bench -p immutant-server --bench messaging` builds the loadgen app
//! (tests/apps/loadgen), deploys it twice into a throwaway install of the release server: as
//! `consumer` (a listener with concurrency 4 on /queue/bench) and then as `producer` (8, then
//! 64, concurrent publishers of 1 KB persistent messages, each waiting for its confirm). Every
//! message is on disk (group commit) before its publish returns. Three runs of 20,000 messages
//! each; the medians are reported. Then the same on a cluster of two nodes: the publishers on
//! one, a listener on each, so that about half the messages are forwarded (stored on both nodes
//! in turn). Then RabbitMQ (Debian's package, started by the benchmark on 127.0.0.1; skipped
//! where it is missing) under the same load from tests/apps/rabbitload through lapin: 8
//! publishers each awaiting its confirm, and its best of 4 or 8 publishers with 256 confirms
//! outstanding each (prefetch 256, manual acks); and the ratios. `LOADGEN_MESSAGES` and
//! `LOADGEN_PUBLISHERS` (one number) change the load.

mod support;

use std::path::Path;

use support::rabbitmq::RabbitMq;
use support::{
    Figures, TempInstall, build_app, free_offset, load_report, medians, run_clustered, shown,
};

const RUNS: usize = 3;
/// The two shapes of the targets: publishers each awaiting its own confirm, and many.
const PUBLISHERS: [usize; 2] = [8, 64];
/// RabbitMQ's best shape: publishers with this many confirms outstanding each.
const RABBIT_WINDOW: usize = 256;

fn main() {
    let loadgen = build_app("loadgen");
    let messages = std::env::var("LOADGEN_MESSAGES").unwrap_or_else(|_| "20000".into());
    let shapes: Vec<usize> = match std::env::var("LOADGEN_PUBLISHERS") {
        Ok(publishers) => vec![publishers.parse().expect("LOADGEN_PUBLISHERS is a number")],
        Err(_) => PUBLISHERS.to_vec(),
    };
    let mut ours = Vec::new();
    for &publishers in &shapes {
        let one = medians(RUNS, |run| {
            let line = run_once(&loadgen, &messages, &publishers.to_string());
            println!("{publishers} publishers, run {run}: {line}");
            load_report(&line)
        });
        println!(
            "durable queue, 1 KB persistent, {publishers} publishers, listener concurrency 4: {}",
            shown(one)
        );
        let two = medians(RUNS, |run| {
            let figures = run_clustered(&loadgen, &messages, &publishers.to_string(), run, &[]);
            println!(
                "{publishers} publishers, clustered run {run}: {}",
                shown(figures)
            );
            figures
        });
        println!(
            "clustered, two nodes, {publishers} publishers on one, a listener on each: {} (the slower node's latency), {:.0}% of one node",
            shown(two),
            100.0 * two.0 / one.0
        );
        ours.push((publishers, one));
    }
    against_rabbitmq(&messages, &ours);
}

/// RabbitMQ under the same load, and our one-node figures (`ours`, by publishers) against it.
fn against_rabbitmq(messages: &str, ours: &[(usize, Figures)]) {
    let Some(broker) = RabbitMq::start() else {
        return;
    };
    let rabbitload = build_app("rabbitload");
    let run = |publishers: usize, window: usize| {
        let figures = medians(RUNS, |_| {
            broker.load(&rabbitload, messages, publishers, window)
        });
        println!(
            "RabbitMQ, {publishers} publishers, {window} unconfirmed each: {}",
            shown(figures)
        );
        figures
    };
    let awaiting = run(8, 1);
    let best = [run(4, RABBIT_WINDOW), run(8, RABBIT_WINDOW)]
        .into_iter()
        .fold((0.0, 0.0, 0.0), |best, figures| {
            if figures.0 > best.0 { figures } else { best }
        });
    for (publishers, figures) in ours {
        let (against, shape) = match publishers {
            8 => (awaiting, "its 8 publishers each awaiting its confirm"),
            _ => (best, "its best (4 or 8 publishers, 256 unconfirmed each)"),
        };
        println!(
            "ours at {publishers} publishers against RabbitMQ at {shape}: {:.2}x its msg/s; p99 {:.2} ms against {:.2} ms",
            figures.0 / against.0,
            figures.2,
            against.2
        );
    }
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
