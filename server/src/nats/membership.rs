//! Membership on NATS: each node puts a heartbeat (its age, addresses, apps and leases) under
//! its name in the cluster's `members` bucket every half second; the bucket forgets a key a few
//! seconds after its last heartbeat, so a node that died leaves the view by itself. Every node
//! follows the bucket with a watcher, and makes its view of the members it heard from lately,
//! oldest first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation, Store};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Nats, NatsError, is_conflict, token, untoken};
use crate::vocabulary::membership::{Member, View};
use immutant_foundation::shutdown::Shutdown;
use immutant_foundation::sync::lock;

/// How often a node says it is alive.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long after its last heartbeat a node leaves the others' views.
const FORGET_AFTER: Duration = Duration::from_secs(3);
/// How long a node keeps trying to put its first heartbeat while NATS does not answer.
const FIRST_HEARTBEAT_PATIENCE: Duration = Duration::from_secs(15);

/// What a node says of itself in its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Heartbeat {
    /// When it started (unix ms): its age.
    generation: u64,
    /// Its HTTP address.
    address: Option<SocketAddr>,
    management: Option<String>,
    apps: BTreeSet<String>,
    leases: BTreeMap<String, u64>,
}

/// Why a node cannot be a member.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "another node named {name} is in the cluster (its heartbeats in NATS go on); give this node another name with -Djboss.node.name=NAME"
    )]
    NameTaken { name: String },
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// This node's membership in a cluster kept in NATS.
pub struct Membership {
    node_name: String,
    key: String,
    kv: Store,
    own: Mutex<Heartbeat>,
    /// How many processes of each app run here: two overlap while a web app is redeployed.
    app_processes: Mutex<BTreeMap<String, usize>>,
    /// Wakes the heartbeat at once when what it says changed.
    changed: Notify,
    view: watch::Sender<View>,
    clash: watch::Sender<bool>,
}

impl Membership {
    /// Joins: puts this node's first heartbeat (waiting out one a killed node of its name
    /// left), then keeps it alive and follows the others'.
    pub async fn join(
        nats: &Nats,
        node_name: &str,
        generation: u64,
        address: SocketAddr,
        management: String,
        shutdown: Shutdown,
    ) -> Result<Arc<Membership>, MembershipError> {
        let kv = nats.bucket("members", FORGET_AFTER).await?;
        let own = Heartbeat {
            generation,
            address: Some(address),
            management: Some(management),
            ..Heartbeat::default()
        };
        let key = token(node_name);
        let revision = first_heartbeat(&kv, &key, &own, node_name, nats).await?;
        let membership = Arc::new(Membership {
            node_name: node_name.to_string(),
            key,
            kv,
            own: Mutex::new(own),
            app_processes: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            view: watch::Sender::new(View::default()),
            clash: watch::Sender::new(false),
        });
        tokio::spawn(membership.clone().beat(revision, shutdown.clone()));
        tokio::spawn(membership.clone().follow(shutdown));
        Ok(membership)
    }

    pub fn view(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    /// Says whether a process of `app` runs here (counted: two may overlap).
    pub fn set_app(&self, app: &str, running: bool) {
        let present = {
            let mut processes = lock(&self.app_processes);
            let count = processes.entry(app.to_string()).or_default();
            if running {
                *count += 1;
            } else {
                *count = count.saturating_sub(1);
            }
            let present = *count > 0;
            if !present {
                processes.remove(app);
            }
            present
        };
        let mut own = lock(&self.own);
        if present {
            own.apps.insert(app.to_string());
        } else {
            own.apps.remove(app);
        }
        drop(own);
        self.changed.notify_one();
    }

    /// Says the lease this node holds on `app`'s singletons (none: it holds none).
    pub fn set_lease(&self, app: &str, epoch: Option<u64>) {
        let mut own = lock(&self.own);
        match epoch {
            Some(epoch) => own.leases.insert(app.to_string(), epoch),
            None => own.leases.remove(app),
        };
        drop(own);
        self.changed.notify_one();
    }

    /// The member that runs `app`'s singletons now: whoever holds their lease, as its
    /// heartbeat says.
    pub fn singletons_on(&self, app: &str) -> Option<String> {
        let view = self.view().borrow().clone();
        view.members
            .into_iter()
            .find(|member| member.leases.contains_key(app))
            .map(|member| member.name)
    }

    /// Resolves if another live node has this node's name; the node must then stop.
    pub async fn name_clash(&self) -> MembershipError {
        let _ = self.clash.subscribe().wait_for(|clash| *clash).await;
        MembershipError::NameTaken {
            name: self.node_name.clone(),
        }
    }

    /// Leaves at once: the others' watchers hear of it and drop this node. If NATS does not answer
    /// within [`HEARTBEAT`] × 4 the node stops anyway, and the others drop it when its heartbeat
    /// is forgotten.
    pub async fn leave(&self) {
        match tokio::time::timeout(HEARTBEAT * 4, self.kv.delete(&self.key)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!("Could not take this node out of the cluster's members in NATS: {error}")
            }
            Err(_) => warn!(
                "NATS did not answer in time to take this node out of the cluster's members; the others drop it when its heartbeat is forgotten"
            ),
        }
    }

    /// Puts a heartbeat every [`HEARTBEAT`], and at once when it changed.
    async fn beat(self: Arc<Self>, mut revision: u64, shutdown: Shutdown) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = self.changed.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            let own = lock(&self.own).clone();
            match self.put(&own, revision).await {
                Ok(Some(next)) => {
                    revision = next;
                    if failing {
                        info!("Heartbeats reach NATS again");
                    }
                    failing = false;
                }
                Ok(None) => {
                    self.clash.send_replace(true);
                    return;
                }
                Err(error) => {
                    if !failing {
                        warn!(
                            "Cannot put this node's heartbeat in NATS ({error}); the others drop it from their views after {} s",
                            FORGET_AFTER.as_secs()
                        );
                    }
                    failing = true;
                }
            }
        }
    }

    /// Puts `own` over the heartbeat of `revision`: the new revision, or none if another node
    /// of this name writes it.
    async fn put(&self, own: &Heartbeat, revision: u64) -> Result<Option<u64>, String> {
        let value = encode(own);
        match self.kv.update(&self.key, value.clone(), revision).await {
            Ok(next) => Ok(Some(next)),
            Err(error) if is_conflict(&error) => {
                // Forgotten (this node was paused or cut off for long), or another's.
                match self.kv.entry(&self.key).await.map_err(|e| e.to_string())? {
                    Some(entry) => {
                        let theirs = decode(&entry.value);
                        Ok(
                            (theirs.is_some_and(|theirs| theirs.generation == own.generation))
                                .then_some(entry.revision),
                        )
                    }
                    None => match self.kv.create(&self.key, value).await {
                        Ok(next) => Ok(Some(next)),
                        Err(error) => Err(error.to_string()),
                    },
                }
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// Follows the members bucket with a watcher (every heartbeat is pushed to it, so nothing
    /// is asked of NATS per read) and publishes the view when it changes, once the watcher has
    /// given the bucket's current keys. The bucket forgets a key without telling its watchers,
    /// so a member leaves the view when it was last heard [`FORGET_AFTER`] before this node's
    /// own latest heartbeat came back: a watcher that stalls (its server lost) freezes the view
    /// rather than emptying it, and is opened again when this node's own heartbeats stop coming
    /// back through it for as long.
    async fn follow(self: Arc<Self>, shutdown: Shutdown) {
        let mut heard = BTreeMap::new();
        let mut failing = false;
        loop {
            let mut watch = match self.kv.watch_with_history(">").await {
                Ok(watch) => watch,
                Err(error) => {
                    if !failing {
                        warn!("Cannot follow the cluster's members in NATS: {error}");
                    }
                    failing = true;
                    tokio::select! {
                        _ = tokio::time::sleep(HEARTBEAT) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            failing = false;
            let (mut own_heard, mut current) = (Instant::now(), false);
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => {
                            current |= entry.seen_current;
                            if entry.key == self.key {
                                own_heard = Instant::now();
                            }
                            hear(&mut heard, entry);
                        }
                        Some(Err(error)) => {
                            debug!("The watcher of the cluster's members failed: {error}");
                            break;
                        }
                        None => break,
                    },
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                if own_heard.elapsed() > FORGET_AFTER {
                    debug!(
                        "This node's heartbeats do not come back through the watcher; opening it again"
                    );
                    break;
                }
                heard.retain(|_, member| {
                    own_heard.saturating_duration_since(member.at) < FORGET_AFTER
                });
                if current {
                    self.publish(&heard);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Publishes the view made of the members `heard` (and this node), if it changed.
    fn publish(&self, heard: &BTreeMap<String, Heard>) {
        let own = lock(&self.own).clone();
        let others = heard
            .iter()
            .filter(|(name, _)| **name != self.node_name)
            .map(|(name, member)| (name.clone(), member.heartbeat.clone()));
        let members = std::iter::once((self.node_name.clone(), own))
            .chain(others)
            .map(|(name, heartbeat)| Member {
                is_self: name == self.node_name,
                name,
                generation: heartbeat.generation,
                gossip_addr: heartbeat
                    .address
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                management: heartbeat.management,
                apps: heartbeat.apps,
                interest: BTreeMap::new(),
                caches: BTreeMap::new(),
                leases: heartbeat.leases,
            })
            .collect();
        let view = View::new(members);
        if self.view.borrow().names() != view.names() {
            info!("Cluster view: {view}");
        }
        self.view.send_if_modified(|old| {
            let changed = *old != view;
            *old = view;
            changed
        });
    }
}

/// A member as this node last heard of it.
struct Heard {
    heartbeat: Heartbeat,
    /// The revision of its heartbeat, and when that revision reached this node: a revision
    /// heard again (a watcher opened again gives the current ones) is no newer.
    revision: u64,
    at: Instant,
}

/// Takes in what the watcher says of a member: its heartbeat, or that it left.
fn hear(heard: &mut BTreeMap<String, Heard>, entry: Entry) {
    let Some(name) = untoken(&entry.key) else {
        return;
    };
    match (entry.operation, decode(&entry.value)) {
        (Operation::Put, Some(heartbeat)) => {
            if heard
                .get(&name)
                .is_none_or(|known| known.revision != entry.revision)
            {
                let at = Instant::now();
                let revision = entry.revision;
                heard.insert(
                    name,
                    Heard {
                        heartbeat,
                        revision,
                        at,
                    },
                );
            }
        }
        _ => {
            heard.remove(&name);
        }
    }
}

/// Puts this node's first heartbeat: the revision it got. A key of its name that a killed node
/// left is waited out (the bucket forgets it); one that goes on changing is another node's.
async fn first_heartbeat(
    kv: &Store,
    key: &str,
    own: &Heartbeat,
    node_name: &str,
    nats: &Nats,
) -> Result<u64, MembershipError> {
    let mut seen = None;
    // A bucket just made may not answer for a moment, while its servers elect its leader.
    let patience = tokio::time::Instant::now() + FIRST_HEARTBEAT_PATIENCE;
    loop {
        match kv.create(key, encode(own)).await {
            Ok(revision) => return Ok(revision),
            Err(error) if is_conflict(&error) => {
                let entry = match kv.entry(key).await {
                    Ok(entry) => entry,
                    Err(_) if tokio::time::Instant::now() < patience => {
                        tokio::time::sleep(HEARTBEAT).await;
                        continue;
                    }
                    Err(error) => {
                        return Err(nats
                            .setup_error(format!("the member {node_name}"), error)
                            .into());
                    }
                };
                let revision = entry.map(|entry| entry.revision);
                if seen.is_some() && revision.is_some() && seen != revision {
                    return Err(MembershipError::NameTaken {
                        name: node_name.to_string(),
                    });
                }
                seen = revision;
                tokio::time::sleep(HEARTBEAT * 2).await;
            }
            Err(_) if tokio::time::Instant::now() < patience => {
                tokio::time::sleep(HEARTBEAT).await;
            }
            Err(error) => {
                return Err(nats
                    .setup_error(format!("the member {node_name}"), error)
                    .into());
            }
        }
    }
}

fn encode(heartbeat: &Heartbeat) -> bytes::Bytes {
    serde_json::to_vec(heartbeat).unwrap_or_default().into()
}

fn decode(value: &[u8]) -> Option<Heartbeat> {
    serde_json::from_slice(value).ok()
}
