//! MCMP between mod_cluster's parts and ours. The balancer's MCMP port as any mod_cluster node
//! sees it: a node speaking exactly as Java mod_cluster does is served and leaves at shutdown,
//! and every command (wildcards and malformed ones too) is answered as httpd's mod_manager
//! answers it, field by field, ids aside. And our node as httpd with mod_proxy_cluster sees it:
//! killed and restarted, it leaves nothing stale there. The tests with httpd run where its
//! modules are built (README, Quick start), and say they were skipped elsewhere.

use std::time::{Duration, Instant};

use immutant_e2e::mcmp::{
    Children, Connector, Httpd, MODULES_VARIABLE, Mcmp, Reply, without_ids, without_node_ids,
};
use immutant_e2e::web::{Front, client, runtime};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, eventually, free_offset, kill_9, start_node, webprobe,
};

/// A GET through the balancer: its status and body.
fn get(front: &Front, path: &str, cookie: Option<&str>) -> (u16, String) {
    runtime().block_on(async {
        let mut request = client().get(front.url(path));
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        let response = request.send().await.expect("the balancer answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    })
}

/// The answer with the balancer's start time taken out.
fn without_id(body: &str) -> String {
    match body.split_once("&id=") {
        Some((before, _)) => format!("{before}&id=\n"),
        None => body.to_string(),
    }
}

#[test]
fn a_node_speaking_mcmp_as_java_mod_cluster_does_is_served_and_leaves_at_shutdown() {
    let base = Base::installed();
    let front = Front::start(&base);
    let connector = Connector::start("served by java-node");
    let mcmp = Mcmp::new(front.mcmp);
    let route = "java-node";
    let ok = |reply: Reply| {
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    };

    // What DefaultMCMPRequestFactory sends for WildFly's defaults: JVMRoute first, then the
    // parameters in their names' order, form-encoded.
    let config = format!(
        "JVMRoute={route}&Balancer=mycluster&Host=127.0.0.1&Maxattempts=1&Port={}&StickySessionForce=No&Type=http&ping=10",
        connector.port
    );
    assert_eq!(ok(mcmp.send("CONFIG", "/", &config)), "");
    let enable = format!("JVMRoute={route}&Alias=default-host%2Clocalhost&Context=%2Fjava");
    assert_eq!(
        ok(mcmp.send("ENABLE-APP", "/", &enable)),
        format!(
            "Type=ENABLE-APP-RSP\nJvmRoute={route}\nAlias=default-host Contexts=/java\n\nAlias=localhost Contexts=/java\n\n"
        )
    );
    let status = format!("JVMRoute={route}&Load=100");
    let ok_state = format!("Type=STATUS-RSP&JVMRoute={route}&State=OK&id=\n");
    assert_eq!(without_id(&ok(mcmp.send("STATUS", "/", &status))), ok_state);

    // Served, a session of the node's too, for the 10 s between two of its STATUS.
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(11) {
        assert_eq!(
            get(&front, "/java/hello", None),
            (200, "served by java-node".to_string())
        );
        let session = format!("JSESSIONID=abc.{route}");
        assert_eq!(get(&front, "/java/cart", Some(&session)).0, 200);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(without_id(&ok(mcmp.send("STATUS", "/", &status))), ok_state);

    // Its connector goes away: STATUS says the balancer cannot reach it.
    drop(connector);
    assert_eq!(
        without_id(&ok(mcmp.send("STATUS", "/", &status))),
        format!("Type=STATUS-RSP&JVMRoute={route}&State=NOTOK&id=\n")
    );
    // At shutdown it removes itself: every context, and the node.
    assert_eq!(
        ok(mcmp.send("REMOVE-APP", "/*", &format!("JVMRoute={route}"))),
        ""
    );
    eventually("the node gone", Duration::from_secs(5), || {
        front.status()["nodes"].as_array().unwrap().is_empty()
    });
    assert_eq!(get(&front, "/java/hello", None).0, 404);
}

/// How a pair of answers is held against each other.
#[derive(Clone, Copy)]
enum Compare {
    /// Status, `Type`, `Mess` (unless mod_manager's still says `TODO`) and body, the
    /// balancer's start time aside.
    Answer,
    /// INFO and DUMP: every line, ids aside.
    Listing,
    /// VERSION: the protocol, not the release.
    Protocol,
    /// INFO and DUMP asked for as XML: the whole text, nodes' ids aside.
    Xml,
}

/// httpd with mod_proxy_cluster, one process, or None when it cannot be started here (said).
fn httpd() -> Option<Httpd> {
    Httpd::start(Children::One)
        .inspect_err(|why| {
            eprintln!(
                "skipped: httpd with mod_proxy_cluster cannot be started here ({why}); set \
                 {MODULES_VARIABLE} to the folder of its modules (README, Quick start)"
            )
        })
        .ok()
}

#[test]
fn our_node_killed_and_restarted_leaves_httpd_nothing_stale() {
    let Some(httpd) = httpd() else { return };
    let base = Base::installed();
    let pid = std::process::id();
    let (kept, gone) = (format!("/kept{pid}"), format!("/gone{pid}"));
    base.deploy_with(&webprobe(), &["--name", "kept", "--context-path", &kept]);
    base.deploy_with(&webprobe(), &["--name", "gone", "--context-path", &gone]);
    let offset = free_offset();
    let proxies = format!("-Dimmutant.modcluster.proxies=127.0.0.1:{}", httpd.mcmp);
    let args = [
        proxies.as_str(),
        "-Dimmutant.modcluster.status-interval=1000",
    ];
    let info = Mcmp::new(httpd.mcmp);
    let enabled = |context: &str| {
        info.send("INFO", "/", "")
            .body
            .contains(&format!("Context: {context}, Status: ENABLED"))
    };
    let node = start_node(&base, "one", offset, &args);
    eventually("httpd hears of both apps", BUILD_PATIENCE, || {
        enabled(&kept) && enabled(&gone)
    });
    let through_httpd = format!("http://127.0.0.1:{}{kept}/", httpd.proxy);
    eventually("an app served through httpd", PATIENCE, || {
        runtime().block_on(async {
            let response = client().get(&through_httpd).send().await;
            response.is_ok_and(|response| response.status() == 200)
        })
    });

    // Killed, it cannot say it leaves; restarted without one of its apps, it leaves httpd
    // nothing of the app it no longer has (httpd keeps a node's contexts across CONFIGs).
    kill_9(offset);
    drop(node);
    let undeployed = base.cli(["undeploy", "gone"]).output().unwrap();
    assert!(undeployed.status.success(), "{undeployed:?}");
    let _node = start_node(&base, "one", offset, &args);
    eventually(
        "httpd knows the restarted node's app alone",
        PATIENCE,
        || {
            let info = info.send("INFO", "/", "").body;
            info.contains(&format!("Context: {kept}, Status: ENABLED"))
                && !info.contains(&format!("Context: {gone},"))
        },
    );
}

#[test]
fn the_balancer_answers_mcmp_as_httpd_mod_manager_does() {
    let Some(httpd) = httpd() else { return };
    let base = Base::installed();
    let front = Front::start(&base);
    let (one, two) = (Connector::start("one"), Connector::start("two"));
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (theirs, ours) = (Mcmp::new(httpd.mcmp), Mcmp::new(front.mcmp));
    let long = |n: usize| "a".repeat(n);
    let (p1, p2) = (one.port, two.port);
    use Compare::*;
    let steps: Vec<(&str, &str, String, Compare)> = vec![
        (
            "CONFIG",
            "/",
            format!(
                "JVMRoute=n1&Host=127.0.0.1&Port={p1}&Type=http&Alias=localhost,example.com&Context=/app,/other"
            ),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            format!(
                "JVMRoute=n2&Host=127.0.0.1&Port={p2}&Type=http&Balancer=mycluster&Domain=dom1&StickySessionCookie=SID&StickySessionPath=sid&StickySessionRemove=yes&StickySessionForce=No&WaitWorker=5&Maxattempts=3&flushpackets=auto&flushwait=15&ping=7&smax=9&ttl=2mi&Timeout=4"
            ),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            format!("JVMRoute=n3&Host=127.0.0.1&Port={closed}&Type=http"),
            Answer,
        ),
        ("DUMP", "/", String::new(), Listing),
        (
            "ENABLE-APP",
            "/",
            "JVMRoute=n1&Alias=localhost,example.com&Context=/app".into(),
            Answer,
        ),
        (
            "ENABLE-APP",
            "/",
            "JVMRoute=n2&Alias=A.test,b.test&Context=/x,/y".into(),
            Answer,
        ),
        (
            "ENABLE-APP",
            "/",
            "JVMRoute=n2&Alias=c.test&Alias=d.test&Context=/z".into(),
            Answer,
        ),
        // A node's first STATUS makes httpd's worker; its load shows from the second.
        ("STATUS", "/", "JVMRoute=n1&Load=50".into(), Answer),
        ("STATUS", "/", "JVMRoute=n1&Load=50".into(), Answer),
        ("STATUS", "/", "JVMRoute=n2&Load=30".into(), Answer),
        ("STATUS", "/", "JVMRoute=n2&Load=30".into(), Answer),
        ("STATUS", "/", "JVMRoute=n3&Load=10".into(), Answer),
        ("STATUS", "/", "JVMRoute=n2&Load=-1".into(), Answer),
        ("STATUS", "/", "JVMRoute=n2&Load=30".into(), Answer),
        ("PING", "/", "JVMRoute=n1".into(), Answer),
        ("PING", "/", "JVMRoute=n3".into(), Answer),
        ("PING", "/", String::new(), Answer),
        (
            "PING",
            "/",
            format!("Scheme=http&Host=127.0.0.1&Port={p1}"),
            Answer,
        ),
        (
            "PING",
            "/",
            format!("Scheme=http&Host=127.0.0.1&Port={closed}"),
            Answer,
        ),
        ("PING", "/", "Scheme=http&Host=127.0.0.1".into(), Answer),
        (
            "PING",
            "/",
            "Scheme=gopher&Host=127.0.0.1&Port=70".into(),
            Answer,
        ),
        ("PING", "/", "JVMRoute=ghost".into(), Answer),
        ("INFO", "/", String::new(), Listing),
        ("DUMP", "/", String::new(), Listing),
        ("INFO", "/", String::new(), Xml),
        ("DUMP", "/", String::new(), Xml),
        (
            "STOP-APP",
            "/",
            "JVMRoute=n1&Alias=localhost&Context=/app".into(),
            Answer,
        ),
        (
            "DISABLE-APP",
            "/",
            "JVMRoute=n1&Alias=example.com&Context=/app,/new".into(),
            Answer,
        ),
        (
            "REMOVE-APP",
            "/",
            "JVMRoute=n1&Alias=localhost,nowhere&Context=/app".into(),
            Answer,
        ),
        (
            "REMOVE-APP",
            "/",
            "JVMRoute=n1&Alias=example.com&Context=/other".into(),
            Answer,
        ),
        ("INFO", "/", String::new(), Listing),
        ("DUMP", "/", String::new(), Listing),
        ("DISABLE-APP", "/*", "JVMRoute=n2".into(), Answer),
        ("DUMP", "/", String::new(), Listing),
        ("STOP-APP", "/*", "JVMRoute=n2".into(), Answer),
        ("DUMP", "/", String::new(), Listing),
        ("ENABLE-APP", "/*", "JVMRoute=n2".into(), Answer),
        ("INFO", "/", String::new(), Listing),
        ("VERSION", "/", String::new(), Protocol),
        // Malformed, or naming what is not there: refused alike, and nothing changes.
        ("CONFIG", "/", String::new(), Answer),
        ("CONFIG", "/", "JVMRoute=".into(), Answer),
        ("CONFIG", "/", "JVMRoute=x&Host".into(), Answer),
        ("CONFIG", "/", "Host=127.0.0.1&Port=1".into(), Answer),
        (
            "CONFIG",
            "/",
            format!("JVMRoute={}&Type=http", long(64)),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            format!("JVMRoute=x&Balancer={}&Type=http", long(40)),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            format!("JVMRoute=x&Domain={}&Type=http", long(20)),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            format!("JVMRoute=x&StickySessionCookie={}&Type=http", long(30)),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            "JVMRoute=x&ping=soon&Type=http".into(),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            "JVMRoute=x&flushwait=5x&Type=http".into(),
            Answer,
        ),
        ("CONFIG", "/", "JVMRoute=x&ttl=zz&Type=http".into(), Answer),
        (
            "CONFIG",
            "/",
            "JVMRoute=x&Timeout=later&Type=http".into(),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            "JVMRoute=x&Alias=a.test&Type=http".into(),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            "JVMRoute=x&Context=/a&Type=http".into(),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            format!("JVMRoute=x&Alias={}&Context=/a&Type=http", long(255)),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            format!("JVMRoute=x&Alias=a&Context=/{}&Type=http", long(79)),
            Answer,
        ),
        (
            "CONFIG",
            "/",
            format!("JVMRoute=n1&Host=127.0.0.1&Port={p2}&Type=http"),
            Answer,
        ),
        ("ENABLE-APP", "/", "JVMRoute=n1".into(), Answer),
        ("ENABLE-APP", "/", "JVMRoute=n1&Context=/x".into(), Answer),
        ("ENABLE-APP", "/", "JVMRoute=n1&Alias=x.test".into(), Answer),
        ("ENABLE-APP", "/", "Alias=x.test&Context=/x".into(), Answer),
        (
            "ENABLE-APP",
            "/",
            "JVMRoute=ghost&Alias=x.test&Context=/x".into(),
            Answer,
        ),
        ("ENABLE-APP", "/*", "JVMRoute=ghost".into(), Answer),
        (
            "ENABLE-APP",
            "/",
            "JVMRoute=n1&Alias=x.test&Context=/%3Cscript%3E".into(),
            Answer,
        ),
        (
            "ENABLE-APP",
            "/",
            "JVMRoute=n1&Alias=x.test%0D%0AX: 1&Context=/x".into(),
            Answer,
        ),
        (
            "STOP-APP",
            "/",
            "JVMRoute=ghost&Alias=x.test&Context=/x".into(),
            Answer,
        ),
        ("REMOVE-APP", "/", "JVMRoute=n1&Alias=x.test".into(), Answer),
        ("STATUS", "/", "JVMRoute=n1&Load=500".into(), Answer),
        ("STATUS", "/", "JVMRoute=n1&Load=abc".into(), Answer),
        ("STATUS", "/", "JVMRoute=n1&Evil=1".into(), Answer),
        ("STATUS", "/", "JVMRoute=ghost&Load=5".into(), Answer),
        (
            "STATUS",
            "/",
            format!("JVMRoute={}&Load=5", long(64)),
            Answer,
        ),
        ("PING", "/", "Evil=1".into(), Answer),
        ("DUMP", "/", String::new(), Listing),
        ("INFO", "/", String::new(), Listing),
        // Removing every alias and context: answered alike (this balancer also lets the node
        // go, which mod_manager 2.0 does only for `REMOVE-APP /*`).
        (
            "REMOVE-APP",
            "/",
            "JVMRoute=n1&Alias=*&Context=*".into(),
            Answer,
        ),
        ("REMOVE-APP", "/*", "JVMRoute=n2".into(), Answer),
    ];
    let mut differences = Vec::new();
    for (command, path, body, compare) in &steps {
        let accept = match compare {
            Xml => "text/xml",
            _ => "*/*",
        };
        let (reference, answer) = (
            theirs.send_accepting(command, path, body, accept),
            ours.send_accepting(command, path, body, accept),
        );
        let same = match compare {
            Answer => {
                let todo = reference
                    .mess
                    .as_deref()
                    .is_some_and(|mess| mess.starts_with("TODO"));
                reference.status == answer.status
                    && reference.kind == answer.kind
                    && (todo || reference.mess == answer.mess)
                    && (reference.status != 200
                        || without_id(&reference.body) == without_id(&answer.body))
            }
            Listing => without_ids(&reference.body) == without_ids(&answer.body),
            Xml => without_node_ids(&reference.body) == without_node_ids(&answer.body),
            Protocol => {
                let protocol = |body: &str| {
                    body.split_once("protocol: ")
                        .map(|(_, p)| p.trim().to_string())
                };
                protocol(&reference.body) == protocol(&answer.body)
            }
        };
        if !same {
            differences.push(format!(
                "{command} {path} {body}\n  mod_manager: {reference:?}\n  ours:        {answer:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} commands answered otherwise:\n{}",
        differences.len(),
        steps.len(),
        differences.join("\n")
    );
    drop((one, two));
}
