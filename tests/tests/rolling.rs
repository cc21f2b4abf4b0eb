//! Rolling redeploys (`deploy --rolling`) on two clustered nodes: the second replaces the app
//! only once the first runs the new build (a web app: serving, with the balancer told); a new
//! build that fails on the first stops the roll and leaves the second on the build it ran.

use std::time::Duration;

use immutant_e2e::web::{Behind, Front, SteadyLoad, runtime};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered, eventually, free_offset,
    get_json_at, webprobe,
};

/// When `node` wrote its last line that `matches`: the line's time, in UTC with microseconds
/// (`2026-12-07T03:38:28.003558Z`), which orders as text.
fn last_time(node: &Proc, matches: impl Fn(&str) -> bool) -> Option<String> {
    node.lines()
        .iter()
        .rev()
        .find(|line| matches(line))
        .and_then(|line| line.split_whitespace().next())
        .filter(|at| at.len() == "2026-12-07T03:38:28.003558Z".len() && at.ends_with('Z'))
        .map(str::to_string)
}

/// How many lines of `node` say `needle`.
fn count(node: &Proc, needle: &str) -> usize {
    node.lines()
        .iter()
        .filter(|line| line.ends_with(needle))
        .count()
}

/// The status and build (`deployed_at`) of `app` on the node at `offset`.
fn build_of(offset: u16, app: &str) -> (String, u64) {
    let deployments = get_json_at(9990 + offset, "deployments");
    let report = deployments
        .as_array()
        .unwrap()
        .iter()
        .find(|deployment| deployment["name"] == app)
        .unwrap_or_else(|| panic!("no {app} in {deployments}"))
        .clone();
    (
        report["status"].as_str().unwrap().to_string(),
        report["deployed_at"].as_u64().unwrap_or_default(),
    )
}

#[test]
fn a_rolling_redeploy_replaces_one_member_at_a_time_and_a_build_that_fails_stops_it() {
    let base = Base::installed();
    let project = base.new_project("example");
    base.deploy_with(&project, &[]);
    let cluster = cluster_name();
    let offsets = [free_offset(), free_offset()];
    let one = clustered(&base, "one", offsets[0], &cluster);
    let two = clustered(&base, "two", offsets[1], &cluster);
    for node in [&one, &two] {
        node.wait_for("Cluster view: [one, two]", PATIENCE);
        node.wait_for("Deployed \"example\"", BUILD_PATIENCE);
    }

    // A new build that takes 3 s to get ready: one replaces it first; two stops its process
    // only once one's is ready.
    let main = project.join("src/main.rs");
    let source = std::fs::read_to_string(&main).unwrap();
    let slow = source.replacen(
        "let app = App::connect().await?;",
        "tokio::time::sleep(std::time::Duration::from_secs(3)).await;\n    let app = App::connect().await?;",
        1,
    );
    assert_ne!(slow, source);
    std::fs::write(&main, slow).unwrap();
    base.deploy_with(&project, &["--rolling"]);
    eventually("both run the new build", BUILD_PATIENCE, || {
        count(&one, "Deployed \"example\"") == 2 && count(&two, "Deployed \"example\"") == 2
    });
    two.wait_for("waiting until one runs the new build", PATIENCE);
    let one_ready = last_time(&one, |line| line.ends_with("Deployed \"example\"")).unwrap();
    let two_stopped = last_time(&two, |line| line.ends_with("Redeploying example")).unwrap();
    assert!(
        two_stopped >= one_ready,
        "two replaced its process before one's was ready ({two_stopped} < {one_ready})"
    );
    let (status, build) = build_of(offsets[1], "example");
    assert_eq!(
        (status.as_str(), build),
        ("running", build_of(offsets[0], "example").1)
    );

    // A build that cannot start: one tries it and fails; two keeps the build it runs.
    let broken = base.new_project("broken");
    std::fs::write(
        broken.join("src/main.rs"),
        "fn main() { eprintln!(\"broken on purpose\"); std::process::exit(3) }\n",
    )
    .unwrap();
    base.deploy_with(&broken, &["--name", "example", "--rolling"]);
    let stopped = two.wait_for(
        "The rolling redeploy of example stops before this node",
        BUILD_PATIENCE,
    );
    assert!(
        stopped.contains("one could not start the new build"),
        "{stopped}"
    );
    assert_eq!(build_of(offsets[0], "example").0, "failed");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        build_of(offsets[1], "example"),
        (status, build),
        "two is on the old build"
    );
}

#[test]
fn a_rolling_redeploy_of_a_web_app_behind_the_balancer_fails_no_request() {
    let base = Base::installed();
    base.deploy(&webprobe(), Some("steady"));
    let front = Front::start(&base);
    let behind = Behind::start(&base, &front, Duration::from_secs(1), "/steady");
    let before = [
        build_of(behind.offsets[0], "steady").1,
        build_of(behind.offsets[1], "steady").1,
    ];

    let runtime = runtime();
    let load = SteadyLoad::start(&runtime, &front.url("/steady/slow?ms=20"), 8);
    base.deploy_with(&webprobe(), &["--name", "steady", "--rolling"]);
    eventually("both nodes serve the new build", BUILD_PATIENCE, || {
        behind.offsets.iter().zip(before).all(|(offset, old)| {
            let (status, build) = build_of(*offset, "steady");
            status == "running" && build != old
        }) && count(&behind.two, "Deployed \"steady\"") == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    let (ok, failed) = load.stop(&runtime);
    assert_eq!(failed, 0, "no request failed");
    assert!(ok > 50, "the load ran");
    // two's new process started once one's was serving.
    let one_ready = last_time(&behind.one, |line| line.ends_with("Deployed \"steady\"")).unwrap();
    let two_started = last_time(&behind.two, |line| {
        line.ends_with("Redeploying steady: the new process takes requests once it is ready")
    })
    .unwrap();
    assert!(two_started >= one_ready, "{two_started} < {one_ready}");
}
