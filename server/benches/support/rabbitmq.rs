//! RabbitMQ from Debian's package (`apt-get install rabbitmq-server`) for the messaging
//! benchmark: one broker started on 127.0.0.1 with its files in a temporary folder (no
//! plugins, Erlang distribution on loopback too), and the load of loadgen put on it by
//! tests/apps/rabbitload.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Figures, load_report};

/// Debian's script that runs the broker in the foreground (the one in /usr/sbin switches to
/// the rabbitmq user and its files).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// Erlang's port mapper, which the broker starts if none runs.
const EPMD: &str = "127.0.0.1:4369";

/// A running broker; stopped (and the port mapper it started, if it did) when dropped.
pub struct RabbitMq {
    server: Child,
    pub url: String,
    started_epmd: bool,
    _dir: tempfile::TempDir,
}

impl RabbitMq {
    /// Starts a broker and waits until it takes connections; none, saying why, where Debian's
    /// package is missing.
    pub fn start() -> Option<RabbitMq> {
        if !Path::new(SERVER).exists() {
            println!("RabbitMQ: skipped, it is missing (apt-get install rabbitmq-server)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let home = dir.path().to_path_buf();
        std::fs::write(home.join("enabled_plugins"), "[].").unwrap();
        let (port, dist_port) = (free_port(), free_port());
        let started_epmd = TcpStream::connect(EPMD).is_err();
        let log = std::fs::File::create(home.join("broker.log")).unwrap();
        let server = Command::new(SERVER)
            .env("HOME", &home)
            .env("RABBITMQ_MNESIA_BASE", home.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", home.join("log"))
            .env("RABBITMQ_CONFIG_FILE", home.join("none"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                home.join("enabled_plugins"),
            )
            .env(
                "RABBITMQ_NODENAME",
                format!("bench-{}@localhost", std::process::id()),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: the script's children go with it.
            .process_group(0)
            .spawn()
            .expect("RabbitMQ starts");
        let broker = RabbitMq {
            server,
            url: format!("amqp://127.0.0.1:{port}/%2f"),
            started_epmd,
            _dir: dir,
        };
        // It opens its AMQP port once it has booted.
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ did not start within 90 s: see {}",
                home.join("broker.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(broker)
    }

    /// Runs `rabbitload` (built from tests/apps) against the broker: `messages` 1 KB persistent
    /// messages from `publishers`, each with up to `window` unconfirmed; returns its throughput
    /// and publish-to-handler p50 and p99.
    pub fn load(
        &self,
        rabbitload: &Path,
        messages: &str,
        publishers: usize,
        window: usize,
    ) -> Figures {
        let output = Command::new(rabbitload)
            .env("AMQP_ADDR", &self.url)
            .env("LOADGEN_MESSAGES", messages)
            .env("LOADGEN_PUBLISHERS", publishers.to_string())
            .env("LOADGEN_WINDOW", window.to_string())
            .output()
            .expect("rabbitload runs");
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "rabbitload failed: {report}");
        load_report(&report)
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        let group = -(self.server.id() as i32);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.server.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.server.wait();
        if self.started_epmd {
            let _ = Command::new("epmd")
                .arg("-kill")
                .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A port on 127.0.0.1 that is free now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}
