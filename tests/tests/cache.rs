//! Caches: expiry and `create` on a standalone node, concurrent compare-and-swap from every
//! node of a cluster, and a joining node that receives what was written before it came.

use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, cluster_name, clustered, clustered_with, free_offset,
    get_json_at, kill_9, probe,
};

#[test]
fn entries_expire_and_create_does_not_wipe_an_existing_cache() {
    let base = Base::installed();
    base.deploy(&probe(), Some("expiry"));
    let offset = free_offset();
    let node = base.run(base.node_args("solo", offset));
    let fresh = node.wait_for("fresh:", BUILD_PATIENCE);
    assert!(
        fresh.ends_with(r#"fresh: Some("lived") Some("lived")"#),
        "{fresh}"
    );
    let again = node.wait_for("create again:", PATIENCE);
    assert!(
        again.contains("a cache named 'brief' exists already (local); use lookup_or_create"),
        "{again}"
    );
    let later = node.wait_for("later:", PATIENCE);
    assert!(
        later.ends_with(r#"later: None Some("lived")"#),
        "the cache's ttl expired one entry; the other's own ttl did not: {later}"
    );
    let brief = cache_stats(offset, "brief");
    // A standalone node keeps a distributed cache local.
    assert_eq!(brief["mode"], "local", "{brief}");
    assert_eq!(brief["hits"], 3, "{brief}");
    assert_eq!(brief["misses"], 1, "{brief}");
}

#[test]
fn a_persisted_cache_outlives_a_restart_of_its_node() {
    let base = Base::installed();
    base.deploy(&probe(), Some("persister"));
    let offset = free_offset();
    let mut node = base.run(base.node_args("solo", offset));
    node.wait_for("[persister] boots: 1", BUILD_PATIENCE);
    kill_9(offset);
    let _ = node.wait_exit(PATIENCE);
    let again = base.run(base.node_args("solo", offset));
    again.wait_for("[persister] boots: 2", PATIENCE);
}

#[test]
fn concurrent_swaps_from_every_node_lose_no_update() {
    let base = Base::installed();
    base.deploy(&probe(), Some("swapper"));
    let cluster = cluster_name();
    let swaps = ["-Dprobe.swaps=100".to_string()];
    let nodes: Vec<_> = ["one", "two", "three"]
        .into_iter()
        .map(|name| clustered_with(&base, name, free_offset(), &cluster, &swaps))
        .collect();
    for node in &nodes {
        node.wait_for("[swapper] swaps done", BUILD_PATIENCE);
    }
    // Every node sees every increment: 3 nodes x 100.
    for node in &nodes {
        node.wait_for("[swapper] total: 300", PATIENCE);
    }
}

#[test]
fn a_joining_node_reads_entries_written_before_it_joined() {
    let base = Base::installed();
    base.deploy(&probe(), Some("sharer"));
    let cluster = cluster_name();
    // The line ends there: `entries=100` is not ten entries.
    let ten = |line: &str| line.ends_with("[sharer] shared: writer=one entries=10");
    let one = clustered(&base, "one", free_offset(), &cluster);
    one.wait_for_line("no line of ten entries", BUILD_PATIENCE, ten);
    let two_offset = free_offset();
    let two = clustered(&base, "two", two_offset, &cluster);
    two.wait_for_line("no line of ten entries", PATIENCE, ten);
    let shared = cache_stats(two_offset, "shared");
    assert_eq!(shared["mode"], "replicated", "{shared}");
    assert_eq!(
        shared["entries"], 11,
        "ten entries and the writer: {shared}"
    );
}

#[test]
fn a_write_to_an_invalidated_cache_removes_the_key_on_the_other_nodes() {
    let base = Base::installed();
    base.deploy(&probe(), Some("invalidator"));
    let cluster = cluster_name();
    let one = clustered(&base, "one", free_offset(), &cluster);
    one.wait_for(r#"[invalidator] k: Some("one")"#, BUILD_PATIENCE);
    one.wait_for(r#"[invalidator] own: Some("mine")"#, PATIENCE);
    let clears = ["-Dprobe.clear=yes".to_string()];
    let two = clustered_with(&base, "two", free_offset(), &cluster, &clears);
    two.wait_for(r#"[invalidator] k: Some("two")"#, PATIENCE);
    // Two's write took the key away from one, which keeps no stale copy.
    one.wait_for("[invalidator] k: None", PATIENCE);
    // Two's clear empties one's copy too: even the key only one wrote.
    two.wait_for("[invalidator] cleared", PATIENCE);
    one.wait_for("[invalidator] own: None", PATIENCE);
}

/// What the management API of the node at `offset` says of the cache `name` (null if none).
fn cache_stats(offset: u16, name: &str) -> serde_json::Value {
    let caches = get_json_at(9990 + offset, "caches");
    caches
        .as_array()
        .and_then(|caches| caches.iter().find(|cache| cache["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// The entries the nodes at `offsets` hold of the cache `name`, together.
fn entries_held(offsets: &[u16], name: &str) -> u64 {
    offsets
        .iter()
        .map(|offset| cache_stats(*offset, name)["entries"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn a_dead_owner_leaves_every_distributed_entry_with_two_copies() {
    let base = Base::installed();
    base.deploy(&probe(), Some("distributor"));
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset(), free_offset()];
    let nodes: Vec<_> = ["one", "two", "three"]
        .into_iter()
        .zip(offsets)
        .map(|(name, offset)| clustered(&base, name, offset, &cluster))
        .collect();
    for node in &nodes {
        node.wait_for("[distributor] readable: 30", BUILD_PATIENCE);
    }
    // 30 entries and the writer's name, two copies of each.
    let copies = 2 * 31;
    wait_until(
        || entries_held(&offsets, "spread") == copies,
        "two copies of each entry",
    );
    kill_9(offsets[1]);
    let survivors = [offsets[0], offsets[2]];
    wait_until(
        || entries_held(&survivors, "spread") == copies,
        "two copies of each entry on the survivors",
    );
    // Every entry is readable from both survivors (each prints what it can read as it
    // changes).
    for node in [&nodes[0], &nodes[2]] {
        wait_until(
            || {
                node.stdout_lines()
                    .into_iter()
                    .rfind(|line| line.contains("[distributor] readable:"))
                    .is_some_and(|line| line.ends_with("readable: 30"))
            },
            "30 entries readable",
        );
    }
}

/// Polls `condition` until it holds, failing the test after 15 s.
fn wait_until(condition: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within 15 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
