//! Singleton takeover times, five trials each, medians reported, measured from the instants the
//! probe's `runner` daemon records (every 5 ms while its lease holds):
//!
//! - **kill -9** of the holder's server (its app exits with it): from the kill to the survivor's
//!   first run;
//! - **SIGSTOP** of the holder's server and app together: from the stop to the other node's
//!   first run (the stopped node is resumed after 4 s, and stays deposed);
//! - **partition**: three nodes in network namespaces with a quorum of 2, the holder's host cut
//!   off the switch: from the cut to the majority's first run, and how long before that the
//!   minority's last run was (skipped where namespaces cannot be made).
//!
//! `cargo bench -p immutant-e2e --bench takeover`. The nodes are the e2e tests' builds (release,
//! as `install.sh` makes them); what dominates is the lease (1.2 s), the promise margin (0.2 s)
//! and failure detection.

use std::time::Duration;

use immutant_e2e::netns::Lan;
use immutant_e2e::singletons::{
    ALL_THREE, Runners, first_after, holder, now_us, server_and_app, signal, single_runs, ticks,
};
use immutant_e2e::{PATIENCE, Proc, eventually};

const TRIALS: usize = 5;

fn main() {
    let mut killed = Vec::new();
    for trial in 1..=TRIALS {
        let runners = Runners::pair();
        let (old, at) = fault(&runners.ticks, |name| {
            let (offset, _) = runners.node(name);
            signal(&server_and_app(offset)[..1], libc::SIGKILL);
        });
        let first = first_after(&runners.ticks, at, old);
        killed.push(millis(first.at_us - at));
        println!("kill -9 trial {trial}: {:.0} ms", killed[trial - 1]);
    }

    let mut stopped = Vec::new();
    let runners = Runners::pair();
    for trial in 1..=TRIALS {
        let mut paused = Vec::new();
        let (old, at) = fault(&runners.ticks, |name| {
            let (offset, _) = runners.node(name);
            paused = server_and_app(offset).to_vec();
            signal(&paused, libc::SIGSTOP);
        });
        let first = first_after(&runners.ticks, at, old);
        stopped.push(millis(first.at_us - at));
        println!("SIGSTOP trial {trial}: {:.0} ms", stopped[trial - 1]);
        std::thread::sleep(Duration::from_secs(4));
        signal(&paused, libc::SIGCONT);
        std::thread::sleep(Duration::from_secs(3));
    }
    single_runs(&ticks(&runners.ticks));

    let partitioned = partitions();
    println!(
        "medians over {TRIALS} trials: kill -9 to the survivor's first run {:.0} ms; SIGSTOP to the other's first run {:.0} ms; {}",
        median(&mut killed),
        median(&mut stopped),
        match partitioned {
            Some((mut cut, mut gap)) => format!(
                "cut off to the majority's first run {:.0} ms, the minority's last run before it by {:.0} ms",
                median(&mut cut),
                median(&mut gap)
            ),
            None => "no partition trials (no network namespaces here)".to_string(),
        }
    );
}

/// Applies `fault` to the node running the singleton now; answers the epoch it ran under and
/// the instant of the fault (unix µs).
fn fault(path: &std::path::Path, fault: impl FnOnce(&str)) -> (u64, u64) {
    let name = holder(path);
    let old = ticks(path)
        .into_iter()
        .max_by_key(|tick| tick.at_us)
        .expect("the holder has run")
        .epoch;
    let at = now_us();
    fault(&name);
    (old, at)
}

/// Partition trials: the cut-off-to-takeover times, and the gaps between the minority's last
/// run and the majority's first.
fn partitions() -> Option<(Vec<f64>, Vec<f64>)> {
    let lan = Lan::new(3)?;
    let trio = Runners::partitionable(&lan);
    let path = trio.ticks.clone();
    let nodes: Vec<&Proc> = trio.nodes.iter().map(|(_, _, node)| node).collect();
    let (mut cut_times, mut gaps) = (Vec::new(), Vec::new());
    for trial in 1..=TRIALS {
        let mut cut = 0;
        let (old, at) = fault(&path, |name| {
            cut = trio.position(name);
            lan.cut(cut);
        });
        let first = first_after(&path, at, old);
        let last_old = ticks(&path)
            .into_iter()
            .filter(|tick| tick.epoch == old)
            .map(|tick| tick.at_us)
            .max()
            .unwrap();
        cut_times.push(millis(first.at_us - at));
        gaps.push(millis(first.at_us - last_old));
        println!(
            "partition trial {trial}: {:.0} ms (minority stopped {:.0} ms before)",
            cut_times[trial - 1],
            gaps[trial - 1]
        );
        let rejoined = nodes[cut].lines().len();
        lan.heal(cut);
        eventually("the cut node rejoining", PATIENCE, || {
            nodes[cut].lines()[rejoined..]
                .iter()
                .any(|line| line.contains(ALL_THREE))
        });
        std::thread::sleep(Duration::from_secs(3));
    }
    single_runs(&ticks(&path));
    Some((cut_times, gaps))
}

fn millis(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
