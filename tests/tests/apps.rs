//! Apps on a node: the seed app end to end, durability across kill -9, dead letters, crashes,
//! daemons at undeploy and redeploy, request/respond, durable topics and what the node refuses.
//! Every app is built and deployed with the real `cargo immutant`, and runs under a real node.

use std::time::Duration;

use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, counts, eventually, free_offset, get_json, get_json_at,
    numbers_after, probe, start_node,
};

#[test]
fn the_seed_app_receives_what_its_daemon_sends_in_order() {
    let base = Base::installed();
    let project = base.new_project("example");
    base.deploy(&project, None);
    let node = start_node(&base, "solo", free_offset(), &[]);
    node.wait_for("[example] received: 3", BUILD_PATIENCE);
    node.wait_for("[example] Starting daemon: counter", Duration::ZERO);
    let received = numbers_after(&node.lines(), "received: ");
    assert_eq!(received[..4], [0, 1, 2, 3], "in order, from 0");
}

#[test]
fn a_node_killed_with_sigkill_loses_no_message_whose_publish_returned() {
    let base = Base::installed();
    let project = base.new_project("example");
    base.deploy(&project, None);
    let offset = free_offset();
    let first = start_node(&base, "durable", offset, &[]);
    first.wait_for("[example] sending: 4", BUILD_PATIENCE);
    let pid = get_json(9990 + offset)["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Every line the node wrote before it died, and nothing after.
    first.wait_for_end_of_output(PATIENCE);
    let sent_before = numbers_after(&first.lines(), "sending: ");
    let received_before = numbers_after(&first.lines(), "received: ");
    drop(first);

    let second = start_node(&base, "durable", offset, &[]);
    let highest = *sent_before.iter().max().unwrap();
    second.wait_for(&format!("[example] sending: {}", highest + 2), PATIENCE);
    // Every number sent in either life is received at least as often as it was sent, and at
    // most once more (a delivery the kill interrupted comes again).
    eventually("every sent number received", PATIENCE, || {
        let sent = counts(
            [
                sent_before.clone(),
                numbers_after(&second.lines(), "sending: "),
            ]
            .concat(),
        );
        let received = counts(
            [
                received_before.clone(),
                numbers_after(&second.lines(), "received: "),
            ]
            .concat(),
        );
        sent.iter()
            .all(|(n, times)| received.get(n).copied().unwrap_or(0) >= *times)
    });
    let sent = counts(
        [
            sent_before.clone(),
            numbers_after(&second.lines(), "sending: "),
        ]
        .concat(),
    );
    let received = counts(
        [
            received_before,
            numbers_after(&second.lines(), "received: "),
        ]
        .concat(),
    );
    for (n, times) in received {
        assert!(
            times <= sent.get(&n).copied().unwrap_or(0) + 1,
            "{n} was received {times} times"
        );
    }
}

#[test]
fn a_listener_that_always_fails_sends_its_message_to_the_dead_letter_queue() {
    let base = Base::installed();
    base.deploy(&probe(), Some("dlq"));
    let offset = free_offset();
    let node = start_node(&base, "dlq", offset, &[]);
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
    let stats = get_json_at(9990 + offset, "queues");
    let failing = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "/queue/failing")
        .unwrap();
    assert_eq!(failing["dead_lettered"], 1);
    assert_eq!(failing["depth"], 0);
}

#[test]
fn a_poison_messages_deliveries_are_counted_across_a_kill_9_of_its_node() {
    let base = Base::installed();
    base.deploy(&probe(), Some("dlq"));
    let offset = free_offset();
    let slow = "-Dprobe.attempt-ms=200";
    let node = start_node(&base, "poisoned", offset, &[slow]);
    node.wait_for("[dlq] attempt 5", BUILD_PATIENCE);
    immutant_e2e::kill_9(offset);
    drop(node);
    let restarted = start_node(&base, "poisoned", offset, &[slow, "-Dprobe.publish=no"]);
    restarted.wait_for(
        "[dlq] dead-lettered: doomed because the handler always fails",
        PATIENCE,
    );
    let after = numbers_after(&restarted.lines(), "attempt ");
    // The count went on from where it was (the delivery in flight at the kill, and the one
    // before it if its return was not yet on disk, may go uncounted), and ended at 10.
    assert!(
        after.first().is_some_and(|first| *first >= 4),
        "counting went on after the restart: {after:?}"
    );
    assert_eq!(after.last(), Some(&10), "{after:?}");
}

#[test]
fn a_crashing_app_is_restarted_and_one_that_always_crashes_ends_up_failed() {
    let base = Base::installed();
    base.deploy(&probe(), Some("crashonce"));
    base.deploy(&probe(), Some("crashloop"));
    let offset = free_offset();
    let probe_dir = base.path().join("probe");
    std::fs::create_dir_all(&probe_dir).unwrap();
    let node = start_node(
        &base,
        "crashy",
        offset,
        &[&format!("-Dprobe.dir={}", probe_dir.display())],
    );
    node.wait_for("[crashonce] crashing on purpose", BUILD_PATIENCE);
    node.wait_for("[crashonce] up after a crash", PATIENCE);
    node.wait_for("crashloop exited with code 2, 5 times in a row", PATIENCE);

    let deployments = get_json_at(9990 + offset, "deployments");
    let by_name = |name: &str| {
        deployments
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("crashonce")["status"], "running");
    assert_eq!(by_name("crashonce")["restarts"], 1);
    let failed = by_name("crashloop");
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("always broken: the probe cannot find its config"),
        "{failed}"
    );

    let list = base.cli(["list"]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    let line = text
        .lines()
        .find(|line| line.contains("crashloop"))
        .expect("list shows crashloop");
    assert!(
        line.contains("crashy: failed:") && line.contains("always broken"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|line| line.contains("crashonce"))
        .expect("list shows crashonce");
    assert!(line.contains("crashy: running"), "{text}");
}

#[test]
fn undeploy_runs_the_daemons_stop_and_a_redeploy_replaces_the_process() {
    let base = Base::installed();
    base.deploy(&probe(), Some("daemon"));
    let offset = free_offset();
    let node = start_node(&base, "daemons", offset, &[]);
    let first = node.wait_for("[daemon] worker started in pid", BUILD_PATIENCE);
    let daemons = get_json_at(9990 + offset, "daemons");
    assert_eq!(daemons[0]["app"], "daemon");
    assert_eq!(daemons[0]["name"], "worker");
    assert_eq!(daemons[0]["running"], true);
    base.deploy(&probe(), Some("daemon"));
    node.wait_for("[daemon] worker stopped cleanly", PATIENCE);
    eventually("a second worker", PATIENCE, || {
        node.lines()
            .iter()
            .filter(|line| line.contains("worker started in pid"))
            .count()
            == 2
    });
    let second = node
        .lines()
        .into_iter()
        .rfind(|line| line.contains("worker started in pid"))
        .unwrap();
    let pid = |line: &str| {
        line.split("pid ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert!(
        first.ends_with("under epoch 1"),
        "a standalone node starts daemons under epoch 1: {first}"
    );
    assert_ne!(pid(&first), pid(&second), "a redeploy runs a new process");

    let undeployed = base.cli(["undeploy", "daemon"]).output().unwrap();
    assert!(
        undeployed.status.success(),
        "{}",
        String::from_utf8_lossy(&undeployed.stderr)
    );
    eventually("the second worker's stop", PATIENCE, || {
        node.lines()
            .iter()
            .filter(|line| line.contains("worker stopped cleanly"))
            .count()
            == 2
    });
    node.wait_for("Undeployed \"daemon\"", PATIENCE);
    assert_eq!(
        get_json_at(9990 + offset, "deployments"),
        serde_json::json!([])
    );
}

#[test]
fn requests_get_replies_and_durable_subscribers_get_what_came_while_away() {
    let base = Base::installed();
    base.deploy(&probe(), Some("reqrep"));
    base.deploy(&probe(), Some("reader"));
    base.deploy(&probe(), Some("publisher"));
    let node = start_node(&base, "topics", free_offset(), &[]);
    node.wait_for("[reqrep] reply: echo: hello", BUILD_PATIENCE);
    node.wait_for("[reqrep] receive on an empty queue: None", PATIENCE);
    node.wait_for("[reqrep] receive: Some(\"parcel\")", PATIENCE);
    node.wait_for("[reader] news: news-2", PATIENCE);

    let undeployed = base.cli(["undeploy", "reader"]).output().unwrap();
    assert!(undeployed.status.success());
    node.wait_for("Undeployed \"reader\"", PATIENCE);
    let away_from = numbers_after(&node.lines(), "published: news-")
        .into_iter()
        .max()
        .unwrap()
        + 1;
    node.wait_for(&format!("published: news-{}", away_from + 3), PATIENCE);
    base.deploy(&probe(), Some("reader"));
    for n in away_from..=away_from + 3 {
        node.wait_for(&format!("[reader] news: news-{n}"), PATIENCE);
    }
    node.wait_for(
        "[reader] settings: {\"greeting\":\"hello from the settings\"}",
        Duration::ZERO,
    );
}

#[test]
fn priorities_ttl_size_limit_and_unstarted_destinations() {
    let base = Base::installed();
    base.deploy(&probe(), Some("errors"));
    base.deploy(&probe(), Some("ordering"));
    let node = start_node(
        &base,
        "limits",
        free_offset(),
        &["-Dimmutant.messaging.max-message-size=1024"],
    );
    node.wait_for(
        "[errors] big message refused: a payload of 4096 bytes is over the node's limit of 1024 bytes",
        BUILD_PATIENCE,
    );
    node.wait_for("[errors] small message accepted", PATIENCE);
    node.wait_for(
        "[errors] unstarted destination refused: the node refused: the destination /queue/nobody-started was never started",
        PATIENCE,
    );
    node.wait_for("[ordering] ordered: low", PATIENCE);
    let ordered: Vec<String> = node
        .lines()
        .iter()
        .filter_map(|line| {
            line.split("[ordering] ordered: ")
                .nth(1)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        ordered,
        ["high", "low"],
        "the highest priority first, the expired one never"
    );
}
