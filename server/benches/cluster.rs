//! Cluster timings, medians reported:
//!
//! - over five trials, with the probe app deployed to two nodes: kill -9 of the node running a
//!   singleton daemon to the daemon running on the survivor, and to a singleton job (fired every
//!   100 ms) firing there; SIGSTOP of a node to its removal from the other's view; a second
//!   node's start to a formed two-node cluster;
//! - over five trials of 3 nodes and three of 16, nothing deployed, all the nodes started back
//!   to back: the first start to every node's view holding them all (view convergence), and
//!   then, after 3 s of settling, each node's CPU time (utime + stime) over 10 s, as a percent of
//!   one core (the median over the nodes of every trial; at the usual 100 clock ticks a second,
//!   in steps of 0.1%).
//!
//! `cargo bench -p immutant-server --bench cluster` builds the probe app (tests/apps/probe) and
//! deploys it as `daemon` (a singleton daemon) and `fastjob` (a singleton job every 100 ms)
//! into a throwaway install of the release server,
//! whose nodes bind 127.0.0.1 and find each other by multicast on the loopback interface.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Node, TempInstall, build_app, free_offset, median};

const TRIALS: usize = 5;
/// Trials of the 16-node cluster, each a minute of a 2-core machine's time.
const LARGE_TRIALS: usize = 3;
/// How long a converged cluster settles before its idle CPU is read.
const SETTLE: Duration = Duration::from_secs(3);
/// How long idle CPU is read over.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

fn main() {
    singletons(&build_app("probe"));
    idle_clusters(3, TRIALS);
    idle_clusters(16, LARGE_TRIALS);
}

/// Singleton failover, removal of a stopped node and a two-node cluster's formation.
fn singletons(probe: &Path) {
    let mut failover = Vec::new();
    let mut job_failover = Vec::new();
    let mut removal = Vec::new();
    let mut formation = Vec::new();
    for trial in 0..TRIALS {
        let install = TempInstall::new();
        install.deploy(probe, "daemon");
        install.deploy(probe, "fastjob");
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

/// View convergence and idle CPU per node of `size`-node clusters with nothing deployed, over
/// `trials` trials.
fn idle_clusters(size: usize, trials: usize) {
    let mut convergence = Vec::new();
    let mut idle = Vec::new();
    for trial in 0..trials {
        let name = format!("bench-idle-{}-{size}-{trial}", std::process::id());
        let (cluster, converged) = Cluster::converge(size, &name);
        std::thread::sleep(SETTLE);
        let mut percents = cluster.cpu_percents(IDLE_WINDOW);
        cluster.stop();
        convergence.push(millis(converged));
        println!(
            "{size} nodes, trial {}: every view at {size} members {:.0} ms, idle CPU per node {:.1}% (lowest {:.1}%, highest {:.1}%)",
            trial + 1,
            convergence[trial],
            median(&mut percents),
            percents[0],
            percents[percents.len() - 1]
        );
        idle.extend(percents);
    }
    println!(
        "medians over {trials} trials of {size} nodes: first start to every view at {size} members {:.0} ms; idle CPU per node {:.1}% of a core",
        median(&mut convergence),
        median(&mut idle)
    );
}

/// Clustered nodes of a throwaway install with nothing deployed, killed when dropped.
struct Cluster {
    // Before the install: the nodes go before their folder does.
    nodes: Vec<Node>,
    _install: TempInstall,
}

impl Cluster {
    /// Starts `size` nodes of cluster `name` back to back, each at a free port offset of its
    /// own, and waits until each one's view holds `size` members; returns the cluster and the
    /// time from the first start to the last node's view at `size`.
    fn converge(size: usize, name: &str) -> (Cluster, Duration) {
        let install = TempInstall::new();
        let offsets = std::iter::successors(Some(free_offset(1000)), |previous| {
            Some(free_offset(previous + 100))
        });
        let args: Vec<_> = offsets
            .take(size)
            .enumerate()
            .map(|(index, offset)| install.clustered_args(&format!("node{index}"), offset, name))
            .collect();
        let starting = Instant::now();
        let nodes: Vec<_> = args.iter().map(|args| install.start(args)).collect();
        let members = format!("({size} members");
        let converged = nodes
            .iter()
            .map(|node| node.wait_for(&members).0)
            .max()
            .expect("at least one node");
        let cluster = Cluster {
            nodes,
            _install: install,
        };
        (cluster, converged - starting)
    }

    /// Each node's CPU time over `window`, as a percent of one core, sorted.
    fn cpu_percents(&self, window: Duration) -> Vec<f64> {
        let ticks = || -> Vec<u64> {
            self.nodes
                .iter()
                .map(|node| cpu_ticks(node.child.id()))
                .collect()
        };
        let (start, before) = (Instant::now(), ticks());
        std::thread::sleep(window);
        let (after, elapsed) = (ticks(), start.elapsed());
        // SAFETY: sysconf has no memory-safety preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut percents: Vec<f64> = before
            .iter()
            .zip(after)
            .map(|(before, after)| {
                (after - before) as f64 / per_second / elapsed.as_secs_f64() * 100.0
            })
            .collect();
        percents.sort_by(f64::total_cmp);
        percents
    }

    /// Stops every node gracefully, all at once, and waits for them.
    fn stop(self) {
        for node in &self.nodes {
            node.signal(libc::SIGTERM);
        }
        for node in self.nodes {
            node.stop();
        }
    }
}

/// The CPU time (utime + stime, all threads) process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("a Linux /proc");
    // "PID (COMM) STATE ...": utime and stime are the 14th and 15th fields, the 12th and 13th
    // after the command's closing parenthesis (which the command itself may hold).
    let after_command = &stat[stat.rfind(')').expect("/proc/PID/stat") + 1..];
    after_command
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|ticks| ticks.parse::<u64>().expect("a tick count"))
        .sum()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
