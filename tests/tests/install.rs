//! `cargo immutant install`: from source, from a local binary, from an http URL with its
//! checksum; and what `list --installs`, `env` and `version` then say.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use immutant_e2e::{Base, INSTALL_BUILD, binaries, workspace_root};
use sha2::{Digest, Sha256};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn assert_layout(release: &Path) {
    for path in [
        "bin/immutant-server",
        "config/standalone.toml",
        "config/standalone-ha.toml",
    ] {
        assert!(
            release.join(path).is_file(),
            "{} lacks {path}",
            release.display()
        );
    }
    assert!(release.join("deployments").is_dir());
}

/// The tests run the binaries `install.sh` builds, built by the same command (so that after it
/// nothing is built again): the two must not drift apart.
#[test]
fn the_tests_build_what_install_sh_builds() {
    let script = std::fs::read_to_string(workspace_root().join("install.sh")).unwrap();
    let command = format!("cargo {}", INSTALL_BUILD.join(" "));
    assert!(
        script.lines().any(|line| line.trim() == command),
        "install.sh does not run `{command}`; change INSTALL_BUILD in tests/src/lib.rs with it"
    );
}

#[test]
fn install_from_source_builds_links_current_and_then_is_already_installed() {
    let base = Base::empty();
    let output = base.cli(["install"]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let release = base.path().join("releases").join(version());
    let text = stdout(&output);
    assert!(
        text.contains(&format!("Built immutant-server {}", version())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Installed Immutant {} to {}",
            version(),
            release.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Linking {} to {}",
            base.path().join("current").display(),
            release.display()
        )),
        "{text}"
    );
    assert_layout(&release);
    assert_eq!(
        std::fs::read_link(base.path().join("current")).unwrap(),
        release
    );

    let again = base.cli(["install"]).output().unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains(&format!(
        "Version {} already installed to {}",
        version(),
        release.display()
    )));
    assert!(
        !stdout(&again).contains("Built"),
        "an installed version is not built again"
    );
}

#[test]
fn run_installs_a_server_first_when_there_is_none() {
    let base = Base::empty();
    let offset = immutant_e2e::free_offset();
    let mut node = base.run([
        format!("--offset={offset}"),
        format!(
            "-Djboss.server.data.dir={}",
            base.data_dir("auto").display()
        ),
    ]);
    node.wait_for(
        "No Immutant installed, installing one built from",
        immutant_e2e::PATIENCE,
    );
    node.wait_for("started in", std::time::Duration::from_secs(600));
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(immutant_e2e::PATIENCE).code(), Some(0));
    assert_layout(&base.path().join("current"));
}

#[test]
fn install_from_a_local_binary_reports_where_it_came_from() {
    let base = Base::empty();
    let server = &binaries().server;
    let output = base
        .cli(["install", "--from"])
        .arg(server)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_layout(&base.path().join("releases").join(version()));

    let list = stdout(&base.cli(["list", "--installs"]).output().unwrap());
    assert!(
        list.contains(&format!("installed to {}", base.path().display())),
        "{list}"
    );
    let line = list
        .lines()
        .find(|line| line.contains(version()))
        .expect("the install is listed");
    assert!(
        line.starts_with(" * "),
        "the install in use is marked: {list}"
    );
    assert!(
        line.contains(&format!("(from: {})", server.display())),
        "{list}"
    );

    let version_text = stdout(&base.cli(["version"]).output().unwrap());
    assert!(version_text.contains(&format!(
        "Immutant {} at {}",
        version(),
        base.path().join("current").display()
    )));
}

#[test]
fn a_version_the_source_does_not_give_is_refused() {
    let base = Base::empty();
    let output = base
        .cli(["install", "9.9.9", "--from"])
        .arg(&binaries().server)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&format!("gives Immutant {}, not 9.9.9", version())),
        "{}",
        stderr(&output)
    );
    assert!(!base.path().join("releases").join("9.9.9").exists());
}

#[test]
fn an_install_into_a_dir_of_its_own_is_not_linked() {
    let base = Base::empty();
    let dir = base.path().join("elsewhere");
    let output = base
        .cli(["install", version()])
        .arg(&dir)
        .arg("--from")
        .arg(&binaries().server)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains(&format!("{} is unmanaged, not linking", dir.display())));
    assert_layout(&dir);
    assert!(!base.path().join("current").exists());
}

#[test]
fn a_path_that_is_not_a_server_is_refused() {
    let base = Base::empty();
    let output = base
        .cli(["install", "--from", "/bin/true"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is not an immutant-server binary"),
        "{}",
        stderr(&output)
    );
    let missing = base
        .cli(["install", "--from", "/no/such/server"])
        .output()
        .unwrap();
    assert!(
        stderr(&missing).contains("/no/such/server is not a file"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn env_tells_where_things_are() {
    let base = Base::installed();
    let all = stdout(&base.cli(["env"]).output().unwrap());
    assert!(
        all.contains(&format!(
            "      base-dir: {} (from: $IMMUTANT_BASE_DIR)",
            base.path().display()
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            " immutant-home: {}",
            base.path().join("current").display()
        )),
        "{all}"
    );
    let home = stdout(&base.cli(["env", "immutant-home"]).output().unwrap());
    assert_eq!(
        home,
        base.path().join("current").display().to_string(),
        "one path, no newline"
    );
    let unknown = base.cli(["env", "jboss-home"]).output().unwrap();
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown)
            .contains("jboss-home is an unknown env key. Valid keys are: base-dir, immutant-home")
    );
}

#[test]
fn cargo_runs_it_as_a_subcommand() {
    let base = Base::installed();
    let bin_dir = binaries().cli.parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["immutant", "version"])
        .env("PATH", path)
        .env("IMMUTANT_BASE_DIR", base.path())
        .env_remove("IMMUTANT_HOME")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with(&format!(
            "cargo-immutant {}\nImmutant {}",
            version(),
            version()
        )),
        "{}",
        stdout(&output)
    );
}

/// Files served over http on 127.0.0.1 by a server of the test's own, until dropped.
struct FileServer {
    port: u16,
    _runtime: tokio::runtime::Runtime,
}

impl FileServer {
    fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = axum::Router::new().route(
            "/{name}",
            axum::routing::get(
                move |axum::extract::Path(name): axum::extract::Path<String>| {
                    let file = files.get(&name).cloned();
                    async move { file.ok_or(axum::http::StatusCode::NOT_FOUND) }
                },
            ),
        );
        runtime.spawn(async move { axum::serve(listener, router).await });
        FileServer {
            port,
            _runtime: runtime,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}  file\n", Sha256::digest(bytes))
}

/// A release tarball: `immutant-<v>/bin/immutant-server` and a config of its own.
fn tarball(config_marker: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let root = format!("immutant-{}", version());
    builder
        .append_path_with_name(&binaries().server, format!("{root}/bin/immutant-server"))
        .unwrap();
    let config = format!(
        "{}\n# {config_marker}\n",
        include_str!("../../server/config/standalone.toml")
    );
    let mut header = tar::Header::new_gnu();
    header.set_size(config.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(
            &mut header,
            format!("{root}/config/standalone.toml"),
            config.as_bytes(),
        )
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn install_from_a_url_verifies_the_checksum() {
    let release = tarball("the tarball's own config");
    let binary = std::fs::read(&binaries().server).unwrap();
    let server = FileServer::start(HashMap::from([
        ("good.tar.gz".to_string(), release.clone()),
        (
            "good.tar.gz.sha256".to_string(),
            sha256(&release).into_bytes(),
        ),
        ("bad.tar.gz".to_string(), release.clone()),
        (
            "bad.tar.gz.sha256".to_string(),
            sha256(b"something else").into_bytes(),
        ),
        ("unsigned".to_string(), binary.clone()),
        ("immutant-server".to_string(), binary.clone()),
        (
            "immutant-server.sha256".to_string(),
            sha256(&binary).into_bytes(),
        ),
    ]));

    let base = Base::empty();
    let bad = base
        .cli(["install", "--from", &server.url("bad.tar.gz")])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("does not match"), "{}", stderr(&bad));
    assert!(
        !base.path().join("releases").join(version()).exists(),
        "a bad download installs nothing"
    );
    assert!(!base.path().join("current").exists());

    let unsigned = base
        .cli(["install", "--from", &server.url("unsigned")])
        .output()
        .unwrap();
    assert!(!unsigned.status.success());
    assert!(
        stderr(&unsigned).contains("unsigned.sha256"),
        "{}",
        stderr(&unsigned)
    );
    assert!(!base.path().join("releases").join(version()).exists());

    let good = base
        .cli(["install", "--from", &server.url("good.tar.gz")])
        .output()
        .unwrap();
    assert!(good.status.success(), "{}", stderr(&good));
    let installed = base.path().join("releases").join(version());
    assert_layout(&installed);
    let config = std::fs::read_to_string(installed.join("config/standalone.toml")).unwrap();
    assert!(
        config.contains("the tarball's own config"),
        "a tarball's config wins over the default"
    );
    assert_eq!(
        std::fs::read_link(base.path().join("current")).unwrap(),
        installed
    );

    let other = Base::empty();
    let plain = other
        .cli(["install", "--from", &server.url("immutant-server")])
        .output()
        .unwrap();
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(
        stdout(&plain).contains("Verified the SHA-256 checksum"),
        "{}",
        stdout(&plain)
    );
    assert_layout(&other.path().join("releases").join(version()));
}

#[test]
fn a_forced_reinstall_keeps_the_deployments() {
    let base = Base::installed();
    let descriptor = base.path().join("current/deployments/kept.toml");
    std::fs::write(&descriptor, "name = \"kept\"\n").unwrap();
    let output = base
        .cli(["install", "--force", "--from"])
        .arg(&binaries().server)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("Installed Immutant"),
        "{}",
        stdout(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&descriptor).unwrap(),
        "name = \"kept\"\n"
    );
}
