//! The node's side of mod_cluster: it tells every balancer it knows who it is, which contexts
//! it serves and how loaded it is, in MCMP (mod_cluster's management protocol), as AS7's
//! `ClusterListener` did, so that httpd with `mod_proxy_cluster` or `cargo immutant balancer`
//! configures itself. Balancers are the ones listed in `immutant.modcluster.proxies`, and, on
//! a clustered node, those heard advertising on mod_cluster's group (224.0.1.105:23364)
//! through the bind address's interface.
//!
//! To each balancer a node sends CONFIG (its route, the node's name, and its HTTP address)
//! and STATUS, then ENABLE-APP for each context a process serves, and from then on what
//! changes, at once:
//! STOP-APP for a context no process serves, DISABLE-APP and STOP-APP when an operator says so,
//! REMOVE-APP for one unmounted; STATUS with its load factor every 10 s. A balancer that does
//! not know the node (it restarted) gets CONFIG and every context again, at once; a command it
//! refuses for itself (a context it cannot take) is said in the log, and the rest goes on; one
//! out of reach keeps what it was told. Before its first CONFIG to a balancer, a node removes
//! what the balancer remembers of an earlier process at its own address under its name (one
//! killed, say: a balancer keeps a node's contexts across CONFIGs). At a graceful stop the node
//! sends REMOVE-APP for all of its contexts.

mod load;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::web::{Published, Web};
use immutant_foundation::mcmp::ContextState;
use immutant_foundation::shutdown::Shutdown;

/// Who this node is to its balancers.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `JVMRoute`: the node's name.
    pub route: String,
    /// Its HTTP address, as balancers reach it.
    pub http: SocketAddr,
    /// The balancer (mod_cluster's name for a group of nodes) its contexts join.
    pub balancer: String,
}

/// How the node speaks to balancers.
#[derive(Debug, Clone)]
pub struct ModClusterConfig {
    pub identity: Identity,
    /// Balancers' MCMP addresses given by property.
    pub proxies: Vec<String>,
    /// Listen for balancers' advertisements on this interface (a clustered node).
    pub advertise_on: Option<IpAddr>,
    pub status_interval: Duration,
}

/// The contexts a balancer has been told of, as it was told.
type Told = BTreeMap<(String, Vec<String>), ContextState>;

/// The most balancers a node speaks to: what advertisements can add stops there.
const MAX_BALANCERS: usize = 16;

/// Starts speaking MCMP to every balancer, listed or heard of; the task returned ends once every
/// balancer has been told the node is gone (at `shutdown`).
pub fn start(
    config: ModClusterConfig,
    web: Arc<Web>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client: Client<HttpConnector, Body> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut known = BTreeSet::new();
        let mut links = JoinSet::new();
        // `listed`: a balancer the node was told of, whose word on its clients' scheme and host
        // the node takes; one that only advertised itself is told about the node, not trusted.
        let mut link = |proxy: String, listed: bool, links: &mut JoinSet<()>| {
            if known.len() >= MAX_BALANCERS || !known.insert(proxy.clone()) {
                return;
            }
            info!("Telling the balancer at {proxy} about this node's web apps");
            let link = Link {
                proxy,
                listed,
                config: config.clone(),
                client: client.clone(),
                web: web.clone(),
                earlier_forgotten: AtomicBool::new(false),
            };
            links.spawn(link.run(shutdown.clone()));
        };
        // A balancer listed by name is known by its addresses too: heard advertising itself
        // at one of them, it is the same balancer, not another to tell.
        let mut listed_at = BTreeSet::new();
        for proxy in &config.proxies {
            if let Ok(addresses) = tokio::net::lookup_host(proxy.as_str()).await {
                listed_at.extend(addresses);
            }
            link(proxy.clone(), true, &mut links);
        }
        let mut heard = match config.advertise_on {
            Some(interface) => listen_for_advertisements(interface),
            None => None,
        };
        loop {
            let advertised = async {
                match heard.as_mut() {
                    Some(heard) => heard.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                proxy = advertised => match proxy {
                    Some(proxy) if listed_at.contains(&proxy) => {}
                    Some(proxy) => link(proxy.to_string(), false, &mut links),
                    None => heard = None,
                },
                _ = shutdown.cancelled() => break,
            }
        }
        while links.join_next().await.is_some() {}
    })
}

/// The MCMP addresses balancers advertise, as they are heard: only an advertisement sent from
/// the address it names counts (one host cannot send the node to another).
fn listen_for_advertisements(
    interface: IpAddr,
) -> Option<tokio::sync::mpsc::UnboundedReceiver<SocketAddr>> {
    let group = IpAddr::V4(immutant_foundation::mcmp::GROUP);
    let port = immutant_foundation::mcmp::PORT;
    let socket = match immutant_foundation::net::multicast_socket(group, port, interface) {
        Ok(socket) => socket,
        Err(error) => {
            warn!(
                "cannot listen for balancers' advertisements on 224.0.1.105:23364 ({error}); list balancers in -Dimmutant.modcluster.proxies"
            );
            return None;
        }
    };
    let (found, heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let Ok((length, from)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let text = String::from_utf8_lossy(&buffer[..length]);
            let Some(proxy) = immutant_foundation::mcmp::parse(&text) else {
                continue;
            };
            if proxy.ip() != from.ip() {
                debug!("ignored an advertisement from {from} naming {proxy}");
                continue;
            }
            if found.send(proxy).is_err() {
                return;
            }
        }
    });
    Some(heard)
}

/// This node's conversation with one balancer.
struct Link {
    proxy: String,
    /// Listed in `immutant.modcluster.proxies` (trusted), not only advertised.
    listed: bool,
    config: ModClusterConfig,
    client: Client<HttpConnector, Body>,
    web: Arc<Web>,
    /// Whether what the balancer remembered of an earlier process of this node is gone.
    earlier_forgotten: AtomicBool,
}

/// Why a command did not go through.
#[derive(Debug)]
enum Refusal {
    /// The balancer could not be reached.
    Unreachable(String),
    /// It does not know this node (it restarted, or dropped it): it must be told everything.
    Forgotten,
    /// It refused the command itself (`Type` and `Mess` say why).
    Refused(String),
}

impl Link {
    async fn run(self, shutdown: Shutdown) {
        // Requests from a balancer come from its address (or addresses, for a name); a listed
        // one's word on its clients' scheme and host is trusted too.
        if let Ok(addresses) = tokio::net::lookup_host(self.proxy.as_str()).await {
            for address in addresses {
                self.web.tell(address.ip(), self.listed);
            }
        }
        let mut changes = self.web.changes();
        let mut ticker = tokio::time::interval(self.config.status_interval);
        // None: the balancer must be told everything (again).
        let mut told: Option<Told> = None;
        // What went wrong last, said once until it is mended.
        let mut trouble: Option<String> = None;
        loop {
            let status_due = tokio::select! {
                _ = ticker.tick() => true,
                _ = changes.changed() => false,
                _ = shutdown.cancelled() => break,
            };
            let version = *changes.borrow_and_update();
            let mut outcome = self.tell(&mut told, status_due).await;
            if matches!(outcome, Err(Refusal::Forgotten)) {
                // It forgot this node: tell it everything, now.
                told = None;
                outcome = self.tell(&mut told, true).await;
            }
            match outcome {
                Ok(()) => {
                    self.web.told(&self.proxy, version);
                    if trouble.take().is_some() {
                        info!("The balancer at {} hears this node again", self.proxy);
                    }
                }
                Err(refusal) => {
                    // A balancer out of reach keeps what it was told (one that restarted
                    // meanwhile says it forgot this node, and is told everything).
                    if !matches!(refusal, Refusal::Unreachable(_)) {
                        told = None;
                    }
                    let said = match refusal {
                        Refusal::Unreachable(error) => format!("cannot reach it ({error})"),
                        Refusal::Refused(why) => format!("it refuses this node: {why}"),
                        Refusal::Forgotten => "it does not take this node's CONFIG".to_string(),
                    };
                    if trouble.as_ref() != Some(&said) {
                        warn!(
                            "the balancer at {}: {said}; trying again every {} s",
                            self.proxy,
                            self.config.status_interval.as_secs()
                        );
                        trouble = Some(said);
                    }
                }
            }
        }
        let farewell = self.send("REMOVE-APP", true, self.route_body());
        if tokio::time::timeout(Duration::from_secs(2), farewell)
            .await
            .is_err()
        {
            warn!(
                "the balancer at {} did not hear that this node leaves",
                self.proxy
            );
        }
    }

    /// Removes what the balancer remembers of an earlier process of this node: the node of
    /// this name at this node's own address (none other can hold that address now), found in
    /// INFO. A node of this name elsewhere is left alone (for the balancer to deal with: ours
    /// refuses this one's CONFIG while that one lives).
    async fn forget_earlier_process(&self) -> Result<(), Refusal> {
        let info = match self.send("INFO", false, String::new()).await {
            Ok(info) => info,
            // One that will not list its nodes has nothing of this one to forget here.
            Err(Refusal::Refused(why)) => {
                debug!("the balancer at {} refused INFO: {why}", self.proxy);
                return Ok(());
            }
            Err(other) => return Err(other),
        };
        let (host, port) = (self.host(), self.config.identity.http.port());
        let remembered = info.lines().any(|line| {
            line.contains(&format!(",Name: {},", self.config.identity.route))
                && line.contains(&format!(",Host: {host},Port: {port},"))
        });
        if remembered {
            match self.send("REMOVE-APP", true, self.route_body()).await {
                Ok(_) | Err(Refusal::Forgotten) => {}
                Err(refusal) => return Err(refusal),
            }
        }
        Ok(())
    }

    /// The body of a command about the whole node: its route.
    fn route_body(&self) -> String {
        format!("JVMRoute={}", encode(&self.config.identity.route))
    }

    /// Brings the balancer up to date: CONFIG and STATUS if it knows nothing yet, then every
    /// context that changed; STATUS too if `status_due`. A context the balancer refuses is said in the log
    /// and not sent again until it changes; the others go on.
    async fn tell(&self, told: &mut Option<Told>, mut status_due: bool) -> Result<(), Refusal> {
        let identity = &self.config.identity;
        let route = encode(&identity.route);
        if told.is_none() {
            if !self.earlier_forgotten.load(Ordering::SeqCst) {
                self.forget_earlier_process().await?;
                self.earlier_forgotten.store(true, Ordering::SeqCst);
            }
            let body = format!(
                "JVMRoute={route}&Balancer={}&Host={}&Port={}&StickySessionForce=No&Type=http",
                encode(&identity.balancer),
                encode(&self.host().to_string()),
                identity.http.port()
            );
            match self.send("CONFIG", false, body).await {
                Ok(_) => {}
                // CONFIG itself refused is not a node the balancer forgot.
                Err(Refusal::Forgotten) => return Err(Refusal::Refused("CONFIG".to_string())),
                Err(refusal) => return Err(refusal),
            }
            // The load factor before any context: until it has one, a balancer takes a node
            // for a standby.
            self.send_status().await?;
            status_due = false;
            *told = Some(Told::new());
        }
        let Some(sent) = told.as_mut() else {
            return Ok(());
        };
        let now: Told = self
            .web
            .published()
            .into_iter()
            .map(|published| {
                let Published {
                    context_path,
                    aliases,
                    state,
                } = published;
                ((context_path, aliases), state)
            })
            .collect();
        let gone: Vec<_> = sent
            .keys()
            .filter(|key| !now.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            self.refused_alone(
                self.send("REMOVE-APP", false, app_body(&route, &key.0, &key.1))
                    .await,
            )?;
            sent.remove(&key);
        }
        for (key, state) in &now {
            if sent.get(key) == Some(state) {
                continue;
            }
            let command = match state {
                ContextState::Enabled => "ENABLE-APP",
                ContextState::Disabled => "DISABLE-APP",
                ContextState::Stopped => "STOP-APP",
            };
            self.refused_alone(
                self.send(command, false, app_body(&route, &key.0, &key.1))
                    .await,
            )?;
            sent.insert(key.clone(), *state);
        }
        if status_due {
            self.send_status().await?;
        }
        Ok(())
    }

    /// STATUS: the node's load factor now.
    async fn send_status(&self) -> Result<String, Refusal> {
        let load = load::factor(self.web.in_flight());
        let body = format!("{}&Load={load}", self.route_body());
        self.send("STATUS", false, body).await
    }

    /// A command's outcome, where a refusal of that command alone is only said in the log.
    fn refused_alone(&self, outcome: Result<String, Refusal>) -> Result<(), Refusal> {
        match outcome {
            Ok(_) => Ok(()),
            Err(Refusal::Refused(why)) => {
                warn!("the balancer at {} refused {why}", self.proxy);
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// The address balancers reach this node's HTTP port at: its bind address, or, for a node
    /// bound to every address, the one it reaches this balancer from.
    fn host(&self) -> IpAddr {
        let http = self.config.identity.http;
        if !http.ip().is_unspecified() {
            return http.ip();
        }
        // Connecting a UDP socket sends nothing; it only picks the route, and so the address.
        let local = std::net::UdpSocket::bind((http.ip(), 0))
            .and_then(|socket| {
                socket.connect(&self.proxy)?;
                socket.local_addr()
            })
            .map(|address| address.ip());
        local.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }

    /// Sends one command (`/*` if `wildcard`) and reads its answer's body.
    async fn send(&self, command: &str, wildcard: bool, body: String) -> Result<String, Refusal> {
        let path = if wildcard { "/*" } else { "/" };
        let method = Method::from_bytes(command.as_bytes())
            .map_err(|error| Refusal::Refused(error.to_string()))?;
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.proxy))
            .header(header::USER_AGENT, "ClusterListener/1.0")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .map_err(|error| Refusal::Refused(error.to_string()))?;
        let answer = tokio::time::timeout(Duration::from_secs(5), self.client.request(request))
            .await
            .map_err(|_| Refusal::Unreachable("no answer within 5 s".to_string()))?
            .map_err(|error| Refusal::Unreachable(error.to_string()))?;
        let status = answer.status();
        let message = answer
            .headers()
            .get("mess")
            .and_then(|mess| mess.to_str().ok())
            .map(str::to_string);
        let text = answer
            .into_body()
            .collect()
            .await
            .map(|body| String::from_utf8_lossy(&body.to_bytes()).into_owned())
            .unwrap_or_default();
        match (status, message) {
            (StatusCode::OK, _) => Ok(text),
            (_, Some(message)) if message.starts_with("MEM: Can't read node") => {
                Err(Refusal::Forgotten)
            }
            (status, message) => Err(Refusal::Refused(format!(
                "{command} ({status}: {})",
                message.unwrap_or_else(|| text.trim().chars().take(200).collect())
            ))),
        }
    }
}

/// The body of an app command: the node, the context's aliases, the context.
fn app_body(route: &str, context: &str, aliases: &[String]) -> String {
    format!(
        "JVMRoute={route}&Alias={}&Context={}",
        encode(&aliases.join(",")),
        encode(context)
    )
}

/// Form-encodes a value: everything but letters, digits and `-._~` as `%XX`.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_as_forms_encode_them() {
        assert_eq!(encode("/app"), "%2Fapp");
        assert_eq!(encode("default-host,localhost"), "default-host%2Clocalhost");
        assert_eq!(
            app_body("one", "/", &["shop.test".to_string()]),
            "JVMRoute=one&Alias=shop.test&Context=%2F"
        );
    }
}
