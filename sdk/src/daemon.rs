//! Daemons: long-running services with a start and a stop, as `immutant.daemons` had them.
//!
//! The app registers a daemon; the node says when to start it (at once on a standalone node; in
//! a cluster, a singleton runs on one node only) and when to stop it. `start` runs on a task of
//! its own; at undeploy and shutdown `stop` is called, and `start` is given the stop's time limit
//! (20 s by default) to return.
//!
//! A singleton daemon runs under the lease its node holds for the app's singletons
//! ([`crate::Fence`]): the moment that lapses without renewal, `start` is cancelled at its next
//! `.await` (`stop` is not called: its node may be frozen or gone), and what it publishes or
//! writes after is refused. A daemon that does work outside the node (files, other services)
//! checks [`lease_held`] before each step.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use immutant_protocol::{Frame, Header};
use tokio::task::JoinHandle;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::fence::{may_act, under_lease};
use crate::lease::lease;
use crate::sync::lock;

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
    singleton: bool,
    running: Option<JoinHandle<()>>,
    /// The epoch it was last started under.
    epoch: u64,
    /// The epoch of the lease that lapsed under it, if one did while it ran: it starts again if
    /// that lease is renewed (the app, not its node, was paused).
    lapsed: Option<u64>,
}

/// The app's daemons. Cheap to clone: the clones share them.
#[derive(Clone, Default)]
pub struct Daemons {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
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

/// Whether the current task may act now: inside a singleton daemon's `start` (or a singleton
/// job, or [`crate::Fence::scope`]) only while its lease holds; anywhere else, always. Check it
/// before each step of work the node cannot fence (a file written, a call to another service):
/// a daemon whose node was frozen or cut off must not act beside the one that took over.
pub fn lease_held() -> bool {
    may_act()
}

/// The longest a daemon's stop may take when the node does not say.
const STOP_LIMIT: Duration = Duration::from_secs(20);

impl Daemons {
    fn register(&self, name: &str, daemon: Arc<dyn AnyDaemon>, singleton: bool) {
        lock(&self.slots).insert(
            name.to_string(),
            Slot {
                daemon,
                singleton,
                running: None,
                epoch: 0,
                lapsed: None,
            },
        );
    }

    /// Starts the daemon `name` on a task of its own, as the node asked; false if it was
    /// running still.
    pub fn start(&self, connection: &Connection, name: &str, epoch: u64) -> bool {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(name) else {
            return false;
        };
        if slot
            .running
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return false;
        }
        slot.lapsed = None;
        let (daemon, singleton) = (slot.daemon.clone(), slot.singleton);
        slot.epoch = epoch;
        let (connection, slots) = (connection.clone(), self.slots.clone());
        let name = name.to_string();
        println!("Starting daemon: {name}");
        let _ = connection.send(Frame::new(Header::DaemonStatus {
            name: name.clone(),
            running: true,
        }));
        slot.running = Some(tokio::spawn(async move {
            let run = EPOCH.scope(epoch, daemon.start());
            if singleton {
                // A singleton runs while its lease holds, and not a moment after.
                if let Err(error) = under_lease(epoch, run).await {
                    println!("Cancelled daemon {name}: {error}");
                    if let Some(slot) = lock(&slots).get_mut(&name) {
                        slot.lapsed = Some(epoch);
                    }
                }
            } else {
                run.await;
            }
            let _ = connection.send(Frame::new(Header::DaemonStatus {
                name,
                running: false,
            }));
        }));
        true
    }

    /// Starts again the singletons cancelled when the lease of `epoch` lapsed, now that it is
    /// renewed: no one else took them over meanwhile.
    /// One whose cancelled task has not quite finished yet keeps its mark, and starts at the
    /// next renewal.
    pub fn renewed(&self, connection: &Connection, epoch: u64) {
        let names: Vec<String> = lock(&self.slots)
            .iter()
            .filter(|(_, slot)| slot.lapsed == Some(epoch))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            self.start(connection, &name, epoch);
        }
    }

    /// Stops the daemon `name` if it runs: calls its stop, then gives its start `limit` (20 s if
    /// none) to return before abandoning it.
    pub async fn stop(&self, connection: &Connection, name: &str, limit: Option<Duration>) {
        if let Some(stopping) = self.take(name) {
            stopping.finish(connection, limit).await;
        }
    }

    /// Takes the daemon `name`'s task out of its slot, if it runs, for [`Stopping::finish`]: a
    /// start asked for after this starts a new one.
    pub fn take(&self, name: &str) -> Option<Stopping> {
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(name)?;
        slot.lapsed = None;
        let task = slot.running.take()?;
        Some(Stopping {
            name: name.to_string(),
            daemon: slot.daemon.clone(),
            task,
            // Its lease gone, it is being cancelled: its stop must not be called as well (a
            // stop signal left behind would end its next start at once).
            cancelled: slot.singleton && !lease().covers(slot.epoch),
        })
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

/// A daemon taken out of its slot to be stopped.
pub struct Stopping {
    name: String,
    daemon: Arc<dyn AnyDaemon>,
    task: JoinHandle<()>,
    cancelled: bool,
}

impl Stopping {
    /// Calls the daemon's stop, then gives its start `limit` (20 s if none) to return before
    /// abandoning it.
    pub async fn finish(self, connection: &Connection, limit: Option<Duration>) {
        let Stopping {
            name,
            daemon,
            mut task,
            cancelled,
        } = self;
        if cancelled {
            task.abort();
        }
        // One that ended by itself, or was cancelled when its lease lapsed, has nothing to stop.
        let running = !task.is_finished() && !cancelled;
        if running {
            println!("Stopping daemon: {name}");
        }
        let limit = limit.unwrap_or(STOP_LIMIT);
        let stopped = tokio::time::timeout(limit, async {
            if running {
                daemon.stop().await;
            }
            let _ = (&mut task).await;
        })
        .await;
        if stopped.is_err() {
            // A singleton that will not stop must not keep running beside its successor.
            eprintln!("Timed out waiting for daemon {name} to stop; abandoning it");
            task.abort();
        }
        let _ = connection.send(Frame::new(Header::DaemonStatus {
            name,
            running: false,
        }));
    }
}

/// A daemon about to be registered: say whether it is a singleton, then `start` it.
pub struct DaemonBuilder {
    connection: Connection,
    daemons: Daemons,
    name: String,
    daemon: Arc<dyn AnyDaemon>,
    singleton: bool,
}

impl DaemonBuilder {
    pub(crate) fn new<D: Daemon>(
        connection: Connection,
        daemons: Daemons,
        name: &str,
        daemon: D,
    ) -> Self {
        DaemonBuilder {
            connection,
            daemons,
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
        let daemons = &self.daemons;
        daemons.stop(&self.connection, &self.name, None).await;
        daemons.register(&self.name, self.daemon, self.singleton);
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
