//! Faults: a singleton stays single when its node, only its server, or only its app is paused
//! with SIGSTOP, measured from the instants the daemon itself records (the probe's `runner`
//! writes `<unix µs> <epoch> <node>` every 5 ms while its lease holds). Each trial pauses the
//! node running it for 4 s; the checks: no two epochs' runs overlap, each epoch runs on one
//! node, epochs grow with every handover, nothing moves back after the resume, and a deposed
//! runner's publish under its old epoch is refused. And a partition made with network
//! namespaces (`immutant_e2e::netns`) with a quorum of 2 of 3: the minority stops before the
//! majority starts, and one runs after the heal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use immutant_e2e::netns::Lan;
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered_with, eventually, free_offset,
    get_json, get_json_at, probe,
};

/// How long each trial pauses.
const PAUSE: Duration = Duration::from_secs(4);
/// The bound a takeover is held to here (the benchmark measures the real time).
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);

/// One instant the runner recorded.
#[derive(Debug, Clone)]
struct Tick {
    at_us: u64,
    epoch: u64,
    node: String,
}

fn ticks(path: &Path) -> Vec<Tick> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            Some(Tick {
                at_us: parts.next()?.parse().ok()?,
                epoch: parts.next()?.parse().ok()?,
                node: parts.next()?.to_string(),
            })
        })
        .collect()
}

/// One epoch's run: on which node, from its first to its last recorded instant.
#[derive(Debug)]
struct Run {
    epoch: u64,
    node: String,
    first_us: u64,
    last_us: u64,
}

/// The runs in the ticks, in time order, after checking that there were never two runners:
/// each epoch on one node, no two epochs' runs overlapping, epochs growing with time.
fn single_runs(ticks: &[Tick]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for tick in ticks {
        match runs.iter_mut().find(|run| run.epoch == tick.epoch) {
            Some(run) => {
                assert_eq!(run.node, tick.node, "epoch {} ran on two nodes", tick.epoch);
                run.first_us = run.first_us.min(tick.at_us);
                run.last_us = run.last_us.max(tick.at_us);
            }
            None => runs.push(Run {
                epoch: tick.epoch,
                node: tick.node.clone(),
                first_us: tick.at_us,
                last_us: tick.at_us,
            }),
        }
    }
    runs.sort_by_key(|run| run.first_us);
    for pair in runs.windows(2) {
        assert!(
            pair[0].last_us < pair[1].first_us,
            "two runners at once: {:?} and {:?} overlap by {} µs",
            pair[0],
            pair[1],
            pair[0].last_us - pair[1].first_us
        );
        assert!(
            pair[0].epoch < pair[1].epoch,
            "the epoch went back at a handover: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    runs
}

/// Microseconds since the Unix epoch now.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The node the runner recorded its latest instant on, once that is recent (within 100 ms) and
/// has been for half a second: the singleton's holder.
fn holder(path: &Path) -> String {
    let deadline = Instant::now() + TAKEOVER_BOUND;
    let mut since: Option<(String, Instant)> = None;
    loop {
        let latest = ticks(path).into_iter().max_by_key(|tick| tick.at_us);
        match (latest, &since) {
            (Some(tick), Some((node, at)))
                if tick.node == *node
                    && now_us() - tick.at_us < 100_000
                    && at.elapsed() > Duration::from_millis(500) =>
            {
                return tick.node;
            }
            (Some(tick), _) if now_us() - tick.at_us < 100_000 => {
                if since.as_ref().is_none_or(|(node, _)| *node != tick.node) {
                    since = Some((tick.node, Instant::now()));
                }
            }
            _ => since = None,
        }
        assert!(
            Instant::now() < deadline,
            "no runner has recorded steadily for {TAKEOVER_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a trial pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The holder's server and its app.
    Node,
    /// Only the holder's `immutant-server`.
    Server,
    /// Only the holder's app process.
    App,
}

/// Two clustered nodes running the probe's runner, recording into one ticks file.
struct Pair {
    _base: Base,
    ticks: PathBuf,
    nodes: Vec<(String, u16, Proc)>,
}

fn runner_pair() -> Pair {
    let base = Base::installed();
    base.deploy(&probe(), Some("runner"));
    let ticks = base.path().join("ticks");
    let cluster = cluster_name();
    let nodes: Vec<(String, u16, Proc)> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let offset = free_offset();
            let extra = [format!("-Dprobe.ticks={}", ticks.display())];
            let node = clustered_with(&base, name, offset, &cluster, &extra);
            (name.to_string(), offset, node)
        })
        .collect();
    for (_, _, node) in &nodes {
        node.wait_for("Cluster view: [one, two]", PATIENCE);
        node.wait_for("Deployed \"runner\"", BUILD_PATIENCE);
    }
    Pair {
        _base: base,
        ticks,
        nodes,
    }
}

/// The pids a trial pauses on the node at `offset`.
fn pids(offset: u16, target: Target) -> Vec<i32> {
    let server = get_json(9990 + offset)["pid"].as_i64().unwrap() as i32;
    let app = get_json_at(9990 + offset, "deployments")[0]["pid"]
        .as_i64()
        .expect("the runner has a process") as i32;
    match target {
        Target::Node => vec![server, app],
        Target::Server => vec![server],
        Target::App => vec![app],
    }
}

fn signal(pids: &[i32], signal: i32) {
    for pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*pid, signal) };
    }
}

/// Five trials pausing `target` on whichever node runs the singleton, each checked.
fn trials(target: Target) {
    let pair = runner_pair();
    for trial in 1..=5 {
        let before = holder(&pair.ticks);
        let (_, offset, node) = pair
            .nodes
            .iter()
            .find(|(name, _, _)| *name == before)
            .unwrap();
        let paused = pids(*offset, target);
        signal(&paused, libc::SIGSTOP);
        std::thread::sleep(PAUSE);
        signal(&paused, libc::SIGCONT);
        // Let the resumed side find out, then see who runs it.
        std::thread::sleep(Duration::from_secs(3));
        let after = holder(&pair.ticks);
        let runs = single_runs(&ticks(&pair.ticks));
        println!("{target:?} trial {trial}: {before} -> {after}; runs {runs:?}");
        match target {
            // The node that was paused was replaced, and nothing moved back to it.
            Target::Node | Target::Server => {
                assert_ne!(after, before, "{target:?} trial {trial}: no takeover");
                let deposed = runs
                    .iter()
                    .rev()
                    .find(|run| run.node == before)
                    .unwrap()
                    .epoch;
                let said = node.wait_for(&format!("publish under old epoch {deposed}:"), PATIENCE);
                assert!(
                    said.contains("the work was not done"),
                    "{target:?} trial {trial}: a deposed runner's publish was not refused:\n{said}"
                );
            }
            // Its node was there all along: the singleton stays.
            Target::App => assert_eq!(after, before, "App trial {trial}: it moved"),
        }
    }
}

#[test]
fn pausing_the_singletons_node_never_runs_it_twice_nor_moves_it_back() {
    trials(Target::Node);
}

#[test]
fn pausing_only_the_server_stops_its_app_running_the_singleton() {
    trials(Target::Server);
}

#[test]
fn pausing_only_the_app_keeps_the_singleton_where_it_is() {
    trials(Target::App);
}

#[test]
fn a_partition_stops_the_minority_before_the_majority_starts_and_one_runs_after_the_heal() {
    let Some(lan) = Lan::new(3) else { return };
    let base = Base::installed();
    base.deploy(&probe(), Some("runner"));
    let ticks_file = base.path().join("ticks");
    let cluster = cluster_name();
    let extra = [
        format!("-Dprobe.ticks={}", ticks_file.display()),
        "-Dimmutant.singleton.quorum=2".to_string(),
    ];
    let names = ["one", "two", "three"];
    let nodes: Vec<Proc> = names
        .iter()
        .enumerate()
        .map(|(i, name)| lan.node(&base, i, (name, &cluster), &extra))
        .collect();
    let all = "Cluster view: [one, two, three]";
    for node in &nodes {
        node.wait_for(all, PATIENCE);
        node.wait_for("Deployed \"runner\"", BUILD_PATIENCE);
    }
    let before = holder(&ticks_file);
    let cut = names.iter().position(|name| *name == before).unwrap();
    lan.cut(cut);
    nodes[cut].wait_for(
        "The singletons of runner no longer run on this node",
        TAKEOVER_BOUND,
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = holder(&ticks_file);
    assert_ne!(after, before, "the majority took over");
    let runs = single_runs(&ticks(&ticks_file));
    println!("cut {before}: {after} runs it; runs {runs:?}");

    lan.heal(cut);
    eventually("the cut node rejoining", PATIENCE, || {
        nodes[cut]
            .lines()
            .iter()
            .filter(|line| line.contains(all))
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        holder(&ticks_file),
        after,
        "nothing moved back after the heal"
    );
    let runs = single_runs(&ticks(&ticks_file));
    println!("healed: runs {runs:?}");
}
