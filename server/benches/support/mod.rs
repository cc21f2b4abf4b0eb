//! What the benchmarks share: a throwaway install of the release server, the test apps, nodes
//! whose output can be waited on, and free ports.

// Each benchmark compiles this module and uses the part it needs.
#![allow(dead_code)]

pub mod nats;
pub mod rabbitmq;

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

    /// Deploys `app` (a built binary) as `name`, as `cargo immutant deploy` leaves a deployment:
    /// the artifact named for its content, and a descriptor saying when it was deployed.
    pub fn deploy(&self, app: &Path, name: &str) {
        let deployments = self.home().join("deployments");
        std::fs::create_dir_all(deployments.join(".artifacts")).unwrap();
        let content = std::fs::read(app).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &content);
        let hash: String = digest.as_ref()[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let artifact = format!(".artifacts/{name}-{hash}");
        std::fs::write(deployments.join(&artifact), &content).unwrap();
        let executable =
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        std::fs::set_permissions(deployments.join(&artifact), executable).unwrap();
        let now = immutant_foundation::clock::now_ms();
        self.write_descriptor(
            name,
            &format!("name = \"{name}\"\nartifact = \"{artifact}\"\ndeployed-at = {now}\n"),
        );
    }

    /// Deploys `name` again as it is, replaced one member at a time: a new `deployed-at` and
    /// `rolling = true` in its descriptor.
    pub fn redeploy_rolling(&self, name: &str) {
        let deployments = self.home().join("deployments");
        let path = deployments.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let now = immutant_foundation::clock::now_ms();
        let kept: String = text
            .lines()
            .filter(|line| !line.starts_with("deployed-at") && !line.starts_with("rolling"))
            .map(|line| format!("{line}\n"))
            .collect();
        self.write_descriptor(
            name,
            &format!("{kept}deployed-at = {now}\nrolling = true\n"),
        );
    }

    /// Writes `name`'s descriptor whole (beside it, then renamed), as the CLI does.
    fn write_descriptor(&self, name: &str, text: &str) {
        let deployments = self.home().join("deployments");
        let written = deployments.join(format!(".{name}.toml.new"));
        std::fs::write(&written, text).unwrap();
        std::fs::rename(written, deployments.join(format!("{name}.toml"))).unwrap();
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

    /// Starts a balancer of this install that does not advertise, clients' port `port` and
    /// MCMP `mcmp`, with `extra` arguments.
    pub fn start_balancer(&self, port: u16, mcmp: u16, extra: &[String]) -> Node {
        let mut args = vec!["balancer".to_string(), "--no-advertise".to_string()];
        args.extend(["--port".to_string(), port.to_string()]);
        args.extend(["--mcmp-port".to_string(), mcmp.to_string()]);
        args.extend_from_slice(extra);
        self.start(&args)
    }

    /// Starts clustered node `name` of `cluster` at `offset`, telling the balancers whose MCMP
    /// ports are `mcmp` about itself every second; returns it once it has deployed `bench`.
    pub fn start_behind(&self, name: &str, offset: u16, cluster: &str, mcmp: &[u16]) -> Node {
        let mut args = self.clustered_args(name, offset, cluster);
        let proxies: Vec<String> = mcmp
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        args.push(format!(
            "-Dimmutant.modcluster.proxies={}",
            proxies.join(",")
        ));
        args.push("-Dimmutant.modcluster.status-interval=1000".to_string());
        let node = self.start(&args);
        node.wait_for("Deployed \"bench\"");
        node
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

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.mark();
        self.seen
            .borrow()
            .iter()
            .map(|(_, line)| line.clone())
            .collect()
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

/// Two clustered nodes, started with `engine` too: the producer's publishers on the first, the
/// consumer on both (on the embedded engine the first node forwards about half of what is
/// published to the second). Returns the combined throughput and the slower node's latency
/// percentiles.
pub fn run_clustered(
    loadgen: &Path,
    messages: &str,
    publishers: &str,
    run: usize,
    engine: &[String],
) -> Figures {
    let install = TempInstall::new();
    let cluster = format!("bench-messaging-{}-{run}", std::process::id());
    let first_offset = free_offset(1000);
    let offsets = [first_offset, free_offset(first_offset + 100)];
    let nodes: Vec<_> = [("first", publishers), ("second", "0")]
        .iter()
        .zip(offsets)
        .map(|((name, publishers), offset)| {
            let mut args = install.clustered_args(name, offset, &cluster);
            args.extend([
                format!("-Dloadgen.messages={messages}"),
                format!("-Dloadgen.publishers={publishers}"),
                "-Dloadgen.report=idle".to_string(),
            ]);
            args.extend_from_slice(engine);
            install.start(&args)
        })
        .collect();
    for node in &nodes {
        node.wait_for("(2 members");
    }
    install.deploy(loadgen, "consumer");
    for node in &nodes {
        node.wait_for("Deployed \"consumer\"");
    }
    // Let each node learn that the other consumes, so that bridges are in place.
    std::thread::sleep(Duration::from_secs(1));
    install.deploy(loadgen, "producer");
    // "consumed N messages in S s: R msg/s; ... p50 A ms, p99 B ms; window FIRST LAST"
    let reports: Vec<Vec<f64>> = nodes
        .iter()
        .map(|node| {
            let (_, line) = node.wait_for("consumed ");
            line[line.find("consumed ").unwrap_or(0)..]
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter_map(|word| word.parse().ok())
                .collect()
        })
        .collect();
    for node in nodes {
        node.stop();
    }
    let total: f64 = reports.iter().map(|numbers| numbers[0]).sum();
    let first = reports
        .iter()
        .map(|numbers| numbers[7])
        .fold(f64::MAX, f64::min);
    let last = reports.iter().map(|numbers| numbers[8]).fold(0.0, f64::max);
    let slowest = |index: usize| {
        reports
            .iter()
            .map(|numbers| numbers[index])
            .fold(0.0, f64::max)
    };
    (total / ((last - first) / 1e9), slowest(4), slowest(6))
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

/// nginx (Debian's) in the foreground, its files in `dir`, serving `http` (upstreams and
/// servers: what goes inside its `http {}`); stopped when dropped.
pub struct Nginx(Child);

impl Nginx {
    pub fn start(dir: &Path, http: &str) -> Nginx {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let config = format!(
            "daemon off;\nuser root;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  {http}\n}}\n",
            dir = dir.display(),
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx starts (apt-get install nginx)");
        Nginx(child)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGQUIT) };
        let _ = self.0.wait();
    }
}

/// How long each wrk run lasts, and with how many connections.
pub const WRK_DURATION: &str = "10s";
pub const WRK_CONNECTIONS: &str = "64";

/// Runs wrk (two threads, [`WRK_CONNECTIONS`] connections, [`WRK_DURATION`]) against `url`,
/// with `extra` arguments; returns "N req/s, p99 X".
pub fn wrk(url: &str, extra: &[&str]) -> String {
    let output = Command::new("wrk")
        .args([
            "-t2",
            "-c",
            WRK_CONNECTIONS,
            "-d",
            WRK_DURATION,
            "--latency",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .map(str::trim)
        .unwrap_or("?");
    let p99 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("99%"))
        .map(str::trim)
        .unwrap_or("?");
    let errors = text
        .lines()
        .find(|line| line.contains("Non-2xx") || line.contains("Socket errors"))
        .map(|line| format!(" ({})", line.trim()))
        .unwrap_or_default();
    format!("{rate} req/s, p99 {p99}{errors}")
}

/// Waits until `url` answers 2xx (any certificate taken), for 20 s at most.
pub fn wait_until_answers(url: &str) {
    for _ in 0..200 {
        let answered = Command::new("curl")
            .args(["-skf", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|status| status.success());
        if answered {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never answered");
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

/// A load's throughput and latency: (msg/s, p50 ms, p99 ms).
pub type Figures = (f64, f64, f64);

/// The medians of `runs` runs of `run` (given each run's number, from 1).
pub fn medians(runs: usize, mut run: impl FnMut(usize) -> Figures) -> Figures {
    let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for number in 1..=runs {
        let (rate, p50, p99) = run(number);
        rates.push(rate);
        p50s.push(p50);
        p99s.push(p99);
    }
    (median(&mut rates), median(&mut p50s), median(&mut p99s))
}

/// Figures as the benchmarks print them.
pub fn shown((rate, p50, p99): Figures) -> String {
    format!("{rate:.0} msg/s, p50 {p50:.2} ms, p99 {p99:.2} ms")
}

/// The throughput and latency in a load's report, "... consumed N messages in S s: R msg/s;
/// ... p50 A ms, p99 B ms" (as rabbitload and natsload print it): (R, A, B).
pub fn load_report(report: &str) -> Figures {
    let numbers: Vec<f64> = report[report.find("consumed ").unwrap_or(0)..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[2], numbers[4], numbers[6])
}
