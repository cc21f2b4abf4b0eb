//! Scheduled jobs: cron and interval jobs fired by real nodes, singletons across a real
//! cluster, failover by kill -9 and across pauses (SIGSTOP), and the `jobs` template.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use immutant_e2e::nats::{NatsCluster, Release};
use immutant_e2e::singletons::{server_and_app, signal};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered, clustered_with, eventually,
    free_offset, get_json_at, kill_9, numbers_after, probe,
};

/// The failover bound the tests hold nodes to (the benchmark measures the real time).
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// A firing a probe printed: `<label> run=R scheduled=S fired=F epoch=E node=N`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Firing {
    scheduled: u64,
    run: u64,
    fired: u64,
    epoch: u64,
    node: String,
}

/// Every firing labelled `label` in the nodes' output.
fn firings(nodes: &[&Proc], label: &str) -> Vec<Firing> {
    let marker = format!("{label} run=");
    let mut firings: Vec<Firing> = nodes
        .iter()
        .flat_map(|node| node.stdout_lines())
        .filter_map(|line| {
            let rest = line.split(&marker).nth(1)?;
            let field = |name: &str| {
                rest.split_whitespace()
                    .find_map(|part| part.strip_prefix(&format!("{name}=")))
                    .map(str::to_string)
            };
            Some(Firing {
                run: rest.split_whitespace().next()?.parse().ok()?,
                scheduled: field("scheduled")?.parse().ok()?,
                fired: field("fired")?.parse().ok()?,
                epoch: field("epoch")?.parse().ok()?,
                node: field("node")?,
            })
        })
        .collect();
    firings.sort();
    firings
}

/// Waits until the nodes' output holds at least `count` firings labelled `label`.
fn wait_for_firings(nodes: &[&Proc], label: &str, count: usize, timeout: Duration) -> Vec<Firing> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = firings(nodes, label);
        if seen.len() >= count {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{count} firings of {label} did not come within {timeout:?}; saw {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the nodes said about the cluster and their singletons, to explain a failure.
fn story(nodes: &[&Proc]) -> String {
    nodes
        .iter()
        .flat_map(|node| node.lines())
        .filter(|line| line.contains("Cluster view") || line.contains("singletons of"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that no tick was fired twice, across every node.
fn assert_each_tick_once(nodes: &[&Proc], firings: &[Firing]) {
    let ticks: BTreeSet<u64> = firings.iter().map(|firing| firing.scheduled).collect();
    assert_eq!(
        ticks.len(),
        firings.len(),
        "a tick fired twice: {firings:#?}\n{}",
        story(nodes)
    );
}

#[test]
fn a_node_fires_jobs_refuses_bad_cron_and_shows_its_jobs() {
    let base = Base::installed();
    base.deploy(&probe(), Some("ticker"));
    base.deploy(&probe(), Some("badcron"));
    let offset = free_offset();
    let node = base.run(base.node_args("solo", offset));
    let refused = node.wait_for("refused:", BUILD_PATIENCE);
    assert!(
        refused.contains(r#"invalid cron expression "*/5 * 25 * * ?": field 3 (hour) is "25""#),
        "the error points at the bad field: {refused}"
    );
    let never = node.wait_for("never:", PATIENCE);
    assert!(
        never.contains("the job would never fire (once in 1s, until "),
        "{never}"
    );
    let ticks = wait_for_firings(&[&node], "tick", 4, PATIENCE);
    assert_each_tick_once(&[&node], &ticks);
    for pair in ticks.windows(2) {
        assert_eq!(pair[1].scheduled - pair[0].scheduled, 1000, "one a second");
    }
    for tick in &ticks {
        assert!(tick.scheduled % 1000 == 0, "ticks fall on whole seconds");
        assert!(
            tick.fired >= tick.scheduled,
            "no tick fires early: {tick:?}"
        );
    }

    let jobs = get_json_at(9990 + offset, "jobs");
    let job = &jobs[0];
    assert_eq!(job["app"], "ticker", "{jobs}");
    assert_eq!(job["name"], "tick");
    assert_eq!(job["schedule"], "*/1 * * * * ?");
    assert_eq!(job["fires_on"], "solo");
    assert!(job["next_ms"].as_u64().is_some(), "{jobs}");
    assert_eq!(job["last"]["outcome"], "ok", "{jobs}");

    let list = base.cli(["list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("job tick: */1 * * * * ? (singleton, fires on solo); next in"),
        "{list}"
    );
    assert!(list.contains("last run #"), "{list}");
}

#[test]
fn a_singleton_cron_job_fires_once_per_tick_across_three_nodes_and_fails_over() {
    ticks_once_across_a_failover(&[]);
}

#[test]
fn on_nats_a_singleton_cron_job_fires_once_per_tick_and_fails_over() {
    let nats = NatsCluster::start(3, Release::Current);
    ticks_once_across_a_failover(&nats.engine_args());
}

/// Three nodes started with `engine`: a singleton cron job fires once a second, each tick on
/// one node once, and goes on elsewhere, counting on, when its node is killed.
fn ticks_once_across_a_failover(engine: &[String]) {
    let base = Base::installed();
    base.deploy(&probe(), Some("ticker"));
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset(), free_offset()];
    let one = clustered_with(&base, "one", offsets[0], &cluster, engine);
    let two = clustered_with(&base, "two", offsets[1], &cluster, engine);
    let three = clustered_with(&base, "three", offsets[2], &cluster, engine);
    let all = [&one, &two, &three];
    let first = wait_for_firings(&all, "tick", 1, BUILD_PATIENCE);
    // Ten seconds of ticks, counted over every node's output.
    let started = first[0].scheduled;
    std::thread::sleep(Duration::from_secs(10));
    let ticks = firings(&all, "tick");
    assert_each_tick_once(&all, &ticks);
    let in_window = ticks
        .iter()
        .filter(|tick| tick.scheduled > started && tick.scheduled <= started + 10_000)
        .count();
    assert!(
        (9..=10).contains(&in_window),
        "one firing a tick over 10 s: {ticks:#?}"
    );
    let firing_node = ticks.last().unwrap().node.clone();
    assert!(
        ticks.iter().all(|tick| tick.node == firing_node),
        "one node fires them all: {ticks:#?}"
    );

    let index = ["one", "two", "three"]
        .iter()
        .position(|name| *name == firing_node)
        .unwrap();
    let killed_at = Instant::now();
    kill_9(offsets[index]);
    let before = ticks.len();
    let after = wait_for_firings(&all, "tick", before + 3, FAILOVER_BOUND + PATIENCE);
    assert!(
        killed_at.elapsed() < FAILOVER_BOUND + Duration::from_secs(3),
        "the job went on within {FAILOVER_BOUND:?}"
    );
    assert_each_tick_once(&all, &after);
    let successor = after.last().unwrap();
    assert_ne!(successor.node, firing_node, "{after:#?}");
    assert!(
        successor.epoch > ticks.last().unwrap().epoch,
        "a new epoch: {after:#?}"
    );
    assert!(
        after.windows(2).all(|pair| pair[1].run == pair[0].run + 1),
        "the count of firings goes on: {after:#?}"
    );
}

#[test]
fn a_job_repeated_5_times_fires_exactly_6_times_across_a_failover() {
    let base = Base::installed();
    base.deploy(&probe(), Some("repeater"));
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset()];
    let one = clustered(&base, "one", offsets[0], &cluster);
    let two = clustered(&base, "two", offsets[1], &cluster);
    let fired = wait_for_firings(&[&one, &two], "repeat", 2, BUILD_PATIENCE);
    // Kill the node firing it (the oldest, unless the two had not yet seen each other).
    let firing_node = fired.last().unwrap().node.clone();
    let (killed, survivor) = match firing_node.as_str() {
        "one" => (offsets[0], "two"),
        _ => (offsets[1], "one"),
    };
    kill_9(killed);
    let all = wait_for_firings(&[&one, &two], "repeat", 6, FAILOVER_BOUND + PATIENCE);
    // Time for a seventh firing, were there one.
    std::thread::sleep(Duration::from_secs(3));
    let all_after = firings(&[&one, &two], "repeat");
    assert_eq!(
        all_after,
        all,
        "no firing after the sixth\n{}",
        story(&[&one, &two])
    );
    let runs: Vec<u64> = all.iter().map(|firing| firing.run).collect();
    assert_eq!(runs, [1, 2, 3, 4, 5, 6], "{all:#?}");
    assert!(
        all.iter().any(|firing| firing.node == survivor),
        "the survivor fired the rest: {all:#?}"
    );
}

#[test]
fn the_jobs_template_counter_only_increases_across_kill_9_of_any_node() {
    tally_only_increases(&[]);
}

#[test]
fn on_nats_the_jobs_template_counter_only_increases_across_kill_9_of_any_node() {
    let nats = NatsCluster::start(3, Release::Current);
    tally_only_increases(&nats.engine_args());
}

/// The jobs template on two nodes started with `engine`, each killed in turn: its counter (a
/// singleton job's, in a cache) goes on from where it was, never back.
fn tally_only_increases(engine: &[String]) {
    let base = Base::installed();
    let project = base.new_project_from("tally", "jobs");
    base.deploy(&project, None);
    let cluster = cluster_name();
    let names = ["one", "two"];
    let offsets = [free_offset(), free_offset()];
    let start = |i: usize| clustered_with(&base, names[i], offsets[i], &cluster, engine);
    let mut nodes = [start(0), start(1)];
    // Whichever node counts (the oldest on the embedded engine, the first to take the lease
    // on NATS).
    let deadline = Instant::now() + BUILD_PATIENCE;
    let counting = loop {
        let counts = |i: usize| numbers_after(&nodes[i].stdout_lines(), "[tally] count:");
        if let Some(i) = (0..2).find(|i| counts(*i).contains(&3)) {
            break i;
        }
        assert!(Instant::now() < deadline, "nothing counted to 3");
        std::thread::sleep(Duration::from_millis(100));
    };
    let other = 1 - counting;

    // Kill the node counting; the other goes on.
    kill_9(offsets[counting]);
    let _ = nodes[counting].wait_exit(PATIENCE);
    let counted = numbers_after(&nodes[counting].stdout_lines(), "[tally] count:");
    let last = *counted.last().unwrap();
    nodes[other].wait_for(
        &format!("[tally] count: {}", last + 2),
        FAILOVER_BOUND + PATIENCE,
    );

    // It comes back, and then the other one dies: the count goes on again.
    nodes[counting] = start(counting);
    nodes[counting].wait_for("Deployed \"tally\"", PATIENCE);
    // Back in the cluster, and holding the count (the cache's entry) to go on from.
    nodes[counting].wait_for_line("no view of both nodes", PATIENCE, |line| {
        view(line).is_some_and(|mut view| {
            view.sort_unstable();
            view == names
        })
    });
    eventually("the node back holding the count", PATIENCE, || {
        cache_entries(offsets[counting], "counts") == Some(1)
    });
    kill_9(offsets[other]);
    let counted_other = numbers_after(&nodes[other].stdout_lines(), "[tally] count:");
    let last_other = *counted_other.last().unwrap();
    nodes[counting].wait_for(
        &format!("[tally] count: {}", last_other + 2),
        FAILOVER_BOUND + PATIENCE,
    );

    let mut all = counted;
    all.extend(counted_other);
    all.extend(numbers_after(
        &nodes[counting].stdout_lines(),
        "[tally] count:",
    ));
    assert!(
        all.windows(2).all(|pair| pair[1] > pair[0]),
        "the count only ever increases: {all:?}"
    );
}

/// The members a `Cluster view: [a, b] (...)` line names.
fn view(line: &str) -> Option<Vec<&str>> {
    let names = line.split("Cluster view: [").nth(1)?.split(']').next()?;
    Some(names.split(", ").filter(|name| !name.is_empty()).collect())
}

/// How many entries the node at `offset` holds of the cache `name`, as its management API says
/// (none if it has no such cache).
fn cache_entries(offset: u16, name: &str) -> Option<u64> {
    let caches = get_json_at(9990 + offset, "caches");
    caches
        .as_array()?
        .iter()
        .find(|cache| cache["name"] == name)?["entries"]
        .as_u64()
}

#[test]
fn a_firing_later_than_the_misfire_threshold_runs_once_not_once_per_missed_tick() {
    let base = Base::installed();
    base.deploy(&probe(), Some("ticker"));
    let offset = free_offset();
    let mut args = base.node_args("solo", offset);
    args.push("-Dimmutant.jobs.misfire-threshold=500".to_string());
    let node = base.run(args);
    let before = wait_for_firings(&[&node], "tick", 3, BUILD_PATIENCE);
    // The node sleeps through three ticks and more.
    let pid = get_json_at(9990 + offset, "")["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(3_500));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let after = wait_for_firings(&[&node], "tick", before.len() + 3, PATIENCE);
    let missed = after[before.len()].clone();
    assert!(
        missed.fired - missed.scheduled > 500,
        "the first tick after the pause is the misfire: {after:#?}"
    );
    let next = &after[before.len() + 1];
    assert!(
        next.scheduled > missed.fired && next.fired - next.scheduled < 500,
        "one run for the missed ticks, then on time from then: {after:#?}"
    );
    assert_each_tick_once(&[&node], &after);
}

/// The jobs template on three nodes: the node counting is paused with SIGSTOP for 4 s (its
/// server and app), and later the node counting then (its server only). No count is printed
/// twice, each node's counts only increase, and the count goes on after each pause.
#[test]
fn the_jobs_template_counter_never_repeats_a_tick_across_pauses_of_the_counting_node() {
    let base = Base::installed();
    let project = base.new_project_from("tally", "jobs");
    base.deploy(&project, None);
    let cluster = cluster_name();
    let names = ["one", "two", "three"];
    let offsets = [free_offset(), free_offset(), free_offset()];
    let nodes: Vec<_> = (0..3)
        .map(|i| clustered_with(&base, names[i], offsets[i], &cluster, &[]))
        .collect();
    let counts = |i: usize| numbers_after(&nodes[i].stdout_lines(), "[tally] count:");
    // The node that printed the highest count, once the count has reached `at_least`.
    let counting = |at_least: u64| {
        let deadline = Instant::now() + BUILD_PATIENCE;
        loop {
            let highest = (0..3)
                .filter_map(|i| Some((*counts(i).iter().max()?, i)))
                .max();
            if let Some((count, i)) = highest.filter(|(count, _)| *count >= at_least) {
                break (count, i);
            }
            assert!(Instant::now() < deadline, "nothing counted to {at_least}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (count, first) = counting(3);
    let [server, app] = server_and_app(offsets[first]);
    signal(&[server, app], libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    signal(&[server, app], libc::SIGCONT);
    let (count, second) = counting(count + 4);
    let [server, _] = server_and_app(offsets[second]);
    signal(&[server], libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    signal(&[server], libc::SIGCONT);
    counting(count + 4);

    let mut all: Vec<u64> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mine = counts(i);
        assert!(
            mine.windows(2).all(|pair| pair[1] > pair[0]),
            "{name}'s counts only increase: {mine:?}"
        );
        all.extend(mine);
    }
    let mut seen = BTreeSet::new();
    let repeated: Vec<u64> = all
        .iter()
        .filter(|count| !seen.insert(**count))
        .copied()
        .collect();
    assert!(
        repeated.is_empty(),
        "ticks counted twice: {repeated:?} (all: {all:?})"
    );
}
