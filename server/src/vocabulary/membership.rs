//! Membership as both engines see it: the cluster's view, its live members oldest first, and
//! what each member has deployed, consumes, holds and leads. The embedded engine computes it
//! from gossip, the NATS engine from the members' heartbeats in JetStream.

use std::collections::{BTreeMap, BTreeSet};

use immutant_protocol::CacheOptions;
use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

/// The queues and topics a member's apps consume from, each with whether a durable subscriber
/// wants it.
pub type Interest = BTreeMap<String, bool>;

/// A live member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub name: String,
    /// When the member started (unix ms): the older, the lower. A restarted node is younger
    /// than every member that kept running.
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub management: Option<String>,
    /// The apps it has deployed and running.
    pub apps: BTreeSet<String>,
    /// The queues and topics its apps consume from.
    pub interest: Interest,
    /// The caches it holds, with their options.
    pub caches: BTreeMap<String, CacheOptions>,
    /// The leases it holds, by name, with each one's epoch: an app's singletons go by the
    /// app's name, a cache's writes by `cache:` and the cache's (see
    /// [`Member::singleton_leases`]).
    pub leases: BTreeMap<String, u64>,
    /// Whether this member is the node computing the view.
    pub is_self: bool,
}

#[cfg(test)]
impl Member {
    /// A member at 127.0.0.1:7600 with the app `example` running, and nothing else.
    pub fn for_test(name: &str, generation: u64, is_self: bool) -> Member {
        Member {
            name: name.to_string(),
            generation,
            gossip_addr: "127.0.0.1:7600".parse().unwrap(),
            management: None,
            apps: ["example".to_string()].into(),
            interest: Default::default(),
            caches: Default::default(),
            leases: Default::default(),
            is_self,
        }
    }
}

impl Member {
    /// The apps whose singletons it holds a lease on, with the lease's epoch: its leases but
    /// those on caches (an app's name never holds a `:`).
    pub fn singleton_leases(&self) -> impl Iterator<Item = (&String, &u64)> {
        self.leases.iter().filter(|(name, _)| !name.contains(':'))
    }
}

/// The live members, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct View {
    pub members: Vec<Member>,
}

impl View {
    /// A view of `members` in age order (generation, then name: the JGroups coordinator rule).
    pub fn new(mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| (a.generation, &a.name).cmp(&(b.generation, &b.name)));
        View { members }
    }

    /// The oldest live member that has `app` deployed.
    pub fn oldest_with(&self, app: &str) -> Option<&Member> {
        self.members.iter().find(|member| member.apps.contains(app))
    }

    /// The names of the members, oldest first.
    pub fn names(&self) -> Vec<&str> {
        self.members
            .iter()
            .map(|member| member.name.as_str())
            .collect()
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        match names.first() {
            Some(oldest) => write!(
                f,
                "[{}] ({} members, oldest {oldest})",
                names.join(", "),
                names.len()
            ),
            None => write!(f, "[] (no members)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, generation: u64, apps: &[&str]) -> Member {
        Member {
            name: name.to_string(),
            generation,
            gossip_addr: "127.0.0.1:7600".parse().unwrap(),
            management: None,
            apps: apps.iter().map(|app| app.to_string()).collect(),
            interest: BTreeMap::new(),
            caches: BTreeMap::new(),
            leases: BTreeMap::new(),
            is_self: false,
        }
    }

    #[test]
    fn the_oldest_member_with_the_app_is_found() {
        let view = View::new(vec![
            member("two", 20, &["example"]),
            member("one", 10, &[]),
            member("three", 30, &["example"]),
        ]);
        assert_eq!(view.names(), ["one", "two", "three"]);
        assert_eq!(view.oldest_with("example").unwrap().name, "two");
        assert!(view.oldest_with("other").is_none());
        assert_eq!(
            view.to_string(),
            "[one, two, three] (3 members, oldest one)"
        );
    }
}
