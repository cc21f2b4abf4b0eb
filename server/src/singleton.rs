//! Singletons: all singleton daemons of an app run on the oldest live member that has the app
//! running (JGroups' coordinator rule, as Immutant's HA singletons did). A node that rejoins is
//! the youngest, so nothing moves back to it. A side of a partition that sees fewer members than
//! the quorum runs none. Each start carries a fencing epoch (`Cluster::take_epoch`): past
//! every epoch gossiped for the app, never below the clock, so it grows with every handover.

use crate::cluster::{Member, View};

/// Decides where singletons run, the same way on every member.
#[derive(Debug, Clone, Copy)]
pub struct SingletonElection {
    quorum: u32,
}

impl SingletonElection {
    pub fn new(quorum: u32) -> Self {
        SingletonElection {
            quorum: quorum.max(1),
        }
    }

    /// The member that runs `app`'s singletons in `view`; none below the quorum.
    pub fn master<'v>(&self, view: &'v View, app: &str) -> Option<&'v Member> {
        if (view.members.len() as u32) < self.quorum {
            return None;
        }
        view.oldest_with(app)
    }

    /// Whether this node should run `app`'s singletons now.
    pub fn here(&self, view: &View, app: &str) -> bool {
        self.master(view, app).is_some_and(|member| member.is_self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Member;

    fn member(name: &str, generation: u64, is_self: bool) -> Member {
        Member {
            name: name.to_string(),
            generation,
            gossip_addr: "127.0.0.1:7600".parse().unwrap(),
            management: None,
            apps: ["example".to_string()].into(),
            interest: Default::default(),
            caches: Default::default(),
            is_self,
        }
    }

    #[test]
    fn the_oldest_member_runs_the_singletons_and_a_rejoined_one_does_not() {
        let election = SingletonElection::new(1);
        let view = View::new(vec![member("one", 10, false), member("two", 20, true)]);
        assert!(!election.here(&view, "example"));
        // one dies: two takes over.
        let after = View::new(vec![member("two", 20, true)]);
        assert!(election.here(&after, "example"));
        // one comes back, younger than two: nothing moves.
        let rejoined = View::new(vec![member("two", 20, true), member("one", 30, false)]);
        assert!(election.here(&rejoined, "example"));
    }

    #[test]
    fn below_the_quorum_no_one_runs_them() {
        let election = SingletonElection::new(2);
        let alone = View::new(vec![member("one", 10, true)]);
        assert!(!election.here(&alone, "example"));
        let pair = View::new(vec![member("one", 10, true), member("two", 20, false)]);
        assert!(election.here(&pair, "example"));
    }
}
