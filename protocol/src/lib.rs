//! # immutant-protocol
//!
//! The frames an Immutant node and the apps it runs exchange over each app's Unix socket.
//! Both sides build on this crate: the node (`immutant-server`) and the SDK (`immutant`).
//! `docs/protocol.md` describes the same frames for anyone writing an SDK in another language.
//!
//! For now the crate holds what both sides must agree on before the first frame: the protocol's
//! version, which a node and an app compare when they connect.

/// The protocol's version. A node refuses an app that speaks another one.
pub const PROTOCOL_VERSION: u32 = 1;
