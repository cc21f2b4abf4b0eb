//! # immutant-e2e
//!
//! Support for the end-to-end tests in `tests/tests/`: the real `cargo-immutant` and
//! `immutant-server` binaries, a temporary base dir per test (never the user's), processes whose
//! output can be waited on, and free port offsets. Nothing here stands in for a part of
//! Immutant: every test drives the real CLI and real nodes over real sockets and signals.

pub mod browser;
pub mod cas;
pub mod linearizability;
pub mod mcmp;
pub mod nats;
pub mod netns;
pub mod singletons;
pub mod tls;
pub mod web;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The binaries under test, built once per test process.
pub struct Binaries {
    pub cli: PathBuf,
    pub server: PathBuf,
}

/// Builds `cargo-immutant` and `immutant-server` (a no-op when they are fresh) as `install.sh`
/// does, with the same command: the tests run what a user installs, and after `install.sh`
/// (as in CI) there is nothing left to build. Built any other way (alone, or beside the tests'
/// own build), cargo would resolve their dependencies' features differently and build them all
/// again.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // Cargo says where it put them (wherever the user's target dir is).
        let output = as_from_a_shell(&mut Command::new(cargo))
            .args(INSTALL_BUILD)
            .arg("--message-format=json-render-diagnostics")
            .current_dir(workspace_root())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "building the binaries under test failed"
        );
        let built = |name: &str| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|message| {
                    message["reason"] == "compiler-artifact" && message["target"]["name"] == name
                })
                .and_then(|message| message["executable"].as_str().map(PathBuf::from))
                .unwrap_or_else(|| panic!("cargo built no {name} binary"))
        };
        Binaries {
            cli: built("cargo-immutant"),
            server: built("immutant-server"),
        }
    })
}

/// `command` without the variables cargo sets for a test about the test's own package, as a
/// user's shell runs it: cargo builds run from a test would otherwise see a different
/// `CARGO_MANIFEST_DIR`, which some build scripts (ring's) watch, and build again everything
/// above them.
pub fn as_from_a_shell(command: &mut Command) -> &mut Command {
    const SET_FOR_A_TEST: [&str; 6] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if SET_FOR_A_TEST.contains(&name.as_ref())
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
        {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// `install.sh`'s build of the CLI and the server, arguments to `cargo`.
pub const INSTALL_BUILD: [&str; 7] = [
    "build",
    "--release",
    "--locked",
    "-p",
    "cargo-immutant",
    "-p",
    "immutant-server",
];

/// The checkout these tests belong to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// A temporary Immutant base dir, removed when dropped.
pub struct Base {
    dir: tempfile::TempDir,
}

impl Base {
    /// An empty base: nothing installed.
    pub fn empty() -> Self {
        Base {
            dir: tempfile::Builder::new()
                .prefix("immutant-e2e-")
                .tempdir()
                .expect("a temp dir"),
        }
    }

    /// A base with the freshly built server installed (from its path, which is quick) and linked.
    pub fn installed() -> Self {
        let base = Base::empty();
        let output = base
            .cli(["install", "--from"])
            .arg(&binaries().server)
            .output()
            .expect("the CLI runs");
        assert!(
            output.status.success(),
            "install failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        base
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `cargo-immutant ARGS` with this base, and no Immutant home from the environment.
    pub fn cli<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(&binaries().cli);
        as_from_a_shell(&mut command)
            .args(args)
            .env("IMMUTANT_BASE_DIR", self.path())
            .env_remove("IMMUTANT_HOME")
            .env("NO_PROXY", "127.0.0.1,localhost");
        command
    }

    /// A data dir of its own for the node called `name`.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.path().join("nodes").join(name)
    }

    /// `cargo immutant new NAME` in the base's projects folder; returns the project.
    pub fn new_project(&self, name: &str) -> PathBuf {
        self.new_project_from(name, "default")
    }

    /// `cargo immutant new NAME --template TEMPLATE` in the base's projects folder; returns
    /// the project.
    pub fn new_project_from(&self, name: &str, template: &str) -> PathBuf {
        let projects = self.path().join("projects");
        std::fs::create_dir_all(&projects).unwrap();
        let output = self
            .cli(["new", name, "--template", template])
            .current_dir(&projects)
            .output()
            .expect("the CLI runs");
        assert!(
            output.status.success(),
            "new failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        projects.join(name)
    }

    /// `cargo immutant deploy [--name NAME] PROJECT`, which must succeed; apps build in the
    /// shared [`apps_target_dir`].
    pub fn deploy(&self, project: &Path, name: Option<&str>) {
        match name {
            Some(name) => self.deploy_with(project, &["--name", name]),
            None => self.deploy_with(project, &[]),
        }
    }

    /// `cargo immutant deploy OPTIONS PROJECT`, which must succeed.
    pub fn deploy_with(&self, project: &Path, options: &[&str]) {
        let output = self
            .cli(["deploy"])
            .args(options)
            .arg(project)
            .env("CARGO_TARGET_DIR", apps_target_dir())
            .output()
            .expect("the CLI runs");
        assert!(
            output.status.success(),
            "deploy failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `run` arguments for a node called `name` at `offset`, with a data dir of its own.
    pub fn node_args(&self, name: &str, offset: u16) -> Vec<String> {
        vec![
            format!("--node-name={name}"),
            format!("--offset={offset}"),
            format!("-Djboss.server.data.dir={}", self.data_dir(name).display()),
        ]
    }

    /// Starts `cargo-immutant run ARGS` with this base.
    pub fn run<I, S>(&self, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.cli(["run"]);
        command.args(args);
        Proc::spawn(command)
    }
}

/// Which stream a line came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// What a process wrote so far: its lines as they came, and how many of its two streams have
/// ended.
#[derive(Default)]
struct Written {
    lines: Vec<(Stream, String)>,
    ended: usize,
}

/// What a process wrote, and a signal for each new line and each end of a stream.
type Output = Arc<(Mutex<Written>, Condvar)>;

/// A running process whose standard output and error are collected, line by line, as they come.
pub struct Proc {
    child: Child,
    output: Output,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `command` with its output collected.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the process starts");
        let output = Arc::new((Mutex::new(Written::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        collect(Stream::Out, stdout, output.clone());
        collect(Stream::Err, stderr, output.clone());
        Proc {
            child,
            output,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every line so far, standard output and error interleaved as they came.
    pub fn lines(&self) -> Vec<String> {
        self.output
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .map(|(_, line)| line.clone())
            .collect()
    }

    /// The lines so far on standard output alone.
    pub fn stdout_lines(&self) -> Vec<String> {
        let written = self.output.0.lock().unwrap();
        written
            .lines
            .iter()
            .filter(|(stream, _)| *stream == Stream::Out)
            .map(|(_, line)| line.clone())
            .collect()
    }

    /// Everything so far, one string.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a line contains `needle` and returns it; fails the test with the output so
    /// far if none does within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line(&format!("no line with {needle:?}"), timeout, |line| {
            line.contains(needle)
        })
    }

    /// Waits until a line `matches` and returns it; fails the test with `missing` (what it
    /// means that none came) and the output so far if none does within `timeout`.
    pub fn wait_for_line(
        &self,
        missing: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_until(missing, timeout, |written| {
            written
                .lines
                .iter()
                .map(|(_, line)| line)
                .find(|line| matches(line))
                .cloned()
        })
    }

    /// Waits until the process's standard output and error have both ended: it, and every
    /// process it handed them to, have exited, and every line they wrote is here. Fails the
    /// test with the output so far if they have not within `timeout`.
    pub fn wait_for_end_of_output(&self, timeout: Duration) {
        self.wait_until("no end of output", timeout, |written| {
            (written.ended == 2).then_some(())
        })
    }

    /// Waits until `check` answers something of what was written, and answers that; fails the
    /// test with `missing` and the output so far after `timeout`.
    fn wait_until<T>(
        &self,
        missing: &str,
        timeout: Duration,
        mut check: impl FnMut(&Written) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let (written, arrived) = &*self.output;
        let mut guard = written.lock().unwrap();
        loop {
            if let Some(found) = check(&guard) {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                let text: Vec<&str> = guard.lines.iter().map(|(_, line)| line.as_str()).collect();
                panic!("{missing} within {timeout:?}; output:\n{}", text.join("\n"));
            }
            guard = arrived.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for the process to exit, failing the test if it has not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .status
                .or_else(|| self.child.try_wait().expect("waitable"))
            {
                self.status = Some(status);
                // Let the collectors take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}; output:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(stream: Stream, reader: impl Read + Send + 'static, output: Output) {
    std::thread::spawn(move || {
        let (written, arrived) = &*output;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            written.lock().unwrap().lines.push((stream, line));
            arrived.notify_all();
        }
        written.lock().unwrap().ended += 1;
        arrived.notify_all();
    });
}

/// A port offset whose HTTP and management ports are free now and that no other test in this
/// process has been given.
pub fn free_offset() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    // Start somewhere that depends on the process, so test binaries run side by side (as
    // nextest does) rarely meet; step by 100 so that no offset's HTTP port is another's
    // management port. Every port stays below Linux's ephemeral range (32768 and up), where
    // the tests' own outgoing connections would take them at random.
    const OFFSETS: u32 = 217;
    let seed = std::process::id() % OFFSETS;
    (0..OFFSETS)
        .map(|step| (1000 + (seed + step) % OFFSETS * 100) as u16)
        .find(|offset| {
            !given.contains(offset)
                && [7600, 8080, 9990]
                    .iter()
                    .all(|port| port_free(port + offset))
                && UdpSocket::bind(("127.0.0.1", 7600 + offset)).is_ok()
        })
        .inspect(|offset| {
            given.insert(*offset);
        })
        .expect("a free port offset")
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `GET http://127.0.0.1:PORT/` as JSON.
pub fn get_json(port: u16) -> serde_json::Value {
    get_json_at(port, "")
}

/// `GET http://127.0.0.1:PORT/PATH` as JSON.
pub fn get_json_at(port: u16, path: &str) -> serde_json::Value {
    let text = get_text_at(port, path);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET http://127.0.0.1:{port}/{path} is not JSON ({e}): {text}"))
}

/// `GET http://127.0.0.1:PORT/PATH`'s body.
pub fn get_text_at(port: u16, path: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    runtime.block_on(async {
        let url = format!("http://127.0.0.1:{port}/{path}");
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await;
        response
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .unwrap()
    })
}

/// How long a test waits for something a node does at once; generous, for slow machines.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Long enough for a first release build of an app and its dependencies on a slow machine.
pub const BUILD_PATIENCE: Duration = Duration::from_secs(600);

/// The app the tests deploy under many names; it does what its name says.
pub fn probe() -> PathBuf {
    workspace_root().join("tests/apps/probe")
}

/// The numbers after `marker` in `lines` (`[example] received: 7`), in order.
pub fn numbers_after(lines: &[String], marker: &str) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|line| line.split(marker).nth(1))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

/// How many times each number appears.
pub fn counts(numbers: impl IntoIterator<Item = u64>) -> std::collections::HashMap<u64, usize> {
    let mut counts = std::collections::HashMap::new();
    for n in numbers {
        *counts.entry(n).or_default() += 1;
    }
    counts
}

/// The target dir that the apps the tests build share (give it to the CLI as
/// `CARGO_TARGET_DIR`), so that each test does not build an app from scratch. Apps that tests
/// build at the same time need package names of their own: each build replaces
/// `release/<package>` there.
pub fn apps_target_dir() -> PathBuf {
    workspace_root().join("target").join("e2e-apps")
}

/// A cluster name no other test uses, so clusters of tests running at once stay apart.
pub fn cluster_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("e2e-{}-{next}", std::process::id())
}

/// A node of the base's install, at `offset`, with a data dir of its own, started.
pub fn start_node(base: &Base, name: &str, offset: u16, extra: &[&str]) -> Proc {
    let mut args = base.node_args(name, offset);
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let node = base.run(args);
    node.wait_for("started in", PATIENCE);
    node
}

/// Polls `check` until it holds, failing the test with `what` after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The app the web tests deploy; it shows what it was sent and how.
pub fn webprobe() -> PathBuf {
    workspace_root().join("tests/apps/webprobe")
}

/// A clustered node of the base's install, started.
pub fn clustered(base: &Base, name: &str, offset: u16, cluster: &str) -> Proc {
    clustered_with(base, name, offset, cluster, &[])
}

/// A clustered node of the base's install, with more arguments, started.
pub fn clustered_with(
    base: &Base,
    name: &str,
    offset: u16,
    cluster: &str,
    extra: &[String],
) -> Proc {
    let mut args = vec!["--clustered".to_string()];
    args.extend(base.node_args(name, offset));
    args.push(format!("-Dimmutant.cluster.name={cluster}"));
    args.extend_from_slice(extra);
    let node = base.run(args);
    node.wait_for("started in", PATIENCE);
    node
}

/// Two clustered nodes, `one` and `two`, of the base's install (the seed app, `example`,
/// deployed there already), each seeing both and running the seed: their offsets and the nodes.
pub fn seed_pair(base: &Base) -> ([u16; 2], Proc, Proc) {
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset()];
    let one = clustered(base, "one", offsets[0], &cluster);
    let two = clustered(base, "two", offsets[1], &cluster);
    for node in [&one, &two] {
        node.wait_for("Cluster view: [one, two]", PATIENCE);
        node.wait_for("[example] received:", BUILD_PATIENCE);
    }
    (offsets, one, two)
}

/// Kills the node at `offset` (the server itself, found through its management API) with
/// SIGKILL.
pub fn kill_9(offset: u16) {
    kill_9_pid(node_pid(offset));
}

/// The process id of the node at `offset` (the server itself), from its management API.
pub fn node_pid(offset: u16) -> i32 {
    get_json(9990 + offset)["pid"].as_i64().unwrap() as i32
}

/// The process id of the app `app` on the node whose management port is `management`, as its
/// management API says (none while it has no process).
pub fn app_pid(management: u16, app: &str) -> Option<i32> {
    let deployments = get_json_at(management, "deployments");
    deployments.as_array()?.iter().find(|d| d["name"] == app)?["pid"]
        .as_i64()
        .map(|pid| pid as i32)
}

/// Kills the process `pid` with SIGKILL.
pub fn kill_9_pid(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}
