//! A cache's compare-and-set never loses an update, whatever happens to its primary (issue 26).
//! Three clustered nodes of one install run the probe's `casclient`: once the cluster has
//! formed, four clients on each node read the key `counter` with `get_latest` and add one to it
//! by compare-and-set, recording every invocation and answer in a history file per app
//! (`immutant_e2e::cas`). After about 3 s a fault strikes the cache's primary (the oldest node,
//! `one`): kill -9 and a restart, a pause with SIGSTOP of its server and app, or of its server
//! alone, or a partition; a distributed cache's nodes (whose primary for the key the test cannot
//! tell) are each paused in turn. The clients go on for about 5 s more, then stop, and each app
//! reads the counter once more. The run must then be linearizable, no value may have been won
//! twice, and the final value must lie between the compare-and-sets won and those and the ones
//! of unknown outcome. Cut off from a majority (a quorum of 2 of 3), the old primary's clients
//! must win nothing once its lease has lapsed, while the majority's go on winning; and after
//! every fault, the cache must go on taking writes. Nodes that start together and open the
//! cache in the same moment, their clients writing at once, must have one primary from the
//! first write. The same clients run on the NATS engine, across a kill -9 of one node and a
//! pause of another.
//!
//! A failure prints the evidence (the values won twice and who won them, the checker's
//! violation, the timeline of the faults) and keeps the histories under
//! `target/tmp/cache_cas/<test>/`. `cargo test -p immutant-e2e --test cache_cas`; the partition
//! test runs only when built as root.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use immutant_e2e::cas::{CHECK_BUDGET, Recorded, now_ns};
use immutant_e2e::nats::{NatsCluster, Release};
use immutant_e2e::netns::Lan;
use immutant_e2e::singletons::{server_and_app, signal};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered_with, free_offset, kill_9, probe,
};

/// The nodes, oldest first: `one` is the replicated cache's primary.
const NAMES: [&str; 3] = ["one", "two", "three"];

/// How long the clients run before the fault, and after it.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(5);

/// How long a pause lasts.
const PAUSE: Duration = Duration::from_secs(4);

/// How long a partition lasts.
const CUT: Duration = Duration::from_secs(10);

/// How long a cut-off primary's lease may legitimately outlive the cut: its clients' wins
/// invoked later than this after the cut are counted against it.
const LEASE_GRACE: Duration = Duration::from_millis(1500);

/// How long after the cut the majority must be winning.
const TAKEOVER: Duration = Duration::from_secs(5);

/// How long each client waits after each compare-and-set, in ms: unpaced, twelve clients make
/// some 16,000 operations a second, whose history takes the checker minutes to refute; paced,
/// they still race (a read and a compare-and-set take about half a millisecond).
const PACE_MS: u64 = 3;

/// How long the cluster settles, once formed, before the clients start.
const SETTLE: Duration = Duration::from_secs(1);

/// Where the nodes run.
enum Place<'a> {
    /// On 127.0.0.1, at free port offsets.
    Loopback,
    /// Node `i` in host `i` of a LAN of network namespaces, bound to the host's address.
    Lan(&'a Lan),
}

/// When the clients start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Once the three nodes see each other and have settled.
    Formed,
    /// As soon as each app has opened the cache: the nodes start together and open it in the
    /// same moment, before they see each other.
    AtOnce,
}

/// What a pause stops.
#[derive(Debug, Clone, Copy)]
enum Paused {
    /// The node's server and its app.
    Node,
    /// The node's server alone.
    Server,
}

/// Three clustered nodes running `casclient`, and what happened to them when.
struct Run<'a> {
    base: Base,
    place: Place<'a>,
    cluster: String,
    offsets: [u16; 3],
    /// Every node's arguments past its name, offset, data dir and cluster.
    args: Vec<String>,
    nodes: Vec<Proc>,
    dir: PathBuf,
    stop: PathBuf,
    /// What the test did, when (ns since the Unix epoch).
    marks: Vec<(u64, String)>,
}

impl<'a> Run<'a> {
    /// Three nodes in `place` with `more` arguments (the engine's, the quorum), running
    /// `casclient` on a cache of `mode`, all in one view and every client running (started
    /// as `start` says).
    fn start(place: Place<'a>, mode: &str, more: &[String]) -> Run<'a> {
        Run::started(place, mode, more, Start::Formed)
    }

    fn started(place: Place<'a>, mode: &str, more: &[String], start: Start) -> Run<'a> {
        let base = Base::installed();
        base.deploy(&probe(), Some("casclient"));
        let dir = base.path().join("cas");
        std::fs::create_dir_all(&dir).expect("the histories' folder");
        let stop = base.path().join("cas-stop");
        let mut args = vec![
            format!("-Dprobe.cas.dir={}", dir.display()),
            format!("-Dprobe.cas.stop={}", stop.display()),
            format!("-Dprobe.cas.mode={mode}"),
            format!("-Dprobe.cas.pace-ms={PACE_MS}"),
        ];
        args.extend_from_slice(more);
        let offsets = match place {
            Place::Loopback => [free_offset(), free_offset(), free_offset()],
            Place::Lan(_) => [0; 3],
        };
        let mut run = Run {
            base,
            place,
            cluster: cluster_name(),
            offsets,
            args,
            nodes: Vec::new(),
            dir,
            stop,
            marks: Vec::new(),
        };
        let go = PathBuf::from(format!("{}.go", run.stop.display()));
        if start == Start::AtOnce {
            run.mark("go");
            std::fs::write(&go, b"").expect("the go file");
        }
        for i in 0..NAMES.len() {
            let node = run.spawn(i);
            run.nodes.push(node);
        }
        for node in &run.nodes {
            node.wait_for("(3 members, oldest one)", PATIENCE);
            node.wait_for("[casclient] casclient ready", BUILD_PATIENCE);
        }
        if start == Start::Formed {
            // The clients start once the cluster has formed and settled: a fault is what
            // strikes it then.
            std::thread::sleep(SETTLE);
            run.mark("go");
            std::fs::write(&go, b"").expect("the go file");
        }
        run
    }

    /// Node `i`, started.
    fn spawn(&self, i: usize) -> Proc {
        match self.place {
            Place::Loopback => clustered_with(
                &self.base,
                NAMES[i],
                self.offsets[i],
                &self.cluster,
                &self.args,
            ),
            Place::Lan(lan) => lan.node(&self.base, i, (NAMES[i], &self.cluster), &self.args),
        }
    }

    fn mark(&mut self, what: &str) {
        self.marks.push((now_ns(), what.to_string()));
    }

    /// Kills node `i` with SIGKILL and starts it again, its clients running.
    fn kill_and_restart(&mut self, i: usize) {
        self.mark(&format!("kill -9 of {}", NAMES[i]));
        kill_9(self.offsets[i]);
        self.nodes[i].wait_exit(PATIENCE);
        std::thread::sleep(Duration::from_secs(1));
        self.mark(&format!("{} starting again", NAMES[i]));
        self.nodes[i] = self.spawn(i);
        self.nodes[i].wait_for("[casclient] casclient ready", PATIENCE);
        self.mark(&format!("{}'s clients running again", NAMES[i]));
    }

    /// Pauses `what` of node `i` with SIGSTOP for `PAUSE`, and resumes it.
    fn pause(&mut self, i: usize, what: Paused) {
        let [server, app] = server_and_app(self.offsets[i]);
        let pids = match what {
            Paused::Node => vec![server, app],
            Paused::Server => vec![server],
        };
        self.mark(&format!("SIGSTOP of {}'s {what:?}", NAMES[i]));
        signal(&pids, libc::SIGSTOP);
        std::thread::sleep(PAUSE);
        signal(&pids, libc::SIGCONT);
        self.mark(&format!("SIGCONT of {}'s {what:?}", NAMES[i]));
    }

    /// Stops every client, has every app read the counter once more, and answers what they
    /// all recorded.
    fn finish(&mut self) -> Recorded {
        self.mark("stop");
        std::fs::write(&self.stop, b"").expect("the stop file");
        for node in &self.nodes {
            node.wait_for("[casclient] casclient stopped", PATIENCE);
        }
        self.mark("every client stopped; the final reads");
        let last = PathBuf::from(format!("{}.final", self.stop.display()));
        std::fs::write(last, b"").expect("the final file");
        for node in &self.nodes {
            node.wait_for("[casclient] casclient final:", PATIENCE);
        }
        Recorded::read_dir(&self.dir).unwrap_or_else(|why| panic!("a broken history: {why}"))
    }

    /// Copies the histories where they outlive the test (under cargo's temporary folder for
    /// tests, by the test's name), and says where.
    fn keep(&self) -> String {
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .replace("::", "-");
        let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("cache_cas")
            .join(test);
        let _ = std::fs::remove_dir_all(&kept);
        let copied = std::fs::create_dir_all(&kept).and_then(|()| {
            for entry in std::fs::read_dir(&self.dir)? {
                let path = entry?.path();
                std::fs::copy(&path, kept.join(path.file_name().unwrap_or_default()))?;
            }
            Ok(())
        });
        match copied {
            Ok(()) => format!("the histories are kept in {}", kept.display()),
            Err(error) => format!("the histories could not be kept: {error}"),
        }
    }

    /// The time of the first mark that starts with `what`.
    fn at(&self, what: &str) -> u64 {
        self.marks
            .iter()
            .find(|(_, said)| said.starts_with(what))
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no mark {what:?}"))
    }

    /// Fails the test with the evidence (and `wrong`, what the test itself found) unless the
    /// run lost no update; prints its tally and timeline.
    fn judge(&self, recorded: &Recorded, mut wrong: String) {
        let origin = recorded.origin();
        // Safety alone would pass a cache that stopped taking writes: it must go on after the
        // last fault ended.
        let stop = self.at("stop");
        let last = self.marks.iter().map(|(at, _)| *at).filter(|at| *at < stop);
        if let Some(since) = last.max() {
            let went_on = recorded
                .wins()
                .filter(|operation| operation.responded.is_some_and(|at| at > since))
                .count();
            if went_on == 0 {
                let ms = (since as f64 - origin as f64) / 1e6;
                let _ = writeln!(
                    wrong,
                    "no compare-and-set won after the last fault ended ({ms:.3} ms): the cache did not go on"
                );
            }
        }
        let mut timeline = String::new();
        for (at, what) in &self.marks {
            let ms = (*at as f64 - origin as f64) / 1e6;
            let _ = writeln!(timeline, "  {ms:.3} ms: {what}");
        }
        match recorded.verdict(CHECK_BUDGET) {
            Ok(tally) if wrong.is_empty() => {
                println!(
                    "{} operations by {} clients: {tally:?}; final value {:?}\ntimeline (ms since the first invocation):\n{timeline}",
                    recorded.history.len(),
                    recorded.clients.len(),
                    recorded.final_value()
                );
                return;
            }
            Ok(_) => {}
            Err(why) => wrong.push_str(&why),
        }
        panic!(
            "a compare-and-set lost an update:\n{wrong}\ntimeline (ms since the first invocation):\n{timeline}{}",
            self.keep()
        );
    }
}

#[test]
fn kill_9_of_the_primary_and_its_restart_lose_no_compare_and_set() {
    let mut run = Run::start(Place::Loopback, "replicated", &[]);
    std::thread::sleep(BEFORE);
    run.kill_and_restart(0);
    std::thread::sleep(AFTER);
    let recorded = run.finish();
    run.judge(&recorded, String::new());
}

/// Every node opens the cache in the same moment and its clients write at once: the writes
/// wait for the cache's first primary, and none is applied to a copy merged later.
#[test]
fn nodes_opening_the_cache_together_have_one_primary_from_the_first_write() {
    let mut run = Run::started(Place::Loopback, "replicated", &[], Start::AtOnce);
    std::thread::sleep(AFTER);
    let recorded = run.finish();
    run.judge(&recorded, String::new());
}

#[test]
fn pausing_the_primary_and_its_apps_loses_no_compare_and_set() {
    let mut run = Run::start(Place::Loopback, "replicated", &[]);
    std::thread::sleep(BEFORE);
    run.pause(0, Paused::Node);
    std::thread::sleep(AFTER);
    let recorded = run.finish();
    run.judge(&recorded, String::new());
}

#[test]
fn pausing_only_the_primarys_server_loses_no_compare_and_set() {
    let mut run = Run::start(Place::Loopback, "replicated", &[]);
    std::thread::sleep(BEFORE);
    run.pause(0, Paused::Server);
    std::thread::sleep(AFTER);
    let recorded = run.finish();
    run.judge(&recorded, String::new());
}

/// A distributed key's primary is whichever of its owners rendezvous hashing puts first, which
/// the test cannot tell: each node is paused in turn, the primary among them.
#[test]
fn pausing_each_node_of_a_distributed_cache_in_turn_loses_no_compare_and_set() {
    let mut run = Run::start(Place::Loopback, "distributed", &[]);
    std::thread::sleep(BEFORE);
    for i in 0..NAMES.len() {
        run.pause(i, Paused::Node);
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(AFTER - Duration::from_secs(2));
    let recorded = run.finish();
    run.judge(&recorded, String::new());
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]
fn a_primary_cut_off_from_the_majority_wins_nothing_and_the_majority_goes_on() {
    let lan = Lan::make(3);
    let seeds: Vec<String> = (0..NAMES.len())
        .map(|i| format!("{}:7600", lan.address(i)))
        .collect();
    let more = [
        format!("-Dimmutant.cluster.seeds={}", seeds.join(",")),
        "-Dimmutant.singleton.quorum=2".to_string(),
    ];
    let mut run = Run::start(Place::Lan(&lan), "replicated", &more);
    std::thread::sleep(BEFORE);
    lan.cut(0);
    run.mark("one cut off");
    std::thread::sleep(CUT);
    run.mark("one healed");
    lan.heal(0);
    std::thread::sleep(AFTER);
    let recorded = run.finish();

    let (cut, healed) = (run.at("one cut off"), run.at("one healed"));
    let origin = recorded.origin();
    let mut wrong = String::new();
    let minority = recorded.wins_of("one", cut + LEASE_GRACE.as_nanos() as u64, healed);
    if !minority.is_empty() {
        let _ = writeln!(
            wrong,
            "one's clients won {} compare-and-sets while it was cut off (invoked {LEASE_GRACE:?} \
             or more after the cut), such as:",
            minority.len()
        );
        for operation in minority.iter().take(10) {
            let _ = writeln!(wrong, "  {}", recorded.describe(operation, origin));
        }
    }
    let majority = recorded.wins_elsewhere("one", cut + TAKEOVER.as_nanos() as u64, healed);
    println!(
        "while one was cut off: {} wins on one, {} on the majority from {TAKEOVER:?} after the cut",
        minority.len(),
        majority.len()
    );
    if majority.is_empty() {
        let _ = writeln!(
            wrong,
            "the majority won no compare-and-set from {TAKEOVER:?} after the cut to the heal"
        );
    }
    run.judge(&recorded, wrong);
}

#[test]
fn on_nats_kill_9_of_one_node_and_a_pause_of_another_lose_no_compare_and_set() {
    let nats = NatsCluster::start(3, Release::Current);
    let mut run = Run::start(Place::Loopback, "replicated", &nats.engine_args());
    std::thread::sleep(BEFORE);
    run.kill_and_restart(0);
    std::thread::sleep(BEFORE);
    run.pause(1, Paused::Node);
    std::thread::sleep(AFTER);
    let recorded = run.finish();
    run.judge(&recorded, String::new());
}
