//! Leases: taking, renewing and letting go of this node's leases (on an app's singletons, or on
//! a cache's writes), and answering the other holders' renewals with promises; the gossip side
//! of [`lease_protocol`]'s pure rules.

use std::sync::Arc;
use std::time::Duration;

use immutant_foundation::clock::monotonic_ns;

use super::election::{LeaseSubject, SingletonElection};
use super::keys::EPOCH_KEY_PREFIX;
use super::lease_protocol::{self, ACK_KEY_PREFIX, Answered, LEASE_KEY_PREFIX, Promise, Renewal};
use super::{Cluster, PAUSE_GAP};

/// How many members proven dead are remembered.
const DEAD_REMEMBERED: usize = 1024;
/// How long a node that was paused waits before it may take singletons over: its view is what
/// it was before the pause, and its failure detector may see the others as gone until their
/// gossip reaches it again.
const RESYNC_TIME: Duration = Duration::from_secs(2);

impl Cluster {
    /// The member that runs `app`'s singletons now, as the election decides; none below the
    /// quorum.
    pub fn singletons_on(&self, app: &str) -> Option<String> {
        let view = self.view().borrow().clone();
        let subject = LeaseSubject::Singletons(app.to_string());
        SingletonElection::new(self.singleton_quorum())
            .master(&view, &subject)
            .map(|member| member.name.clone())
    }

    /// The fencing epoch this node takes the lease `lease` over with (an app's singletons, or
    /// `cache:<name>`, a cache's writes: see `LeaseSubject::key`): past every epoch any member,
    /// live or gone, has said it took it with, and never below the clock; told to the cluster
    /// at once. So epochs grow with every handover whatever the members' clocks say.
    pub async fn take_epoch(&self, lease: &str) -> u64 {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        let key = format!("{EPOCH_KEY_PREFIX}{lease}");
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
            format!("{LEASE_KEY_PREFIX}{lease}"),
            Renewal { epoch, seq: 0 }.value(),
        );
        epoch
    }

    /// Gossips a renewal of this node's lease `lease`.
    pub async fn renew(&self, lease: &str, renewal: Renewal) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        chitchat
            .self_node_state()
            .set(format!("{LEASE_KEY_PREFIX}{lease}"), renewal.value());
    }

    /// Lets this node's lease `lease` go: call it only once what it guards has stopped here
    /// (its app said so, or the lease's deadline passed), for members may take it over at once.
    pub async fn release(&self, lease: &str) {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        chitchat
            .self_node_state()
            .delete(&format!("{LEASE_KEY_PREFIX}{lease}"));
    }

    /// How far the other members of the view have answered this node's renewals of its lease
    /// `lease` under `epoch`.
    pub fn answered(&self, lease: &str, epoch: u64) -> Answered {
        lease_protocol::answered(
            &self.me,
            lease,
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

    /// Whether this node may take the lease `lease` over now, as far as its promises go: none
    /// binds it (see [`Promise::binds`]).
    pub async fn free_to_take(&self, lease: &str) -> bool {
        let Some(promise) = immutant_foundation::sync::lock(&self.promises)
            .get(lease)
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
            lease,
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

/// Answers the holders' lease renewals (see [`lease_protocol`]) as gossip brings them, each answer a
/// promise; and keeps the highest epoch of each app known, for fencing.
pub(super) async fn answer_renewals(cluster: Arc<Cluster>) {
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
            let highest = lease_protocol::highest_epochs(states.values().chain([&*mine]));
            let now = std::time::Instant::now();
            let bound = {
                let mut promises = immutant_foundation::sync::lock(&cluster.promises);
                promises.retain(|app, promise| promise.binds(now, &dead, states.iter(), app));
                promises.clone()
            };
            let knowing = lease_protocol::Answering {
                me: &cluster.me,
                mine,
                live: &states,
                view: &current,
                highest: &highest,
                bound: &bound,
            };
            let answers = lease_protocol::renewals_to_answer(&knowing);
            *immutant_foundation::sync::lock(&cluster.epochs) = highest;
            for (app, ack) in answers {
                let key = format!("{ACK_KEY_PREFIX}{app}");
                let value = ack.value();
                if mine.get(&key) == Some(value.as_str()) {
                    continue;
                }
                // The promise first, from now rather than from when the renewal was sent, so
                // that it always outlasts the holder's deadline.
                let until =
                    std::time::Instant::now() + lease_protocol::LEASE_TIME + lease_protocol::MARGIN;
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
            _ = tokio::time::sleep(lease_protocol::RENEW_INTERVAL) => {}
        }
    }
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
