//! Where a cache's entries live: which members hold the cache, which of them is its primary,
//! and which own a key (all of them for a replicated cache; for a distributed one, the primary
//! and `owners - 1` others by rendezvous hashing), the primary first.

use immutant_protocol::CacheMode;

use super::{Cache, Caches};
use crate::embedded::cluster::election::{LeaseSubject, SingletonElection};
use crate::vocabulary::membership::Member;
use immutant_foundation::hash::fixed_hash;
use immutant_foundation::sync::lock;

impl Caches {
    /// The names of the members of the view, oldest first, that `keep` picks (none on a
    /// standalone node). Read in place: this runs on every write.
    pub(super) fn members_where(&self, keep: impl Fn(&Member) -> bool) -> Vec<String> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let view = cluster.view();
        let view = view.borrow();
        view.members
            .iter()
            .filter(|member| keep(member))
            .map(|member| member.name.clone())
            .collect()
    }

    /// The members that hold `cache`, oldest first (this node included).
    pub(super) fn holders(&self, cache: &Cache) -> Vec<String> {
        let joined = lock(&cache.joined).clone();
        let holders = self.members_where(|member| {
            member.name == self.node
                || member.caches.contains_key(&cache.name)
                || joined.contains(&member.name)
        });
        if holders.is_empty() {
            vec![self.node.clone()]
        } else {
            holders
        }
    }

    /// The cache's primary as the view shows it, with the epoch of its lease if it holds one
    /// yet: the holder with the newest lease, else the oldest holder (which takes the lease);
    /// none below the quorum or on a standalone node.
    pub(super) fn primary(&self, cache: &Cache) -> Option<(String, Option<u64>)> {
        let cluster = self.cluster.as_ref()?;
        let subject = LeaseSubject::CachePrimary(cache.name.clone());
        let view = cluster.view();
        let view = view.borrow();
        let primary = SingletonElection::new(cluster.singleton_quorum()).master(&view, &subject)?;
        let epoch = primary.leases.get(&subject.key()).copied();
        Some((primary.name.clone(), epoch))
    }

    /// The members that hold `key` of `cache`, the primary first.
    pub(super) fn owners(&self, cache: &Cache, key: &str) -> Vec<String> {
        let mut holders = self.holders(cache);
        let primary = self.primary(cache).map(|(primary, _)| primary);
        let led = holders
            .iter()
            .position(|holder| Some(holder) == primary.as_ref());
        if let Some(at) = led {
            let primary = holders.remove(at);
            holders.insert(0, primary);
        }
        match cache.options.mode {
            CacheMode::Distributed if led.is_some() => {
                let first = holders.remove(0);
                let others = cache.options.owners.saturating_sub(1) as usize;
                [first]
                    .into_iter()
                    .chain(rendezvous(key, holders, others))
                    .collect()
            }
            CacheMode::Distributed => rendezvous(key, holders, cache.options.owners as usize),
            CacheMode::Replicated => holders,
            CacheMode::Local | CacheMode::Invalidated => vec![self.node.clone()],
        }
    }
}

/// A node's part in entry versions: its generation, then 16 bits of its name's hash.
pub(super) fn writer_id(node: &str, generation: u64) -> u64 {
    (generation << 16) | (fixed_hash(&[node]) & 0xffff)
}

/// The `count` members that own `key`: those scoring highest for it (rendezvous hashing), so
/// that a member coming or going moves only the keys it owns or comes to own.
fn rendezvous(key: &str, members: Vec<String>, count: usize) -> Vec<String> {
    let score = |member: &String| fixed_hash(&[key, member]);
    let mut ranked: Vec<(u64, String)> = members
        .into_iter()
        .map(|member| (score(&member), member))
        .collect();
    ranked.sort_by(|a, b| b.cmp(a));
    ranked
        .into_iter()
        .take(count)
        .map(|(_, member)| member)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_keys_of_a_member_that_goes() {
        let members: Vec<String> = ["one", "two", "three"].map(String::from).to_vec();
        let keys: Vec<String> = (0..200).map(|n| format!("key-{n}")).collect();
        let before: Vec<Vec<String>> = keys
            .iter()
            .map(|key| rendezvous(key, members.clone(), 2))
            .collect();
        assert!(before.iter().all(|owners| owners.len() == 2));
        let survivors: Vec<String> = ["one", "three"].map(String::from).to_vec();
        for (key, owners) in keys.iter().zip(&before) {
            let after = rendezvous(key, survivors.clone(), 2);
            // Every key still has two owners, and a key "two" did not own keeps its owners.
            assert_eq!(after.len(), 2);
            if !owners.contains(&"two".to_string()) {
                assert_eq!(&after, owners);
            }
        }
    }
}
