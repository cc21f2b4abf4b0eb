//! The embedded engine: what a cluster shares, kept among its members with no other
//! infrastructure. Each node journals its own messages ([`messaging`]), members find each other
//! and agree on a view by gossip, and hold the singletons' leases ([`cluster`]), caches are
//! replicated or distributed among them ([`cache`]), and the [`mesh`] of sealed peer links
//! above those three carries forwards, replies and cache requests between them ([`link`]), and the app binaries
//! members fetch from each other ([`artifacts`]) and the questions they ask of each other's
//! management ([`questions`]).

pub mod artifacts;
pub mod cache;
pub mod cluster;
pub mod link;
pub mod mesh;
pub mod messaging;
pub mod questions;
