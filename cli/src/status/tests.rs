//! `render`'s tables, drawn from what nodes answered.

use super::*;

#[test]
fn it_draws_a_table_for_each_thing_a_node_runs() {
    let node = |name: &str, view: &[&str]| {
        serde_json::json!({
            "name": name, "uptime_ms": 65_000, "bind_address": "127.0.0.1",
            "started_ms": 1, "memory_bytes": 23_068_672, "load": [0.5, 0.4, 0.3],
            "cluster": {"name": "demo", "engine": {"kind": "nats", "connected": name == "one"},
                "view": view.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>()},
            "deployments": [{"name": "example", "status": "running", "restarts": 2, "jobs": []}],
            "singletons": [{"app": "example", "node": "one", "epoch": 1025}],
            "queues": [{"name": "/queue/work", "depth": 7, "rate_in": 2.5}],
        })
    };
    let found = ClusterStatus {
        nodes: vec![node("one", &["one", "two"]), node("two", &["one", "two"])],
        unreachable: vec![Unreachable {
            name: "three".to_string(),
            management: "http://127.0.0.1:10190".to_string(),
            error: "connection refused".to_string(),
        }],
        balancers: vec![BalancerView {
            address: "127.0.0.1:6666".to_string(),
            view: None,
            error: Some("no balancer answers at 127.0.0.1:6666".to_string()),
        }],
    };
    let text = render(&found);
    assert!(text.starts_with("Cluster demo:\n"), "{text}");
    assert!(
        text.contains(
            "one   127.0.0.1  00:00:00  1m 5s   22.0 MiB  0.50  nats (connected)      one, two"
        ),
        "{text}"
    );
    assert!(
        text.contains("0.50  nats (NOT CONNECTED)  one, two"),
        "{text}"
    );
    assert!(
        text.contains("three          http://127.0.0.1:10190  connection refused"),
        "{text}"
    );
    assert!(text.contains("example  one   running  2"), "{text}");
    assert!(text.contains("example        one     1025"), "{text}");
    assert!(text.contains("/queue/work  two   7      2.5"), "{text}");
    assert!(!text.contains("CACHE"), "no caches, no table: {text}");
    assert!(
        text.ends_with(
            "The balancer at 127.0.0.1:6666 sees:\n  no balancer answers at 127.0.0.1:6666\n"
        ),
        "{text}"
    );
}
