//! The embedded engine against NATS JetStream, same machine, same run: durable queue
//! throughput and latency on two clustered nodes (the loadgen app, as the messaging benchmark's
//! clustered figure), and singleton failover after kill -9 of the holder (the probe's `runner`,
//! from the kill to the survivor's "run on this node now"), five trials each. The NATS engine
//! runs on three nats-server 2.15.1 processes on 127.0.0.1 with replicas 3; the same load is
//! then put on those servers by a plain async-nats client (tests/apps/natsload), and the NATS
//! engine's figures are printed against its.
//!
//! `cargo bench -p immutant-server --bench engines`.

mod support;

use std::time::Instant;

use support::nats::NatsServers;
use support::{
    Figures, TempInstall, build_app, free_offset, median, medians, run_clustered, shown,
};

const RUNS: usize = 3;
const TRIALS: usize = 5;

fn main() {
    let loadgen = build_app("loadgen");
    let probe = build_app("probe");
    let messages = std::env::var("LOADGEN_MESSAGES").unwrap_or_else(|_| "20000".into());
    let publishers = std::env::var("LOADGEN_PUBLISHERS").unwrap_or_else(|_| "8".into());
    let nats = NatsServers::start();
    let mut engine_figures = Figures::default();
    for (engine, args) in [("embedded", Vec::new()), ("nats", nats.engine_args())] {
        let figures = medians(RUNS, |run| {
            let figures = run_clustered(&loadgen, &messages, &publishers, run, &args);
            println!("{engine} run {run}: {}", shown(figures));
            figures
        });
        let mut failovers: Vec<f64> = (1..=TRIALS)
            .map(|trial| {
                let millis = failover(&probe, trial, &args);
                println!("{engine} failover trial {trial}: {millis:.0} ms");
                millis
            })
            .collect();
        println!(
            "{engine}: two nodes, 1 KB persistent, {publishers} publishers on one, a listener on each: median {}; kill -9 singleton failover median {:.0} ms",
            shown(figures),
            median(&mut failovers)
        );
        engine_figures = figures;
    }
    against_plain_client(&nats, &messages, &publishers, engine_figures);
}

/// The same load on the same servers through a plain async-nats client, and the NATS engine's
/// figures (`engine`: msg/s, p50, p99) against its.
fn against_plain_client(nats: &NatsServers, messages: &str, publishers: &str, engine: Figures) {
    let natsload = build_app("natsload");
    let plain = medians(RUNS, |run| {
        let figures = nats.plain_load(&natsload, messages, publishers);
        println!("async-nats run {run}: {}", shown(figures));
        figures
    });
    println!(
        "async-nats alone: {publishers} publishers each awaiting its ack on one connection, two pulling connections, explicit acks: median {}",
        shown(plain)
    );
    println!(
        "the NATS engine against async-nats alone: {:.0}% of its msg/s; p50 {:.2}x its",
        100.0 * engine.0 / plain.0,
        engine.1 / plain.1
    );
}

/// Two clustered nodes running the probe's `runner` singleton: the time from kill -9 of the
/// one running it to the other saying it runs it, in ms.
fn failover(probe: &std::path::Path, trial: usize, engine: &[String]) -> f64 {
    let install = TempInstall::new();
    install.deploy(probe, "runner");
    let cluster = format!("bench-engines-{}-{trial}", std::process::id());
    let ticks = install.home().join("ticks");
    let first_offset = free_offset(1000);
    let offsets = [first_offset, free_offset(first_offset + 100)];
    let nodes: Vec<_> = ["one", "two"]
        .iter()
        .zip(offsets)
        .map(|(name, offset)| {
            let mut args = install.clustered_args(name, offset, &cluster);
            args.push(format!("-Dprobe.ticks={}", ticks.display()));
            args.extend_from_slice(engine);
            install.start(&args)
        })
        .collect();
    for node in &nodes {
        node.wait_for("(2 members");
    }
    let holder = loop {
        if let Some(holder) = nodes.iter().position(runs_singletons) {
            break holder;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let survivor = &nodes[1 - holder];
    let mark = survivor.mark();
    let killed = Instant::now();
    nodes[holder].signal(libc::SIGKILL);
    let (taken, _) = survivor.wait_for_after(mark, "The singletons of runner run on this node now");
    taken.duration_since(killed).as_secs_f64() * 1000.0
}

/// Whether `node` said it runs the runner's singletons (and has not said it stopped since).
fn runs_singletons(node: &support::Node) -> bool {
    node.lines()
        .iter()
        .rev()
        .find(|line| line.contains("The singletons of runner"))
        .is_some_and(|line| line.contains("run on this node now"))
}
