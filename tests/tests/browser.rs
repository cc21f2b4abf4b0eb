//! The web template in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol) through a real balancer in front of two clustered nodes: reload the page five
//! times, kill -9 the node that served it, reload, and the count goes on on the other node.
//! Screenshots land in `target/screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt;
use immutant_e2e::web::{Behind, Front};
use immutant_e2e::{Base, kill_9, workspace_root};

/// Where the browser is: Debian's package (`.ci/run` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

fn screenshots() -> PathBuf {
    let dir = workspace_root().join("target").join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of the element `selector` picks on `page`.
async fn text_of(page: &chromiumoxide::Page, selector: &str) -> String {
    let element = page.find_element(selector).await.unwrap();
    element.inner_text().await.unwrap().unwrap_or_default()
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
    let front = Front::start(&base);
    let behind = Behind::start(&base, &front, Duration::from_secs(1), "/visits");
    let mcmp = front.mcmp;

    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = front.url("/visits/");
    let served = |page: &chromiumoxide::Page| {
        let page = page.clone();
        async move {
            (
                text_of(&page, "#visits").await,
                text_of(&page, "#node").await,
            )
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

    let (offset, other) = behind.offset_and_other(&node);
    kill_9(offset);
    runtime.block_on(async {
        page.reload().await.unwrap();
        let (visits, now) = served(&page).await;
        shot(&page, "visits-6-after-kill.png").await;
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
