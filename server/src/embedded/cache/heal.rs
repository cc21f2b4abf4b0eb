//! After a partition heals, the writes that one side answered while the sides could not see
//! each other. Under a quorum of half the cluster or less (1, by default) each side of a clean
//! partition is a cluster of its own, with a primary of its own; once healed, the primary with
//! the newer lease leads the cache and the other takes its state in. So that what clients wrote
//! on that other side is not lost with it, its primary first notes the writes it answered there
//! (its side writes) and hands them to the new primary, which applies each one written later
//! than what it holds of its key: the last writer wins, by when each was written. A session
//! written on the side the balancer kept sending to survives the heal, whichever side's lease
//! is the newer.
//!
//! A primary that was paused rather than cut off may hand writes too, but none is taken that
//! the next primary already had: what it answered reached the holders the next primary
//! gathered, so each such write is there, or was written over since (a later version), or
//! removed or expired since and maybe forgotten (then it is older than the store's
//! `removals_forgotten_through`, which a removal's version is always past, or expired on
//! both sides: see `Store::apply_side_writes`). Under a majority quorum no two sides answer at
//! once, and nothing is handed.

use bytes::Bytes;
use immutant_protocol::CacheOutcome;
use tracing::{debug, info};

use super::peer::{PeerAnswer, PeerRequest, pack};
use super::rebalance::pages;
use super::store::{Entry, Store};
use super::{Cache, Caches};
use crate::vocabulary::cache::CacheError;
use immutant_foundation::clock::now_ms;
use immutant_foundation::sync::lock;

impl Caches {
    /// Hands this node's side writes still to hand to the cache's primary (or applies them, if
    /// this node is the primary now); those that do not get through are tried again with the
    /// next rebalance.
    pub(super) async fn hand_side_writes(&self, cache: &Cache) {
        let writes = std::mem::take(&mut *lock(&cache.side_writes));
        if writes.is_empty() {
            return;
        }
        // A page that fails puts every write back, those taken included: handed again, each
        // is not later than what the primary made of it (`Store::apply_side_writes`).
        let handed = match self.primary(cache) {
            Some((primary, Some(_))) if primary == self.node => {
                self.take_side_writes(cache, writes.clone()).await.is_ok()
            }
            Some((primary, Some(_))) => self.send_side_writes(cache, &primary, &writes).await,
            _ => false,
        };
        if handed {
            info!(
                "cache {}: {} writes this node answered while the cluster was split are handed to its primary",
                cache.name,
                writes.len()
            );
        } else {
            debug!("cache {}: side writes not handed yet", cache.name);
            lock(&cache.side_writes).extend(writes);
        }
    }

    /// Sends `writes` to `primary`, a page at a time; true once it has taken them all.
    async fn send_side_writes(
        &self,
        cache: &Cache,
        primary: &str,
        writes: &[(String, Entry)],
    ) -> bool {
        for page in pages(writes.to_vec(), self.page_bytes) {
            let (entries, values) = pack(&page);
            let request = PeerRequest::SideWrites { entries };
            let answer = self.peers.call(primary, &cache.name, request, values).await;
            if !matches!(answer, Ok((PeerAnswer::Done { .. }, _))) {
                return false;
            }
        }
        true
    }

    /// Applies, as the cache's primary, the side writes of another side of a healed partition:
    /// each written later than what this node holds of its key, as a new write copied to the
    /// owners like any other.
    pub(super) async fn take_side_writes(
        &self,
        cache: &Cache,
        writes: Vec<(String, Entry)>,
    ) -> Result<(CacheOutcome, Bytes), CacheError> {
        let apply = |store: &mut Store, writer| store.apply_side_writes(writes, writer, now_ms());
        self.apply_as_primary(cache, apply, None, None).await.0
    }

    /// Whether two sides of the cluster can each have a primary at once: the quorum is half
    /// the members in the view, or fewer.
    pub(super) fn sides_may_split(&self) -> bool {
        self.cluster.as_ref().is_some_and(|cluster| {
            let members = cluster.view().borrow().members.len();
            2 * cluster.singleton_quorum() as usize <= members
        })
    }
}
