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
    /// The load factor its last STATUS gave: 1-100 (room for more, the higher the more),
    /// 0 standby, -1 broken.
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

impl Node {
    pub fn address(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }

    /// How it is, in a word: `up`, `standby` (load factor 0), `broken` (-1), `silent` (no
    /// STATUS lately) or `unreachable`.
    pub fn state(&self) -> &'static str {
        match (self.healthy, self.load) {
            (false, _) => "unreachable",
            _ if self.last_heard.elapsed() >= SILENCE => "silent",
            (true, -1) => "broken",
            (true, 0) => "standby",
            _ => "up",
        }
    }

    /// Whether the node takes requests: reachable, heard from lately, not broken.
    fn usable(&self) -> bool {
        self.healthy && self.load > 0 && self.last_heard.elapsed() < SILENCE
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

/// A context of a node.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub route: String,
    /// `/` or `/name`.
    pub path: String,
    /// The virtual hosts it answers (`Alias`), lower case.
    pub aliases: Vec<String>,
    pub state: ContextState,
    /// Requests sent to it.
    pub requests: u64,
    #[serde(skip)]
    pub in_flight: Arc<AtomicUsize>,
}

impl Context {
    fn covers(&self, path: &str) -> bool {
        self.path == "/"
            || path.strip_prefix(&self.path).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('/') || rest.starts_with(';')
            })
    }
}

/// Where one request goes. It counts as in flight to its node and its context (what STOP-APP
/// answers, and what the choice of a node weighs) until dropped.
#[derive(Debug)]
pub struct Target {
    pub route: String,
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

/// Every node and context the balancer knows.
#[derive(Debug, Default)]
pub struct Table {
    nodes: BTreeMap<String, Node>,
    contexts: Vec<Context>,
    next_id: u64,
}

/// A node's settings, as CONFIG gives them.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub route: String,
    pub balancer: String,
    pub domain: String,
    pub host: String,
    pub port: u16,
    pub scheme: String,
}

impl Table {
    /// CONFIG: a node is (again) what `config` says. Its contexts are forgotten: a node sends
    /// ENABLE-APP for each of its contexts after CONFIG. Refused if another node that is alive
    /// (heard lately, at another address) has the route, or if the table is full.
    pub fn configure(&mut self, config: NodeConfig) -> Result<(), Refused> {
        let id = match self.nodes.get(&config.route) {
            Some(node)
                if (node.host != config.host || node.port != config.port)
                    && node.healthy
                    && node.last_heard.elapsed() < SILENCE =>
            {
                return Err(Refused::RouteTaken);
            }
            Some(node) => node.id,
            None if self.nodes.len() >= MAX_NODES => return Err(Refused::Full),
            None => {
                self.next_id += 1;
                self.next_id
            }
        };
        self.contexts
            .retain(|context| context.route != config.route);
        self.nodes.insert(
            config.route.clone(),
            Node {
                route: config.route,
                id,
                balancer: config.balancer,
                domain: config.domain,
                host: config.host,
                port: config.port,
                scheme: config.scheme,
                // Until its first STATUS: some room, as mod_cluster starts a node.
                load: 1,
                healthy: true,
                elected: 0,
                last_heard: Instant::now(),
                in_flight: Arc::default(),
                lost: Arc::default(),
                found_unreachable: None,
            },
        );
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

    /// ENABLE-APP, DISABLE-APP or STOP-APP for one context of a node (made if new), with its
    /// aliases. Answers the requests in flight to it. None if the node is unknown or the table
    /// is full.
    pub fn set_context(
        &mut self,
        route: &str,
        path: &str,
        aliases: &[String],
        state: ContextState,
    ) -> Option<usize> {
        self.nodes.get(route)?;
        let known = self
            .contexts
            .iter()
            .any(|c| c.route == route && c.path == path);
        if !known && self.contexts.len() >= MAX_CONTEXTS {
            return None;
        }
        let aliases: Vec<String> = aliases.iter().map(|a| a.to_ascii_lowercase()).collect();
        let found = self.contexts.iter_mut().find(|c| {
            c.route == route && c.path == path && (aliases.is_empty() || c.aliases == aliases)
        });
        let context = match found {
            Some(context) => context,
            None => {
                self.contexts.push(Context {
                    route: route.to_string(),
                    path: path.to_string(),
                    aliases,
                    state,
                    requests: 0,
                    in_flight: Arc::default(),
                });
                self.contexts.last_mut()?
            }
        };
        context.state = state;
        Some(context.in_flight.load(Ordering::SeqCst))
    }

    /// The same for every context of a node (the `/*` forms). Answers the requests in flight
    /// to them all. None if the node is unknown.
    pub fn set_all_contexts(&mut self, route: &str, state: ContextState) -> Option<usize> {
        self.nodes.get(route)?;
        let mut in_flight = 0;
        for context in self.contexts.iter_mut().filter(|c| c.route == route) {
            context.state = state;
            in_flight += context.in_flight.load(Ordering::SeqCst);
        }
        Some(in_flight)
    }

    /// REMOVE-APP for one context. False if the node is unknown.
    pub fn remove_context(&mut self, route: &str, path: &str, aliases: &[String]) -> bool {
        if !self.nodes.contains_key(route) {
            return false;
        }
        // Two virtual hosts of a node may have the same path: the aliases say which goes.
        let aliases: Vec<String> = aliases.iter().map(|a| a.to_ascii_lowercase()).collect();
        self.contexts.retain(|c| {
            !(c.route == route && c.path == path && (aliases.is_empty() || c.aliases == aliases))
        });
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

    /// The node spoke or answered: it is not silent.
    pub fn heard(&mut self, route: &str) {
        if let Some(node) = self.nodes.get_mut(route) {
            node.last_heard = Instant::now();
        }
    }

    /// Where a request for `host` and `path` goes: to `sticky`'s node if it has the context
    /// enabled or disabled (its sessions stay there), else to the node with the context
    /// enabled that has the most room; never to one in `tried`.
    pub fn choose(
        &mut self,
        host: &str,
        path: &str,
        sticky: Option<&str>,
        tried: &[String],
    ) -> Option<Target> {
        // Contexts for the host: those that name it; if none does, those of the default host
        // (as JBoss nodes name it); if none is, all.
        let scope = [host, DEFAULT_HOST].into_iter().find(|alias| {
            self.contexts
                .iter()
                .any(|c| c.aliases.iter().any(|a| a == alias))
        });
        let candidates: Vec<usize> = (0..self.contexts.len())
            .filter(|&i| {
                let context = &self.contexts[i];
                scope.is_none_or(|alias| context.aliases.iter().any(|a| a == alias))
                    && context.covers(path)
                    && context.state != ContextState::Stopped
                    && !tried.contains(&context.route)
                    && self.nodes.get(&context.route).is_some_and(Node::usable)
            })
            .collect();
        let longest = candidates
            .iter()
            .map(|&i| self.contexts[i].path.len())
            .max()?;
        let candidates: Vec<usize> = candidates
            .into_iter()
            .filter(|&i| self.contexts[i].path.len() == longest)
            .collect();
        let sticky_choice = sticky.and_then(|route| {
            candidates
                .iter()
                .copied()
                .find(|&i| self.contexts[i].route == route)
        });
        let chosen = sticky_choice.or_else(|| {
            candidates
                .iter()
                .copied()
                .filter(|&i| self.contexts[i].state == ContextState::Enabled)
                // The least busy for its room (requests in flight per point of load factor, in
                // coarse steps, so that nodes with about the same room count as equal); of
                // equals, the one sent the fewest requests.
                .min_by_key(|&i| {
                    let node = &self.nodes[&self.contexts[i].route];
                    let busy = node.in_flight.load(Ordering::SeqCst) as u64 + 1;
                    (busy * 100 / node.load.max(1) as u64, node.elected)
                })
        })?;
        let context = &mut self.contexts[chosen];
        context.requests += 1;
        let node = self.nodes.get_mut(&context.route)?;
        node.elected += 1;
        // Counted while the table is held, so that a STOP-APP answered after this sees it.
        let counters = [node.in_flight.clone(), context.in_flight.clone()];
        for counter in &counters {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Some(Target {
            route: node.route.clone(),
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
mod tests {
    use super::*;

    fn table(nodes: &[(&str, i32)]) -> Table {
        let mut table = Table::default();
        for (route, load) in nodes {
            table
                .configure(NodeConfig {
                    route: route.to_string(),
                    balancer: "mycluster".into(),
                    domain: String::new(),
                    host: "127.0.0.1".into(),
                    port: 8080,
                    scheme: "http".into(),
                })
                .unwrap();
            table.status(route, *load);
            table.set_context(route, "/app", &[], ContextState::Enabled);
        }
        table
    }

    fn route(target: Option<Target>) -> Option<String> {
        target.map(|t| t.route.clone())
    }

    #[test]
    fn a_session_stays_on_its_node_and_new_ones_go_where_there_is_room() {
        let mut table = table(&[("one", 10), ("two", 90)]);
        assert_eq!(
            route(table.choose("h", "/app/x", None, &[])).as_deref(),
            Some("two")
        );
        assert_eq!(
            route(table.choose("h", "/app/x", Some("one"), &[])).as_deref(),
            Some("one")
        );
    }

    #[test]
    fn disabled_takes_its_sessions_only_and_stopped_takes_nothing() {
        let mut table = table(&[("one", 50), ("two", 50)]);
        table.set_context("one", "/app", &[], ContextState::Disabled);
        for _ in 0..5 {
            assert_eq!(
                route(table.choose("h", "/app", None, &[])).as_deref(),
                Some("two")
            );
        }
        assert_eq!(
            route(table.choose("h", "/app", Some("one"), &[])).as_deref(),
            Some("one")
        );
        table.set_context("one", "/app", &[], ContextState::Stopped);
        assert_eq!(
            route(table.choose("h", "/app", Some("one"), &[])).as_deref(),
            Some("two")
        );
    }

    #[test]
    fn an_unhealthy_or_tried_node_is_passed_over() {
        let mut table = table(&[("one", 50), ("two", 50)]);
        table.set_healthy("one", false);
        assert_eq!(
            route(table.choose("h", "/app", Some("one"), &[])).as_deref(),
            Some("two")
        );
        table.set_healthy("one", true);
        let tried = ["two".to_string()];
        assert_eq!(
            route(table.choose("h", "/app", Some("two"), &tried)).as_deref(),
            Some("one")
        );
    }

    #[test]
    fn contexts_cover_whole_segments_and_aliases_pick_hosts() {
        let mut table = table(&[("one", 50)]);
        assert!(table.choose("h", "/apple", None, &[]).is_none());
        assert!(
            table
                .choose("h", "/app;jsessionid=x.one", None, &[])
                .is_some()
        );
        table.set_context(
            "one",
            "/",
            &["shop.test".to_string()],
            ContextState::Enabled,
        );
        assert!(
            table
                .choose("shop.test", "/app", None, &[])
                .is_some_and(|t| t.route == "one")
        );
    }

    #[test]
    fn nodes_with_about_the_same_room_take_turns() {
        let mut table = table(&[("one", 100), ("two", 99)]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(route(table.choose("h", "/app", None, &[])).unwrap());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn a_live_node_keeps_its_route_from_another_address() {
        let mut table = table(&[("one", 50)]);
        let impostor = NodeConfig {
            route: "one".into(),
            balancer: "mycluster".into(),
            domain: String::new(),
            host: "10.9.9.9".into(),
            port: 8080,
            scheme: "http".into(),
        };
        assert_eq!(table.configure(impostor), Err(Refused::RouteTaken));
        assert_eq!(table.node("one").unwrap().host, "127.0.0.1");
    }

    #[test]
    fn a_request_counts_in_flight_while_its_target_lives() {
        let mut table = table(&[("one", 50)]);
        let target = table.choose("h", "/app", None, &[]).unwrap();
        assert_eq!(
            table.set_context("one", "/app", &[], ContextState::Stopped),
            Some(1)
        );
        drop(target);
        assert_eq!(
            table.set_context("one", "/app", &[], ContextState::Stopped),
            Some(0)
        );
    }

    #[test]
    fn a_node_that_leaves_takes_its_contexts() {
        let mut table = table(&[("one", 50)]);
        assert!(table.remove_node("one"));
        assert!(table.choose("h", "/app", None, &[]).is_none());
        assert_eq!(table.contexts().count(), 0);
    }
}
