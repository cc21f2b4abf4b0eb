//! The web template in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol) through a real balancer in front of two clustered nodes: reload the page five
//! times, kill -9 the node that served it, reload, and the count goes on on the other node.
//! Screenshots land in `target/screenshots/`.

use std::path::PathBuf;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt;
use immutant_e2e::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered_with, eventually, free_offset,
    get_json_at, kill_9, workspace_root,
};

/// Where the browser is: Debian's package (`.ci/run` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

fn screenshots() -> PathBuf {
    let dir = workspace_root().join("target").join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_web_template_keeps_counting_in_a_browser_when_its_node_dies() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
    );
    let base = Base::installed();
    let project = base.new_project_from("visits", "web");
    base.deploy(&project, None);
    let (lb, one, two) = (free_offset(), free_offset(), free_offset());
    let (port, mcmp) = (8080 + lb, 9990 + lb);
    let args = [
        "balancer",
        "--port",
        &port.to_string(),
        "--mcmp-port",
        &mcmp.to_string(),
        "--no-advertise",
    ];
    let front = Proc::spawn(base.cli(args));
    front.wait_for("Immutant balancer", PATIENCE);
    let cluster = cluster_name();
    let settings = [
        format!("-Dimmutant.modcluster.proxies=127.0.0.1:{mcmp}"),
        "-Dimmutant.modcluster.status-interval=1000".to_string(),
    ];
    let _first = clustered_with(&base, "one", one, &cluster, &settings);
    let _second = clustered_with(&base, "two", two, &cluster, &settings);
    eventually(
        "both nodes serving /visits at the balancer",
        BUILD_PATIENCE,
        || {
            let status = get_json_at(mcmp, "status.json");
            status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|node| {
                    node["contexts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|c| c["path"] == "/visits" && c["state"] == "enabled")
                })
                .count()
                == 2
        },
    );

    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/visits/");
    let served = |page: &chromiumoxide::Page| {
        let page = page.clone();
        async move {
            let visits = page
                .find_element("#visits")
                .await
                .unwrap()
                .inner_text()
                .await
                .unwrap()
                .unwrap();
            let node = page
                .find_element("#node")
                .await
                .unwrap()
                .inner_text()
                .await
                .unwrap()
                .unwrap();
            (visits, node)
        }
    };
    let shot = |page: &chromiumoxide::Page, name: &'static str| {
        let page = page.clone();
        async move {
            let png = page
                .screenshot(ScreenshotParams::builder().full_page(true).build())
                .await
                .unwrap();
            std::fs::write(screenshots().join(name), png).unwrap();
        }
    };
    let (browser, handling, page, node) = runtime.block_on(async {
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .no_sandbox()
            .user_data_dir(profile.path())
            .args([
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-proxy-server",
            ])
            .build()
            .unwrap();
        let (browser, mut handler) = Browser::launch(config).await.expect("chromium starts");
        let handling = tokio::spawn(async move { while handler.next().await.is_some() {} });
        let page = browser.new_page(url.as_str()).await.unwrap();
        let (visits, node) = served(&page).await;
        assert_eq!(visits, "1");
        for n in 2..=5 {
            page.reload().await.unwrap();
            let (visits, again) = served(&page).await;
            assert_eq!(
                (visits.as_str(), again.as_str()),
                (n.to_string().as_str(), node.as_str()),
                "the session stays on {node}"
            );
        }
        shot(&page, "visits-5.png").await;
        (browser, handling, page, node)
    });

    kill_9(if node == "one" { one } else { two });
    runtime.block_on(async {
        page.reload().await.unwrap();
        let (visits, now) = served(&page).await;
        shot(&page, "visits-6-after-kill.png").await;
        let other = if node == "one" { "two" } else { "one" };
        assert_eq!(
            (visits.as_str(), now.as_str()),
            ("6", other),
            "the count goes on from 5 on the other node"
        );

        // The balancer's status page shows both nodes, the dead one unreachable.
        let status_page = format!("http://127.0.0.1:{mcmp}/");
        let status = browser.new_page(status_page.as_str()).await.unwrap();
        let rows = status.find_elements("tr.node").await.unwrap();
        assert_eq!(rows.len(), 2, "a row per node");
        let table = status.find_element("table").await.unwrap();
        let text = table.inner_text().await.unwrap().unwrap();
        assert!(text.contains("unreachable"), "{text}");
        assert!(
            text.contains("/visits") && text.contains("enabled"),
            "{text}"
        );
        shot(&status, "balancer-status.png").await;
        drop(browser);
        handling.abort();
    });
}
