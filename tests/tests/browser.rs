//! The web template in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol) through a real balancer in front of two clustered nodes: reload the page five
//! times, kill -9 the node that served it, reload, and the count goes on on the other node.
//! Screenshots land in `target/screenshots/`.

use std::time::{Duration, Instant};

use immutant_e2e::browser::{Chromium, Page, shoot, until};
use immutant_e2e::web::{Behind, Front};
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, get_json_at, kill_9, kill_9_pid, node_pid, probe, seed_pair,
};

/// The visit count and the node the web template's page shows.
async fn served(page: &mut Page) -> (String, String) {
    (page.text_of("#visits").await, page.text_of("#node").await)
}

/// Each node's state on the balancer's status page: route to `up`, `unreachable`...
async fn node_states(page: &mut Page) -> serde_json::Value {
    page.eval(
        "Object.fromEntries([...document.querySelectorAll('tr.node')]\
         .map(row => [row.cells[0].textContent, row.cells[2].textContent]))",
    )
    .await
}

/// How soon the balancer shows a killed node unreachable, at the latest: two health checks
/// missed, 2 s apart and given 1 s each, with room for a busy machine.
const UNREACHABLE_WITHIN: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_web_template_keeps_counting_in_a_browser_when_its_node_dies() {
    let base = Base::installed();
    let project = base.new_project_from("visits", "web");
    base.deploy(&project, None);
    let front = Front::start(&base);
    let behind = Behind::start(&base, &front, Duration::from_secs(1), "/visits");
    let mcmp = front.mcmp;

    let profile = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let url = front.url("/visits/");
    let browser = Chromium::launch(profile.path());
    let (mut page, node) = runtime.block_on(async {
        let mut page = browser.open(&url).await;
        let (visits, node) = served(&mut page).await;
        assert_eq!(visits, "1");
        for n in 2..=5 {
            page.reload().await;
            let (visits, again) = served(&mut page).await;
            assert_eq!(
                (visits.as_str(), again.as_str()),
                (n.to_string().as_str(), node.as_str()),
                "the session stays on {node}"
            );
        }
        shoot(&mut page, "visits-5.png").await;
        (page, node)
    });

    let (offset, other) = behind.offset_and_other(&node);
    kill_9(offset);
    let killed_at = Instant::now();
    runtime.block_on(async {
        page.reload().await;
        let (visits, now) = served(&mut page).await;
        shoot(&mut page, "visits-6-after-kill.png").await;
        assert_eq!(
            (visits.as_str(), now.as_str()),
            ("6", other),
            "the count goes on from 5 on the other node"
        );

        // The balancer's status page shows both nodes, the dead one unreachable: at once if
        // the request above found its connection refused, else (the node still dying took the
        // request, then reset the connection; the request went elsewhere) once the health
        // checks have missed it twice, 2 s apart. Read until then.
        let status_page = format!("http://127.0.0.1:{mcmp}/");
        let mut status = browser.open(&status_page).await;
        let killed = node.as_str();
        let states = loop {
            let states = node_states(&mut status).await;
            if states[killed] == "unreachable" || killed_at.elapsed() > PATIENCE {
                break states;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            status.reload().await;
        };
        let marked = killed_at.elapsed();
        assert_eq!(
            states,
            serde_json::json!({ killed: "unreachable", other: "up" }),
            "a row per node, the killed one unreachable; the balancer said:\n{}",
            front.proc.text()
        );
        assert!(
            marked < UNREACHABLE_WITHIN,
            "{killed} shown unreachable {marked:?} after the kill, not within {UNREACHABLE_WITHIN:?}"
        );
        let text = status.text_of("table").await;
        assert!(
            text.contains("/visits") && text.contains("enabled"),
            "{text}"
        );
        shoot(&mut status, "balancer-status.png").await;
    });
}

/// The depth the console shows for `/queue/fill`.
const FILL_DEPTH: &str =
    r#"Number(document.querySelector('[data-queue="/queue/fill"] .depth')?.textContent ?? -1)"#;

#[test]
fn the_console_shows_the_cluster_live_redeploys_and_loses_a_killed_node() {
    let base = Base::installed();
    let project = base.new_project("example");
    base.deploy(&project, None);
    base.deploy(&probe(), Some("filler"));
    let (offsets, one, two) = seed_pair(&base);
    for node in [&one, &two] {
        node.wait_for("[filler] filled:", BUILD_PATIENCE);
    }
    // `cargo immutant console` gives the address, the token in its fragment.
    let output = base.cli(["console", "--node", "one"]).output().unwrap();
    let said = String::from_utf8(output.stdout).unwrap();
    let url = said
        .trim()
        .strip_prefix("one: ")
        .unwrap_or_else(|| panic!("console said: {said}"))
        .to_string();
    assert!(url.contains("/console#token="), "{url}");
    let filler_pid = || {
        let deployments = get_json_at(9990 + offsets[0], "deployments");
        deployments
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "filler")
            .and_then(|d| d["pid"].as_u64())
    };
    let pid_before = filler_pid().expect("filler runs on one");
    let two_pid = node_pid(offsets[1]);

    let profile = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let browser = Chromium::launch(profile.path());
    runtime.block_on(async {
        let mut page = browser.open(&url).await;
        let page = &mut page;
        until(
            page,
            "the console shows both nodes and the seed app running",
            "document.querySelector('[data-node=one]') !== null \
             && document.querySelector('[data-node=two]') !== null \
             && document.querySelector('[data-app=example]')?.textContent.includes('running')",
        )
        .await;
        let location = page.eval("location.href").await;
        assert!(
            !location.as_str().unwrap().contains("token"),
            "the token leaves the address bar: {location}"
        );

        // Live: the depth of the queue nobody reads grows as the filler publishes.
        until(
            page,
            "the console shows /queue/fill",
            &format!("{FILL_DEPTH} >= 0"),
        )
        .await;
        let depth = page.eval(FILL_DEPTH).await.as_f64().unwrap();
        until(
            page,
            "the depth of /queue/fill moves",
            &format!("{FILL_DEPTH} >= {}", depth + 5.0),
        )
        .await;
        shoot(page, "console-cluster.png").await;

        // Redeploy: the filler's process is replaced on the node.
        // Clicked from the page itself: the table is drawn anew twice a second.
        page.eval(
            "document.querySelector('[data-app=filler] button.redeploy').click()",
        )
        .await;
        until(
            page,
            "the console says it redeploys",
            "document.getElementById('message').textContent.includes('Redeploying filler')",
        )
        .await;
        until(
            page,
            "the filler runs in a new process",
            &format!(
                "(document.querySelector('[data-app=filler]')?.children[3].textContent ?? '{pid_before}') !== '{pid_before}'"
            ),
        )
        .await;

        // Undeploy, clicked twice (the first click only arms it): gone from every node.
        for _ in 0..2 {
            page.eval("document.querySelector('[data-app=filler] button.undeploy').click()")
                .await;
        }
        until(
            page,
            "the undeployed filler leaves the console",
            "document.querySelector('[data-app=filler]') === null \
             && document.getElementById('message').textContent.includes('Undeployed filler')",
        )
        .await;

        // kill -9 of two: gone from the console within 2 s.
        kill_9_pid(two_pid);
        let gone = until(
            page,
            "the killed node leaves the console",
            "document.querySelector('[data-node=two]') === null",
        )
        .await;
        shoot(page, "console-after-kill.png").await;
        assert!(
            gone < Duration::from_secs(2),
            "two left the console after {gone:?}"
        );
    });
    drop(browser);
    assert_eq!(filler_pid(), None, "the filler is undeployed");
    assert!(!base.path().join("current/deployments/filler.toml").exists());
    drop((one, two));
}
