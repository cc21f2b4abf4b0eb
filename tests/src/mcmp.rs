//! MCMP spoken by hand, as a Java mod_cluster node speaks it, to our balancer or to httpd's
//! `mod_manager`; a stand-in for a Java node's HTTP connector; and httpd with
//! mod_proxy_cluster, where it is installed, to hold our balancer's answers against.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{PATIENCE, Proc, eventually, free_offset};

/// What an MCMP command was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// The `Type` and `Mess` headers of a refusal.
    pub kind: Option<String>,
    pub mess: Option<String>,
    pub body: String,
}

/// A client of one MCMP port, sending as Java mod_cluster's `DefaultMCMPHandler` does: the
/// command as the method, `/` or `/*`, a form body, `ClusterListener/1.0`, kept alive.
pub struct Mcmp {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    port: u16,
}

impl Mcmp {
    pub fn new(port: u16) -> Mcmp {
        Mcmp {
            runtime: crate::web::runtime(),
            client: crate::web::client(),
            port,
        }
    }

    pub fn send(&self, command: &str, path: &str, body: &str) -> Reply {
        self.send_accepting(command, path, body, "*/*")
    }

    /// The same, saying the answer may be of the type `accept`.
    pub fn send_accepting(&self, command: &str, path: &str, body: &str, accept: &str) -> Reply {
        let method = reqwest::Method::from_bytes(command.as_bytes()).expect("a method");
        let request = self
            .client
            .request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .header("User-Agent", "ClusterListener/1.0")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", accept)
            .body(body.to_string());
        self.runtime.block_on(async {
            let response = request.send().await.expect("the MCMP port answers");
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|value| value.to_str().unwrap_or_default().to_string())
            };
            let (kind, mess) = (header("type"), header("mess"));
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            Reply {
                status,
                kind,
                mess,
                body,
            }
        })
    }
}

/// A stand-in for a node's HTTP connector: answers every request (`OPTIONS *` too) with 200
/// and its name, one request a connection, until dropped (then its port refuses connections).
pub struct Connector {
    pub port: u16,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Connector {
    pub fn start(name: &str) -> Connector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().unwrap().port();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let name = name.clone();
                std::thread::spawn(move || answer(stream, &name));
            }
        });
        Connector {
            port,
            stopping,
            thread: Some(thread),
        }
    }
}

/// Answers a connection's first request with the connector's name, and closes it.
fn answer(mut stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then lets the listener go.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where mod_proxy_cluster's modules are: `$IMMUTANT_TEST_MOD_PROXY_CLUSTER`, a folder with
/// `mod_manager.so` and `mod_proxy_cluster.so` built for Debian's httpd (`apache2-dev`; see
/// README, Quick start).
pub const MODULES_VARIABLE: &str = "IMMUTANT_TEST_MOD_PROXY_CLUSTER";

/// How many processes and threads httpd serves with.
#[derive(Clone, Copy)]
pub enum Children {
    /// One process: every command meets the same workers (each process keeps its own).
    One,
    /// Debian's `mpm_event.conf`, as a user of Debian's httpd has it.
    Debian,
}

/// httpd 2.4 with mod_manager and mod_proxy_cluster (event MPM, `LogLevel warn`), receiving
/// MCMP on loopback at `mcmp` and proxying what its nodes serve at `proxy`; stopped when
/// dropped.
pub struct Httpd {
    pub mcmp: u16,
    pub proxy: u16,
    proc: Proc,
    _root: tempfile::TempDir,
}

impl Httpd {
    /// Starts one, or says why it cannot be started here.
    pub fn start(children: Children) -> Result<Httpd, String> {
        let modules = std::env::var_os(MODULES_VARIABLE)
            .map(PathBuf::from)
            .ok_or_else(|| format!("{MODULES_VARIABLE} is not set"))?;
        let binary = Path::new("/usr/sbin/apache2");
        let system = Path::new("/usr/lib/apache2/modules");
        for needed in [
            binary.to_path_buf(),
            system.join("mod_proxy.so"),
            modules.join("mod_manager.so"),
            modules.join("mod_proxy_cluster.so"),
        ] {
            if !needed.exists() {
                return Err(format!("{} is missing", needed.display()));
            }
        }
        let root = tempfile::Builder::new()
            .prefix("immutant-httpd-")
            .tempdir()
            .expect("a temp dir");
        let offset = free_offset();
        let (mcmp, proxy) = (7600 + offset, 8080 + offset);
        let processes = match children {
            Children::One => {
                "StartServers 1\nServerLimit 1\nMinSpareThreads 1\nMaxSpareThreads 25\nThreadsPerChild 25\nMaxRequestWorkers 25\n"
            }
            Children::Debian => {
                "StartServers 2\nMinSpareThreads 25\nMaxSpareThreads 75\nThreadLimit 64\nThreadsPerChild 25\nMaxRequestWorkers 150\nMaxConnectionsPerChild 0\n"
            }
        };
        // httpd will not serve as root: its children run as nobody, who must reach its files.
        let user = match unsafe { libc::geteuid() } {
            0 => "User nobody\nGroup nogroup\n",
            _ => "",
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let load = |name: &str, file: &Path| format!("LoadModule {name} {}\n", file.display());
        let mut config = format!(
            "ServerRoot {root}\nPidFile {root}/httpd.pid\nErrorLog {root}/error.log\nDefaultRuntimeDir {root}\nServerName 127.0.0.1\n{user}Listen 127.0.0.1:{mcmp}\nListen 127.0.0.1:{proxy}\nLogLevel warn\nKeepAlive On\nMaxKeepAliveRequests 100\nKeepAliveTimeout 5\n{processes}",
            root = root.path().display()
        );
        for module in [
            "mpm_event",
            "authz_core",
            "authz_host",
            "proxy",
            "proxy_http",
            "slotmem_shm",
        ] {
            config += &load(
                &format!("{module}_module"),
                &system.join(format!("mod_{module}.so")),
            );
        }
        config += &load("manager_module", &modules.join("mod_manager.so"));
        config += &load(
            "proxy_cluster_module",
            &modules.join("mod_proxy_cluster.so"),
        );
        config += &format!(
            "<VirtualHost 127.0.0.1:{mcmp}>\n  EnableMCMPReceive\n  <Location />\n    Require local\n  </Location>\n</VirtualHost>\n"
        );
        let file = root.path().join("httpd.conf");
        std::fs::write(&file, config).unwrap();
        let mut command = Command::new(binary);
        command.arg("-f").arg(&file).arg("-DFOREGROUND");
        let proc = Proc::spawn(command);
        eventually("httpd takes MCMP", PATIENCE, || {
            TcpStream::connect(("127.0.0.1", mcmp)).is_ok()
        });
        Ok(Httpd {
            mcmp,
            proxy,
            proc,
            _root: root,
        })
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_exit(PATIENCE);
    }
}

/// An INFO or DUMP answer with the ids taken out: each line as what it says, nodes by their
/// route, virtual hosts by their alias, sorted (each side numbers in its own way, and lists in
/// the order of its own slots).
pub fn without_ids(text: &str) -> Vec<String> {
    // A field's value, looked for after the ids in brackets.
    let field = |line: &str, name: &str| -> String {
        let fields = line.split_once(']').map_or(line, |(_, rest)| rest);
        fields
            .split([',', ' '])
            .skip_while(|word| *word != name)
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    let bracketed = |line: &str| -> String {
        line.split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(inside, _)| inside.to_string())
            .unwrap_or_default()
    };
    // Node ids to routes, and (node id, vhost) to aliases.
    let mut routes = BTreeMap::new();
    let mut aliases = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("node: ") {
            let ids = bracketed(line);
            let id = ids.split(':').nth(1).unwrap_or_default().to_string();
            routes.insert(id, field(line, "JVMRoute:"));
        } else if line.starts_with("Node: ") {
            routes.insert(bracketed(line), field(line, "Name:"));
        }
    }
    for line in text.lines() {
        if line.starts_with("host: ") {
            let node = routes
                .get(&field(line, "node:"))
                .cloned()
                .unwrap_or_default();
            aliases.insert((node, field(line, "vhost:")), bracketed(line));
        } else if line.starts_with("Vhost: ") {
            let ids: Vec<String> = bracketed(line).split(':').map(str::to_string).collect();
            let node = routes.get(&ids[0]).cloned().unwrap_or_default();
            aliases.insert((node, ids[1].clone()), field(line, "Alias:"));
        }
    }
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| {
            let rest = |marker: char| line.split_once(marker).map_or("", |(_, rest)| rest);
            if line.starts_with("balancer: ") {
                format!("balancer:{}", rest(']'))
            } else if line.starts_with("node: ") || line.starts_with("Node: ") {
                format!("node:{}", rest(']'))
            } else if line.starts_with("host: ") {
                let node = routes
                    .get(&field(line, "node:"))
                    .cloned()
                    .unwrap_or_default();
                format!("host: {} of {node}", bracketed(line))
            } else if line.starts_with("Vhost: ") {
                let node = routes.get(bracketed(line).split(':').next().unwrap_or_default());
                format!(
                    "host: {} of {}",
                    field(line, "Alias:"),
                    node.cloned().unwrap_or_default()
                )
            } else if line.starts_with("context: ") {
                let node = routes
                    .get(&field(line, "node:"))
                    .cloned()
                    .unwrap_or_default();
                let alias = aliases.get(&(node.clone(), field(line, "vhost:")));
                format!(
                    "context: {} of {} of {node} status {}",
                    bracketed(line),
                    alias.cloned().unwrap_or_default(),
                    field(line, "status:")
                )
            } else if line.starts_with("Context: ") {
                let ids: Vec<String> = bracketed(line).split(':').map(str::to_string).collect();
                let node = routes.get(&ids[0]).cloned().unwrap_or_default();
                let alias = aliases.get(&(node.clone(), ids[1].clone()));
                format!(
                    "context: {} of {} of {node} status {}",
                    field(line, "Context:"),
                    alias.cloned().unwrap_or_default(),
                    field(line, "Status:")
                )
            } else {
                line.to_string()
            }
        })
        .collect();
    lines.sort();
    lines
}

/// An XML INFO or DUMP answer with the nodes' ids taken out (each side numbers its nodes in
/// its own way; hosts and contexts are numbered alike while none has been removed).
pub fn without_node_ids(xml: &str) -> String {
    let mut out = xml.to_string();
    for marker in ["<Node id=\"", "<Node>"] {
        let mut rest = out.as_str();
        let mut kept = String::new();
        while let Some(at) = rest.find(marker) {
            let after = &rest[at + marker.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            kept.push_str(&rest[..at + marker.len()]);
            rest = &after[digits..];
        }
        kept.push_str(rest);
        out = kept;
    }
    out
}
