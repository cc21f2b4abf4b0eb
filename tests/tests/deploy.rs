//! `cargo immutant new`, `deploy`, `undeploy` and `archive`: what they write to the project and
//! to the deployments folder, with real apps built by cargo.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, apps_target_dir, eventually, free_offset, get_json_at,
    start_node,
};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `command`, failing the test with its output if it fails.
fn succeed(command: &mut Command) -> Output {
    let output = command.output().expect("the CLI runs");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    output
}

/// Runs `command`, failing the test if it succeeds; returns its standard error.
fn fail(command: &mut Command) -> String {
    let output = command.output().expect("the CLI runs");
    assert!(
        !output.status.success(),
        "{command:?} succeeded:\n{}",
        stdout(&output)
    );
    stderr(&output)
}

/// `cargo-immutant ARGS` in `dir`, building apps in the shared target dir.
fn cli_in(base: &Base, dir: &Path, args: &[&str]) -> Command {
    let mut command = base.cli(args);
    command
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", apps_target_dir());
    command
}

/// Writes the project `package` under `parent`: no dependencies, a `main` that prints
/// `message`, a context path and a setting of its own. Returns its folder.
fn write_app(parent: &Path, package: &str, message: &str) -> PathBuf {
    let dir = parent.join(package);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{package}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [package.metadata.immutant]\ncontext-path = \"/hello\"\ngreeting = \"hi\"\n"
        ),
    )
    .unwrap();
    write_main(&dir, message);
    dir
}

fn write_main(dir: &Path, message: &str) {
    std::fs::write(
        dir.join("src").join("main.rs"),
        format!("fn main() {{\n    println!(\"{message}\");\n}}\n"),
    )
    .unwrap();
}

fn deployments(base: &Base) -> PathBuf {
    base.path().join("current").join("deployments")
}

/// A descriptor's `key = value` lines: the top-level ones, and those of `[settings]`.
struct DescriptorText {
    top: Vec<(String, String)>,
    settings: Vec<(String, String)>,
}

impl DescriptorText {
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut descriptor = DescriptorText {
            top: Vec::new(),
            settings: Vec::new(),
        };
        let mut in_settings = false;
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            if line.starts_with('[') {
                assert_eq!(line, "[settings]", "an unexpected table in {text}");
                in_settings = true;
                continue;
            }
            let (key, value) = line
                .split_once(" = ")
                .unwrap_or_else(|| panic!("not a key = value line: {line}"));
            let entry = (key.to_string(), value.to_string());
            if in_settings {
                descriptor.settings.push(entry);
            } else {
                descriptor.top.push(entry);
            }
        }
        descriptor
    }

    fn get(&self, key: &str) -> &str {
        self.top
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("the descriptor has no {key}"))
    }

    fn keys(&self) -> Vec<&str> {
        self.top.iter().map(|(key, _)| key.as_str()).collect()
    }

    /// The artifact's absolute path, checked to be an executable file.
    fn artifact(&self, deployments: &Path) -> PathBuf {
        let path = deployments.join(self.get("artifact").trim_matches('"'));
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("no artifact {}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{} is not executable", path.display());
        path
    }

    fn deployed_at(&self) -> u64 {
        self.get("deployed-at").parse().expect("a number")
    }
}

/// A path as the descriptor has it: resolved, and quoted.
fn quoted(path: &Path) -> String {
    format!("\"{}\"", std::fs::canonicalize(path).unwrap().display())
}

fn run_artifact(path: &Path) -> String {
    let output = Command::new(path).output().expect("the artifact runs");
    assert!(output.status.success());
    stdout(&output)
}

#[test]
fn new_renders_the_default_template_with_the_name_and_the_installed_sdk() {
    let base = Base::installed();
    let output = succeed(&mut cli_in(&base, base.path(), &["new", "example"]));
    assert!(
        stdout(&output)
            .contains("Generating a project called example based on the 'default' template."),
        "{}",
        stdout(&output)
    );
    let project = base.path().join("example");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"example\""), "{manifest}");
    assert!(
        manifest.contains("[package.metadata.immutant]"),
        "{manifest}"
    );
    let sdk = manifest
        .lines()
        .find_map(|line| line.strip_prefix("immutant = { path = \""))
        .and_then(|rest| rest.strip_suffix("\" }"))
        .unwrap_or_else(|| panic!("no immutant path dependency in {manifest}"));
    let sdk = Path::new(sdk);
    let release = std::fs::canonicalize(base.path().join("current")).unwrap();
    assert_eq!(sdk, release.join("sources").join("sdk"));
    assert!(sdk.join("Cargo.toml").is_file());
    assert!(sdk.join("src").join("lib.rs").is_file());
    assert!(sdk.join("../protocol/Cargo.toml").is_file());
    assert!(!sdk.join("target").exists());

    let main = std::fs::read_to_string(project.join("src").join("main.rs")).unwrap();
    assert!(main.starts_with("//! example: an Immutant app."), "{main}");
    assert!(main.contains("App::connect()"), "{main}");
    for file in ["Cargo.toml", "src/main.rs", "README.md"] {
        let text = std::fs::read_to_string(project.join(file)).unwrap();
        assert!(
            !text.contains("{{"),
            "{file} has a placeholder left:\n{text}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(project.join(".gitignore")).unwrap(),
        "/target\n"
    );
    assert!(!project.join("Cargo.toml.template").exists());

    let error = fail(&mut cli_in(&base, base.path(), &["new", "example"]));
    assert!(
        error.contains(&format!(
            "{} already exists; choose another name or remove it",
            project.display()
        )),
        "{error}"
    );
    for name in ["9lives", "my app"] {
        let error = fail(&mut cli_in(&base, base.path(), &["new", name]));
        assert!(
            error.contains(&format!("'{name}' is not a valid crate name")),
            "{error}"
        );
        assert!(!base.path().join(name).exists());
    }
    let error = fail(&mut cli_in(
        &base,
        base.path(),
        &["new", "other", "--template", "nope"],
    ));
    assert!(
        error.contains("there is no template called 'nope'") && error.contains("default"),
        "{error}"
    );
    assert!(!base.path().join("other").exists());
}

#[test]
fn deploy_writes_an_artifact_and_a_descriptor_and_redeploys() {
    let base = Base::installed();
    let project = write_app(base.path(), "deploy-hello", "hello");
    let output = succeed(&mut cli_in(&base, &project, &["deploy"]));
    let deployments = deployments(&base);
    let descriptor_path = deployments.join("deploy-hello.toml");
    assert!(
        stdout(&output).contains(&format!(
            "Deployed deploy-hello to {}",
            descriptor_path.display()
        )),
        "{}",
        stdout(&output)
    );

    let first = DescriptorText::read(&descriptor_path);
    assert_eq!(
        first.keys(),
        [
            "name",
            "artifact",
            "root",
            "deployed-at",
            "context-path",
            "virtual-host"
        ]
    );
    assert_eq!(first.get("name"), "\"deploy-hello\"");
    assert_eq!(first.get("root"), quoted(&project));
    assert_eq!(first.get("context-path"), "\"/hello\"");
    assert_eq!(first.get("virtual-host"), "[]");
    assert_eq!(
        first.settings,
        [
            ("context-path".to_string(), "\"/hello\"".to_string()),
            ("greeting".to_string(), "\"hi\"".to_string()),
        ]
    );
    let old_artifact = first.artifact(&deployments);
    let file_name = old_artifact.file_name().unwrap().to_string_lossy();
    let hash = file_name
        .strip_prefix("deploy-hello-")
        .expect("named for the app");
    assert!(
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{file_name}"
    );
    assert_eq!(run_artifact(&old_artifact), "hello\n");

    // Options win over the project's settings; a changed binary is a new artifact, and the old
    // one goes.
    write_main(&project, "hello again");
    succeed(&mut cli_in(
        &base,
        &project,
        &[
            "deploy",
            "--context-path",
            "/again",
            "--virtual-host",
            "a.example",
            "--virtual-host",
            "b.example",
        ],
    ));
    let second = DescriptorText::read(&descriptor_path);
    assert!(second.deployed_at() > first.deployed_at());
    assert_eq!(second.get("context-path"), "\"/again\"");
    assert_eq!(second.get("virtual-host"), "[\"a.example\", \"b.example\"]");
    let new_artifact = second.artifact(&deployments);
    assert_ne!(new_artifact, old_artifact);
    assert!(!old_artifact.exists(), "the unused artifact is pruned");
    assert_eq!(run_artifact(&new_artifact), "hello again\n");
    let artifacts: Vec<_> = std::fs::read_dir(deployments.join(".artifacts"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(artifacts, [new_artifact]);
}

#[test]
fn a_project_that_does_not_compile_deploys_nothing() {
    let base = Base::installed();
    let project = write_app(base.path(), "deploy-broken", "hello");
    std::fs::write(
        project.join("src").join("main.rs"),
        "fn main() { not_defined() }\n",
    )
    .unwrap();
    let error = fail(&mut cli_in(&base, &project, &["deploy"]));
    assert!(
        error.contains("not_defined"),
        "cargo's error shows: {error}"
    );
    assert!(
        error.contains("nothing was deployed: building deploy-broken failed"),
        "{error}"
    );
    assert!(!deployments(&base).join("deploy-broken.toml").exists());
    let artifacts = std::fs::read_dir(deployments(&base).join(".artifacts"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(artifacts, 0);
}

#[test]
fn undeploy_removes_deployments_by_name_or_glob() {
    let base = Base::installed();
    let project = write_app(base.path(), "undeploy-hello", "hello");
    let deployments = deployments(&base);
    succeed(&mut cli_in(&base, &project, &["deploy"]));

    // With no glob, undeploy takes the project's package name.
    let output = succeed(&mut cli_in(&base, &project, &["undeploy"]));
    let descriptor = deployments.join("undeploy-hello.toml");
    assert_eq!(
        stdout(&output).trim(),
        format!("Undeployed {}", descriptor.display())
    );
    assert!(!descriptor.exists());
    assert_eq!(
        std::fs::read_dir(deployments.join(".artifacts"))
            .unwrap()
            .count(),
        0,
        "the artifact goes with its last descriptor"
    );

    let error = fail(&mut cli_in(&base, &project, &["undeploy"]));
    assert!(
        error.contains(&format!(
            "No action taken: undeploy-hello is not deployed to {}",
            deployments.display()
        )),
        "{error}"
    );

    for name in ["undeploy-a", "undeploy-b", "other"] {
        succeed(&mut cli_in(&base, &project, &["deploy", "--name", name]));
    }
    let output = succeed(&mut cli_in(&base, base.path(), &["undeploy", "undeploy-?"]));
    let text = stdout(&output);
    for name in ["undeploy-a", "undeploy-b"] {
        assert!(
            text.contains(&format!(
                "Undeployed {}",
                deployments.join(format!("{name}.toml")).display()
            )),
            "{text}"
        );
    }
    assert!(deployments.join("other.toml").is_file());
    let other = DescriptorText::read(&deployments.join("other.toml"));
    assert_eq!(run_artifact(&other.artifact(&deployments)), "hello\n");
}

#[test]
fn an_archive_deploys_into_another_install() {
    let base = Base::installed();
    let project = write_app(base.path(), "archived-hello", "hello from the archive");
    let output = succeed(&mut cli_in(&base, &project, &["archive"]));
    let archive = apps_target_dir().join("archived-hello.ima");
    assert!(
        stdout(&output).contains(&format!("Created {}", archive.display())),
        "{}",
        stdout(&output)
    );

    let elsewhere = Base::installed();
    let archive_arg = archive.to_string_lossy().into_owned();
    let output = succeed(&mut cli_in(
        &elsewhere,
        elsewhere.path(),
        &["deploy", "--archive", &archive_arg],
    ));
    let deployments = deployments(&elsewhere);
    let descriptor_path = deployments.join("archived-hello.toml");
    assert!(
        stdout(&output).contains(&format!(
            "Deployed archived-hello to {}",
            descriptor_path.display()
        )),
        "{}",
        stdout(&output)
    );
    let descriptor = DescriptorText::read(&descriptor_path);
    assert_eq!(descriptor.get("name"), "\"archived-hello\"");
    assert_eq!(descriptor.get("root"), quoted(&archive));
    assert_eq!(descriptor.get("context-path"), "\"/hello\"");
    assert!(
        descriptor
            .settings
            .contains(&("greeting".to_string(), "\"hi\"".to_string()))
    );
    assert_eq!(
        run_artifact(&descriptor.artifact(&deployments)),
        "hello from the archive\n"
    );
}

#[test]
fn watch_redeploys_a_saved_change_and_leaves_the_app_running_after_a_broken_one() {
    let base = Base::installed();
    let project = base.new_project("watched");
    let offset = free_offset();
    let node = start_node(&base, "solo", offset, &[]);
    let watch = Proc::spawn(cli_in(&base, &project, &["watch"]));
    node.wait_for("[watched] received:", BUILD_PATIENCE);
    watch.wait_for("Watching", PATIENCE);

    // A saved change: built and deployed, the new process says so.
    let main = project.join("src").join("main.rs");
    let source = std::fs::read_to_string(&main).unwrap();
    let changed = source.replace("received: {n}", "got: {n}");
    assert_ne!(changed, source, "the seed prints `received: {{n}}`");
    std::fs::write(&main, &changed).unwrap();
    node.wait_for("[watched] got:", BUILD_PATIENCE);
    let pid = || {
        get_json_at(9990 + offset, "deployments")[0]["pid"]
            .as_u64()
            .expect("the app runs")
    };
    let running = pid();

    // A broken change: the build fails, said by watch; the app goes on as it was.
    std::fs::write(&main, format!("{changed}\nthis is not Rust\n")).unwrap();
    watch.wait_for(
        "the deployment that runs (if any) keeps running",
        BUILD_PATIENCE,
    );
    let got = |node: &Proc| {
        node.lines()
            .iter()
            .filter(|l| l.contains("[watched] got:"))
            .count()
    };
    let before = got(&node);
    eventually("the app goes on", PATIENCE, || got(&node) > before + 1);
    let said = watch.text();
    assert_eq!(pid(), running, "the same process runs:\n{said}");
    assert!(said.contains("Changed: src/main.rs"), "{said}");
}

#[test]
fn test_runs_the_apps_tests_against_a_throwaway_node_and_removes_it() {
    let base = Base::installed();
    let project = base.new_project("tested");
    let output = succeed(&mut cli_in(&base, &project, &["test"]));
    let said = stdout(&output);
    assert!(
        said.contains("test what_is_published_to_the_queue_can_be_received ... ok"),
        "the template's test ran against the node:\n{said}\n{}",
        stderr(&output)
    );
    let folder = said
        .split("against a throwaway node (")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("test says where its node is:\n{said}"));
    assert!(!Path::new(folder).exists(), "{folder} is removed");
    let port: u16 = said
        .split("management http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|port| port.parse().ok())
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the node is stopped"
    );

    // A failing test fails `test`, with cargo's word on it.
    std::fs::write(
        project.join("tests").join("fails.rs"),
        "#[test]\nfn fails() {\n    panic!(\"on purpose\");\n}\n",
    )
    .unwrap();
    let output = cli_in(&base, &project, &["test", "--", "--test", "fails"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stdout(&output).contains("on purpose"),
        "{}",
        stdout(&output)
    );
}
