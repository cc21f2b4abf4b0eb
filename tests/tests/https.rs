//! HTTPS at the edge, with a certificate authority made in the test: the balancer serves the
//! web template to curl over HTTP/1.1 and HTTP/2 and to Chromium over HTTP/2 (trusting that
//! authority alone), the session survives kill -9 of its node, SNI picks each virtual host's
//! certificate, WebSockets echo over TLS on HTTP/1.1 and on HTTP/2 (extended CONNECT), plain
//! HTTP is sent to HTTPS and HSTS said; a certificate replaced on disk is served to new
//! connections while an open one goes on; every bad certificate stops the start, naming the
//! file; and a node serves HTTPS itself, its certificate's coming expiry in the log, `status`
//! and the console.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use immutant_e2e::browser::{Chromium, shoot, until};
use immutant_e2e::tls::{Issued, TestCa, served};
use immutant_e2e::web::{Behind, Front, runtime};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, eventually, free_offset, kill_9, start_node, webprobe,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What curl printed, and the status, headers and protocol version it saw (`1.1` or `2`).
struct Curled {
    body: String,
    headers: String,
    version: String,
}

/// curl, trusting `ca` alone, with `host` resolved to 127.0.0.1 on `port`, a cookie jar in
/// `jar`, and `extra` arguments.
fn curl(ca: &Path, jar: &Path, host: &str, port: u16, extra: &[&str], url: &str) -> Curled {
    let headers = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args([
            "-c",
            &jar.display().to_string(),
            "-b",
            &jar.display().to_string(),
        ])
        .arg("-D")
        .arg(headers.path())
        .args(["-w", "\n%{http_version}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        output.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = String::from_utf8(output.stdout).unwrap();
    let (body, version) = out.rsplit_once('\n').unwrap();
    Curled {
        body: body.to_string(),
        headers: std::fs::read_to_string(headers.path())
            .unwrap()
            .to_lowercase(),
        version: version.to_string(),
    }
}

/// The visit count and node of the web template's `/api` answer.
fn visits(body: &str) -> (u64, String) {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    (
        json["visits"].as_u64().unwrap(),
        json["node"].as_str().unwrap().to_string(),
    )
}

/// Sends `text` on a WebSocket and answers what came back.
async fn echo<S>(mut socket: tokio_tungstenite::WebSocketStream<S>, text: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    socket.send(Message::text(text)).await.unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    echoed.into_text().unwrap().to_string()
}

#[test]
fn the_web_template_over_https_keeps_its_session_when_its_node_dies() {
    let base = Base::installed();
    let project = base.new_project_from("visits", "web");
    base.deploy(&project, None);
    let probe_context = format!("/wsprobe{}", std::process::id());
    base.deploy_with(
        &webprobe(),
        &["--name", "wsprobe", "--context-path", &probe_context],
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    // The first certificate is also for a client that names no host (as by address).
    let shop = ca.issue(dir.path(), "shop", &["shop.test", "127.0.0.1"], -1, 90);
    let blog = ca.issue(dir.path(), "blog", &["blog.test", "*.blog.test"], -1, 90);
    let front = Front::start_https(&base, &[&shop, &blog], &["--redirect-http", "--hsts"]);
    let tls = front.tls.unwrap();
    let behind = Behind::start(&base, &front, Duration::from_secs(1), "/visits");
    eventually("the probe enabled at the balancer", BUILD_PATIENCE, || {
        front.enabled(&probe_context) == ["one", "two"]
    });
    let jar = dir.path().join("cookies");
    let shop_url = |path: &str| format!("https://shop.test:{tls}{path}");
    let curl = |extra: &[&str], url: &str| curl(&ca_file, &jar, "shop.test", tls, extra, url);

    // HTTP/1.1, then HTTP/2: one session, on one node, its cookie Secure, HSTS said.
    let first = curl(&["--http1.1"], &shop_url("/visits/api"));
    assert_eq!(first.version, "1.1");
    let (count, node) = visits(&first.body);
    assert_eq!(count, 1);
    assert!(
        first
            .headers
            .contains("strict-transport-security: max-age=31536000"),
        "{}",
        first.headers
    );
    let cookie = first
        .headers
        .lines()
        .find(|line| line.starts_with("set-cookie: jsessionid="))
        .unwrap_or_else(|| panic!("a session cookie: {}", first.headers));
    assert!(cookie.contains("; secure"), "{cookie}");
    let second = curl(&["--http2"], &shop_url("/visits/api"));
    assert_eq!(second.version, "2");
    assert_eq!(visits(&second.body), (2, node.clone()));

    // The app hears the client came over HTTPS.
    let request = curl(&["--http2"], &shop_url(&format!("{probe_context}/request")));
    let request: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(
        request["headers"]["x-forwarded-proto"], "https",
        "{request}"
    );

    // Plain HTTP is sent to the same address over HTTPS.
    let plain = curl(
        &["-H", "Host: shop.test"],
        &format!("http://127.0.0.1:{}/visits/api?a=1", front.port),
    );
    assert!(
        plain.headers.starts_with("http/1.1 308"),
        "{}",
        plain.headers
    );
    assert!(
        plain
            .headers
            .contains(&format!("location: https://shop.test:{tls}/visits/api?a=1")),
        "{}",
        plain.headers
    );
    assert!(!plain.headers.contains("strict-transport-security"));

    let runtime = runtime();
    runtime.block_on(async {
        // SNI: each virtual host its certificate (a wildcard's too), the first for a client
        // that names none.
        for (name, issued) in [
            ("shop.test", &shop),
            ("blog.test", &blog),
            ("www.blog.test", &blog),
            ("127.0.0.1", &shop),
        ] {
            let stream = ca.connect(tls, name, &[b"http/1.1"]).await;
            assert!(
                served(&stream) == issued.der,
                "{name} is served its certificate"
            );
        }

        // A WebSocket over TLS and HTTP/1.1.
        let stream = ca.connect(tls, "shop.test", &[b"http/1.1"]).await;
        let url = shop_url(&format!("{probe_context}/ws"));
        let wss = format!("wss://shop.test:{tls}{probe_context}/ws");
        let (socket, _) = tokio_tungstenite::client_async(wss.as_str(), stream)
            .await
            .unwrap();
        assert_eq!(echo(socket, "over h1").await, "echo: over h1");

        // And over HTTP/2, by extended CONNECT.
        let stream = ca.connect(tls, "shop.test", &[b"h2"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut connect = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(url.as_str())
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .unwrap();
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let mut response = sender.send_request(connect).await.unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.headers());
        let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Client,
            None,
        )
        .await;
        assert_eq!(echo(socket, "over h2").await, "echo: over h2");
        let _ = response.into_body().collect().await;
    });

    // The session's node dies: the next request, over HTTP/2, goes on on the other.
    let (offset, other) = behind.offset_and_other(&node);
    kill_9(offset);
    let after = curl(&["--http2"], &shop_url("/visits/api"));
    assert_eq!(visits(&after.body), (3, other.to_string()));

    // Chromium, trusting the test's authority alone, loads the page over HTTP/2, and over
    // HTTP/1.1 with HTTP/2 turned off.
    for (protocol, extra) in [("h2", None), ("http/1.1", Some("--disable-http2"))] {
        let profile = tempfile::tempdir().unwrap();
        let mut flags = vec![
            format!("--ignore-certificate-errors-spki-list={}", ca.spki_sha256),
            "--host-resolver-rules=MAP shop.test 127.0.0.1".to_string(),
        ];
        flags.extend(extra.map(str::to_string));
        let browser = Chromium::launch_with(profile.path(), &flags);
        runtime.block_on(async {
            let mut page = browser.open(&shop_url("/visits/")).await;
            until(
                &mut page,
                "the page shows a visit",
                "document.querySelector('#visits')?.textContent === '1'",
            )
            .await;
            let came_over = page
                .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
                .await;
            assert_eq!(came_over, protocol);
            assert_eq!(page.text_of("#node").await, other);
            shoot(
                &mut page,
                &format!("https-visits-{}.png", protocol.replace('/', "")),
            )
            .await;
        });
    }
}

/// One request on an open HTTP/1.1 connection: its status.
async fn ask(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    let request = hyper::Request::get("/anything")
        .header("host", "shop.test")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

#[test]
fn a_certificate_replaced_on_disk_is_served_to_new_connections_while_open_ones_go_on() {
    let base = Base::installed();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.issue(dir.path(), "shop", &["shop.test"], -1, 90);
    let front = Front::start_https(&base, &[&first], &[]);
    let tls = front.tls.unwrap();
    let runtime = runtime();
    runtime.block_on(async {
        let open = ca.connect(tls, "shop.test", &[b"http/1.1"]).await;
        assert!(served(&open) == first.der);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(open))
            .await
            .unwrap();
        tokio::spawn(connection);
        // No node is behind it: the balancer's own page answers.
        assert_eq!(ask(&mut sender).await, 404);

        let second = ca.issue(dir.path(), "shop", &["shop.test"], -1, 90);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let fresh = ca.connect(tls, "shop.test", &[b"http/1.1"]).await;
            if served(&fresh) == second.der {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new certificate is served within 15 s; the balancer said:\n{}",
                front.proc.text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        front.proc.wait_for("reloaded the certificates", PATIENCE);
        assert_eq!(ask(&mut sender).await, 404, "the open connection goes on");

        // A broken file keeps the certificate served, saying why.
        std::fs::write(&second.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
        front
            .proc
            .wait_for("kept the certificate served before", PATIENCE);
        let fresh = ca.connect(tls, "shop.test", &[b"http/1.1"]).await;
        assert!(served(&fresh) == second.der);
        assert_eq!(ask(&mut sender).await, 404);
    });
}

/// Runs `cargo immutant balancer` with `cert` and `key`: its exit status must be a failure,
/// and what it said must contain `said`.
fn refused(base: &Base, cert: &Path, key: &Path, said: &str) {
    let files = [
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
    ];
    refused_with(base, &files, said);
}

/// Runs `cargo immutant balancer` with `https` arguments: its exit status must be a failure,
/// and what it said must contain `said`.
fn refused_with(base: &Base, https: &[&std::ffi::OsStr], said: &str) {
    let offset = free_offset();
    let output = base
        .cli(["balancer", "--no-advertise"])
        .args(["--port", &(8080 + offset).to_string()])
        .args(["--mcmp-port", &(9990 + offset).to_string()])
        .args(["--tls-port", &(8443 + offset).to_string()])
        .args(https)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert!(text.contains(said), "expected {said:?} in:\n{text}");
}

#[test]
fn every_bad_certificate_stops_the_start_naming_the_file() {
    let base = Base::installed();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let good = ca.issue(dir.path(), "good", &["shop.test"], -1, 90);
    let other = ca.issue(dir.path(), "other", &["shop.test"], -1, 90);
    let expired = ca.issue(dir.path(), "expired", &["shop.test"], -90, -1);
    let early = ca.issue(dir.path(), "early", &["shop.test"], 3, 90);
    let missing = dir.path().join("missing.pem");
    let name = |issued: &Issued| issued.cert.display().to_string();
    refused(
        &base,
        &missing,
        &good.key,
        &format!("cannot read the certificate file {}", missing.display()),
    );
    refused(
        &base,
        dir.path(),
        &good.key,
        &format!(
            "cannot read the certificate file {}: Is a directory",
            dir.path().display()
        ),
    );
    let no_key = dir.path().join("missing.key");
    refused(
        &base,
        &good.cert,
        &no_key,
        &format!("cannot read the key file {}", no_key.display()),
    );
    let not_a_key = dir.path().join("not.key");
    std::fs::write(&not_a_key, "hello").unwrap();
    std::fs::set_permissions(
        &not_a_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    refused(
        &base,
        &good.cert,
        &not_a_key,
        &format!("{} holds no PEM private key", not_a_key.display()),
    );
    refused_with(
        &base,
        &["--cert".as_ref(), good.cert.as_os_str()],
        "1 --cert but 0 --key given; give each certificate's key after it",
    );
    refused_with(
        &base,
        &["--hsts".as_ref()],
        "--tls-port needs HTTPS: give its certificate and key with --cert FILE --key FILE",
    );
    refused(
        &base,
        &good.cert,
        &other.key,
        &format!(
            "the key in {} is not the key of the certificate in {}",
            other.key.display(),
            name(&good)
        ),
    );
    refused(
        &base,
        &expired.cert,
        &expired.key,
        &format!("the certificate in {} expired on", name(&expired)),
    );
    refused(
        &base,
        &early.cert,
        &early.key,
        &format!("the certificate in {} is not valid until", name(&early)),
    );
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    refused(&base, &not_pem, &good.key, "holds no PEM certificate");
    std::fs::set_permissions(
        &good.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    refused(
        &base,
        &good.cert,
        &good.key,
        &format!(
            "the key file {} is open to other users of this host (mode 644); make it this user's alone: chmod 600",
            good.key.display()
        ),
    );

    // A node refuses the same way, before it starts anything.
    let mut node = base.run(base.node_args("one", free_offset()).into_iter().chain([
        format!("-Dimmutant.http.tls.cert={}", expired.cert.display()),
        format!("-Dimmutant.http.tls.key={}", expired.key.display()),
    ]));
    let status = node.wait_exit(PATIENCE);
    assert!(!status.success());
    let text = node.text();
    assert!(
        text.contains(&format!("the certificate in {} expired on", name(&expired))),
        "{text}"
    );
    assert!(!text.contains("started in"), "{text}");
}

#[test]
fn a_node_serves_https_itself_and_shows_its_certificate_expiring() {
    let base = Base::installed();
    base.deploy_with(
        &webprobe(),
        &["--name", "probe", "--context-path", "/probe"],
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    // Ten days left: warned about.
    let site = ca.issue(dir.path(), "site", &["localhost"], -1, 10);
    let offset = free_offset();
    let tls = 8443 + offset;
    let node = start_node(
        &base,
        "one",
        offset,
        &[
            &format!("-Dimmutant.http.tls.cert={}", site.cert.display()),
            &format!("-Dimmutant.http.tls.key={}", site.key.display()),
            "-Dimmutant.http.tls.redirect-http=true",
        ],
    );
    node.wait_for("Deployed \"probe\"", BUILD_PATIENCE);
    let started = node.wait_for("started in", PATIENCE);
    assert!(
        started.contains(&format!("https https://127.0.0.1:{tls}")),
        "{started}"
    );
    let warned = node.wait_for("expires on", PATIENCE);
    assert!(
        warned.contains(&site.cert.display().to_string()),
        "{warned}"
    );

    let jar = dir.path().join("cookies");
    let curled = curl(
        &ca_file,
        &jar,
        "localhost",
        tls,
        &["--http2"],
        &format!("https://localhost:{tls}/probe/request"),
    );
    assert_eq!(curled.version, "2");
    let request: serde_json::Value = serde_json::from_str(&curled.body).unwrap();
    assert_eq!(
        request["headers"]["x-forwarded-proto"], "https",
        "{request}"
    );
    let plain = curl(
        &ca_file,
        &jar,
        "localhost",
        tls,
        &["-H", "Host: localhost"],
        &format!("http://127.0.0.1:{}/probe/", 8080 + offset),
    );
    assert!(
        plain
            .headers
            .contains(&format!("location: https://localhost:{tls}/probe/")),
        "{}",
        plain.headers
    );

    // The plain port speaks HTTP/1.1 only: HTTP/2 without TLS was not asked for.
    let h2c = runtime().block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}/probe/", 8080 + offset))
            .send()
            .await
    });
    assert!(h2c.is_err(), "h2c is refused: {h2c:?}");

    // `status` shows the certificate and that it needs renewing.
    let said = base.cli(["status"]).output().unwrap();
    let said = String::from_utf8_lossy(&said.stdout);
    let row = said
        .lines()
        .find(|line| line.starts_with(&site.cert.display().to_string()))
        .unwrap_or_else(|| panic!("a row for the certificate:\n{said}"));
    assert!(
        row.contains("localhost") && row.contains("renew it"),
        "{row}"
    );

    // So does the console.
    let output = base.cli(["console", "--node", "one"]).output().unwrap();
    let said = String::from_utf8(output.stdout).unwrap();
    let url = said.trim().strip_prefix("one: ").unwrap().to_string();
    let profile = tempfile::tempdir().unwrap();
    let browser = Chromium::launch(profile.path());
    runtime().block_on(async {
        let mut page = browser.open(&url).await;
        until(
            &mut page,
            "the console shows the certificate expiring",
            "document.querySelector('#certificates-section')?.hidden === false \
             && document.querySelector('#certificates')?.textContent.includes('renew it')",
        )
        .await;
        let text = page.text_of("#certificates").await;
        assert!(text.contains("localhost"), "{text}");
        shoot(&mut page, "console-certificate.png").await;
    });
}
