//! Messaging, as `immutant.messaging` had it over HornetQ: queues and topics; publish with
//! options; listeners that acknowledge when their handler succeeds; receive; request/respond.
//!
//! Payloads are serde values, sent as JSON, or raw bytes ([`Message`] gives both).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use immutant_protocol::{
    BYTES, DestinationKind, Frame, Header, JSON, MessageHeader, PublishOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::connection::{Connection, Delivery};
use crate::error::{BoxError, Error, Result};
use crate::fence::operation_epoch;

/// A message as a handler may take it whole: its payload and what came with it.
#[derive(Debug, Clone)]
pub struct Message {
    pub header: MessageHeader,
    pub body: Bytes,
}

impl Message {
    /// The payload read as JSON into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The payload as raw bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.body
    }
}

/// What a handler can take: a [`Message`] whole, or any serde value its payload decodes into.
pub trait FromMessage: Sized + Send + 'static {
    fn from_message(message: Message) -> Result<Self>;
}

impl<T: DeserializeOwned + Send + 'static> FromMessage for T {
    fn from_message(message: Message) -> Result<Self> {
        message.decode()
    }
}

/// A handler's argument that is the whole message.
pub struct Raw(pub Message);

impl FromMessage for Raw {
    fn from_message(message: Message) -> Result<Self> {
        Ok(Raw(message))
    }
}

/// What a destination needs to talk to the node: the connection, the app's handler tracker,
/// and its name.
#[derive(Clone)]
struct Endpoint {
    connection: Connection,
    tracker: TaskTracker,
    name: String,
}

impl Endpoint {
    async fn start(
        connection: Connection,
        tracker: TaskTracker,
        name: &str,
        kind: DestinationKind,
    ) -> Result<Self> {
        let id = connection.next_id();
        let frame = Frame::new(Header::Start {
            id,
            destination: name.to_string(),
            kind,
        });
        connection.request(id, frame).await?;
        Ok(Endpoint {
            connection,
            tracker,
            name: name.to_string(),
        })
    }

    async fn publish_body(&self, body: Bytes, options: PublishOptions) -> Result<()> {
        self.connection.check_size(body.len())?;
        let epoch = operation_epoch()?;
        let id = self.connection.next_id();
        let frame = Frame::with_body(
            Header::Publish {
                id,
                destination: self.name.clone(),
                options,
                epoch,
            },
            body,
        );
        self.connection.request(id, frame).await.map(|_| ())
    }

    async fn publish_with<T: Serialize + ?Sized>(
        &self,
        payload: &T,
        options: PublishOptions,
    ) -> Result<()> {
        let body = Bytes::from(serde_json::to_vec(payload)?);
        self.publish_body(
            body,
            PublishOptions {
                content_type: JSON.to_string(),
                ..options
            },
        )
        .await
    }

    async fn publish_bytes(&self, payload: Bytes, options: PublishOptions) -> Result<()> {
        self.publish_body(
            payload,
            PublishOptions {
                content_type: BYTES.to_string(),
                ..options
            },
        )
        .await
    }

    async fn receive(
        &self,
        timeout: Option<Duration>,
        client_id: Option<String>,
    ) -> Result<Option<Message>> {
        let id = self.connection.next_id();
        let frame = Frame::new(Header::Receive {
            id,
            destination: self.name.clone(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
            client_id,
        });
        let received = self.connection.request(id, frame).await?;
        Ok(received.map(|(header, body)| Message { header, body }))
    }
}

/// What a [`Destination`] is: [`QueueKind`] or [`TopicKind`].
pub trait Kind: Send + Sync + 'static {
    const KIND: DestinationKind;
}

/// Marks a destination as a queue: each message goes to one consumer.
#[derive(Debug, Clone, Copy)]
pub struct QueueKind;

/// Marks a destination as a topic: each message goes to every subscriber.
#[derive(Debug, Clone, Copy)]
pub struct TopicKind;

impl Kind for QueueKind {
    const KIND: DestinationKind = DestinationKind::Queue;
}

impl Kind for TopicKind {
    const KIND: DestinationKind = DestinationKind::Topic;
}

/// A queue or a topic on the node. Both publish alike; a [`Queue`] also listens, receives,
/// requests and responds, a [`Topic`] has subscribers.
pub struct Destination<K> {
    endpoint: Endpoint,
    _kind: std::marker::PhantomData<K>,
}

impl<K> Clone for Destination<K> {
    fn clone(&self) -> Self {
        Destination {
            endpoint: self.endpoint.clone(),
            _kind: std::marker::PhantomData,
        }
    }
}

/// A queue: each message goes to one consumer.
pub type Queue = Destination<QueueKind>;

/// A topic: each message goes to every subscriber.
pub type Topic = Destination<TopicKind>;

impl<K: Kind> Destination<K> {
    /// Starts the destination on the node (if it is not started yet).
    pub(crate) async fn start(
        connection: Connection,
        tracker: TaskTracker,
        name: &str,
    ) -> Result<Self> {
        let endpoint = Endpoint::start(connection, tracker, name, K::KIND).await?;
        Ok(Self::of(endpoint))
    }

    /// The destination `name` without starting it.
    pub(crate) fn lookup(connection: Connection, tracker: TaskTracker, name: &str) -> Self {
        Self::of(Endpoint {
            connection,
            tracker,
            name: name.to_string(),
        })
    }

    fn of(endpoint: Endpoint) -> Self {
        Destination {
            endpoint,
            _kind: std::marker::PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    /// Publishes a serde value as JSON, persistent and at priority 4. Returns once the node has
    /// it on disk.
    pub async fn publish<T: Serialize + ?Sized>(&self, payload: &T) -> Result<()> {
        self.endpoint
            .publish_with(payload, PublishOptions::default())
            .await
    }

    /// Publishes a serde value with options (priority, ttl, properties, correlation id,
    /// persistence).
    pub async fn publish_with<T: Serialize + ?Sized>(
        &self,
        payload: &T,
        options: PublishOptions,
    ) -> Result<()> {
        self.endpoint.publish_with(payload, options).await
    }

    /// Publishes raw bytes.
    pub async fn publish_bytes(
        &self,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<()> {
        self.endpoint.publish_bytes(payload.into(), options).await
    }
}

impl Queue {
    /// Calls `handler` with each message; a message is acknowledged when its handler returns
    /// `Ok`, and redelivered when it fails (dead-lettered to `/queue/DLQ` after 10 deliveries).
    /// Set `.concurrency(n)` before awaiting to handle up to n messages at once.
    pub fn listen<T, F, Fut>(&self, handler: F) -> Listen<T, F>
    where
        T: FromMessage,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Listen::new(self.endpoint.clone(), None, handler)
    }

    /// Takes one message, waiting up to `timeout` (`None`: forever); `None` if none came.
    pub async fn receive<T: DeserializeOwned>(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<T>> {
        match self.endpoint.receive(timeout, None).await? {
            Some(message) => Ok(Some(message.decode()?)),
            None => Ok(None),
        }
    }

    /// Takes one message whole, waiting up to `timeout`.
    pub async fn receive_message(&self, timeout: Option<Duration>) -> Result<Option<Message>> {
        self.endpoint.receive(timeout, None).await
    }

    /// Publishes `payload` as a request and waits up to `timeout` for the reply of a
    /// [`respond`](Queue::respond)er.
    pub async fn request<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        payload: &T,
        timeout: Duration,
    ) -> Result<R> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let correlation_id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let reply = self
            .endpoint
            .connection
            .expect_reply(correlation_id.clone());
        let mut options = PublishOptions {
            correlation_id: Some(correlation_id.clone()),
            reply_to: Some("@".to_string()),
            ..PublishOptions::default()
        };
        options
            .properties
            .insert("synchronous".to_string(), "true".to_string());
        self.endpoint.publish_with(payload, options).await?;
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok((_, body))) => Ok(serde_json::from_slice(&body)?),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                self.endpoint.connection.forget_reply(&correlation_id);
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Answers requests: `handler`'s result goes back to whoever sent each one.
    pub fn respond<T, R, F, Fut>(
        &self,
        handler: F,
    ) -> Listen<Raw, impl Fn(Raw) -> RespondFuture + Send + Sync + 'static>
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, BoxError>> + Send + 'static,
    {
        let handler = std::sync::Arc::new(handler);
        let destination = self.endpoint.clone();
        let responder = move |Raw(message): Raw| -> RespondFuture {
            let handler = handler.clone();
            let destination = destination.clone();
            Box::pin(async move {
                let request: T = message.decode()?;
                let response = Bytes::from(serde_json::to_vec(&handler(request).await?)?);
                let Some(reply_to) = message.header.reply_to.clone() else {
                    return Ok(());
                };
                let reply = Endpoint {
                    name: reply_to,
                    ..destination
                };
                let options = PublishOptions {
                    correlation_id: message.header.correlation_id.clone(),
                    persistent: false,
                    ..PublishOptions::default()
                };
                reply.publish_body(response, options).await?;
                Ok(())
            })
        };
        Listen::new(self.endpoint.clone(), None, responder)
    }
}

/// The future a responder's handler gives.
pub type RespondFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

impl Topic {
    /// Calls `handler` with each message published from now on while this app runs.
    pub fn subscribe<T, F, Fut>(&self, handler: F) -> Listen<T, F>
    where
        T: FromMessage,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Listen::new(self.endpoint.clone(), None, handler)
    }

    /// Subscribes durably as `client_id`: messages published while the subscriber is away wait
    /// for it, across restarts of the app and the node.
    pub fn subscribe_durable<T, F, Fut>(&self, client_id: &str, handler: F) -> Listen<T, F>
    where
        T: FromMessage,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Listen::new(self.endpoint.clone(), Some(client_id.to_string()), handler)
    }
}

/// A listener being set up; await it to start listening.
pub struct Listen<T, F> {
    destination: Endpoint,
    client_id: Option<String>,
    concurrency: u32,
    handler: F,
    _payload: std::marker::PhantomData<fn(T)>,
}

impl<T, F> Listen<T, F> {
    fn new(destination: Endpoint, client_id: Option<String>, handler: F) -> Self {
        Listen {
            destination,
            client_id,
            concurrency: 1,
            handler,
            _payload: std::marker::PhantomData,
        }
    }

    /// How many messages the handler may work on at once (1 by default).
    pub fn concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }
}

/// A running listener.
#[derive(Clone)]
pub struct Listener {
    connection: Connection,
    consumer: u64,
}

impl Listener {
    /// Stops the listener; messages it has not acknowledged go to other consumers.
    pub async fn unlisten(&self) -> Result<()> {
        self.connection.remove_consumer(self.consumer);
        let id = self.connection.next_id();
        let frame = Frame::new(Header::Unlisten {
            id,
            consumer: self.consumer,
        });
        self.connection.request(id, frame).await.map(|_| ())
    }
}

impl<T, F, Fut> IntoFuture for Listen<T, F>
where
    T: FromMessage,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    type Output = Result<Listener>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Listener>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Listen {
                destination,
                client_id,
                concurrency,
                handler,
                ..
            } = self;
            let connection = destination.connection.clone();
            let consumer = connection.next_id();
            let (deliveries, mut incoming) = mpsc::unbounded_channel();
            connection.add_consumer(consumer, deliveries);
            let frame = Frame::new(Header::Listen {
                id: consumer,
                destination: destination.name.clone(),
                concurrency,
                client_id,
            });
            if let Err(error) = connection.request(consumer, frame).await {
                connection.remove_consumer(consumer);
                return Err(error);
            }
            let handler = std::sync::Arc::new(handler);
            let tracker = destination.tracker.clone();
            let dispatcher = connection.clone();
            tokio::spawn(async move {
                while let Some(delivery) = incoming.recv().await {
                    let handler = handler.clone();
                    let connection = dispatcher.clone();
                    tracker.spawn(handle(connection, delivery, handler));
                }
            });
            Ok(Listener {
                connection,
                consumer,
            })
        })
    }
}

/// Runs the handler on one delivery and acknowledges it, or not, by its outcome. A panicking
/// handler counts as a failed one.
async fn handle<T, F, Fut>(connection: Connection, delivery: Delivery, handler: std::sync::Arc<F>)
where
    T: FromMessage,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let Delivery {
        delivery,
        message,
        body,
    } = delivery;
    let outcome = match T::from_message(Message {
        header: message,
        body,
    }) {
        Ok(payload) => match tokio::spawn(handler(payload)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(panic) => Err(format!("the handler panicked: {panic}")),
        },
        Err(error) => Err(format!("cannot read the message: {error}")),
    };
    let frame = match outcome {
        Ok(()) => Header::Ack { delivery },
        Err(reason) => Header::Nack { delivery, reason },
    };
    let _ = connection.send(Frame::new(frame));
}
