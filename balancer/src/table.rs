//! What the balancer knows of its nodes and their contexts, as MCMP told it: each node's route
//! (`JVMRoute`), address and load factor, each context's state, and the requests in flight to
//! each. Requests are routed by the table: to the node their session names, or else to the
//! enabled node with the most room.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use immutant_foundation::mcmp::DEFAULT_HOST;
use serde::Serialize;

/// A node that sent CONFIG.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The node's route (`JVMRoute`): its name, the suffix of its sessions' ids.
    pub route: String,
    /// The number the balancer gave it, in the order nodes came.
    pub id: u64,
    pub balancer: String,
    pub domain: String,
    pub host: String,
    pub port: u16,
    /// `http` (`ajp` is not spoken here).
    pub scheme: String,
    #[serde(skip)]
    pub settings: NodeSettings,
    /// The load factor its last STATUS gave: 1-100 (room for more, the higher the more),
    /// 0 standby (as before its first STATUS), -1 broken.
    pub load: i32,
    /// Whether the balancer can reach it.
    pub healthy: bool,
    /// Requests sent to it.
    pub elected: u64,
    #[serde(skip)]
    pub last_heard: Instant,
    #[serde(skip)]
    pub in_flight: Arc<AtomicUsize>,
    /// Told when the node is found unreachable, or leaves: requests waiting on it may go
    /// elsewhere.
    #[serde(skip)]
    pub lost: Arc<tokio::sync::Notify>,
    /// When it was last found unreachable: an answer to a health check begun before then does
    /// not bring it back.
    #[serde(skip)]
    pub found_unreachable: Option<Instant>,
}

/// `host:port`, with an IPv6 address in brackets.
fn address(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

impl Node {
    pub fn address(&self) -> String {
        address(&self.host, self.port)
    }

    /// How it is, in a word: `up`, `standby` (load factor 0), `broken` (-1), `silent` (no
    /// STATUS lately) or `unreachable`.
    pub fn state(&self) -> &'static str {
        match (self.healthy, self.load) {
            (false, _) => "unreachable",
            _ if self.silent() => "silent",
            (true, -1) => "broken",
            (true, 0) => "standby",
            _ => "up",
        }
    }

    /// Whether it has gone without STATUS (or an answer to a health check) for a while.
    fn silent(&self) -> bool {
        self.last_heard.elapsed() >= SILENCE
    }

    /// Whether the node takes requests: reachable, heard from lately, not broken (one on
    /// standby, with a load factor of 0, takes its sessions' and new ones only when no node
    /// with room can).
    fn usable(&self) -> bool {
        self.healthy && self.load >= 0 && !self.silent()
    }
}

/// What a node's context takes: every request, only those of its sessions, or none. The same
/// three states a node's operator sets.
pub use immutant_foundation::mcmp::ContextState;

/// The most nodes, and contexts, a balancer keeps (mod_manager's `Maxnode` and `Maxcontext`
/// are smaller): beyond them, CONFIG and the app commands are refused.
pub const MAX_NODES: usize = 100;
pub const MAX_CONTEXTS: usize = 1000;

/// How long a node may go without STATUS before it is passed over.
pub const SILENCE: Duration = Duration::from_secs(30);

/// A context of a node, in one of its virtual hosts. As in mod_manager 2.x, a node has a
/// virtual host for each alias it names (numbered from 1 in the order they came), and each
/// virtual host its own contexts, each with its own state.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub route: String,
    /// The node's number for the virtual host.
    pub vhost: u32,
    /// The virtual host's name (`Alias`), lower case.
    pub alias: String,
    /// `/` or `/name` (what a node says, unchecked: one not starting with `/` matches nothing).
    pub path: String,
    pub state: ContextState,
    /// Requests sent to it.
    pub requests: u64,
    #[serde(skip)]
    pub in_flight: Arc<AtomicUsize>,
}

impl Context {
    /// Whether a request for `path` is this context's: whole path segments of it (an empty
    /// context, which a node may name, is no one's).
    fn covers(&self, path: &str) -> bool {
        self.path == "/"
            || !self.path.is_empty()
                && path.strip_prefix(&self.path).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || rest.starts_with(';')
                })
    }
}

/// Where one request goes. It counts as in flight to its node and its context (shown on the
/// status page, and weighed in the choice of a node) until dropped.
#[derive(Debug)]
pub struct Target {
    pub route: String,
    /// The id the balancer gave its node: another process with the route gets another.
    pub node_id: u64,
    pub address: String,
    /// Resolves if the node is found unreachable, or leaves, while the request waits on it
    /// (waiting from the moment the node was chosen, so that nothing in between is missed).
    pub lost: std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
    counters: [Arc<AtomicUsize>; 2],
}

impl Drop for Target {
    fn drop(&mut self) {
        for counter in &self.counters {
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Why a node was refused.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// Another live node has this route.
    RouteTaken,
    /// The table is full.
    Full,
}

/// What mod_manager keeps of a node beyond its address (its `CONFIG`'s node part), shown in
/// DUMP and INFO. The balancer shows them; its own timeouts and pools decide how it proxies.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// `flushpackets`: 0 Off, 1 On, 2 Auto (mod_proxy's numbers).
    pub flush_packets: u8,
    /// `flushwait`, `ping`, `ttl`, `Timeout`: microseconds.
    pub flush_wait_us: i64,
    pub ping_us: i64,
    pub ttl_us: i64,
    pub timeout_us: i64,
    /// `smax`: -1 lets the balancer choose.
    pub smax: i32,
    /// `Reversed`: the node opened the connections (not spoken here; kept as told).
    pub reversed: bool,
}

impl Default for NodeSettings {
    /// mod_manager's defaults.
    fn default() -> NodeSettings {
        NodeSettings {
            flush_packets: 0,
            flush_wait_us: 10_000,
            ping_us: 10_000_000,
            ttl_us: 60_000_000,
            timeout_us: 0,
            smax: -1,
            reversed: false,
        }
    }
}

/// A balancer's sticky-session settings (its `CONFIG`'s balancer part). The last `CONFIG` that
/// names a balancer sets all of them, defaults for what it leaves out, as mod_manager does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalancerSettings {
    pub name: String,
    /// `StickySession`: requests of a session go to the node it names.
    pub sticky: bool,
    /// `StickySessionCookie` and `StickySessionPath`: where a request's session id is.
    pub cookie: String,
    pub path_parameter: String,
    /// `StickySessionRemove` (kept as told; the session cookie is never removed here).
    pub remove: bool,
    /// `StickySessionForce`: a session whose node cannot take it gets 503, not another node.
    pub force: bool,
    /// `WaitWorker` in seconds and `Maxattempts` (kept as told; the balancer waits and tries
    /// again as its own rules say).
    pub wait_worker: i32,
    pub max_attempts: i32,
}

impl BalancerSettings {
    /// mod_manager's defaults for a balancer named `name`.
    pub fn new(name: &str) -> BalancerSettings {
        BalancerSettings {
            name: name.to_string(),
            sticky: true,
            cookie: "JSESSIONID".to_string(),
            path_parameter: "jsessionid".to_string(),
            remove: false,
            force: true,
            wait_worker: 0,
            max_attempts: 1,
        }
    }
}

/// The balancer a node belongs to when its CONFIG names none (mod_manager's default).
pub const DEFAULT_BALANCER: &str = "mycluster";

/// The settings of a balancer no CONFIG named.
static DEFAULT_SETTINGS: std::sync::LazyLock<BalancerSettings> =
    std::sync::LazyLock::new(|| BalancerSettings::new(DEFAULT_BALANCER));

/// Every node and context the balancer knows.
#[derive(Debug, Default)]
pub struct Table {
    nodes: BTreeMap<String, Node>,
    contexts: Vec<Context>,
    /// In the order they were first named.
    balancers: Vec<BalancerSettings>,
    next_id: u64,
}

/// A node's settings, as CONFIG gives them.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub route: String,
    pub domain: String,
    pub host: String,
    pub port: u16,
    pub scheme: String,
    pub settings: NodeSettings,
    /// The balancer it belongs to, with the settings this CONFIG gives it.
    pub balancer: BalancerSettings,
}

impl Table {
    /// CONFIG: a node is (again) what `config` says, and its balancer what `config` says of
    /// it. A node configured again from its address keeps its contexts and what the health
    /// checks found of it (mod_manager's way: a node restarted sends `REMOVE-APP /*` first if
    /// it wants them gone); one from another address is another process, and starts afresh.
    /// Either way it takes nothing but as a standby until its next STATUS. Refused if another
    /// node that is alive (heard lately, reachable, at another address) has the route, or if
    /// the table is full.
    pub fn configure(&mut self, config: NodeConfig) -> Result<(), Refused> {
        let at = address(&config.host, config.port);
        let previous = match self.nodes.remove(&config.route) {
            Some(node) if node.address() != at && node.healthy && !node.silent() => {
                self.nodes.insert(config.route, node);
                return Err(Refused::RouteTaken);
            }
            Some(node) if node.address() != at => {
                // Another process at another address: what the old one served is not its.
                self.contexts.retain(|c| c.route != config.route);
                node.lost.notify_waiters();
                None
            }
            Some(node) => Some(node),
            None if self.nodes.len() >= MAX_NODES => return Err(Refused::Full),
            None => None,
        };
        let id = match &previous {
            Some(node) => node.id,
            None => {
                self.next_id += 1;
                self.next_id
            }
        };
        let balancer = config.balancer;
        let node = Node {
            route: config.route.clone(),
            id,
            balancer: balancer.name.clone(),
            domain: config.domain,
            host: config.host,
            port: config.port,
            scheme: config.scheme,
            settings: config.settings,
            // A standby until its STATUS: mod_proxy_cluster's worker has no load factor
            // before one either.
            load: 0,
            healthy: previous.as_ref().is_none_or(|node| node.healthy),
            elected: previous.as_ref().map_or(0, |node| node.elected),
            last_heard: Instant::now(),
            in_flight: previous
                .as_ref()
                .map_or_else(Arc::default, |node| node.in_flight.clone()),
            lost: previous
                .as_ref()
                .map_or_else(Arc::default, |node| node.lost.clone()),
            found_unreachable: previous.and_then(|node| node.found_unreachable),
        };
        self.nodes.insert(config.route, node);
        // A balancer's settings are the last CONFIG's that named it; those no node names any
        // more go (so there are never more than nodes).
        self.balancers.retain(|known| {
            known.name != balancer.name && self.nodes.values().any(|n| n.balancer == known.name)
        });
        self.balancers.push(balancer);
        Ok(())
    }

    pub fn node(&self, route: &str) -> Option<&Node> {
        self.nodes.get(route)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn contexts(&self) -> impl Iterator<Item = &Context> {
        self.contexts.iter()
    }

    pub fn balancers(&self) -> impl Iterator<Item = &BalancerSettings> {
        self.balancers.iter()
    }

    /// STATUS: the node's load factor now. False if the node is unknown.
    pub fn status(&mut self, route: &str, load: i32) -> bool {
        match self.nodes.get_mut(route) {
            Some(node) => {
                node.load = load;
                node.last_heard = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Whether the balancer reaches the node now.
    pub fn set_healthy(&mut self, route: &str, healthy: bool) {
        if let Some(node) = self.nodes.get_mut(route) {
            node.healthy = healthy;
            if !healthy {
                node.found_unreachable = Some(Instant::now());
                node.lost.notify_waiters();
            }
        }
    }

    /// The node's virtual host for `alias`, if it has one.
    fn vhost(&self, route: &str, alias: &str) -> Option<u32> {
        self.contexts
            .iter()
            .find(|c| c.route == route && c.alias == alias)
            .map(|c| c.vhost)
    }

    /// ENABLE-APP, DISABLE-APP or STOP-APP for the context at `path` of the node's virtual
    /// host `alias` (both made if new). False if the node is unknown or the table is full.
    pub fn set_context(
        &mut self,
        route: &str,
        alias: &str,
        path: &str,
        state: ContextState,
    ) -> bool {
        if !self.nodes.contains_key(route) {
            return false;
        }
        let alias = alias.to_ascii_lowercase();
        let vhost = self.vhost(route, &alias).unwrap_or_else(|| {
            let node_contexts = self.contexts.iter().filter(|c| c.route == route);
            node_contexts.map(|c| c.vhost).max().unwrap_or(0) + 1
        });
        let found = self
            .contexts
            .iter()
            .position(|c| c.route == route && c.vhost == vhost && c.path == path);
        match found {
            Some(index) => self.contexts[index].state = state,
            None if self.contexts.len() >= MAX_CONTEXTS => return false,
            None => self.contexts.push(Context {
                route: route.to_string(),
                vhost,
                alias,
                path: path.to_string(),
                state,
                requests: 0,
                in_flight: Arc::default(),
            }),
        }
        true
    }

    /// The same for every context of a node (the `/*` forms).
    pub fn set_all_contexts(&mut self, route: &str, state: ContextState) {
        for context in self.contexts.iter_mut().filter(|c| c.route == route) {
            context.state = state;
        }
    }

    /// REMOVE-APP for the context at `path` of the node's virtual host `alias`. False if the
    /// node has no such virtual host (nothing to remove there).
    pub fn remove_context(&mut self, route: &str, alias: &str, path: &str) -> bool {
        let alias = alias.to_ascii_lowercase();
        let Some(vhost) = self.vhost(route, &alias) else {
            return false;
        };
        self.contexts
            .retain(|c| !(c.route == route && c.vhost == vhost && c.path == path));
        true
    }

    /// REMOVE-APP `/*`: the node leaves, with its contexts. False if it was unknown.
    pub fn remove_node(&mut self, route: &str) -> bool {
        self.contexts.retain(|c| c.route != route);
        match self.nodes.remove(route) {
            Some(node) => {
                node.lost.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Forgets the nodes that have neither answered nor spoken for `after` (mod_proxy_cluster
    /// lets such a node go too), so that even forced sessions of theirs go elsewhere; a node
    /// that speaks again is told it is unknown, and tells everything again. Answers their
    /// routes.
    pub fn forget_unreachable(&mut self, after: Duration) -> Vec<String> {
        let lost: Vec<String> = self
            .nodes
            .values()
            .filter(|node| !node.healthy && node.last_heard.elapsed() >= after)
            .map(|node| node.route.clone())
            .collect();
        for route in &lost {
            self.remove_node(route);
        }
        lost
    }

    /// The node spoke or answered: it is not silent.
    pub fn heard(&mut self, route: &str) {
        if let Some(node) = self.nodes.get_mut(route) {
            node.last_heard = Instant::now();
        }
    }

    /// Where a request for `host` and `path` goes: to the node its session names (read by
    /// `session` where the nodes' balancer says session ids are) if it has the context
    /// enabled or disabled (its sessions stay there), else to the node with the context
    /// enabled that has the most room (one on standby only if none with room has it); never
    /// to one in `tried`. None if no node can take it, or if the session's node cannot and its
    /// balancer forces sticky sessions.
    pub fn choose(
        &mut self,
        host: &str,
        path: &str,
        session: impl FnOnce(&BalancerSettings) -> Option<String>,
        tried: &[String],
    ) -> Option<Target> {
        // Contexts for the host: those that name it; if none does, those of the default host
        // (as JBoss nodes name it); if none is, all.
        let scope = [host, DEFAULT_HOST]
            .into_iter()
            .find(|alias| self.contexts.iter().any(|c| c.alias == *alias));
        let in_scope = |c: &Context| scope.is_none_or(|alias| c.alias == alias) && c.covers(path);
        let mut candidates: Vec<usize> = (0..self.contexts.len())
            .filter(|&i| {
                let context = &self.contexts[i];
                in_scope(context)
                    && context.state != ContextState::Stopped
                    && !tried.contains(&context.route)
                    && self.nodes.get(&context.route).is_some_and(Node::usable)
            })
            .collect();
        let longest = candidates
            .iter()
            .map(|&i| self.contexts[i].path.len())
            .max()?;
        candidates.retain(|&i| self.contexts[i].path.len() == longest);
        // The session is read where the balancer of the nodes chosen among says it is.
        let settings = self
            .nodes
            .get(&self.contexts[candidates[0]].route)
            .and_then(|node| self.balancers.iter().find(|b| b.name == node.balancer))
            .unwrap_or(&DEFAULT_SETTINGS);
        let force = settings.force;
        let sticky = settings.sticky.then(|| session(settings)).flatten();
        let sticky_choice = sticky.as_deref().and_then(|route| {
            candidates
                .iter()
                .copied()
                .find(|&i| self.contexts[i].route == route)
        });
        let forced_elsewhere = sticky_choice.is_none()
            && force
            && sticky.as_deref().is_some_and(|route| {
                self.contexts
                    .iter()
                    .any(|c| c.route == route && in_scope(c))
            });
        if forced_elsewhere {
            return None;
        }
        // A new session: to an enabled context of a node with room, else of one on standby (a
        // load factor of 0), the least busy for its room (requests in flight per point of load
        // factor, in coarse steps, so that nodes with about the same room count as equal); of
        // equals, the one sent the fewest requests.
        let new_session = |standby: bool| {
            candidates
                .iter()
                .copied()
                .filter(|&i| self.contexts[i].state == ContextState::Enabled)
                .filter(|&i| (self.nodes[&self.contexts[i].route].load == 0) == standby)
                .min_by_key(|&i| {
                    let node = &self.nodes[&self.contexts[i].route];
                    let busy = node.in_flight.load(Ordering::SeqCst) as u64 + 1;
                    (busy * 100 / node.load.max(1) as u64, node.elected)
                })
        };
        let chosen = sticky_choice
            .or_else(|| new_session(false))
            .or_else(|| new_session(true))?;
        let context = &mut self.contexts[chosen];
        context.requests += 1;
        let node = self.nodes.get_mut(&context.route)?;
        node.elected += 1;
        // Counted while the table is held, so that a choice made after this one weighs it.
        let counters = [node.in_flight.clone(), context.in_flight.clone()];
        for counter in &counters {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Some(Target {
            route: node.route.clone(),
            node_id: node.id,
            address: node.address(),
            lost: Box::pin(node.lost.clone().notified_owned()),
            counters,
        })
    }

    /// Whether some node has a context at `path`, usable or not.
    pub fn covers(&self, path: &str) -> bool {
        self.contexts.iter().any(|context| context.covers(path))
    }
}

#[cfg(test)]
mod tests;
