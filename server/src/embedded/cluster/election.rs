//! Elections of lease holders. All singleton daemons and jobs of an app run on one live member
//! that has the app running, and all writes to a replicated or distributed cache are applied by
//! one member that holds the cache (its primary): each is a [`LeaseSubject`]. They stay where
//! they are: the candidate holding the subject's lease with the highest epoch is elected while
//! it is in the view; only when none is does the oldest candidate take it (JGroups' coordinator
//! rule, as Immutant's HA singletons did). So nothing moves back to a node that rejoins,
//! restarted, resumed after a pause or healed from a partition. A side of a partition that sees
//! fewer members than the quorum elects none.
//!
//! The holder keeps a lease ([`super::lease_protocol`]) that the cluster confirms and that it
//! watches on its own clock ([`HeldLease`]); each takeover carries a fencing epoch
//! (`Cluster::take_epoch`): past every epoch gossiped for the subject, never below the clock, so
//! it grows with every handover.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use super::lease_protocol::{Answered, LEASE_TIME, Renewal};
use crate::vocabulary::membership::{Member, View};

/// What a lease is held on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseSubject {
    /// The singleton daemons and jobs of an app: held by a member that runs the app.
    Singletons(String),
    /// The writes to a cache: held by a member that holds the cache, its primary.
    CachePrimary(String),
}

impl LeaseSubject {
    /// The name its lease goes by in gossip: the app's name, or `cache:` and the cache's (an
    /// app's name never holds a `:`, so the two never meet).
    pub fn key(&self) -> String {
        match self {
            LeaseSubject::Singletons(app) => app.clone(),
            LeaseSubject::CachePrimary(cache) => format!("cache:{cache}"),
        }
    }

    /// Whether `member` may hold it.
    pub fn candidate(&self, member: &Member) -> bool {
        match self {
            LeaseSubject::Singletons(app) => member.apps.contains(app),
            LeaseSubject::CachePrimary(cache) => member.caches.contains_key(cache),
        }
    }
}

impl LeaseSubject {
    /// What the log says when this node stops holding it.
    pub fn lost(&self) -> String {
        match self {
            LeaseSubject::Singletons(app) => {
                format!("The singletons of {app} no longer run on this node")
            }
            LeaseSubject::CachePrimary(cache) => {
                format!("This node no longer applies the writes to cache {cache}")
            }
        }
    }
}

impl fmt::Display for LeaseSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseSubject::Singletons(app) => write!(f, "the singletons of {app}"),
            LeaseSubject::CachePrimary(cache) => write!(f, "the writes to cache {cache}"),
        }
    }
}

/// Decides who holds a lease, the same way on every member.
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

    /// The member that holds `subject` in `view`: the candidate holding its lease with the
    /// highest epoch, else the oldest candidate; none below the quorum.
    pub fn master<'v>(&self, view: &'v View, subject: &LeaseSubject) -> Option<&'v Member> {
        if (view.members.len() as u32) < self.quorum {
            return None;
        }
        let key = subject.key();
        let candidates = view
            .members
            .iter()
            .filter(|member| subject.candidate(member));
        let oldest = candidates.clone().next();
        candidates
            .filter_map(|member| Some((member.leases.get(&key)?, member)))
            .max_by_key(|(epoch, _)| **epoch)
            .map(|(_, member)| member)
            .or(oldest)
    }

    /// Whether this node should hold `subject` now.
    pub fn here(&self, view: &View, subject: &LeaseSubject) -> bool {
        self.master(view, subject)
            .is_some_and(|member| member.is_self)
    }
}

/// This node's lease on a subject: the renewals it has gossiped, when each was sent
/// (on the host's monotonic clock, in nanoseconds), and how far the cluster has confirmed them.
#[derive(Debug)]
pub struct HeldLease {
    pub epoch: u64,
    taken_ns: u64,
    seq: u64,
    /// Renewals not yet confirmed, oldest first.
    sent: VecDeque<Sent>,
    /// Until when it holds, once confirmed.
    until_ns: Option<u64>,
}

/// A renewal gossiped: its number, and when it was sent.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    at_ns: u64,
}

fn nanos(duration: Duration) -> u64 {
    duration.as_nanos() as u64
}

impl HeldLease {
    /// The lease taken under `epoch` at `now_ns`; its first renewal (number 0) is gossiped
    /// with the take.
    pub fn new(epoch: u64, now_ns: u64) -> Self {
        HeldLease {
            epoch,
            taken_ns: now_ns,
            seq: 0,
            sent: VecDeque::from([Sent {
                seq: 0,
                at_ns: now_ns,
            }]),
            until_ns: None,
        }
    }

    /// The next renewal to gossip, sent at `now_ns`.
    pub fn renew(&mut self, now_ns: u64) -> Renewal {
        self.seq += 1;
        self.sent.push_back(Sent {
            seq: self.seq,
            at_ns: now_ns,
        });
        Renewal {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// Takes in how far the other members have answered its renewals: the new deadline, if it
    /// moved.
    pub fn confirmed(&mut self, answered: Answered) -> Option<u64> {
        let upto = match answered {
            Answered::NotYet => return None,
            Answered::UpTo(seq) => seq,
            Answered::NoneToAsk => u64::MAX,
        };
        let mut sent_ns = None;
        while self.sent.front().is_some_and(|sent| sent.seq <= upto) {
            sent_ns = self.sent.pop_front().map(|sent| sent.at_ns);
        }
        let until_ns = sent_ns? + nanos(LEASE_TIME);
        if self.until_ns.is_some_and(|until| until >= until_ns) {
            return None;
        }
        self.until_ns = Some(until_ns);
        Some(until_ns)
    }

    /// Until when it holds (its singletons may run, its writes be applied); none before the
    /// first confirmation.
    pub fn until_ns(&self) -> Option<u64> {
        self.until_ns
    }

    /// Whether it has lapsed at `now_ns`: its deadline passed, or none came within a lease's
    /// time of the take.
    pub fn lapsed(&self, now_ns: u64) -> bool {
        now_ns >= self.until_ns.unwrap_or(self.taken_ns + nanos(LEASE_TIME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::membership::Member;

    fn member(name: &str, generation: u64, is_self: bool) -> Member {
        Member::for_test(name, generation, is_self)
    }

    fn example() -> LeaseSubject {
        LeaseSubject::Singletons("example".into())
    }

    #[test]
    fn the_oldest_member_runs_the_singletons_and_a_rejoined_one_does_not() {
        let election = SingletonElection::new(1);
        let view = View::new(vec![member("one", 10, false), member("two", 20, true)]);
        assert!(!election.here(&view, &example()));
        // one dies: two takes over.
        let after = View::new(vec![member("two", 20, true)]);
        assert!(election.here(&after, &example()));
        // one comes back, younger than two: nothing moves.
        let rejoined = View::new(vec![member("two", 20, true), member("one", 30, false)]);
        assert!(election.here(&rejoined, &example()));
    }

    #[test]
    fn the_holder_with_the_highest_epoch_keeps_them_wherever_it_is_in_age() {
        let election = SingletonElection::new(1);
        let mut one = member("one", 10, false);
        let mut two = member("two", 20, true);
        two.leases.insert("example".into(), 5);
        assert!(election.here(&View::new(vec![one.clone(), two.clone()]), &example()));
        // one comes back from a pause still holding an older lease: two keeps them.
        one.leases.insert("example".into(), 3);
        assert!(election.here(&View::new(vec![one.clone(), two.clone()]), &example()));
        // A holder without the app running holds nothing.
        two.apps.clear();
        assert_eq!(
            election
                .master(&View::new(vec![one, two]), &example())
                .map(|member| member.name.as_str()),
            Some("one")
        );
    }

    #[test]
    fn a_lease_runs_from_the_newest_confirmed_renewal_and_lapses_without_one() {
        let ms = 1_000_000;
        let lease_ns = nanos(LEASE_TIME);
        let mut lease = HeldLease::new(9, 0);
        assert!(!lease.lapsed(lease_ns - 1));
        assert!(lease.lapsed(lease_ns), "never confirmed");
        let first = lease.renew(100 * ms);
        let second = lease.renew(250 * ms);
        assert_eq!((first.seq, second.seq, second.epoch), (1, 2, 9));
        assert_eq!(lease.confirmed(Answered::NotYet), None);
        assert_eq!(
            lease.confirmed(Answered::UpTo(1)),
            Some(100 * ms + lease_ns)
        );
        assert_eq!(lease.confirmed(Answered::UpTo(1)), None, "nothing new");
        assert_eq!(
            lease.confirmed(Answered::NoneToAsk),
            Some(250 * ms + lease_ns)
        );
        assert!(!lease.lapsed(250 * ms + lease_ns - 1));
        assert!(lease.lapsed(250 * ms + lease_ns));
    }

    #[test]
    fn below_the_quorum_no_one_runs_them() {
        let election = SingletonElection::new(2);
        let alone = View::new(vec![member("one", 10, true)]);
        assert!(!election.here(&alone, &example()));
        let pair = View::new(vec![member("one", 10, true), member("two", 20, false)]);
        assert!(election.here(&pair, &example()));
    }
}
