//! The app: its connection to the node, what the node told it, and its life from bootstrap to
//! stop.

use std::collections::BTreeMap;
use std::time::Duration;

use immutant_protocol::{APP_VAR, Frame, Header, Open};
use tokio_util::task::TaskTracker;

use crate::cache::{Cache, CacheBuilder};
use crate::connection::Connection;
use crate::daemon::{Daemon, DaemonBuilder};
use crate::error::{Error, Result};
use crate::jobs::JobBuilder;
use crate::messaging::{Queue, Topic};
use crate::orders::Services;

/// An app running in a node. Cheap to clone.
#[derive(Clone)]
pub struct App {
    connection: Connection,
    /// Its daemons and jobs, which the node starts, stops and fires.
    services: Services,
    /// Every handler the app's listeners run, so a stop can wait for them to finish.
    handlers: TaskTracker,
    properties: std::sync::Arc<BTreeMap<String, String>>,
    settings: std::sync::Arc<serde_json::Value>,
    /// The web server, once a handler is mounted.
    #[cfg(feature = "web")]
    web: std::sync::Arc<tokio::sync::Mutex<Option<crate::web::WebServer>>>,
}

impl App {
    /// Connects to the node that started this process. Fails with a clear error outside a node,
    /// and when called again in a process the node started (clone the `App` instead).
    pub async fn connect() -> Result<App> {
        if std::env::var_os(APP_VAR).is_none() {
            return Err(Error::NotInNode(APP_VAR));
        }
        let services = Services::default();
        let connection = Connection::connect(services.clone()).await?;
        let welcome = connection.welcome();
        let (properties, settings) = (welcome.properties.clone(), welcome.settings.clone());
        Ok(App {
            connection,
            services,
            handlers: TaskTracker::new(),
            properties: std::sync::Arc::new(properties),
            settings: std::sync::Arc::new(settings),
            #[cfg(feature = "web")]
            web: Default::default(),
        })
    }

    /// The app's deployment name.
    pub fn name(&self) -> &str {
        &self.connection.welcome().app
    }

    /// The name of the node the app runs on.
    pub fn node_name(&self) -> &str {
        &self.connection.welcome().node
    }

    /// A property of the node (`-Dname=value`, or a default), such as `jboss.node.name`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    /// Every property of the node.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// The app's settings: `[package.metadata.immutant]` of its Cargo.toml, as JSON.
    pub fn settings(&self) -> &serde_json::Value {
        &self.settings
    }

    /// Starts the queue `name` (if it is not started yet) and returns it.
    pub async fn queue(&self, name: &str) -> Result<Queue> {
        Queue::start(self.connection.clone(), self.handlers.clone(), name).await
    }

    /// The queue `name` as another app started it, without starting it: publishing to it is
    /// refused if no app ever did.
    pub fn lookup_queue(&self, name: &str) -> Queue {
        Queue::lookup(self.connection.clone(), self.handlers.clone(), name)
    }

    /// Starts the topic `name` (if it is not started yet) and returns it.
    pub async fn topic(&self, name: &str) -> Result<Topic> {
        Topic::start(self.connection.clone(), self.handlers.clone(), name).await
    }

    /// A cache to open: `app.cache("name").mode(CacheMode::Replicated).lookup_or_create().await`.
    pub fn cache(&self, name: &str) -> CacheBuilder {
        CacheBuilder::new(self.connection.clone(), name)
    }

    /// The cache `name` if it exists in the cluster, with the options it was made with.
    pub async fn lookup_cache(&self, name: &str) -> Result<Option<Cache>> {
        let options = Default::default();
        Cache::open(self.connection.clone(), name, Open::Lookup, options).await
    }

    /// Mounts `router` as the app's web handler: the node serves it at the app's context path
    /// once the app is ready (see [`crate::web`]). Any tower service of HTTP requests can be
    /// mounted as `Router::new().fallback_service(service)`.
    #[cfg(feature = "web")]
    pub async fn web(&self, router: crate::web::axum::Router) -> Result<()> {
        let mut web = self.web.lock().await;
        *web = Some(crate::web::WebServer::start(&self.connection, router).await?);
        Ok(())
    }

    /// HTTP sessions for the app's web handler, replicated in a cluster (see
    /// [`crate::web::sessions`]): `router.layer(app.sessions().layer().await?)`.
    #[cfg(feature = "web")]
    pub fn sessions(&self) -> crate::web::sessions::SessionsBuilder {
        let cache = self.cache(&format!("immutant.web.sessions/{}", self.name()));
        crate::web::sessions::SessionsBuilder::new(cache, self.node_name(), self.context_path())
    }

    /// Where the app's web handler is mounted (`/` or `/name`).
    pub fn context_path(&self) -> &str {
        &self.connection.welcome().context_path
    }

    /// A job to schedule: `app.job("name").cron("*/5 * * * * ?").schedule(f).await`.
    pub fn job(&self, name: &str) -> JobBuilder {
        JobBuilder::new(self.connection.clone(), self.services.jobs.clone(), name)
    }

    /// Unschedules the job `name`; true if it was scheduled.
    pub async fn unschedule(&self, name: &str) -> Result<bool> {
        self.services.jobs.unschedule(&self.connection, name).await
    }

    /// A daemon to register: `app.daemon("name", d).singleton(false).start().await`.
    pub fn daemon<D: Daemon>(&self, name: &str, daemon: D) -> DaemonBuilder {
        let daemons = self.services.daemons.clone();
        DaemonBuilder::new(self.connection.clone(), daemons, name, daemon)
    }

    /// Hands control to the node until it stops the app (at undeploy, redeploy or node
    /// shutdown). Then every daemon's stop runs, listeners stop taking messages, and handlers
    /// that are running finish before this returns.
    pub async fn run(self) -> Result<()> {
        self.connection.send(Frame::new(Header::Ready {}))?;
        let limit = Duration::from_millis(self.connection.stop_requested().await);
        // Web requests in flight finish first: they may use what the daemons provide.
        #[cfg(feature = "web")]
        if let Some(web) = self.web.lock().await.take() {
            web.stop(limit).await;
        }
        self.services
            .daemons
            .stop_all(&self.connection, limit)
            .await;
        for consumer in self.connection.consumer_ids() {
            self.connection.remove_consumer(consumer);
            let id = self.connection.next_id();
            let _ = self
                .connection
                .request(id, Frame::new(Header::Unlisten { id, consumer }))
                .await;
        }
        self.handlers.close();
        if tokio::time::timeout(limit, self.handlers.wait())
            .await
            .is_err()
        {
            eprintln!(
                "immutant: handlers still running after {limit:?}; their messages will be redelivered"
            );
        }
        self.connection.finish(Frame::new(Header::Stopped {})).await;
        Ok(())
    }
}
