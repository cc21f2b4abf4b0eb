//! Leases, carried by gossip (the way Chubby's and etcd's leader leases work, on this
//! cluster's membership): on an app's singletons, and on a cache's writes (its lease named
//! `cache:<name>`; below, "app" stands for either).
//!
//! The node that holds an app's singletons gossips `lease:<app>` = `<epoch>.<seq>`, with a new
//! `seq` every [`RENEW_INTERVAL`]. Each other member that sees the holder in its view and holds
//! no lease on the app itself answers with `ack:<app>` = `<holder>/<generation>/<epoch>.<seq>`,
//! and by that makes a [`Promise`], until [`LEASE_TIME`] + [`MARGIN`] after it saw that renewal:
//! not to take the app's singletons over, and not to answer any other holder. The holder's lease
//! runs until [`LEASE_TIME`] after it sent the newest renewal that every other member of its
//! view has answered; it needs a view of at least the quorum to hold one.
//!
//! Why that is enough: each answer was given after its renewal was sent, so the holder's
//! deadline comes before the promises run out; its app is told the deadline and stops its
//! singletons there by itself, so a holder that is frozen or cut off stops before anyone takes
//! over. And two holders cannot both be confirmed while some member sees both, for it answers
//! one at a time: only members that cannot see each other at all (a clean partition) can, which
//! a quorum of a majority rules out.
//!
//! A promise binds no more once the holder let the lease go (deleted its key, which it does only
//! once its deadline has passed) or is proven dead: its link closed and its port refuses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chitchat::{ChitchatId, NodeState};

use super::View;

/// The gossiped key of a lease a member holds on an app's singletons.
pub const LEASE_KEY_PREFIX: &str = "lease:";
/// The gossiped key of a member's answer to a holder's renewal.
pub const ACK_KEY_PREFIX: &str = "ack:";

/// How long a confirmed renewal keeps the lease.
pub const LEASE_TIME: Duration = Duration::from_millis(1200);
/// How often the holder renews.
pub const RENEW_INTERVAL: Duration = Duration::from_millis(150);
/// How much longer a promise lasts than the lease it answers: room for scheduling and for the
/// members' clocks running at slightly different rates.
pub const MARGIN: Duration = Duration::from_millis(200);

/// A lease renewal as gossiped: its epoch and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    pub epoch: u64,
    pub seq: u64,
}

impl Renewal {
    pub fn parse(value: &str) -> Option<Renewal> {
        let (epoch, seq) = value.split_once('.')?;
        Some(Renewal {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    pub fn value(&self) -> String {
        format!("{}.{}", self.epoch, self.seq)
    }
}

/// A member's answer to a holder's renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub holder: String,
    pub generation: u64,
    pub renewal: Renewal,
}

impl Ack {
    pub fn parse(value: &str) -> Option<Ack> {
        let mut parts = value.splitn(3, '/');
        Some(Ack {
            holder: parts.next()?.to_string(),
            generation: parts.next()?.parse().ok()?,
            renewal: Renewal::parse(parts.next()?)?,
        })
    }

    pub fn value(&self) -> String {
        format!(
            "{}/{}/{}",
            self.holder,
            self.generation,
            self.renewal.value()
        )
    }
}

/// Whether `id` is the member `name` of `generation`.
pub fn is_member(id: &ChitchatId, name: &str, generation: u64) -> bool {
    &*id.node_id == name && id.generation_id == generation
}

/// A promise this member made, by answering a renewal, not to take an app's singletons over
/// from `holder` (name and generation), which holds them under `epoch`, nor to answer another
/// holder, before `until`.
#[derive(Debug, Clone)]
pub struct Promise {
    pub holder: (String, u64),
    pub epoch: u64,
    pub until: Instant,
}

impl Promise {
    /// Whether it still binds at `now`: not run out, and its holder neither proven dead (one of
    /// `dead`) nor seen to have let the lease go (its state, if among `states`, no longer shows
    /// it).
    pub fn binds<'a>(
        &self,
        now: Instant,
        dead: &[(String, u64)],
        mut states: impl Iterator<Item = (&'a ChitchatId, &'a NodeState)>,
        app: &str,
    ) -> bool {
        let (name, generation) = &self.holder;
        let released = states
            .find(|(id, _)| is_member(id, name, *generation))
            .is_some_and(|(_, state)| {
                state
                    .get(&format!("{LEASE_KEY_PREFIX}{app}"))
                    .and_then(Renewal::parse)
                    .is_none_or(|renewal| renewal.epoch != self.epoch)
            });
        now < self.until && !released && !dead.contains(&self.holder)
    }
}

/// The highest epoch each app's singletons were taken with, by any member in `states`.
pub fn highest_epochs<'a>(
    states: impl IntoIterator<Item = &'a NodeState>,
) -> BTreeMap<String, u64> {
    let mut highest = BTreeMap::new();
    for state in states {
        for (key, value) in state.key_values() {
            let Some(app) = key.strip_prefix(super::keys::EPOCH_KEY_PREFIX) else {
                continue;
            };
            if let Ok(epoch) = value.parse::<u64>() {
                let entry = highest.entry(app.to_string()).or_insert(epoch);
                *entry = (*entry).max(epoch);
            }
        }
    }
    highest
}

/// What this node (`me`, whose own state is `mine`) knows when it answers renewals.
pub struct Answering<'a> {
    pub me: &'a ChitchatId,
    pub mine: &'a NodeState,
    pub live: &'a BTreeMap<ChitchatId, NodeState>,
    pub view: &'a View,
    /// The highest epoch of each app, over every member.
    pub highest: &'a BTreeMap<String, u64>,
    /// The promises that bind it now, by app.
    pub bound: &'a BTreeMap<String, Promise>,
}

/// The renewals this node should answer now: for each app, the newest renewal of the holder a
/// promise binds it to, if one does; else of the holder in its view with the highest epoch, if
/// that is the highest known. None for an app it holds a lease on itself.
pub fn renewals_to_answer(knowing: &Answering) -> BTreeMap<String, Ack> {
    let Answering {
        me,
        mine,
        live,
        view,
        highest,
        bound,
    } = knowing;
    let mut answers: BTreeMap<String, Ack> = BTreeMap::new();
    for (id, state) in live.iter() {
        if id == *me
            || !view
                .members
                .iter()
                .any(|member| is_member(id, &member.name, member.generation))
        {
            continue;
        }
        for (key, value) in state.key_values() {
            let (Some(app), Some(renewal)) =
                (key.strip_prefix(LEASE_KEY_PREFIX), Renewal::parse(value))
            else {
                continue;
            };
            let allowed = match bound.get(app) {
                Some(promise) => {
                    is_member(id, &promise.holder.0, promise.holder.1)
                        && promise.epoch == renewal.epoch
                }
                None => highest.get(app).is_none_or(|&epoch| renewal.epoch >= epoch),
            };
            let holding = mine.get(&format!("{LEASE_KEY_PREFIX}{app}")).is_some();
            let better = answers
                .get(app)
                .is_none_or(|other| other.renewal.epoch < renewal.epoch);
            if allowed && !holding && better {
                answers.insert(
                    app.to_string(),
                    Ack {
                        holder: id.node_id.to_string(),
                        generation: id.generation_id,
                        renewal,
                    },
                );
            }
        }
    }
    answers
}

/// How far the other members of a view have answered a holder's renewals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// There is no other member to ask: every renewal stands.
    NoneToAsk,
    /// Every other member answered the renewals up to this one.
    UpTo(u64),
    /// Some member has answered none of this lease's renewals.
    NotYet,
}

/// How far every other member of `view` has answered this node's (`me`) renewals of its lease
/// on `app` under `epoch`.
pub fn answered(
    me: &ChitchatId,
    app: &str,
    epoch: u64,
    view: &View,
    live: &BTreeMap<ChitchatId, NodeState>,
) -> Answered {
    let key = format!("{ACK_KEY_PREFIX}{app}");
    let mut answered = Answered::NoneToAsk;
    for member in view.members.iter().filter(|member| !member.is_self) {
        let ack = live
            .iter()
            .find(|(id, _)| is_member(id, &member.name, member.generation))
            .and_then(|(_, state)| Ack::parse(state.get(&key)?))
            .filter(|ack| is_member(me, &ack.holder, ack.generation) && ack.renewal.epoch == epoch);
        answered = match (answered, ack) {
            (_, None) => return Answered::NotYet,
            (Answered::UpTo(seq), Some(ack)) => Answered::UpTo(seq.min(ack.renewal.seq)),
            (_, Some(ack)) => Answered::UpTo(ack.renewal.seq),
        };
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::membership::Member;

    fn id(name: &str, generation: u64) -> ChitchatId {
        ChitchatId::new(
            name.to_string(),
            generation,
            "127.0.0.1:7600".parse().unwrap(),
        )
    }

    fn state(keys: &[(&str, &str)]) -> NodeState {
        let mut state = NodeState::for_test();
        for (key, value) in keys {
            state.set(*key, *value);
        }
        state
    }

    fn member(name: &str, generation: u64, is_self: bool) -> Member {
        Member::for_test(name, generation, is_self)
    }

    #[test]
    fn renewals_and_acks_read_back_what_they_write() {
        let renewal = Renewal { epoch: 12, seq: 3 };
        assert_eq!(Renewal::parse(&renewal.value()), Some(renewal));
        let ack = Ack {
            holder: "one".into(),
            generation: 7,
            renewal,
        };
        assert_eq!(Ack::parse(&ack.value()), Some(ack));
        assert_eq!(Renewal::parse("12"), None);
        assert_eq!(Ack::parse("one/x/1.2"), None);
    }

    fn answers(
        me: &ChitchatId,
        mine: &NodeState,
        live: &BTreeMap<ChitchatId, NodeState>,
        view: &View,
        bound: &BTreeMap<String, Promise>,
    ) -> BTreeMap<String, Ack> {
        let highest = highest_epochs(live.values().chain([mine]));
        renewals_to_answer(&Answering {
            me,
            mine,
            live,
            view,
            highest: &highest,
            bound,
        })
    }

    #[test]
    fn a_member_answers_the_newest_holder_in_its_view_only() {
        let (me, holder, old) = (id("two", 20), id("one", 10), id("three", 5));
        let view = View::new(vec![member("one", 10, false), member("two", 20, true)]);
        let (mine, free) = (state(&[]), BTreeMap::new());
        let mut live = BTreeMap::new();
        live.insert(
            holder.clone(),
            state(&[("lease:example", "9.4"), ("epoch:example", "9")]),
        );
        let answered = answers(&me, &mine, &live, &view, &free);
        assert_eq!(answered["example"].renewal, Renewal { epoch: 9, seq: 4 });
        assert_eq!(answered["example"].holder, "one");

        // A holder with an older epoch than one known is not answered.
        live.insert(old.clone(), state(&[("epoch:example", "11")]));
        assert!(answers(&me, &mine, &live, &view, &free).is_empty());
        live.remove(&old);

        // Nor one outside the view, nor any while this node holds a lease itself.
        let alone = View::new(vec![member("two", 20, true)]);
        assert!(answers(&me, &mine, &live, &alone, &free).is_empty());
        let holding = state(&[("lease:example", "3.1")]);
        assert!(answers(&me, &holding, &live, &view, &free).is_empty());
    }

    #[test]
    fn a_member_bound_by_a_promise_answers_no_other_holder() {
        let me = id("two", 20);
        let view = View::new(vec![
            member("one", 10, false),
            member("two", 20, true),
            member("three", 30, false),
        ]);
        let mine = state(&[]);
        let mut live = BTreeMap::new();
        live.insert(id("one", 10), state(&[("lease:example", "9.4")]));
        live.insert(id("three", 30), state(&[("lease:example", "12.0")]));
        let promise = Promise {
            holder: ("one".into(), 10),
            epoch: 9,
            until: Instant::now() + Duration::from_secs(1),
        };
        let bound = BTreeMap::from([("example".to_string(), promise.clone())]);
        let answered = answers(&me, &mine, &live, &view, &bound);
        assert_eq!(answered["example"].holder, "one", "not three's newer lease");
        assert!(promise.binds(Instant::now(), &[], live.iter(), "example"));
        // Not once one is proven dead, nor once the promise runs out.
        let dead = [("one".to_string(), 10)];
        assert!(!promise.binds(Instant::now(), &dead, live.iter(), "example"));
        let later = Instant::now() + Duration::from_secs(2);
        assert!(!promise.binds(later, &[], live.iter(), "example"));
        // Nor once one lets its lease go: then three's is answered.
        live.insert(id("one", 10), state(&[]));
        assert!(!promise.binds(Instant::now(), &[], live.iter(), "example"));
        let free = BTreeMap::new();
        assert_eq!(
            answers(&me, &mine, &live, &view, &free)["example"].holder,
            "three"
        );
    }

    #[test]
    fn a_renewal_is_confirmed_once_every_other_member_answered_it() {
        let me = id("one", 10);
        let mut three = member("three", 30, false);
        // Members without the app answer too: they bind the others of a split view.
        three.apps.clear();
        let view = View::new(vec![
            member("one", 10, true),
            member("two", 20, false),
            three,
        ]);
        let mut live = BTreeMap::new();
        live.insert(id("two", 20), state(&[("ack:example", "one/10/9.4")]));
        assert_eq!(answered(&me, "example", 9, &view, &live), Answered::NotYet);
        live.insert(id("three", 30), state(&[("ack:example", "one/10/9.6")]));
        assert_eq!(answered(&me, "example", 9, &view, &live), Answered::UpTo(4));
        // An answer to another epoch, or to another holder, is none.
        assert_eq!(answered(&me, "example", 10, &view, &live), Answered::NotYet);
        let other = id("one", 11);
        assert_eq!(
            answered(&other, "example", 9, &view, &live),
            Answered::NotYet
        );
        let alone = View::new(vec![member("one", 10, true)]);
        assert_eq!(
            answered(&me, "example", 9, &alone, &live),
            Answered::NoneToAsk
        );
    }
}
