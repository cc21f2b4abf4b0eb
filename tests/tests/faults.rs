//! Faults: a singleton stays single when its node, only its server, or only its app is paused
//! with SIGSTOP, measured from the instants the daemon itself records (the probe's `runner`
//! writes `<unix µs> <epoch> <node>` every 5 ms while its lease holds). Each trial pauses the
//! node running it for 4 s; the checks: no two epochs' runs overlap, each epoch runs on one
//! node, epochs grow with every handover, nothing moves back after the resume, and a deposed
//! runner's publish under its old epoch is refused. And a partition made with network
//! namespaces (`immutant_e2e::netns`) with a quorum of 2 of 3: the minority stops before the
//! majority starts, and one runs after the heal.

use std::time::Duration;

use immutant_e2e::netns::Lan;
use immutant_e2e::singletons::{
    Runners, TAKEOVER_BOUND, holder, server_and_app, signal, single_runs, ticks,
};
use immutant_e2e::{BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, eventually, probe};

/// How long each trial pauses.
const PAUSE: Duration = Duration::from_secs(4);

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

/// Five trials pausing `target` on whichever node runs the singleton, each checked.
fn trials(target: Target) {
    let pair = Runners::pair();
    for trial in 1..=5 {
        let before = holder(&pair.ticks);
        let (offset, node) = pair.node(&before);
        let [server, app] = server_and_app(offset);
        let paused = match target {
            Target::Node => vec![server, app],
            Target::Server => vec![server],
            Target::App => vec![app],
        };
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
