//! The frames themselves: what each header says.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A frame: its header, and its body (a message's payload, or empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<H = Header> {
    pub header: H,
    pub body: Bytes,
}

/// Queue or topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestinationKind {
    Queue,
    Topic,
}

/// How a message is published. Every field has the default HornetQ gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct PublishOptions {
    /// 0 (lowest) to 9 (highest); 4 by default.
    pub priority: u8,
    /// Milliseconds the message lives; none by default (forever).
    pub ttl_ms: Option<u64>,
    /// Whether the message is on disk before the publish is confirmed; true by default.
    pub persistent: bool,
    pub properties: BTreeMap<String, String>,
    pub correlation_id: Option<String>,
    /// `application/json` for serde payloads, `application/octet-stream` for bytes.
    pub content_type: String,
    /// Where a reply should go. An app sets it to `"@"` (itself) for a request; the node puts
    /// in the address that reaches that app.
    pub reply_to: Option<String>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            priority: 4,
            ttl_ms: None,
            persistent: true,
            properties: BTreeMap::new(),
            correlation_id: None,
            content_type: JSON.to_string(),
            reply_to: None,
        }
    }
}

/// The content type of serde payloads.
pub const JSON: &str = "application/json";
/// The content type of raw payloads.
pub const BYTES: &str = "application/octet-stream";

/// A message as it is delivered (its payload is the frame's body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MessageHeader {
    /// The message's id on its node.
    pub id: u64,
    pub destination: String,
    pub priority: u8,
    pub properties: BTreeMap<String, String>,
    pub correlation_id: Option<String>,
    pub content_type: String,
    pub reply_to: Option<String>,
    /// 1 on the first delivery, 2 on the first redelivery, and so on.
    pub delivery_count: u32,
    /// Unix time in milliseconds.
    pub published_at_ms: u64,
}

/// Every frame, by its `op`. App-to-node requests carry an `id` that the node's answer repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Header {
    // ---- app to node ----
    /// The app's first frame.
    Hello { protocol: u32, pid: u32 },
    /// Starts a destination (idempotent). Answered by `ok`.
    Start {
        id: u64,
        destination: String,
        kind: DestinationKind,
    },
    /// Publishes the body. Answered by `ok` once the message is accepted (on disk if persistent).
    Publish {
        id: u64,
        destination: String,
        #[serde(default)]
        options: PublishOptions,
        /// The fencing epoch of the singleton lease it is made under, if any: the node refuses
        /// it once a newer epoch exists.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
    },
    /// Registers a consumer: up to `concurrency` messages are delivered to it at once. A topic
    /// subscriber with a `client-id` is durable. Answered by `ok`; the consumer's id is `id`.
    Listen {
        id: u64,
        destination: String,
        concurrency: u32,
        #[serde(default)]
        client_id: Option<String>,
    },
    /// Removes the consumer registered by the `listen` with id `consumer`. Answered by `ok`.
    Unlisten { id: u64, consumer: u64 },
    /// The handler of a delivery succeeded: the message is done with.
    Ack { delivery: u64 },
    /// The handler of a delivery failed: the message is redelivered, or dead-lettered after
    /// 10 deliveries.
    Nack { delivery: u64, reason: String },
    /// Takes one message, waiting up to `timeout-ms` (none: forever). Answered by `receipt`.
    Receive {
        id: u64,
        destination: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        client_id: Option<String>,
    },
    /// Registers a daemon. Answered by `ok`; the node then sends `start-daemon` when this app
    /// should run it.
    RegisterDaemon {
        id: u64,
        name: String,
        singleton: bool,
    },
    /// A daemon started or stopped running.
    DaemonStatus { name: String, running: bool },
    /// Schedules the job `name` (replacing one of that name). Answered by `ok`, or by `error`
    /// saying what is wrong with the spec. The node sends `fire-job` when it should run.
    Schedule {
        id: u64,
        name: String,
        spec: crate::JobSpec,
        singleton: bool,
    },
    /// Unschedules the job `name`. Answered by `found`.
    Unschedule { id: u64, name: String },
    /// A firing of a job ended; `error` is why it failed.
    JobDone {
        name: String,
        run: u64,
        #[serde(default)]
        error: Option<String>,
    },
    /// Opens the cache `name`. Answered by `cache-opened`.
    OpenCache {
        id: u64,
        name: String,
        open: crate::Open,
        #[serde(default)]
        options: crate::CacheOptions,
    },
    /// An operation on the cache `cache` (the body as `call` says). Answered by `cache-reply`.
    CacheCall {
        id: u64,
        cache: String,
        call: crate::CacheOp,
        /// As `publish`'s: the epoch of the singleton lease it is made under, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
    },
    /// The app serves HTTP on its web socket (`IMMUTANT_WEB_FD`). Answered by `ok`; the node
    /// routes requests for the app's context path to it once the app is `ready`. With
    /// `handoff`, the app also serves client connections the node hands it whole (see
    /// [`crate::handoff`]), and reports on them with `web-counts`.
    Web {
        id: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        handoff: bool,
    },
    /// What the app answered on the connections handed to it since its last report: how many
    /// requests of each status, how many took each of [`crate::web::SECONDS_BUCKETS`] (the
    /// last: longer) until their answer's head, and how many are in flight now.
    WebCounts {
        in_flight: u64,
        statuses: Vec<(u16, u64)>,
        seconds: Vec<u64>,
    },
    /// The app has set itself up and runs.
    Ready {},
    /// The app has stopped everything after a `stop`, and exits.
    Stopped {},

    // ---- node to app ----
    /// The answer to `hello`.
    Welcome {
        node: String,
        app: String,
        max_message_size: u64,
        /// Where the app's web handler is mounted (`/` or `/name`): requests reach it with
        /// this prefix taken off their path.
        #[serde(default = "root_context")]
        context_path: String,
        /// Every property of the node the app may read (`-Dname=value`, or a default): over
        /// the socket, not in the environment, where other processes of the user could read
        /// them and whose size is limited.
        #[serde(default)]
        properties: std::collections::BTreeMap<String, String>,
        /// The app's settings: `[package.metadata.immutant]` of its Cargo.toml.
        #[serde(default)]
        settings: serde_json::Value,
    },
    /// A request succeeded.
    Ok { id: u64 },
    /// A request about something by name succeeded; `found` says whether it existed.
    Found { id: u64, found: bool },
    /// The answer to `open-cache`: the cache's options, or none if `lookup` found no cache.
    CacheOpened {
        id: u64,
        options: Option<crate::CacheOptions>,
    },
    /// The answer to `cache-call`; the body is the value when `outcome.found`.
    CacheReply {
        id: u64,
        outcome: crate::CacheOutcome,
    },
    /// Run the job `name` now: the firing `run` (counted from 1 across the cluster), due at
    /// `scheduled-ms` and sent at `fired-ms` (Unix milliseconds), under the fencing `epoch`.
    /// Answer with `job-done`.
    FireJob {
        name: String,
        run: u64,
        scheduled_ms: u64,
        fired_ms: u64,
        epoch: u64,
    },
    /// A request failed; `message` says why and what to do.
    Error { id: u64, message: String },
    /// A message for the consumer `consumer`; the body is its payload. Acknowledge it with
    /// `ack` or `nack` and `delivery`. A reply to a request comes with consumer 0.
    Deliver {
        consumer: u64,
        delivery: u64,
        message: MessageHeader,
    },
    /// The answer to `receive`: a message (the body is its payload; acknowledge it with `ack`
    /// and `delivery` once it is taken, `nack` if no one waits for it any more), or none if the
    /// timeout passed.
    Receipt {
        id: u64,
        message: Option<MessageHeader>,
        #[serde(default)]
        delivery: Option<u64>,
    },
    /// Run the daemon `name`; `epoch` grows with every start in the cluster (a fencing token).
    /// A singleton runs only while the app's `lease` covers its epoch.
    StartDaemon { name: String, epoch: u64 },
    /// The app's singletons (daemons and jobs) may run under `epoch` until the host's
    /// CLOCK_BOOTTIME reads `until-ns`, unless a later `lease` extends it; none: not at all
    /// now. Once it lapses the app stops them at once, whatever became of its node. A standalone
    /// node sends epoch 1 until `u64::MAX` once, after `welcome`: its singletons never lapse.
    Lease { epoch: u64, until_ns: Option<u64> },
    /// Stop the daemon `name` (it now runs elsewhere).
    StopDaemon { name: String },
    /// Stop: run every daemon's stop (each within `timeout-ms`), finish in-flight handlers,
    /// answer `stopped`, and exit.
    Stop { timeout_ms: u64 },
}

fn root_context() -> String {
    "/".to_string()
}
