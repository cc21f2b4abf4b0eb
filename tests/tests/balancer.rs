//! The balancer (`cargo immutant balancer`) in front of real clustered nodes: it learns nodes
//! and contexts by MCMP, keeps a session on its node, moves it when the node dies (the session
//! follows by replication), tunnels WebSockets, refuses malformed MCMP as mod_manager does, and
//! learns every node again after a restart.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered_with, eventually, free_offset,
    kill_9, webprobe,
};
use tokio_tungstenite::tungstenite::Message;

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A balancer of the base's install on `port` (clients) and `mcmp` (nodes), not advertising
/// (tests run side by side), started.
fn balancer(base: &Base, port: u16, mcmp: u16) -> Proc {
    let args = [
        "balancer",
        "--port",
        &port.to_string(),
        "--mcmp-port",
        &mcmp.to_string(),
        "--no-advertise",
    ];
    let balancer = Proc::spawn(base.cli(args));
    balancer.wait_for("Immutant balancer", PATIENCE);
    balancer
}

/// What the balancer knows, from its status page.
fn status(mcmp: u16) -> serde_json::Value {
    immutant_e2e::get_json_at(mcmp, "status.json")
}

/// The routes of the nodes that have `context` enabled at the balancer.
fn enabled(mcmp: u16, context: &str) -> Vec<String> {
    let status = status(mcmp);
    let mut routes: Vec<String> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| {
            node["contexts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["path"] == context && c["state"] == "enabled")
        })
        .map(|node| node["route"].as_str().unwrap().to_string())
        .collect();
    routes.sort();
    routes
}

/// `GET url` with `cookie`: the body and the session cookie set, if any.
async fn visit(url: &str, cookie: Option<&str>) -> (String, Option<String>) {
    let mut request = client().get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap().to_string());
    (response.text().await.unwrap(), set)
}

#[test]
fn a_session_sticks_to_its_node_and_follows_when_the_node_dies() {
    let base = Base::installed();
    let context = format!("/lb{}", std::process::id());
    base.deploy_with(
        &webprobe(),
        &["--name", "lbprobe", "--context-path", &context],
    );
    let (lb, one, two) = (free_offset(), free_offset(), free_offset());
    let (port, mcmp) = (8080 + lb, 9990 + lb);
    let mut front = balancer(&base, port, mcmp);
    let cluster = cluster_name();
    let settings = [
        format!("-Dimmutant.modcluster.proxies=127.0.0.1:{mcmp}"),
        "-Dimmutant.modcluster.status-interval=1000".to_string(),
    ];
    let first = clustered_with(&base, "one", one, &cluster, &settings);
    let _second = clustered_with(&base, "two", two, &cluster, &settings);
    eventually("both nodes enabled at the balancer", BUILD_PATIENCE, || {
        enabled(mcmp, &context) == ["one", "two"]
    });

    let url = format!("http://127.0.0.1:{port}{context}/visits");
    let runtime = runtime();
    let (cookie, served_by) = runtime.block_on(async {
        let (body, set) = visit(&url, None).await;
        let cookie = set.expect("a session cookie");
        let node = body.split(' ').nth(1).unwrap().to_string();
        assert!(
            cookie.ends_with(&format!(".{node}")),
            "{cookie} names {node}"
        );
        for n in 2..=5 {
            let (body, _) = visit(&url, Some(&cookie)).await;
            assert_eq!(body, format!("{n} {node}"), "the session stays on its node");
        }
        // WebSockets pass through the balancer too.
        let ws = format!("ws://127.0.0.1:{port}{context}/ws");
        let (mut socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
        socket.send(Message::text("through")).await.unwrap();
        let echo = socket.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), "echo: through");
        (cookie, node)
    });

    // The node that has the session dies: the next request goes on elsewhere, with the session.
    let offset = if served_by == "one" { one } else { two };
    kill_9(offset);
    let (body, _) = runtime.block_on(visit(&url, Some(&cookie)));
    let other = if served_by == "one" { "two" } else { "one" };
    assert_eq!(
        body,
        format!("6 {other}"),
        "the count goes on on the other node"
    );
    drop(first);

    // Malformed MCMP is refused as mod_manager refuses it, and changes nothing.
    let before = status(mcmp);
    let refusal = runtime.block_on(async {
        let method = reqwest::Method::from_bytes(b"ENABLE-APP").unwrap();
        client()
            .request(method, format!("http://127.0.0.1:{mcmp}/"))
            .body(format!("JVMRoute={other}&Context=%2Fsneaky"))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(refusal.status(), 500);
    assert_eq!(refusal.headers()["version"], "0.2.1");
    assert_eq!(refusal.headers()["type"], "SYNTAX");
    assert_eq!(refusal.headers()["mess"], "SYNTAX: Context without Alias");
    let after = status(mcmp);
    assert_eq!(
        before["nodes"].as_array().unwrap().len(),
        after["nodes"].as_array().unwrap().len()
    );
    assert!(!after.to_string().contains("/sneaky"));

    // A balancer that restarts learns the nodes again within a STATUS interval or two.
    front.signal(libc::SIGTERM);
    front.wait_exit(PATIENCE);
    let _front = balancer(&base, port, mcmp);
    eventually("the survivor known again", Duration::from_secs(10), || {
        enabled(mcmp, &context) == [other]
    });
    let (body, _) = runtime.block_on(visit(&url, Some(&cookie)));
    assert_eq!(body, format!("7 {other}"));
}
