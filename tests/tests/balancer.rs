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

/// The state of `context` on `route` at the balancer.
fn context_state(mcmp: u16, route: &str, context: &str) -> Option<String> {
    let status = status(mcmp);
    let node = status["nodes"]
        .as_array()?
        .iter()
        .find(|node| node["route"] == route)?;
    let found = node["contexts"]
        .as_array()?
        .iter()
        .find(|c| c["path"] == context)?;
    found["state"].as_str().map(str::to_string)
}

#[test]
fn disable_keeps_sessions_where_they_are_and_stop_drains_then_sends_nothing() {
    let base = Base::installed();
    let context = format!("/ctl{}", std::process::id());
    base.deploy_with(
        &webprobe(),
        &["--name", "ctlprobe", "--context-path", &context],
    );
    let (lb, one, two) = (free_offset(), free_offset(), free_offset());
    let (port, mcmp) = (8080 + lb, 9990 + lb);
    let _front = balancer(&base, port, mcmp);
    let cluster = cluster_name();
    // A STATUS a minute apart: what reaches the balancer sooner was sent at once.
    let settings = [
        format!("-Dimmutant.modcluster.proxies=127.0.0.1:{mcmp}"),
        "-Dimmutant.modcluster.status-interval=60000".to_string(),
    ];
    let _first = clustered_with(&base, "one", one, &cluster, &settings);
    let _second = clustered_with(&base, "two", two, &cluster, &settings);
    eventually("both nodes enabled at the balancer", BUILD_PATIENCE, || {
        enabled(mcmp, &context) == ["one", "two"]
    });
    let url = format!("http://127.0.0.1:{port}{context}/visits");
    let runtime = runtime();
    let control = |action: &str, node: &str| {
        let output = base
            .cli([action, "--node", node, "--context", &context])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "{action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    };

    // A session on one.
    let cookie = runtime.block_on(async {
        loop {
            let (body, set) = visit(&url, None).await;
            if body.ends_with(" one") {
                break set.unwrap();
            }
        }
    });

    // Disabled on one: its session stays, new sessions go to two.
    let said = control("disable", "one");
    assert!(
        said.contains(&format!("Disabled {context} on one")),
        "{said}"
    );
    eventually(
        "one's context disabled at the balancer",
        Duration::from_secs(5),
        || context_state(mcmp, "one", &context).as_deref() == Some("disabled"),
    );
    runtime.block_on(async {
        assert_eq!(
            visit(&url, Some(&cookie)).await.0,
            "2 one",
            "the sticky session stays"
        );
        for _ in 0..4 {
            let (body, _) = visit(&url, None).await;
            assert_eq!(body, "1 two", "new sessions go to the enabled node");
        }
    });

    // Stopped on one while a request is in flight there: the stop waits for it, then nothing
    // more goes to one; the session goes on on two.
    let slow = runtime.spawn({
        let (url, cookie) = (
            format!("http://127.0.0.1:{port}{context}/slow?ms=1500"),
            cookie.clone(),
        );
        async move {
            let response = client()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            response.status()
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let said = control("stop", "one");
    assert!(said.contains("drained"), "{said}");
    assert!(
        slow.is_finished(),
        "stop said drained only after the request in flight finished"
    );
    assert_eq!(runtime.block_on(slow).unwrap(), 200);
    assert_eq!(
        context_state(mcmp, "one", &context).as_deref(),
        Some("stopped")
    );
    assert_eq!(runtime.block_on(visit(&url, Some(&cookie))).0, "3 two");

    // Enabled again: one takes requests again.
    control("enable", "one");
    eventually(
        "one's context enabled again",
        Duration::from_secs(5),
        || context_state(mcmp, "one", &context).as_deref() == Some("enabled"),
    );
    let (body, _) = runtime.block_on(visit(&url, Some("JSESSIONID=unknown.one")));
    assert_eq!(body, "1 one", "a session routed to one reaches it again");
}

#[test]
fn a_clustered_node_finds_an_advertising_balancer_by_itself() {
    let base = Base::installed();
    let context = format!("/adv{}", std::process::id());
    base.deploy_with(
        &webprobe(),
        &["--name", "advprobe", "--context-path", &context],
    );
    let (lb, one) = (free_offset(), free_offset());
    let (port, mcmp) = (8080 + lb, 9990 + lb);
    let args = [
        "balancer",
        "--port",
        &port.to_string(),
        "--mcmp-port",
        &mcmp.to_string(),
    ];
    let front = Proc::spawn(base.cli(args));
    front.wait_for("advertising on 224.0.1.105:23364", PATIENCE);
    let _node = clustered_with(&base, "adv", one, &cluster_name(), &[]);
    // Advertisements come every 10 s; the node hears the next one.
    eventually("the node enabled at the balancer", BUILD_PATIENCE, || {
        enabled(mcmp, &context) == ["adv"]
    });
    let (body, _) = runtime().block_on(visit(
        &format!("http://127.0.0.1:{port}{context}/visits"),
        None,
    ));
    assert_eq!(body, "1 adv");
}

#[test]
fn a_paused_node_is_passed_over_and_its_session_goes_on_elsewhere() {
    let base = Base::installed();
    let context = format!("/paused{}", std::process::id());
    base.deploy_with(
        &webprobe(),
        &["--name", "pauseprobe", "--context-path", &context],
    );
    let (lb, one, two) = (free_offset(), free_offset(), free_offset());
    let (port, mcmp) = (8080 + lb, 9990 + lb);
    let _front = balancer(&base, port, mcmp);
    let cluster = cluster_name();
    let settings = [
        format!("-Dimmutant.modcluster.proxies=127.0.0.1:{mcmp}"),
        "-Dimmutant.modcluster.status-interval=1000".to_string(),
    ];
    let _first = clustered_with(&base, "one", one, &cluster, &settings);
    let _second = clustered_with(&base, "two", two, &cluster, &settings);
    eventually("both nodes enabled at the balancer", BUILD_PATIENCE, || {
        enabled(mcmp, &context) == ["one", "two"]
    });
    let url = format!("http://127.0.0.1:{port}{context}/visits");
    let runtime = runtime();
    let (body, set) = runtime.block_on(visit(&url, None));
    let cookie = set.unwrap();
    let node = body.split(' ').nth(1).unwrap().to_string();
    let (offset, other) = if node == "one" {
        (one, "two")
    } else {
        (two, "one")
    };

    // The node that has the session stops answering (SIGSTOP: its sockets stay open).
    let pid = immutant_e2e::get_json(9990 + offset)["pid"]
        .as_i64()
        .unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let (body, _) = runtime.block_on(visit(&url, Some(&cookie)));
    assert_eq!(
        body,
        format!("2 {other}"),
        "the session goes on on the other node"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "served within 10 s, not after the node was silent for 30 s"
    );
    let state = status(mcmp)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["route"] == node)
        .unwrap()["state"]
        .clone();
    assert_eq!(state, "unreachable");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}
