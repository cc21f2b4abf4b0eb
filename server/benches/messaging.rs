//! Durable queue throughput and latency on one node.
//!
//! `cargo bench -p immutant-server --bench messaging` builds the loadgen app
//! (tests/apps/loadgen), deploys it twice into a throwaway install of the release server: as
//! `consumer` (a listener with concurrency 4 on /queue/bench) and then as `producer` (8
//! concurrent publishers of 1 KB persistent messages, each waiting for its confirm). Every
//! message is on disk (group commit) before its publish returns. Three runs of 20,000 messages;
//! the medians are reported. `LOADGEN_MESSAGES` and `LOADGEN_PUBLISHERS` change the load.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{TempInstall, free_offset, median};

const RUNS: usize = 3;

fn main() {
    let loadgen = build_loadgen();
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
}

/// Builds the loadgen app in release mode, as `cargo immutant deploy` would, and returns it.
fn build_loadgen() -> std::path::PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = workspace.join("target").join("e2e-apps");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--manifest-path"])
        .arg(workspace.join("tests/apps/loadgen/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building loadgen failed");
    target.join("release").join("loadgen")
}

/// One node, one consumer, one producer; returns the consumer's report.
fn run_once(loadgen: &Path, messages: &str, publishers: &str) -> String {
    let install = TempInstall::new();
    let deployments = install.home().join("deployments");
    std::fs::create_dir_all(deployments.join(".artifacts")).unwrap();
    std::fs::copy(loadgen, deployments.join(".artifacts/loadgen")).unwrap();
    let mut node = Command::new(install.server())
        .arg(format!(
            "-Djboss.socket.binding.port-offset={}",
            free_offset()
        ))
        .arg(format!("-Dloadgen.messages={messages}"))
        .arg(format!("-Dloadgen.publishers={publishers}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("the node starts");
    let (lines, incoming) = mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        let line = incoming
            .recv_timeout(Duration::from_secs(300))
            .expect("the node keeps talking");
        if line.contains(needle) {
            return line;
        }
    };
    wait_for("started in");
    deploy(&deployments, "consumer");
    wait_for("Deployed \"consumer\"");
    deploy(&deployments, "producer");
    let report = wait_for("consumed ");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    node.wait().unwrap();
    report[report.find("consumed ").unwrap_or(0)..].to_string()
}

fn deploy(deployments: &Path, name: &str) {
    let descriptor = format!("name = \"{name}\"\nartifact = \".artifacts/loadgen\"\n");
    std::fs::write(deployments.join(format!("{name}.toml")), descriptor).unwrap();
}
