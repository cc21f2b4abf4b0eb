use super::*;
use immutant_protocol::{Frame, FrameCodec};

#[test]
fn a_datagram_opens_only_with_the_same_secret_and_cluster() {
    let key = ClusterKey::derive(b"s3cret", "one", "me");
    let mut sealed = key.seal_gossip(b"hello").unwrap();
    assert_eq!(
        open_datagram(&key.gossip, &mut sealed.clone()),
        Some(&b"hello"[..])
    );
    let other = ClusterKey::derive(b"other", "one", "me");
    assert!(open_datagram(&other.gossip, &mut sealed.clone()).is_none());
    let elsewhere = ClusterKey::derive(b"s3cret", "two", "me");
    assert!(open_datagram(&elsewhere.gossip, &mut sealed.clone()).is_none());
    // A beacon is not gossip.
    assert!(open_datagram(&key.beacon, &mut sealed.clone()).is_none());
    sealed[NONCE_LEN] ^= 1;
    assert!(open_datagram(&key.gossip, &mut sealed).is_none());
}

#[test]
fn a_beacon_opens_only_for_its_cluster_with_its_secret() {
    let ours = ClusterKey::derive(b"s3cret", "ours", "me");
    let from = "127.0.0.1:1".parse().unwrap();
    let beacon = ours.seal_beacon(b"hi").unwrap();
    assert_eq!(
        ours.open_beacon(&mut beacon.clone(), from),
        Some(&b"hi"[..])
    );
    let theirs = ClusterKey::derive(b"s3cret", "theirs", "me");
    assert!(theirs.open_beacon(&mut beacon.clone(), from).is_none());
    let other_secret = ClusterKey::derive(b"other", "ours", "me");
    assert!(
        other_secret
            .open_beacon(&mut beacon.clone(), from)
            .is_none()
    );
    assert!(ours.open_beacon(&mut [0u8; 1], from).is_none());
}

/// A link's ends: `a` opened it to `b`.
fn ends<'a>(a: &'a str, b: &'a str) -> LinkEnds<'a> {
    LinkEnds {
        opener: (a, &[1u8; 32]),
        taker: (b, &[2u8; 32]),
    }
}

#[test]
fn records_open_in_order_and_only_once() {
    let key = ClusterKey::derive(b"s3cret", "c", "me");
    let codec = || FrameCodec::<String>::new(1024);
    let link = ends("a", "b");
    let mut writer = Sealed::new(codec(), key.link_key(b"opener", &link), 1024);
    let mut reader = Sealed::new(codec(), key.link_key(b"opener", &link), 1024);
    let mut wire = BytesMut::new();
    writer
        .encode(Frame::new("first".to_string()), &mut wire)
        .unwrap();
    let first = wire.clone();
    writer
        .encode(Frame::new("second".to_string()), &mut wire)
        .unwrap();
    assert_eq!(reader.decode(&mut wire).unwrap().unwrap().header, "first");
    assert_eq!(reader.decode(&mut wire).unwrap().unwrap().header, "second");
    // The first record again, replayed: its number is past.
    let mut replayed = first;
    assert!(reader.decode(&mut replayed).is_err());
    // The other direction's key does not open this one's records.
    let mut backwards = Sealed::new(codec(), key.link_key(b"taker", &link), 1024);
    let mut wire = BytesMut::new();
    writer
        .encode(Frame::new("third".to_string()), &mut wire)
        .unwrap();
    assert!(backwards.decode(&mut wire).is_err());
}

#[test]
fn a_link_opens_only_between_the_nodes_it_names() {
    let key = ClusterKey::derive(b"s3cret", "c", "me");
    let codec = || FrameCodec::<String>::new(1024);
    let mut writer = Sealed::new(codec(), key.link_key(b"opener", &ends("a", "b")), 1024);
    let mut wire = BytesMut::new();
    writer
        .encode(Frame::new("hello".to_string()), &mut wire)
        .unwrap();
    for (opener, taker) in [("a", "c"), ("b", "a"), ("ab", ""), ("a", "b ")] {
        let mut reader = Sealed::new(codec(), key.link_key(b"opener", &ends(opener, taker)), 1024);
        assert!(
            reader.decode(&mut wire.clone()).is_err(),
            "{opener} to {taker}"
        );
    }
    let elsewhere = ClusterKey::derive(b"s3cret", "d", "me");
    let mut reader = Sealed::new(
        codec(),
        elsewhere.link_key(b"opener", &ends("a", "b")),
        1024,
    );
    assert!(reader.decode(&mut wire).is_err(), "another cluster");
}

#[test]
fn a_claimed_length_sets_nothing_aside() {
    let key = ClusterKey::derive(b"s3cret", "c", "me");
    let mut reader = Sealed::new(
        FrameCodec::<String>::new(16 << 20),
        key.link_key(b"opener", &ends("a", "b")),
        16 << 20,
    );
    let mut wire = BytesMut::new();
    wire.put_u32(16 << 20);
    wire.put_slice(b"junk");
    assert!(reader.decode(&mut wire).unwrap().is_none());
    assert!(wire.capacity() < 1024);
}
