//! Cache throughput from an app, and job trigger accuracy, medians of three runs each:
//!
//! - cache put and get from an app (8 concurrent tasks, 100-byte values, 20,000 of each) on a
//!   local cache of one node, and put, get and replace (compare-and-set of a known value) on a
//!   replicated cache of two and of three clustered nodes (the load on the first, a copy on
//!   each other: every write goes through the cache's primary and returns once every node has
//!   it; gets are local);
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
    report("replicated cache, two nodes", RUNS, || {
        replicated(&loadgen, 2)
    });
    report("replicated cache, three nodes", RUNS, || {
        replicated(&loadgen, 3)
    });
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

/// Runs `bench` `runs` times; prints each line and the medians of its put and get numbers, and
/// of its replace numbers if it has them.
fn report(label: &str, runs: usize, bench: impl Fn() -> String) {
    // "cache MODE: put R ops/s, p50 A ms, p99 B ms; get R ops/s, p50 A ms, p99 B ms[; replace
    // R ops/s, p50 A ms, p99 B ms (C of N answered true)]"
    const AT: [usize; 9] = [0, 2, 4, 5, 7, 9, 10, 12, 14];
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); AT.len()];
    let mut replaced = Vec::new();
    for run in 1..=runs {
        let line = bench();
        println!("run {run}: {line}");
        let numbers = numbers(&line);
        for (column, at) in columns.iter_mut().zip(AT) {
            if let Some(value) = numbers.get(at) {
                column.push(*value);
            }
        }
        if let Some(count) = numbers.get(15) {
            replaced.push(*count);
        }
    }
    let mut medians = columns
        .iter_mut()
        .filter(|column| !column.is_empty())
        .map(|column| median(column));
    let mut triple = |name: &str| {
        let (ops, p50, p99) = (medians.next()?, medians.next()?, medians.next()?);
        Some(format!(
            "{name} {ops:.0} ops/s (p50 {p50:.3} ms, p99 {p99:.3} ms)"
        ))
    };
    let parts: Vec<String> = ["put", "get", "replace"]
        .into_iter()
        .map_while(&mut triple)
        .collect();
    let counted = match replaced.iter().copied().reduce(f64::min) {
        Some(fewest) => format!(" (replaces answering true: at least {fewest:.0} a run)"),
        None => String::new(),
    };
    println!("{label}: {}{counted}", parts.join("; "));
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

/// A replicated cache on `count` clustered nodes: the load on the first, which starts first
/// (the oldest member, and so the cache's primary); the others hold copies.
fn replicated(loadgen: &Path, count: usize) -> String {
    let install = TempInstall::new();
    let cluster = format!("bench-cache-{}-{count}", std::process::id());
    let mut offset = free_offset(1000);
    let mut nodes = Vec::new();
    for (index, name) in ["first", "second", "third"]
        .into_iter()
        .take(count)
        .enumerate()
    {
        let role = if index == 0 { "run" } else { "hold" };
        let mut args = install.clustered_args(name, offset, &cluster);
        args.extend([
            "-Dloadgen.mode=replicated".to_string(),
            format!("-Dloadgen.role={role}"),
            "-Dloadgen.wait-ms=2000".to_string(),
        ]);
        let node = install.start(&args);
        node.wait_for("started in");
        nodes.push(node);
        offset = free_offset(offset + 100);
    }
    let formed = format!("({count} members");
    for node in &nodes {
        node.wait_for(&formed);
    }
    install.deploy(loadgen, "cacheload");
    let (_, line) = nodes[0].wait_for("cache replicated:");
    let (_, warm) = nodes[0].wait_for("first put succeeded");
    // Since the writes go through a primary holding a lease, the primary says so.
    let primary = nodes
        .iter()
        .zip(["first", "second", "third"])
        .find(|(node, _)| {
            node.lines()
                .iter()
                .any(|line| line.contains("applies the writes to cache bench"))
        })
        .map_or("not said", |(_, name)| name);
    for node in nodes {
        node.stop();
    }
    let warm = &warm[warm.find("first put").unwrap_or(0)..];
    println!("  ({warm}; primary: {primary})");
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
