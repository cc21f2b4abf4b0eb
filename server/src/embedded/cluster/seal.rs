//! The cluster secret at work: every gossip datagram, discovery beacon and peer link between
//! nodes is sealed with keys derived from the secret the nodes share, so that a process that
//! does not know it can neither read nor forge anything the cluster says.
//!
//! The construction is an AEAD (ChaCha20-Poly1305) with keys derived by HKDF-SHA256 from the
//! secret and the cluster's name, from `ring`; nothing here is cryptography of our own making:
//!
//! - datagrams (gossip, beacons) each carry a random nonce, under a key of their kind;
//! - a link begins with a nonce from each side, in the clear; each direction then has its own
//!   key, derived from both nonces, and numbers its records, so a recorded link cannot be
//!   replayed into a new one and records cannot be dropped, reordered or repeated unseen. The
//!   first record must open within [`HANDSHAKE_TIME`], or the link is dropped. The keys are
//!   bound to the cluster's name and both nodes' names, so a link redirected to another node,
//!   or reflected back to its opener, does not open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use immutant_protocol::ProtocolError;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

/// The largest first record a peer may send on a link it opens, before it has shown that it
/// knows the secret (its hello is small).
pub const FIRST_RECORD_LIMIT: usize = 4096;
/// How long a peer has to open a link (its nonce, then its first sealed record).
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(5);
/// What a link opens with, before the opener's nonce: which protocol, and which version of it.
const LINK_MAGIC: &[u8; 8] = b"IMMLINK1";
const NONCE_LEN: usize = aead::NONCE_LEN;
const TAG_LEN: usize = 16;
const LINK_NONCE_LEN: usize = 32;
/// The largest datagram: what UDP carries.
pub const MAX_DATAGRAM: usize = 65_507;
/// How many links may be opening at once (not yet shown to know the secret); more are turned
/// away.
pub const MAX_OPENING: usize = 64;
/// How often one address's failures to authenticate are said in the log.
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(30);

/// The cluster's keys, from its secret and name.
pub struct ClusterKey {
    name: String,
    /// This node's name: links are bound to it.
    node: String,
    prk: hkdf::Prk,
    gossip: LessSafeKey,
    beacon: LessSafeKey,
    rng: SystemRandom,
    complaints: Complaints,
}

impl ClusterKey {
    /// The keys of node `node` of cluster `name`, whose members share `secret`.
    pub fn derive(secret: &[u8], name: &str, node: &str) -> ClusterKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"immutant cluster v1").extract(secret);
        let gossip = aead_key(&prk, &[b"gossip", name.as_bytes()]);
        let beacon = aead_key(&prk, &[b"beacon", name.as_bytes()]);
        ClusterKey {
            name: name.to_string(),
            node: node.to_string(),
            prk,
            gossip,
            beacon,
            rng: SystemRandom::new(),
            complaints: Complaints::default(),
        }
    }

    /// A gossip datagram, sealed; none if it cannot be (see [`seal_datagram`]).
    pub fn seal_gossip(&self, plain: &[u8]) -> Option<Vec<u8>> {
        seal_datagram(&self.gossip, &self.rng, plain)
    }

    /// What a gossip datagram holds; none if it was not sealed with this cluster's key.
    pub fn open_gossip<'a>(&self, sealed: &'a mut [u8]) -> Option<&'a [u8]> {
        open_datagram(&self.gossip, sealed)
    }

    /// A discovery beacon, sealed, after the cluster's name in the clear: clusters that share
    /// a multicast group pass over each other's beacons without a word.
    /// None if it cannot be sealed (see [`seal_datagram`]).
    pub fn seal_beacon(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let name = self.name.as_bytes();
        let mut beacon = (name.len() as u16).to_be_bytes().to_vec();
        beacon.extend_from_slice(name);
        beacon.extend(seal_datagram(&self.beacon, &self.rng, plain)?);
        Some(beacon)
    }

    /// A beacon's content; none if it is another cluster's, or was not sealed with this
    /// cluster's key (said in the log now and then, naming `from`).
    pub fn open_beacon<'a>(&self, beacon: &'a mut [u8], from: SocketAddr) -> Option<&'a [u8]> {
        let (length, rest) = beacon.split_first_chunk_mut::<2>()?;
        let length = u16::from_be_bytes(*length) as usize;
        if rest.get(..length) != Some(self.name.as_bytes()) {
            return None;
        }
        let opened = open_datagram(&self.beacon, &mut rest[length..]);
        if opened.is_none() {
            self.complain(from.ip(), "a discovery beacon");
        }
        opened
    }

    /// Says in the log, now and then, that `what` could not be sealed here: the system's random
    /// source or the sealer failed, so nothing went out (never a nonce of zeros, nor plaintext).
    pub fn cannot_seal(&self, what: &'static str) {
        if self
            .complaints
            .due(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), what)
        {
            tracing::error!(
                "cannot seal {what}: the system's random source or the sealer failed; it is dropped, nothing goes out unsealed"
            );
        }
    }

    /// Says in the log, now and then, that `what` from `address` did not prove it knows the
    /// secret.
    pub fn complain(&self, address: IpAddr, what: &'static str) {
        if self.complaints.due(address, what) {
            tracing::warn!(
                "{what} from {address} is not sealed with this cluster's secret and is ignored; if {address} runs a node of this cluster, give both nodes the same secret (-Dimmutant.cluster.secret or -Dimmutant.cluster.secret-file)"
            );
        }
    }

    /// Says in the log, now and then, that a datagram from `address` came to the node's own
    /// gossip socket on loopback without passing its relay: not a member's, and ignored.
    pub fn stray(&self, address: IpAddr) {
        if self.complaints.due(address, "stray gossip") {
            tracing::warn!(
                "a gossip datagram from {address} came to the node's loopback gossip socket, not through its relay, and is ignored; no member sends there"
            );
        }
    }

    /// Says in the log, now and then, that gossip could not pass the node's loopback relay
    /// (out of descriptors, say): it is lost like any datagram, and gossip goes on.
    pub fn cannot_relay(&self, error: &dyn std::fmt::Display) {
        if self
            .complaints
            .due(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), "relay")
        {
            tracing::warn!(
                "gossip could not pass the node's loopback relay ({error}); it is dropped"
            );
        }
    }

    /// Says in the log, now and then, that a link from `address` was turned away: too many
    /// were opening at once.
    pub fn turned_away(&self, address: IpAddr) {
        if self.complaints.due(address, "turned away") {
            tracing::warn!(
                "turned away a link from {address}: {MAX_OPENING} links are opening at once, none of them sealed yet"
            );
        }
    }

    /// Opens a link to the member `peer` over `socket`: says hello with this node's name and a
    /// nonce, hears the member's nonce, and answers the codecs to write and read with. The keys
    /// are bound to both names: a link that reaches another node than `peer` (redirected on
    /// the way), or comes back to this one (reflected), does not open.
    pub async fn open_link<C>(
        &self,
        socket: &mut TcpStream,
        peer: &str,
        inner: impl Fn() -> C,
        limit: usize,
    ) -> std::io::Result<(Sealed<C>, Sealed<C>)> {
        let mine = self.link_nonce()?;
        let mut hello = LINK_MAGIC.to_vec();
        hello.extend_from_slice(&mine);
        hello.push(self.node.len() as u8);
        hello.extend_from_slice(self.node.as_bytes());
        socket.write_all(&hello).await?;
        let mut theirs = [0u8; LINK_NONCE_LEN];
        tokio::time::timeout(HANDSHAKE_TIME, socket.read_exact(&mut theirs))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let ends = LinkEnds {
            opener: (&self.node, &mine),
            taker: (peer, &theirs),
        };
        Ok((
            Sealed::new(inner(), self.link_key(b"opener", &ends), limit),
            Sealed::new(inner(), self.link_key(b"taker", &ends), limit),
        ))
    }

    /// Takes a link a peer opens over `socket`: hears its hello, name and nonce, answers with
    /// a nonce, and answers the name it gave and the codecs to write and read with. Whether the
    /// peer knows the secret, and is the node it names, shows when its first record is read:
    /// until then the reading codec takes records of [`FIRST_RECORD_LIMIT`] bytes at most.
    /// The caller bounds the whole in time ([`HANDSHAKE_TIME`]).
    pub async fn take_link<C>(
        &self,
        socket: &mut TcpStream,
        inner: impl Fn() -> C,
        limit: usize,
    ) -> std::io::Result<(String, Sealed<C>, Sealed<C>)> {
        let mut hello = [0u8; LINK_MAGIC.len() + LINK_NONCE_LEN + 1];
        socket.read_exact(&mut hello).await?;
        let (magic, rest) = hello.split_at(LINK_MAGIC.len());
        let (theirs, length) = rest.split_at(LINK_NONCE_LEN);
        if magic != LINK_MAGIC {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let mut name = vec![0u8; length[0] as usize];
        socket.read_exact(&mut name).await?;
        let name = String::from_utf8(name)
            .ok()
            .filter(|name| immutant_protocol::names::is_node_name(name) && *name != self.node)
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let mine = self.link_nonce()?;
        socket.write_all(&mine).await?;
        let ends = LinkEnds {
            opener: (&name, theirs),
            taker: (&self.node, &mine),
        };
        let writing = Sealed::new(inner(), self.link_key(b"taker", &ends), limit);
        let mut reading = Sealed::new(inner(), self.link_key(b"opener", &ends), limit);
        reading.set_limit(FIRST_RECORD_LIMIT);
        Ok((name, writing, reading))
    }

    /// A fresh nonce for this end of a link; an error ([`SealFailed`]), and no link, if the
    /// system's random source fails (a nonce of zeros would make the link's keys predictable).
    fn link_nonce(&self) -> std::io::Result<[u8; LINK_NONCE_LEN]> {
        let mut nonce = [0u8; LINK_NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| std::io::Error::other(SealFailed))?;
        Ok(nonce)
    }

    /// The key of one direction of a link (`writer`: which end writes with it), bound to the
    /// cluster, both ends' names and both nonces (names with their lengths, so that no two
    /// pairs of names read alike).
    fn link_key(&self, writer: &[u8], ends: &LinkEnds) -> LessSafeKey {
        let (opener, opener_nonce) = ends.opener;
        let (taker, taker_nonce) = ends.taker;
        let lengths = [
            (self.name.len() as u16).to_be_bytes(),
            (opener.len() as u16).to_be_bytes(),
            (taker.len() as u16).to_be_bytes(),
        ];
        aead_key(
            &self.prk,
            &[
                b"link",
                &lengths[0],
                self.name.as_bytes(),
                writer,
                &lengths[1],
                opener.as_bytes(),
                &lengths[2],
                taker.as_bytes(),
                opener_nonce,
                taker_nonce,
            ],
        )
    }
}

/// Who opened a link and who took it, each with the nonce it gave.
struct LinkEnds<'a> {
    opener: (&'a str, &'a [u8]),
    taker: (&'a str, &'a [u8]),
}

fn aead_key(prk: &hkdf::Prk, info: &[&[u8]]) -> LessSafeKey {
    let okm = prk
        .expand(info, &aead::CHACHA20_POLY1305)
        .expect("a 32-byte key is within what HKDF-SHA256 can expand to");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// `plain` sealed under `key` with a random nonce: the nonce, then the ciphertext and its tag.
/// None if the system's random source or the sealer fails: nothing goes out rather than a
/// datagram under a nonce of zeros, or in the clear (the caller drops it, saying why).
fn seal_datagram(key: &LessSafeKey, rng: &SystemRandom, plain: &[u8]) -> Option<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).ok()?;
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
        .ok()?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + body.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&body);
    Some(sealed)
}

/// What a sealed datagram holds, if it was sealed under `key`.
fn open_datagram<'a>(key: &LessSafeKey, sealed: &'a mut [u8]) -> Option<&'a [u8]> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    key.open_in_place(nonce, Aad::empty(), body)
        .ok()
        .map(|plain| &*plain)
}

/// One direction of a link: each frame of the inner codec is a record, sealed with the
/// direction's key and the record's number as nonce, after its length.
pub struct Sealed<C> {
    inner: C,
    key: LessSafeKey,
    next: u64,
    /// The largest record, sealed.
    limit: usize,
}

impl<C> Sealed<C> {
    fn new(inner: C, key: LessSafeKey, limit: usize) -> Sealed<C> {
        Sealed {
            inner,
            key,
            next: 0,
            limit: limit.saturating_add(TAG_LEN),
        }
    }

    /// Records of up to `limit` bytes (before sealing) are taken from now on.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.saturating_add(TAG_LEN);
    }

    fn nonce(&mut self) -> Nonce {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// This node could not seal what it was to send: the system's random source or the sealer
/// failed. Not the peer's fault: the link is given up and said so.
#[derive(Debug, thiserror::Error)]
#[error("the system's random source or the sealer failed")]
pub struct SealFailed;

/// Whether `error` is this node's failure to seal, not the peer's word.
pub fn is_seal_failure(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<SealFailed>())
}

fn unsealed() -> ProtocolError {
    ProtocolError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "a record on the link is not sealed with this cluster's secret",
    ))
}

impl<C: Decoder<Error = ProtocolError>> Decoder for Sealed<C> {
    type Item = C::Item;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<C::Item>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if size < TAG_LEN {
            return Err(unsealed());
        }
        if size > self.limit {
            return Err(ProtocolError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        // Nothing is set aside for what a record claims: the buffer grows as bytes arrive.
        if src.len() < 4 + size {
            return Ok(None);
        }
        src.advance(4);
        let mut record = src.split_to(size);
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut record)
            .map_err(|_| unsealed())?
            .len();
        record.truncate(plain);
        match self.inner.decode(&mut record)? {
            Some(item) if record.is_empty() => Ok(Some(item)),
            _ => Err(unsealed()),
        }
    }
}

impl<I, C: Encoder<I, Error = ProtocolError>> Encoder<I> for Sealed<C> {
    type Error = ProtocolError;

    fn encode(&mut self, item: I, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut record = BytesMut::new();
        self.inner.encode(item, &mut record)?;
        let nonce = self.nonce();
        self.key
            .seal_in_place_append_tag(nonce, Aad::empty(), &mut record)
            .map_err(|_| ProtocolError::Io(std::io::Error::other(SealFailed)))?;
        dst.reserve(4 + record.len());
        dst.put_u32(record.len() as u32);
        dst.extend_from_slice(&record);
        Ok(())
    }
}

/// What this node has said of which address lately, so that a stranger who keeps sending
/// gets one line of each kind now and then, not one per packet.
#[derive(Default)]
struct Complaints(Mutex<HashMap<(IpAddr, &'static str), Instant>>);

impl Complaints {
    fn due(&self, address: IpAddr, what: &'static str) -> bool {
        let address = (address, what);
        let mut said = immutant_foundation::sync::lock(&self.0);
        let now = Instant::now();
        if said.len() > 1024 {
            said.retain(|_, at| now.duration_since(*at) < COMPLAINT_INTERVAL);
            // Many addresses at once (spoofed sources): forget them all rather than grow.
            if said.len() > 1024 {
                said.clear();
            }
        }
        match said.get(&address) {
            Some(at) if now.duration_since(*at) < COMPLAINT_INTERVAL => false,
            _ => {
                said.insert(address, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests;
