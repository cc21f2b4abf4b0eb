//! Gossip: joining the cluster (chitchat, discovery), the view every member computes from the
//! gossiped state, suspects, pauses, name clashes, what this node tells the others (its apps,
//! caches and interest), and leaving.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion, spawn_chitchat,
};
use immutant_foundation::clock::monotonic_ns;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::keys::{
    APP_KEY_PREFIX, CACHE_KEY_PREFIX, INTEREST_KEY_PREFIX, LEAVING_KEY, MANAGEMENT_KEY,
};
use super::lease_protocol::{LEASE_KEY_PREFIX, Renewal};
use super::leases::answer_renewals;
use super::{Cluster, ClusterError, PAUSE_GAP, Pauses, discovery, seal, sealed_gossip};
use crate::config::{ClusterConfig, ServerConfig};
use crate::vocabulary::membership::{Interest, Member, View};

/// How often members gossip. Failure detection follows from it: a member silent for about
/// eight rounds is dead.
const GOSSIP_INTERVAL: Duration = Duration::from_millis(100);
/// How long a second live node with this node's name may be seen before this node gives up.
const NAME_CLASH_PATIENCE: Duration = Duration::from_secs(3);
/// How long a member whose link dropped is kept out of the view unless gossip confirms it is
/// dead: a member that keeps gossiping after that was wrongly suspected, and comes back.
const SUSPICION_TIME: Duration = Duration::from_secs(3);
/// How long a new node listens for the cluster before it may run singletons: long enough to hear
/// a few beacons, so that it does not start what an older member already runs.
const DISCOVERY_TIME: Duration = Duration::from_millis(1500);
/// How long a leaving node lets its goodbye spread.
const GOODBYE_TIME: Duration = Duration::from_millis(300);

/// The value of an interest key when a durable subscriber wants the topic.
const DURABLE_INTEREST: &str = "durable";

impl Cluster {
    /// Joins the cluster that `node`'s config names: starts gossiping, announcing itself by
    /// multicast and to the seeds, and following the view.
    pub async fn join(
        node: &ServerConfig,
        config: &ClusterConfig,
        generation: u64,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let gossip_addr = SocketAddr::new(node.bind_address, config.port);
        let chitchat_id = ChitchatId::new(node.node_name.clone(), generation, gossip_addr);
        let me = chitchat_id.clone();
        let settings = ChitchatConfig {
            chitchat_id,
            cluster_id: config.name.clone(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: gossip_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig::new(
                8.0,
                1000,
                Duration::from_secs(10),
                GOSSIP_INTERVAL,
                Duration::from_secs(3600),
            ),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|state: &NodeState| {
                state.get(LEAVING_KEY).is_none()
            })),
            protocol_version: ProtocolVersion::V1,
        };
        let management = node.management_url();
        let key = Arc::new(seal::ClusterKey::derive(
            config.secret.expose(),
            &config.name,
            &node.node_name,
        ));
        let handle = spawn_chitchat(
            settings,
            vec![(MANAGEMENT_KEY.to_string(), management)],
            &sealed_gossip::SealedUdp(key.clone()),
        )
        .await
        .map_err(|error| ClusterError::Gossip {
            address: gossip_addr,
            reason: error.to_string(),
        })?;

        let (view_tx, view) = watch::channel(View::default());
        let (clash_tx, clash) = watch::channel(None);
        let live = handle.chitchat().lock().await.live_nodes_watcher();
        let naming = (node.node_name.clone(), generation, gossip_addr);
        let (suspects, suspected) = watch::channel(BTreeMap::new());
        tokio::spawn(follow_view(
            live.clone(),
            suspected,
            naming,
            view_tx,
            clash_tx,
        ));
        let cluster = Arc::new(Cluster {
            handle,
            view,
            clash,
            config: config.clone(),
            node_name: node.node_name.clone(),
            generation,
            joined: tokio::time::Instant::now(),
            key,
            suspects,
            app_processes: Default::default(),
            me,
            live,
            epochs: Default::default(),
            promises: Default::default(),
            dead: Default::default(),
            pauses: std::sync::Mutex::new(Pauses {
                last_tick_ns: monotonic_ns(),
                resumed_ns: None,
            }),
        });
        tokio::spawn(watch_pauses(cluster.clone()));
        cluster.discover(node, gossip_addr);
        tokio::spawn(answer_renewals(cluster.clone()));
        Ok(cluster)
    }

    /// Announces this node by multicast and gossips with every node of the cluster heard.
    fn discover(self: &Arc<Self>, node: &ServerConfig, gossip_addr: SocketAddr) {
        let config = &self.config;
        let group = SocketAddr::new(config.multicast_address, config.multicast_port);
        match immutant_foundation::net::multicast_socket(
            config.multicast_address,
            config.multicast_port,
            node.bind_address,
        ) {
            Ok(socket) => {
                let cluster = Arc::clone(self);
                let (name, node_name) = (config.name.clone(), node.node_name.clone());
                let key = self.key.clone();
                tokio::spawn(async move {
                    discovery::run(socket, group, (name, key), node_name, gossip_addr, |peer| {
                        // A handshake; from then on gossip keeps the two in touch.
                        let _ = cluster.handle.gossip(peer);
                    })
                    .await;
                });
            }
            Err(error) if config.seeds.is_empty() => warn!(
                "multicast discovery on {group} is unavailable ({error}); this node finds no peers unless given -Dimmutant.cluster.seeds"
            ),
            Err(error) => {
                info!("multicast discovery on {group} is unavailable ({error}); using the seeds")
            }
        }
    }

    /// The view, as it changes.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Takes the member `name` of `generation` out of the view now: its link dropped and it does
    /// not answer.
    pub fn suspect(&self, name: &str, generation: u64) {
        warn!("lost the link to {name}, which does not answer; it is out of the view");
        self.suspects.send_modify(|suspects| {
            // Suspicions that ran out are done with.
            suspects.retain(|_, since| since.elapsed() < SUSPICION_TIME);
            suspects.insert((name.to_string(), generation), tokio::time::Instant::now());
        });
    }

    /// Resolves once this node has listened for the cluster long enough to know its members.
    pub async fn discovered(&self) {
        tokio::time::sleep_until(self.joined + DISCOVERY_TIME).await;
    }

    /// Tells the cluster that a process of `app` runs here (`running`) or no longer does: the
    /// app runs here while any of its processes does.
    pub async fn set_app(&self, app: &str, running: bool) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        let key = format!("{APP_KEY_PREFIX}{app}");
        let running = {
            let mut processes = immutant_foundation::sync::lock(&self.app_processes);
            let count = processes.entry(app.to_string()).or_default();
            *count = match running {
                true => *count + 1,
                false => count.saturating_sub(1),
            };
            *count > 0
        };
        if running {
            chitchat.self_node_state().set(key, "running");
        } else {
            chitchat.self_node_state().delete(&key);
        }
    }

    /// Tells the cluster that this node holds the cache `name`.
    pub async fn set_cache(&self, name: &str, options: &immutant_protocol::CacheOptions) {
        let options = serde_json::to_string(options).unwrap_or_default();
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        chitchat
            .self_node_state()
            .set(format!("{CACHE_KEY_PREFIX}{name}"), options);
    }

    /// Tells the cluster which destinations this node's apps consume from now (`told` is what
    /// it said before).
    pub async fn set_interest(&self, told: &Interest, interest: &Interest) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        let state = chitchat.self_node_state();
        for gone in told.keys().filter(|name| !interest.contains_key(*name)) {
            state.delete(&format!("{INTEREST_KEY_PREFIX}{gone}"));
        }
        for (name, durable) in interest {
            if told.get(name) != Some(durable) {
                let value = if *durable { DURABLE_INTEREST } else { "1" };
                state.set(format!("{INTEREST_KEY_PREFIX}{name}"), value);
            }
        }
    }

    /// Resolves if this node cannot stay in its cluster: another live node has its name, or its
    /// gossip stopped (its socket failed). The node must then stop.
    pub async fn expelled(&self) -> ClusterError {
        let mut clash = self.clash.clone();
        let clashed = async {
            loop {
                if let Some(other) = *clash.borrow_and_update() {
                    return ClusterError::NameClash {
                        name: self.node_name.clone(),
                        other,
                    };
                }
                if clash.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            clashed = clashed => clashed,
            ended = self.handle.termination_watcher() => ClusterError::GossipStopped {
                address: self.me.gossip_advertise_addr,
                reason: match ended {
                    Ok(()) => "it was shut down".to_string(),
                    Err(error) => error.to_string(),
                },
            },
        }
    }

    /// Leaves at once: the other members drop this node from their views as soon as the
    /// goodbye reaches them, without waiting to detect it.
    pub async fn leave(&self) {
        {
            let chitchat = self.handle.chitchat();
            let mut chitchat = chitchat.lock().await;
            let state = chitchat.self_node_state();
            // Its apps have stopped: whatever leases it held are let go with the goodbye.
            let held: Vec<String> = state
                .key_values()
                .filter(|(key, _)| key.starts_with(LEASE_KEY_PREFIX))
                .map(|(key, _)| key.to_string())
                .collect();
            for key in held {
                state.delete(&key);
            }
            state.set(LEAVING_KEY, "true");
        }
        tokio::time::sleep(GOODBYE_TIME).await;
        let _ = self.handle.initiate_shutdown();
    }
}

/// Turns chitchat's live nodes into views, logs each change once, and watches for an older live
/// node with this node's name (`me` is this node's name, generation and gossip address): the
/// younger of two namesakes gives way.
async fn follow_view(
    mut live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    mut suspects: watch::Receiver<BTreeMap<(String, u64), tokio::time::Instant>>,
    me: (String, u64, SocketAddr),
    views: watch::Sender<View>,
    clash: watch::Sender<Option<SocketAddr>>,
) {
    let (self_name, self_generation, self_addr) = me;
    let mut clash_since: Option<tokio::time::Instant> = None;
    loop {
        let suspected: Vec<(String, u64)> = suspects
            .borrow_and_update()
            .iter()
            .filter(|(_, since)| since.elapsed() < SUSPICION_TIME)
            .map(|(member, _)| member.clone())
            .collect();
        let view = {
            let nodes = live.borrow_and_update();
            View::new(
                nodes
                    .iter()
                    .map(|(id, state)| member(id, state, self_addr))
                    .filter(|member| !suspected.contains(&(member.name.clone(), member.generation)))
                    .collect(),
            )
        };
        let twin = view
            .members
            .iter()
            .find(|member| {
                member.name == self_name
                    && member.gossip_addr != self_addr
                    && (member.generation, member.gossip_addr) < (self_generation, self_addr)
            })
            .map(|member| member.gossip_addr);
        match (twin, clash_since) {
            (Some(other), Some(since)) if since.elapsed() > NAME_CLASH_PATIENCE => {
                error!("another live node in the cluster is named '{self_name}' (at {other})");
                clash.send_replace(Some(other));
            }
            (Some(_), None) => clash_since = Some(tokio::time::Instant::now()),
            (None, _) => clash_since = None,
            _ => {}
        }
        // A view without this node is its own goodbye: nothing to tell.
        let leaving = !view.members.iter().any(|member| member.is_self);
        if !leaving && *views.borrow() != view {
            if views.borrow().names() != view.names() {
                info!("Cluster view: {view}");
            }
            views.send_replace(view);
        }
        // Recheck a suspected twin, or a suspicion running out, even if nothing else changes.
        let recheck = tokio::time::sleep(if clash_since.is_some() || !suspected.is_empty() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3600)
        });
        tokio::select! {
            changed = live.changed() => if changed.is_err() { return },
            _ = suspects.changed() => {}
            _ = recheck => {}
        }
    }
}

/// Notices this process being paused, for [`Cluster::settled`].
async fn watch_pauses(cluster: Arc<Cluster>) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = monotonic_ns();
        let mut pauses = immutant_foundation::sync::lock(&cluster.pauses);
        let gap = Duration::from_nanos(now.saturating_sub(pauses.last_tick_ns));
        if gap >= PAUSE_GAP {
            warn!(
                "this node was paused for {gap:.1?}; it takes no singletons or caches over until it has heard the cluster again"
            );
            pauses.resumed_ns = Some(now);
        }
        pauses.last_tick_ns = now;
    }
}

fn member(id: &ChitchatId, state: &NodeState, self_addr: SocketAddr) -> Member {
    Member {
        name: id.node_id.to_string(),
        generation: id.generation_id,
        gossip_addr: id.gossip_advertise_addr,
        management: state.get(MANAGEMENT_KEY).map(str::to_string),
        apps: keys_with_prefix(state, APP_KEY_PREFIX),
        interest: state
            .key_values()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix(INTEREST_KEY_PREFIX)?;
                Some((name.to_string(), value == DURABLE_INTEREST))
            })
            .collect(),
        leases: state
            .key_values()
            .filter_map(|(key, value)| {
                let app = key.strip_prefix(LEASE_KEY_PREFIX)?;
                Some((app.to_string(), Renewal::parse(value)?.epoch))
            })
            .collect(),
        caches: state
            .key_values()
            .filter_map(|(key, value)| {
                let name = key.strip_prefix(CACHE_KEY_PREFIX)?;
                Some((name.to_string(), serde_json::from_str(value).ok()?))
            })
            .collect(),
        is_self: id.gossip_advertise_addr == self_addr,
    }
}

/// The rest of each of a member's keys that start with `prefix`.
fn keys_with_prefix(state: &NodeState, prefix: &str) -> BTreeSet<String> {
    state
        .key_values()
        .filter_map(|(key, _)| key.strip_prefix(prefix).map(str::to_string))
        .collect()
}
