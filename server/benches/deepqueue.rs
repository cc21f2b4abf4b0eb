//! A deep queue: a release node takes `DEEP_MESSAGES` (5,000,000 by default) persistent 1 KB
//! messages from the loadgen app (16 publishers) with no consumer, then is stopped gracefully
//! and started again, then killed with kill -9 and started again. Reported: the publish rate,
//! the node's resident memory (VmRSS) once they are all queued, and for each restart the time
//! from spawning the node to its boot line (ready to serve) and its memory ten seconds later
//! (it counts what its journal holds meanwhile).
//!
//! `cargo bench -p immutant-server --bench deepqueue` (`DEEP_MESSAGES=100000` for a quick run;
//! `DEEP_QUICK_REPAIR=true` starts the node with `-Dimmutant.messaging.quick-repair=true`).
//! The journal takes about 2 KB of disk per message: 10 GB by default.

mod support;

use std::time::{Duration, Instant};

use support::{TempInstall, build_app, free_offset, resident_kb};

fn main() {
    let messages: usize = std::env::var("DEEP_MESSAGES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5_000_000);
    let loadgen = build_app("loadgen");
    let install = TempInstall::new();
    install.deploy(&loadgen, "producer");
    let offset = free_offset(1000);
    let mut args = vec![
        format!(
            "-Djboss.server.data.dir={}",
            install.home().join("data").display()
        ),
        format!("-Djboss.socket.binding.port-offset={offset}"),
        "-Djboss.node.name=deep".to_string(),
        format!("-Dloadgen.messages={messages}"),
        "-Dloadgen.publishers=16".to_string(),
    ];
    if std::env::var("DEEP_QUICK_REPAIR").as_deref() == Ok("true") {
        args.push("-Dimmutant.messaging.quick-repair=true".to_string());
    }
    let node = install.start(&args);
    let (_, published) = node.wait_quiet(0, "published ", Duration::from_secs(3600));
    let queued_mb = rss_mb(node.child.id());
    println!("{}", published.trim());
    node.stop();
    // The producer is gone: the restarted node only holds what is queued.
    std::fs::remove_file(install.home().join("deployments/producer.toml")).unwrap();
    let (graceful_ms, graceful_mb, node) = restart(&install, &args);
    node.signal(libc::SIGKILL);
    drop(node);
    let (killed_ms, killed_mb, node) = restart(&install, &args);
    println!(
        "{messages} messages queued: {queued_mb:.0} MB resident once queued; after a graceful stop, boot to ready {graceful_ms:.0} ms and {graceful_mb:.0} MB ten seconds later; after kill -9, {killed_ms:.0} ms and {killed_mb:.0} MB"
    );
    node.stop();
}

/// Starts the node again: the time to its boot line, its memory ten seconds later, and the node.
fn restart(install: &TempInstall, args: &[String]) -> (f64, f64, support::Node) {
    let started = Instant::now();
    let node = install.start(args);
    node.wait_quiet(0, "started in", Duration::from_secs(600));
    let boot_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(10));
    (boot_ms, rss_mb(node.child.id()), node)
}

fn rss_mb(pid: u32) -> f64 {
    resident_kb(pid) / 1024.0
}
