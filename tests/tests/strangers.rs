//! A stranger on the same network, who knows the cluster's name (the management API prints
//! it) but not its secret, tries what got in before the secret: a fake member by gossip, one
//! with a real node's name, forged frames on the cluster port, a flood of connections that
//! never say anything, plain gossip to every port a node holds, loopback ones included. Nothing
//! gets in, no node stops, and the node keeps answering. The management API stays on loopback
//! unless told otherwise, asks for the token beyond it, and never shows a secret.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use immutant_e2e::netns::Lan;
use immutant_e2e::web::runtime;
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, apps_target_dir, cluster_name, clustered, clustered_with,
    free_offset, get_json, node_pid, numbers_after, probe, start_node,
};

/// Every view `node` has logged, each as its members' names.
fn views(node: &Proc) -> Vec<Vec<String>> {
    node.lines()
        .iter()
        .filter_map(|line| line.split("Cluster view: [").nth(1))
        .filter_map(|rest| rest.split(']').next())
        .map(|members| members.split(", ").map(str::to_string).collect())
        .collect()
}

/// Asserts that no view `node` logged held `stranger`.
fn never_saw(node: &Proc, stranger: &str) {
    let views = views(node);
    assert!(
        views
            .iter()
            .all(|view| !view.iter().any(|name| name == stranger)),
        "{stranger} was never in the view: {views:?}"
    );
}

/// The line in which `node` said it ignored something not sealed with its secret.
fn complaint(node: &Proc) -> String {
    node.wait_for("is not sealed with this cluster's secret", PATIENCE)
}

#[test]
fn nodes_with_one_secret_form_a_cluster_across_installs_and_one_with_another_is_ignored() {
    let (first, second) = (Base::installed(), Base::installed());
    let cluster = cluster_name();
    let shared = vec![format!("-Dimmutant.cluster.secret=shared-{cluster}")];
    let a = clustered_with(&first, "a", free_offset(), &cluster, &shared);
    let c = clustered_with(&second, "c", free_offset(), &cluster, &shared);
    a.wait_for("Cluster view: [a, c]", PATIENCE);
    c.wait_for("Cluster view: [a, c]", PATIENCE);

    // b has its own install's secret (the random one `install` wrote), not the shared one.
    let b = clustered(&second, "b", free_offset(), &cluster);
    for node in [&a, &b] {
        let said = complaint(node);
        assert!(said.contains("from 127.0.0.1"), "{said}");
        assert!(said.contains("-Dimmutant.cluster.secret"), "{said}");
    }
    std::thread::sleep(Duration::from_secs(3));
    for node in [&a, &c] {
        never_saw(node, "b");
    }
    assert!(
        views(&b).iter().all(|view| view == &["b"]),
        "b sees no one: {:?}",
        views(&b)
    );
    // Everyone still runs.
    for node in [&a, &b, &c] {
        assert!(!node.text().contains("Stopping node"), "{}", node.text());
    }
}

/// A frame as nodes wrote them before the secret: length, header length, JSON header, body.
fn plain_frame(header: serde_json::Value, body: &[u8]) -> Vec<u8> {
    let header = header.to_string().into_bytes();
    let mut frame = Vec::new();
    frame.extend_from_slice(&((4 + header.len() + body.len()) as u32).to_be_bytes());
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(body);
    frame
}

/// Whether the node closes `stream` within `limit` (reads nothing more from it).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => {
                return !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// A member that speaks chitchat as published (unsealed), named `name`, in cluster `cluster`,
/// gossiping with `seeds`.
async fn fake_member(name: &str, cluster: &str, seeds: Vec<String>) -> chitchat::ChitchatHandle {
    let listen: SocketAddr = ([127, 0, 0, 1], 7600 + free_offset()).into();
    let config = chitchat::ChitchatConfig {
        chitchat_id: chitchat::ChitchatId::new(name.to_string(), 1, listen),
        cluster_id: cluster.to_string(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: listen,
        seed_nodes: seeds,
        failure_detector_config: chitchat::FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V1,
    };
    // A key of its own, so that its state is something to take in.
    let state = vec![("fake".to_string(), "yes".to_string())];
    chitchat::spawn_chitchat(config, state, &chitchat::transport::UdpTransport)
        .await
        .unwrap()
}

/// The members `fake` knows of, itself included.
async fn known_to(fake: &chitchat::ChitchatHandle) -> Vec<String> {
    let chitchat = fake.chitchat();
    let chitchat = chitchat.lock().await;
    chitchat
        .node_states()
        .keys()
        .map(|id| id.node_id.to_string())
        .collect()
}

#[test]
fn a_strangers_gossip_and_forged_frames_get_nothing_in() {
    let base = Base::installed();
    let project = base.new_project("seedapp");
    let cluster = cluster_name();
    let offset = free_offset();
    let node = clustered(&base, "real", offset, &cluster);
    let deploy = base
        .cli(["deploy"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", apps_target_dir())
        .output()
        .unwrap();
    assert!(deploy.status.success(), "{deploy:?}");
    node.wait_for("received: 1", BUILD_PATIENCE);
    let gossip: SocketAddr = ([127, 0, 0, 1], 7600 + offset).into();

    // A fake member gossips with the cluster's name, as chitchat itself (unsealed), and under
    // the real node's name (which once made the real node stop).
    let seen_by_fake = runtime().block_on(async {
        let fake = fake_member("real", &cluster, vec![gossip.to_string()]).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        known_to(&fake).await
    });
    assert_eq!(
        seen_by_fake,
        ["real"],
        "the fake member learns of no one but itself"
    );
    let said = complaint(&node);
    assert!(said.contains("a gossip datagram from 127.0.0.1"), "{said}");

    // Forged frames on the cluster port: a hello, then a message for the app's queue.
    let mut forger = TcpStream::connect(gossip).unwrap();
    let hello = serde_json::json!({"op": "hello", "cluster": cluster, "node": "evil"});
    let forward = serde_json::json!({
        "op": "forward", "delivery": 1, "destination": "/queue/msg", "topic": false,
        "origin": "evil@1/1", "message": {"id": 1}, "persistent": true, "expires_at_ms": null,
    });
    let _ = forger.write_all(&plain_frame(hello, b""));
    let _ = forger.write_all(&plain_frame(forward, b"999999"));
    assert!(
        closed_within(&mut forger, Duration::from_secs(10)),
        "the node hangs up on the forger"
    );

    // Nothing got in: no forged message, no other member, the node still running.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !numbers_after(&node.lines(), "received: ").contains(&999_999),
        "the forged message was never delivered"
    );
    assert!(
        views(&node).iter().all(|view| view == &["real"]),
        "no one else in the view: {:?}",
        views(&node)
    );
    assert!(!node.text().contains("Stopping node"), "{}", node.text());
    assert_eq!(get_json(9990 + offset)["name"], "real");
}

/// An ack `evil` sends, carrying its state: `recorder` stands between it (whose seed it is) and
/// `accomplice`, passing their gossip on, until `evil` answers a syn-ack.
async fn recorded_ack(
    recorder: &tokio::net::UdpSocket,
    evil: &chitchat::ChitchatHandle,
    accomplice: &chitchat::ChitchatHandle,
) -> Vec<u8> {
    // chitchat's header: a magic number (2 bytes), the protocol version, the message's type.
    const ACK: u8 = 2;
    let (evil, accomplice) = (
        evil.chitchat_id().gossip_advertise_addr,
        accomplice.chitchat_id().gossip_advertise_addr,
    );
    let mut datagram = vec![0u8; 65_536];
    tokio::time::timeout(PATIENCE, async {
        loop {
            let (length, from) = recorder.recv_from(&mut datagram).await.unwrap();
            let datagram = &datagram[..length];
            if from == evil && datagram.get(3) == Some(&ACK) {
                return datagram.to_vec();
            }
            let to = if from == evil { accomplice } else { evil };
            recorder.send_to(datagram, to).await.unwrap();
        }
    })
    .await
    .expect("the fakes gossip through the recorder")
}

/// Every UDP port the process `pid` holds on loopback or on every address, as an address on
/// loopback to send to (a socket bound to a multicast group is left out: nothing is sent
/// beyond loopback).
fn udp_ports(pid: i32) -> Vec<SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    // Local addresses as the kernel writes them: hex, IPv4 in the host's byte order.
    let loopback_or_any = |address: &str| {
        address.chars().all(|c| c == '0')
            || matches!(address, "0100007F" | "00000000000000000000000001000000")
    };
    let mut ports: Vec<SocketAddr> = ["udp", "udp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (address, port) = fields.get(1)?.split_once(':')?;
                    let ours = inodes.contains(&fields.get(9)?.to_string());
                    (ours && loopback_or_any(address))
                        .then(|| u16::from_str_radix(port, 16).ok())?
                })
                .collect::<Vec<_>>()
        })
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

#[test]
fn plaintext_gossip_to_every_port_a_node_holds_never_reaches_the_view() {
    let base = Base::installed();
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset()];
    let a = clustered(&base, "a", offsets[0], &cluster);
    let b = clustered(&base, "b", offsets[1], &cluster);
    for node in [&a, &b] {
        node.wait_for("Cluster view: [a, b]", PATIENCE);
    }
    // a's cluster port, chitchat's own socket on loopback, the relay it keeps for b.
    let ports = udp_ports(node_pid(offsets[0]));
    let cluster_port: SocketAddr = ([127, 0, 0, 1], 7600 + offsets[0]).into();
    assert!(
        ports.contains(&cluster_port) && ports.len() >= 3,
        "a holds its UDP ports: {ports:?}"
    );

    // A fake member speaks chitchat, unsealed, with the cluster's name, to each of them: its
    // syns, and an ack carrying its state as a member that knew it would send it (recorded from
    // its gossip with a second fake).
    let seen_by_fake = runtime().block_on(async {
        let recorder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let evil = fake_member(
            "evil",
            &cluster,
            vec![recorder.local_addr().unwrap().to_string()],
        )
        .await;
        let accomplice = fake_member("accomplice", &cluster, Vec::new()).await;
        let ack = recorded_ack(&recorder, &evil, &accomplice).await;
        for _ in 0..20 {
            for port in &ports {
                evil.gossip(*port).unwrap();
                recorder.send_to(&ack, port).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        known_to(&evil).await
    });
    assert_eq!(
        seen_by_fake,
        ["accomplice", "evil"],
        "the fakes learn of no one but each other"
    );
    // What came to chitchat's own socket, not through a relay, was dropped and said so.
    let said = a.wait_for("came to the node's loopback gossip socket", PATIENCE);
    assert!(said.contains("from 127.0.0.1"), "{said}");
    std::thread::sleep(Duration::from_secs(1));
    for node in [&a, &b] {
        never_saw(node, "evil");
        never_saw(node, "accomplice");
        assert!(!node.text().contains("Stopping node"), "{}", node.text());
    }
}

/// Asserts that `url` answers every request within a second (each on a new connection, as a
/// tool opens them, every 100 ms) for `during`, while `what` goes on.
async fn keeps_answering(url: &str, during: Duration, what: &str) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < during {
        let response = client.get(url).header("Connection", "close").send().await;
        assert!(
            response.as_ref().is_ok_and(|r| r.status().is_success()),
            "request {answered} is answered within 1 s despite {what}: {response:?}"
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that the node closes every one of `streams` within `limit` (from now, all told).
fn all_closed_within(streams: Vec<TcpStream>, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    for mut stream in streams {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed_within(&mut stream, left.max(Duration::from_millis(1))),
            "{what} left open"
        );
    }
}

/// The node's resident memory, in KiB, and its open descriptors.
fn footprint(pid: i32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[test]
fn junk_connections_on_the_cluster_port_are_dropped_and_management_keeps_answering() {
    let base = Base::installed();
    let offset = free_offset();
    let node = clustered(&base, "target", offset, &cluster_name());
    let pid = get_json(9990 + offset)["pid"].as_i64().unwrap() as i32;
    let (rss_before, fds_before) = footprint(pid);
    let gossip: SocketAddr = ([127, 0, 0, 1], 7600 + offset).into();

    // 300 connections: some say nothing, some claim a 16 MiB record, some send junk.
    let junk: Vec<TcpStream> = (0..300)
        .filter_map(|i| {
            let mut stream = TcpStream::connect(gossip).ok()?;
            let _ = match i % 3 {
                0 => Ok(()),
                1 => {
                    let mut opening = b"IMMLINK1".to_vec();
                    opening.extend_from_slice(&[7u8; 32]);
                    opening.extend_from_slice(&(16u32 << 20).to_be_bytes());
                    stream.write_all(&opening)
                }
                _ => stream.write_all(&[0xAB; 4096]),
            };
            Some(stream)
        })
        .collect();

    // The management API answers within a second throughout.
    let management = format!("http://127.0.0.1:{}/", 9990 + offset);
    runtime().block_on(keeps_answering(
        &management,
        Duration::from_secs(3),
        "the junk",
    ));
    let (rss_during, _) = footprint(pid);
    assert!(
        rss_during < rss_before + 64 * 1024,
        "memory stays bounded: {rss_before} KiB before, {rss_during} KiB with the junk"
    );

    // Every junk connection is dropped by the node within the handshake time.
    all_closed_within(junk, Duration::from_secs(15), "a junk connection");

    // Management connections that never send a request are closed too (the rest wait to be
    // accepted meanwhile), and then it answers again.
    let management_port: SocketAddr = ([127, 0, 0, 1], 9990 + offset).into();
    let silent: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(management_port).ok())
        .collect();
    all_closed_within(
        silent,
        Duration::from_secs(20),
        "a silent management connection",
    );
    assert_eq!(get_json(9990 + offset)["name"], "target");
    std::thread::sleep(Duration::from_millis(500));
    let (_, fds_after) = footprint(pid);
    // The node said so now and then, not once per connection.
    let said = node.lines().len();
    assert!(said < 50, "{said} lines of log for 500 junk connections");
    assert!(
        fds_after <= fds_before + 8,
        "descriptors are given back: {fds_before} before, {fds_after} after"
    );
}

#[test]
fn slow_clients_holding_management_connections_keep_no_one_else_out() {
    let base = Base::installed();
    let offset = free_offset();
    let _node = start_node(&base, "target", offset, &[]);
    let management: SocketAddr = ([127, 0, 0, 1], 9990 + offset).into();
    let url = format!("http://{management}/");
    runtime().block_on(async {
        // 500 connections, each sending a request's head a byte at a time (a slowloris), again
        // as each is closed.
        let slow = (0..500)
            .map(|_| {
                tokio::spawn(async move {
                    let head = b"GET / HTTP/1.1\r\nHost: target\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
                    loop {
                        let Ok(mut stream) = tokio::net::TcpStream::connect(management).await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        for byte in head {
                            use tokio::io::AsyncWriteExt;
                            if stream.write_all(&[*byte]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                })
            })
            .collect::<Vec<_>>();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Meanwhile, every ordinary request is answered within a second.
        keeps_answering(&url, Duration::from_secs(8), "500 slow clients").await;
        for task in slow {
            task.abort();
        }
    });
}

#[test]
fn management_stays_on_loopback_and_never_shows_a_secret() {
    let base = Base::installed();
    let offset = free_offset();
    // -b moves the HTTP and cluster ports; management stays on loopback.
    let node = start_node(
        &base,
        "apart",
        offset,
        &["-b", "127.0.0.2", "-Dapp.db.password=hunter2"],
    );
    let report = get_json(9990 + offset);
    assert_eq!(report["name"], "apart");
    assert!(
        TcpStream::connect(("127.0.0.2", 9990 + offset)).is_err(),
        "nothing listens for management at the -b address"
    );
    assert!(TcpStream::connect(("127.0.0.2", 8080 + offset)).is_ok());
    let shown = report.to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(report["properties"]["app.db.password"], "********");
    assert!(!node.text().contains("hunter2"), "{}", node.text());
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]
fn management_beyond_loopback_answers_only_with_the_token() {
    let lan = Lan::make(1);
    let base = Base::installed();
    base.deploy(&probe(), Some("watched"));
    let address = lan.address(0).to_string();
    let mut args = vec!["run".to_string()];
    args.extend(base.node_args("exposed", 0));
    args.push(format!("-Djboss.bind.address.management={address}"));
    let node = Proc::spawn(lan.command(0, base.cli(args)));
    node.wait_for("started in", PATIENCE);
    // Beyond loopback it speaks TLS, with the certificate the node made (and copied to its pin).
    let url = format!("https://{address}:9990/");
    let token = std::fs::read_to_string(base.data_dir("exposed").join("management.token")).unwrap();
    let pin = std::fs::read(base.data_dir("exposed").join("management.pin")).unwrap();
    let (without, with) = lan.within(0, || {
        runtime().block_on(async {
            let trusted = reqwest::Certificate::from_pem(&pin).unwrap();
            let client = reqwest::Client::builder()
                .no_proxy()
                .tls_certs_only([trusted])
                .build()
                .unwrap();
            let without = client.get(&url).send().await.unwrap().status();
            let with = client
                .get(&url)
                .bearer_auth(token.trim())
                .send()
                .await
                .unwrap()
                .status();
            (without, with)
        })
    });
    assert_eq!(without, 401, "no token, no answer");
    assert_eq!(with, 200);
    // The CLI sends the token (the user who runs the node can read it).
    node.wait_for("Deployed \"watched\"", BUILD_PATIENCE);
    let list = lan.command(0, base.cli(["list"])).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{list:?}");
    assert!(listed.contains("exposed: running"), "{listed}");
}

#[test]
fn descriptors_that_lead_out_of_the_artifacts_folder_are_refused_and_never_run() {
    use std::os::unix::fs::PermissionsExt;
    let base = Base::installed();
    let deployments = base.path().join("current/deployments");
    std::fs::create_dir_all(deployments.join(".artifacts")).unwrap();
    // A script that leaves a mark if anything runs it.
    let mark = base.path().join("ran");
    let script = base.path().join("evil.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&script, deployments.join(".artifacts/linked")).unwrap();
    for (name, artifact) in [
        ("climb", "../../evil.sh"),
        ("system", "/usr/bin/env"),
        ("linked", ".artifacts/linked"),
    ] {
        let descriptor = format!("name = \"{name}\"\nartifact = \"{artifact}\"\n");
        std::fs::write(deployments.join(format!("{name}.toml")), descriptor).unwrap();
    }
    std::fs::write(
        deployments.join("extra.toml"),
        "name = \"extra\"\nartifact = \".artifacts/x\"\ncommand = \"sh\"\n",
    )
    .unwrap();
    // 50 MB under a descriptor's name: not read, but listed as failed, saying why.
    std::fs::File::create(deployments.join("huge.toml"))
        .unwrap()
        .set_len(50 << 20)
        .unwrap();
    let offset = free_offset();
    let node = start_node(&base, "confined", offset, &[]);
    let reasons = |report: &serde_json::Value| -> Vec<(String, String)> {
        report
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["status"] == "failed")
            .map(|d| {
                let reason = d["reason"].as_str().unwrap_or_default().to_string();
                (d["name"].as_str().unwrap().to_string(), reason)
            })
            .collect()
    };
    immutant_e2e::eventually("all five refused", PATIENCE, || {
        reasons(&immutant_e2e::get_json_at(9990 + offset, "deployments")).len() == 5
    });
    for (name, reason) in reasons(&immutant_e2e::get_json_at(9990 + offset, "deployments")) {
        let expected = match name.as_str() {
            "extra" => "unknown field",
            "linked" => "outside .artifacts/",
            "huge" => "it is over the 1048576 bytes a descriptor may have",
            _ => "the node runs nothing else",
        };
        assert!(reason.contains(expected), "{name}: {reason}");
    }
    let list = base.cli(["list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed
            .lines()
            .any(|line| line.contains("huge") && line.contains("confined: failed:")),
        "{listed}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!mark.exists(), "nothing ran the script");

    // The node's data is its user's alone.
    let data = base.data_dir("confined");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).unwrap().flatten() {
        let path = entry.path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    drop(node);
}

#[test]
fn an_app_gets_a_megabyte_of_properties_over_its_socket_but_never_the_cluster_secret() {
    let base = Base::installed();
    base.deploy(&probe(), Some("props"));
    let big = "x".repeat(100 * 1024);
    let mut args = vec![
        format!("-Dprobe.echo={big}"),
        "-Dimmutant.cluster.secret=never-for-apps".to_string(),
    ];
    args.extend((0..9).map(|n| format!("-Dpad.{n}={big}")));
    let node = clustered_with(&base, "props", free_offset(), &cluster_name(), &args);
    node.wait_for("[props] probe.echo: 102400 bytes", BUILD_PATIENCE);
    node.wait_for("[props] cluster secret visible: false", PATIENCE);
    assert!(!node.text().contains("never-for-apps"));
}
