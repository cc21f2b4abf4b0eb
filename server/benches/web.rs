//! Web throughput and failover, side by side in one run, with `wrk` (Debian's package):
//!
//! - requests/s and p99 latency of a small handler (the web probe's `/`) through the node's
//!   HTTP port; through nginx (Debian's package) proxying to the same app process over the same
//!   Unix socket, with keep-alive; from the same app process serving the handler on a port of
//!   its own (what the app itself can answer: no node in between); through the balancer to two clustered nodes; and through
//!   httpd with mod_proxy_cluster to the same two nodes, where its modules are built (the folder
//!   `IMMUTANT_TEST_MOD_PROXY_CLUSTER` names, as for the tests: README, Quick start);
//! - the failover gap: a client sending its session's requests one after another through the
//!   balancer while the node the session sticks to is killed with SIGKILL (requests failed, and
//!   the longest a request took), and the same with a graceful stop (SIGTERM) under load from
//!   eight clients (requests failed: the target is none).
//!
//! `cargo bench -p immutant-server --bench web` builds tests/apps/webprobe and runs everything
//! in a throwaway install of the release server, binding 127.0.0.1. It needs `wrk` and `nginx`
//! (`apt-get install wrk nginx`).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use immutant_e2e::mcmp::{Children, Httpd};
use support::{
    Nginx, TempInstall, WRK_CONNECTIONS, WRK_DURATION, build_app, free_offset, wait_until_answers,
    wrk,
};

fn main() {
    let webprobe = build_app("webprobe");
    let install = TempInstall::new();
    install.deploy(&webprobe, "bench");

    // One standalone node; its app also serves the same handler on a port of its own.
    let offset = free_offset(2000);
    let app_port = 8080 + free_offset(offset + 50);
    let node = install.start(&[
        format!("-Djboss.socket.binding.port-offset={offset}"),
        format!(
            "-Djboss.server.data.dir={}",
            install.home().join("solo").display()
        ),
        "-Djboss.node.name=solo".to_string(),
        format!("-Dwebprobe.direct-port={app_port}"),
    ]);
    node.wait_for("Deployed \"bench\"");
    let through_node = format!("http://127.0.0.1:{}/bench/", 8080 + offset);
    let to_app = format!("http://127.0.0.1:{app_port}/");
    let socket = std::fs::read_dir(install.home().join("solo/web"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "sock"))
        .expect("the app's web socket");
    let nginx_port = 8080 + free_offset(offset + 100);
    let nginx = Nginx::start(
        &install.home().join("nginx"),
        &format!(
            "upstream app {{ server unix:{socket}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{nginx_port};\n    location /bench/ {{\n      proxy_pass http://app/;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header X-Forwarded-For $remote_addr;\n      proxy_set_header X-Forwarded-Proto http;\n      proxy_set_header X-Forwarded-Prefix /bench;\n    }}\n  }}",
            socket = socket.display()
        ),
    );
    let through_nginx = format!("http://127.0.0.1:{nginx_port}/bench/");
    wait_until_answers(&through_nginx);

    let node_numbers = wrk(&through_node, &[]);
    let nginx_numbers = wrk(&through_nginx, &[]);
    let app_numbers = wrk(&to_app, &[]);
    drop(nginx);
    node.stop();

    // Two clustered nodes behind the balancer.
    let lb = free_offset(offset + 200);
    let (port, mcmp) = (8080 + lb, 9990 + lb);
    let _balancer = install.start_balancer(port, mcmp, &[]);
    // httpd with mod_proxy_cluster beside it, told about the same nodes.
    let httpd = Httpd::start(Children::Debian)
        .inspect_err(|why| println!("httpd with mod_proxy_cluster is left out: {why}"))
        .ok();
    let balancers: Vec<u16> = [Some(mcmp), httpd.as_ref().map(|httpd| httpd.mcmp)]
        .into_iter()
        .flatten()
        .collect();
    let cluster = format!("webbench-{}", std::process::id());
    let offsets = [free_offset(lb + 100), free_offset(lb + 200)];
    let nodes: Vec<_> = ["one", "two"]
        .iter()
        .zip(offsets)
        .map(|(name, offset)| Some(install.start_behind(name, offset, &cluster, &balancers)))
        .collect();
    let mut nodes = nodes;
    let balanced = format!("http://127.0.0.1:{port}/bench/");
    wait_until_answers(&balanced);
    std::thread::sleep(Duration::from_secs(2));
    let balancer_numbers = wrk(&balanced, &[]);
    let httpd_numbers = httpd.map(|httpd| {
        let url = format!("http://127.0.0.1:{}/bench/", httpd.proxy);
        wait_until_answers(&url);
        wrk(&url, &[])
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let visits = format!("http://127.0.0.1:{port}/bench/visits");
    // SIGKILL of the session's node, one request after another.
    let (cookie, sticky) = runtime.block_on(session(&visits));
    let victim = nodes[index_of(&sticky)].take().unwrap();
    let killed = runtime.block_on(sequential_through(
        &visits,
        &cookie,
        Duration::from_millis(1500),
        move || {
            victim.signal(libc::SIGKILL);
            drop(victim);
        },
    ));

    // Restart the killed node, then a graceful stop of the session's node under load.
    let restarted = {
        let name = if sticky == "one" { "one" } else { "two" };
        install.start_behind(name, offsets[index_of(&sticky)], &cluster, &[mcmp])
    };
    nodes[index_of(&sticky)] = Some(restarted);
    std::thread::sleep(Duration::from_secs(3));
    let (cookie, sticky) = runtime.block_on(session(&visits));
    let victim = nodes[index_of(&sticky)].take().unwrap();
    let graceful = runtime.block_on(concurrent_through(&visits, &cookie, move || victim.stop()));

    println!(
        "\nthroughput ({WRK_CONNECTIONS} connections, {WRK_DURATION}, wrk on the same 2 cores):"
    );
    println!("  node's HTTP port        {node_numbers}");
    println!("  nginx -> same app       {nginx_numbers}");
    println!("  the app on its own port {app_numbers}");
    println!("  balancer -> two nodes   {balancer_numbers}");
    if let Some(httpd_numbers) = httpd_numbers {
        println!("  httpd + mod_proxy_cluster -> the same two nodes   {httpd_numbers}");
    }
    println!("failover through the balancer:");
    println!("  SIGKILL of the sticky node, sequential requests: {killed}");
    println!("  SIGTERM of the sticky node, 8 clients:          {graceful}");
}

fn index_of(node: &str) -> usize {
    if node == "one" { 0 } else { 1 }
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// GET with an optional cookie: the status, the body, and the session cookie set.
async fn get(
    client: &Client<HttpConnector, Body>,
    url: &str,
    cookie: Option<&str>,
) -> Result<(u16, String, Option<String>), String> {
    let mut request = hyper::Request::get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = client
        .request(request.body(Body::empty()).unwrap())
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or("").to_string());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        set,
    ))
}

/// A new session: its cookie, and the node it sticks to.
async fn session(url: &str) -> (String, String) {
    let (_, body, set) = get(&client(), url, None).await.expect("a session");
    let node = body.split(' ').nth(1).unwrap_or("").to_string();
    (set.expect("a session cookie"), node)
}

/// Sends the session's requests one after another for 4 s, doing `fault` after `at`; says how
/// many failed and the longest one took.
async fn sequential_through(
    url: &str,
    cookie: &str,
    at: Duration,
    fault: impl FnOnce() + Send + 'static,
) -> String {
    let client = client();
    let started = Instant::now();
    let mut fault = Some(fault);
    let (mut sent, mut failed, mut longest) = (0u64, Vec::new(), Duration::ZERO);
    while started.elapsed() < Duration::from_secs(4) {
        if started.elapsed() >= at
            && let Some(fault) = fault.take()
        {
            std::thread::spawn(fault);
        }
        let begun = Instant::now();
        let outcome = get(&client, url, Some(cookie)).await;
        longest = longest.max(begun.elapsed());
        sent += 1;
        match outcome {
            Ok((200, _, _)) => {}
            Ok((status, _, _)) => failed.push(status.to_string()),
            Err(error) => failed.push(error),
        }
    }
    format!(
        "{} of {sent} failed {failed:?}; longest request {:.0} ms",
        failed.len(),
        longest.as_secs_f64() * 1000.0
    )
}

/// Eight clients send the session's requests for 4 s; `fault` happens after 1.5 s.
async fn concurrent_through(
    url: &str,
    cookie: &str,
    fault: impl FnOnce() + Send + 'static,
) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let (url, cookie) = (url.to_string(), cookie.to_string());
            tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    let outcome = get(&client, &url, Some(&cookie)).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    match outcome {
                        Ok((200, _, _)) => {}
                        Ok((status, body, _)) => failed
                            .lock()
                            .unwrap()
                            .push(format!("{status} {}", body.trim())),
                        Err(error) => failed.lock().unwrap().push(error),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopping = std::thread::spawn(fault);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let _ = stopping.join();
    let failed = failed.lock().unwrap();
    format!(
        "{} of {} failed {failed:?}",
        failed.len(),
        sent.load(Ordering::Relaxed)
    )
}
