//! Where a cache's entries live: which members hold the cache, and which of them own a key
//! (all of them for a replicated cache, the oldest first; `owners` of them by rendezvous hashing
//! for a distributed one).

use immutant_protocol::CacheMode;

use super::{Cache, Caches};
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

    /// The members that hold `key` of `cache`, its primary owner first.
    pub(super) fn owners(&self, cache: &Cache, key: &str) -> Vec<String> {
        let holders = self.holders(cache);
        match cache.options.mode {
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
