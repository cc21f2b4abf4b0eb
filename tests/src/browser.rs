//! A real browser for the tests of what a person looks at: Debian's headless Chromium, started
//! with a profile of its own, driven over the DevTools protocol (each page one WebSocket of
//! JSON commands, answers and events). Only what the tests use: open a page, reload it, run
//! JavaScript in it, wait until something holds there, and take a screenshot of the whole page
//! (into `target/screenshots/`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::PATIENCE;

/// Where the browser is: Debian's package (`.ci/run` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

/// What Chromium is told: headless, no sandbox (the tests may run as root), nothing
/// in the background, and timers of a page that is not in front not slowed (the console
/// polls every 500 ms).
const FLAGS: [&str; 17] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--hide-scrollbars",
    "--window-size=1400,900",
];

/// A headless Chromium, killed when dropped.
pub struct Chromium {
    process: Child,
    /// Its DevTools HTTP address: `http://127.0.0.1:PORT`.
    devtools: String,
}

impl Chromium {
    /// Starts Chromium with its profile in `profile`, on a DevTools port it picks.
    pub fn launch(profile: &Path) -> Chromium {
        Chromium::launch_with(profile, &[])
    }

    /// The same, with `extra` flags (a certificate authority to trust, host names to map).
    pub fn launch_with(profile: &Path, extra: &[String]) -> Chromium {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
        );
        let mut process = Command::new(CHROMIUM)
            .args(FLAGS)
            .args(extra)
            .arg("--remote-debugging-address=127.0.0.1")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // It says its address on stderr; the rest of stderr is read (and dropped) so that
        // Chromium never blocks on a full pipe.
        let stderr = process.stderr.take().expect("piped");
        let (tell, told) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ws://") {
                    let _ = tell.send(url.split('/').next().unwrap_or_default().to_string());
                }
            }
        });
        let Ok(address) = told.recv_timeout(PATIENCE) else {
            let _ = process.kill();
            panic!("chromium gave no DevTools address within {PATIENCE:?}");
        };
        Chromium {
            process,
            devtools: format!("http://{address}"),
        }
    }

    /// A new tab, at `url` once its page has loaded.
    pub async fn open(&self, url: &str) -> Page {
        let target = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client")
            .put(format!("{}/json/new?about:blank", self.devtools))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("chromium opens a tab")
            .text()
            .await
            .expect("chromium describes the tab");
        let target: Value = serde_json::from_str(&target).expect("the tab described in JSON");
        let socket = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no DevTools socket for the tab: {target}"));
        let (socket, _) = tokio_tungstenite::connect_async(socket)
            .await
            .expect("the tab's DevTools socket");
        let mut page = Page { socket, next_id: 0 };
        page.navigate(url).await;
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A tab of the browser.
pub struct Page {
    socket: Socket,
    next_id: u64,
}

impl Page {
    /// Goes to `url` and waits until the page has loaded.
    pub async fn navigate(&mut self, url: &str) {
        self.mark().await;
        let answer = self.command("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = answer["errorText"].as_str() {
            panic!("chromium could not open {url}: {error}");
        }
        self.loaded().await;
    }

    /// Reloads the page and waits until it has loaded again.
    pub async fn reload(&mut self) {
        self.mark().await;
        self.command("Page.reload", json!({})).await;
        self.loaded().await;
    }

    /// Marks the document now shown, so that [`Page::loaded`] knows it from the next one.
    async fn mark(&mut self) {
        self.eval("window.__immutantShown = true").await;
    }

    /// Waits until the document shown is not the marked one and has loaded. Asked again and
    /// again: while the next document replaces the marked one, an evaluation may fail.
    async fn loaded(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let asked = self
                .evaluate(
                    "window.__immutantShown === undefined && document.readyState === 'complete'",
                )
                .await;
            if asked == Ok(Value::Bool(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page did not load within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What `expression` gives on the page, as JSON (null for undefined); a JavaScript error
    /// fails the test.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.evaluate(expression)
            .await
            .unwrap_or_else(|error| panic!("{expression} failed: {error}"))
    }

    /// What `expression` gives on the page, or what went wrong.
    async fn evaluate(&mut self, expression: &str) -> Result<Value, Value> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        match answer.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(answer["result"]["value"].clone()),
        }
    }

    /// The text of the element `selector` picks ("" if none does).
    pub async fn text_of(&mut self, selector: &str) -> String {
        let selector = Value::from(selector);
        let text = self
            .eval(&format!(
                "document.querySelector({selector})?.innerText ?? ''"
            ))
            .await;
        text.as_str().unwrap_or_default().to_string()
    }

    /// A PNG of the whole page (beyond the window), written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let metrics = self.command("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let shot = self
            .command(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 },
                }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("a screenshot"))
            .expect("the screenshot is base64");
        std::fs::write(path, png).expect("the screenshot is written");
    }

    /// Sends `method` with `params` and waits for its result; an error answer fails the test.
    async fn command(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .await
            .unwrap_or_else(|error| panic!("chromium refused {method}: {error}"))
    }

    /// Sends `method` with `params` and waits for its answer (events the page sends
    /// meanwhile are passed over): its result, or the error Chromium answered.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("chromium takes the command");
        loop {
            let message = self.receive().await;
            if message["id"] == id {
                return match message.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(message["result"].clone()),
                };
            }
        }
    }

    /// The next JSON message from the page.
    async fn receive(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.socket.next()).await;
            let next = next.unwrap_or_else(|_| panic!("chromium said nothing for {PATIENCE:?}"));
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("chromium sends JSON");
                }
                Some(Ok(_)) => continue,
                other => panic!("the page's DevTools socket ended: {other:?}"),
            }
        }
    }
}

/// Waits until `expression` is true on `page`; how long that took. Fails the test, saying
/// `what` did not happen, after [`PATIENCE`].
pub async fn until(page: &mut Page, what: &str, expression: &str) -> Duration {
    let started = Instant::now();
    while page.eval(expression).await != true {
        assert!(
            started.elapsed() < PATIENCE,
            "{what} did not happen within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// A screenshot of the whole page, as `target/screenshots/<name>`.
pub async fn shoot(page: &mut Page, name: &str) {
    let dir = crate::workspace_root().join("target").join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    page.screenshot(&dir.join(name)).await;
}
