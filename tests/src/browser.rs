//! A real browser for the tests of what a person looks at: Debian's headless Chromium, started
//! with a profile of its own, driven over the DevTools protocol (each page one WebSocket of
//! JSON commands, answers and events). Only what the tests use: open a page, reload it, run
//! JavaScript in it, and take a screenshot of the whole page.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Where the browser is: Debian's package (`.ci/run` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

/// What Chromium is told besides headless: no sandbox (the tests may run as root), nothing
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
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
        );
        let mut process = Command::new(CHROMIUM)
            .args(FLAGS)
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
        let mut lines = BufReader::new(process.stderr.take().expect("piped")).lines();
        let mut said = Vec::new();
        let address = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = process.kill();
                panic!(
                    "chromium ended without a DevTools address:\n{}",
                    said.join("\n")
                );
            };
            if let Some(url) = line.strip_prefix("DevTools listening on ws://") {
                break url.split('/').next().unwrap_or_default().to_string();
            }
            said.push(line);
        };
        std::thread::spawn(move || lines.for_each(drop));
        Chromium {
            process,
            devtools: format!("http://{address}"),
        }
    }

    /// A new tab, at `url` once its page has loaded.
    pub async fn open(&self, url: &str) -> Page {
        let target = reqwest::Client::new()
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
        let mut page = Page {
            socket,
            next_id: 0,
            events: VecDeque::new(),
        };
        page.call("Page.enable", json!({})).await;
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
    /// The names of the events the page sent while a command waited for its answer.
    events: VecDeque<String>,
}

impl Page {
    /// Goes to `url` and waits until the page has loaded.
    pub async fn navigate(&mut self, url: &str) {
        self.events.clear();
        let answer = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(error) = answer["errorText"].as_str() {
            panic!("chromium could not open {url}: {error}");
        }
        self.event("Page.loadEventFired").await;
        // That event may have been the blank page's the tab opened with.
        while self
            .eval("document.readyState === 'complete' && location.href !== 'about:blank'")
            .await
            != true
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Reloads the page and waits until it has loaded again.
    pub async fn reload(&mut self) {
        self.events.clear();
        self.call("Page.reload", json!({})).await;
        self.event("Page.loadEventFired").await;
    }

    /// What `expression` gives on the page, as JSON (null for undefined); a JavaScript error
    /// fails the test.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        answer["result"]["value"].clone()
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
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let shot = self
            .call(
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

    /// Sends `method` with `params` and waits for its answer (keeping the events that come
    /// meanwhile); an error answer fails the test.
    async fn call(&mut self, method: &str, params: Value) -> Value {
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
                if let Some(error) = message.get("error") {
                    panic!("chromium refused {method}: {error}");
                }
                return message["result"].clone();
            }
            if let Some(event) = message["method"].as_str() {
                self.events.push_back(event.to_string());
            }
        }
    }

    /// Waits for the event `method` (or takes it if it came while a command waited).
    async fn event(&mut self, method: &str) {
        if let Some(at) = self.events.iter().position(|event| event == method) {
            self.events.drain(..=at);
            return;
        }
        while self.receive().await["method"] != method {}
    }

    /// The next JSON message from the page.
    async fn receive(&mut self) -> Value {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("chromium sends JSON");
                }
                Some(Ok(_)) => continue,
                other => panic!("the page's DevTools socket ended: {other:?}"),
            }
        }
    }
}
