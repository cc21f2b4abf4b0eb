//! The NATS engine: clustered nodes started with `-Dimmutant.engine=nats://...` keep their
//! queues, membership and singleton leases in a three-server NATS JetStream cluster on loopback
//! (Debian's nats-server, started here), with every stream and bucket on all three servers.

use std::time::{Duration, Instant};

use immutant_e2e::nats::{NatsCluster, Release};
use immutant_e2e::netns::Lan;
use immutant_e2e::singletons::{
    Runners, holder, now_us, server_and_app, signal, single_runs, ticks,
};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered_with, counts, free_offset,
    get_json_at, kill_9, numbers_after, probe,
};

/// The failover bound the tests hold nodes to.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// A clustered node of the base's install on `nats`'s engine, started.
fn on_nats(base: &Base, nats: &NatsCluster, name: &str, offset: u16, cluster: &str) -> Proc {
    clustered_with(base, name, offset, cluster, &nats.engine_args())
}

/// A clustered node of the base's install on `nats`'s engine, with `extra` arguments, not
/// waited for (it may be refused).
fn run_on_nats(base: &Base, nats: &NatsCluster, name: &str, offset: u16, extra: &[String]) -> Proc {
    let mut args = vec!["--clustered".to_string()];
    args.extend(base.node_args(name, offset));
    args.extend(nats.engine_args());
    args.extend_from_slice(extra);
    base.run(args)
}

/// Whether the node's last word on the app's singletons is that they run there.
fn runs_singletons(node: &Proc) -> bool {
    node.lines()
        .iter()
        .rev()
        .find(|line| line.contains("The singletons of example"))
        .is_some_and(|line| line.contains("run on this node now"))
}

/// The epoch a "run on this node now (epoch N)" line gives.
fn epoch(line: &str) -> u64 {
    line.split("(epoch ")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {line}"))
}

/// Waits until every number sent (in `lines`) was received at least as often as sent.
fn nothing_lost(lines: impl Fn() -> Vec<String>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = lines();
        let sent = counts(numbers_after(&lines, "sending: "));
        let received = counts(numbers_after(&lines, "received: "));
        let missing: Vec<u64> = sent
            .iter()
            .filter(|(n, times)| received.get(n).copied().unwrap_or(0) < **times)
            .map(|(n, _)| *n)
            .collect();
        if missing.is_empty() && !sent.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "never received: {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_seed_tutorial_runs_on_nats_and_fails_over_when_a_node_is_killed() {
    let nats = NatsCluster::start(3, Release::Current);
    let base = Base::installed();
    let project = base.new_project("example");
    base.deploy(&project, None);
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset()];
    let one = on_nats(&base, &nats, "one", offsets[0], &cluster);
    let two = on_nats(&base, &nats, "two", offsets[1], &cluster);
    for node in [&one, &two] {
        node.wait_for("on NATS at nats://", Duration::ZERO);
        node.wait_for("Cluster view: [one, two]", PATIENCE);
        node.wait_for("Deployed \"example\"", BUILD_PATIENCE);
    }

    // Both nodes take messages from the one queue; the daemon runs on exactly one.
    let deadline = Instant::now() + PATIENCE;
    while numbers_after(&one.lines(), "received: ").len() < 2
        || numbers_after(&two.lines(), "received: ").len() < 2
    {
        assert!(
            Instant::now() < deadline,
            "both nodes receive:\n{}\n----\n{}",
            one.text(),
            two.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (holder, holder_offset, survivor, survivor_offset) =
        match (runs_singletons(&one), runs_singletons(&two)) {
            (true, false) => (one, offsets[0], two, offsets[1]),
            (false, true) => (two, offsets[1], one, offsets[0]),
            _ => panic!(
                "the daemon must run on exactly one node:\n{}\n----\n{}",
                one.text(),
                two.text()
            ),
        };
    let holder_name = get_json_at(9990 + holder_offset, "status")["name"]
        .as_str()
        .unwrap()
        .to_string();
    for offset in offsets {
        let status = get_json_at(9990 + offset, "status");
        let view: Vec<&str> = status["cluster"]["view"]
            .as_array()
            .unwrap()
            .iter()
            .map(|member| member["name"].as_str().unwrap())
            .collect();
        assert_eq!(view, ["one", "two"], "{status}");
        let engine = &status["cluster"]["engine"];
        assert_eq!(engine["kind"], "nats", "{status}");
        assert_eq!(engine["connected"], true, "{status}");
        assert_eq!(
            status["singletons"][0]["node"],
            holder_name.as_str(),
            "{status}"
        );
    }
    let given = holder.wait_for(
        "The singletons of example run on this node now",
        Duration::ZERO,
    );

    // Kill -9 the daemon's node: the other takes the lease over, with a greater epoch.
    kill_9(holder_offset);
    let killed = Instant::now();
    let taken = survivor.wait_for(
        "The singletons of example run on this node now",
        FAILOVER_BOUND,
    );
    println!("failover took {:?}", killed.elapsed());
    assert!(epoch(&taken) > epoch(&given), "{given} then {taken}");
    let taken_over_at = survivor.lines().len();
    survivor.wait_for("[example] sending: 3", PATIENCE);
    survivor.wait_for("Cluster view: [", PATIENCE);
    assert_eq!(
        get_json_at(9990 + survivor_offset, "deployments")[0]["singletons_on"],
        if holder_name == "one" { "two" } else { "one" }
    );
    assert!(
        survivor.lines()[taken_over_at..]
            .iter()
            .any(|line| line.contains("received:"))
    );

    // No number is lost: each one sent is received at least as often as it was sent (what the
    // killed node had in flight comes back from JetStream).
    let before = holder.lines();
    drop(holder);
    nothing_lost(|| {
        let mut lines = before.clone();
        lines.extend(survivor.lines());
        lines
    });
}

#[test]
fn a_node_that_cannot_reach_nats_says_so_and_stops() {
    let base = Base::installed();
    let unused = free_offset();
    let url = format!("nats://127.0.0.1:{}", 4222 + unused);
    let mut args = vec!["--clustered".to_string()];
    args.extend(base.node_args("lonely", free_offset()));
    args.push(format!("-Dimmutant.engine={url}"));
    let mut node = base.run(args);
    let status = node.wait_exit(PATIENCE);
    assert!(!status.success());
    let text = node.text();
    assert!(
        text.contains(&format!("cannot reach NATS at {url}")) && text.contains("nats-server -js"),
        "{text}"
    );
}

#[test]
fn caches_topics_and_requests_work_across_nodes_on_nats() {
    let nats = NatsCluster::start(3, Release::Current);
    let base = Base::installed();
    for app in ["swapper", "herald", "asker"] {
        base.deploy(&probe(), Some(app));
    }
    let cluster = cluster_name();
    let node = |name: &str, extra: &[&str]| {
        let mut args = nats.engine_args();
        args.push("-Dprobe.swaps=100".to_string());
        args.extend(extra.iter().map(|arg| arg.to_string()));
        clustered_with(&base, name, free_offset(), &cluster, &args)
    };
    let one = node("one", &["-Dprobe.respond=yes"]);
    let two = node("two", &[]);
    let three = node("three", &[]);
    let nodes = [&one, &two, &three];
    // Every swap of every node counts: the cache is one key-value bucket in NATS, and each
    // swap a compare-and-set on the key's revision.
    for node in nodes {
        node.wait_for("[swapper] swaps done", BUILD_PATIENCE);
    }
    for node in nodes {
        node.wait_for("[swapper] total: 300", PATIENCE);
    }
    for node in nodes {
        for from in ["one", "two", "three"] {
            node.wait_for(&format!("[herald] heard: {from}:"), PATIENCE);
        }
    }
    for node in [&two, &three] {
        let name = if std::ptr::eq(node, &two) {
            "two"
        } else {
            "three"
        };
        node.wait_for(
            &format!("[asker] answer: ping from {name} answered by one"),
            PATIENCE,
        );
    }
}

#[test]
fn a_message_that_always_fails_goes_to_the_dead_letter_queue_on_nats() {
    let nats = NatsCluster::start(1, Release::Debian);
    let base = Base::installed();
    base.deploy(&probe(), Some("dlq"));
    let offset = free_offset();
    let node = clustered_with(&base, "solo", offset, &cluster_name(), &nats.engine_args());
    node.wait_for(
        "[dlq] dead-lettered: doomed because the handler always fails",
        BUILD_PATIENCE,
    );
    let attempts = numbers_after(&node.lines(), "attempt ");
    assert_eq!(
        attempts,
        (1..=10).collect::<Vec<u64>>(),
        "ten deliveries, then the DLQ"
    );
    let failing = || {
        get_json_at(9990 + offset, "queues")
            .as_array()
            .unwrap()
            .iter()
            .find(|queue| queue["name"] == "/queue/failing")
            .cloned()
            .unwrap()
    };
    assert_eq!(failing()["dead_lettered"], 1);
    immutant_e2e::eventually("the queue is empty", PATIENCE, || failing()["depth"] == 0);
}

#[test]
fn requests_and_receives_on_nats_pass_over_an_expired_message() {
    let nats = NatsCluster::start(1, Release::Debian);
    let base = Base::installed();
    base.deploy(&probe(), Some("reqrep"));
    let node = clustered_with(
        &base,
        "solo",
        free_offset(),
        &cluster_name(),
        &nats.engine_args(),
    );
    node.wait_for("[reqrep] reply: echo: hello", BUILD_PATIENCE);
    // The queue holds only a message past its time to live: the receive is answered with none.
    node.wait_for("[reqrep] receive on an empty queue: None", PATIENCE);
    node.wait_for("[reqrep] receive: Some(\"parcel\")", PATIENCE);
}

#[test]
fn a_nats_server_that_cannot_serialize_replicated_writes_is_refused_copies() {
    let nats = NatsCluster::start(1, Release::Debian);
    let base = Base::installed();
    let mut args = vec!["--clustered".to_string()];
    args.extend(base.node_args("careful", free_offset()));
    args.push(format!("-Dimmutant.engine={}", nats.url()));
    args.push("-Dimmutant.engine.replicas=3".to_string());
    let mut node = base.run(args);
    assert!(!node.wait_exit(PATIENCE).success());
    let text = node.text();
    assert!(
        text.contains("nats-server 2.9.10")
            && text.contains("nats-server#4320")
            && text.contains("-Dimmutant.engine.replicas=1"),
        "{text}"
    );
}

#[test]
fn kill_9_of_a_nats_server_under_publish_load_loses_nothing_and_publishing_goes_on() {
    let mut nats = NatsCluster::start(3, Release::Current);
    let base = Base::installed();
    base.deploy(&probe(), Some("loadq"));
    base.deploy(&probe(), Some("runner"));
    let cluster = cluster_name();
    let ticks_file = base.path().join("ticks");
    let mut args = nats.engine_args();
    args.push(format!("-Dprobe.ticks={}", ticks_file.display()));
    let nodes = [
        clustered_with(&base, "one", free_offset(), &cluster, &args),
        clustered_with(&base, "two", free_offset(), &cluster, &args),
    ];
    for node in &nodes {
        node.wait_for("[loadq] took: ", BUILD_PATIENCE);
    }
    let items = |marker: &str| -> Vec<String> {
        nodes
            .iter()
            .flat_map(|node| node.lines())
            .filter_map(|line| Some(line.split_once(marker)?.1.trim().to_string()))
            .collect()
    };
    // Each server in turn is killed under load, and started again with its store.
    for server in 0..3 {
        let before = items("[loadq] loaded: ").len();
        immutant_e2e::eventually("load before the kill", PATIENCE, || {
            items("[loadq] loaded: ").len() > before + 200
        });
        nats.kill_9(server);
        // Publishing goes on with one server gone.
        let at_kill = items("[loadq] loaded: ").len();
        immutant_e2e::eventually("load with a server gone", PATIENCE, || {
            items("[loadq] loaded: ").len() > at_kill + 200
        });
        nats.restart(server);
    }
    // The singleton never ran twice, and runs (it stops while the servers elect a new leader
    // of the leases bucket, if the one killed led it, for longer than a lease).
    let runs = single_runs(&ticks(&ticks_file));
    println!("singleton runs: {runs:?}");
    immutant_e2e::eventually("the singleton running again", PATIENCE, || {
        ticks(&ticks_file)
            .iter()
            .any(|tick| now_us().saturating_sub(tick.at_us) < 100_000)
    });
    // Every message whose publish returned is taken, at least once.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let loaded = items("[loadq] loaded: ");
        let taken: std::collections::HashSet<String> =
            items("[loadq] took: ").into_iter().collect();
        let lost: Vec<&String> = loaded
            .iter()
            .filter(|item| !taken.contains(*item))
            .collect();
        if lost.is_empty() {
            println!("{} published, every one taken", loaded.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} published but never taken, such as {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn pausing_the_singletons_node_on_nats_never_runs_it_twice() {
    let nats = NatsCluster::start(3, Release::Current);
    let pair = Runners::pair_with(&nats.engine_args());
    for trial in 1..=3 {
        let before = holder(&pair.ticks);
        let (offset, node) = pair.node(&before);
        let paused = server_and_app(offset);
        signal(&paused, libc::SIGSTOP);
        std::thread::sleep(Duration::from_secs(4));
        signal(&paused, libc::SIGCONT);
        std::thread::sleep(Duration::from_secs(3));
        let after = holder(&pair.ticks);
        let runs = single_runs(&ticks(&pair.ticks));
        println!("trial {trial}: {before} -> {after}; runs {runs:?}");
        assert_ne!(after, before, "trial {trial}: no takeover");
        let deposed = runs
            .iter()
            .rev()
            .find(|run| run.node == before)
            .unwrap()
            .epoch;
        let said = node.wait_for(&format!("publish under old epoch {deposed}:"), PATIENCE);
        assert!(
            said.contains("the work was not done"),
            "trial {trial}: a deposed runner's publish was not refused:\n{said}"
        );
    }
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]
fn a_singleton_node_cut_off_from_nats_stops_before_another_starts_and_it_stays_there() {
    let lan = Lan::make(5);
    let nats = NatsCluster::start_in(&lan, &[0, 1, 2], Release::Current);
    let base = Base::installed();
    base.deploy(&probe(), Some("runner"));
    let ticks_file = base.path().join("ticks");
    let cluster = cluster_name();
    let mut extra = nats.engine_args();
    extra.push(format!("-Dprobe.ticks={}", ticks_file.display()));
    let nodes = [
        lan.node(&base, 3, ("one", &cluster), &extra),
        lan.node(&base, 4, ("two", &cluster), &extra),
    ];
    for node in &nodes {
        node.wait_for("Cluster view: [one, two]", PATIENCE);
        node.wait_for("Deployed \"runner\"", BUILD_PATIENCE);
    }
    let before = holder(&ticks_file);
    let cut = if before == "one" { 0 } else { 1 };
    lan.cut(3 + cut);
    nodes[cut].wait_for(
        "The singletons of runner no longer run on this node",
        FAILOVER_BOUND,
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = holder(&ticks_file);
    assert_ne!(after, before, "the node still reaching NATS took over");
    let runs = single_runs(&ticks(&ticks_file));
    println!("cut {before}: {after} runs it; runs {runs:?}");

    lan.heal(3 + cut);
    nodes[cut].wait_for("Heartbeats reach NATS again", PATIENCE);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        holder(&ticks_file),
        after,
        "nothing moved back after the heal"
    );
    let runs = single_runs(&ticks(&ticks_file));
    println!("healed: runs {runs:?}");
}

#[test]
fn nats_that_asks_for_a_token_lets_in_only_a_node_given_it_in_a_file() {
    let token = "t0ken-for-the-test";
    let nats = NatsCluster::start_guarded(Release::Debian, token);
    let base = Base::installed();
    // Without the token: refused, and said so (with the URL, not the token).
    let mut stranger = run_on_nats(&base, &nats, "stranger", free_offset(), &[]);
    assert!(!stranger.wait_exit(PATIENCE).success());
    let text = stranger.text();
    assert!(
        text.contains(&format!("NATS at {} refused this node", nats.url()))
            && text.contains("-Dimmutant.engine.credentials"),
        "{text}"
    );
    // With it in a file: in; the token is in no log line and no answer.
    let file = base.path().join("nats.token");
    std::fs::write(&file, token).unwrap();
    let given = [format!("-Dimmutant.engine.credentials={}", file.display())];
    let offset = free_offset();
    let member = run_on_nats(&base, &nats, "member", offset, &given);
    member.wait_for("started in", PATIENCE);
    member.wait_for("Cluster view: [member]", PATIENCE);
    let status = get_json_at(9990 + offset, "status");
    assert_eq!(status["cluster"]["engine"]["connected"], true, "{status}");
    for text in [
        member.text(),
        status.to_string(),
        get_json_at(9990 + offset, "").to_string(),
    ] {
        assert!(!text.contains(token), "the token shows: {text}");
    }
}

#[test]
fn nats_over_tls_lets_in_a_node_given_its_ca_and_says_what_to_give_otherwise() {
    let nats = NatsCluster::start_tls(Release::Debian);
    let ca = nats.ca_file().expect("the servers speak TLS");
    let base = Base::installed();
    let project = base.new_project("example");
    base.deploy(&project, None);
    let cluster = cluster_name();

    // Without the CA that signed the server's certificate: stops, and says what to give.
    let mut stranger = run_on_nats(&base, &nats, "stranger", free_offset(), &[]);
    assert!(!stranger.wait_exit(PATIENCE).success());
    let text = stranger.text();
    assert!(
        text.contains(&format!(
            "NATS at {} and this node could not agree on TLS",
            nats.url()
        )) && text.contains("-Dimmutant.engine.ca-file"),
        "{text}"
    );

    // Given it: the seed app's messages and singleton go through NATS over TLS.
    let mut args = nats.engine_args();
    args.push(format!("-Dimmutant.engine.ca-file={}", ca.display()));
    let offset = free_offset();
    let member = clustered_with(&base, "member", offset, &cluster, &args);
    member.wait_for("on NATS at tls://", Duration::ZERO);
    member.wait_for("Deployed \"example\"", BUILD_PATIENCE);
    member.wait_for("received: 2", PATIENCE);
    let status = get_json_at(9990 + offset, "status");
    assert_eq!(status["cluster"]["engine"]["connected"], true, "{status}");
}
