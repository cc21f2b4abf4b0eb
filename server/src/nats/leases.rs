//! Singleton leases on NATS: an app's lease is the key of its name in the cluster's `leases`
//! bucket. A node takes it by creating the key (only one create of an absent key succeeds), and
//! keeps it by updating it on the revision it last wrote, six times per lease time; the bucket
//! forgets the key a lease time after the last update (its `max_age`, read from the bucket, so
//! every node goes by the same), so a holder that died or was cut off loses it by itself, and
//! the next create wins.
//!
//! The epoch is the revision the key was created with: a stream sequence, so it only grows. A
//! holder counts its lease as good until the lease time less [`CLOCK_MARGIN`] after it sent its
//! last successful update: the bucket cannot forget the key before then (it counts from when
//! the server stored the update, which is later), unless the NATS servers' clocks disagree by
//! more than the margin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use serde::{Deserialize, Serialize};

use super::{Nats, NatsError, is_conflict, token};
use immutant_foundation::sync::lock;

/// What a holder takes off the lease time, for the NATS servers' clocks and timers.
pub const CLOCK_MARGIN: Duration = Duration::from_millis(300);
/// The shortest lease time: the margin must leave the holder some of it.
pub const SHORTEST_LEASE: Duration = Duration::from_millis(1000);

/// What a lease key holds.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseValue {
    node: String,
    /// The revision the key was created with; 0 in the create itself.
    epoch: u64,
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub epoch: u64,
    /// The revision of this node's last write of the key.
    revision: u64,
}

/// What became of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The key has this node's update.
    Renewed,
    /// The key is gone or another node's: the lease is lost.
    Lost,
    /// NATS did not answer: the lease holds until its deadline, and renewals go on.
    Unanswered,
}

/// The cluster's singleton leases.
pub struct Leases {
    kv: Store,
    /// How long the bucket keeps a lease after its last renewal.
    lease_time: Duration,
    node_name: String,
    /// The highest epoch seen for each app.
    highest: Mutex<HashMap<String, u64>>,
}

impl Leases {
    /// Opens the cluster's leases bucket, made with `lease_time` if no node made it yet.
    pub async fn open(
        nats: &Nats,
        node_name: &str,
        lease_time: Duration,
    ) -> Result<Arc<Leases>, NatsError> {
        let kv = nats.bucket("leases", lease_time).await?;
        // The first node made it: its lease time holds for every node.
        let lease_time = kv.stream.cached_info().config.max_age;
        if lease_time < SHORTEST_LEASE {
            return Err(nats.setup_error(
                "the leases bucket".to_string(),
                format!("it keeps leases {lease_time:?}, under {SHORTEST_LEASE:?}"),
            ));
        }
        Ok(Arc::new(Leases {
            kv,
            lease_time,
            node_name: node_name.to_string(),
            highest: Mutex::new(HashMap::new()),
        }))
    }

    /// How often the holder renews, and others look whether the lease is free.
    pub fn renew_interval(&self) -> Duration {
        self.lease_time / 6
    }

    /// How long after a successful renewal was sent the holder counts its lease as good.
    pub fn good_for(&self) -> Duration {
        self.lease_time.saturating_sub(CLOCK_MARGIN)
    }

    /// The highest epoch this node has seen `app`'s singletons run under.
    pub fn highest_epoch(&self, app: &str) -> Option<u64> {
        lock(&self.highest).get(app).copied()
    }

    fn saw(&self, app: &str, epoch: u64) {
        let mut highest = lock(&self.highest);
        let known = highest.entry(app.to_string()).or_default();
        *known = (*known).max(epoch);
    }

    /// Takes `app`'s lease if no one holds it: the lease, or none if someone does (or NATS did
    /// not answer).
    pub async fn try_take(&self, app: &str) -> Option<Held> {
        let key = token(app);
        match self.kv.entry(&key).await {
            Ok(Some(entry)) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                if let Ok(value) = serde_json::from_slice::<LeaseValue>(&entry.value) {
                    let epoch = if value.epoch == 0 {
                        entry.revision
                    } else {
                        value.epoch
                    };
                    self.saw(app, epoch);
                }
                return None;
            }
            Ok(_) => {}
            Err(_) => return None,
        }
        let value = self.value(0);
        match self.kv.create(&key, value).await {
            Ok(revision) => {
                self.saw(app, revision);
                Some(Held {
                    epoch: revision,
                    revision,
                })
            }
            // Taken by another node meanwhile, or no answer: looked at again later.
            Err(_) => None,
        }
    }

    /// Renews `held`.
    pub async fn renew(&self, app: &str, held: &mut Held) -> Renewal {
        match self
            .kv
            .update(token(app), self.value(held.epoch), held.revision)
            .await
        {
            Ok(revision) => {
                held.revision = revision;
                Renewal::Renewed
            }
            // Either another node's, or this node's own renewal that timed out here but was
            // written: the key says which.
            Err(error) if is_conflict(&error) => match self.kv.entry(token(app)).await {
                Ok(Some(entry)) if self.is_mine(&entry, held.epoch) => {
                    held.revision = entry.revision;
                    Renewal::Unanswered
                }
                Ok(_) => Renewal::Lost,
                Err(_) => Renewal::Unanswered,
            },
            Err(_) => Renewal::Unanswered,
        }
    }

    /// Whether `entry` is this node's lease of `epoch`.
    fn is_mine(&self, entry: &async_nats::jetstream::kv::Entry, epoch: u64) -> bool {
        entry.operation == async_nats::jetstream::kv::Operation::Put
            && serde_json::from_slice::<LeaseValue>(&entry.value).is_ok_and(|value| {
                value.node == self.node_name
                    && (value.epoch == epoch || (value.epoch == 0 && entry.revision == epoch))
            })
    }

    /// Lets `held` go at once, if the key is still this node's last write.
    pub async fn release(&self, app: &str, held: &Held) {
        let _ = self
            .kv
            .delete_expect_revision(token(app), Some(held.revision))
            .await;
    }

    fn value(&self, epoch: u64) -> bytes::Bytes {
        let value = LeaseValue {
            node: self.node_name.clone(),
            epoch,
        };
        serde_json::to_vec(&value).unwrap_or_default().into()
    }
}
