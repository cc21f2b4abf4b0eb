//! # immutant-protocol
//!
//! The frames an Immutant node and the apps it runs exchange over each app's Unix socket. Both
//! sides build on this crate: the node (`immutant-server`) and the SDK (`immutant`).
//! `docs/protocol.md` describes the same frames for anyone writing an SDK in another language.
//!
//! A frame is a JSON [`Header`] that says what it is, and a body of raw bytes (a message's
//! payload), so that payloads are never escaped or copied into JSON:
//!
//! ```text
//! u32 big-endian: length of everything after it (4 + header length + body length)
//! u32 big-endian: header length
//! header: UTF-8 JSON, an object whose "op" names the frame
//! body: the rest, raw bytes (empty for most frames)
//! ```
//!
//! Requests from the app carry an `id`; the node answers each with a frame carrying the same id.
//! Either side may write many frames before reading any answer: that is how publishes batch.
//!
//! Beside the frames: [`handoff`], the socket pair over which the node hands an app's process
//! the client connections it serves itself, and [`web`], the routing and forwarding rules the
//! node and the app both follow for web requests.

mod cache;
pub mod clock;
mod codec;
mod frames;
pub mod handoff;
mod jobs;
pub mod names;
mod outbox;
pub mod secrets;
pub mod web;

pub use cache::{CacheMode, CacheOp, CacheOptions, CacheOutcome, Expiry, Open};
pub use codec::{FrameCodec, ProtocolError};
pub use frames::*;
pub use jobs::JobSpec;
pub use outbox::{Outbox, Outgoing, write_frames};

/// The protocol's version. A node refuses an app that speaks another one.
pub const PROTOCOL_VERSION: u32 = 2;

/// The environment variable holding the number of the app's end of its socket, inherited from
/// the node.
pub const SOCKET_FD_VAR: &str = "IMMUTANT_SOCKET_FD";
/// The environment variable holding the path of a node's attach socket, for a process the node
/// did not start (a test that `cargo immutant test` runs) to connect to it as an app.
pub const ATTACH_VAR: &str = "IMMUTANT_ATTACH";
/// The environment variable holding the app's deployment name.
pub const APP_VAR: &str = "IMMUTANT_APP";
/// The environment variable holding the node's name.
pub const NODE_VAR: &str = "IMMUTANT_NODE";
/// The environment variable holding the number of a listening Unix socket, inherited from the
/// node, on which the app serves HTTP if it mounts a web handler (`web`).
pub const WEB_FD_VAR: &str = "IMMUTANT_WEB_FD";
