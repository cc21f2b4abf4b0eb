//! The mesh: peer links, a TCP connection from this node to each other member, on the cluster port, that
//! carries the messages this node forwards there (store and forward: the other node answers
//! `forwarded` once the message is on its disk). The same frames as the app protocol, with the
//! headers below, each sealed with the cluster's secret ([`seal`]): encrypted, authenticated,
//! and in order. Links follow the view: one opens for each new member and closes with it.
//!
//! The mesh stands above the cluster, messaging and caches and dispatches to them: the cluster
//! knows nothing of what travels its links. The link manager keeps the bridges in the broker
//! matching what each member consumes, and tells the cluster what this node consumes. Cache
//! requests travel the same links: the caller numbers each, and the other node answers with
//! that number.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use immutant_protocol::{Frame, FrameCodec, Outbox, write_frames};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, warn};

use super::artifacts::ArtifactShelf;
use super::cache::Caches;
use super::cache::peer::{PeerAnswer, PeerCall, Peers};
use super::cluster::{Cluster, seal};
use super::link::{self, LinkHeader};
use super::messaging::{Broker, Forward, Message, Reply};
use crate::vocabulary::membership::{Interest, Member};
use crate::vocabulary::questions::AnswerDesk;
use immutant_foundation::shutdown::Shutdown;

/// How often the manager brings links and bridges in line with the view.
const TICK: Duration = Duration::from_millis(200);
/// How long a write to a peer may take before the link is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each attempt to verify a suspected member may take.
const VERIFY_TIMEOUT: Duration = Duration::from_millis(100);

/// What the links need besides the cluster.
#[derive(Clone)]
pub struct LinkServices {
    pub broker: Arc<Broker>,
    pub caches: Arc<Caches>,
    pub peers: Arc<Peers>,
    /// The artifacts this node gives the members that fetch them.
    pub artifacts: Arc<ArtifactShelf>,
    /// What answers the other members' questions to this node's management.
    pub answers: Arc<AnswerDesk>,
}

/// Starts accepting links on `listener` (the cluster port), and the manager that opens links to
/// the members.
pub fn start(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    services: LinkServices,
    shutdown: Shutdown,
) {
    let limit = link::frame_limit(services.broker.max_message_size());
    {
        let (cluster, services, shutdown) = (cluster.clone(), services.clone(), shutdown.clone());
        let opening = Arc::new(tokio::sync::Semaphore::new(seal::MAX_OPENING));
        tokio::spawn(async move {
            let mut warned: Option<std::time::Instant> = None;
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, peer)) => match opening.clone().try_acquire_owned() {
                            Ok(permit) => {
                                // Answers go out as soon as they are written, as requests do
                                // from the other side: Nagle's algorithm would hold a small
                                // answer back until the last one's ACK (some 40 ms).
                                let _ = socket.set_nodelay(true);
                                tokio::spawn(serve(socket, cluster.clone(), services.clone(), (limit, permit)));
                            }
                            // Many links at once that have not shown they know the secret: a
                            // stranger's flood, not members. Turned away at once.
                            Err(_) => cluster.key().turned_away(peer.ip()),
                        },
                        Err(error) => {
                            // Out of descriptors, most likely: wait for some to close rather
                            // than spin, and say so now and then.
                            if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                                warn!("cannot accept a peer link: {error}");
                                warned = Some(std::time::Instant::now());
                            }
                            tokio::time::sleep(immutant_foundation::net::ACCEPT_BACKOFF).await;
                        }
                    },
                    _ = shutdown.cancelled() => break,
                }
            }
            // The port stays open, taking no more links, until the process ends: a member that
            // tries it while this node's apps stop must not take the node for dead (a refused
            // port proves death) and take its singletons over before their stops return.
            let _open = listener;
            std::future::pending::<()>().await;
        });
    }
    tokio::spawn(manage(cluster, services, shutdown, limit));
}

/// The receiving end of a link: stores each forwarded message, then says so; answers cache
/// requests. A peer that does not prove it knows the cluster's secret within the handshake
/// time (its first record sealed with it) is dropped, having been told nothing.
async fn serve(
    mut socket: TcpStream,
    cluster: Arc<Cluster>,
    services: LinkServices,
    (limit, opening): (usize, tokio::sync::OwnedSemaphorePermit),
) {
    let LinkServices {
        broker,
        caches,
        artifacts,
        answers,
        ..
    } = services;
    let Ok(address) = socket.peer_addr() else {
        return;
    };
    let codec = || FrameCodec::<LinkHeader>::new(limit);
    // One deadline for the whole opening: the peer's hello, then its first sealed record.
    let deadline = tokio::time::Instant::now() + seal::HANDSHAKE_TIME;
    let taken =
        tokio::time::timeout_at(deadline, cluster.key().take_link(&mut socket, codec, limit));
    let (name, writing, reading) = match taken.await {
        Ok(Ok(taken)) => taken,
        // Closed before a word: a member checking that this port answers, no stranger.
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return,
        Ok(Err(error)) if seal::is_seal_failure(&error) => {
            cluster.key().cannot_seal("a link");
            return;
        }
        _ => {
            cluster.key().complain(address.ip(), "a link");
            return;
        }
    };
    let (read, write) = socket.into_split();
    let mut frames = FramedRead::new(read, reading);
    let from = match tokio::time::timeout_at(deadline, frames.next()).await {
        Ok(Some(Ok(Frame {
            header:
                LinkHeader::Hello {
                    cluster: theirs,
                    node,
                },
            ..
        }))) if theirs == cluster.name() && node == name => node,
        _ => {
            cluster.key().complain(address.ip(), "a link");
            return;
        }
    };
    // Shown to know the secret: its records may be as large as any.
    frames.decoder_mut().set_limit(limit);
    drop(opening);
    let (outbox, outgoing): (Outbox<LinkHeader>, _) = mpsc::unbounded_channel();
    tokio::spawn(write_frames(FramedWrite::new(write, writing), outgoing));
    while let Some(Ok(Frame { header, body })) = frames.next().await {
        if let LinkHeader::CacheRequest { id, cache, request } = header {
            let (caches, outbox, from) = (caches.clone(), outbox.clone(), from.clone());
            tokio::spawn(async move {
                let (answer, body) = caches.serve(&from, &cache, request, body).await;
                let frame = Frame::with_body(LinkHeader::CacheAnswer { id, answer }, body);
                let _ = outbox.send(frame.into());
            });
            continue;
        }
        if let LinkHeader::ArtifactRequest {
            file,
            sha256,
            offset,
            max,
        } = header
        {
            let (artifacts, outbox) = (artifacts.clone(), outbox.clone());
            tokio::spawn(async move {
                let part = artifacts.part(file, sha256, offset, max).await;
                let found = part.is_some();
                let frame = Frame::with_body(
                    LinkHeader::ArtifactPart { offset, found },
                    part.unwrap_or_default(),
                );
                let _ = outbox.send(frame.into());
            });
            continue;
        }
        if let LinkHeader::Question { path } = header {
            let (answers, outbox) = (answers.clone(), outbox.clone());
            tokio::spawn(async move {
                let (status, body) = answers.answer(path).await;
                let _ = outbox.send(Frame::with_body(LinkHeader::Answer { status }, body).into());
            });
            continue;
        }
        if let LinkHeader::Reply {
            connection,
            message,
        } = header
        {
            broker.reply(connection, Message::reply(message, body));
            continue;
        }
        let LinkHeader::Forward {
            delivery,
            destination,
            topic,
            origin,
            message,
            persistent,
            expires_at_ms,
        } = header
        else {
            continue;
        };
        let broker = broker.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let message = Message {
                header: message,
                body,
                persistent,
                expires_at_ms,
                forwarded: true,
                origin: None,
            };
            match broker
                .accept_forward(origin, &destination, topic, message)
                .await
            {
                Ok(()) => {
                    let _ = outbox.send(Frame::new(LinkHeader::Forwarded { delivery }).into());
                }
                Err(error) => {
                    debug!("a forward to {destination} was refused: {error}");
                    let refused = LinkHeader::Refused {
                        delivery,
                        reason: error.to_string(),
                    };
                    let _ = outbox.send(Frame::new(refused).into());
                }
            }
        });
    }
}

/// A link to a member (by name and generation): its task, and where to tell it what the member
/// consumes. Dropping the sender ends the link.
struct Link {
    name: String,
    calls: mpsc::UnboundedSender<PeerCall>,
    task: JoinHandle<()>,
    interest: watch::Sender<Interest>,
    replies: mpsc::UnboundedSender<Reply>,
}

/// Keeps one link per other member, the bridges matching each member's interest, this node's
/// interest in the cluster's state, and redistribution going.
async fn manage(cluster: Arc<Cluster>, services: LinkServices, shutdown: Shutdown, limit: usize) {
    let broker = services.broker.clone();
    let mut links: HashMap<(String, u64), Link> = HashMap::new();
    let mut told = Interest::new();
    let mut ticker = tokio::time::interval(TICK);
    let (replies, mut replies_out) = mpsc::unbounded_channel();
    broker.route_replies(replies);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            reply = replies_out.recv() => {
                // A reply for an app on another node goes over the link to it.
                if let Some(reply) = reply
                    && let Some(link) = links.iter().find(|((name, _), _)| *name == reply.node).map(|(_, link)| link)
                {
                    let _ = link.replies.send(reply);
                }
                continue;
            }
            _ = shutdown.cancelled() => break,
        }
        let interest = broker.interest();
        if interest != told {
            cluster.set_interest(&told, &interest).await;
            told = interest;
        }
        let view = cluster.view().borrow().clone();
        let peers: Vec<&Member> = view
            .members
            .iter()
            .filter(|member| !member.is_self)
            .collect();
        // A member gone from the view: its link returns what was on its way, and ends.
        links.retain(|id, link| {
            let live = peers
                .iter()
                .any(|member| (member.name.clone(), member.generation) == *id);
            if !live {
                services.peers.unlink(&link.name, &link.calls);
            }
            live
        });
        for member in peers {
            let id = (member.name.clone(), member.generation);
            let link = links.entry(id).or_insert_with(|| {
                let (interest, wanted) = watch::channel(Interest::new());
                let (replies, replies_in) = mpsc::unbounded_channel();
                let (calls, calls_in) = mpsc::unbounded_channel();
                services.peers.link(&member.name, calls.clone());
                let peer = (member.name.clone(), member.generation, member.gossip_addr);
                let channels = (wanted, replies_in, calls_in);
                let task = tokio::spawn(run_link(
                    cluster.clone(),
                    broker.clone(),
                    peer,
                    channels,
                    limit,
                ));
                Link {
                    name: member.name.clone(),
                    calls,
                    task,
                    interest,
                    replies,
                }
            });
            // Sent every tick, changed or not: see `run_link`.
            link.interest.send_replace(member.interest.clone());
        }
        broker.redistribute();
    }
    // The node is stopping: what is on its way stays in the journal.
    for link in links.into_values() {
        link.task.abort();
    }
}

/// Runs the link to one member: connects (again and again, while the member lives), and
/// forwards what its bridges are given. Ends when `interest` closes.
async fn run_link(
    cluster: Arc<Cluster>,
    broker: Arc<Broker>,
    (peer, generation, address): (String, u64, SocketAddr),
    (mut interest, mut replies, mut calls): (
        watch::Receiver<Interest>,
        mpsc::UnboundedReceiver<Reply>,
        mpsc::UnboundedReceiver<PeerCall>,
    ),
    limit: usize,
) {
    let mut next_call = 0u64;
    // The member is in the view while the manager keeps the sender.
    while interest.has_changed().is_ok() {
        let Ok((mut writer, mut reader)) = link::dial(&cluster, &peer, address, limit).await else {
            tokio::time::sleep(TICK).await;
            continue;
        };
        let connection = broker.next_connection();
        let (forwards, mut forwarded) = mpsc::unbounded_channel::<Forward>();
        let wanted = interest.borrow_and_update().clone();
        keep_bridges(&broker, connection, &peer, &forwards, &wanted).await;
        // Cache requests waiting for their answers; dropped (failing their callers) when the
        // link drops.
        let mut pending: HashMap<u64, tokio::sync::oneshot::Sender<(PeerAnswer, Bytes)>> =
            HashMap::new();
        let mut relinking = false;
        loop {
            tokio::select! {
                forward = forwarded.recv() => {
                    let Some(forward) = forward else { break };
                    // Forwards given together leave in one write; a peer that takes nothing for
                    // a while (hung) gets its link closed, and its forwards go elsewhere.
                    let frame = forward_frame(&cluster, forward);
                    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, writer.feed(frame)).await, Ok(Ok(()))) {
                        break;
                    }
                    if forwarded.is_empty()
                        && !matches!(tokio::time::timeout(WRITE_TIMEOUT, writer.flush()).await, Ok(Ok(())))
                    {
                        break;
                    }
                }
                answer = reader.next() => match answer {
                    Some(Ok(Frame { header: LinkHeader::Forwarded { delivery }, .. })) => broker.ack(connection, delivery),
                    // What was on its way goes back in line when the link starts again.
                    Some(Ok(Frame { header: LinkHeader::Refused { reason, .. }, .. })) => {
                        warn!("{peer} refused a forwarded message ({reason}); linking again");
                        relinking = true;
                        break;
                    }
                    Some(Ok(Frame { header: LinkHeader::CacheAnswer { id, answer }, body })) => {
                        if let Some(caller) = pending.remove(&id) {
                            let _ = caller.send((answer, body));
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                Some(call) = calls.recv() => {
                    // A caller that gave up waiting does not want its call made late.
                    if call.answer.is_closed() {
                        continue;
                    }
                    next_call += 1;
                    let PeerCall { cache, request, body, answer } = call;
                    pending.insert(next_call, answer);
                    let frame = Frame::with_body(LinkHeader::CacheRequest { id: next_call, cache, request }, body);
                    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, writer.send(frame)).await, Ok(Ok(()))) {
                        break;
                    }
                }
                reply = replies.recv() => {
                    let Some(Reply { connection, message, .. }) = reply else { break };
                    let frame = Frame::with_body(LinkHeader::Reply { connection, message: message.header }, message.body);
                    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, writer.send(frame)).await, Ok(Ok(()))) {
                        break;
                    }
                }
                changed = interest.changed() => {
                    // Every tick, not only on a change: a destination started here since the
                    // last one gets its bridge now.
                    if changed.is_err() {
                        break;
                    }
                    let wanted = interest.borrow_and_update().clone();
                    keep_bridges(&broker, connection, &peer, &forwards, &wanted).await;
                }
            }
        }
        // A link given up (the member left the view, hung, or broke it) drops what it had
        // not sent yet rather than deliver it later: a request written just before a partition
        // must not reach the member after the heal, when its caller has long tried elsewhere.
        // One closed only to link again (a refusal) still delivers what it had written.
        if !relinking {
            let _ =
                socket2::SockRef::from(writer.get_ref().as_ref()).set_linger(Some(Duration::ZERO));
        }
        drop((writer, reader));
        // What was on its way comes back in line, for the next link or another node.
        broker.disconnect(connection);
        // A link that drops and cannot be opened again is a member killed: its socket closed.
        // One whose port refuses outright is proven dead (a hung or cut-off one times out).
        let verdict = answers(address).await;
        // Proven dead even if gossip took the member out of the view while it was tried: its
        // promises bind no one (else a takeover waits for its lease to run out).
        if let Verdict::Refuses = verdict {
            cluster.proven_dead(&peer, generation);
        }
        // The member left the view meanwhile: nothing to suspect.
        let in_view = interest.has_changed().is_ok();
        if in_view && !matches!(verdict, Verdict::Answers) {
            cluster.suspect(&peer, generation);
        }
    }
}

/// Makes the bridges to the member `peer` what its interest says, saying so if the journal
/// fails.
async fn keep_bridges(
    broker: &Broker,
    connection: u64,
    peer: &str,
    forwards: &mpsc::UnboundedSender<Forward>,
    wanted: &Interest,
) {
    if let Err(error) = broker.set_bridges(connection, peer, forwards, wanted).await {
        warn!("cannot keep the bridges to {peer}: {error}");
    }
}

/// What a suspected member's cluster port did when tried again.
enum Verdict {
    /// It took a connection.
    Answers,
    /// It refused tries outright and left none unanswered: nothing listens there, the member
    /// is dead.
    Refuses,
    /// Some tries went unanswered (hung, or out of reach), or none was refused outright.
    Silent,
}

/// Whether a member's cluster port takes a connection again within a short verification (what
/// JGroups' VERIFY_SUSPECT did). Refused only if some try was refused outright and none went
/// unanswered; a connection the port took and reset at once (a listener closing as its
/// process dies: the link's socket can close a moment before the listener's) proves nothing
/// either way.
async fn answers(address: SocketAddr) -> Verdict {
    let (mut refused, mut silent) = (false, false);
    for _ in 0..3 {
        match tokio::time::timeout(VERIFY_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                if !reset_at_once(stream).await {
                    return Verdict::Answers;
                }
            }
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true
            }
            _ => silent = true,
        }
        tokio::time::sleep(VERIFY_TIMEOUT).await;
    }
    match (refused, silent) {
        (true, false) => Verdict::Refuses,
        _ => Verdict::Silent,
    }
}

/// Whether a connection the port took is reset within [`VERIFY_TIMEOUT`]: what a listener that
/// closes does to the connections it had not accepted yet. A live node does not reset one (it
/// waits for the opener's hello, or closes a link it turns away).
async fn reset_at_once(mut stream: TcpStream) -> bool {
    let read = tokio::time::timeout(VERIFY_TIMEOUT, stream.read(&mut [0u8; 1])).await;
    matches!(read, Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset)
}

fn forward_frame(cluster: &Cluster, forward: Forward) -> Frame<LinkHeader> {
    let Forward {
        delivery,
        destination,
        topic,
        message,
    } = forward;
    let origin = format!(
        "{}@{}/{}",
        cluster.node_name(),
        cluster.generation(),
        message.header.id
    );
    Frame::with_body(
        LinkHeader::Forward {
            delivery,
            destination,
            topic,
            origin,
            persistent: message.persistent,
            expires_at_ms: message.expires_at_ms,
            message: message.header,
        },
        Bytes::clone(&message.body),
    )
}
