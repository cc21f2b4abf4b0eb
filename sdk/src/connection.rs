//! The app's connection to its node: one socket, a writer that batches frames, a reader that
//! routes each frame to whoever waits for it. What the node asks unasked (start or stop a
//! daemon, fire a job, news of the lease) goes to the [`Orders`] the app connected with: the
//! services that carry it out stand above the connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use immutant_protocol::{
    ATTACH_VAR, Frame, FrameCodec, Header, MessageHeader, Outbox, Outgoing, PROTOCOL_VERSION,
    write_frames,
};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{Error, Result};
use crate::inherited;
use crate::sync::lock;

/// A message handed to the app: its header and payload.
pub type Delivered = (MessageHeader, Bytes);

/// An answer to a request: the node's answering frame, or its refusal.
type Answer = std::result::Result<Frame, String>;

/// What the node said when the app connected.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub node: String,
    pub app: String,
    pub max_message_size: u64,
    /// Where the app's web handler is mounted.
    pub context_path: String,
    /// Every property of the node the app may read.
    pub properties: std::collections::BTreeMap<String, String>,
    /// The app's settings (`[package.metadata.immutant]`), as JSON.
    pub settings: serde_json::Value,
}

/// Whoever carries out what the node asks of the app unasked: the frames the connection does
/// not route itself.
pub trait Orders: Send + Sync + 'static {
    /// Carries out `order`. Called on the reader, in the order the node sent them: it must not
    /// block, and what takes time goes on a task of its own.
    fn order(&self, connection: &Connection, order: Header);
}

/// A delivery for a consumer: the delivery's number (to ack) and the message.
pub struct Delivery {
    pub delivery: u64,
    pub message: MessageHeader,
    pub body: Bytes,
}

/// The shared end of the connection. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    out: Outbox,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    consumers: Mutex<HashMap<u64, mpsc::UnboundedSender<Delivery>>>,
    replies: Mutex<HashMap<String, oneshot::Sender<Delivered>>>,
    orders: Box<dyn Orders>,
    /// Set to the stop's timeout when the node asks the app to stop.
    stop: watch::Sender<Option<u64>>,
    welcome: Welcome,
}

/// Frames can hold a message of the node's limit plus its header.
const HEADER_ROOM: usize = 64 * 1024;

impl Connection {
    /// Connects over the socket the node handed down (or, in a test that `cargo immutant test`
    /// runs, to the node's attach socket), and says hello. What the node asks unasked goes to
    /// `orders`.
    pub async fn connect(orders: impl Orders) -> Result<Connection> {
        let socket = match (inherited::SOCKET.take()?, std::env::var_os(ATTACH_VAR)) {
            (Some(fd), _) => std::os::unix::net::UnixStream::from(fd),
            (None, Some(path)) => std::os::unix::net::UnixStream::connect(path)?,
            (None, None) => return Err(Error::NotInNode(inherited::SOCKET.var())),
        };
        socket.set_nonblocking(true)?;
        let (read, write) = UnixStream::from_std(socket)?.into_split();
        let mut reader = FramedRead::new(read, FrameCodec::new(usize::MAX));
        let mut writer = FramedWrite::new(write, FrameCodec::new(usize::MAX));
        writer
            .send(Frame::new(Header::Hello {
                protocol: PROTOCOL_VERSION,
                pid: std::process::id(),
            }))
            .await?;
        let welcome = match reader.next().await {
            Some(Ok(Frame {
                header:
                    Header::Welcome {
                        node,
                        app,
                        max_message_size,
                        context_path,
                        properties,
                        settings,
                    },
                ..
            })) => Welcome {
                node,
                app,
                max_message_size,
                context_path,
                properties,
                settings,
            },
            Some(Ok(Frame {
                header: Header::Error { message, .. },
                ..
            })) => return Err(Error::Node(message)),
            Some(Err(error)) => return Err(error.into()),
            _ => return Err(Error::Closed),
        };
        let limit = welcome.max_message_size as usize + HEADER_ROOM;
        *reader.decoder_mut() = FrameCodec::new(limit);
        *writer.encoder_mut() = FrameCodec::new(limit);

        let (out, outgoing) = mpsc::unbounded_channel();
        let connection = Connection {
            inner: Arc::new(Inner {
                out,
                next_id: AtomicU64::new(1),
                pending: Mutex::new(HashMap::new()),
                consumers: Mutex::new(HashMap::new()),
                replies: Mutex::new(HashMap::new()),
                orders: Box::new(orders),
                stop: watch::channel(None).0,
                welcome,
            }),
        };
        tokio::spawn(async move {
            if let Err(error) = write_frames(writer, outgoing).await {
                leave(&format!("cannot write to the node ({error})"));
            }
        });
        tokio::spawn(connection.clone().read_frames(reader));
        Ok(connection)
    }

    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    /// Refuses a payload of `size` bytes if it is over the node's limit.
    pub fn check_size(&self, size: usize) -> Result<()> {
        let limit = self.inner.welcome.max_message_size;
        if size as u64 > limit {
            return Err(Error::TooLarge { size, limit });
        }
        Ok(())
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a frame that needs no answer.
    pub fn send(&self, frame: Frame) -> Result<()> {
        self.inner
            .out
            .send(Outgoing::Frame(frame))
            .map_err(|_| Error::Closed)
    }

    /// Sends a request (whose header carries `id`) and waits for the node's answering frame.
    pub async fn call(&self, id: u64, frame: Frame) -> Result<Frame> {
        let (answer, answered) = oneshot::channel();
        lock(&self.inner.pending).insert(id, answer);
        self.send(frame)?;
        match answered.await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(message)) => Err(Error::Node(message)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Sends a request and waits for the node's answer: nothing, or a message (for `receive`).
    pub async fn request(&self, id: u64, frame: Frame) -> Result<Option<Delivered>> {
        let answer = self.call(id, frame).await?;
        Ok(match answer.header {
            Header::Receipt {
                message: Some(message),
                ..
            } => Some((message, answer.body)),
            _ => None,
        })
    }

    /// Routes the deliveries for consumer `id` to `deliveries`.
    pub fn add_consumer(&self, id: u64, deliveries: mpsc::UnboundedSender<Delivery>) {
        lock(&self.inner.consumers).insert(id, deliveries);
    }

    /// Stops routing deliveries to consumer `id`.
    pub fn remove_consumer(&self, id: u64) {
        lock(&self.inner.consumers).remove(&id);
    }

    /// The ids of every consumer.
    pub fn consumer_ids(&self) -> Vec<u64> {
        lock(&self.inner.consumers).keys().copied().collect()
    }

    /// Waits for the reply whose correlation id is `correlation_id`.
    pub fn expect_reply(&self, correlation_id: String) -> oneshot::Receiver<Delivered> {
        let (reply, replied) = oneshot::channel();
        lock(&self.inner.replies).insert(correlation_id, reply);
        replied
    }

    /// Forgets a reply no one waits for any more.
    pub fn forget_reply(&self, correlation_id: &str) {
        lock(&self.inner.replies).remove(correlation_id);
    }

    /// Resolves when the node asks the app to stop, with the time each daemon's stop may take.
    pub async fn stop_requested(&self) -> u64 {
        let mut stop = self.inner.stop.subscribe();
        loop {
            if let Some(timeout_ms) = *stop.borrow_and_update() {
                return timeout_ms;
            }
            if stop.changed().await.is_err() {
                return 0;
            }
        }
    }

    /// Sends the last frame and waits until everything written has reached the socket.
    pub async fn finish(&self, last: Frame) {
        let _ = self.send(last);
        let (flushed, done) = oneshot::channel();
        if self.inner.out.send(Outgoing::Flush(flushed)).is_ok() {
            let _ = done.await;
        }
    }

    async fn read_frames(
        self,
        mut reader: FramedRead<tokio::net::unix::OwnedReadHalf, FrameCodec>,
    ) {
        while let Some(frame) = reader.next().await {
            match frame {
                Ok(frame) => self.route(frame),
                Err(error) => {
                    leave(&format!("the node's socket failed ({error})"));
                }
            }
        }
        // The node is gone (killed, or it stopped without asking us): nothing is left to do.
        if self.inner.stop.borrow().is_none() {
            leave("the node went away");
        }
    }

    fn route(&self, frame: Frame) {
        match frame.header {
            Header::Ok { id }
            | Header::Found { id, .. }
            | Header::CacheOpened { id, .. }
            | Header::CacheReply { id, .. } => {
                self.answer(id, Ok(frame));
            }
            Header::Error { id, message } => {
                self.answer(id, Err(message));
            }
            Header::Receipt { id, delivery, .. } => {
                let taken = self.answer(id, Ok(frame));
                // A message no one waits for any more goes back to the queue.
                if let Some(delivery) = delivery {
                    let settled = match taken {
                        true => Header::Ack { delivery },
                        false => Header::Nack {
                            delivery,
                            reason: "the receiver stopped waiting".to_string(),
                        },
                    };
                    let _ = self.send(Frame::new(settled));
                }
            }
            header => self.route_delivery(header, frame.body),
        }
    }

    /// Routes what the node sends unasked: deliveries and replies here, the stop, and the rest
    /// to the orders.
    fn route_delivery(&self, header: Header, body: Bytes) {
        match header {
            Header::Deliver {
                consumer: 0,
                message,
                ..
            } => {
                let waiting = message
                    .correlation_id
                    .as_ref()
                    .and_then(|id| lock(&self.inner.replies).remove(id));
                if let Some(waiting) = waiting {
                    let _ = waiting.send((message, body));
                }
            }
            Header::Deliver {
                consumer,
                delivery,
                message,
            } => {
                let consumers = lock(&self.inner.consumers);
                let delivered = consumers.get(&consumer).is_some_and(|deliveries| {
                    deliveries
                        .send(Delivery {
                            delivery,
                            message,
                            body,
                        })
                        .is_ok()
                });
                drop(consumers);
                if !delivered {
                    let _ = self.send(Frame::new(Header::Nack {
                        delivery,
                        reason: "the consumer is gone".to_string(),
                    }));
                }
            }
            Header::Stop { timeout_ms } => {
                self.inner.stop.send_replace(Some(timeout_ms));
            }
            order => self.inner.orders.order(self, order),
        }
    }

    /// Hands the answer to request `id` to whoever waits for it; false if no one does.
    fn answer(&self, id: u64, answer: Answer) -> bool {
        let waiting = lock(&self.inner.pending).remove(&id);
        waiting.is_some_and(|waiting| waiting.send(answer).is_ok())
    }
}

/// Ends the app because its node is gone. The node was what read the app's output, so saying
/// why may fail: that must not keep the app from exiting (`eprintln!` would panic, and end
/// only the task that called it).
fn leave(why: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "immutant: {why}; exiting");
    std::process::exit(1);
}
