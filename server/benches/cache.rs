//! Cache throughput from an app, and job trigger accuracy, medians of three runs each:
//!
//! - cache put and get from an app (8 concurrent tasks, 100-byte values, 20,000 of each) on a
//!   local cache of one node, and on a replicated cache of two clustered nodes (the load on
//!   one, a copy on the other: every put returns once both have it; gets are local);
//! - how late a job's function starts against the time its firing was due (a job every 50 ms,
//!   200 firings).
//!
//! `cargo bench -p immutant-server --bench cache` builds the loadgen app (tests/apps/loadgen)
//! and deploys it as `cacheload` and `jobclock` into throwaway installs of the release server.

mod support;

use std::path::Path;

use support::{TempInstall, build_app, free_offset, median};

const RUNS: usize = 3;

fn main() {
    let loadgen = build_app("loadgen");
    report("local cache, one node", RUNS, || local(&loadgen));
    report("replicated cache, two nodes", RUNS, || replicated(&loadgen));
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for run in 1..=RUNS {
        let line = job_clock(&loadgen);
        println!("run {run}: {line}");
        let numbers = numbers(&line);
        p50s.push(numbers[2]);
        p99s.push(numbers[4]);
    }
    println!(
        "job trigger delay (due to function start), a job every 50 ms: median p50 {:.2} ms, p99 {:.2} ms",
        median(&mut p50s),
        median(&mut p99s)
    );
}

/// Runs `bench` `runs` times; prints each line and the medians of its put and get numbers.
fn report(label: &str, runs: usize, bench: impl Fn() -> String) {
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); 6];
    for run in 1..=runs {
        let line = bench();
        println!("run {run}: {line}");
        // "cache MODE: put R ops/s, p50 A ms, p99 B ms; get R ops/s, p50 A ms, p99 B ms"
        let numbers = numbers(&line);
        for (column, value) in columns
            .iter_mut()
            .zip([0, 2, 4, 5, 7, 9].map(|i| numbers[i]))
        {
            column.push(value);
        }
    }
    let [put, put50, put99, get, get50, get99] =
        [0, 1, 2, 3, 4, 5].map(|i| median(&mut columns[i]));
    println!(
        "{label}: put {put:.0} ops/s (p50 {put50:.3} ms, p99 {put99:.3} ms); get {get:.0} ops/s (p50 {get50:.3} ms, p99 {get99:.3} ms)"
    );
}

/// The numbers in a line, in order (the "50" of "p50" included).
fn numbers(line: &str) -> Vec<f64> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|word| word.parse().ok())
        .collect()
}

fn local(loadgen: &Path) -> String {
    let install = TempInstall::new();
    let node = install.start(&[
        format!("-Djboss.socket.binding.port-offset={}", free_offset(1000)),
        "-Dloadgen.mode=local".to_string(),
    ]);
    node.wait_for("started in");
    install.deploy(loadgen, "cacheload");
    let (_, line) = node.wait_for("cache local:");
    node.stop();
    line[line.find("cache local:").unwrap_or(0)..].to_string()
}

fn replicated(loadgen: &Path) -> String {
    let install = TempInstall::new();
    let cluster = format!("bench-cache-{}", std::process::id());
    let first = free_offset(1000);
    let offsets = [first, free_offset(first + 100)];
    let nodes: Vec<_> = [("first", "run"), ("second", "hold")]
        .iter()
        .zip(offsets)
        .map(|((name, role), offset)| {
            let mut args = install.clustered_args(name, offset, &cluster);
            args.extend([
                "-Dloadgen.mode=replicated".to_string(),
                format!("-Dloadgen.role={role}"),
                "-Dloadgen.wait-ms=2000".to_string(),
            ]);
            install.start(&args)
        })
        .collect();
    for node in &nodes {
        node.wait_for("(2 members");
    }
    install.deploy(loadgen, "cacheload");
    let (_, line) = nodes[0].wait_for("cache replicated:");
    for node in nodes {
        node.stop();
    }
    line[line.find("cache replicated:").unwrap_or(0)..].to_string()
}

fn job_clock(loadgen: &Path) -> String {
    let install = TempInstall::new();
    let node = install.start(&[format!(
        "-Djboss.socket.binding.port-offset={}",
        free_offset(1000)
    )]);
    node.wait_for("started in");
    install.deploy(loadgen, "jobclock");
    let (_, line) = node.wait_for("job trigger delay");
    node.stop();
    line[line.find("job trigger delay").unwrap_or(0)..].to_string()
}
