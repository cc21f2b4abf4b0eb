use super::*;

/// A socket on loopback standing for chitchat's.
async fn chitchat_stand_in() -> (TokioUdpSocket, SocketAddr) {
    let socket = TokioUdpSocket::bind(loopback()).await.unwrap();
    let address = socket.local_addr().unwrap();
    (socket, address)
}

#[tokio::test]
async fn a_relay_takes_from_chitchats_socket_only() {
    let (chitchat, chitchat_addr) = chitchat_stand_in().await;
    let mut relays = Relays::default();
    let peer: SocketAddr = ([192, 0, 2, 1], 7600).into();
    let relay = relays.for_peer(peer, chitchat_addr).unwrap();
    let stranger = TokioUdpSocket::bind(loopback()).await.unwrap();
    stranger.send_to(b"plain", relay.address).await.unwrap();
    chitchat
        .send_to(b"chitchat's", relay.address)
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let length = relay.socket.recv(&mut buffer).await.unwrap();
    assert_eq!(&buffer[..length], b"chitchat's");
    let more = tokio::time::timeout(Duration::from_millis(100), relay.socket.recv(&mut buffer));
    assert!(more.await.is_err(), "the stranger's datagram never came");
}

#[tokio::test]
async fn each_peer_has_its_relay_and_one_let_go_is_forgotten_both_ways() {
    let (_chitchat, chitchat_addr) = chitchat_stand_in().await;
    let mut relays = Relays::default();
    let (one, two): (SocketAddr, SocketAddr) =
        (([192, 0, 2, 1], 7600).into(), ([192, 0, 2, 2], 7600).into());
    let first = relays.for_peer(one, chitchat_addr).unwrap().address;
    let second = relays.for_peer(two, chitchat_addr).unwrap().address;
    assert_ne!(first, second);
    assert_eq!(relays.for_peer(one, chitchat_addr).unwrap().address, first);
    assert_eq!(relays.peer_of(first), Some(one));
    assert_eq!(relays.peer_of(second), Some(two));
    relays.let_go(one);
    assert_eq!(relays.peer_of(first), None);
    assert_eq!(relays.peer_of(second), Some(two));
}
