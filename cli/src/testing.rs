//! `test`: what `lein immutant test` was. Runs the app's tests (`cargo test`) against a throwaway
//! node of the installed server, started in a temporary home and data dir on free ports and
//! stopped afterwards. The tests' `App::connect()` reaches the node through its attach socket
//! (`IMMUTANT_ATTACH`), each test as an app of the project's name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use immutant_protocol::{APP_VAR, ATTACH_VAR, NODE_VAR};

use crate::install;
use crate::locations::Locations;
use crate::project::{Overrides, Project};

/// The throwaway node's name.
const NODE_NAME: &str = "test";
/// How long the node may take to start.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// How long it may take to stop before it is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(15);

/// Runs the tests of the project in `path`, passing `cargo_args` to `cargo test`, against a
/// throwaway node; answers `cargo test`'s exit status.
pub fn test(locations: &Locations, path: &Path, cargo_args: &[String]) -> Result<ExitStatus> {
    let project = Project::read(path)?;
    let name = project.app(&Overrides::default())?.name;
    install::ensure_installed(locations)?;
    // Ctrl-C reaches cargo and the node (they share the terminal's process group): the CLI
    // lives on to stop the node and remove its folder.
    signal_hook::flag::register(
        signal_hook::consts::SIGINT,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .context("cannot set up Ctrl-C handling")?;
    let node = ThrowawayNode::start(locations, &name)?;
    println!(
        "Running the tests of {name} against a throwaway node ({}, management http://127.0.0.1:{})",
        node.dir.path().display(),
        node.management_port
    );
    let status = crate::cargo::command()
        .env("CARGO_TARGET_DIR", project.build_dir(locations))
        .env(APP_VAR, &name)
        .env(NODE_VAR, NODE_NAME)
        .env(ATTACH_VAR, node.attach_socket())
        .arg("test")
        .arg("--manifest-path")
        .arg(project.root.join("Cargo.toml"))
        .args(cargo_args)
        .status()
        .context("cannot run `cargo test`; is cargo on your PATH?")?;
    node.stop(status.success());
    Ok(status)
}

/// A node of the installed server in a temporary folder of its own, stopped and removed when
/// dropped.
struct ThrowawayNode {
    dir: tempfile::TempDir,
    process: Child,
    management_port: u16,
}

impl ThrowawayNode {
    /// Starts a standalone node in a fresh home (the install's `standalone.toml`, no
    /// deployments) and data dir, at a port offset whose ports are free, serving what
    /// connects to its attach socket as the app `name`.
    fn start(locations: &Locations, name: &str) -> Result<ThrowawayNode> {
        let dir = tempfile::Builder::new()
            .prefix("immutant-test-")
            .tempdir()
            .context("cannot make a temporary folder for the throwaway node")?;
        let home = dir.path().join("home");
        for folder in ["config", "deployments"] {
            std::fs::create_dir_all(home.join(folder))
                .with_context(|| format!("cannot create {}", home.join(folder).display()))?;
        }
        let config = locations.home.join("config").join("standalone.toml");
        std::fs::copy(&config, home.join("config").join("standalone.toml"))
            .with_context(|| format!("cannot copy {}", config.display()))?;
        let offset = free_offset()?;
        let log = dir.path().join("node.log");
        let output = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let process = Command::new(locations.server())
            .arg(format!("-Djboss.home.dir={}", home.display()))
            .arg(format!(
                "-Djboss.server.data.dir={}",
                dir.path().join("data").display()
            ))
            .arg(format!("-Djboss.socket.binding.port-offset={offset}"))
            .arg(format!("-Djboss.node.name={NODE_NAME}"))
            .arg(format!("-Dimmutant.attach={name}"))
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("cannot run {}", locations.server().display()))?;
        let mut node = ThrowawayNode {
            dir,
            process,
            management_port: 9990 + offset,
        };
        node.wait_until_up(&log)?;
        Ok(node)
    }

    fn attach_socket(&self) -> PathBuf {
        self.dir.path().join("data").join("attach.sock")
    }

    /// Waits until the node listens on its attach socket; if it ends first, says why.
    fn wait_until_up(&mut self, log: &Path) -> Result<()> {
        let started = Instant::now();
        while !self.attach_socket().exists() {
            if let Some(status) = self.process.try_wait()? {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                bail!("the throwaway node stopped ({status}) before it was up:\n{said}");
            }
            if started.elapsed() > START_PATIENCE {
                bail!(
                    "the throwaway node was not up within {START_PATIENCE:?}; its log is {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the node gracefully (killed if it takes too long), and removes its folder; but
    /// after tests that failed, keeps its log and says where.
    fn stop(mut self, tests_passed: bool) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.process.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < STOP_PATIENCE {
            if let Ok(Some(_)) = self.process.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        if !tests_passed {
            let log = self.dir.path().join("node.log");
            let kept =
                std::env::temp_dir().join(format!("immutant-test-{}.log", std::process::id()));
            if std::fs::copy(&log, &kept).is_ok() {
                println!("The throwaway node's log is kept in {}", kept.display());
            }
        }
    }
}

impl Drop for ThrowawayNode {
    fn drop(&mut self) {
        // Stopped already, or the CLI is failing: nothing of it is left running.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A port offset whose HTTP and management ports are free on 127.0.0.1 now: a multiple of 100
/// (the two ports are 1910 apart, so no node's HTTP port is another's management port) from
/// 10000 to 22700, which keeps both below the ports the system hands out for outgoing
/// connections (32768 and up).
fn free_offset() -> Result<u16> {
    const SLOTS: u16 = 128;
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    // Where to start is this process's pick, so that tests run at once try different ones.
    let start = std::process::id() as u16 % SLOTS;
    for step in 0..SLOTS {
        let offset = 10_000 + ((start + step) % SLOTS) * 100;
        if free(8080 + offset) && free(9990 + offset) {
            return Ok(offset);
        }
    }
    bail!("found no free ports for a throwaway node on 127.0.0.1 (tried offsets 10000 to 22700)")
}
