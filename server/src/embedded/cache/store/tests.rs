//! The store's rules: versions, merges, a takeover's newest state, a join's adoption.

use super::*;

fn put(key: &str, value: &str) -> (CacheOp, Bytes) {
    let op = CacheOp::Put {
        key: key.to_string(),
        expiry: None,
    };
    (op, Bytes::copy_from_slice(value.as_bytes()))
}

fn writer(epoch: u64, id: u64) -> Writer {
    Writer { epoch, id }
}

fn run(store: &mut Store, (op, body): (CacheOp, Bytes), now: u64) -> Executed {
    store.execute(&op, body, Expiry::default(), writer(0, 1), now)
}

#[test]
fn compare_and_swap_applies_only_on_the_expected_value() {
    let mut store = Store::default();
    run(&mut store, put("k", "1"), 0);
    let replace = |expected: &str, new: &str| {
        let op = CacheOp::Replace {
            key: "k".to_string(),
            expected_len: expected.len() as u64,
            expiry: None,
        };
        (op, Bytes::from(format!("{expected}{new}")))
    };
    assert!(!run(&mut store, replace("0", "2"), 1).outcome.applied);
    let swapped = run(&mut store, replace("1", "2"), 2);
    assert!(swapped.outcome.applied);
    assert_eq!(swapped.value, "1");
    assert_eq!(store.get("k", 3).unwrap(), "2");
}

#[test]
fn put_if_absent_answers_the_existing_value() {
    let mut store = Store::default();
    let absent = CacheOp::PutIfAbsent {
        key: "k".to_string(),
        expiry: None,
    };
    assert!(
        run(&mut store, (absent.clone(), Bytes::from("a")), 0)
            .outcome
            .applied
    );
    let again = run(&mut store, (absent, Bytes::from("b")), 1);
    assert!(!again.outcome.applied && again.outcome.found);
    assert_eq!(again.value, "a");
}

#[test]
fn ttl_and_idle_expire_entries() {
    let mut store = Store::default();
    let expiring = |key: &str, expiry| CacheOp::Put {
        key: key.to_string(),
        expiry: Some(expiry),
    };
    let ttl = Expiry {
        ttl_ms: Some(100),
        idle_ms: None,
    };
    let idle = Expiry {
        ttl_ms: None,
        idle_ms: Some(100),
    };
    run(&mut store, (expiring("ttl", ttl), Bytes::from("v")), 0);
    run(&mut store, (expiring("idle", idle), Bytes::from("v")), 0);
    assert!(store.get("ttl", 50).is_some());
    assert!(store.get("idle", 90).is_some());
    // Read at 90, so idle until 190; the ttl ran out at 100.
    assert!(store.get("ttl", 150).is_none());
    assert!(store.get("idle", 150).is_some());
    assert!(store.get("idle", 300).is_none());
    assert_eq!(store.sweep(300).len(), 2);
}

#[test]
fn copies_converge_on_the_newest_version_and_removals_stay_removed() {
    let mut store = Store::default();
    let older = run(&mut store, put("k", "1"), 0).changes.remove(0).1;
    let removal = store.execute(
        &CacheOp::Remove {
            key: "k".to_string(),
        },
        Bytes::new(),
        Expiry::default(),
        writer(0, 2),
        1,
    );
    assert!(removal.outcome.applied);
    // The put arriving late from elsewhere does not bring the key back.
    assert!(!store.merge("k".to_string(), older, 2));
    assert!(store.get("k", 3).is_none());
    assert_eq!((store.hits, store.misses), (0, 1));
}

fn value(store: &mut Store, key: &str) -> Option<Bytes> {
    store.get(key, 0)
}

fn write(store: &mut Store, key: &str, text: &str, epoch: u64) -> (String, Entry) {
    let (op, body) = put(key, text);
    store
        .execute(&op, body, Expiry::default(), writer(epoch, 9), 0)
        .changes
        .remove(0)
}

#[test]
fn a_newer_primarys_write_beats_any_count_of_older_ones() {
    let mut old = Store::default();
    for n in 0..5 {
        write(&mut old, "k", &n.to_string(), 10);
    }
    let mut new = Store::default();
    let newer = write(&mut new, "k", "new", 11);
    let stale = write(&mut old, "k", "stale", 10);
    assert!(old.merge(newer.0.clone(), newer.1.clone(), 0));
    assert!(!old.merge(stale.0, stale.1, 0), "an older epoch never wins");
    assert_eq!(value(&mut old, "k").unwrap(), "new");
    assert!(old.fence(11));
    assert!(!old.fence(10), "fenced by the newer primary");
}

#[test]
fn a_holder_adopting_a_new_primary_drops_what_that_primary_never_had() {
    let mut primary = Store::default();
    let kept = write(&mut primary, "kept", "1", 10);
    let mut holder = Store::default();
    holder.merge(kept.0.clone(), kept.1.clone(), 0);
    // A write the old primary applied here but never had confirmed, and a copy of the new
    // primary's that arrived during the join.
    write(&mut holder, "kept", "unconfirmed", 10);
    write(&mut holder, "orphan", "unconfirmed", 10);
    holder.track();
    let fresh = write(&mut Store::default(), "fresh", "2", 12);
    holder.merge(fresh.0.clone(), fresh.1.clone(), 0);
    let replaced = holder.adopt(primary.snapshot(), 12, 0);
    assert_eq!(value(&mut holder, "kept").unwrap(), "1");
    assert_eq!(value(&mut holder, "orphan"), None);
    assert_eq!(value(&mut holder, "fresh").unwrap(), fresh.1.value.unwrap());
    assert_eq!(replaced.forgotten, vec!["orphan".to_string()]);
    assert_eq!((holder.synced, holder.fenced()), (12, 12));
}

#[test]
fn a_new_primary_starts_from_the_newest_state_and_ignores_a_deposed_copy() {
    // Two holders took in the state of the primary of epoch 10 and got its writes; a third
    // is a primary of epoch 5 that was cut off and went on alone.
    let mut current = Store {
        synced: 10,
        ..Store::default()
    };
    let written = write(&mut current, "k", "acknowledged", 10);
    let mut behind = Store {
        synced: 10,
        ..Store::default()
    };
    behind.merge(
        "other".into(),
        write(&mut Store::default(), "other", "o", 10).1,
        0,
    );
    let mut deposed = Store {
        synced: 5,
        ..Store::default()
    };
    for n in 0..20 {
        write(&mut deposed, "k", &format!("split-{n}"), 5);
    }
    let mut primary = Store::default();
    let gathered = vec![
        Gathered {
            synced: 10,
            entries: vec![written],
        },
        Gathered {
            synced: 10,
            entries: behind.snapshot(),
        },
        Gathered {
            synced: 5,
            entries: deposed.snapshot(),
        },
    ];
    primary.take_over(gathered, 12, 0);
    assert_eq!(value(&mut primary, "k").unwrap(), "acknowledged");
    assert_eq!(value(&mut primary, "other").unwrap(), "o");
    assert_eq!(primary.synced, 12);
}

/// A store that took the cache over under `epoch` (as writer 1, in the tests below).
fn taken_over(epoch: u64) -> Store {
    let mut store = Store::default();
    store.take_over(Vec::new(), epoch, 0);
    store
}

/// Applies a put as the primary (writer 1) of `epoch`, its answer not out yet.
fn write_unanswered(store: &mut Store, key: &str, value: &str, epoch: u64, now: u64) -> Executed {
    let (op, body) = put(key, value);
    let executed = store.execute(&op, body, Expiry::default(), writer(epoch, 1), now);
    store.doubt(&executed.changes);
    executed
}

fn answered(store: &mut Store, executed: &Executed) {
    let written: Vec<(String, Version)> = executed
        .changes
        .iter()
        .map(|(key, entry)| (key.clone(), entry.version))
        .collect();
    store.confirm(&written);
}

#[test]
fn a_side_hands_on_only_the_writes_it_answered_later_than_the_other_side() {
    let mut ours = taken_over(5);
    let session = write_unanswered(&mut ours, "session", "5 visits", 5, 100);
    answered(&mut ours, &session);
    let shared = write_unanswered(&mut ours, "shared", "ours", 5, 100);
    answered(&mut ours, &shared);
    // Its answer never went out (the lease lapsed while the primary was paused).
    write_unanswered(&mut ours, "doubtful", "x", 5, 100);
    let mut theirs = taken_over(7);
    let (op, body) = put("session", "3 visits");
    theirs.execute(&op, body, Expiry::default(), writer(3, 2), 50);
    let (op, body) = put("shared", "theirs");
    theirs.execute(&op, body, Expiry::default(), writer(7, 2), 150);
    let mut handed = ours.side_writes(&theirs.snapshot(), 1, 200);
    handed.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<&str> = handed.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(
        keys,
        ["session"],
        "not the doubtful write, nor one written earlier"
    );
    assert!(
        taken_over(6)
            .side_writes(&theirs.snapshot(), 1, 200)
            .is_empty()
    );
    assert!(
        ours.side_writes(&theirs.snapshot(), 2, 200).is_empty(),
        "only this primary's own"
    );

    let taken = theirs.apply_side_writes(handed.clone(), writer(7, 2), 120);
    assert_eq!(taken.changes.len(), 1);
    let version = theirs.version_of("session").unwrap();
    assert_eq!(version.epoch, 7, "a write of the primary that took it");
    assert!(version.written_after(&handed[0].1.version));
    assert_eq!(theirs.get("session", 130).unwrap(), "5 visits");
    let again = theirs.apply_side_writes(handed, writer(7, 2), 140);
    assert!(again.changes.is_empty(), "taken once");
    let older = vec![("shared".to_string(), shared.changes[0].1.clone())];
    assert!(
        theirs
            .apply_side_writes(older, writer(7, 2), 160)
            .changes
            .is_empty()
    );
    assert_eq!(theirs.get("shared", 170).unwrap(), "theirs");
}

#[test]
fn a_key_removed_and_forgotten_is_not_brought_back_by_an_older_side_write() {
    let mut ours = taken_over(5);
    let gone = write_unanswered(&mut ours, "gone", "v", 5, 100);
    answered(&mut ours, &gone);
    // The next primary had the write, removed the key, and swept its tombstone away.
    let mut theirs = taken_over(7);
    theirs.merge("gone".to_string(), gone.changes[0].1.clone(), 100);
    let remove = CacheOp::Remove {
        key: "gone".to_string(),
    };
    theirs.execute(&remove, Bytes::new(), Expiry::default(), writer(7, 2), 150);
    assert_eq!(theirs.sweep(150 + TOMBSTONE_MS), ["gone"]);
    let fresh = write_unanswered(&mut ours, "fresh", "v", 5, 400);
    answered(&mut ours, &fresh);

    let handed = ours.side_writes(&theirs.snapshot(), 1, 200);
    assert_eq!(handed.len(), 2, "both are missing there");
    let taken = theirs.apply_side_writes(handed, writer(7, 2), 500);
    let keys: Vec<&str> = taken.changes.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["fresh"], "written after every removal forgotten");
}
