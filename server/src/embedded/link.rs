//! What members say to each other over the mesh's sealed links: each frame's header. The
//! body carries the payload (a message, cache values, a part of an artifact).

use std::net::SocketAddr;

use futures_util::SinkExt;
use immutant_protocol::{Frame, FrameCodec, MessageHeader};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::cache::peer::{PeerAnswer, PeerRequest};
use super::cluster::Cluster;
use super::cluster::seal::{self, Sealed};

/// What nodes say to each other over a link.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum LinkHeader {
    /// The first frame: who is calling.
    Hello { cluster: String, node: String },
    /// A message for `destination` (a topic if `topic`); the body is its payload. `origin`
    /// names the forward, the same on every retry.
    Forward {
        delivery: u64,
        destination: String,
        topic: bool,
        origin: String,
        message: MessageHeader,
        persistent: bool,
        expires_at_ms: Option<u64>,
    },
    /// The forward `delivery` is stored on the other node.
    Forwarded { delivery: u64 },
    /// The other node could not store the forward `delivery`.
    Refused { delivery: u64, reason: String },
    /// A reply for the app on `connection` of the other node; the body is its payload.
    Reply {
        connection: u64,
        message: MessageHeader,
    },
    /// A request about the cache `cache`, answered by `cache-answer` with the same `id`.
    CacheRequest {
        id: u64,
        cache: String,
        request: PeerRequest,
    },
    /// The answer to the cache request `id`.
    CacheAnswer { id: u64, answer: PeerAnswer },
    /// The part of the artifact `file` (whose SHA-256 is `sha256`) from `offset`, on a link
    /// opened to fetch it; answered by `artifact-part`.
    ArtifactRequest {
        file: String,
        sha256: String,
        offset: u64,
        /// The largest part the asker takes in one frame.
        max: usize,
    },
    /// A part of the artifact asked for, from `offset`: its bytes are the body (none past its
    /// end). `found` is false if this node has no such artifact.
    ArtifactPart { offset: u64, found: bool },
    /// A read-only question to the other node's management: `path` with its query, on a link
    /// opened to ask it; answered by `answer`.
    Question { path: String },
    /// The answer to the question: its HTTP status; the body is its body.
    Answer { status: u16 },
}

/// Room for a frame's header besides the largest payload.
pub const HEADER_ROOM: usize = 64 * 1024;

/// The largest frame a link takes: the largest message, and its header.
pub fn frame_limit(max_message_size: u64) -> usize {
    (max_message_size as usize).saturating_add(HEADER_ROOM)
}

/// The sending half of a link: frames sealed with the cluster's secret.
pub type LinkWriter = FramedWrite<OwnedWriteHalf, Sealed<FrameCodec<LinkHeader>>>;
/// The receiving half of a link.
pub type LinkReader = FramedRead<OwnedReadHalf, Sealed<FrameCodec<LinkHeader>>>;

/// Opens a link to the member `peer` at `address` (its cluster port): connects, proves this
/// node knows the cluster's secret, and says hello. `limit` is the largest frame. A failure to
/// seal is said in the log; any failure is the link not opened.
pub async fn dial(
    cluster: &Cluster,
    peer: &str,
    address: SocketAddr,
    limit: usize,
) -> std::io::Result<(LinkWriter, LinkReader)> {
    let mut socket = TcpStream::connect(address).await?;
    let codec = || FrameCodec::<LinkHeader>::new(limit);
    let (writing, reading) = cluster
        .key()
        .open_link(&mut socket, peer, codec, limit)
        .await
        .inspect_err(|error| {
            if seal::is_seal_failure(error) {
                cluster.key().cannot_seal("a link");
            }
        })?;
    // Requests and answers go out as soon as they are written: Nagle's algorithm would hold a
    // small one back until the last one's ACK (some 40 ms).
    let _ = socket.set_nodelay(true);
    let (read, write) = socket.into_split();
    let mut writer = FramedWrite::new(write, writing);
    let hello = LinkHeader::Hello {
        cluster: cluster.name().to_string(),
        node: cluster.node_name().to_string(),
    };
    writer
        .send(Frame::new(hello))
        .await
        .map_err(std::io::Error::other)?;
    Ok((writer, FramedRead::new(read, reading)))
}
