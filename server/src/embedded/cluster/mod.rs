//! Clustering: nodes started with `standalone-ha.toml` find each other ([`discovery`] by
//! multicast, or seeds), agree on who is alive through gossip with phi-accrual failure detection
//! (the chitchat library, on the cluster port, every datagram sealed with the cluster's secret:
//! [`seal`]), and share small state: each member's start time,
//! management URL and running apps. From that every member computes the same [`View`], oldest
//! first, which singletons are elected on, and the singletons' holder keeps its [`lease`].

mod discovery;
pub mod election;
mod keys;
pub mod lease;
pub mod seal;
pub mod singletons;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
    spawn_chitchat,
};
use immutant_foundation::clock::monotonic_ns;
use lease::{ACK_KEY_PREFIX, Answered, LEASE_KEY_PREFIX, Promise, Renewal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{ClusterConfig, ServerConfig};
use crate::vocabulary::membership::{Interest, Member, View};
use keys::{
    APP_KEY_PREFIX, CACHE_KEY_PREFIX, EPOCH_KEY_PREFIX, INTEREST_KEY_PREFIX, LEAVING_KEY,
    MANAGEMENT_KEY,
};

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

/// Why a node cannot be, or stay, in its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot gossip on the cluster port {address}: {reason}; if another node uses it, shift this node's ports with -Djboss.socket.binding.port-offset=100"
    )]
    Gossip { address: SocketAddr, reason: String },
    #[error(
        "another live node in the cluster is named '{name}' (at {other}); give each node its own name with -Djboss.node.name"
    )]
    NameClash { name: String, other: SocketAddr },
}

/// This node's membership in its cluster.
pub struct Cluster {
    handle: ChitchatHandle,
    view: watch::Receiver<View>,
    clash: watch::Receiver<Option<SocketAddr>>,
    config: ClusterConfig,
    node_name: String,
    /// When this node started: its age in the cluster.
    generation: u64,
    joined: tokio::time::Instant,
    /// The keys gossip, beacons and links are sealed with.
    key: Arc<seal::ClusterKey>,
    /// Members whose link dropped and could not be opened again, by name and generation, with
    /// when: out of the view at once, before gossip notices (what FD_SOCK did for JGroups).
    suspects: watch::Sender<BTreeMap<(String, u64), tokio::time::Instant>>,
    /// How many processes of each app run here: two overlap while a web app is redeployed.
    app_processes: std::sync::Mutex<BTreeMap<String, usize>>,
    /// This node's identity in the gossip.
    me: ChitchatId,
    /// The live members' gossiped state, as it changes.
    live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    /// The highest epoch each app's singletons were taken with, by a live member.
    epochs: std::sync::Mutex<BTreeMap<String, u64>>,
    /// The promises this node made by answering holders' renewals, per app.
    promises: std::sync::Mutex<BTreeMap<String, Promise>>,
    /// Members proven dead (their link closed and their port refused), by name and generation,
    /// oldest first.
    dead: std::sync::Mutex<std::collections::VecDeque<(String, u64)>>,
    pauses: std::sync::Mutex<Pauses>,
}

/// The value of an interest key when a durable subscriber wants the topic.
const DURABLE_INTEREST: &str = "durable";

/// How many members proven dead are remembered.
const DEAD_REMEMBERED: usize = 1024;
/// A gap this long between two ticks of a 50 ms timer means the process was paused (SIGSTOP, a
/// frozen VM) or starved.
const PAUSE_GAP: Duration = Duration::from_millis(500);
/// How long a node that was paused waits before it may take singletons over: its view is what
/// it was before the pause, and its failure detector may see the others as gone until their
/// gossip reaches it again.
const RESYNC_TIME: Duration = Duration::from_secs(2);

/// When this process last ran its pause watch, and when it last came back from a pause (on the
/// host's boot clock, in nanoseconds: it counts a suspended host's sleep too).
#[derive(Debug, Clone, Copy)]
struct Pauses {
    last_tick_ns: u64,
    resumed_ns: Option<u64>,
}

impl Cluster {
    /// The keys the mesh's links are sealed with.
    pub fn key(&self) -> &seal::ClusterKey {
        &self.key
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// When this node started: its age in the cluster.
    pub fn generation(&self) -> u64 {
        self.generation
    }

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
        let management = format!("http://{}", node.management_address());
        let key = Arc::new(seal::ClusterKey::derive(
            config.secret.expose(),
            &config.name,
            &node.node_name,
        ));
        let handle = spawn_chitchat(
            settings,
            vec![(MANAGEMENT_KEY.to_string(), management)],
            &seal::SealedUdp(key.clone()),
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

    /// The members a side of the cluster needs for its singletons to run.
    pub fn singleton_quorum(&self) -> u32 {
        self.config.singleton_quorum
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

    /// The fencing epoch this node takes `app`'s singletons over with: past every epoch any
    /// member, live or gone, has said it took them with, and never below the clock; told to
    /// the cluster at once. So epochs grow with every handover whatever the members' clocks
    /// say.
    pub async fn take_epoch(&self, app: &str) -> u64 {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        let key = format!("{EPOCH_KEY_PREFIX}{app}");
        let highest = chitchat
            .node_states()
            .values()
            .filter_map(|state| state.get(&key)?.parse::<u64>().ok())
            .max();
        let epoch = next_epoch(
            immutant_foundation::clock::now_ms(),
            highest,
            epoch_tag(&self.node_name),
        );
        let state = chitchat.self_node_state();
        state.set(key, epoch.to_string());
        state.set(
            format!("{LEASE_KEY_PREFIX}{app}"),
            Renewal { epoch, seq: 0 }.value(),
        );
        metrics::counter!("immutant_singleton_handovers_total", "app" => app.to_string())
            .increment(1);
        epoch
    }

    /// Gossips a renewal of this node's lease on `app`'s singletons.
    pub async fn renew(&self, app: &str, renewal: Renewal) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        chitchat
            .self_node_state()
            .set(format!("{LEASE_KEY_PREFIX}{app}"), renewal.value());
    }

    /// Lets this node's lease on `app`'s singletons go: call it only once they have stopped
    /// here (its app said so, or the lease's deadline passed), for members may take them over
    /// at once.
    pub async fn release(&self, app: &str) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        chitchat
            .self_node_state()
            .delete(&format!("{LEASE_KEY_PREFIX}{app}"));
    }

    /// How far the other members of the view have answered this node's renewals of its lease
    /// on `app` under `epoch`.
    pub fn answered(&self, app: &str, epoch: u64) -> Answered {
        lease::answered(
            &self.me,
            app,
            epoch,
            &self.view.borrow(),
            &self.live.borrow(),
        )
    }

    /// Whether this node has been running without a pause long enough to trust its view: not
    /// while it is coming back from one, nor for a while after.
    pub fn settled(&self) -> bool {
        let pauses = *immutant_foundation::sync::lock(&self.pauses);
        let now = monotonic_ns();
        // A pause the watch has not ticked since is one being come back from now.
        now.saturating_sub(pauses.last_tick_ns) < nanos(PAUSE_GAP)
            && pauses
                .resumed_ns
                .is_none_or(|resumed| now.saturating_sub(resumed) >= nanos(RESYNC_TIME))
    }

    /// Whether this node may take `app`'s singletons over now, as far as its promises go: none
    /// binds it (see [`Promise::binds`]).
    pub async fn free_to_take(&self, app: &str) -> bool {
        let Some(promise) = immutant_foundation::sync::lock(&self.promises)
            .get(app)
            .cloned()
        else {
            return true;
        };
        let dead: Vec<(String, u64)> = immutant_foundation::sync::lock(&self.dead)
            .iter()
            .cloned()
            .collect();
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        // Every member's last state, the gone ones' too: a holder that let go and then died.
        let bound = promise.binds(
            std::time::Instant::now(),
            &dead,
            chitchat.node_states().iter(),
            app,
        );
        !bound
    }

    /// The highest epoch a live member took `app`'s singletons with, if any did.
    pub fn highest_epoch(&self, app: &str) -> Option<u64> {
        immutant_foundation::sync::lock(&self.epochs)
            .get(app)
            .copied()
    }

    /// Records that the member `name` of `generation` is dead: its link closed and its port
    /// refuses connections, so it runs nothing any more.
    pub fn proven_dead(&self, name: &str, generation: u64) {
        let mut dead = immutant_foundation::sync::lock(&self.dead);
        if dead.len() >= DEAD_REMEMBERED {
            dead.pop_front();
        }
        dead.push_back((name.to_string(), generation));
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

    /// Resolves if another live node has this node's name; the node must then stop.
    pub async fn name_clash(&self) -> ClusterError {
        let mut clash = self.clash.clone();
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

/// How many nodes' tags an epoch has room for in its low digits.
const EPOCH_TAGS: u64 = 1024;

/// The tag that keeps the epochs of two nodes that take over at once apart.
fn epoch_tag(node_name: &str) -> u64 {
    // A fixed hash: every member must compute the same tag for a node, whatever built it.
    immutant_foundation::hash::fixed_hash(&[node_name]) % EPOCH_TAGS
}

/// The epoch after `highest` (the highest any member took): a count, not below the clock in
/// milliseconds (`now`), times [`EPOCH_TAGS`], plus this node's `tag`.
fn next_epoch(now: u64, highest: Option<u64>, tag: u64) -> u64 {
    let count = highest.map_or(now, |highest| now.max(highest / EPOCH_TAGS + 1));
    count.saturating_mul(EPOCH_TAGS).saturating_add(tag)
}

fn nanos(duration: Duration) -> u64 {
    duration.as_nanos() as u64
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
                "this node was paused for {gap:.1?}; it takes no singletons over until it has heard the cluster again"
            );
            pauses.resumed_ns = Some(now);
        }
        pauses.last_tick_ns = now;
    }
}

/// Answers the holders' lease renewals (see [`lease`]) as gossip brings them, each answer a
/// promise; and keeps the highest epoch of each app known, for fencing.
async fn answer_renewals(cluster: Arc<Cluster>) {
    let mut live = cluster.live.clone();
    let mut view = cluster.view.clone();
    loop {
        let states = live.borrow_and_update().clone();
        let current = view.borrow_and_update().clone();
        let dead: Vec<(String, u64)> = immutant_foundation::sync::lock(&cluster.dead)
            .iter()
            .cloned()
            .collect();
        {
            let chitchat = cluster.handle.chitchat();
            let mut chitchat = chitchat.lock().await;
            let mine = chitchat.self_node_state();
            let highest = lease::highest_epochs(states.values().chain([&*mine]));
            let now = std::time::Instant::now();
            let bound = {
                let mut promises = immutant_foundation::sync::lock(&cluster.promises);
                promises.retain(|app, promise| promise.binds(now, &dead, states.iter(), app));
                promises.clone()
            };
            let knowing = lease::Answering {
                me: &cluster.me,
                mine,
                live: &states,
                view: &current,
                highest: &highest,
                bound: &bound,
            };
            let answers = lease::renewals_to_answer(&knowing);
            *immutant_foundation::sync::lock(&cluster.epochs) = highest;
            for (app, ack) in answers {
                let key = format!("{ACK_KEY_PREFIX}{app}");
                let value = ack.value();
                if mine.get(&key) == Some(value.as_str()) {
                    continue;
                }
                // The promise first, from now rather than from when the renewal was sent, so
                // that it always outlasts the holder's deadline.
                let until = std::time::Instant::now() + lease::LEASE_TIME + lease::MARGIN;
                immutant_foundation::sync::lock(&cluster.promises).insert(
                    app,
                    Promise {
                        holder: (ack.holder, ack.generation),
                        epoch: ack.renewal.epoch,
                        until,
                    },
                );
                mine.set(key, value);
            }
        }
        tokio::select! {
            changed = live.changed() => if changed.is_err() { return },
            changed = view.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(lease::RENEW_INTERVAL) => {}
        }
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

#[cfg(test)]
mod tests {
    use super::{epoch_tag, next_epoch};

    #[test]
    fn an_epoch_grows_past_every_earlier_one_whatever_the_clock_says() {
        assert_eq!(next_epoch(1_000, None, 7), 1_024_007);
        assert_eq!(next_epoch(1_000, Some(500 * 1024 + 3), 7), 1_024_007);
        // A clock behind the last holder's (another host's, or set back).
        assert_eq!(
            next_epoch(1_000, Some(5_000 * 1024 + 3), 7),
            5_001 * 1024 + 7
        );
        // Two nodes taking over at once past the same epoch take different ones.
        assert_ne!(
            next_epoch(1_000, Some(5), epoch_tag("one")),
            next_epoch(1_000, Some(5), epoch_tag("two"))
        );
    }
}
