//! Web apps on a node: requests routed by virtual host and context path to the app's process,
//! the proxy headers, HTTP/2, WebSockets, bodies streamed both ways without the node holding
//! them, 503 while an app is down, and redeploys and undeploys that fail no request.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use immutant_e2e::web::{SteadyLoad, client, pair, runtime, visit};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, app_pid, cluster_name, clustered, eventually, free_offset,
    get_json, get_json_at, kill_9, start_node, webprobe,
};
use tokio_tungstenite::tungstenite::Message;

/// A response's body as JSON.
async fn json(
    response: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
) -> serde_json::Value {
    let text = response.await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Waits until `url` answers 200 (the app is deployed and ready).
fn wait_until_served(url: &str, timeout: Duration) {
    let runtime = runtime();
    let client = client();
    eventually(&format!("{url} answering 200"), timeout, || {
        runtime.block_on(async {
            let response = client.get(url).send().await;
            response.is_ok_and(|response| response.status() == 200)
        })
    });
}

/// The most memory (resident, in KiB) the process `pid` has held.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn requests_go_to_the_app_of_their_host_and_longest_context_path() {
    let base = Base::installed();
    let project = webprobe();
    base.deploy(&project, Some("alpha"));
    base.deploy_with(
        &project,
        &["--name", "deep", "--context-path", "/alpha/deep"],
    );
    base.deploy_with(
        &project,
        &[
            "--name",
            "shop",
            "--context-path",
            "/",
            "--virtual-host",
            "shop.test",
        ],
    );
    let offset = free_offset();
    // HTTP/2 without TLS is asked for (it is off by default: tests/tests/https.rs).
    let node = start_node(&base, "webnode", offset, &["-Dimmutant.http.h2c=true"]);
    let http = format!("http://127.0.0.1:{}", 8080 + offset);
    wait_until_served(&format!("{http}/alpha/"), BUILD_PATIENCE);
    wait_until_served(&format!("{http}/alpha/deep/"), PATIENCE);
    node.wait_for("web mounted at /alpha", PATIENCE);

    let runtime = runtime();
    runtime.block_on(async {
        let client = client();
        let get = |path: &str, host: Option<&str>| {
            let mut request = client.get(format!("{http}{path}"));
            if let Some(host) = host {
                request = request.header("host", host);
            }
            request.send()
        };

        // The app sees its path relative to its context, and the proxy headers.
        let seen: serde_json::Value = json(get("/alpha/request?x=1", None)).await;
        assert_eq!(seen["path"], "/request");
        assert_eq!(seen["query"], "x=1");
        assert_eq!(seen["context-path"], "/alpha");
        let headers = &seen["headers"];
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-prefix"], "/alpha");
        assert_eq!(
            headers["x-forwarded-host"],
            format!("127.0.0.1:{}", 8080 + offset)
        );

        // The longest context path wins; a bare context path is the app's root.
        let deep: serde_json::Value = json(get("/alpha/deep/request", None)).await;
        assert_eq!(deep["context-path"], "/alpha/deep");
        assert_eq!(deep["path"], "/request");
        let bare = get("/alpha", None).await.unwrap();
        assert_eq!(bare.status(), 200);
        assert_eq!(bare.text().await.unwrap(), "hello from webnode\n");

        // A virtual host sees its own apps only.
        let shop: serde_json::Value = json(get("/request", Some("shop.test"))).await;
        assert_eq!(shop["context-path"], "/");
        assert_eq!(shop["path"], "/request");
        assert_eq!(shop["host"], "shop.test");
        let elsewhere = get("/alpha/", Some("SHOP.test:80")).await.unwrap();
        assert_eq!(
            elsewhere.status(),
            404,
            "the shop app has no /alpha/ of its own"
        );

        // A path no app is mounted at is not found, and the page names what is mounted.
        let missing = get("/nowhere", None).await.unwrap();
        assert_eq!(missing.status(), 404);
        let page = missing.text().await.unwrap();
        assert!(page.contains("/nowhere"), "{page}");
        assert!(
            page.contains("/alpha") && page.contains("/alpha/deep"),
            "{page}"
        );
        assert!(
            !page.contains("shop.test"),
            "other hosts' apps stay unnamed: {page}"
        );

        // HTTP/2 from a client that speaks it from the start.
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = h2.get(format!("{http}/alpha/")).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.text().await.unwrap(), "hello from webnode\n");

        // WebSockets pass through.
        let url = format!("ws://127.0.0.1:{}/alpha/ws", 8080 + offset);
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        for n in 0..3 {
            socket
                .send(Message::text(format!("ping {n}")))
                .await
                .unwrap();
            let echo = socket.next().await.unwrap().unwrap();
            assert_eq!(
                echo.into_text().unwrap().as_str(),
                format!("echo: ping {n}")
            );
        }
        socket.close(None).await.unwrap();
    });

    // An app that is down answers 503, saying which and why, until it is back.
    let management = 9990 + offset;
    let pid = app_pid(management, "alpha").unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (status, retry_after, page) = runtime.block_on(async {
        let response = client().get(format!("{http}/alpha/")).send().await.unwrap();
        let retry = response.headers().get("retry-after").cloned();
        (response.status(), retry, response.text().await.unwrap())
    });
    assert_eq!(status, 503, "{page}");
    assert!(retry_after.is_some(), "Retry-After is set");
    assert!(
        page.contains("alpha") && page.contains("killed by signal 9"),
        "{page}"
    );
    wait_until_served(&format!("{http}/alpha/"), PATIENCE);
    assert_ne!(
        app_pid(management, "alpha"),
        Some(pid),
        "a new process serves"
    );
    let deployments = get_json_at(management, "deployments");
    let alpha = deployments
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "alpha")
        .unwrap();
    assert_eq!(alpha["web"], "/alpha");

    // A redeploy that moves the app moves its route, and the app hears of it.
    base.deploy_with(&project, &["--name", "alpha", "--context-path", "/moved/"]);
    wait_until_served(&format!("{http}/moved/"), PATIENCE);
    runtime.block_on(async {
        let seen: serde_json::Value =
            json(client().get(format!("{http}/moved/request")).send()).await;
        assert_eq!(seen["context-path"], "/moved");
        let old = client().get(format!("{http}/alpha/")).send().await.unwrap();
        assert_eq!(old.status(), 404, "nothing is left at the old path");
    });
}

#[test]
fn large_bodies_stream_through_the_node_without_filling_its_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let base = Base::installed();
    base.deploy(&webprobe(), Some("bulk"));
    let offset = free_offset();
    let _node = start_node(&base, "bulknode", offset, &[]);
    let http = format!("http://127.0.0.1:{}", 8080 + offset);
    wait_until_served(&format!("{http}/bulk/"), BUILD_PATIENCE);

    runtime().block_on(async {
        let chunks = futures_util::stream::iter(0..SIZE / CHUNK as u64).map(|n| {
            let chunk: Vec<u8> = (0..CHUNK).map(|i| (n as usize * CHUNK + i) as u8).collect();
            Ok::<_, std::io::Error>(chunk)
        });
        let answer = client()
            .post(format!("{http}/bulk/upload"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let expected_sum: u64 = (0..SIZE).map(|offset| offset as u8 as u64).sum();
        assert_eq!(answer, format!("{SIZE} {expected_sum}"));

        let response = client()
            .get(format!("{http}/bulk/download?size={SIZE}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            for (i, byte) in chunk.iter().enumerate() {
                assert_eq!(
                    *byte,
                    (received + i as u64) as u8,
                    "byte {}",
                    received + i as u64
                );
            }
            received += chunk.len() as u64;
        }
        assert_eq!(received, SIZE);
    });

    let management = 9990 + offset;
    let node_pid = get_json(management)["pid"].as_i64().unwrap() as i32;
    let app = app_pid(management, "bulk").unwrap();
    for (what, pid) in [("the node", node_pid), ("the app", app)] {
        let peak = peak_rss_kib(pid);
        assert!(
            peak < 128 * 1024,
            "{what} held {peak} KiB at its peak while 256 MiB went through each way"
        );
    }
}

#[test]
fn a_redeploy_under_load_fails_no_request_and_an_undeploy_lets_requests_finish() {
    let base = Base::installed();
    let project = webprobe();
    base.deploy(&project, Some("steady"));
    let offset = free_offset();
    let node = start_node(&base, "steadynode", offset, &[]);
    let http = format!("http://127.0.0.1:{}", 8080 + offset);
    wait_until_served(&format!("{http}/steady/"), BUILD_PATIENCE);
    let first = app_pid(9990 + offset, "steady").unwrap();

    let runtime = runtime();
    let load = SteadyLoad::start(&runtime, &format!("{http}/steady/slow?ms=20"), 8);
    base.deploy(&project, Some("steady"));
    eventually("the new process serving", PATIENCE, || {
        app_pid(9990 + offset, "steady").is_some_and(|pid| pid != first) && load.bodies() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = load.stop(&runtime);
    assert_eq!(failed, 0, "no request failed");
    assert!(ok > 50, "the load ran");
    node.wait_for("[steady] web mounted at /steady", Duration::ZERO);

    // An undeploy lets the request in flight finish before the app stops.
    let in_flight = || {
        let contexts = get_json_at(9990 + offset, "web");
        contexts
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["app"] == "steady")
            .map(|c| c["in_flight"].as_u64().unwrap())
            .sum::<u64>()
    };
    eventually(
        "the load's last requests done at the node",
        PATIENCE,
        || in_flight() == 0,
    );
    let slow = runtime.spawn({
        let url = format!("{http}/steady/slow?ms=1500");
        async move {
            let response = client().get(url).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    });
    eventually("the slow request in flight", PATIENCE, || in_flight() == 1);
    let output = base.cli(["undeploy", "steady"]).output().unwrap();
    assert!(output.status.success());
    let (status, _) = runtime.block_on(slow).unwrap();
    assert_eq!(status, 200, "the request in flight finished");
    node.wait_for("Undeployed \"steady\"", PATIENCE);
    let gone = runtime
        .block_on(client().get(format!("{http}/steady/")).send())
        .unwrap();
    assert_eq!(gone.status(), 404);
}

#[test]
fn a_session_outlives_the_node_that_made_it() {
    let base = Base::installed();
    base.deploy(&webprobe(), Some("sessions"));
    let cluster = cluster_name();
    let (one, two) = (free_offset(), free_offset());
    let first = clustered(&base, "one", one, &cluster);
    let second = clustered(&base, "two", two, &cluster);
    first.wait_for("Cluster view: [one, two]", PATIENCE);
    let url = |offset: u16| format!("http://127.0.0.1:{}/sessions/visits", 8080 + offset);
    wait_until_served(&url(one), BUILD_PATIENCE);
    wait_until_served(&url(two), PATIENCE);

    runtime().block_on(async {
        // A new session, made on one: its cookie names the node and the servlet attributes.
        let (body, set) = visit(&url(one), None).await;
        assert_eq!(body, "1 one");
        let set = set.expect("a session cookie");
        let cookie = pair(&set);
        assert!(
            cookie.ends_with(".one"),
            "the route is the node's name: {set}"
        );
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/sessions"] {
            assert!(set.contains(attribute), "{attribute} in {set}");
        }
        assert!(!set.contains("Secure"), "not over http: {set}");

        // The same cookie, alternately to each node, as Immutant's own cluster test did.
        assert_eq!(visit(&url(two), Some(&cookie)).await.0, "2 two");
        assert_eq!(visit(&url(one), Some(&cookie)).await.0, "3 one");

        // Cycling the id (after a login) keeps what the session holds under a new id.
        let (_, set) = visit(&url(one).replace("visits", "login"), Some(&cookie)).await;
        let cycled = pair(&set.expect("a new cookie"));
        assert_ne!(cycled, cookie);
        assert_eq!(visit(&url(two), Some(&cycled)).await.0, "4 two");
        let (stale, _) = visit(&url(two), Some(&cookie)).await;
        assert_eq!(stale, "1 two", "the old id is gone");

        // A client's own word that it came over https is not taken (only a proxy in front
        // would know), so the cookie stays as it is for http.
        let response = client()
            .get(url(two))
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        let set = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(!set.contains("Secure"), "{set}");
    });

    // The node that made the session dies: the other still has it.
    let cookie = runtime().block_on(async {
        let (body, set) = visit(&url(one), None).await;
        assert_eq!(body, "1 one");
        let cookie = pair(&set.unwrap());
        assert_eq!(visit(&url(one), Some(&cookie)).await.0, "2 one");
        cookie
    });
    kill_9(one);
    drop(first);
    second.wait_for("Cluster view: [two]", PATIENCE);
    let (body, _) = runtime().block_on(visit(&url(two), Some(&cookie)));
    assert_eq!(body, "3 two", "the session made on one goes on on two");
}

#[test]
fn the_web_template_counts_visits_in_the_session() {
    let base = Base::installed();
    let project = base.new_project_from("webtpl", "web");
    base.deploy(&project, None);
    let offset = free_offset();
    let _node = start_node(&base, "tplnode", offset, &[]);
    let page = format!("http://127.0.0.1:{}/webtpl/", 8080 + offset);
    wait_until_served(&page, BUILD_PATIENCE);
    runtime().block_on(async {
        let (html, set) = visit(&page, None).await;
        assert!(html.contains("<strong id=\"visits\">1</strong>"), "{html}");
        let cookie = pair(&set.unwrap());
        let (html, _) = visit(&page, Some(&cookie)).await;
        assert!(html.contains("<strong id=\"visits\">2</strong>"), "{html}");
        assert!(
            html.contains("<strong id=\"node\">tplnode</strong>"),
            "{html}"
        );
        let (api, _) = visit(&format!("{page}api"), Some(&cookie)).await;
        let api: serde_json::Value = serde_json::from_str(&api).unwrap();
        assert_eq!(api, serde_json::json!({"visits": 3, "node": "tplnode"}));
    });
}

/// Whether process `pid` has ended (gone, or a zombie waiting to be reaped).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn the_apps_of_a_node_killed_with_sigkill_exit() {
    let base = Base::installed();
    base.deploy(&webprobe(), Some("orphan"));
    let offset = free_offset();
    let node = start_node(&base, "doomed", offset, &[]);
    wait_until_served(
        &format!("http://127.0.0.1:{}/orphan/", 8080 + offset),
        BUILD_PATIENCE,
    );
    let app = app_pid(9990 + offset, "orphan").unwrap();
    kill_9(offset);
    drop(node);
    // Its socket closes with the node; no one reads its output any more, which must not keep
    // it from leaving.
    eventually("the app's exit", PATIENCE, || ended(app));
}
