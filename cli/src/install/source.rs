//! Building the server from the source tree this CLI was built from, with a progress bar that
//! follows cargo's JSON messages.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

/// The server's package in the workspace.
const SERVER_PACKAGE: &str = "immutant-server";
/// The packages a server build builds: the server with the CLI, as `install.sh` builds them, so
/// that the dependencies they share are built once with the same features (the server built
/// alone would resolve some of them differently, and build them and all above them again).
const BUILT_PACKAGES: [&str; 2] = ["cargo-immutant", SERVER_PACKAGE];

/// A checkout of Immutant that can build a server.
#[derive(Debug, Clone)]
pub struct SourceTree {
    pub root: PathBuf,
}

impl SourceTree {
    /// The tree this CLI was built from.
    pub fn of_this_cli() -> Self {
        let cli = Path::new(env!("CARGO_MANIFEST_DIR"));
        SourceTree {
            root: cli.parent().unwrap_or(cli).to_path_buf(),
        }
    }

    fn manifest(&self) -> PathBuf {
        self.root.join("Cargo.toml")
    }

    /// Reads the server's version, and how many compiler artifacts its build makes, from
    /// `cargo metadata`.
    pub fn plan(&self) -> Result<BuildPlan> {
        if !self.manifest().is_file() {
            bail!(
                "cannot build a server: the source tree this CLI was built from ({}) is gone; \
                 install a prebuilt one with `cargo immutant install --from PATH|URL`",
                self.root.display()
            );
        }
        let host = host_triple()?;
        let output = crate::cargo::command()
            .args([
                "metadata",
                "--format-version",
                "1",
                "--filter-platform",
                &host,
                "--manifest-path",
            ])
            .arg(self.manifest())
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run `cargo metadata`; is cargo on your PATH?")?;
        if !output.status.success() {
            bail!("`cargo metadata` failed in {}", self.root.display());
        }
        let metadata: Metadata = serde_json::from_slice(&output.stdout)
            .context("cannot read `cargo metadata`'s output")?;
        BuildPlan::from_metadata(&metadata)
    }

    /// Builds the server in release mode and returns its binary. Cargo's errors are shown if the
    /// build fails.
    pub fn build_server(&self, plan: &BuildPlan) -> Result<PathBuf> {
        let started = Instant::now();
        let bar = ProgressBar::new(plan.artifacts);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} Building immutant-server and the CLI {wide_bar} {pos}/{len} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        let mut child = crate::cargo::command()
            .args([
                "build",
                "--release",
                "--locked",
                "--message-format",
                "json-render-diagnostics",
            ])
            .args(BUILT_PACKAGES.iter().flat_map(|package| ["-p", package]))
            .arg("--manifest-path")
            .arg(self.manifest())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run `cargo build`; is cargo on your PATH?")?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut binary = None;
        for line in BufReader::new(child.stdout.take().expect("stdout is piped")).lines() {
            let Ok(message) = serde_json::from_str::<CargoMessage>(&line?) else {
                continue;
            };
            if message.reason == "compiler-artifact" {
                if bar.position() >= bar.length().unwrap_or(0) {
                    bar.inc_length(1);
                }
                bar.inc(1);
                if let Some(target) = message.target {
                    if target.name == SERVER_PACKAGE && message.executable.is_some() {
                        binary = message.executable;
                    }
                    bar.set_message(target.name);
                }
            }
        }
        let status = child.wait()?;
        bar.finish_and_clear();
        let errors = errors.join().unwrap_or_default();
        if !status.success() {
            eprint!("{errors}");
            bail!("building the server failed (cargo's errors are above)");
        }
        let binary = binary.context("cargo built no immutant-server binary")?;
        println!(
            "Built immutant-server {} in {:.1}s",
            plan.version,
            started.elapsed().as_secs_f64()
        );
        Ok(binary)
    }
}

/// What building the server will give and take.
#[derive(Debug)]
pub struct BuildPlan {
    pub version: String,
    /// About how many compiler artifacts the build makes: one per library, build script and binary.
    pub artifacts: u64,
}

impl BuildPlan {
    fn from_metadata(metadata: &Metadata) -> Result<Self> {
        let server = metadata
            .packages
            .iter()
            .find(|package| package.name == SERVER_PACKAGE)
            .context("this source tree has no immutant-server package")?;
        let edges: HashMap<&str, Vec<&str>> = metadata
            .resolve
            .nodes
            .iter()
            .map(|node| {
                let deps = node
                    .deps
                    .iter()
                    .filter(|dep| {
                        dep.dep_kinds
                            .iter()
                            .any(|kind| kind.kind.as_deref() != Some("dev"))
                    })
                    .map(|dep| dep.pkg.as_str())
                    .collect();
                (node.id.as_str(), deps)
            })
            .collect();
        let mut reachable = BTreeSet::new();
        let mut todo: Vec<&str> = metadata
            .packages
            .iter()
            .filter(|package| BUILT_PACKAGES.contains(&package.name.as_str()))
            .map(|package| package.id.as_str())
            .collect();
        while let Some(id) = todo.pop() {
            if reachable.insert(id) {
                todo.extend(edges.get(id).into_iter().flatten());
            }
        }
        let build_scripts = metadata
            .packages
            .iter()
            .filter(|package| reachable.contains(package.id.as_str()))
            .filter(|package| {
                package
                    .targets
                    .iter()
                    .any(|t| t.kind.iter().any(|k| k == "custom-build"))
            })
            .count();
        // Each package gives its library, each build script one more, and the server and the
        // CLI their binaries.
        let artifacts = (reachable.len() + build_scripts + BUILT_PACKAGES.len()) as u64;
        Ok(BuildPlan {
            version: server.version.clone(),
            artifacts,
        })
    }
}

fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("cannot run `rustc -vV`; is the Rust toolchain installed?")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_string)
        .context("`rustc -vV` did not say which host it builds for")
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    resolve: Resolve,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    version: String,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

#[derive(Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Deserialize)]
struct DepKind {
    kind: Option<String>,
}

#[derive(Deserialize)]
struct CargoMessage {
    reason: String,
    target: Option<Target>,
    executable: Option<PathBuf>,
}
