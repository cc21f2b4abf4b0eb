//! Daemons: long-running services with a start and a stop, as `immutant.daemons` had them.
//!
//! The app registers a daemon; the node says when to start it (at once on a standalone node; in
//! a cluster, a singleton runs on one node only) and when to stop it. `start` runs on a task of
//! its own; at undeploy and shutdown `stop` is called, and `start` is given the stop's time limit
//! (20 s by default) to return.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use immutant_protocol::{Frame, Header};
use tokio::task::JoinHandle;

use crate::connection::{Connection, lock};
use crate::{Error, Result};

/// A service the node starts and stops.
///
/// ```
/// use immutant::Daemon;
/// use tokio::sync::Notify;
///
/// struct Ticker { stop: Notify }
///
/// impl Daemon for Ticker {
///     async fn start(&self) {
///         loop {
///             tokio::select! {
///                 _ = self.stop.notified() => return,
///                 _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => println!("tick"),
///             }
///         }
///     }
///
///     async fn stop(&self) {
///         self.stop.notify_one();
///     }
/// }
/// ```
pub trait Daemon: Send + Sync + 'static {
    /// Runs the service; may run until `stop` is called.
    fn start(&self) -> impl Future<Output = ()> + Send;
    /// Asks the service to stop; `start` should then return soon.
    fn stop(&self) -> impl Future<Output = ()> + Send;
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A daemon with its type erased.
trait AnyDaemon: Send + Sync {
    fn start(&self) -> BoxFuture<'_>;
    fn stop(&self) -> BoxFuture<'_>;
}

impl<D: Daemon> AnyDaemon for D {
    fn start(&self) -> BoxFuture<'_> {
        Box::pin(Daemon::start(self))
    }

    fn stop(&self) -> BoxFuture<'_> {
        Box::pin(Daemon::stop(self))
    }
}

/// A registered daemon, and its running task if it runs.
struct Slot {
    daemon: Arc<dyn AnyDaemon>,
    running: Option<JoinHandle<()>>,
}

/// The app's daemons.
#[derive(Default)]
pub struct Daemons {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

tokio::task_local! {
    static EPOCH: u64;
}

/// The fencing epoch the running daemon was started under, inside its `start`: it grows with
/// every handover of a singleton in the cluster, so work stamped with an older epoch is stale.
/// `None` outside a daemon's `start`.
pub fn epoch() -> Option<u64> {
    EPOCH.try_with(|epoch| *epoch).ok()
}

/// The longest a daemon's stop may take when the node does not say.
const STOP_LIMIT: Duration = Duration::from_secs(20);

impl Daemons {
    fn register(&self, name: &str, daemon: Arc<dyn AnyDaemon>) {
        lock(&self.slots).insert(
            name.to_string(),
            Slot {
                daemon,
                running: None,
            },
        );
    }

    /// Starts the daemon `name` on a task of its own, as the node asked.
    pub fn start(&self, connection: &Connection, name: &str, epoch: u64) {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(name) else {
            return;
        };
        if slot
            .running
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let daemon = slot.daemon.clone();
        let connection = connection.clone();
        let name = name.to_string();
        println!("Starting daemon: {name}");
        let _ = connection.send(Frame::new(Header::DaemonStatus {
            name: name.clone(),
            running: true,
        }));
        slot.running = Some(tokio::spawn(async move {
            EPOCH.scope(epoch, daemon.start()).await;
            let _ = connection.send(Frame::new(Header::DaemonStatus {
                name,
                running: false,
            }));
        }));
    }

    /// Stops the daemon `name` if it runs: calls its stop, then gives its start `limit` (20 s if
    /// none) to return before abandoning it.
    pub async fn stop(&self, connection: &Connection, name: &str, limit: Option<Duration>) {
        let (daemon, task) = {
            let mut slots = lock(&self.slots);
            let Some(slot) = slots.get_mut(name) else {
                return;
            };
            let Some(task) = slot.running.take() else {
                return;
            };
            (slot.daemon.clone(), task)
        };
        println!("Stopping daemon: {name}");
        let limit = limit.unwrap_or(STOP_LIMIT);
        let mut task = task;
        let stopped = tokio::time::timeout(limit, async {
            daemon.stop().await;
            let _ = (&mut task).await;
        })
        .await;
        if stopped.is_err() {
            // A singleton that will not stop must not keep running beside its successor.
            eprintln!("Timed out waiting for daemon {name} to stop; abandoning it");
            task.abort();
        }
        let _ = connection.send(Frame::new(Header::DaemonStatus {
            name: name.to_string(),
            running: false,
        }));
    }

    /// Stops every running daemon at once.
    pub async fn stop_all(&self, connection: &Connection, limit: Duration) {
        let names: Vec<String> = lock(&self.slots).keys().cloned().collect();
        let stops = names
            .iter()
            .map(|name| self.stop(connection, name, Some(limit)));
        futures_util::future::join_all(stops).await;
    }
}

/// A daemon about to be registered: say whether it is a singleton, then `start` it.
pub struct DaemonBuilder {
    connection: Connection,
    name: String,
    daemon: Arc<dyn AnyDaemon>,
    singleton: bool,
}

impl DaemonBuilder {
    pub(crate) fn new<D: Daemon>(connection: Connection, name: &str, daemon: D) -> Self {
        DaemonBuilder {
            connection,
            name: name.to_string(),
            daemon: Arc::new(daemon),
            singleton: true,
        }
    }

    /// Whether the daemon runs on one node of a cluster only (the default, as in Immutant) or
    /// on every node.
    pub fn singleton(mut self, singleton: bool) -> Self {
        self.singleton = singleton;
        self
    }

    /// Registers the daemon with the node, which starts it when this node should run it.
    /// Registering a name again replaces the daemon.
    pub async fn start(self) -> Result<()> {
        let daemons = self.connection.daemons();
        daemons.stop(&self.connection, &self.name, None).await;
        daemons.register(&self.name, self.daemon);
        let id = self.connection.next_id();
        let frame = Frame::new(Header::RegisterDaemon {
            id,
            name: self.name,
            singleton: self.singleton,
        });
        self.connection.request(id, frame).await.map(|_| ())
    }
}

impl IntoFuture for DaemonBuilder {
    type Output = Result<(), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.start())
    }
}
