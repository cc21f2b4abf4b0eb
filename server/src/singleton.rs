//! Singletons: all singleton daemons of an app run on the oldest live member that has the app
//! running (JGroups' coordinator rule, as Immutant's HA singletons did). A node that rejoins is
//! the youngest, so nothing moves back to it. A side of a partition that sees fewer members than
//! the quorum runs none. Each handover carries a fencing epoch: the new master's start time,
//! which only grows from one master to the next.

use crate::cluster::View;

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

    /// The member that runs `app`'s singletons in `view`, with the epoch it runs them under;
    /// none below the quorum.
    pub fn master<'v>(
        &self,
        view: &'v View,
        app: &str,
    ) -> Option<(&'v crate::cluster::Member, u64)> {
        if (view.members.len() as u32) < self.quorum {
            return None;
        }
        view.oldest_with(app)
            .map(|member| (member, member.generation))
    }

    /// The epoch under which this node should run `app`'s singletons now, if it should.
    pub fn here(&self, view: &View, app: &str) -> Option<u64> {
        self.master(view, app)
            .filter(|(member, _)| member.is_self)
            .map(|(_, epoch)| epoch)
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
            is_self,
        }
    }

    #[test]
    fn the_oldest_member_runs_the_singletons_and_a_rejoined_one_does_not() {
        let election = SingletonElection::new(1);
        let view = View::new(vec![member("one", 10, false), member("two", 20, true)]);
        assert_eq!(election.here(&view, "example"), None);
        // one dies: two takes over under its own epoch.
        let after = View::new(vec![member("two", 20, true)]);
        assert_eq!(election.here(&after, "example"), Some(20));
        // one comes back, younger than two: nothing moves.
        let rejoined = View::new(vec![member("two", 20, true), member("one", 30, false)]);
        assert_eq!(election.here(&rejoined, "example"), Some(20));
    }

    #[test]
    fn below_the_quorum_no_one_runs_them() {
        let election = SingletonElection::new(2);
        let alone = View::new(vec![member("one", 10, true)]);
        assert_eq!(election.here(&alone, "example"), None);
        let pair = View::new(vec![member("one", 10, true), member("two", 20, false)]);
        assert_eq!(election.here(&pair, "example"), Some(10));
    }
}
