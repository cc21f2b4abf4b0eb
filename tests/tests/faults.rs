//! Faults: a singleton stays single when its node, only its server, or only its app is paused
//! with SIGSTOP, measured from the instants the daemon itself records (the probe's `runner`
//! writes `<unix µs> <epoch> <node>` every 5 ms while its lease holds). Each trial pauses the
//! node running it for 4 s; the checks: no two epochs' runs overlap, each epoch runs on one
//! node, epochs grow with every handover, nothing moves back after the resume, and a deposed
//! runner's publish under its old epoch is refused. And a partition made with network
//! namespaces (`immutant_e2e::netns`) with a quorum of 2 of 3: the minority stops before the
//! majority starts, and one runs after the heal. And a durable subscriber on another node than
//! the publisher's gets every persistent message across kill -9 of either node; kill -9 of
//! either node under publish load loses no message whose publish returned (duplicates are
//! counted and reported); and a deep queue stays in the journal, not in the node's memory.

use std::time::Duration;

use immutant_e2e::nats::{NatsCluster, Release};
use immutant_e2e::netns::Lan;
use immutant_e2e::singletons::{
    ALL_THREE, Runners, TAKEOVER_BOUND, holder, server_and_app, signal, single_runs, ticks,
};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered_with, eventually, free_offset,
    get_json, get_json_at, kill_9, probe, start_node,
};

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
#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]
fn a_partition_stops_the_minority_before_the_majority_starts_and_one_runs_after_the_heal() {
    let lan = Lan::make(3);
    let trio = Runners::partitionable(&lan);
    let ticks_file = &trio.ticks;
    let nodes: Vec<&Proc> = trio.nodes.iter().map(|(_, _, node)| node).collect();
    let all = ALL_THREE;
    let before = holder(ticks_file);
    let cut = trio.position(&before);
    lan.cut(cut);
    nodes[cut].wait_for(
        "The singletons of runner no longer run on this node",
        TAKEOVER_BOUND,
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = holder(ticks_file);
    assert_ne!(after, before, "the majority took over");
    let runs = single_runs(&ticks(ticks_file));
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
        holder(ticks_file),
        after,
        "nothing moved back after the heal"
    );
    let runs = single_runs(&ticks(ticks_file));
    println!("healed: runs {runs:?}");
}

/// The items after `marker` in `lines`.
fn items_after(lines: &[String], marker: &str) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| Some(line.split_once(marker)?.1.trim().to_string()))
        .collect()
}

/// Where the probe notes each message it takes (`-Dprobe.taken-file`): its printed line goes
/// through the node, and a kill -9 right after the acknowledgement may lose that line.
struct TakenNotes {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
}

impl TakenNotes {
    fn new() -> TakenNotes {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("taken");
        TakenNotes { _dir: dir, file }
    }

    /// The property that points the probe at the file.
    fn property(&self) -> String {
        format!("-Dprobe.taken-file={}", self.file.display())
    }

    /// Every item taken so far, once per time it was taken.
    fn taken(&self) -> Vec<String> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn a_durable_subscriber_on_another_node_gets_every_persistent_message_across_kill_9_of_either() {
    durable_subscriber_across_kills(&[]);
}

#[test]
fn on_nats_a_durable_subscriber_gets_every_persistent_message_across_kill_9_of_either_node() {
    let nats = NatsCluster::start(3, Release::Current);
    durable_subscriber_across_kills(&nats.engine_args());
}

/// A publisher and a durable subscriber on two nodes started with `engine`, each node killed in
/// turn: every message published reaches the subscriber.
fn durable_subscriber_across_kills(engine: &[String]) {
    let base = Base::installed();
    base.deploy(&probe(), Some("wire"));
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset()];
    let notes = TakenNotes::new();
    let start = |name: &str, offset: u16, role: &str| {
        let mut extra = vec![format!("-Dprobe.role={role}"), notes.property()];
        extra.extend_from_slice(engine);
        clustered_with(&base, name, offset, &cluster, &extra)
    };
    let mut publishers = vec![start("one", offsets[0], "publisher")];
    let mut subscribers = vec![start("two", offsets[1], "subscriber")];
    // The subscription counts from the first message it got: those before were published
    // before it existed.
    let first = subscribers[0].wait_for("[wire] got: ", BUILD_PATIENCE);
    let first = first
        .split_once("[wire] got: ")
        .unwrap()
        .1
        .trim()
        .to_string();

    // The subscriber's node goes: what is published meanwhile waits on the publisher's node...
    kill_9(offsets[1]);
    let published = |procs: &[Proc]| -> Vec<String> {
        let all: Vec<String> = procs
            .iter()
            .flat_map(|node| items_after(&node.lines(), "[wire] wired: "))
            .collect();
        let from = all.iter().position(|item| *item == first).unwrap_or(0);
        all[from..].to_vec()
    };
    let away = published(&publishers).len();
    eventually(
        "20 publishes while the subscriber is away",
        PATIENCE,
        || published(&publishers).len() >= away + 20,
    );
    // ...and survives that node's kill -9 too.
    kill_9(offsets[0]);
    publishers[0].wait_exit(PATIENCE);
    publishers.push(start("one", offsets[0], "publisher"));
    subscribers.push(start("two", offsets[1], "subscriber"));

    // Everything published reaches the subscriber, but the newest few, which may be on their way.
    let deadline = std::time::Instant::now() + PATIENCE;
    let (sent, got) = loop {
        let sent = published(&publishers);
        let got = notes.taken();
        let lost: Vec<&String> = sent[..sent.len() - 3]
            .iter()
            .filter(|item| !got.contains(item))
            .collect();
        if sent.len() > away + 40 && lost.is_empty() {
            break (sent, got);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "published but never received: {lost:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let duplicates = got.len() - got.iter().collect::<std::collections::HashSet<_>>().len();
    println!(
        "{} published, {} received, {duplicates} duplicates",
        sent.len(),
        got.len()
    );
}

/// The resident memory of process `pid`, in MiB.
fn resident_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024
}

/// The depth of `queue` on the node at `offset`.
fn depth(offset: u16, queue: &str) -> u64 {
    get_json_at(9990 + offset, "queues")
        .as_array()
        .into_iter()
        .flatten()
        .find(|stats| stats["name"] == queue)
        .and_then(|stats| stats["depth"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_deep_queue_stays_on_disk_its_node_stays_small_and_it_is_delivered_whole() {
    const MESSAGES: u64 = 150_000;
    // 150 MB of 1 KB messages, no consumer: held in memory, the node would pass 150 MB.
    const BOUND_MIB: u64 = 128;
    let base = Base::installed();
    let loadgen = immutant_e2e::workspace_root().join("tests/apps/loadgen");
    base.deploy(&loadgen, Some("producer"));
    let offset = free_offset();
    let messages = format!("-Dloadgen.messages={MESSAGES}");
    let node = start_node(&base, "deep", offset, &[&messages]);
    node.wait_for(&format!("published {MESSAGES} messages"), BUILD_PATIENCE);
    let pid = get_json(9990 + offset)["pid"].as_i64().unwrap() as i32;
    let published = resident_mib(pid);
    assert_eq!(depth(offset, "/queue/bench"), MESSAGES);

    kill_9(offset);
    let undeployed = base.cli(["undeploy", "producer"]).output().unwrap();
    assert!(undeployed.status.success());
    let node = start_node(&base, "deep", offset, &[&messages]);
    eventually("the deep queue counted after the restart", PATIENCE, || {
        depth(offset, "/queue/bench") == MESSAGES
    });
    let pid = get_json(9990 + offset)["pid"].as_i64().unwrap() as i32;
    let restarted = resident_mib(pid);
    println!(
        "{MESSAGES} messages queued: {published} MiB after publishing, {restarted} MiB after a restart"
    );
    assert!(
        published < BOUND_MIB && restarted < BOUND_MIB,
        "the node holds the deep queue in memory: {published} MiB after publishing, {restarted} MiB after a restart\n{}",
        node.text()
    );
    // And every message comes back out of the journal, page by page.
    base.deploy(&loadgen, Some("consumer"));
    node.wait_for(&format!("consumed {MESSAGES} messages"), BUILD_PATIENCE);
    eventually("the deep queue drained", PATIENCE, || {
        depth(offset, "/queue/bench") == 0
    });
}

#[test]
fn kill_9_of_either_node_under_publish_load_loses_no_message_whose_publish_returned() {
    publish_load_across_kills(&[]);
}

#[test]
fn on_nats_kill_9_of_either_node_under_publish_load_loses_no_message_whose_publish_returned() {
    let nats = NatsCluster::start(3, Release::Current);
    publish_load_across_kills(&nats.engine_args());
}

/// Two nodes started with `engine` publishing and consuming, each killed under load in turn
/// and started again: every message whose publish returned is taken.
fn publish_load_across_kills(engine: &[String]) {
    let base = Base::installed();
    base.deploy(&probe(), Some("loadq"));
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset()];
    let notes = TakenNotes::new();
    let mut extra = engine.to_vec();
    extra.push(notes.property());
    let start = |name: &str, offset: u16| clustered_with(&base, name, offset, &cluster, &extra);
    let mut nodes = vec![start("one", offsets[0]), start("two", offsets[1])];
    for node in &nodes {
        node.wait_for("[loadq] took: ", BUILD_PATIENCE);
    }
    let items = |nodes: &[Proc], marker: &str| -> Vec<String> {
        nodes
            .iter()
            .flat_map(|node| items_after(&node.lines(), marker))
            .collect()
    };
    // Each node in turn is killed under load, and started again.
    for (name, offset) in [("two", offsets[1]), ("one", offsets[0])] {
        let before = items(&nodes, "[loadq] loaded: ").len();
        eventually("load before the kill", PATIENCE, || {
            items(&nodes, "[loadq] loaded: ").len() > before + 200
        });
        kill_9(offset);
        std::thread::sleep(Duration::from_secs(1));
        nodes.push(start(name, offset));
    }
    // Every message whose publish returned is taken, by one node or the other, at least once.
    let deadline = std::time::Instant::now() + PATIENCE;
    let (loaded, taken) = loop {
        let loaded = items(&nodes, "[loadq] loaded: ");
        let taken = notes.taken();
        let seen: std::collections::HashSet<&String> = taken.iter().collect();
        let lost: Vec<&String> = loaded[..loaded.len().saturating_sub(50)]
            .iter()
            .filter(|item| !seen.contains(item))
            .collect();
        if lost.is_empty() {
            break (loaded, taken);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} published but never taken, such as {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let distinct = taken.iter().collect::<std::collections::HashSet<_>>().len();
    println!(
        "{} published, {} taken, {} duplicates (deliveries a kill interrupted, taken again)",
        loaded.len(),
        taken.len(),
        taken.len() - distinct
    );
}
