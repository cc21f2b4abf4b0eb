//! What the benchmarks share: a throwaway install of the release server, the test apps, nodes
//! whose output can be waited on, and free ports.

// Each benchmark compiles this module and uses the part it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An install layout (bin/, config/, deployments/) in a temporary folder, holding the server
/// that `cargo bench` built.
pub struct TempInstall {
    dir: tempfile::TempDir,
}

impl TempInstall {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let home = dir.path();
        for folder in ["bin", "config", "deployments"] {
            std::fs::create_dir_all(home.join(folder)).unwrap();
        }
        std::fs::copy(
            env!("CARGO_BIN_EXE_immutant-server"),
            home.join("bin/immutant-server"),
        )
        .unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["standalone.toml", "standalone-ha.toml"] {
            std::fs::copy(shipped.join(name), home.join("config").join(name)).unwrap();
        }
        TempInstall { dir }
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    pub fn server(&self) -> PathBuf {
        self.home().join("bin/immutant-server")
    }

    /// Deploys `app` (a built binary) as `name`, as `cargo immutant deploy` leaves a deployment.
    pub fn deploy(&self, app: &Path, name: &str) {
        let deployments = self.home().join("deployments");
        std::fs::create_dir_all(deployments.join(".artifacts")).unwrap();
        let artifact = format!(".artifacts/{name}");
        std::fs::copy(app, deployments.join(&artifact)).unwrap();
        let descriptor = format!("name = \"{name}\"\nartifact = \"{artifact}\"\n");
        std::fs::write(deployments.join(format!("{name}.toml")), descriptor).unwrap();
    }

    /// Arguments for a clustered node `name` of `cluster` at `offset`, with a data dir of its own.
    pub fn clustered_args(&self, name: &str, offset: u16, cluster: &str) -> Vec<String> {
        vec![
            "--server-config=standalone-ha.toml".to_string(),
            format!("-Djboss.node.name={name}"),
            format!("-Djboss.socket.binding.port-offset={offset}"),
            format!(
                "-Djboss.server.data.dir={}",
                self.home().join(name).display()
            ),
            format!("-Dimmutant.cluster.name={cluster}"),
            format!("-Dimmutant.cluster.secret={cluster}-secret"),
        ]
    }

    /// Starts a node of this install with `args`.
    pub fn start(&self, args: &[String]) -> Node {
        let mut child = Command::new(self.server())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the node starts");
        let (lines, incoming) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send((Instant::now(), line));
            }
        });
        Node {
            child,
            incoming,
            seen: Default::default(),
        }
    }
}

/// A running node, and its output as it comes, each line with when it came.
pub struct Node {
    pub child: Child,
    incoming: mpsc::Receiver<(Instant, String)>,
    seen: std::cell::RefCell<Vec<(Instant, String)>>,
}

impl Node {
    /// How many lines the node has printed so far, to wait for what comes after.
    pub fn mark(&self) -> usize {
        self.seen.borrow_mut().extend(self.incoming.try_iter());
        self.seen.borrow().len()
    }

    /// Waits for a line containing `needle` and returns when it came and the line.
    pub fn wait_for(&self, needle: &str) -> (Instant, String) {
        self.wait_for_after(0, needle)
    }

    /// Waits for a line containing `needle` after the first `mark` lines.
    pub fn wait_for_after(&self, mark: usize, needle: &str) -> (Instant, String) {
        self.wait_quiet(mark, needle, Duration::from_secs(120))
    }

    /// Waits for a line containing `needle` after the first `mark` lines, while the node may
    /// say nothing for up to `quiet`.
    pub fn wait_quiet(&self, mark: usize, needle: &str, quiet: Duration) -> (Instant, String) {
        let mut index = mark;
        loop {
            if let Some(found) = self.seen.borrow().get(index) {
                if found.1.contains(needle) {
                    return found.clone();
                }
                index += 1;
                continue;
            }
            let line = self
                .incoming
                .recv_timeout(quiet)
                .unwrap_or_else(|_| panic!("no line with {needle:?}"));
            self.seen.borrow_mut().push(line);
        }
    }

    /// Sends `signal` to the node.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Stops the node gracefully and waits for it.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    /// A node left running (a benchmark that failed) is killed, not left behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds one of the apps in tests/apps in release mode, as `cargo immutant deploy` would, and
/// returns its binary.
pub fn build_app(name: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = workspace.join("target").join("e2e-apps");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--manifest-path"])
        .arg(workspace.join("tests/apps").join(name).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {name} failed");
    target.join("release").join(name)
}

/// A port offset whose HTTP, management and cluster ports are free, starting from `from`.
pub fn free_offset(from: u16) -> u16 {
    (from..40_000u16)
        .step_by(100)
        .find(|offset| {
            [7600, 8080, 9990]
                .iter()
                .all(|port| TcpListener::bind(("127.0.0.1", port + offset)).is_ok())
        })
        .expect("a free port offset")
}

/// Sorts `values` and returns the middle one.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The resident memory (VmRSS) of process `pid`, in KB.
pub fn resident_kb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a Linux /proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}
