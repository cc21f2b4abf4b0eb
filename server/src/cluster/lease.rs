//! Singleton leases, carried by gossip (the way Chubby's and etcd's leader leases work, on this
//! cluster's membership).
//!
//! The node that holds an app's singletons gossips `lease:<app>` = `<epoch>.<seq>`, with a new
//! `seq` every [`RENEW_INTERVAL`]. Each other member that sees the holder in its view, knows no
//! newer epoch for the app and holds none itself answers with `ack:<app>` =
//! `<holder>/<generation>/<epoch>.<seq>`, and by that promises not to take the app's singletons
//! over until [`LEASE_TIME`] + [`MARGIN`] after it saw that renewal. The holder's lease runs until
//! [`LEASE_TIME`] after it sent the newest renewal that every member with the app has answered:
//! since each answer was given after the renewal was sent, the holder's deadline always comes
//! before the promises run out. Its app is told the deadline and stops its singletons there by
//! itself, so a holder that is frozen or cut off stops before anyone takes over.
//!
//! A member may take over without waiting for its promise when the holder let the lease go
//! (deleted its key, which it does only once its app has stopped them or the deadline passed),
//! or when the holder is proven dead: its link closed and its port refuses.

use std::collections::BTreeMap;
use std::time::Duration;

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
pub fn is(id: &ChitchatId, name: &str, generation: u64) -> bool {
    &*id.node_id == name && id.generation_id == generation
}

/// The highest epoch each app's singletons were taken with, by any member in `states`.
pub fn highest_epochs<'a>(
    states: impl IntoIterator<Item = &'a NodeState>,
) -> BTreeMap<String, u64> {
    let mut highest = BTreeMap::new();
    for state in states {
        for (key, value) in state.key_values() {
            let Some(app) = key.strip_prefix(super::view::EPOCH_KEY_PREFIX) else {
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

/// The renewals this node (`me`, whose own state is `mine`) should answer now: for each app, the
/// newest renewal of the live holder with the highest epoch, if that holder is in `view`, its
/// epoch is the highest known, and this node holds no lease on the app itself.
pub fn renewals_to_answer(
    me: &ChitchatId,
    mine: &NodeState,
    live: &BTreeMap<ChitchatId, NodeState>,
    view: &View,
) -> BTreeMap<String, Ack> {
    let highest = highest_epochs(live.values().chain([mine]));
    let mut answers: BTreeMap<String, Ack> = BTreeMap::new();
    for (id, state) in live {
        if id == me
            || !view
                .members
                .iter()
                .any(|member| is(id, &member.name, member.generation))
        {
            continue;
        }
        for (key, value) in state.key_values() {
            let (Some(app), Some(renewal)) =
                (key.strip_prefix(LEASE_KEY_PREFIX), Renewal::parse(value))
            else {
                continue;
            };
            let newest = highest.get(app).is_none_or(|&epoch| renewal.epoch >= epoch);
            let holding = mine.get(&format!("{LEASE_KEY_PREFIX}{app}")).is_some();
            let better = answers
                .get(app)
                .is_none_or(|other| other.renewal.epoch < renewal.epoch);
            if newest && !holding && better {
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

/// The newest renewal of this node's (`me`) lease on `app` under `epoch` that every other member
/// of `view` with the app has answered: `u64::MAX` if there is none to ask, none if one has not
/// answered any.
pub fn confirmed(
    me: &ChitchatId,
    app: &str,
    epoch: u64,
    view: &View,
    live: &BTreeMap<ChitchatId, NodeState>,
) -> Option<u64> {
    let key = format!("{ACK_KEY_PREFIX}{app}");
    let mut confirmed = u64::MAX;
    for member in &view.members {
        if member.is_self || !member.apps.contains(app) {
            continue;
        }
        let ack = live
            .iter()
            .find(|(id, _)| is(id, &member.name, member.generation))
            .and_then(|(_, state)| Ack::parse(state.get(&key)?))
            .filter(|ack| is(me, &ack.holder, ack.generation) && ack.renewal.epoch == epoch)?;
        confirmed = confirmed.min(ack.renewal.seq);
    }
    Some(confirmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Member;

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

    #[test]
    fn a_member_answers_the_newest_holder_in_its_view_only() {
        let (me, holder, old) = (id("two", 20), id("one", 10), id("three", 5));
        let view = View::new(vec![member("one", 10, false), member("two", 20, true)]);
        let mine = state(&[]);
        let mut live = BTreeMap::new();
        live.insert(
            holder.clone(),
            state(&[("lease:example", "9.4"), ("epoch:example", "9")]),
        );
        let answers = renewals_to_answer(&me, &mine, &live, &view);
        assert_eq!(answers["example"].renewal, Renewal { epoch: 9, seq: 4 });
        assert_eq!(answers["example"].holder, "one");

        // A holder with an older epoch than one known is not answered.
        live.insert(old.clone(), state(&[("epoch:example", "11")]));
        assert!(renewals_to_answer(&me, &mine, &live, &view).is_empty());
        live.remove(&old);

        // Nor one outside the view, nor any while this node holds a lease itself.
        let alone = View::new(vec![member("two", 20, true)]);
        assert!(renewals_to_answer(&me, &mine, &live, &alone).is_empty());
        let holding = state(&[("lease:example", "3.1")]);
        assert!(renewals_to_answer(&me, &holding, &live, &view).is_empty());
    }

    #[test]
    fn a_renewal_is_confirmed_once_every_member_with_the_app_answered_it() {
        let me = id("one", 10);
        let mut three = member("three", 30, false);
        three.apps.clear();
        let view = View::new(vec![
            member("one", 10, true),
            member("two", 20, false),
            three,
        ]);
        let mut live = BTreeMap::new();
        live.insert(id("three", 30), state(&[]));
        assert_eq!(confirmed(&me, "example", 9, &view, &live), None);
        live.insert(id("two", 20), state(&[("ack:example", "one/10/9.4")]));
        assert_eq!(confirmed(&me, "example", 9, &view, &live), Some(4));
        // An answer to another epoch, or to another holder, is none.
        assert_eq!(confirmed(&me, "example", 10, &view, &live), None);
        assert_eq!(confirmed(&id("one", 11), "example", 9, &view, &live), None);
        let alone = View::new(vec![member("one", 10, true)]);
        assert_eq!(confirmed(&me, "example", 9, &alone, &live), Some(u64::MAX));
    }
}
