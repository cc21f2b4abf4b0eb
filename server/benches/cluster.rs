//! Cluster timings, over five trials each, medians reported:
//!
//! - kill -9 of the node running a singleton daemon to the daemon running on the survivor, and
//!   to a singleton job (fired every 100 ms) firing there;
//! - SIGSTOP of a node to its removal from the other's view;
//! - a second node's start to a formed two-node cluster.
//!
//! `cargo bench -p immutant-server --bench cluster` builds the probe app (tests/apps/probe) and
//! deploys it as `daemon` (a singleton daemon) and `fastjob` (a singleton job every 100 ms)
//! into a throwaway install of the release server,
//! whose nodes bind 127.0.0.1 and find each other by multicast on the loopback interface.

mod support;

use std::time::{Duration, Instant};

use support::{TempInstall, build_app, free_offset, median};

const TRIALS: usize = 5;

fn main() {
    let probe = build_app("probe");
    let mut failover = Vec::new();
    let mut job_failover = Vec::new();
    let mut removal = Vec::new();
    let mut formation = Vec::new();
    for trial in 0..TRIALS {
        let install = TempInstall::new();
        install.deploy(&probe, "daemon");
        install.deploy(&probe, "fastjob");
        let cluster = format!("bench-{}-{trial}", std::process::id());
        let offsets = {
            let first = free_offset(1000);
            let second = free_offset(first + 100);
            [first, second, free_offset(second + 100)]
        };
        let args = |name: &str, offset: u16| install.clustered_args(name, offset, &cluster);
        let first = install.start(&args("first", offsets[0]));
        first.wait_for("Starting daemon: worker");
        first.wait_for("[fastjob] fast run=");

        let starting = Instant::now();
        let second = install.start(&args("second", offsets[1]));
        let (formed, _) = second.wait_for("(2 members");
        formation.push(millis(formed - starting));
        second.wait_for("Deployed \"daemon\"");
        // Measure a cluster that has settled, not one still discovering itself.
        std::thread::sleep(Duration::from_secs(2));

        let before_kill = second.mark();
        let killed = Instant::now();
        first.signal(libc::SIGKILL);
        let (running, _) = second.wait_for("Starting daemon: worker");
        failover.push(millis(running - killed));
        let (fired, _) = second.wait_for_after(before_kill, "[fastjob] fast run=");
        job_failover.push(millis(fired - killed));

        let before_third = second.mark();
        let third = install.start(&args("third", offsets[2]));
        third.wait_for("(2 members");
        second.wait_for_after(before_third, "(2 members");
        std::thread::sleep(Duration::from_millis(500));
        let before_stop = second.mark();
        let stopped = Instant::now();
        third.signal(libc::SIGSTOP);
        let (removed, _) = second.wait_for_after(before_stop, "(1 members");
        removal.push(millis(removed - stopped));

        third.signal(libc::SIGKILL);
        third.signal(libc::SIGCONT);
        second.stop();
        println!(
            "trial {}: failover {:.0} ms (job {:.0} ms), SIGSTOP removal {:.0} ms, cluster formed {:.0} ms",
            trial + 1,
            failover[trial],
            job_failover[trial],
            removal[trial],
            formation[trial]
        );
    }
    println!(
        "medians over {TRIALS} trials: kill -9 to singleton running on the survivor {:.0} ms; to a singleton job firing there {:.0} ms; SIGSTOP to removal {:.0} ms; second node start to formed cluster {:.0} ms",
        median(&mut failover),
        median(&mut job_failover),
        median(&mut removal),
        median(&mut formation)
    );
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
