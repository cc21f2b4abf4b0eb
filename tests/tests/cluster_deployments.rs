//! Cluster-wide deployments: hosts stood for by installs of their own (base dirs of their own,
//! sharing only the cluster's secret file). What is deployed through one install runs on every
//! member; what is undeployed through another stops everywhere; a member that joins later, or
//! comes back after an undeploy, catches up; two deploys of one name at once end with one
//! build everywhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use immutant_e2e::browser::{Chromium, shoot, until};
use immutant_e2e::nats::{NatsCluster, Release};
use immutant_e2e::netns::Lan;
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered_with, eventually, free_offset,
    get_json_at, kill_9_pid, node_pid,
};

/// A secret file the installs share, private to this user, in `dir`.
fn secret_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("cluster-secret");
    std::fs::write(&path, format!("shared-{}\n", cluster_name())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// One host: an install, and the node it runs in the cluster.
struct Host {
    base: Base,
    offset: u16,
}

impl Host {
    fn new() -> Host {
        Host {
            base: Base::installed(),
            offset: free_offset(),
        }
    }

    /// Starts its node `name` in `cluster`, with the shared `secret`.
    fn start(&self, name: &str, cluster: &str, secret: &Path) -> Proc {
        self.start_with(name, cluster, secret, &[])
    }

    /// Starts its node `name` in `cluster`, with the shared `secret` and `extra` arguments.
    fn start_with(&self, name: &str, cluster: &str, secret: &Path, extra: &[String]) -> Proc {
        let mut args = vec![format!(
            "-Dimmutant.cluster.secret-file={}",
            secret.display()
        )];
        args.extend_from_slice(extra);
        clustered_with(&self.base, name, self.offset, cluster, &args)
    }

    fn deployments(&self) -> PathBuf {
        self.base.path().join("current").join("deployments")
    }

    /// The descriptor of `app` in this install's folder, if there is one.
    fn descriptor(&self, app: &str) -> Option<String> {
        std::fs::read_to_string(self.deployments().join(format!("{app}.toml"))).ok()
    }

    /// What the node says of `app`'s status (none if it has no such deployment).
    fn status(&self, app: &str) -> Option<String> {
        let deployments = get_json_at(9990 + self.offset, "deployments");
        deployments
            .as_array()?
            .iter()
            .find(|deployment| deployment["name"] == app)
            .map(|deployment| {
                deployment["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
    }

    fn runs(&self, app: &str) -> bool {
        self.status(app).as_deref() == Some("running")
    }
}

#[test]
fn a_deploy_through_one_install_runs_on_every_member_and_an_undeploy_through_another_stops_it() {
    let shared = tempfile::tempdir().unwrap();
    let secret = secret_file(shared.path());
    let cluster = cluster_name();
    let (a, b, c) = (Host::new(), Host::new(), Host::new());
    let node_a = a.start("host-a", &cluster, &secret);
    let node_b = b.start("host-b", &cluster, &secret);
    for node in [&node_a, &node_b] {
        node.wait_for("Cluster view: [host-a, host-b]", PATIENCE);
    }

    // Deployed through a's install alone: b's node runs it too, from the same artifact.
    let project = a.base.new_project("example");
    a.base.deploy_with(&project, &[]);
    node_b.wait_for(
        "example was deployed to the cluster by host-a",
        BUILD_PATIENCE,
    );
    eventually("both members run example", BUILD_PATIENCE, || {
        a.runs("example") && b.runs("example")
    });
    assert_eq!(a.descriptor("example"), b.descriptor("example"));
    let artifact = |host: &Host| {
        let text = host.descriptor("example").unwrap();
        let line = text.lines().find(|l| l.starts_with("artifact")).unwrap();
        let file = line.split('"').nth(1).unwrap().to_string();
        std::fs::read(host.deployments().join(file)).unwrap()
    };
    assert!(
        artifact(&a) == artifact(&b),
        "b's artifact is a's, byte for byte"
    );

    // A member from a fresh install that joins later runs it.
    let mut node_c = c.start("host-c", &cluster, &secret);
    eventually(
        "the member that joined later runs example",
        BUILD_PATIENCE,
        || c.runs("example"),
    );
    assert_eq!(c.descriptor("example"), a.descriptor("example"));

    // c goes down; example is undeployed through b's install: it stops on a and b.
    node_c.signal(libc::SIGTERM);
    node_c.wait_exit(PATIENCE);
    let undeployed = b.base.cli(["undeploy", "example"]).output().unwrap();
    assert!(undeployed.status.success(), "{undeployed:?}");
    node_a.wait_for("example was undeployed from the cluster", PATIENCE);
    eventually("example stops on a and b", PATIENCE, || {
        a.status("example").is_none() && b.status("example").is_none()
    });
    assert_eq!(a.descriptor("example"), None);

    // c comes back: it does not run what was undeployed while it was down.
    let node_c = c.start("host-c", &cluster, &secret);
    node_c.wait_for("example was undeployed from the cluster", PATIENCE);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.descriptor("example"), None);
    assert!(c.status("example").is_none(), "{:?}", c.status("example"));
    assert!(
        !node_c.text().contains("[example] received"),
        "c ran what was undeployed while it was down:\n{}",
        node_c.text()
    );
}

#[test]
fn two_deploys_of_one_name_at_once_from_two_installs_end_on_one_build_everywhere() {
    let shared = tempfile::tempdir().unwrap();
    let secret = secret_file(shared.path());
    let cluster = cluster_name();
    let (a, b) = (Host::new(), Host::new());
    let node_a = a.start("race-a", &cluster, &secret);
    let node_b = b.start("race-b", &cluster, &secret);
    for node in [&node_a, &node_b] {
        node.wait_for("Cluster view: [race-a, race-b]", PATIENCE);
    }
    let project = a.base.new_project("example");
    // Built once before the race, so both deploys only copy and write.
    a.base.deploy_with(&project, &["--local"]);
    let undeployed = a.base.cli(["undeploy", "example"]).output().unwrap();
    assert!(undeployed.status.success());

    for round in 0..3 {
        let paths = [format!("/from-a-{round}"), format!("/from-b-{round}")];
        std::thread::scope(|scope| {
            let deploys = [(&a, &paths[0]), (&b, &paths[1])].map(|(host, path)| {
                let project = &project;
                scope.spawn(move || host.base.deploy_with(project, &["--context-path", path]))
            });
            for deploy in deploys {
                deploy.join().unwrap();
            }
        });
        eventually(
            "both installs hold the same deployment",
            BUILD_PATIENCE,
            || {
                let (ours, theirs) = (a.descriptor("example"), b.descriptor("example"));
                ours.is_some() && ours == theirs
            },
        );
        // And it stays so: neither goes back.
        std::thread::sleep(Duration::from_secs(2));
        let text = a.descriptor("example").unwrap();
        assert_eq!(
            b.descriptor("example").as_ref(),
            Some(&text),
            "round {round}"
        );
        assert!(
            paths
                .iter()
                .any(|path| text.contains(&format!("context-path = \"{path}\""))),
            "{text}"
        );
    }
    eventually("both members run the last build", BUILD_PATIENCE, || {
        a.runs("example") && b.runs("example")
    });
}

/// The size of the partial files in `deployments/.incoming/`.
fn arriving(deployments: &Path) -> u64 {
    std::fs::read_dir(deployments.join(".incoming"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".part"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// The artifact files in `deployments/.artifacts/`, and their contents.
fn artifacts(deployments: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found: Vec<_> = std::fs::read_dir(deployments.join(".artifacts"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap_or_default())
        })
        .collect();
    found.sort();
    found
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root to make network namespaces")]
fn a_transfer_cut_off_by_kill_9_never_runs_a_partial_file_and_ends_from_another_member() {
    let lan = Lan::make(3);
    let shared = tempfile::tempdir().unwrap();
    let secret = secret_file(shared.path());
    let secret = vec![format!(
        "-Dimmutant.cluster.secret-file={}",
        secret.display()
    )];
    let cluster = cluster_name();
    let installs = [Base::installed(), Base::installed(), Base::installed()];
    let deployments = |i: usize| installs[i].path().join("current").join("deployments");
    let _a = lan.node(&installs[0], 0, ("far-a", &cluster), &secret);
    let b = lan.node(&installs[1], 1, ("far-b", &cluster), &secret);
    b.wait_for("Cluster view: [far-a, far-b]", PATIENCE);
    let project = installs[0].new_project("example");
    installs[0].deploy_with(&project, &[]);
    b.wait_for(
        "example was deployed to the cluster by far-a",
        BUILD_PATIENCE,
    );
    let whole = artifacts(&deployments(0));
    assert_eq!(artifacts(&deployments(1)), whole);

    // far-a and far-b now send at 1 Mbit/s: the artifact (some 2 MB) takes seconds to reach
    // far-c, from whichever of them it asks first (far-a recorded it; far-b may be the one
    // far-c sees first).
    let tc = |host: usize, change: &[&str]| {
        let done = std::process::Command::new("ip")
            .args(["netns", "exec", lan.namespace(host), "tc", "qdisc"])
            .args(change)
            .status()
            .unwrap();
        assert!(done.success(), "tc qdisc {change:?} on host {host}");
    };
    let slow = [
        "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "32kbit",
    ];
    for host in [0, 1] {
        tc(host, &[&slow[..], &["latency", "2s"]].concat());
    }
    let c = lan.node(&installs[2], 2, ("far-c", &cluster), &secret);
    let deadline = std::time::Instant::now() + PATIENCE;
    while arriving(&deployments(2)) <= 200_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "no part of the artifact reached far-c within {PATIENCE:?}:\n{}",
            c.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let part = arriving(&deployments(2));
    let size = whole[0].1.len() as u64;
    assert!(
        part < size,
        "the whole artifact came before its sender was killed"
    );
    assert!(artifacts(&deployments(2)).is_empty());
    // The one it takes it from is killed; the other sends at full speed again.
    let first = c.wait_for("fetching the artifact", PATIENCE);
    let (sender, other) = match first.contains("from far-a ") {
        true => (0, ("far-b", 1)),
        false => (1, ("far-a", 0)),
    };
    kill_9_pid(lan.within(sender, || node_pid(0)));
    tc(other.1, &["del", "dev", "eth0", "root"]);

    // far-c takes the rest from the other, and only a whole, verified file takes its place.
    let mut seen = Vec::new();
    eventually("far-c runs example", BUILD_PATIENCE, || {
        let now = artifacts(&deployments(2));
        if !now.is_empty() {
            seen = now;
        }
        c.text().contains("[example] received")
    });
    assert_eq!(
        seen, whole,
        "far-c's artifact is the one deployed, byte for byte"
    );
    let resumed = c.wait_for(&format!("from {} (from byte", other.0), PATIENCE);
    let from: u64 = resumed
        .split("(from byte ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap();
    assert!(from > 0, "far-c went on where it stopped: {resumed}");
    assert_eq!(artifacts(&deployments(2)), whole);
    assert_eq!(arriving(&deployments(2)), 0, "nothing left half way");
}

#[test]
fn status_and_the_console_through_one_install_show_the_apps_and_queues_of_another_installs_member()
{
    let shared = tempfile::tempdir().unwrap();
    let secret = secret_file(shared.path());
    let cluster = cluster_name();
    let (a, b) = (Host::new(), Host::new());
    let node_a = a.start("seen-a", &cluster, &secret);
    let node_b = b.start("seen-b", &cluster, &secret);
    for node in [&node_a, &node_b] {
        node.wait_for("Cluster view: [seen-a, seen-b]", PATIENCE);
    }
    // Kept to a's install: only seen-a runs it, so what b shows of it is seen-a's.
    let project = a.base.new_project("example");
    a.base.deploy_with(&project, &["--local"]);
    node_a.wait_for("[example] received:", BUILD_PATIENCE);
    assert_eq!(b.status("example"), None);

    // `status` through b's install details seen-a, whose management API b has no token for.
    let output = b.base.cli(["status", "--json"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let seen_a = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["name"] == "seen-a")
        .unwrap_or_else(|| panic!("no seen-a in {status:#}"));
    let apps = seen_a["deployments"].as_array().unwrap();
    assert!(
        apps.iter()
            .any(|app| app["name"] == "example" && app["status"] == "running"),
        "{seen_a:#}"
    );
    let queues = seen_a["queues"].as_array().unwrap();
    assert!(
        queues.iter().any(|queue| queue["name"] == "/queue/msg"),
        "{seen_a:#}"
    );
    let text = b.base.cli(["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("seen-a") && text.contains("example"),
        "{text}"
    );

    // So do `logs`: seen-a's lines are there, tagged with its name, alone with --node.
    let logs = b.base.cli(["logs", "--app", "example"]).output().unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert!(
        logs.contains("[seen-a] ") && logs.contains("[example] received:"),
        "{logs}"
    );
    let only = b.base.cli(["logs", "--node", "seen-a"]).output().unwrap();
    assert!(only.status.success(), "{only:?}");
    let only = String::from_utf8_lossy(&only.stdout).into_owned();
    assert!(
        only.lines().all(|line| line.starts_with("[seen-a] ")),
        "{only}"
    );
    assert!(only.contains("node seen-a started in"), "{only}");
    // And -f goes on with what seen-a writes next.
    let follow = Proc::spawn(b.base.cli(["logs", "-f", "--node", "seen-a"]));
    follow.wait_for("[example] received:", PATIENCE);
    let received = || {
        follow
            .stdout_lines()
            .iter()
            .filter(|l| l.contains("received:"))
            .count()
    };
    let before = received();
    eventually("logs -f shows seen-a's new lines", PATIENCE, || {
        received() >= before + 2
    });
    drop(follow);

    // The console of seen-b lists seen-a's apps and queues.
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let browser = Chromium::launch(profile.path());
    runtime.block_on(async {
        let url = format!("http://127.0.0.1:{}/console", 9990 + b.offset);
        let mut page = browser.open(&url).await;
        until(
            &mut page,
            "seen-b's console shows seen-a's example and /queue/msg",
            "(document.querySelector('[data-member=\"seen-a\"] .member-apps')?.textContent ?? '').includes('example: running') \
             && (document.querySelector('[data-member=\"seen-a\"] .member-queues')?.textContent ?? '').includes('/queue/msg')",
        )
        .await;
        shoot(&mut page, "console-other-member.png").await;
    });
    // Only what reads is asked of a member: nothing that changes it, nor its metrics.
    for path in [
        "members/seen-a/metrics",
        "members/seen-a/deployments%2Fexample%2Fundeploy",
        "members/seen-a/log%3Ftail=10",
    ] {
        let refused = immutant_e2e::get_text_at(9990 + b.offset, path);
        assert!(refused.contains("can be asked"), "{path}: {refused}");
    }
    // A member's log only with the token, which `logs` gave above.
    let log = immutant_e2e::get_text_at(9990 + b.offset, "members/seen-a/log");
    assert!(log.contains("management token"), "{log}");
    assert_eq!(a.status("example").as_deref(), Some("running"));
}

#[test]
fn on_nats_a_deploy_through_one_install_runs_on_a_member_of_another_from_the_object_store() {
    let nats = NatsCluster::start(1, Release::Debian);
    let shared = tempfile::tempdir().unwrap();
    let secret = secret_file(shared.path());
    let cluster = cluster_name();
    let (a, b) = (Host::new(), Host::new());
    let node_a = a.start_with("jet-a", &cluster, &secret, &nats.engine_args());
    let node_b = b.start_with("jet-b", &cluster, &secret, &nats.engine_args());
    for node in [&node_a, &node_b] {
        node.wait_for("Cluster view: [jet-a, jet-b]", PATIENCE);
    }
    let project = a.base.new_project("example");
    a.base.deploy_with(&project, &[]);
    node_b.wait_for(
        "example was deployed to the cluster by jet-a",
        BUILD_PATIENCE,
    );
    eventually("both members run example", BUILD_PATIENCE, || {
        a.runs("example") && b.runs("example")
    });
    assert_eq!(artifacts(&a.deployments()), artifacts(&b.deployments()));

    // b asks a through NATS.
    let asked = get_json_at(9990 + b.offset, "members/jet-a/deployments");
    assert!(
        asked
            .as_array()
            .unwrap()
            .iter()
            .any(|app| app["name"] == "example"),
        "{asked}"
    );
    let undeployed = b.base.cli(["undeploy", "example"]).output().unwrap();
    assert!(undeployed.status.success(), "{undeployed:?}");
    node_a.wait_for("example was undeployed from the cluster", PATIENCE);
}
