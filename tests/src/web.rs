//! What the web tests share: an HTTP client and its runtime, a visit that keeps the session
//! cookie, a steady load of clients that counts what failed, and a balancer with two clustered
//! nodes behind it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::tls::Issued;
use crate::{
    BUILD_PATIENCE, Base, PATIENCE, Proc, cluster_name, clustered_with, eventually, free_offset,
};

/// A runtime for the tests' async clients.
pub fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A client that goes straight to 127.0.0.1, whatever proxy the environment names.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `GET url` with the session cookie `cookie` (`name=value`, if any), which must answer 200:
/// the body, and the session cookie the response set (if it set one), whole, with its
/// attributes.
pub async fn visit(url: &str, cookie: Option<&str>) -> (String, Option<String>) {
    let mut request = client().get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    let set = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("JSESSIONID="))
        .map(str::to_string);
    (response.text().await.unwrap(), set)
}

/// The `name=value` part of a Set-Cookie.
pub fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// Clients asking one URL again and again until stopped, each answer's body (the webprobe's
/// `/slow` answers its process id) kept, and every request that did not answer 200 counted.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    bodies: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SteadyLoad {
    /// `clients` clients asking `url` on `runtime`, started once one answered.
    pub fn start(runtime: &tokio::runtime::Runtime, url: &str, clients: usize) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let bodies = Arc::new(Mutex::new(HashSet::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (bodies, url) = (bodies.clone(), url.to_string());
                runtime.spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(response) if response.status() == 200 => {
                                let body = response.text().await.unwrap_or_default();
                                bodies.lock().unwrap().insert(body);
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(response) => {
                                eprintln!("failed: {}", response.status());
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(error) => {
                                eprintln!("failed: {error}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        let load = SteadyLoad {
            stop,
            ok,
            failed,
            bodies,
            tasks,
        };
        eventually("the load going", PATIENCE, || load.answered() > 0);
        load
    }

    /// How many requests answered 200 so far.
    pub fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// How many different bodies the answers had.
    pub fn bodies(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    /// Stops the clients (each finishes its request); how many answered, and how many failed.
    pub fn stop(self, runtime: &tokio::runtime::Runtime) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            runtime.block_on(task).unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A balancer of a base's install (`cargo immutant balancer`), on ports of its own.
pub struct Front {
    pub proc: Proc,
    /// Where clients send requests.
    pub port: u16,
    /// Where nodes send MCMP, and the status page is.
    pub mcmp: u16,
    /// Where clients send requests over HTTPS, if it serves it.
    pub tls: Option<u16>,
}

impl Front {
    /// Starts one that does not advertise (tests run side by side).
    pub fn start(base: &Base) -> Front {
        let offset = free_offset();
        Front::start_at(base, 8080 + offset, 9990 + offset, false)
    }

    /// Starts one at `port` and `mcmp`, advertising or not.
    pub fn start_at(base: &Base, port: u16, mcmp: u16, advertise: bool) -> Front {
        let quiet = (!advertise).then_some("--no-advertise");
        Front::start_with(
            base,
            port,
            mcmp,
            None,
            quiet.iter().map(|flag| flag.to_string()),
        )
    }

    /// Starts one that does not advertise and also serves HTTPS (at 8443 plus its offset)
    /// with `certificates` (the first for every host name the others are not for), and
    /// `extra` flags.
    pub fn start_https(base: &Base, certificates: &[&Issued], extra: &[&str]) -> Front {
        let offset = free_offset();
        let tls = 8443 + offset;
        let mut args = vec!["--no-advertise".to_string()];
        args.extend(["--tls-port".to_string(), tls.to_string()]);
        for issued in certificates {
            args.extend(["--cert".to_string(), issued.cert.display().to_string()]);
            args.extend(["--key".to_string(), issued.key.display().to_string()]);
        }
        args.extend(extra.iter().map(|flag| flag.to_string()));
        Front::start_with(base, 8080 + offset, 9990 + offset, Some(tls), args)
    }

    fn start_with(
        base: &Base,
        port: u16,
        mcmp: u16,
        tls: Option<u16>,
        flags: impl IntoIterator<Item = String>,
    ) -> Front {
        let mut args = vec![
            "balancer".to_string(),
            "--port".to_string(),
            port.to_string(),
        ];
        args.extend(["--mcmp-port".to_string(), mcmp.to_string()]);
        args.extend(flags);
        let proc = Proc::spawn(base.cli(args));
        proc.wait_for("Immutant balancer", PATIENCE);
        Front {
            proc,
            port,
            mcmp,
            tls,
        }
    }

    /// What it knows, from its status page.
    pub fn status(&self) -> serde_json::Value {
        crate::get_json_at(self.mcmp, "status.json")
    }

    /// The routes of the nodes that have `context` enabled, in order.
    pub fn enabled(&self, context: &str) -> Vec<String> {
        let status = self.status();
        let mut routes: Vec<String> = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|node| {
                node["contexts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["path"] == context && c["state"] == "enabled")
            })
            .map(|node| node["route"].as_str().unwrap().to_string())
            .collect();
        routes.sort();
        routes
    }

    /// The state of `route`'s `context`, if it knows it.
    pub fn context_state(&self, route: &str, context: &str) -> Option<String> {
        let status = self.status();
        let node = status["nodes"]
            .as_array()?
            .iter()
            .find(|node| node["route"] == route)?;
        let found = node["contexts"]
            .as_array()?
            .iter()
            .find(|c| c["path"] == context)?;
        found["state"].as_str().map(str::to_string)
    }

    /// The state of node `route` (`up`, `unreachable`, ...), if it knows it.
    pub fn node_state(&self, route: &str) -> Option<String> {
        let status = self.status();
        let node = status["nodes"]
            .as_array()?
            .iter()
            .find(|node| node["route"] == route)?;
        node["state"].as_str().map(str::to_string)
    }

    /// A URL of its HTTP port.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Clustered nodes `one` and `two` of a base's install, telling `front` about themselves with
/// a STATUS every `status_interval`, started; returns them once both have `context` enabled
/// there.
pub struct Behind {
    pub one: Proc,
    pub two: Proc,
    /// Their port offsets.
    pub offsets: [u16; 2],
}

impl Behind {
    pub fn start(base: &Base, front: &Front, status_interval: Duration, context: &str) -> Behind {
        let cluster = cluster_name();
        let settings = [
            format!("-Dimmutant.modcluster.proxies=127.0.0.1:{}", front.mcmp),
            format!(
                "-Dimmutant.modcluster.status-interval={}",
                status_interval.as_millis()
            ),
        ];
        let offsets = [free_offset(), free_offset()];
        let one = clustered_with(base, "one", offsets[0], &cluster, &settings);
        let two = clustered_with(base, "two", offsets[1], &cluster, &settings);
        eventually("both nodes enabled at the balancer", BUILD_PATIENCE, || {
            front.enabled(context) == ["one", "two"]
        });
        Behind { one, two, offsets }
    }

    /// The port offset of node `name`, and the name of the other node.
    pub fn offset_and_other(&self, name: &str) -> (u16, &'static str) {
        match name {
            "one" => (self.offsets[0], "two"),
            _ => (self.offsets[1], "one"),
        }
    }
}
