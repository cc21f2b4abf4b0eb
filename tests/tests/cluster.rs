//! Clustered nodes: `run --clustered` nodes find each other by multicast on 127.0.0.1, agree on a
//! view, run each app's singleton daemons on the oldest member, and fail them over when that
//! member is killed.

use std::time::{Duration, Instant};

use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, apps_target_dir, cluster_name, clustered, clustered_with,
    counts, free_offset, get_json, get_json_at, kill_9, numbers_after, probe,
};

/// The failover bound the tests hold nodes to (the benchmark measures the real time).
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// The seed app, generated and deployed to the base's install.
fn deploy_example(base: &Base) {
    let project = base.new_project("example");
    base.deploy(&project, None);
}

/// The seed app deployed to a fresh install, and two clustered nodes of it, one and two:
/// the base, the cluster's name, their offsets, and the nodes.
fn example_pair() -> (Base, String, [u16; 2], Proc, Proc) {
    let base = Base::installed();
    deploy_example(&base);
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset()];
    let one = clustered(&base, "one", offsets[0], &cluster);
    let two = clustered(&base, "two", offsets[1], &cluster);
    (base, cluster, offsets, one, two)
}

/// Whether the node's last word on the app's singletons is that they run there.
fn runs_singletons(node: &Proc) -> bool {
    node.lines()
        .iter()
        .rev()
        .find(|line| line.contains("The singletons of example"))
        .is_some_and(|line| line.contains("run on this node now"))
}

#[test]
fn the_singleton_runs_on_one_node_and_fails_over_when_it_is_killed() {
    let (base, cluster, [one_offset, two_offset], one, two) = example_pair();
    one.wait_for("Cluster view: [one, two]", PATIENCE);
    two.wait_for("Cluster view: [one, two]", PATIENCE);
    one.wait_for("[example] sending: 2", BUILD_PATIENCE);
    two.wait_for("Deployed \"example\"", PATIENCE);
    assert!(
        runs_singletons(&one),
        "the oldest member runs the singleton"
    );
    assert!(!runs_singletons(&two), "and only it:\n{}", two.text());
    for offset in [one_offset, two_offset] {
        let deployments = get_json_at(9990 + offset, "deployments");
        assert_eq!(deployments[0]["singletons_on"], "one", "{deployments}");
    }

    let pid = get_json(9990 + one_offset)["pid"].as_i64().unwrap() as i32;
    let killed = Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let taken = two.wait_for(
        "The singletons of example run on this node now",
        FAILOVER_BOUND,
    );
    println!("failover took {:?}", killed.elapsed());
    let given = one.wait_for(
        "The singletons of example run on this node now",
        Duration::ZERO,
    );
    let epoch = |line: &str| -> u64 {
        line.split("(epoch ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap()
    };
    assert!(
        epoch(&taken) > epoch(&given),
        "each handover carries a greater fencing epoch"
    );
    two.wait_for("[example] sending: 0", PATIENCE);
    assert_eq!(
        get_json_at(9990 + two_offset, "deployments")[0]["singletons_on"],
        "two"
    );

    // The killed node comes back as the youngest member: the singleton stays where it is.
    drop(one);
    let again = clustered(&base, "one", one_offset, &cluster);
    again.wait_for("Cluster view: [two, one]", PATIENCE);
    again.wait_for("Deployed \"example\"", BUILD_PATIENCE);
    std::thread::sleep(Duration::from_secs(1));
    assert!(runs_singletons(&two), "no fail-back:\n{}", two.text());
    assert!(!runs_singletons(&again), "no fail-back:\n{}", again.text());
}

#[test]
fn a_graceful_stop_hands_the_singleton_over_at_once() {
    let base = Base::installed();
    deploy_example(&base);
    let cluster = cluster_name();
    let (one_offset, two_offset) = (free_offset(), free_offset());
    let mut one = clustered(&base, "one", one_offset, &cluster);
    let two = clustered(&base, "two", two_offset, &cluster);
    two.wait_for("Cluster view: [one, two]", PATIENCE);
    one.wait_for("[example] sending: 1", BUILD_PATIENCE);
    two.wait_for("Deployed \"example\"", PATIENCE);

    one.signal(libc::SIGTERM);
    assert_eq!(one.wait_exit(PATIENCE).code(), Some(0), "{}", one.text());
    one.wait_for("[example] Stopping daemon: counter", Duration::ZERO);
    two.wait_for(
        "The singletons of example run on this node now",
        FAILOVER_BOUND,
    );
    two.wait_for("Cluster view: [two]", PATIENCE);
}

#[test]
fn two_live_nodes_with_one_name_are_refused() {
    let base = Base::installed();
    let cluster = cluster_name();
    let first = clustered(&base, "twin", free_offset(), &cluster);
    let mut args = vec![
        "--clustered".to_string(),
        format!("--offset={}", free_offset()),
    ];
    args.push(format!(
        "-Djboss.server.data.dir={}",
        base.data_dir("twin-2").display()
    ));
    args.push("--node-name=twin".to_string());
    args.push(format!("-Dimmutant.cluster.name={cluster}"));
    let mut second = base.run(args);
    assert!(!second.wait_exit(PATIENCE).success(), "{}", second.text());
    second.wait_for(
        "another live node in the cluster is named 'twin'",
        Duration::ZERO,
    );
    second.wait_for("-Djboss.node.name", Duration::ZERO);
    // The first one keeps running.
    assert!(
        first
            .lines()
            .iter()
            .all(|line| !line.contains("Stopping node"))
    );
}

/// DESIGN.md's journey, as a new user types it: two clustered nodes of one install (names one and
/// two, their own data dirs, the second at offset 100), one deploy.
#[test]
fn the_seed_tutorial_boom_youre_a_cluster() {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let base = Base::installed();
    // cargo immutant new example && cd example
    let example = base.new_project("example");
    let node_command = |name: &str, extra: &[&str]| {
        let mut command = base.cli(["run", "--clustered"]);
        command
            .arg(format!("-Djboss.node.name={name}"))
            .arg(format!(
                "-Djboss.server.data.dir={}",
                base.path().join(name).display()
            ))
            .args(extra)
            .current_dir(&example);
        command
    };
    let one = Proc::spawn(node_command("one", &[]));
    one.wait_for("started in", PATIENCE);
    let two = Proc::spawn(node_command(
        "two",
        &["-Djboss.socket.binding.port-offset=100"],
    ));
    two.wait_for("started in", PATIENCE);
    let deploy = base
        .cli(["deploy"])
        .current_dir(&example)
        .env("CARGO_TARGET_DIR", apps_target_dir())
        .output()
        .unwrap();
    assert!(
        deploy.status.success(),
        "{}",
        String::from_utf8_lossy(&deploy.stderr)
    );

    // Both nodes deploy the app; the daemon runs on exactly one; both receive.
    one.wait_for("Deployed \"example\"", BUILD_PATIENCE);
    two.wait_for("Deployed \"example\"", PATIENCE);
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
    let (master, master_offset, survivor, survivor_offset) =
        match (runs_singletons(&one), runs_singletons(&two)) {
            (true, false) => (one, 0, two, 100),
            (false, true) => (two, 100, one, 0),
            _ => panic!(
                "the daemon must run on exactly one node:\n{}\n----\n{}",
                one.text(),
                two.text()
            ),
        };
    let list = base.cli(["list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        listed.contains("one: running; two: running; singletons on"),
        "{listed}"
    );

    // Kill -9 the daemon's node: the other starts the daemon and receives what follows.
    let pid = get_json(9990 + master_offset)["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    survivor.wait_for(
        "The singletons of example run on this node now",
        FAILOVER_BOUND,
    );
    let taken_over_at = survivor.lines().len();
    survivor.wait_for("[example] sending: 3", PATIENCE);
    let before_restart = master.lines();
    drop(master);

    // Restart the killed node as it was started: it receives again, and the daemon stays.
    let master_name = if master_offset == 0 { "one" } else { "two" };
    let extra: &[&str] = if master_offset == 0 {
        &[]
    } else {
        &["-Djboss.socket.binding.port-offset=100"]
    };
    let restarted = Proc::spawn(node_command(master_name, extra));
    restarted.wait_for("Deployed \"example\"", PATIENCE);
    let deadline = Instant::now() + PATIENCE;
    while numbers_after(&restarted.lines(), "received: ").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the restarted node receives:\n{}",
            restarted.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(runs_singletons(&survivor), "no fail-back");
    assert!(
        !runs_singletons(&restarted),
        "no fail-back:\n{}",
        restarted.text()
    );
    assert_eq!(
        get_json_at(9990 + survivor_offset, "deployments")[0]["singletons_on"],
        if master_offset == 0 { "two" } else { "one" }
    );
    assert!(
        survivor.lines()[taken_over_at..]
            .iter()
            .any(|line| line.contains("received:"))
    );

    // No number is lost: each one sent is received at least as often as it was sent.
    let all_lines = |procs: &[&Proc]| -> Vec<String> {
        let mut lines = before_restart.clone();
        for proc in procs {
            lines.extend(proc.lines());
        }
        lines
    };
    let count = |lines: &[String], marker: &str| counts(numbers_after(lines, marker));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = all_lines(&[&survivor, &restarted]);
        let (sent, received) = (count(&lines, "sending: "), count(&lines, "received: "));
        let missing: Vec<u64> = sent
            .iter()
            .filter(|(n, times)| received.get(n).copied().unwrap_or(0) < **times)
            .map(|(n, _)| *n)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never received: {missing:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Tests that use the default ports (offsets 0, 100, 200) take turns.
static DEFAULT_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_local_cluster_in_one_command() {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let base = Base::installed();
    let cluster = cluster_name();
    let mut nodes = base.run([
        "--clustered".to_string(),
        "--nodes".into(),
        "3".into(),
        format!("-Dimmutant.cluster.name={cluster}"),
    ]);
    for name in ["one", "two", "three"] {
        nodes.wait_for(&format!("[{name}] Starting Immutant:"), PATIENCE);
        let deadline = Instant::now() + PATIENCE;
        while !nodes
            .lines()
            .iter()
            .any(|line| line.starts_with(&format!("[{name}]")) && line.contains("(3 members"))
        {
            assert!(
                Instant::now() < deadline,
                "{name} never saw three members:\n{}",
                nodes.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            base.path()
                .join("nodes")
                .join(name)
                .join("node.lock")
                .is_file(),
            "{name} has its data dir under the base"
        );
    }
    assert_eq!(get_json(9990 + 200)["name"], "three");
    nodes.signal(libc::SIGINT);
    assert_eq!(
        nodes.wait_exit(PATIENCE).code(),
        Some(0),
        "{}",
        nodes.text()
    );
    for name in ["one", "two", "three"] {
        nodes.wait_for(&format!("Node {name} stopped"), Duration::ZERO);
    }
}

/// The node whose last word on the app's singletons is that they run there, if any.
fn master(nodes: &[(String, u16, Proc)]) -> Option<&(String, u16, Proc)> {
    nodes.iter().find(|(_, _, node)| runs_singletons(node))
}

#[test]
fn rolling_kills_move_the_singleton_and_quorum_keeps_a_lone_node_from_running_it() {
    let base = Base::installed();
    deploy_example(&base);
    let cluster = cluster_name();
    let quorum = "-Dimmutant.singleton.quorum=2".to_string();
    let mut nodes: Vec<(String, u16, Proc)> = ["one", "two", "three"]
        .into_iter()
        .map(|name| {
            let offset = free_offset();
            let mut args = vec![
                "--clustered".to_string(),
                quorum.clone(),
                format!("-Dimmutant.cluster.name={cluster}"),
            ];
            args.extend(base.node_args(name, offset));
            let node = base.run(args);
            (name.to_string(), offset, node)
        })
        .collect();
    for (_, _, node) in &nodes {
        node.wait_for("(3 members", PATIENCE);
        node.wait_for("Deployed \"example\"", BUILD_PATIENCE);
    }
    let deadline = Instant::now() + PATIENCE;
    while master(&nodes).is_none() {
        assert!(Instant::now() < deadline, "no node runs the singleton");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Kill whichever node runs the singleton, twice: with two members left (the quorum) it
    // moves; with one left, it runs nowhere.
    let first = master(&nodes).unwrap().0.clone();
    let offset = nodes.iter().find(|(name, _, _)| *name == first).unwrap().1;
    kill_9(offset);
    nodes.retain(|(name, _, _)| *name != first);
    let deadline = Instant::now() + FAILOVER_BOUND;
    while master(&nodes).is_none() {
        assert!(
            Instant::now() < deadline,
            "the singleton did not move after {first} was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = master(&nodes).unwrap().0.clone();
    let offset = nodes.iter().find(|(name, _, _)| *name == second).unwrap().1;
    kill_9(offset);
    nodes.retain(|(name, _, _)| *name != second);
    let (last_name, last_offset, last) = &nodes[0];
    last.wait_for("(1 members", PATIENCE);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !runs_singletons(last),
        "{last_name} runs the singleton alone, below the quorum:\n{}",
        last.text()
    );
    assert!(get_json_at(9990 + last_offset, "deployments")[0]["singletons_on"].is_null());
}

#[test]
fn a_stopped_node_is_removed_and_rejoins_with_the_singleton_running_once() {
    let (_base, _, [one_offset, _], one, two) = example_pair();
    two.wait_for("Cluster view: [one, two]", PATIENCE);
    one.wait_for("[example] sending: 1", BUILD_PATIENCE);
    two.wait_for("Deployed \"example\"", PATIENCE);

    let pid = get_json(9990 + one_offset)["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    two.wait_for(
        "Cluster view: [two] (1 members",
        Duration::from_secs(5) + PATIENCE / 6,
    );
    two.wait_for(
        "The singletons of example run on this node now",
        FAILOVER_BOUND,
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let rejoined = two.lines().len();
    let deadline = Instant::now() + PATIENCE;
    while !two.lines()[rejoined..]
        .iter()
        .any(|line| line.contains("Cluster view: [one, two]"))
    {
        assert!(
            Instant::now() < deadline,
            "one did not rejoin:\n{}",
            two.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        [&one, &two]
            .iter()
            .filter(|node| runs_singletons(node))
            .count(),
        1,
        "the singleton runs exactly once:\n{}\n----\n{}",
        one.text(),
        two.text()
    );
}

#[test]
fn static_seeds_form_a_cluster_without_multicast() {
    let base = Base::installed();
    let cluster = cluster_name();
    let (one_offset, two_offset) = (free_offset(), free_offset());
    // Each node on a multicast group of its own: they can only meet through the seed.
    let group = |n: u8| format!("-Djboss.default.multicast.address=230.0.0.{n}");
    let one = clustered_with(&base, "one", one_offset, &cluster, &[group(61)]);
    let seed = format!("-Dimmutant.cluster.seeds=127.0.0.1:{}", 7600 + one_offset);
    let two = clustered_with(&base, "two", two_offset, &cluster, &[group(62), seed]);
    two.wait_for("Cluster view: [one, two]", PATIENCE);
    one.wait_for("Cluster view: [one, two]", PATIENCE);
}

#[test]
fn topics_reach_subscribers_on_every_node() {
    let base = Base::installed();
    base.deploy(&probe(), Some("herald"));
    let cluster = cluster_name();
    let one = clustered(&base, "one", free_offset(), &cluster);
    let two = clustered(&base, "two", free_offset(), &cluster);
    for node in [&one, &two] {
        node.wait_for("[herald] heard: one:", BUILD_PATIENCE);
        node.wait_for("[herald] heard: two:", PATIENCE);
    }
}

#[test]
fn messages_go_to_the_node_that_has_consumers() {
    let base = Base::installed();
    base.deploy(&probe(), Some("drain"));
    let cluster = cluster_name();
    let listen = ["-Dprobe.drain=listen".to_string()];
    let one = clustered_with(&base, "one", free_offset(), &cluster, &listen);
    let two = clustered(&base, "two", free_offset(), &cluster);
    two.wait_for("[drain] queued: two-9", BUILD_PATIENCE);
    for n in 0..10 {
        one.wait_for(&format!("[drain] drained: two-{n}"), PATIENCE);
    }
}

#[test]
fn messages_left_on_a_node_whose_consumers_went_move_to_the_nodes_that_consume() {
    let base = Base::installed();
    base.deploy(&probe(), Some("fickle"));
    let cluster = cluster_name();
    let slow = ["-Dprobe.fickle=slow".to_string()];
    let one = clustered_with(&base, "one", free_offset(), &cluster, &slow);
    let two = clustered(&base, "two", free_offset(), &cluster);
    two.wait_for("[fickle] fickle published 30", BUILD_PATIENCE);
    one.wait_for("[fickle] fickle stopped listening", PATIENCE);
    one.wait_for("Redistributing", PATIENCE);
    let consumed = |node: &Proc| {
        node.stdout_lines()
            .iter()
            .filter_map(|line| line.split("[fickle] fickle ").nth(1))
            .filter_map(|rest| rest.split(" consumed").next()?.parse::<u64>().ok())
            .collect::<Vec<u64>>()
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut all = consumed(&one);
        all.extend(consumed(&two));
        let seen = counts(all.iter().copied());
        if seen.len() == 30 {
            assert!(
                seen.values().all(|times| *times == 1),
                "each once: {seen:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "all 30 consumed: {seen:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !consumed(&one).is_empty(),
        "the slow node took its share first"
    );
}

#[test]
fn a_request_is_answered_by_a_responder_on_another_node() {
    let base = Base::installed();
    base.deploy(&probe(), Some("asker"));
    let cluster = cluster_name();
    let respond = ["-Dprobe.respond=yes".to_string()];
    let _one = clustered_with(&base, "one", free_offset(), &cluster, &respond);
    let two = clustered(&base, "two", free_offset(), &cluster);
    two.wait_for(
        "[asker] answer: ping from two answered by one",
        BUILD_PATIENCE,
    );
}

#[test]
fn an_app_deployed_to_a_server_group_runs_only_on_the_nodes_of_that_group() {
    let base = Base::installed();
    let project = base.new_project("example");
    let deploy = |group: &str| {
        base.cli(["deploy", "--group", group])
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", apps_target_dir())
            .output()
            .unwrap()
    };
    let refused = deploy("no way");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("cannot name a server group"), "{said}");
    let deployed = deploy("workers");
    assert!(deployed.status.success(), "{deployed:?}");

    let cluster = cluster_name();
    let groups = |groups: &str| vec![format!("-Dimmutant.node.groups={groups}")];
    let web = clustered_with(&base, "web", free_offset(), &cluster, &groups("web"));
    let worker = clustered_with(
        &base,
        "worker",
        free_offset(),
        &cluster,
        &groups("workers,batch"),
    );
    // The worker runs it, singleton daemon and all; the web node does not, and says why.
    worker.wait_for("[example] received:", BUILD_PATIENCE);
    let said = web.wait_for("example is not run on this node", PATIENCE);
    assert!(
        said.contains("it is deployed to group 'workers', and this node is in web"),
        "{said}"
    );
    let list = base.cli(["list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    let line = listed
        .lines()
        .find(|line| line.contains("example"))
        .unwrap_or_default();
    assert!(
        line.contains("group workers; status: web: elsewhere: it is deployed to group 'workers'")
            && line.contains("worker: running")
            && line.contains("singletons on worker"),
        "{listed}"
    );
    assert!(!web.text().contains("[example]"), "{}", web.text());
}
