//! The management API beyond loopback speaks TLS only, with a certificate the node made at its
//! first boot, which the CLI trusts for that node alone; plain HTTP gets nothing there. The
//! node runs in a network namespace of its own, its management port bound to the namespace's
//! address.

use std::io::{Read, Write};
use std::time::Duration;

use immutant_e2e::netns::Lan;
use immutant_e2e::{Base, PATIENCE, cluster_name};

#[test]
#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]
fn management_beyond_loopback_speaks_only_tls_and_the_cli_trusts_the_nodes_own_certificate() {
    let lan = Lan::make(1);
    let base = Base::installed();
    let address = lan.address(0);
    let management = format!("-Djboss.bind.address.management={address}");
    let node = lan.node(&base, 0, ("sealed", &cluster_name()), &[management]);
    node.wait_for(&format!("management https://{address}:9990"), PATIENCE);
    let data_dir = base.data_dir("sealed");
    let key = std::fs::metadata(data_dir.join("management.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600,
        "the key is the node's user's alone"
    );

    // The CLI, on that host, asks it over TLS, trusting the node's own certificate.
    let status = lan
        .command(0, base.cli(["status", "--json"]))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["nodes"][0]["name"], "sealed", "{status:#}");
    assert!(
        status["unreachable"].as_array().unwrap().is_empty(),
        "{status:#}"
    );

    // Plain HTTP is not answered; a client that trusts only the usual authorities is refused.
    let plain = lan.within(0, || {
        let mut stream = std::net::TcpStream::connect((address, 9990)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /status HTTP/1.1\r\nHost: node\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    });
    assert!(
        !plain.contains("\"name\""),
        "plain HTTP got an answer: {plain}"
    );
    let refused = lan.within(0, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        runtime.block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(format!("https://{address}:9990/status"))
                .send()
                .await
        })
    });
    assert!(refused.is_err(), "{refused:?}");
}
