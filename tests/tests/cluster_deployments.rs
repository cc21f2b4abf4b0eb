//! Cluster-wide deployments: hosts stood for by installs of their own (base dirs of their own,
//! sharing only the cluster's secret file). What is deployed through one install runs on every
//! member; what is undeployed through another stops everywhere; a member that joins later, or
//! comes back after an undeploy, catches up; two deploys of one name at once end with one
//! build everywhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, apps_target_dir, cluster_name, clustered_with,
    eventually, free_offset, get_json_at,
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
        let secret = format!("-Dimmutant.cluster.secret-file={}", secret.display());
        clustered_with(&self.base, name, self.offset, cluster, &[secret])
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

/// `cargo immutant deploy OPTIONS` of `project` through `host`'s install.
fn deploy(host: &Host, project: &Path, options: &[&str]) -> std::process::Output {
    host.base
        .cli(["deploy"])
        .args(options)
        .arg(project)
        .env("CARGO_TARGET_DIR", apps_target_dir())
        .output()
        .unwrap()
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
    let deployed = deploy(&a, &project, &[]);
    assert!(deployed.status.success(), "{deployed:?}");
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
    assert!(deploy(&a, &project, &["--local"]).status.success());
    let undeployed = a.base.cli(["undeploy", "example"]).output().unwrap();
    assert!(undeployed.status.success());

    for round in 0..3 {
        let paths = [format!("/from-a-{round}"), format!("/from-b-{round}")];
        std::thread::scope(|scope| {
            let deploys = [(&a, &paths[0]), (&b, &paths[1])].map(|(host, path)| {
                let project = &project;
                scope.spawn(move || deploy(host, project, &["--context-path", path]))
            });
            for deploy in deploys {
                let output = deploy.join().unwrap();
                assert!(output.status.success(), "{output:?}");
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
