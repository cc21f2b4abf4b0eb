//! A deep queue: a release node takes `DEEP_MESSAGES` (5,000,000 by default) persistent 1 KB
//! messages from the loadgen app (16 publishers) with no consumer, then is killed with kill -9
//! and started again. Reported: the publish rate, the node's resident memory (VmRSS) once they
//! are all queued, the time from spawning the restarted node to its boot line (ready to serve),
//! and its memory a second and ten seconds after (while it counts what its journal holds).
//!
//! `cargo bench -p immutant-server --bench deepqueue` (`DEEP_MESSAGES=100000` for a quick run).
//! The journal takes about 1.1 KB of disk per message: 5.5 GB by default.

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
    let args = vec![
        format!(
            "-Djboss.server.data.dir={}",
            install.home().join("data").display()
        ),
        format!("-Djboss.socket.binding.port-offset={offset}"),
        "-Djboss.node.name=deep".to_string(),
        format!("-Dloadgen.messages={messages}"),
        "-Dloadgen.publishers=16".to_string(),
    ];
    let node = install.start(&args);
    let (_, published) = node.wait_quiet(0, "published ", Duration::from_secs(3600));
    let queued_mb = rss_mb(node.child.id());
    println!("{}", published.trim());
    node.signal(libc::SIGKILL);
    drop(node);

    // The producer is gone: the restarted node only holds what is queued.
    std::fs::remove_file(install.home().join("deployments/producer.toml")).unwrap();
    let started = Instant::now();
    let node = install.start(&args);
    node.wait_for("started in");
    let boot_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(1));
    let after_second = rss_mb(node.child.id());
    std::thread::sleep(Duration::from_secs(9));
    let after_ten = rss_mb(node.child.id());
    println!(
        "{messages} messages queued: {queued_mb:.0} MB resident once queued; after kill -9, boot to ready {boot_ms:.0} ms, {after_second:.0} MB resident a second later, {after_ten:.0} MB ten seconds later"
    );
    node.stop();
}

fn rss_mb(pid: u32) -> f64 {
    resident_kb(pid) / 1024.0
}
