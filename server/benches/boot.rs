//! Node boot-to-ready time and idle memory.
//!
//! `cargo bench -p immutant-server --bench boot` starts a release node 21 times from a fresh
//! install layout and reports the medians of: the time from spawning the process to its boot line
//! (every port bound, ready to serve), and its resident memory (VmRSS) after a second idle.
//! Targets (DESIGN.md): under 100 ms and under 25 MB.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{TempInstall, free_offset, median, resident_kb};

const TRIALS: usize = 21;

fn main() {
    let install = TempInstall::new();
    let home = install.home();
    let offset = free_offset(1000);

    let mut boot_ms = Vec::new();
    let mut rss_kb = Vec::new();
    for trial in 0..TRIALS {
        let started = Instant::now();
        let mut node = Command::new(install.server())
            .arg(format!(
                "-Djboss.server.data.dir={}",
                home.join(format!("data-{trial}")).display()
            ))
            .arg(format!("-Djboss.socket.binding.port-offset={offset}"))
            .arg("-Djboss.node.name=bench")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the node starts");
        let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
        let booted = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("started in"));
        assert!(booted, "the node did not boot");
        boot_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(1));
        rss_kb.push(resident_kb(node.id()));
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
        let status = node.wait().unwrap();
        assert!(status.success(), "the node did not stop cleanly: {status}");
    }
    println!(
        "boot to ready: median {:.1} ms (min {:.1}, max {:.1}) over {TRIALS} starts",
        median(&mut boot_ms),
        boot_ms[0],
        boot_ms[TRIALS - 1]
    );
    println!(
        "idle RSS:      median {:.1} MB (min {:.1}, max {:.1})",
        median(&mut rss_kb) / 1024.0,
        rss_kb[0] / 1024.0,
        rss_kb[TRIALS - 1] / 1024.0
    );
}
