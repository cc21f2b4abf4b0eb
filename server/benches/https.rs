//! HTTPS at the edge, side by side in one run: our balancer terminating TLS in front of two
//! clustered nodes, and nginx (Debian's, `ssl` + `http2`, keep-alive to the nodes) in front of
//! the same two nodes' HTTP ports, both with the same ECDSA P-256 certificate (issued by an
//! authority made for the run):
//!
//! - requests/s and p99 of the web probe's `/` over TLS with keep-alive, HTTP/1.1 (`wrk`) and
//!   HTTP/2 (`h2load`, its p99 from the per-request log);
//! - for scale, the balancer's plain HTTP port in the same run;
//! - new TLS handshakes per second: clients that each connect, handshake in full (no
//!   resumption), and close, over and over.
//!
//! `cargo bench -p immutant-server --bench https` builds tests/apps/webprobe and runs
//! everything in a throwaway install of the release server, binding 127.0.0.1. It needs `wrk`,
//! `nginx` and `h2load` (`apt-get install wrk nginx nghttp2-client`; without h2load, the HTTP/2
//! side is skipped, saying so).

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use immutant_e2e::tls::TestCa;
use support::{
    Nginx, TempInstall, WRK_CONNECTIONS, WRK_DURATION, build_app, free_offset, wait_until_answers,
    wrk,
};

/// How long the HTTP/2 and handshake runs last.
const SECONDS: u64 = 10;
/// Clients making handshakes at once.
const HANDSHAKERS: usize = 16;
/// How many times each side is measured.
const ROUNDS: usize = 2;

fn main() {
    let webprobe = build_app("webprobe");
    let install = TempInstall::new();
    install.deploy(&webprobe, "bench");
    let ca = TestCa::new();
    let tls_dir = install.home().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let certificate = ca.issue(&tls_dir, "bench", &["localhost", "127.0.0.1"], -1, 90);

    // Two clustered nodes behind the balancer (which serves HTTPS).
    let lb = free_offset(2000);
    let (port, mcmp, tls) = (8080 + lb, 9990 + lb, 8443 + lb);
    let https = [
        "--tls-port".to_string(),
        tls.to_string(),
        "--cert".to_string(),
        certificate.cert.display().to_string(),
        "--key".to_string(),
        certificate.key.display().to_string(),
    ];
    let _balancer = install.start_balancer(port, mcmp, &https);
    let cluster = format!("httpsbench-{}", std::process::id());
    let offsets = [free_offset(lb + 100), free_offset(lb + 200)];
    let _nodes: Vec<_> = ["one", "two"]
        .iter()
        .zip(offsets)
        .map(|(name, offset)| install.start_behind(name, offset, &cluster, &[mcmp]))
        .collect();
    let ours = format!("https://127.0.0.1:{tls}/bench/");
    wait_until_answers(&ours);

    // nginx in front of the same two nodes.
    let nginx_port = 8443 + free_offset(offsets[1] + 100);
    let _nginx = Nginx::start(
        &install.home().join("nginx"),
        &format!(
            "upstream nodes {{ server 127.0.0.1:{one}; server 127.0.0.1:{two}; keepalive 64; keepalive_requests 10000000; }}\n  server {{\n    listen 127.0.0.1:{nginx_port} ssl http2;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    keepalive_requests 10000000;\n    location / {{\n      proxy_pass http://nodes;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $remote_addr;\n      proxy_set_header X-Forwarded-Proto https;\n    }}\n  }}",
            one = 8080 + offsets[0],
            two = 8080 + offsets[1],
            cert = certificate.cert.display(),
            key = certificate.key.display(),
        ),
    );
    let theirs = format!("https://127.0.0.1:{nginx_port}/bench/");
    wait_until_answers(&theirs);
    std::thread::sleep(Duration::from_secs(2));

    // Two rounds, the sides taking turns: this machine's speed drifts within a run.
    let plain = format!("http://127.0.0.1:{port}/bench/");
    let mut lines = Vec::new();
    for round in 1..=ROUNDS {
        let sides = [("balancer", &ours, tls), ("nginx", &theirs, nginx_port)];
        lines.push(format!("  round {round}"));
        lines.push(format!(
            "    balancer  plain HTTP/1.1  {}",
            wrk(&plain, &[])
        ));
        for (name, url, port) in sides {
            lines.push(format!("    {name:<9} HTTP/1.1  {}", wrk(url, &[])));
            lines.push(format!("    {name:<9} HTTP/2    {}", h2load(url)));
            let handshakes = handshakes(port, &ca);
            lines.push(format!(
                "    {name:<9} new TLS handshakes: {handshakes:.0}/s"
            ));
        }
    }
    println!(
        "\nHTTPS in front of two nodes ({WRK_CONNECTIONS} connections, {WRK_DURATION}; handshakes: {HANDSHAKERS} clients, {SECONDS} s; load on the same 2 cores):"
    );
    for line in lines {
        println!("{line}");
    }
}

/// Runs h2load over HTTP/2 against `url` (as many connections as wrk, one stream each);
/// returns "N req/s, p99 X", or why it did not run.
fn h2load(url: &str) -> String {
    let log = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new("h2load")
        .args([
            "-t2",
            "-c",
            WRK_CONNECTIONS,
            "-m1",
            "-D",
            &SECONDS.to_string(),
        ])
        .arg(format!("--log-file={}", log.path().display()))
        .arg(url)
        .output();
    let Ok(output) = output else {
        return "skipped: h2load is missing (apt-get install nghttp2-client)".to_string();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .lines()
        .find_map(|line| line.strip_prefix("finished in "))
        .and_then(|rest| rest.split(", ").nth(1))
        .unwrap_or("?");
    let failed = text
        .lines()
        .find(|line| line.starts_with("requests:"))
        .unwrap_or("");
    // Each line: start (µs since the epoch), status, microseconds until the response ended.
    let mut micros: Vec<u64> = std::fs::read_to_string(log.path())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    micros.sort_unstable();
    let p99 = micros
        .get(micros.len().saturating_sub(1) * 99 / 100)
        .map_or("?".to_string(), |us| {
            format!("{:.2}ms", *us as f64 / 1000.0)
        });
    format!("{rate}, p99 {p99} ({failed})")
}

/// Full TLS handshakes per second against 127.0.0.1:`port`: [`HANDSHAKERS`] clients, each
/// connecting, handshaking (resumption off, so each is a full one) and closing, for
/// [`SECONDS`].
fn handshakes(port: u16, ca: &TestCa) -> f64 {
    let mut config = ca.client_config(&[]);
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let clients: Vec<_> = (0..HANDSHAKERS)
            .map(|_| {
                let (connector, done, stop) = (connector.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                        else {
                            continue;
                        };
                        if connector.connect(name.clone(), tcp).await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(SECONDS)).await;
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            let _ = client.await;
        }
    });
    done.load(Ordering::Relaxed) as f64 / SECONDS as f64
}
