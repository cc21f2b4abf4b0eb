//! Operating a cluster: `status` (tables and JSON), `logs` merging every node's log and
//! following it, and `/metrics` read by a Prometheus parser, on two real clustered nodes running
//! the seed app; then `status` after one of them is killed with kill -9. And a real Prometheus
//! (Debian's) scraping both with the README's configuration, `promtool` linting what they serve.

use std::time::Duration;

use immutant_e2e::{Base, PATIENCE, Proc, eventually, get_json_at, get_text_at, kill_9, seed_pair};

/// `cargo immutant ARGS`, which must succeed: its standard output.
fn cli_output(base: &Base, args: &[&str]) -> String {
    let output = base.cli(args).output().expect("the CLI runs");
    assert!(
        output.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn status_json(base: &Base) -> serde_json::Value {
    serde_json::from_str(&cli_output(base, &["status", "--json"])).unwrap()
}

/// The names of the nodes that answered, and the view each of them sees.
fn nodes_and_views(status: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let view = node["cluster"]["view"]
                .as_array()
                .unwrap()
                .iter()
                .map(|member| member["name"].as_str().unwrap().to_string())
                .collect();
            (node["name"].as_str().unwrap().to_string(), view)
        })
        .collect()
}

/// The samples of the node's `/metrics`, as a Prometheus parser reads them.
fn scrape(offset: u16) -> prometheus_parse::Scrape {
    let text = get_text_at(9990 + offset, "metrics");
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap_or_else(
        |error| panic!("/metrics is not Prometheus's text format ({error}):\n{text}"),
    )
}

/// The value of the series `metric` with the labels `labels` (a histogram's: its count).
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == metric
                && labels
                    .iter()
                    .all(|(name, value)| sample.labels.get(name) == Some(value))
        })
        .and_then(|sample| match &sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => Some(*value),
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            prometheus_parse::Value::Summary(_) => None,
        })
}

/// The times at the head of `[node] <time> ...` lines.
fn times(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|field| field.ends_with('Z'))
        .map(str::to_string)
        .collect()
}

#[test]
fn status_logs_and_metrics_show_a_running_cluster_and_status_drops_a_killed_node() {
    let base = Base::installed();
    let project = base.new_project("example");
    base.deploy(&project, None);
    let (offsets, one, two) = seed_pair(&base);

    // status: both nodes, the view each sees, the app on each, its singletons on one node.
    eventually("status shows both nodes seeing both", PATIENCE, || {
        let status = status_json(&base);
        let found = nodes_and_views(&status);
        found.len() == 2 && found.iter().all(|(_, view)| view == &["one", "two"])
    });
    let status = status_json(&base);
    let one_status = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["name"] == "one")
        .unwrap();
    let singletons = &one_status["singletons"];
    assert_eq!(singletons[0]["app"], "example", "{status}");
    assert_eq!(singletons[0]["node"], "one", "{status}");
    assert!(singletons[0]["epoch"].as_u64().unwrap() > 1, "{status}");
    let text = cli_output(&base, &["status"]);
    for expected in [
        "Cluster e2e-",
        "one, two",
        "example  one   running  0",
        "example  two   running  0",
        "/queue/msg",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }

    // /metrics: Prometheus's text format, the seed's messages counted as they flow.
    let before = scrape(offsets[0]);
    let published = |scrape: &prometheus_parse::Scrape| {
        sample(
            scrape,
            "immutant_messages_published_total",
            &[("queue", "/queue/msg")],
        )
        .expect("messages published to /queue/msg are counted")
    };
    assert_eq!(
        sample(&before, "immutant_cluster_view_size", &[]),
        Some(2.0)
    );
    let handovers = sample(
        &before,
        "immutant_singleton_handovers_total",
        &[("app", "example")],
    );
    assert!(
        handovers.is_some_and(|handovers| handovers >= 1.0),
        "one took the seed's singletons over: {handovers:?}"
    );
    eventually(
        "the seed's messages are counted as they flow",
        PATIENCE,
        || published(&scrape(offsets[0])) >= published(&before) + 2.0,
    );
    let after = scrape(offsets[0]);
    let commits = |scrape| sample(scrape, "immutant_journal_commit_seconds", &[]).unwrap_or(0.0);
    assert!(
        commits(&after) > commits(&before),
        "persistent messages commit the journal"
    );

    // logs: both nodes' lines, tagged and merged in time order; --node and --app filter.
    let all: Vec<String> = cli_output(&base, &["logs"])
        .lines()
        .map(str::to_string)
        .collect();
    assert!(all.iter().any(|line| line.starts_with("[one] ")));
    assert!(all.iter().any(|line| line.starts_with("[two] ")));
    let stamps = times(&all);
    assert!(
        stamps.windows(2).all(|pair| pair[0] <= pair[1]),
        "in time order"
    );
    let of_two = cli_output(&base, &["logs", "--node", "two", "--app", "example"]);
    assert!(of_two.lines().count() > 0);
    assert!(
        of_two
            .lines()
            .all(|line| line.starts_with("[two] ") && line.contains(" [example] ")),
        "{of_two}"
    );
    let unknown = base.cli(["logs", "--node", "three"]).output().unwrap();
    let error = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(
        error.contains("no node called three") && error.contains("one, two"),
        "{error}"
    );

    // logs -f: what both nodes write from now on, as they write it.
    let follow = Proc::spawn(base.cli(["logs", "-f", "--since", "1s"]));
    eventually("logs -f shows new lines of both nodes", PATIENCE, || {
        let lines = follow.stdout_lines();
        ["[one] ", "[two] "].iter().all(|node| {
            lines
                .iter()
                .any(|line| line.starts_with(node) && line.contains("[example] received:"))
        })
    });
    drop(follow);

    // status --watch: the tables again every second.
    let watch = Proc::spawn(base.cli(["status", "--watch"]));
    eventually("status --watch redraws", PATIENCE, || {
        watch.text().matches("Cluster e2e-").count() >= 2
    });
    drop(watch);

    // kill -9 of two: status shows one alone, seeing itself alone.
    kill_9(offsets[1]);
    eventually(
        "status drops the killed node",
        Duration::from_secs(10),
        || nodes_and_views(&status_json(&base)) == [("one".to_string(), vec!["one".to_string()])],
    );
    let text = cli_output(&base, &["status"]);
    assert!(!text.contains("\ntwo "), "{text}");
    drop(two);
    drop(one);
}

/// A port on loopback no one listens on now.
fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_real_prometheus_scrapes_every_member_and_promtool_finds_nothing_to_complain_about() {
    let base = Base::installed();
    let project = base.new_project("example");
    base.deploy(&project, None);
    let (offsets, one, two) = seed_pair(&base);
    let targets: Vec<String> = offsets
        .iter()
        .map(|offset| format!("'127.0.0.1:{}'", 9990 + offset))
        .collect();

    // What each node serves passes Prometheus's own linter.
    for offset in offsets {
        let text = get_text_at(9990 + offset, "metrics");
        let mut promtool = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs (Debian's prometheus package; .ci/run installs it)");
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let checked = promtool.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&checked.stdout).into_owned()
            + &String::from_utf8_lossy(&checked.stderr);
        assert!(
            checked.status.success() && said.trim().is_empty(),
            "promtool check metrics: {said}"
        );
    }

    // The scrape configuration the README gives, for these two members.
    let dir = base.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: immutant\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let port = unused_port();
    let mut command = std::process::Command::new("prometheus");
    command.args([
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ]);
    let prometheus = Proc::spawn(command);
    prometheus.wait_for("Server is ready to receive web requests", PATIENCE);
    let query = |expression: &str| -> Vec<(String, String)> {
        let answer = get_json_at(port, &format!("api/v1/query?query={expression}"));
        answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|series| {
                (
                    series["metric"]["instance"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    series["value"][1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let both = |value: &str| {
        let mut expected: Vec<(String, String)> = offsets
            .iter()
            .map(|offset| (format!("127.0.0.1:{}", 9990 + offset), value.to_string()))
            .collect();
        expected.sort();
        expected
    };
    eventually(
        "Prometheus scrapes both members (up == 1)",
        PATIENCE,
        || {
            let mut up = query("up");
            up.sort();
            up == both("1")
        },
    );
    let mut views = query("immutant_cluster_view_size");
    views.sort();
    assert_eq!(views, both("2"), "each member's view, as scraped");
    drop(prometheus);
    drop(two);
    drop(one);
}
