//! Client connections the node hands to the apps they are for: the app serves a handed
//! connection's requests itself (the node paused, it still answers), a request for another app
//! on the same connection goes back to the node and reaches that app, and an idle connection
//! outlives a redeploy: the next request on it reaches the new process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, eventually, free_offset, get_json_at, get_text_at, start_node,
    webprobe,
};

/// One request on a kept connection: its status and body.
fn get(stream: &mut TcpStream, path: &str) -> (u16, String) {
    send(stream, &[path]);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (status, _, body) = answer(&mut reader);
    assert!(reader.buffer().is_empty(), "nothing after the answer");
    (status, body)
}

/// Asks for each of `paths` on `stream`, all at once, without waiting for answers.
fn send(stream: &mut TcpStream, paths: &[&str]) {
    let requests: String = paths
        .iter()
        .map(|path| format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
        .collect();
    stream.write_all(requests.as_bytes()).unwrap();
}

/// The next answer read: its status, headers (lower-case names) and body.
fn answer(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, String) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {status:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (code, headers, String::from_utf8(body).unwrap())
}

/// The pid of the process of `app` (from the management API), as `/pid` answers it.
fn app_pid(management: u16, app: &str) -> Option<String> {
    immutant_e2e::app_pid(management, app).map(|pid| pid.to_string())
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

#[test]
fn a_handed_connection_is_served_by_its_app_and_another_apps_request_goes_back() {
    let base = Base::installed();
    let project = webprobe();
    base.deploy(&project, Some("one"));
    base.deploy(&project, Some("two"));
    let offset = free_offset();
    let node = start_node(&base, "handing", offset, &[]);
    node.wait_for("Deployed \"one\"", BUILD_PATIENCE);
    node.wait_for("Deployed \"two\"", BUILD_PATIENCE);
    let (http, management) = (8080 + offset, 9990 + offset);
    let (one, two) = (
        app_pid(management, "one").unwrap(),
        app_pid(management, "two").unwrap(),
    );

    // The app sees what it would through the node: its path, and the forwarded headers.
    let mut kept = connect(http);
    let (status, seen) = get(&mut kept, "/one/request?q=1");
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["path"], "/request");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(seen["context-path"], "/one");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-prefix"], "/one");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(seen["headers"]["x-forwarded-host"], "127.0.0.1");
    assert_eq!(get(&mut kept, "/one/pid"), (200, one.clone()));

    // With the node paused, the app still answers on the connection it was handed.
    node.signal(libc::SIGSTOP);
    let answered = get(&mut kept, "/one/pid");
    node.signal(libc::SIGCONT);
    assert_eq!(
        answered,
        (200, one.clone()),
        "the app serves the connection itself"
    );

    // Another app's request goes back to the node with the connection, and on to that app;
    // the node serves the connection from then on.
    assert_eq!(get(&mut kept, "/two/pid"), (200, two));
    assert_eq!(get(&mut kept, "/one/pid"), (200, one.clone()));
    let (status, _) = get(&mut kept, "/nowhere");
    assert_eq!(status, 404, "the node's page for no app");

    // A client that does not wait for answers, asking another app's page second: asked to ask
    // again on a new connection (the second request cannot go back alone).
    let mut eager = connect(http);
    send(&mut eager, &["/one/pid", "/two/pid"]);
    let mut reader = BufReader::new(eager.try_clone().unwrap());
    let (status, _, body) = answer(&mut reader);
    assert_eq!((status, body), (200, one.clone()));
    let (status, headers, _) = answer(&mut reader);
    assert_eq!(status, 307);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("location"), Some("/two/pid"));
    assert_eq!(header("connection"), Some("close"));

    // What the app answered on its own connections is counted at the node, with what the node
    // passed on: four and one.
    eventually("the app's answers in the node's metrics", PATIENCE, || {
        get_text_at(management, "metrics").lines().any(|line| {
            line.starts_with("immutant_http_requests_total{")
                && line.contains("context=\"/one\"")
                && line.contains("status=\"200\"")
                && line.ends_with(" 5")
        })
    });
}

#[test]
fn an_idle_handed_connection_outlives_a_redeploy() {
    let base = Base::installed();
    let project = webprobe();
    base.deploy(&project, Some("steady"));
    let offset = free_offset();
    let node = start_node(&base, "redeploying", offset, &[]);
    node.wait_for("Deployed \"steady\"", BUILD_PATIENCE);
    let (http, management) = (8080 + offset, 9990 + offset);
    let first = app_pid(management, "steady").unwrap();

    let mut kept = connect(http);
    assert_eq!(get(&mut kept, "/steady/pid"), (200, first.clone()));
    base.deploy(&project, Some("steady"));
    eventually("the new process serving", PATIENCE, || {
        app_pid(management, "steady").is_some_and(|pid| pid != first)
    });
    let second = app_pid(management, "steady").unwrap();
    eventually("the old process gone", PATIENCE, || {
        !std::path::Path::new(&format!("/proc/{first}")).exists()
    });
    // The old process gave its idle connection back as it stopped: the next request on it is
    // the new process's.
    assert_eq!(get(&mut kept, "/steady/pid"), (200, second));
}

#[test]
fn an_undeploy_answers_the_request_in_flight_then_gives_its_connection_back() {
    let base = Base::installed();
    let project = webprobe();
    base.deploy(&project, Some("leaving"));
    let offset = free_offset();
    let node = start_node(&base, "undeploying", offset, &[]);
    node.wait_for("Deployed \"leaving\"", BUILD_PATIENCE);
    let (http, management) = (8080 + offset, 9990 + offset);
    let pid = app_pid(management, "leaving").unwrap();

    let mut kept = connect(http);
    assert_eq!(get(&mut kept, "/leaving/pid"), (200, pid));
    send(&mut kept, &["/leaving/slow?ms=1500"]);
    eventually("the slow request in flight at the app", PATIENCE, || {
        let contexts = get_json_at(management, "web");
        contexts
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["in_flight"] == 1)
    });
    let output = base.cli(["undeploy", "leaving"]).output().unwrap();
    assert!(output.status.success());
    let mut reader = BufReader::new(kept.try_clone().unwrap());
    let (status, headers, _) = answer(&mut reader);
    assert_eq!(status, 200, "the request in flight answered");
    assert!(
        !headers
            .iter()
            .any(|(name, value)| name == "connection" && value == "close"),
        "the connection kept: {headers:?}"
    );
    node.wait_for("Undeployed \"leaving\"", PATIENCE);
    // The connection went back to the node as the app stopped: the node answers on it.
    let (status, _) = get(&mut kept, "/leaving/pid");
    assert_eq!(status, 404, "nothing mounted there now");
}
