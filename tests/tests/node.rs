//! A standalone node started with `cargo immutant run`: ports, data dir, properties, signals.

use std::time::Duration;

use immutant_e2e::{Base, PATIENCE, Proc, free_offset, get_json};

/// The boot line every node logs once it is ready.
const BOOTED: &str = "started in";

#[test]
fn two_nodes_at_offsets_0_and_100_run_side_by_side() {
    let base = Base::installed();
    let one = base.run([
        "--node-name",
        "one",
        &format!("-Djboss.server.data.dir={}", base.data_dir("one").display()),
    ]);
    let two = base.run([
        "-Djboss.node.name=two".to_string(),
        format!("-Djboss.server.data.dir={}", base.data_dir("two").display()),
        "-Djboss.socket.binding.port-offset=100".to_string(),
    ]);
    one.wait_for(BOOTED, PATIENCE);
    two.wait_for(BOOTED, PATIENCE);

    let first = get_json(9990);
    let second = get_json(10090);
    assert_eq!(first["name"], "one");
    assert_eq!(second["name"], "two");
    assert_eq!(second["ports"]["http"], 8180);
    assert_eq!(second["ports"]["management"], 10090);
    assert_eq!(
        second["data_dir"],
        base.data_dir("two").display().to_string()
    );
    assert_eq!(first["config"], "standalone.toml");
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_boot_line_says_what_the_node_is() {
    let base = Base::installed();
    let offset = free_offset();
    let data = base.data_dir("boot");
    let node = base.run([
        format!("--offset={offset}"),
        "-n".into(),
        "boot".into(),
        format!("-Djboss.server.data.dir={}", data.display()),
    ]);
    let line = node.wait_for(BOOTED, PATIENCE);
    for part in [
        "Immutant 0.1.0".to_string(),
        "node boot".to_string(),
        "config standalone.toml".to_string(),
        format!("http http://127.0.0.1:{}", 8080 + offset),
        format!("management http://127.0.0.1:{}", 9990 + offset),
        format!("data {}", data.display()),
    ] {
        assert!(line.contains(&part), "the boot line lacks {part:?}: {line}");
    }
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused_and_names_the_first() {
    let base = Base::installed();
    let data = format!(
        "-Djboss.server.data.dir={}",
        base.data_dir("shared").display()
    );
    let offset = free_offset();
    let first = base.run([
        "-n".into(),
        "first".into(),
        format!("--offset={offset}"),
        data.clone(),
    ]);
    first.wait_for(BOOTED, PATIENCE);
    let first_pid = get_json(9990 + offset)["pid"].as_u64().unwrap();
    let mut second = base.run([
        "-n".into(),
        "second".into(),
        format!("--offset={}", free_offset()),
        data,
    ]);
    assert!(!second.wait_exit(PATIENCE).success());
    let error = second.wait_for("in use by", PATIENCE);
    assert!(
        error.contains(&format!("node 'first' (pid {first_pid})")),
        "{error}"
    );
    assert!(error.contains("-Djboss.server.data.dir"), "{error}");
}

#[test]
fn a_port_in_use_is_named_and_the_offset_property_suggested() {
    let base = Base::installed();
    let offset = free_offset();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", 9990 + offset)).unwrap();
    let mut node = base.run([
        format!("--offset={offset}"),
        format!(
            "-Djboss.server.data.dir={}",
            base.data_dir("clash").display()
        ),
    ]);
    assert!(!node.wait_exit(PATIENCE).success());
    let error = node.wait_for("already in use", PATIENCE);
    assert!(
        error.contains(&format!("127.0.0.1:{}", 9990 + offset)),
        "{error}"
    );
    assert!(
        error.contains("-Djboss.socket.binding.port-offset"),
        "{error}"
    );
}

#[test]
fn bad_values_are_errors_naming_the_property_and_the_value() {
    let base = Base::installed();
    for (argument, expected) in [
        (
            "-Djboss.socket.binding.port-offset=abc",
            "invalid value 'abc' for property jboss.socket.binding.port-offset",
        ),
        (
            "-Djboss.socket.binding.port-offset=60000",
            "jboss.socket.binding.port-offset=60000 pushes the management port 9990 past 65535",
        ),
        (
            "-Djboss.bind.address=not-an-address",
            "invalid value 'not-an-address' for property jboss.bind.address",
        ),
    ] {
        let mut node = base.run([argument]);
        let status = node.wait_exit(PATIENCE);
        assert!(!status.success(), "{argument} was accepted");
        node.wait_for(expected, PATIENCE);
    }
}

#[test]
fn an_unknown_property_gets_a_warning_with_the_nearest_known_name() {
    let base = Base::installed();
    let node = base.run([
        format!("--offset={}", free_offset()),
        format!(
            "-Djboss.server.data.dir={}",
            base.data_dir("typo").display()
        ),
        "-Djboss.nod.name=typo".into(),
    ]);
    node.wait_for(
        "unknown property jboss.nod.name; did you mean jboss.node.name?",
        PATIENCE,
    );
    node.wait_for(BOOTED, PATIENCE);
}

#[test]
fn an_argument_with_spaces_reaches_the_server_whole() {
    let base = Base::installed();
    let offset = free_offset();
    let node = base.run([
        format!("--offset={offset}"),
        format!(
            "-Djboss.server.data.dir={}",
            base.data_dir("spaces").display()
        ),
        "-Dapp.greeting=hello big world".into(),
    ]);
    node.wait_for(BOOTED, PATIENCE);
    assert_eq!(
        get_json(9990 + offset)["properties"]["app.greeting"],
        "hello big world"
    );
}

#[test]
fn ctrl_c_stops_the_node_gracefully_with_exit_code_0() {
    let base = Base::installed();
    let offset = free_offset();
    let mut node = base.run(base.node_args("calm", offset));
    node.wait_for(BOOTED, PATIENCE);
    node.signal(libc::SIGINT);
    let status = node.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "{}", node.text());
    node.wait_for("Stopping node calm (SIGINT)", Duration::ZERO);
    node.wait_for("Node calm stopped", Duration::ZERO);
    // The ports and the data dir are free again at once.
    let mut again = base.run(base.node_args("calm", offset));
    again.wait_for(BOOTED, PATIENCE);
    again.signal(libc::SIGTERM);
    assert_eq!(
        again.wait_exit(PATIENCE).code(),
        Some(0),
        "{}",
        again.text()
    );
    again.wait_for("Stopping node calm (SIGTERM)", Duration::ZERO);
}

#[test]
fn a_node_killed_with_sigkill_leaves_no_lock_behind() {
    let base = Base::installed();
    let data = format!(
        "-Djboss.server.data.dir={}",
        base.data_dir("phoenix").display()
    );
    let offset = free_offset();
    let first = base.run([format!("--offset={offset}"), data.clone()]);
    first.wait_for(BOOTED, PATIENCE);
    let server_pid = get_json(9990 + offset)["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(server_pid, libc::SIGKILL) };
    let restarted = base.run([format!("--offset={}", free_offset()), data]);
    restarted.wait_for(BOOTED, PATIENCE);
}

#[test]
fn run_prints_the_exact_first_line() {
    let base = Base::installed();
    let offset = free_offset();
    let data = base.data_dir("first");
    let node = base.run([
        "--clustered".to_string(),
        "--offset".into(),
        offset.to_string(),
        "--node-name=first".into(),
        format!("-Djboss.server.data.dir={}", data.display()),
        "-Dapp.motto=stay calm".into(),
    ]);
    node.wait_for(BOOTED, PATIENCE);
    let server = base.path().join("current/bin/immutant-server");
    assert_eq!(
        node.stdout_lines()[0],
        format!(
            "Starting Immutant: {} --server-config=standalone-ha.toml -Djboss.socket.binding.port-offset={offset} \
             -Djboss.node.name=first -Djboss.server.data.dir={} '-Dapp.motto=stay calm'",
            server.display(),
            data.display()
        )
    );
    node.wait_for("config standalone-ha.toml", Duration::ZERO);
}

#[test]
fn run_says_what_it_runs_before_anything_else() {
    let base = Base::installed();
    let offset = free_offset();
    let data = base.data_dir("sayer");
    let cli = base.cli([
        "run".to_string(),
        "--offset".into(),
        offset.to_string(),
        format!("-Djboss.server.data.dir={}", data.display()),
    ]);
    // One pipe for both streams, so that the lines come in the order they were written.
    let mut merged = std::process::Command::new("sh");
    merged
        .args(["-c", "exec \"$@\" 2>&1", "sh"])
        .arg(cli.get_program())
        .args(cli.get_args());
    for (name, value) in cli.get_envs() {
        match value {
            Some(value) => merged.env(name, value),
            None => merged.env_remove(name),
        };
    }
    let node = Proc::spawn(merged);
    node.wait_for(BOOTED, PATIENCE);
    let lines = node.stdout_lines();
    assert!(lines[0].starts_with("Starting Immutant: "), "{lines:#?}");
    assert!(
        lines[1..]
            .iter()
            .any(|line| line.starts_with("Using Immutant base dir from $IMMUTANT_BASE_DIR")),
        "the base dir is still said, after: {lines:#?}"
    );
}

#[test]
fn run_help_prints_the_servers_help() {
    let base = Base::installed();
    let mut help = base.run(["--help"]);
    assert!(help.wait_exit(PATIENCE).success(), "{}", help.text());
    let text = help.text();
    for expected in [
        "Usage: immutant-server",
        "--server-config",
        "-b <ADDRESS>",
        "jboss.socket.binding.port-offset",
        "jboss.socket.binding.port-offset (default: 0)",
    ] {
        assert!(
            text.contains(expected),
            "the help lacks {expected:?}:\n{text}"
        );
    }
}
