//! # immutant
//!
//! The SDK an Immutant app links. An app is a Rust binary whose `main` is its bootstrap (what
//! `immutant.clj` was): it starts queues and topics, registers listeners, daemons, jobs and web
//! handlers through this crate, then hands control to its node.
//!
//! The node runs the app as a child process and the two talk over a Unix socket with the frames
//! of [`immutant_protocol`], whose version this SDK speaks:

pub use immutant_protocol::PROTOCOL_VERSION;
