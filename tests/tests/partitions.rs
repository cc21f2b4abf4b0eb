//! Partitions: real nodes in network namespaces of the test's making (see
//! `immutant_e2e::netns`), with a host's link taken off the switch and put back. Ignored (and
//! counted so) unless built as root; as root, a namespace that cannot be made fails it.

use std::time::{Duration, Instant};

use immutant_e2e::netns::Lan;
use immutant_e2e::web::{pair, visit};
use immutant_e2e::{Base, PATIENCE, Proc, cluster_name, eventually, webprobe};

/// The balancer's ports in its host.
const PORT: u16 = 8000;
const MCMP: u16 = 6666;

/// A balancer in host 0 of `lan`, taking MCMP from the whole LAN.
fn balancer(lan: &Lan, base: &Base) -> Proc {
    let address = lan.address(0).to_string();
    let command = base.cli([
        "balancer",
        "-b",
        &address,
        "--port",
        &PORT.to_string(),
        "--mcmp-port",
        &MCMP.to_string(),
        "--allow",
        "10.213.0.0/24",
        "--no-advertise",
    ]);
    let proc = Proc::spawn(lan.command(0, command));
    proc.wait_for("Immutant balancer", PATIENCE);
    proc
}

/// Clustered node `name` of `cluster` in host `i` of `lan`, bound to the host's address and
/// telling the balancer of host 0 about itself every second; started.
fn node(lan: &Lan, base: &Base, i: usize, name: &str, cluster: &str) -> Proc {
    let extra = [
        format!("-Dimmutant.modcluster.proxies={}:{MCMP}", lan.address(0)),
        "-Dimmutant.modcluster.status-interval=1000".to_string(),
    ];
    lan.node(base, i, (name, cluster), &extra)
}

/// The balancer's status, asked from host 0.
fn status(lan: &Lan) -> serde_json::Value {
    let url = format!("http://{}:{MCMP}/status.json", lan.address(0));
    get_within(lan, 0, &url, None)
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The routes of the nodes the balancer has `context` enabled on, sorted.
fn enabled(lan: &Lan, context: &str) -> Vec<String> {
    let status = status(lan);
    let mut routes: Vec<String> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|node| {
            node["state"] == "up"
                && node["contexts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["path"] == context && c["state"] == "enabled")
        })
        .filter_map(|node| node["route"].as_str().map(str::to_string))
        .collect();
    routes.sort();
    routes
}

/// `GET url` from host 0 with the session cookie `cookie`: the body and the cookie set.
fn visit_from_client(lan: &Lan, url: &str, cookie: Option<&str>) -> (String, Option<String>) {
    lan.within(0, || {
        current_thread()
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), visit(url, cookie)).await
            })
            .unwrap_or_else(|_| panic!("GET {url} was not answered within 30 s"))
    })
}

/// A runtime on the calling thread (in the host it entered).
fn current_thread() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// How many times `node` has logged a view with both nodes.
fn views_of_both(node: &Proc) -> usize {
    node.lines()
        .iter()
        .filter(|line| line.contains("Cluster view: [one, two]"))
        .count()
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]
fn a_node_cut_off_is_passed_over_its_sessions_go_on_elsewhere_and_it_comes_back_after_the_heal() {
    // The sessions cache's primary is one, the oldest holder: here it is the node cut off, and
    // the side left takes the newer lease.
    cut_off_with_a_session_on("one");
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]
fn what_the_old_primary_answers_while_the_other_side_takes_a_newer_lease_outlives_the_heal() {
    // The node cut off is two: its side takes a newer lease of its own, and what one (the old
    // primary) answers meanwhile must outlive the heal all the same.
    cut_off_with_a_session_on("two");
}

/// Two clustered nodes behind a balancer; a session begins on `name` (the balancer sends a new
/// session to the node its cookie names), which is then cut off from the balancer and the other
/// node, and healed.
fn cut_off_with_a_session_on(name: &str) {
    let lan = Lan::make(3);
    let base = Base::installed();
    let context = "/cutprobe";
    base.deploy_with(
        &webprobe(),
        &["--name", "cutprobe", "--context-path", context],
    );
    let _front = balancer(&lan, &base);
    let cluster = cluster_name();
    let one = node(&lan, &base, 1, "one", &cluster);
    let two = node(&lan, &base, 2, "two", &cluster);
    eventually("both nodes enabled at the balancer", PATIENCE, || {
        enabled(&lan, context) == ["one", "two"]
    });

    let url = format!("http://{}:{PORT}{context}/visits", lan.address(0));
    let (body, set) = visit_from_client(&lan, &url, Some(&format!("JSESSIONID=new.{name}")));
    let cookie = pair(&set.expect("a session cookie"));
    let served_by = body.split(' ').nth(1).unwrap().to_string();
    assert_eq!(
        served_by, name,
        "the balancer sends a session to the node it names"
    );
    for n in 2..=3 {
        let (body, _) = visit_from_client(&lan, &url, Some(&cookie));
        assert_eq!(
            body,
            format!("{n} {served_by}"),
            "the session stays on its node"
        );
    }

    // Both nodes hold a copy (the first writes may come before the nodes know they both hold
    // the sessions cache; the copy follows within a second or so).
    eventually("the session on both nodes", Duration::from_secs(15), || {
        [1, 2].iter().all(|&host| sessions_on(&lan, host) == 1)
    });

    // The session's node is cut off from the balancer and the other node alike.
    let (host, other) = match served_by.as_str() {
        "one" => (1, "two"),
        "two" => (2, "one"),
        node => panic!("served by {node}, which is neither node"),
    };
    lan.cut(host);
    let started = Instant::now();
    let (body, set) = visit_from_client(&lan, &url, Some(&cookie));
    assert_eq!(
        body,
        format!("4 {other}"),
        "the session goes on on the node that is left"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "served within 20 s of the cut, not {:?}",
        started.elapsed()
    );
    let cookie = pair(&set.expect("the cookie names its new node"));
    assert!(cookie.ends_with(&format!(".{other}")), "{cookie}");
    let (body, _) = visit_from_client(&lan, &url, Some(&cookie));
    assert_eq!(body, format!("5 {other}"));

    // Healed: the node is back at the balancer and in the cluster, serves new sessions, and
    // the session stays where it went, its count where it was.
    let views = [views_of_both(&one), views_of_both(&two)];
    lan.heal(host);
    eventually(
        "the node enabled again after the heal",
        Duration::from_secs(30),
        || enabled(&lan, context) == ["one", "two"],
    );
    eventually(
        "both nodes in one view again",
        Duration::from_secs(30),
        || views_of_both(&one) > views[0] && views_of_both(&two) > views[1],
    );
    let (body, _) = visit_from_client(&lan, &url, Some(&cookie));
    assert_eq!(body, format!("6 {other}"), "the session did not go back");
    if other == "one" {
        one.wait_for("answered while the cluster was split", PATIENCE);
    }
    // A connection the balancer kept to the healed node from before the cut may be dead: the
    // node serves again once one request has found that out.
    let routed_back = format!("JSESSIONID=unknown.{served_by}");
    eventually(
        "the healed node serves again",
        Duration::from_secs(20),
        || try_visit(&lan, &url, &routed_back).is_some_and(|body| body == format!("1 {served_by}")),
    );
}

/// How many sessions of the app node `host` holds, as its management API says (on its
/// host's loopback).
fn sessions_on(lan: &Lan, host: usize) -> u64 {
    let caches: serde_json::Value = get_within(lan, host, "http://127.0.0.1:9990/caches", None)
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    caches
        .as_array()
        .and_then(|caches| {
            caches
                .iter()
                .find(|cache| cache["name"] == "immutant.web.sessions/cutprobe")
        })
        .and_then(|cache| cache["entries"].as_u64())
        .unwrap_or(0)
}

/// `GET url` from host 0 with `cookie`: the body if it answered 200.
fn try_visit(lan: &Lan, url: &str, cookie: &str) -> Option<String> {
    get_within(lan, 0, url, Some(cookie))
}

/// `GET url` from host `host`, with `cookie` if any: the body if it answered with success
/// within 10 s.
fn get_within(lan: &Lan, host: usize, url: &str, cookie: Option<&str>) -> Option<String> {
    lan.within(host, || {
        current_thread().block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .ok()?;
            let mut request = client.get(url);
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            let response = request.send().await.ok()?;
            match response.status().is_success() {
                true => response.text().await.ok(),
                false => None,
            }
        })
    })
}
